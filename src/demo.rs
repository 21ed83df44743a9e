//! `fhirhose demo`: the whole pipeline on embedded defaults.
//!
//! Lands a bundled sample of synthetic (Synthea) data into `<dir>/lake` with the real
//! pipeline: raw objects, Parquet tables and Kafka events. Without `--kafka-brokers` the events
//! go to an in-process Kafka-protocol cluster (librdkafka's mock cluster) and are read back to
//! show the counts per topic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use crate::cli::{build_config, connect_kafka, finish, run_and_record, DemoArgs, OutputArgs};

/// The bundled sample: a slice of the Synthea corpus in `tests/data/corpus` (see its README
/// for provenance and licence).
const SAMPLE: &[(&str, &[u8])] = &[
    (
        "Patient.01.ndjson.gz",
        include_bytes!("../tests/data/corpus/Patient.01.ndjson.gz"),
    ),
    (
        "Encounter.01.ndjson.gz",
        include_bytes!("../tests/data/corpus/Encounter.01.ndjson.gz"),
    ),
    (
        "Condition.01.ndjson.gz",
        include_bytes!("../tests/data/corpus/Condition.01.ndjson.gz"),
    ),
    (
        "Observation.01.ndjson.gz",
        include_bytes!("../tests/data/corpus/Observation.01.ndjson.gz"),
    ),
    (
        "Practitioner.01.ndjson.gz",
        include_bytes!("../tests/data/corpus/Practitioner.01.ndjson.gz"),
    ),
];

/// Runs the demo.
pub async fn run(a: DemoArgs) -> anyhow::Result<u8> {
    let input_dir = a.dir.join("input");
    std::fs::create_dir_all(&input_dir)
        .with_context(|| format!("cannot create {}", input_dir.display()))?;
    for (name, bytes) in SAMPLE {
        let p = input_dir.join(name);
        if !p.exists() {
            std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
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
        .or_else(|| mock.as_ref().map(|m| m.bootstrap_servers()));
    let out = OutputArgs {
        lake: a.dir.join("lake").display().to_string(),
        kafka_brokers: brokers.clone(),
        topic_prefix: "fhir".into(),
        kafka_compression: "zstd".into(),
        no_create_topics: mock.is_some(),
        source: "demo".into(),
        state: a.dir.join("state.db"),
        summary_json: Some(a.dir.join("summary.json")),
        max_line_bytes: fhirhose_ingest::framing::default_max_line_bytes(),
        file_concurrency: 2,
        workers: None,
        force: mock.is_some(),
        strict: false,
        views: None,
        raw_inline_bytes: fhirhose_sinks::raw::default_inline_limit(),
        no_canonical_views: false,
    };
    let kafka = connect_kafka(&out).await?;
    let cfg = build_config(&out, kafka).await?;
    let files = crate::cli::resolve_inputs(&[input_dir.display().to_string()], &cfg.lake).await?;
    let summary = run_and_record(cfg, files, "demo").await?;
    let code = finish(&summary, out.summary_json.as_deref(), false)?;

    if let Some(brokers) = brokers {
        let expected: u64 = summary.events_by_topic.values().sum();
        let counts = read_back(&brokers, "fhir", expected).await?;
        println!("events read back from Kafka ({brokers}):");
        for (t, n) in &counts {
            println!("    {t:<28} {n:>10}");
        }
    }
    let lake = a.dir.join("lake");
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
