//! `ms-sim --seed 42`: the simulator on fixed local ports, for the local run and for humans.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "ms-sim",
    about = "A simulator of the Microsoft endpoints Palisade calls"
)]
struct Args {
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Control API on this port; Entra ID, Partner Center, Graph, Key Vault, the
    /// certificate host and the Vault transit stand-in (not Microsoft) on the next six.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    #[arg(long, default_value_t = 2)]
    partners: usize,
    #[arg(long, default_value_t = 10)]
    customers: usize,
    #[arg(long, default_value_t = 12)]
    alerts: usize,
    /// Turns off Partner Center's per-tenant limits (500 customer calls/min, 50 consents/s).
    #[arg(long)]
    no_throttles: bool,
    /// Delay before a webhook's second attempt, in milliseconds; it doubles per attempt.
    #[arg(long, default_value_t = 1000)]
    webhook_retry_ms: u64,
    /// The host name clients use to reach the simulator (compose: the service name), put in
    /// the URLs it hands out.
    #[arg(long)]
    public_host: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().compact().init();
    let sim = ms_sim::start(ms_sim::SimConfig {
        seed: args.seed,
        bind_ip: args.bind,
        scenario: ms_sim::ScenarioConfig {
            partners: args.partners,
            customers_per_partner: args.customers,
            alerts_per_partner: args.alerts,
        },
        ports: ms_sim::Ports::from_base(args.base_port),
        webhook_retry_base: std::time::Duration::from_millis(args.webhook_retry_ms),
        realistic_throttles: !args.no_throttles,
        public_host: args.public_host,
    })
    .await?;
    println!(
        "control:        {}\nEntra ID:       {}\nPartner Center: {}\nGraph:          {}\nKey Vault:      {}\ncertificates:   {}\nVault transit:  {} (a HashiCorp Vault stand-in, mount {})",
        sim.control_url(),
        sim.login_url(),
        sim.partner_center_url(),
        sim.graph_url(),
        sim.key_vault_url(),
        sim.certificate_url(),
        sim.vault_transit_url(),
        ms_sim::VAULT_TRANSIT_MOUNT,
    );
    // A local tool's fixed, seed-derived token, printed so a developer can point the broker at it.
    println!("Vault transit token: {}", sim.vault_transit_token());
    let operator = &sim.scenario().operator;
    println!(
        "operator tenant {} app {} (Key Vault, client credentials)",
        operator.tenant_id, operator.client_id
    );
    for p in &sim.scenario().partners {
        println!(
            "partner {} app {} admin {} ({} customers)",
            p.tenant_id,
            p.app.client_id,
            p.admin().upn,
            p.customer_count
        );
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
