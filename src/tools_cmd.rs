//! `fhirhose keys generate` and `fhirhose sandbox`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fhirhose_ingest::auth::{generate_keys, Alg};
use fhirhose_sandbox::{faults::FaultSpec, Sandbox, SandboxConfig};

use crate::cli::UsageError;

/// `fhirhose keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// Subcommands of `keys`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a private key (PEM, mode 0600) and the public JWKS to register with the EHR.
    Generate {
        /// `ES384` or `RS384`.
        #[arg(long, default_value = "ES384")]
        alg: String,
        /// Output folder (an existing key there is never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `keys`.
pub fn keys(a: KeysArgs) -> anyhow::Result<u8> {
    match a.command {
        KeysCommand::Generate { alg, out } => {
            let alg: Alg = alg.parse().map_err(|e| UsageError(format!("--alg: {e}")))?;
            let k = generate_keys(alg, &out)?;
            println!(
                "private key: {} (keep it secret)",
                k.private_key_path.display()
            );
            println!(
                "public JWKS: {} (register it with the EHR)",
                k.jwks_path.display()
            );
            println!("kid: {}", k.kid);
            Ok(0)
        }
    }
}

/// `fhirhose sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Port of the FHIR origin (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Synthetic patients to generate.
    #[arg(long, default_value_t = 100)]
    pub patients: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve NDJSON files from this folder instead of generated data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Faults to inject (see the sandbox crate's `faults` module for the grammar), e.g.
    /// `429=0.2,retry-after=date,reset=0.05,redirect-files,deleted,error-file`.
    #[arg(long, default_value = "")]
    pub faults: String,
    /// Folder for the generated client key.
    #[arg(long, default_value = "./fhirhose-sandbox-client")]
    pub client_dir: PathBuf,
}

/// Runs the sandbox until Ctrl-C, printing a ready client configuration.
pub async fn sandbox(a: SandboxArgs) -> anyhow::Result<u8> {
    let faults: FaultSpec = a
        .faults
        .parse()
        .map_err(|e| UsageError(format!("--faults: {e}")))?;
    let cfg = SandboxConfig {
        port: a.port,
        patients: a.patients,
        seed: a.seed,
        data_dir: a.data.clone(),
        faults,
        ..SandboxConfig::default()
    };
    let sb = Sandbox::start(cfg)
        .await
        .context("the sandbox could not start")?;
    let jwks_path = a.client_dir.join("jwks.json");
    let key_path = a.client_dir.join("private_key.pem");
    let jwks: serde_json::Value = if jwks_path.exists() && key_path.exists() {
        serde_json::from_slice(&std::fs::read(&jwks_path)?)
            .with_context(|| format!("{} is not a JWKS", jwks_path.display()))?
    } else {
        generate_keys(Alg::ES384, &a.client_dir)?.jwks
    };
    let client_id = "fhirhose-sandbox-client";
    sb.register_jwks_client(client_id, jwks, "system/*.rs system/*.read");
    println!("sandbox FHIR base: {}", sb.base_url());
    println!("token endpoint:    {}", sb.token_url());
    println!();
    println!("export from it with:");
    println!(
        "  fhirhose export --fhir-url {} --client-id {client_id} --key-file {} --scopes 'system/*.rs' --system --lake ./fhirhose-lake",
        sb.base_url(),
        key_path.display()
    );
    println!();
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await.ok();
    sb.shutdown().await;
    Ok(0)
}
