//! ms-sim: a simulator of the Microsoft endpoints Palisade calls, for tests, benchmarks and
//! the local run, because no machine here reaches Microsoft. Palisade's clients talk to it over
//! real HTTP with only their base URLs changed, so it must be as strict and as quirky as
//! Microsoft; where the reference marks a fact unverified, the choice is documented where it is
//! made.
//!
//! Each Microsoft host is its own listener (a client that mixes up base URLs fails as it would
//! in production). Today it serves Entra ID (`login_url`); Partner Center, Graph, Key Vault and
//! the webhooks are issue #3's remaining work. A control API (and its in-process twin,
//! [`Control`]) moves the clock, revokes tokens, changes policies and reads back every request.

mod control;
mod entra;
mod jwt;
pub mod scenario;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use palisade_clock::{Clock, OffsetClock};
use tokio_util::sync::CancellationToken;

pub use control::{Control, RequestFilter};

/// A filter for refresh-token redemptions at the token endpoints.
pub fn control_filter_refresh() -> RequestFilter {
    RequestFilter {
        host: Some("login".into()),
        grant_type: Some("refresh_token".into()),
        ..RequestFilter::default()
    }
}
pub use entra::{ARM, GRAPH, KEY_VAULT, PARTNER_CENTER};
pub use scenario::{Scenario, ScenarioConfig};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub bind_ip: IpAddr,
    pub scenario: ScenarioConfig,
    /// Fixed ports (login, control) for the standalone binary; 0 picks free ones.
    pub login_port: u16,
    pub control_port: u16,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            scenario: ScenarioConfig::default(),
            login_port: 0,
            control_port: 0,
        }
    }
}

/// One received request, as the control API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestRecord {
    pub at_ms: i64,
    /// Which Microsoft host: "login", "partner_center", "graph", "key_vault".
    pub host: String,
    pub method: String,
    pub path: String,
    pub tenant: String,
    pub grant_type: Option<String>,
    pub status: u16,
}

impl RequestRecord {
    fn new(host: &str, method: &str, path: &str, tenant: &str) -> Self {
        Self {
            at_ms: 0,
            host: host.into(),
            method: method.into(),
            path: path.into(),
            tenant: tenant.into(),
            grant_type: None,
            status: 0,
        }
    }
}

const LOG_LIMIT: usize = 200_000;

struct Inner {
    scenario: Scenario,
    signer: jwt::TokenSigner,
    clock: Arc<OffsetClock>,
    entra: Mutex<entra::EntraState>,
    log: Mutex<Vec<RequestRecord>>,
}

/// Shared simulator state; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sim(Arc<Inner>);

impl Sim {
    fn scenario(&self) -> &Scenario {
        &self.0.scenario
    }
    fn signer(&self) -> &jwt::TokenSigner {
        &self.0.signer
    }
    fn now_millis(&self) -> i64 {
        self.0.clock.now_millis()
    }
    fn with_entra<R>(&self, f: impl FnOnce(&mut entra::EntraState) -> R) -> R {
        f(&mut self.0.entra.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn log(&self, mut record: RequestRecord) {
        record.at_ms = self.now_millis();
        let mut log = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= LOG_LIMIT {
            log.drain(..LOG_LIMIT / 10);
        }
        log.push(record);
    }
}

/// A running simulator.
pub struct MsSim {
    sim: Sim,
    login: SocketAddr,
    control: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for MsSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsSim")
            .field("login", &self.login)
            .field("control", &self.control)
            .finish()
    }
}

fn url_of(addr: SocketAddr) -> url::Url {
    url::Url::parse(&format!("http://{addr}")).expect("a socket address is a valid URL host")
}

impl MsSim {
    /// Entra ID: `{login}/{tenant}/oauth2/token`, `/oauth2/v2.0/token`, `/oauth2/authorize`.
    pub fn login_url(&self) -> url::Url {
        url_of(self.login)
    }
    pub fn control_url(&self) -> url::Url {
        url_of(self.control)
    }
    pub fn scenario(&self) -> &Scenario {
        self.sim.scenario()
    }
    pub fn control(&self) -> Control {
        Control {
            sim: self.sim.clone(),
        }
    }
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts the simulator on loopback.
pub async fn start(config: SimConfig) -> anyhow::Result<MsSim> {
    let sim = Sim(Arc::new(Inner {
        scenario: Scenario::generate(config.seed, &config.scenario),
        signer: jwt::TokenSigner::from_seed(config.seed)?,
        clock: OffsetClock::new(),
        entra: Mutex::new(entra::EntraState::default()),
        log: Mutex::new(Vec::new()),
    }));
    let shutdown = CancellationToken::new();
    let login_listener =
        tokio::net::TcpListener::bind(SocketAddr::new(config.bind_ip, config.login_port)).await?;
    let control_listener =
        tokio::net::TcpListener::bind(SocketAddr::new(config.bind_ip, config.control_port)).await?;
    let (login, control) = (login_listener.local_addr()?, control_listener.local_addr()?);
    let mut tasks = Vec::new();
    for (listener, router) in [
        (login_listener, entra::router(sim.clone())),
        (control_listener, control::router(sim.clone())),
    ] {
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        }));
    }
    Ok(MsSim {
        sim,
        login,
        control,
        shutdown,
        tasks,
    })
}
