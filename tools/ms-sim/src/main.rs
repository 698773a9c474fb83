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
    #[arg(long, default_value_t = 7001)]
    login_port: u16,
    #[arg(long, default_value_t = 7000)]
    control_port: u16,
    #[arg(long, default_value_t = 2)]
    partners: usize,
    #[arg(long, default_value_t = 10)]
    customers: usize,
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
        },
        login_port: args.login_port,
        control_port: args.control_port,
    })
    .await?;
    println!(
        "login (Entra ID): {}\ncontrol:          {}",
        sim.login_url(),
        sim.control_url()
    );
    for p in &sim.scenario().partners {
        println!(
            "partner {} app {} admin {}",
            p.tenant_id,
            p.app.client_id,
            p.admin().upn
        );
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
