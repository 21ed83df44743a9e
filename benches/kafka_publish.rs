//! Kafka publishing throughput against the real broker: `fhirhose_sinks::kafka::Publisher`
//! (fhirhose's producer settings, CloudEvents headers, delivery tracking) sending the
//! developer corpus' Observation lines, each iteration waiting for every delivery report.
//! Throughput is events/s.
//!
//! Needs `FHIRHOSE_TEST_KAFKA_BROKERS` (`scripts/test.sh` shows how to start tansu); without
//! it the bench prints that it is skipped and measures nothing (benches are not tests).
//! `FHIRHOSE_BENCH_KAFKA_COMPRESSION` picks the compression (default `zstd`, as fhirhose).
//!
//! `FHIRHOSE_TEST_KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench kafka_publish`

#[path = "support/corpus.rs"]
mod corpus;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fhirhose_sinks::kafka::{DeliveryTracker, EventMeta, KafkaConfig, Publisher, CE_TYPE_UPSERT};

struct Event {
    key: String,
    ce_id: String,
    time: Option<String>,
    line: u64,
    value: Vec<u8>,
}

fn events() -> Vec<Event> {
    let mut out = Vec::new();
    for f in corpus::load()
        .into_iter()
        .filter(|f| f.name.starts_with("Observation."))
    {
        for (i, l) in f.data.split(|&b| b == b'\n').enumerate() {
            if l.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(l).expect("corpus JSON");
            let key = format!(
                "Observation/{}",
                v["id"].as_str().expect("corpus resources have ids")
            );
            out.push(Event {
                ce_id: format!("{:032x}", out.len()),
                key,
                time: v["meta"]["lastUpdated"].as_str().map(str::to_owned),
                line: i as u64 + 1,
                value: l.to_vec(),
            });
            if out.len() == 10_000 {
                return out;
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let Ok(brokers) = std::env::var("FHIRHOSE_TEST_KAFKA_BROKERS") else {
        println!("kafka_publish: skipped (FHIRHOSE_TEST_KAFKA_BROKERS is not set)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = KafkaConfig::new(brokers);
    cfg.topic_prefix = format!("bench{}", std::process::id());
    if let Ok(c) = std::env::var("FHIRHOSE_BENCH_KAFKA_COMPRESSION") {
        cfg.compression = c;
    }
    let publisher = Arc::new(
        rt.block_on(Publisher::connect(cfg))
            .expect("broker reachable"),
    );
    let topic = publisher.topic_for("Observation");
    rt.block_on(publisher.ensure_topic(&topic)).expect("topic");
    let events = events();
    let bytes: usize = events.iter().map(|e| e.value.len()).sum();
    println!(
        "kafka_publish: {} Observation events, {:.1} MB per iteration",
        events.len(),
        bytes as f64 / 1e6
    );

    let publish_all = || {
        rt.block_on(async {
            let tracker = DeliveryTracker::new();
            for e in &events {
                let meta = EventMeta {
                    ce_id: &e.ce_id,
                    source: "urn:fhirhose:source:bench",
                    ce_type: CE_TYPE_UPSERT,
                    subject: &e.key,
                    time: e.time.as_deref(),
                    raw_key: "raw/bench/ingest/0000/Observation.ndjson",
                    line: e.line,
                    run_id: "01JBENCHRUN0000000000000000",
                };
                publisher
                    .send(
                        &topic,
                        e.key.as_bytes(),
                        Some(&e.value),
                        meta.headers(&[]),
                        &tracker,
                    )
                    .await
                    .expect("send");
            }
            tracker
                .wait(Duration::from_secs(120))
                .await
                .expect("deliveries")
        })
    };

    let mut g = c.benchmark_group("kafka_publish");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("observation_events", |b| b.iter(publish_all));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
