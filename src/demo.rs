//! `fhirhose demo`: the whole pipeline on embedded defaults.
//!
//! Starts the sandbox EHR in-process (synthetic patients, SMART + Bulk Data), generates an
//! ES384 client key and registers its JWKS, then runs a real backend-services `$export` with
//! the same code as `fhirhose export`: SMART discovery, a signed client assertion, kick-off,
//! polling, downloads, raw objects, Parquet tables and Kafka events. Without
//! `--kafka-brokers` the events go to an in-process Kafka-protocol cluster (librdkafka's mock
//! cluster) and are read back to show the counts per topic.
//!
//! Each run starts from a fresh lake and state under `--dir` (only the `lake/` folder and
//! `state.db` that the demo itself creates there are removed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fhirhose_ingest::auth::{generate_keys, Alg};
use fhirhose_sandbox::{Sandbox, SandboxConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use crate::cli::DemoArgs;

#[derive(Parser)]
struct ExportArgv {
    #[command(flatten)]
    args: crate::export::ExportArgs,
}

/// Runs the demo.
pub async fn run(a: DemoArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let lake = a.dir.join("lake");
    let state = a.dir.join("state.db");
    if lake.exists() {
        std::fs::remove_dir_all(&lake)
            .with_context(|| format!("cannot reset {}", lake.display()))?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(a.dir.join(format!("state.db{suffix}")));
    }

    let sb = Sandbox::start(SandboxConfig {
        port: 0,
        storage_port: 0,
        patients: a.patients,
        seed: 1,
        ..SandboxConfig::default()
    })
    .await
    .context("the sandbox could not start")?;
    let client_dir = a.dir.join("client");
    let key = client_dir.join("private_key.pem");
    let jwks: serde_json::Value = if key.exists() {
        serde_json::from_slice(&std::fs::read(client_dir.join("jwks.json"))?)?
    } else {
        generate_keys(Alg::ES384, &client_dir)?.jwks
    };
    sb.register_jwks_client("fhirhose-demo", jwks, "system/*.rs");
    println!(
        "sandbox EHR at {} ({} synthetic patients)",
        sb.base_url(),
        a.patients
    );

    let mock = match &a.kafka_brokers {
        Some(_) => None,
        None => Some(
            rdkafka::mocking::MockCluster::new(1)
                .context("cannot start the in-process Kafka cluster")?,
        ),
    };
    let brokers = a
        .kafka_brokers
        .clone()
        .or_else(|| mock.as_ref().map(|m| m.bootstrap_servers()))
        .unwrap_or_default();
    let summary_path = a.dir.join("summary.json");
    let base = sb.base_url();
    let mut argv: Vec<String> = [
        "export",
        "--fhir-url",
        &base,
        "--client-id",
        "fhirhose-demo",
        "--key-file",
        key.to_str().unwrap_or_default(),
        "--scopes",
        "system/*.rs",
        "--system",
        "--source",
        "demo",
        "--lake",
        lake.to_str().unwrap_or_default(),
        "--state",
        state.to_str().unwrap_or_default(),
        "--summary-json",
        summary_path.to_str().unwrap_or_default(),
        "--kafka-brokers",
        &brokers,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if mock.is_some() {
        argv.push("--no-create-topics".into());
    }
    argv.extend(a.observe.to_argv());
    let args = ExportArgv::try_parse_from(&argv)
        .context("demo export arguments")?
        .args;
    let code = crate::export::run(args).await?;
    sb.shutdown().await;

    let summary: serde_json::Value = std::fs::read(&summary_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let expected: u64 = summary["events_by_topic"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    if expected > 0 {
        let counts = read_back(&brokers, "fhir", expected).await?;
        println!("events read back from Kafka ({brokers}):");
        for (t, n) in &counts {
            println!("    {t:<28} {n:>10}");
        }
    }
    println!();
    println!("try it with DuckDB:");
    println!(
        "  duckdb -c \"SELECT resource_type, count(*) FROM read_parquet('{}/tables/resources/*/*.parquet') GROUP BY 1 ORDER BY 2 DESC\"",
        lake.display()
    );
    drop(mock);
    Ok(code)
}

/// Consumes every `<prefix>.*` topic from the start and counts messages per topic.
async fn read_back(
    brokers: &str,
    prefix: &str,
    expected: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let brokers = brokers.to_string();
    let pattern = format!("^{}\\..*", prefix.replace('.', "\\."));
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set(
                "group.id",
                format!("fhirhose-demo-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .context("cannot create a Kafka consumer")?;
        consumer.subscribe(&[&pattern])?;
        let mut counts = BTreeMap::new();
        let mut total = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while total < expected && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                *counts.entry(m.topic().to_string()).or_insert(0u64) += 1;
                total += 1;
            }
        }
        Ok(counts)
    })
    .await?
}
