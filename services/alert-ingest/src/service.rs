//! `palisade.alerts.v1.AlertService`. Every RPC authorises the caller for the partner and the
//! scope first, before any lookup, so a denial never reveals whether data exists.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use palisade_auth::Scope;
use palisade_contracts::{
    alerts::v1::{alert_service_server::AlertService, *},
    common::v1::Progress,
    time::{from_millis, to_millis},
};
use tokio_stream::{StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use crate::{engine::Ingestor, error::IngestError, model::ChangeKind, store::ListQuery};

pub const RESPONSE_REQUIREMENT: Duration = Duration::from_secs(24 * 3600);
const DAY_MS: i64 = 86_400_000;

pub struct AlertApi {
    core: Arc<Ingestor>,
    default_poll_interval: Duration,
}

impl AlertApi {
    pub fn new(core: Arc<Ingestor>, default_poll_interval: Duration) -> Self {
        Self {
            core,
            default_poll_interval,
        }
    }
}

fn authorize<T>(
    request: &Request<T>,
    partner: &str,
    scope: Scope,
) -> Result<palisade_auth::Principal, Status> {
    palisade_auth::authorize(request, partner, scope)
}

fn actor(principal: &palisade_auth::Principal) -> String {
    format!("palisade:{}", principal.display_name)
}

/// Whether a change passes a watch filter.
fn matches(filter: &AlertFilter, alert: &Alert) -> bool {
    (filter.customer_tenant_id.is_empty() || filter.customer_tenant_id == alert.customer_tenant_id)
        && (filter.reseller_tenant_id.is_empty()
            || filter.reseller_tenant_id == alert.reseller_tenant_id)
        && (filter.statuses.is_empty() || filter.statuses.contains(&alert.status))
        && (filter.severities.is_empty() || filter.severities.contains(&alert.severity))
        && (filter.alert_types.is_empty()
            || filter
                .alert_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&alert.alert_type)))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AlertService for AlertApi {
    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let query = ListQuery {
            filter: r.filter.clone().unwrap_or_default(),
            sort_field: r.sort_field(),
            sort_order: r.sort_order(),
            page_size: if r.page_size <= 0 {
                50
            } else {
                r.page_size as usize
            },
            page_token: r.page_token,
            ..Default::default()
        };
        let (alerts, next_page_token) = self
            .core
            .store
            .list_alerts(&r.partner_tenant_id, &query)
            .await?;
        Ok(Response::new(ListAlertsResponse {
            alerts,
            next_page_token,
        }))
    }

    async fn get_alert(
        &self,
        request: Request<GetAlertRequest>,
    ) -> Result<Response<GetAlertResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let alert = self
            .core
            .store
            .get_alert_with_history(&r.partner_tenant_id, &r.alert_id)
            .await?
            .ok_or(IngestError::NotFound("alert"))?;
        Ok(Response::new(GetAlertResponse { alert: Some(alert) }))
    }

    async fn resolve_alert(
        &self,
        request: Request<ResolveAlertRequest>,
    ) -> Result<Response<ResolveAlertResponse>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsWrite,
        )?;
        let r = request.into_inner();
        let resolved = self
            .core
            .store
            .resolve(
                &r.partner_tenant_id,
                &r.alert_id,
                r.resolution(),
                &r.note,
                &actor(&principal),
                self.core.now(),
            )
            .await?;
        if resolved.changed {
            self.core
                .committed([(ChangeKind::Resolved, resolved.alert.clone())]);
        }
        Ok(Response::new(ResolveAlertResponse {
            alert: Some(resolved.alert),
        }))
    }

    type BulkResolveStream = BoxStream<BulkResolveProgress>;

    async fn bulk_resolve(
        &self,
        request: Request<BulkResolveRequest>,
    ) -> Result<Response<Self::BulkResolveStream>, Status> {
        let principal = authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsWrite,
        )?;
        let r = request.into_inner();
        if r.resolution() == Resolution::Unspecified && !r.dry_run {
            return Err(
                IngestError::invalid("resolution must be legitimate, fraud or ignore").into(),
            );
        }
        let now = self.core.now();
        let mut query = ListQuery {
            filter: r.filter.clone().unwrap_or_default(),
            sort_field: AlertSortField::LastObserved,
            sort_order: palisade_contracts::common::v1::SortOrder::Ascending,
            page_size: 100,
            open_only: true,
            last_observed_before: (r.older_than_seconds > 0)
                .then(|| now - r.older_than_seconds as i64 * 1000),
            ..Default::default()
        };
        let total = self
            .core
            .store
            .count_alerts(&r.partner_tenant_id, &query)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let core = Arc::clone(&self.core);
        let actor = actor(&principal);
        tokio::spawn(async move {
            let mut progress = Progress {
                total,
                ..Default::default()
            };
            if r.dry_run {
                progress.message = format!("{total} alerts would be resolved");
                let _ = tx
                    .send(Ok(BulkResolveProgress {
                        progress: Some(progress),
                        resolved_alert_ids: vec![],
                    }))
                    .await;
                return;
            }
            loop {
                let (alerts, next) =
                    match core.store.list_alerts(&r.partner_tenant_id, &query).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                let mut ids = Vec::new();
                for alert in alerts {
                    match core
                        .store
                        .resolve(
                            &r.partner_tenant_id,
                            &alert.alert_id,
                            r.resolution(),
                            &r.note,
                            &actor,
                            core.now(),
                        )
                        .await
                    {
                        Ok(resolved) => {
                            if resolved.changed {
                                core.committed([(ChangeKind::Resolved, resolved.alert)]);
                            }
                            progress.done += 1;
                            ids.push(alert.alert_id);
                        }
                        Err(e) => {
                            tracing::warn!(alert_id = %alert.alert_id, error = %e, "bulk resolve skipped an alert");
                            progress.failed += 1;
                        }
                    }
                }
                let last = next.is_empty();
                progress.message = if last {
                    "done".into()
                } else {
                    "resolving".into()
                };
                if tx
                    .send(Ok(BulkResolveProgress {
                        progress: Some(progress.clone()),
                        resolved_alert_ids: ids,
                    }))
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
                query.page_token = next;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_daily_summary(
        &self,
        request: Request<GetDailySummaryRequest>,
    ) -> Result<Response<GetDailySummaryResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let end = r
            .as_of
            .as_ref()
            .map(to_millis)
            .unwrap_or_else(|| self.core.now());
        let start = end - 60 * DAY_MS;
        let by_type = self
            .core
            .store
            .daily_summary(&r.partner_tenant_id, start, end + 1)
            .await?;
        Ok(Response::new(GetDailySummaryResponse {
            unresolved_alerts: by_type.iter().map(|t| t.unresolved_alerts).sum(),
            by_type,
            window_start: Some(from_millis(start)),
            window_end: Some(from_millis(end)),
        }))
    }

    async fn get_response_times(
        &self,
        request: Request<GetResponseTimesRequest>,
    ) -> Result<Response<GetResponseTimesResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let end = r
            .as_of
            .as_ref()
            .map(to_millis)
            .unwrap_or_else(|| self.core.now());
        let requirement = RESPONSE_REQUIREMENT.as_millis() as i64;
        let times = self
            .core
            .store
            .response_times(
                &r.partner_tenant_id,
                end - 30 * DAY_MS,
                end + 1,
                requirement,
            )
            .await?;
        let average = times.average_ms / 1000.0;
        Ok(Response::new(GetResponseTimesResponse {
            average_response_seconds: average,
            resolved_in_window: times.resolved,
            requirement_seconds: RESPONSE_REQUIREMENT.as_secs_f64(),
            meets_requirement: average <= RESPONSE_REQUIREMENT.as_secs_f64()
                && times.unresolved_over == 0,
            breaching_alerts: times.breaching,
            unresolved_older_than_requirement: times.unresolved_over,
        }))
    }

    type WatchAlertsStream = BoxStream<WatchAlertsResponse>;

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let filter = r.filter.unwrap_or_default();
        let partner = r.partner_tenant_id;
        let stream =
            BroadcastStream::new(self.core.changes.subscribe()).filter_map(
                move |item| match item {
                    Ok(change)
                        if change.alert.partner_tenant_id == partner
                            && matches(&filter, &change.alert) =>
                    {
                        let mut alert = change.alert;
                        alert.history.clear();
                        Some(Ok(WatchAlertsResponse {
                            change: change.kind as i32,
                            alert: Some(alert),
                        }))
                    }
                    Ok(_) => None,
                    // A slow watcher missed changes: tell it, so it can re-list.
                    Err(_) => Some(Err(Status::data_loss(
                        "watch fell behind; list again and re-watch",
                    ))),
                },
            );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn configure_ingestion(
        &self,
        request: Request<ConfigureIngestionRequest>,
    ) -> Result<Response<ConfigureIngestionResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsWrite,
        )?;
        let r = request.into_inner();
        let mut settings = r.settings.unwrap_or_default();
        if settings.poll_interval_seconds == 0 {
            settings.poll_interval_seconds = self.default_poll_interval.as_secs().max(1) as u32;
        }
        if !settings.webhook_url.is_empty() {
            let url = url::Url::parse(&settings.webhook_url)
                .map_err(|e| IngestError::invalid(format!("webhook_url: {e}")))?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(IngestError::invalid("webhook_url must be http(s)").into());
            }
        }
        self.core
            .store
            .put_ingestion(&r.partner_tenant_id, &settings, self.core.now())
            .await?;
        if !settings.webhook_url.is_empty() {
            // Saved first: a registration that fails can be repeated by calling again.
            self.core
                .register_webhook(&r.partner_tenant_id, &settings.webhook_url)
                .await
                .map_err(|e| {
                    IngestError::Unavailable(format!(
                        "settings saved; webhook registration failed: {e}"
                    ))
                })?;
        }
        Ok(Response::new(ConfigureIngestionResponse {
            settings: Some(settings),
        }))
    }

    async fn get_ingestion_status(
        &self,
        request: Request<GetIngestionStatusRequest>,
    ) -> Result<Response<GetIngestionStatusResponse>, Status> {
        authorize(
            &request,
            &request.get_ref().partner_tenant_id,
            Scope::AlertsRead,
        )?;
        let r = request.into_inner();
        let settings = self
            .core
            .store
            .get_ingestion(&r.partner_tenant_id)
            .await?
            .ok_or(IngestError::NotFound("ingestion settings"))?;
        let sources = self
            .core
            .store
            .source_states(&r.partner_tenant_id)
            .await?
            .into_iter()
            .map(|s| SourceStatus {
                source: s.source,
                last_success_at: s.last_success_at.map(from_millis),
                last_attempt_at: s.last_attempt_at.map(from_millis),
                last_error: s.last_error,
                cursor: s.cursor_ms.map(from_millis),
                quarantined_payloads: s.quarantined,
            })
            .collect();
        let last_webhook_at = self
            .core
            .store
            .last_webhook_at(&r.partner_tenant_id)
            .await?
            .map(from_millis);
        Ok(Response::new(GetIngestionStatusResponse {
            settings: Some(settings),
            sources,
            last_webhook_at,
        }))
    }
}
