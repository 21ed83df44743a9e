//! Runs a sandbox until Ctrl-C and prints how to reach it:
//! `cargo run -p fhirhose-sandbox --example serve -- [PATIENTS] [FAULTS]`.

use std::time::Instant;

use fhirhose_sandbox::{Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let patients: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(100);
    let faults = args.next().unwrap_or_default().parse()?;
    let started = Instant::now();
    let sandbox = Sandbox::start(SandboxConfig {
        patients,
        faults,
        ..SandboxConfig::default()
    })
    .await?;
    sandbox.register_secret_client("demo", "demo-secret", "system/*.read");
    let counts = sandbox.resource_counts();
    println!(
        "started in {:.2}s with {} resources",
        started.elapsed().as_secs_f64(),
        counts.values().sum::<usize>()
    );
    println!("FHIR base:      {}", sandbox.base_url());
    println!("token endpoint: {}", sandbox.token_url());
    println!("storage origin: {}", sandbox.storage_origin());
    println!("client:         demo / demo-secret (client_secret_basic), scopes system/*.read");
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
