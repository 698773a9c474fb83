//! `palisade.compliance.v1.ComplianceService`. Every RPC authorizes first, for its partner and
//! scope, before any lookup.

use std::{pin::Pin, sync::Arc, time::Duration};

use base64::Engine as _;
use futures::Stream;
use palisade_contracts::{
    common::v1::Progress,
    compliance::v1::{self as pb, compliance_service_server::ComplianceService},
    time::{from_millis, to_millis},
};

use crate::{
    auth::{Scope, authorize},
    engine::{Engine, RunState},
    error::ComplianceError,
    report,
    store::{EvaluationRecord, FindingFilter, STATE_RUNNING},
};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
const EXPORT_CHUNK: usize = 64 * 1024;

fn page_size(requested: i32) -> i64 {
    if requested <= 0 {
        DEFAULT_PAGE
    } else {
        i64::from(requested).min(MAX_PAGE)
    }
}

fn encode_token(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_token(token: &str) -> Result<String, ComplianceError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ComplianceError::invalid("page_token is malformed"))
}

#[derive(Debug, Clone)]
pub struct ComplianceApi {
    engine: Arc<Engine>,
}

impl ComplianceApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    async fn latest(&self, partner: &str) -> Result<EvaluationRecord, ComplianceError> {
        self.engine
            .store
            .latest_complete(partner)
            .await?
            .ok_or_else(|| {
                ComplianceError::NotFound(
                    "no completed evaluation for this partner yet; run EvaluateNow".into(),
                )
            })
    }
}

fn history_point(r: &EvaluationRecord) -> pb::HistoryPoint {
    pb::HistoryPoint {
        evaluation_id: r.evaluation_id.clone(),
        evaluated_at: r.finished_at.map(from_millis),
        score: r.score.unwrap_or_default(),
        passing: r.passing,
        failing: r.failing,
        warnings: r.warnings,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ComplianceService for ComplianceApi {
    async fn get_compliance_status(
        &self,
        request: tonic::Request<pb::GetComplianceStatusRequest>,
    ) -> Result<tonic::Response<pb::GetComplianceStatusResponse>, tonic::Status> {
        let partner = request.get_ref().partner_tenant_id.clone();
        authorize(&request, &partner, Scope::ComplianceRead)?;
        let latest = self.latest(&partner).await?;
        Ok(tonic::Response::new(pb::GetComplianceStatusResponse {
            status: latest.status,
        }))
    }

    async fn list_findings(
        &self,
        request: tonic::Request<pb::ListFindingsRequest>,
    ) -> Result<tonic::Response<pb::ListFindingsResponse>, tonic::Status> {
        let r = request.get_ref();
        authorize(&request, &r.partner_tenant_id, Scope::ComplianceRead)?;
        // A token pins the evaluation it started on, so pages stay consistent.
        let (evaluation_id, after) = if r.page_token.is_empty() {
            (self.latest(&r.partner_tenant_id).await?.evaluation_id, 0)
        } else {
            let text = decode_token(&r.page_token)?;
            let (id, seq) = text
                .rsplit_once('|')
                .and_then(|(id, seq)| Some((id.to_owned(), seq.parse::<i64>().ok()?)))
                .ok_or_else(|| ComplianceError::invalid("page_token is malformed"))?;
            let record = self.engine.store.get_evaluation(&id).await?;
            if record.is_none_or(|e| e.partner_tenant_id != r.partner_tenant_id) {
                return Err(ComplianceError::invalid("page_token is not for this partner").into());
            }
            (id, seq)
        };
        let limit = page_size(r.page_size);
        let filter = FindingFilter {
            checks: r.checks.clone(),
            statuses: r.statuses.clone(),
            customer_tenant_id: (!r.customer_tenant_id.is_empty())
                .then(|| r.customer_tenant_id.to_ascii_lowercase()),
        };
        let mut rows = self
            .engine
            .store
            .list_findings(&evaluation_id, &filter, after, limit + 1)
            .await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            encode_token(&format!(
                "{evaluation_id}|{}",
                rows.last().map_or(0, |(s, _)| *s)
            ))
        } else {
            String::new()
        };
        Ok(tonic::Response::new(pb::ListFindingsResponse {
            findings: rows.into_iter().map(|(_, f)| f).collect(),
            next_page_token,
        }))
    }

    async fn get_history(
        &self,
        request: tonic::Request<pb::GetHistoryRequest>,
    ) -> Result<tonic::Response<pb::GetHistoryResponse>, tonic::Status> {
        let r = request.get_ref();
        authorize(&request, &r.partner_tenant_id, Scope::ComplianceRead)?;
        let before = if r.page_token.is_empty() {
            None
        } else {
            let text = decode_token(&r.page_token)?;
            Some(
                text.split_once('|')
                    .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                    .ok_or_else(|| ComplianceError::invalid("page_token is malformed"))?,
            )
        };
        let range = r.time_range.as_ref();
        let limit = page_size(r.page_size);
        let mut records = self
            .engine
            .store
            .history(
                &r.partner_tenant_id,
                range.and_then(|t| t.start.as_ref()).map(to_millis),
                range.and_then(|t| t.end.as_ref()).map(to_millis),
                before,
                limit + 1,
            )
            .await?;
        let next_page_token = if records.len() as i64 > limit {
            records.truncate(limit as usize);
            records
                .last()
                .map(|l| {
                    encode_token(&format!(
                        "{}|{}",
                        l.finished_at.unwrap_or_default(),
                        l.evaluation_id
                    ))
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Newest first; the trend is newest minus oldest of the page.
        let trend = match (records.first(), records.last()) {
            (Some(newest), Some(oldest)) => {
                newest.score.unwrap_or_default() - oldest.score.unwrap_or_default()
            }
            _ => 0.0,
        };
        Ok(tonic::Response::new(pb::GetHistoryResponse {
            points: records.iter().map(history_point).collect(),
            trend: (trend * 10.0).round() / 10.0,
            next_page_token,
        }))
    }

    async fn list_customer_posture(
        &self,
        request: tonic::Request<pb::ListCustomerPostureRequest>,
    ) -> Result<tonic::Response<pb::ListCustomerPostureResponse>, tonic::Status> {
        let r = request.get_ref();
        authorize(&request, &r.partner_tenant_id, Scope::ComplianceRead)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&r.page_token)?)
        };
        let limit = page_size(r.page_size);
        let (mut rows, total) = self
            .engine
            .store
            .list_posture(
                &r.partner_tenant_id,
                &r.statuses,
                after.as_deref(),
                limit + 1,
            )
            .await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|l| encode_token(&l.customer_tenant_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(tonic::Response::new(pb::ListCustomerPostureResponse {
            customers: rows
                .into_iter()
                .map(|c| pb::CustomerPosture {
                    customer_tenant_id: c.customer_tenant_id,
                    display_name: c.display_name,
                    admin_mfa: c.status as i32,
                    mfa_mechanism: c.mechanism,
                    admins_total: c.admins_total,
                    admins_with_mfa: c.admins_with_mfa,
                    detail: c.detail,
                    evaluated_at: Some(from_millis(c.evaluated_at)),
                })
                .collect(),
            next_page_token,
            total,
        }))
    }

    type ExportReportStream = BoxStream<pb::ExportReportChunk>;

    async fn export_report(
        &self,
        request: tonic::Request<pb::ExportReportRequest>,
    ) -> Result<tonic::Response<Self::ExportReportStream>, tonic::Status> {
        let r = request.get_ref();
        authorize(&request, &r.partner_tenant_id, Scope::ComplianceRead)?;
        let format = pb::ReportFormat::try_from(r.format).unwrap_or(pb::ReportFormat::Unspecified);
        if format == pb::ReportFormat::Unspecified {
            return Err(ComplianceError::invalid("format must be CSV, JSON or HTML").into());
        }
        let latest = self.latest(&r.partner_tenant_id).await?;
        let status = latest.status.unwrap_or_default();
        let mut findings = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .engine
                .store
                .list_findings(
                    &latest.evaluation_id,
                    &FindingFilter::default(),
                    after,
                    5000,
                )
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            findings.extend(page.into_iter().map(|(_, f)| f));
        }
        let (bytes, content_type) = match format {
            pb::ReportFormat::Csv => (report::csv(&status, &findings), "text/csv; charset=utf-8"),
            pb::ReportFormat::Json => (report::json(&status, &findings), "application/json"),
            _ => (report::html(&status, &findings), "text/html; charset=utf-8"),
        };
        let chunks: Vec<Result<pb::ExportReportChunk, tonic::Status>> = bytes
            .chunks(EXPORT_CHUNK)
            .map(|c| {
                Ok(pb::ExportReportChunk {
                    data: c.to_vec(),
                    content_type: content_type.to_owned(),
                })
            })
            .collect();
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(
            chunks,
        ))))
    }

    type EvaluateNowStream = BoxStream<pb::EvaluateNowProgress>;

    async fn evaluate_now(
        &self,
        request: tonic::Request<pb::EvaluateNowRequest>,
    ) -> Result<tonic::Response<Self::EvaluateNowStream>, tonic::Status> {
        let partner = request.get_ref().partner_tenant_id.clone();
        authorize(&request, &partner, Scope::ComplianceWrite)?;
        let engine = Arc::clone(&self.engine);
        // Evaluating a partner once puts it on the default schedule.
        let now = engine.now();
        engine
            .store
            .ensure_schedule(
                &partner,
                engine.settings.default_interval.as_millis() as i64,
                now + engine.settings.default_interval.as_millis() as i64,
                now,
            )
            .await?;
        let mut rx = engine.start_or_join(&partner, "manual");
        let stream = async_stream(move |tx| async move {
            let mut last_sent: Option<Progress> = None;
            loop {
                let state = rx.borrow_and_update().clone();
                match state {
                    RunState::Progress(p) => {
                        if last_sent.as_ref() != Some(&p) {
                            last_sent = Some(p.clone());
                            if tx
                                .send(Ok(pb::EvaluateNowProgress {
                                    progress: Some(p),
                                    status: None,
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    RunState::Done(Ok(status)) => {
                        let customers = last_sent.map(|p| (p.total, p.failed)).unwrap_or_default();
                        let _ = tx
                            .send(Ok(pb::EvaluateNowProgress {
                                progress: Some(Progress {
                                    done: customers.0,
                                    total: customers.0,
                                    failed: customers.1,
                                    message: "done".into(),
                                }),
                                status: Some(status),
                            }))
                            .await;
                        return;
                    }
                    RunState::Done(Err(e)) => {
                        let _ = tx
                            .send(Err(tonic::Status::unavailable(format!(
                                "evaluation failed: {e}"
                            ))))
                            .await;
                        return;
                    }
                    RunState::Elsewhere(evaluation_id) => {
                        follow_elsewhere(&engine, &evaluation_id, &tx).await;
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }

    async fn set_evaluation_schedule(
        &self,
        request: tonic::Request<pb::SetEvaluationScheduleRequest>,
    ) -> Result<tonic::Response<pb::SetEvaluationScheduleResponse>, tonic::Status> {
        let r = request.get_ref();
        authorize(&request, &r.partner_tenant_id, Scope::ComplianceWrite)?;
        let settings = &self.engine.settings;
        let interval = if r.interval_seconds == 0 {
            settings.default_interval
        } else {
            Duration::from_secs(u64::from(r.interval_seconds))
        };
        if interval < settings.min_interval {
            return Err(ComplianceError::invalid(format!(
                "interval_seconds must be at least {}",
                settings.min_interval.as_secs()
            ))
            .into());
        }
        let now = self.engine.now();
        let interval_ms = interval.as_millis() as i64;
        // Keep an earlier next run if one is already planned.
        let next = match self.engine.store.get_schedule(&r.partner_tenant_id).await? {
            Some(s) if s.enabled && s.next_run_at <= now + interval_ms => s.next_run_at,
            _ => now + interval_ms,
        };
        let schedule = self
            .engine
            .store
            .set_schedule(&r.partner_tenant_id, interval_ms, r.enabled, next, now)
            .await?;
        Ok(tonic::Response::new(pb::SetEvaluationScheduleResponse {
            interval_seconds: (schedule.interval_ms / 1000) as u32,
            enabled: schedule.enabled,
            next_run_at: schedule.enabled.then(|| from_millis(schedule.next_run_at)),
        }))
    }
}

/// Another replica holds the evaluation: report its progress from the store until it ends.
async fn follow_elsewhere(
    engine: &Arc<Engine>,
    evaluation_id: &str,
    tx: &tokio::sync::mpsc::Sender<Result<pb::EvaluateNowProgress, tonic::Status>>,
) {
    loop {
        let record = match engine.store.get_evaluation(evaluation_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let progress = Progress {
            done: record.customers_done,
            total: record.customers_total,
            failed: record.customers_failed,
            message: if record.state == STATE_RUNNING {
                "running on another replica".into()
            } else {
                record.state.clone()
            },
        };
        if record.state != STATE_RUNNING {
            let _ = tx
                .send(Ok(pb::EvaluateNowProgress {
                    progress: Some(progress),
                    status: record.status,
                }))
                .await;
            return;
        }
        if tx
            .send(Ok(pb::EvaluateNowProgress {
                progress: Some(progress),
                status: None,
            }))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A stream fed by a task through a bounded channel (the task stops when the client leaves).
fn async_stream<T, F, Fut>(f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
