//! ms-sim: a simulator of the Microsoft endpoints Palisade calls, for tests, benchmarks and
//! the local run, because no machine here reaches Microsoft. Palisade's clients talk to it over
//! real HTTP with only their base URLs changed, so it must be as strict and as quirky as
//! Microsoft; where the reference marks a fact unverified, the choice is documented where it is
//! made.
//!
//! Each Microsoft host is its own listener (a client that mixes up base URLs fails as it would
//! in production): Entra ID, Partner Center, Microsoft Graph, Key Vault, and the blob host that
//! serves the webhook signing certificate. One more listener is not Microsoft: a stand-in for
//! HashiCorp Vault's transit engine (`vault_transit.rs`), for the token broker's Vault key
//! provider, because no Vault binary runs where Palisade is tested. A control API (and its in-process twin, [`Control`])
//! moves the clock, changes the world, injects faults and reads back every request.

mod alerts;
mod control;
mod entra;
mod faults;
mod graph;
mod http;
mod jwt;
mod key_vault;
mod partner_center;
mod pki;
pub mod scenario;
mod vault_transit;
mod webhooks;
mod world;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use palisade_clock::{Clock, OffsetClock};
use tokio_util::sync::CancellationToken;

pub use alerts::{ALERT_TYPES, AlertSpec};
pub use control::{Control, RequestFilter};
pub use entra::{ARM, GRAPH, KEY_VAULT, PARTNER_CENTER};
pub use faults::{Fault, FaultKind};
pub use pki::{WEBHOOK_SIGNER_CN, WebhookPki};
pub use scenario::{Scenario, ScenarioConfig};
pub use vault_transit::{DEFAULT_KEY as VAULT_TRANSIT_KEY, DEFAULT_MOUNT as VAULT_TRANSIT_MOUNT};
pub use webhooks::{DeliveryAttempt, WebhookDelivery};

/// A filter for refresh-token redemptions at the token endpoints.
pub fn control_filter_refresh() -> RequestFilter {
    RequestFilter {
        host: Some(Host::Login.name().into()),
        grant_type: Some("refresh_token".into()),
        ..RequestFilter::default()
    }
}

/// The Microsoft hosts the simulator stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `login.microsoftonline.com`
    Login,
    /// `api.partnercenter.microsoft.com`
    PartnerCenter,
    /// `graph.microsoft.com`
    Graph,
    /// `{vault}.vault.azure.net`
    KeyVault,
    /// The storage account that serves the webhook signing certificate.
    Certificates,
    /// Not Microsoft: a HashiCorp Vault server's transit engine (`/v1/{mount}/...`).
    VaultTransit,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::PartnerCenter => "partner_center",
            Self::Graph => "graph",
            Self::KeyVault => "key_vault",
            Self::Certificates => "certificates",
            Self::VaultTransit => "vault_transit",
        }
    }
}

/// Fixed ports for the standalone binary; 0 picks free ones (tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ports {
    pub login: u16,
    pub partner_center: u16,
    pub graph: u16,
    pub key_vault: u16,
    pub certificates: u16,
    pub vault_transit: u16,
    pub control: u16,
}

impl Ports {
    /// Seven consecutive ports from `base`: control, login, Partner Center, Graph, Key Vault,
    /// certificates, and the Vault transit stand-in.
    /// How many consecutive ports `from_base` takes.
    pub const COUNT: u16 = 7;

    pub fn from_base(base: u16) -> Self {
        Self {
            control: base,
            login: base + 1,
            partner_center: base + 2,
            graph: base + 3,
            key_vault: base + 4,
            certificates: base + 5,
            vault_transit: base + 6,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub bind_ip: IpAddr,
    pub scenario: ScenarioConfig,
    pub ports: Ports,
    /// Delay before a webhook's second attempt; it doubles per attempt, up to 10 attempts.
    pub webhook_retry_base: Duration,
    /// Partner Center's documented per-tenant limits (customers and subscriptions 500/min,
    /// consents 50/s per app). Webhook validation events are always limited to 2/min.
    pub realistic_throttles: bool,
    /// The host name the simulator puts in the URLs it hands out (`@odata.nextLink`, the
    /// certificate URL, key ids), when clients reach it by a name rather than its bind address
    /// (compose, Kubernetes).
    pub public_host: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            scenario: ScenarioConfig::default(),
            ports: Ports::default(),
            webhook_retry_base: Duration::from_millis(200),
            realistic_throttles: true,
            public_host: None,
        }
    }
}

/// One received request, as the control API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestRecord {
    pub at_ms: i64,
    /// Which Microsoft host: see [`Host::name`].
    pub host: String,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The tenant in the URL (Entra) or in the bearer token (`tid`).
    pub tenant: String,
    pub grant_type: Option<String>,
    /// From the bearer token: the calling app, the user, and whether it carried MFA.
    pub app_id: Option<String>,
    pub upn: Option<String>,
    pub mfa: Option<bool>,
    pub ms_request_id: Option<String>,
    pub status: u16,
}

const LOG_LIMIT: usize = 200_000;

#[derive(Debug, Clone)]
pub(crate) struct Urls {
    pub login: url::Url,
    pub partner_center: url::Url,
    pub graph: url::Url,
    pub key_vault: url::Url,
    pub certificates: url::Url,
    pub vault_transit: url::Url,
}

struct Inner {
    scenario: Scenario,
    signer: jwt::TokenSigner,
    clock: Arc<OffsetClock>,
    /// The simulator's start, which seeded history is dated from.
    epoch_ms: i64,
    webhook_retry_base: Duration,
    entra: Mutex<entra::EntraState>,
    world: Mutex<world::World>,
    faults: Mutex<faults::Faults>,
    key_vault: Mutex<key_vault::Vault>,
    transit: Mutex<vault_transit::Transit>,
    webhook_pki: OnceLock<pki::WebhookPki>,
    webhooks: webhooks::Outbox,
    urls: OnceLock<Urls>,
    log: Mutex<Vec<RequestRecord>>,
}

/// Shared simulator state; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sim(Arc<Inner>);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

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
    fn urls(&self) -> &Urls {
        self.0.urls.get().expect("set before serving")
    }
    fn with_entra<R>(&self, f: impl FnOnce(&mut entra::EntraState) -> R) -> R {
        f(&mut lock(&self.0.entra))
    }
    fn with_world<R>(&self, f: impl FnOnce(&mut world::World) -> R) -> R {
        f(&mut lock(&self.0.world))
    }
    fn with_vault<R>(&self, f: impl FnOnce(&mut key_vault::Vault) -> R) -> R {
        f(&mut lock(&self.0.key_vault))
    }
    fn with_transit<R>(&self, f: impl FnOnce(&mut vault_transit::Transit) -> R) -> R {
        f(&mut lock(&self.0.transit))
    }
    fn webhook_pki(&self) -> &pki::WebhookPki {
        self.0.webhook_pki.get_or_init(|| {
            pki::WebhookPki::generate(self.0.scenario.seed)
                .expect("generating certificates from a seed cannot fail")
        })
    }
    fn log(&self, mut record: RequestRecord) {
        record.at_ms = self.now_millis();
        let mut log = lock(&self.0.log);
        if log.len() >= LOG_LIMIT {
            log.drain(..LOG_LIMIT / 10);
        }
        log.push(record);
    }
}

/// A running simulator.
pub struct MsSim {
    sim: Sim,
    control: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for MsSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsSim")
            .field("urls", self.sim.urls())
            .field("control", &self.control)
            .finish()
    }
}

fn url_of(addr: SocketAddr) -> url::Url {
    url::Url::parse(&format!("http://{addr}")).expect("a socket address is a valid URL host")
}

fn public_url(addr: SocketAddr, public_host: Option<&str>) -> url::Url {
    match public_host {
        Some(host) => url::Url::parse(&format!("http://{host}:{}", addr.port()))
            .unwrap_or_else(|_| url_of(addr)),
        None => url_of(addr),
    }
}

impl MsSim {
    /// Entra ID: `{login}/{tenant}/oauth2/token`, `/oauth2/v2.0/token`, `/oauth2/authorize`.
    pub fn login_url(&self) -> url::Url {
        self.sim.urls().login.clone()
    }
    /// Partner Center: `{partner_center}/v1/...` and `/webhooks/v1/...`.
    pub fn partner_center_url(&self) -> url::Url {
        self.sim.urls().partner_center.clone()
    }
    /// Microsoft Graph: `{graph}/v1.0/...` and `/beta/...`.
    pub fn graph_url(&self) -> url::Url {
        self.sim.urls().graph.clone()
    }
    /// One Key Vault: `{key_vault}/keys/...` and `/secrets/...`.
    pub fn key_vault_url(&self) -> url::Url {
        self.sim.urls().key_vault.clone()
    }
    /// Not Microsoft: the HashiCorp Vault transit stand-in, `{vault_transit}v1/transit/...`
    /// (the address a Vault client is configured with).
    pub fn vault_transit_url(&self) -> url::Url {
        self.sim.urls().vault_transit.clone()
    }
    /// The `X-Vault-Token` the Vault stand-in accepts (derived from the seed).
    pub fn vault_transit_token(&self) -> String {
        vault_transit::root_token(self.sim.scenario().seed)
    }
    /// Where `X-MS-Certificate-Url` points.
    pub fn certificate_url(&self) -> url::Url {
        webhooks::certificate_url(&self.sim)
    }
    pub fn control_url(&self) -> url::Url {
        url_of(self.control)
    }
    /// The trust anchor that Partner Center webhook signatures chain to (PEM).
    pub fn webhook_root_ca_pem(&self) -> String {
        self.sim.webhook_pki().root_pem.clone()
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

/// Starts the simulator on loopback (or `bind_ip`).
pub async fn start(config: SimConfig) -> anyhow::Result<MsSim> {
    let scenario = Scenario::generate(config.seed, &config.scenario);
    let clock = OffsetClock::new();
    let shutdown = CancellationToken::new();
    let (outbox, deliveries) = webhooks::Outbox::new();
    let sim = Sim(Arc::new(Inner {
        signer: jwt::TokenSigner::from_seed(config.seed)?,
        epoch_ms: clock.now_millis(),
        webhook_retry_base: config.webhook_retry_base,
        entra: Mutex::new(entra::EntraState::default()),
        world: Mutex::new(world::World::new(config.realistic_throttles)),
        faults: Mutex::new(faults::Faults::default()),
        key_vault: Mutex::new(key_vault::Vault::default()),
        transit: Mutex::new(vault_transit::Transit::new(config.seed)),
        webhook_pki: OnceLock::new(),
        webhooks: outbox,
        urls: OnceLock::new(),
        log: Mutex::new(Vec::new()),
        scenario,
        clock,
    }));
    let bind = |port: u16| tokio::net::TcpListener::bind(SocketAddr::new(config.bind_ip, port));
    let ports = config.ports;
    let listeners = [
        (Host::Login, bind(ports.login).await?),
        (Host::PartnerCenter, bind(ports.partner_center).await?),
        (Host::Graph, bind(ports.graph).await?),
        (Host::KeyVault, bind(ports.key_vault).await?),
        (Host::Certificates, bind(ports.certificates).await?),
        (Host::VaultTransit, bind(ports.vault_transit).await?),
    ];
    let control_listener = bind(ports.control).await?;
    let address = |host: Host| {
        listeners
            .iter()
            .find(|(h, _)| *h == host)
            .and_then(|(_, l)| l.local_addr().ok())
            .map(|addr| public_url(addr, config.public_host.as_deref()))
            .expect("every host is bound")
    };
    let _ = sim.0.urls.set(Urls {
        login: address(Host::Login),
        partner_center: address(Host::PartnerCenter),
        graph: address(Host::Graph),
        key_vault: address(Host::KeyVault),
        certificates: address(Host::Certificates),
        vault_transit: address(Host::VaultTransit),
    });
    let control = control_listener.local_addr()?;

    let mut tasks = Vec::new();
    let mut serve = |listener: tokio::net::TcpListener, router: axum::Router| {
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        }));
    };
    for (host, listener) in listeners {
        let router = match host {
            Host::Login => entra::router(sim.clone()),
            Host::PartnerCenter => partner_center::router(sim.clone()),
            Host::Graph => graph::router(sim.clone()),
            Host::KeyVault => key_vault::router(sim.clone()),
            Host::Certificates => webhooks::certificate_router(sim.clone()),
            Host::VaultTransit => vault_transit::router(sim.clone()),
        };
        serve(listener, http::observed(sim.clone(), host, router));
    }
    serve(control_listener, control::router(sim.clone()));
    tasks.push(tokio::spawn(webhooks::deliver(
        sim.clone(),
        deliveries,
        shutdown.clone(),
    )));
    Ok(MsSim {
        sim,
        control,
        shutdown,
        tasks,
    })
}
