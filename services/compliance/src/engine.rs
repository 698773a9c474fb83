//! The evaluation of one partner, and the scheduler that runs evaluations for many.
//!
//! An evaluation is leased in the store (one per partner at a time, across replicas) and
//! renewed by a heartbeat; a replica that dies leaves a lease that runs out, and the next
//! scheduler tick resumes the evaluation, skipping the customers already saved. It reads the
//! partner tenant and Palisade's own records concurrently, then every customer tenant with
//! bounded concurrency (one semaphore for the whole replica, so many partners at once cannot
//! multiply it), each customer's failure staying that customer's `unknown`. Scoring, findings,
//! the check states and the `compliance.changed` events are written in one transaction.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use palisade_clock::SharedClock;
use palisade_contracts::{
    common::v1::{Progress, Severity},
    compliance::v1::{CheckKind, CheckStatus, ComplianceStatus, Finding},
    tokens::v1::Resource,
};
use palisade_queue::outbox::OutboxRelay;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{ComplianceError, Result},
    model::*,
    rules,
    score::{self, ScoreWeights},
    sources::{GraphTenant, Microsoft, PartnerCenterPartner, Peers},
    store::{Claim, Completion, ComplianceStore, RunProgress},
};

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationSettings {
    /// How often each partner is evaluated unless its schedule says otherwise.
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
    /// The shortest interval `SetEvaluationSchedule` accepts.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Customer tenants evaluated at once, across every partner this replica evaluates.
    pub customer_concurrency: usize,
    /// Partners evaluated at once by the scheduler.
    pub partner_concurrency: usize,
    /// How long an evaluation's lease lasts without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the scheduler looks for due and abandoned evaluations.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Customers' posture is saved in batches of this many (and so resumes from there).
    pub save_batch: usize,
    /// DAP is only in Partner Center's get-customer-by-id, limited to 500 a minute per partner:
    /// each evaluation reads at most this many (never-read and stalest first).
    pub dap_reads_per_run: usize,
    /// A customer's DAP flag is read again after this long.
    #[serde(with = "humantime_serde")]
    pub dap_recheck: Duration,
    /// Findings are kept for this many evaluations per partner; scores for ever.
    pub keep_findings_of: u32,
    /// After an event (a relationship or token changed), the partner is evaluated this soon.
    #[serde(with = "humantime_serde")]
    pub event_debounce: Duration,
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(3600),
            min_interval: Duration::from_secs(60),
            customer_concurrency: 64,
            partner_concurrency: 4,
            lease: Duration::from_secs(60),
            tick: Duration::from_secs(5),
            save_batch: 200,
            dap_reads_per_run: 300,
            dap_recheck: Duration::from_secs(7 * 86_400),
            keep_findings_of: 10,
            event_debounce: Duration::from_secs(30),
        }
    }
}

impl EvaluationSettings {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.customer_concurrency == 0 {
            return Err("evaluation.customer_concurrency: must be at least 1".into());
        }
        if self.partner_concurrency == 0 {
            return Err("evaluation.partner_concurrency: must be at least 1".into());
        }
        if self.lease < Duration::from_secs(3) {
            return Err("evaluation.lease: must be at least 3s".into());
        }
        if self.default_interval < self.min_interval {
            return Err("evaluation.default_interval: must not be below min_interval".into());
        }
        if self.save_batch == 0 {
            return Err("evaluation.save_batch: must be at least 1".into());
        }
        Ok(())
    }
}

/// What a running evaluation reports to whoever watches it.
#[derive(Debug, Clone)]
pub enum RunState {
    Progress(Progress),
    Done(std::result::Result<ComplianceStatus, String>),
    /// Another replica runs it; watch the store.
    Elsewhere(String),
}

/// The compliance engine of one replica.
pub struct Engine {
    pub store: Arc<dyn ComplianceStore>,
    peers: Arc<dyn Peers>,
    microsoft: Arc<Microsoft>,
    clock: SharedClock,
    pub settings: EvaluationSettings,
    weights: ScoreWeights,
    relay: Option<OutboxRelay>,
    /// This replica's name on leases.
    owner: String,
    customers: Arc<Semaphore>,
    partners: Arc<Semaphore>,
    running: Mutex<HashMap<String, watch::Receiver<RunState>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ComplianceStore>,
        peers: Arc<dyn Peers>,
        microsoft: Arc<Microsoft>,
        clock: SharedClock,
        settings: EvaluationSettings,
        weights: ScoreWeights,
        relay: Option<OutboxRelay>,
    ) -> Self {
        Self {
            store,
            peers,
            microsoft,
            clock,
            customers: Arc::new(Semaphore::new(settings.customer_concurrency)),
            partners: Arc::new(Semaphore::new(settings.partner_concurrency)),
            settings,
            weights,
            relay,
            owner: format!("compliance-{}", uuid::Uuid::new_v4().simple()),
            running: Mutex::new(HashMap::new()),
        }
    }

    pub fn microsoft(&self) -> &Arc<Microsoft> {
        &self.microsoft
    }

    pub fn now(&self) -> i64 {
        self.clock.now_millis()
    }

    /// Starts an evaluation of `partner`, or joins the one this replica is running.
    pub fn start_or_join(
        self: &Arc<Self>,
        partner: &str,
        trigger: &str,
    ) -> watch::Receiver<RunState> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = running.get(partner) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(RunState::Progress(Progress {
            message: "starting".into(),
            ..Progress::default()
        }));
        running.insert(partner.to_owned(), rx.clone());
        drop(running);
        let engine = Arc::clone(self);
        let partner = partner.to_owned();
        let trigger = trigger.to_owned();
        tokio::spawn(async move {
            let outcome = engine.evaluate(&partner, &trigger, &tx).await;
            engine
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&partner);
            let _ = tx.send(match outcome {
                Ok(status) => RunState::Done(Ok(status)),
                Err(ComplianceError::Busy(id)) => RunState::Elsewhere(id),
                Err(e) => {
                    tracing::warn!(partner, error = %e, "evaluation failed");
                    RunState::Done(Err(e.to_string()))
                }
            });
        });
        rx
    }

    /// Runs one evaluation to the end (or resumes an abandoned one).
    pub async fn evaluate(
        &self,
        partner: &str,
        trigger: &str,
        progress: &watch::Sender<RunState>,
    ) -> Result<ComplianceStatus> {
        let lease_ms = self.settings.lease.as_millis() as i64;
        let record = match self
            .store
            .claim_evaluation(partner, &self.owner, trigger, self.now(), lease_ms)
            .await?
        {
            Claim::Started(r) => r,
            Claim::Resumed(r) => {
                tracing::info!(partner, evaluation_id = %r.evaluation_id, done = r.customers_done, "resuming an abandoned evaluation");
                r
            }
            Claim::Busy(r) => return Err(ComplianceError::Busy(r.evaluation_id)),
        };
        let evaluation_id = record.evaluation_id.clone();
        let shared = Arc::new(Mutex::new(RunProgress {
            total: record.customers_total,
            done: record.customers_done,
            failed: record.customers_failed,
        }));
        let lost = CancellationToken::new();
        let heartbeat = {
            let store = Arc::clone(&self.store);
            let shared = Arc::clone(&shared);
            let lost = lost.clone();
            let owner = self.owner.clone();
            let id = evaluation_id.clone();
            let clock = Arc::clone(&self.clock);
            let every = self.settings.lease / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let p = *shared.lock().unwrap_or_else(|e| e.into_inner());
                    match store
                        .renew_lease(&id, &owner, p, clock.now_millis(), lease_ms)
                        .await
                    {
                        Ok(()) => {}
                        Err(ComplianceError::LeaseLost(_)) => {
                            lost.cancel();
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                    }
                }
            })
        };
        let result = tokio::select! {
            r = self.run(partner, &evaluation_id, &shared, progress) => r,
            () = lost.cancelled() => Err(ComplianceError::LeaseLost(evaluation_id.clone())),
        };
        heartbeat.abort();
        if let Err(e) = &result
            && !matches!(e, ComplianceError::LeaseLost(_))
        {
            let _ = self
                .store
                .fail_evaluation(&evaluation_id, &self.owner, &e.to_string(), self.now())
                .await;
        }
        result
    }

    async fn run(
        &self,
        partner: &str,
        evaluation_id: &str,
        shared: &Arc<Mutex<RunProgress>>,
        progress: &watch::Sender<RunState>,
    ) -> Result<ComplianceStatus> {
        let report = |p: RunProgress, message: &str| {
            let _ = progress.send(RunState::Progress(Progress {
                done: p.done,
                total: p.total,
                failed: p.failed,
                message: message.to_owned(),
            }));
        };
        report(RunProgress::default(), "reading the partner tenant");
        let now = self.now();
        let mut observations = self.observe_partner(partner, now).await;
        let (customers, pc_token) = (observations.1, observations.2);
        let obs = &mut observations.0;

        // Customers: Partner Center's list, plus any customer only GDAP knows.
        let customers: Obs<Vec<CustomerRef>> = match (customers, &obs.relationships) {
            (Ok(mut list), Ok(rels)) => {
                let known: HashSet<String> = list.iter().map(|c| c.tenant_id.clone()).collect();
                let mut extra: Vec<CustomerRef> = rels
                    .iter()
                    .filter(|r| !r.customer_tenant_id.is_empty())
                    .filter(|r| !known.contains(&r.customer_tenant_id.to_ascii_lowercase()))
                    .map(|r| CustomerRef {
                        tenant_id: r.customer_tenant_id.to_ascii_lowercase(),
                        display_name: r.customer_name.clone(),
                    })
                    .collect();
                extra.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
                extra.dedup_by(|a, b| a.tenant_id == b.tenant_id);
                list.extend(extra);
                Ok(list)
            }
            (Ok(list), Err(_)) => Ok(list),
            (Err(e), Ok(rels)) if !rels.is_empty() => {
                tracing::warn!(partner, error = %e, "customer list unavailable; using GDAP relationships");
                let mut list: Vec<CustomerRef> = rels
                    .iter()
                    .map(|r| CustomerRef {
                        tenant_id: r.customer_tenant_id.to_ascii_lowercase(),
                        display_name: r.customer_name.clone(),
                    })
                    .collect();
                list.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
                list.dedup_by(|a, b| a.tenant_id == b.tenant_id);
                Ok(list)
            }
            (Err(e), _) => Err(e),
        };

        let rows = match &customers {
            Ok(list) => {
                self.evaluate_customers(
                    partner,
                    evaluation_id,
                    list,
                    pc_token.as_ref().ok(),
                    shared,
                    &report,
                )
                .await?
            }
            Err(_) => Vec::new(),
        };
        let p = *shared.lock().unwrap_or_else(|e| e.into_inner());
        report(p, "scoring");

        obs.dap_customers = match &customers {
            Err(e) => Err(e.clone()),
            Ok(_) => {
                let dap: Vec<CustomerRef> = rows
                    .iter()
                    .filter(|r| r.dap == Some(true))
                    .map(|r| CustomerRef {
                        tenant_id: r.customer_tenant_id.clone(),
                        display_name: r.display_name.clone(),
                    })
                    .collect();
                let unread = rows.iter().filter(|r| r.dap.is_none()).count();
                if dap.is_empty() && unread > 0 {
                    Err(format!(
                        "DAP not yet read for {unread} customer(s); {} are read per evaluation",
                        self.settings.dap_reads_per_run
                    ))
                } else {
                    Ok(dap)
                }
            }
        };
        let mut checks = rules::evaluate_partner(obs, &rows, rows.len());
        if let Err(e) = &customers {
            let check = checks
                .iter_mut()
                .find(|c| c.check == CheckKind::CustomerAdminMfa)
                .expect("every check is evaluated");
            check.status = CheckStatus::Unknown;
            check.ratio = None;
            check.summary = format!("the partner's customers could not be listed: {e}");
        }
        self.complete(partner, evaluation_id, obs, &checks, &rows, p)
            .await
    }

    /// Reads the partner tenant and Palisade's own records, concurrently. Returns the
    /// observations, the customer list and the Partner Center token.
    async fn observe_partner(
        &self,
        partner: &str,
        now: i64,
    ) -> (PartnerObservations, Obs<Vec<CustomerRef>>, Obs<String>) {
        let (graph_token, pc_token) = tokio::join!(
            self.peers.access_token(partner, partner, Resource::Graph),
            self.peers
                .access_token(partner, partner, Resource::PartnerCenter),
        );
        let graph_budgets = self.microsoft.graph_budgets(partner);
        let pc_budgets = self.microsoft.partner_center_budgets(partner);
        let no_graph = |e: &String| -> String { format!("no Graph token for the partner: {e}") };
        let no_pc =
            |e: &String| -> String { format!("no Partner Center token for the partner: {e}") };

        let graph = async {
            match &graph_token {
                Ok(token) => {
                    let g = GraphTenant {
                        microsoft: &self.microsoft,
                        token,
                        budgets: &graph_budgets,
                    };
                    tokio::join!(
                        g.security_defaults(),
                        g.ca_policies(),
                        g.registrations(false),
                        g.skus(),
                        g.relationships(),
                        g.security_score(),
                    )
                }
                Err(e) => (
                    Err(no_graph(e)),
                    Err(no_graph(e)),
                    Err(no_graph(e)),
                    Err(no_graph(e)),
                    Err(no_graph(e)),
                    Err(no_graph(e)),
                ),
            }
        };
        let pc = async {
            match &pc_token {
                Ok(token) => {
                    let p = PartnerCenterPartner {
                        microsoft: &self.microsoft,
                        token,
                        budgets: &pc_budgets,
                    };
                    tokio::join!(p.non_mfa_principals(), p.request_share(), p.customers())
                }
                Err(e) => (Err(no_pc(e)), Err(no_pc(e)), Err(no_pc(e))),
            }
        };
        let palisade = async {
            tokio::join!(
                self.peers.token_mfa(partner, now - 7 * DAY_MS, now),
                self.peers.sam(partner),
                self.peers.contacts(partner),
                self.peers.alert_response(partner, now),
            )
        };
        let (
            (security_defaults, ca_policies, registrations, skus, relationships, ms_score),
            (non_mfa_principals, api_requests, customers),
            (token_mfa, sam, contacts, alert_response),
        ) = tokio::join!(graph, pc, palisade);
        (
            PartnerObservations {
                security_defaults,
                ca_policies,
                registrations,
                non_mfa_principals,
                api_requests,
                token_mfa,
                sam,
                contacts,
                alert_response,
                ms_score,
                relationships,
                dap_customers: Err("not read yet".into()),
                skus,
                now_millis: now,
            },
            customers,
            pc_token,
        )
    }

    /// Every customer's admin MFA (and, within the per-run budget, DAP), saved in batches.
    /// Returns every customer row of this evaluation, resumed ones included.
    async fn evaluate_customers(
        &self,
        partner: &str,
        evaluation_id: &str,
        customers: &[CustomerRef],
        pc_token: Option<&String>,
        shared: &Arc<Mutex<RunProgress>>,
        report: &(dyn Fn(RunProgress, &str) + Sync),
    ) -> Result<Vec<CustomerPostureRow>> {
        let lease_ms = self.settings.lease.as_millis() as i64;
        let already: HashSet<String> = self
            .store
            .customers_of_evaluation(partner, evaluation_id)
            .await?
            .into_iter()
            .map(|r| r.customer_tenant_id)
            .collect();
        // DAP reads: never-read first, then the stalest, within the per-run budget.
        let now = self.now();
        let stale_before = now - self.settings.dap_recheck.as_millis() as i64;
        let previous: HashMap<String, Option<i64>> = self
            .store
            .posture_of(partner)
            .await?
            .into_iter()
            .map(|r| (r.customer_tenant_id, r.dap_checked_at))
            .collect();
        let mut due: Vec<(&str, i64)> = customers
            .iter()
            .filter(|c| !already.contains(&c.tenant_id))
            .filter_map(|c| {
                let at = previous.get(&c.tenant_id).copied().flatten();
                match at {
                    Some(at) if at >= stale_before => None,
                    other => Some((c.tenant_id.as_str(), other.unwrap_or(i64::MIN))),
                }
            })
            .collect();
        due.sort_by_key(|(_, at)| *at);
        let read_dap: HashSet<&str> = if pc_token.is_some() {
            due.into_iter()
                .take(self.settings.dap_reads_per_run)
                .map(|(id, _)| id)
                .collect()
        } else {
            HashSet::new()
        };

        {
            let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
            p.total = customers.len() as u64;
            p.done = already.len() as u64;
            report(*p, "evaluating customer tenants");
        }
        let pending: Vec<CustomerRef> = customers
            .iter()
            .filter(|c| !already.contains(&c.tenant_id))
            .cloned()
            .collect();
        let pc_budgets = self.microsoft.partner_center_budgets(partner);
        // DAP reads run beside the Graph pass, never holding a customer slot while they wait
        // for Partner Center's budget.
        let dap_pass = async {
            let Some(token) = pc_token else {
                return Vec::new();
            };
            let pc = PartnerCenterPartner {
                microsoft: &self.microsoft,
                token,
                budgets: &pc_budgets,
            };
            let pc = &pc;
            let wanted: Vec<String> = read_dap.iter().map(|c| (*c).to_owned()).collect();
            futures::stream::iter(wanted)
                .map(|customer: String| async move {
                    match pc.dap_allowed(&customer).await {
                        Ok(dap) => Some((customer, dap)),
                        Err(e) => {
                            tracing::debug!(%customer, error = %e, "DAP not read");
                            None
                        }
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<Option<(String, bool)>>>()
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        };
        let graph_pass = async {
            let mut stream = futures::stream::iter(pending)
                .map(|c| async move {
                    let _permit = self.customers.acquire().await;
                    self.evaluate_customer(partner, &c).await
                })
                .buffer_unordered(self.settings.customer_concurrency);
            let mut batch = Vec::with_capacity(self.settings.save_batch);
            let mut all = Vec::new();
            while let Some(row) = stream.next().await {
                {
                    let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
                    p.done += 1;
                    if row.status == CheckStatus::Unknown {
                        p.failed += 1;
                    }
                }
                batch.push(row);
                if batch.len() >= self.settings.save_batch {
                    let p = *shared.lock().unwrap_or_else(|e| e.into_inner());
                    self.store
                        .save_customers(
                            evaluation_id,
                            &self.owner,
                            partner,
                            &batch,
                            p,
                            self.now(),
                            lease_ms,
                        )
                        .await?;
                    all.append(&mut batch);
                    report(p, "evaluating customer tenants");
                }
            }
            let p = *shared.lock().unwrap_or_else(|e| e.into_inner());
            if !batch.is_empty() {
                self.store
                    .save_customers(
                        evaluation_id,
                        &self.owner,
                        partner,
                        &batch,
                        p,
                        self.now(),
                        lease_ms,
                    )
                    .await?;
                all.append(&mut batch);
            }
            Ok::<_, ComplianceError>(all)
        };
        let (rows, dap) = tokio::join!(graph_pass, dap_pass);
        let rows = rows?;
        let p = *shared.lock().unwrap_or_else(|e| e.into_inner());
        if !dap.is_empty() {
            let read: HashMap<String, bool> = dap.into_iter().collect();
            let updated: Vec<CustomerPostureRow> = rows
                .into_iter()
                .filter_map(|mut r| {
                    let dap = *read.get(&r.customer_tenant_id)?;
                    r.dap = Some(dap);
                    r.dap_checked_at = Some(now);
                    Some(r)
                })
                .collect();
            self.store
                .save_customers(
                    evaluation_id,
                    &self.owner,
                    partner,
                    &updated,
                    p,
                    self.now(),
                    lease_ms,
                )
                .await?;
        }
        report(p, "customer tenants evaluated");
        self.store
            .customers_of_evaluation(partner, evaluation_id)
            .await
    }

    /// One customer: a Graph token through GDAP, then security defaults, admins' registration
    /// and (when defaults are off) Conditional Access. Any failure is this customer's alone.
    async fn evaluate_customer(&self, partner: &str, customer: &CustomerRef) -> CustomerPostureRow {
        let now = self.now();
        let token = self
            .peers
            .access_token(partner, &customer.tenant_id, Resource::Graph)
            .await;
        let (sd, ca, admins) = match &token {
            Ok(token) => {
                let budgets = self.microsoft.graph_budgets(&customer.tenant_id);
                let g = GraphTenant {
                    microsoft: &self.microsoft,
                    token,
                    budgets: &budgets,
                };
                let (sd, admins) = tokio::join!(g.security_defaults(), g.registrations(true));
                let ca = if sd == Ok(true) {
                    Ok(Vec::new())
                } else {
                    g.ca_policies().await
                };
                (sd, ca, admins)
            }
            Err(e) => {
                let reason = format!("no access to the customer tenant: {e}");
                (Err(reason.clone()), Err(reason.clone()), Err(reason))
            }
        };
        rules::customer_admin_mfa(customer, &sd, &ca, &admins, now)
    }

    async fn complete(
        &self,
        partner: &str,
        evaluation_id: &str,
        obs: &PartnerObservations,
        checks: &[CheckResult],
        rows: &[CustomerPostureRow],
        progress: RunProgress,
    ) -> Result<ComplianceStatus> {
        let finished_at = self.now();
        let partner_findings: Vec<Finding> = checks
            .iter()
            .map(|c| {
                c.finding(
                    format!("{evaluation_id}:{}", check_name(c.check)),
                    finished_at,
                )
            })
            .collect();
        let mut findings = partner_findings.clone();
        findings.extend(customer_findings(evaluation_id, obs, rows, finished_at));
        let count = |s: CheckStatus| checks.iter().filter(|c| c.status == s).count() as u32;
        let (microsoft_score, microsoft_max_score) = obs
            .ms_score
            .as_ref()
            .map(|s| (s.current, s.max))
            .unwrap_or((0.0, 0.0));
        let status = ComplianceStatus {
            partner_tenant_id: partner.to_owned(),
            evaluation_id: evaluation_id.to_owned(),
            score: score::score(checks, &self.weights),
            max_score: 100.0,
            checks: partner_findings,
            evaluated_at: Some(palisade_contracts::time::from_millis(finished_at)),
            microsoft_score,
            microsoft_max_score,
        };
        let events = self
            .store
            .complete_evaluation(&Completion {
                evaluation_id: evaluation_id.to_owned(),
                owner: self.owner.clone(),
                partner_tenant_id: partner.to_owned(),
                finished_at,
                status: status.clone(),
                findings,
                passing: count(CheckStatus::Pass),
                failing: count(CheckStatus::Fail),
                warnings: count(CheckStatus::Warn),
                unknown: count(CheckStatus::Unknown),
                progress,
                keep_findings_of: self.settings.keep_findings_of,
            })
            .await?;
        if !events.is_empty()
            && let Some(relay) = &self.relay
        {
            relay.poke();
        }
        tracing::info!(
            partner,
            evaluation_id,
            score = status.score,
            changes = events.len(),
            customers = rows.len(),
            "evaluation complete"
        );
        Ok(status)
    }

    /// The scheduler: due partners, and evaluations whose owner died, until `shutdown`.
    pub async fn schedule_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.schedule_once().await {
                tracing::warn!(error = %e, "scheduler pass failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.tick) => {}
            }
        }
    }

    /// One scheduler pass; returns how many evaluations it started.
    pub async fn schedule_once(self: &Arc<Self>) -> Result<usize> {
        let now = self.now();
        let mut started = 0;
        let limit = self.settings.partner_concurrency as i64 * 2;
        for abandoned in self.store.abandoned(now, limit).await? {
            if self.is_running(&abandoned.partner_tenant_id) {
                continue;
            }
            self.spawn_bounded(&abandoned.partner_tenant_id, "resume");
            started += 1;
        }
        for schedule in self.store.due_schedules(now, limit).await? {
            if self.is_running(&schedule.partner_tenant_id) {
                continue;
            }
            let next = now
                + schedule
                    .interval_ms
                    .max(self.settings.min_interval.as_millis() as i64);
            // Compare-and-set: of several replicas seeing the same due schedule, one runs it.
            if self
                .store
                .claim_schedule(&schedule.partner_tenant_id, schedule.next_run_at, next)
                .await?
            {
                self.spawn_bounded(&schedule.partner_tenant_id, "schedule");
                started += 1;
            }
        }
        Ok(started)
    }

    fn is_running(&self, partner: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(partner)
    }

    fn spawn_bounded(self: &Arc<Self>, partner: &str, trigger: &str) {
        let engine = Arc::clone(self);
        let partner = partner.to_owned();
        let trigger = trigger.to_owned();
        tokio::spawn(async move {
            let Ok(_permit) = Arc::clone(&engine.partners).acquire_owned().await else {
                return;
            };
            let mut rx = engine.start_or_join(&partner, &trigger);
            while rx.changed().await.is_ok() {
                if !matches!(*rx.borrow(), RunState::Progress(_)) {
                    break;
                }
            }
        });
    }
}

/// Per-customer findings: admin MFA not enforced or unknown, leftover DAP, Global
/// Administrator in a relationship.
fn customer_findings(
    evaluation_id: &str,
    obs: &PartnerObservations,
    rows: &[CustomerPostureRow],
    at: i64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.status != CheckStatus::Pass) {
        let mut r = CheckResult::new(
            CheckKind::CustomerAdminMfa,
            "MFA for the customer tenant's admins",
            rules::docs::SECURITY_DEFAULTS,
        );
        r.status = row.status;
        r.severity = if row.status == CheckStatus::Fail {
            Severity::Medium
        } else {
            Severity::Low
        };
        r.summary = row.detail.clone();
        r.subjects = row.admins_without_mfa.clone();
        r.customer_tenant_id = row.customer_tenant_id.clone();
        r.remediation = if row.status == CheckStatus::Fail {
            "Turn on security defaults, or a Conditional Access policy requiring MFA for admin roles, and have every listed admin register a method.".into()
        } else {
            "Restore GDAP access (a relationship with a directory reader role and the app's consent) so the tenant can be evaluated.".into()
        };
        r = r
            .evidence("customer", &row.display_name)
            .evidence("mechanism", &row.mechanism)
            .evidence("admins_total", row.admins_total)
            .evidence("admins_with_mfa", row.admins_with_mfa);
        out.push(r.finding(
            format!("{evaluation_id}:customer:{}", row.customer_tenant_id),
            at,
        ));
    }
    for row in rows.iter().filter(|r| r.dap == Some(true)) {
        let mut r = CheckResult::new(
            CheckKind::GdapLeastPrivilege,
            "Legacy DAP still allowed",
            rules::docs::DAP_REMOVAL,
        );
        r.status = CheckStatus::Fail;
        r.severity = Severity::High;
        r.customer_tenant_id = row.customer_tenant_id.clone();
        r.summary = format!(
            "{} still allows delegated admin privileges (DAP)",
            row.display_name
        );
        r.remediation = format!(
            "Once GDAP covers the work, remove DAP: PATCH /v1/customers/{} with {{\"AllowDelegatedAccess\":false,\"attributes\":{{\"objectType\":\"Customer\"}}}}.",
            row.customer_tenant_id
        );
        out.push(r.finding(
            format!("{evaluation_id}:dap:{}", row.customer_tenant_id),
            at,
        ));
    }
    if let Ok(relationships) = &obs.relationships {
        for g in relationships.iter().filter(|g| {
            g.status.eq_ignore_ascii_case("active")
                && g.role_ids
                    .iter()
                    .any(|id| id.eq_ignore_ascii_case(ROLE_GLOBAL_ADMINISTRATOR))
        }) {
            let mut r = CheckResult::new(
                CheckKind::GdapLeastPrivilege,
                "Global Administrator in a GDAP relationship",
                rules::docs::GDAP,
            );
            r.status = CheckStatus::Fail;
            r.severity = Severity::High;
            r.customer_tenant_id = g.customer_tenant_id.to_ascii_lowercase();
            r.subjects = vec![g.id.clone()];
            r.summary = format!(
                "relationship \"{}\" grants Global Administrator",
                g.display_name
            );
            r.remediation =
                "Create a relationship with least-privileged roles and end this one.".into();
            out.push(r.finding(format!("{evaluation_id}:gdap:{}", g.id), at));
        }
    }
    out
}
