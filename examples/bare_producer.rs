//! The broker ceiling of the pipeline benchmark (`benches/pipeline/run.sh`): a bare rdkafka
//! producer that sends every NDJSON line of the input as one message, with the producer
//! settings fhirhose uses (`fhirhose_sinks::kafka::KafkaConfig` defaults: idempotent,
//! `acks=all`, the same compression, linger and queue limits) and nothing else: no parsing,
//! no headers, no keys, no per-message bookkeeping beyond a delivery counter.
//!
//! ```sh
//! cargo run --release --example bare_producer -- --brokers HOST:PORT [--compression zstd] [--topic-prefix P] PATH...
//! ```
//!
//! Each file's messages go to `<prefix>.<ResourceType>` (the type of the file's first line),
//! created with fhirhose's partition count when missing, as fhirhose does. Prints one JSON
//! line: bytes, messages, failed deliveries, seconds (until every delivery report is back).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fhirhose_sinks::kafka::{
    default_linger_ms, default_message_max_bytes, default_partitions, default_queue_max_kbytes,
    default_queue_max_messages,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

#[path = "support/ndjson_files.rs"]
mod ndjson_files;
use ndjson_files::collect;

struct Counter {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open(path: &Path) -> std::io::Result<BufReader<Box<dyn Read>>> {
    let f = std::fs::File::open(path)?;
    let r: Box<dyn Read> = if path.to_string_lossy().ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(BufReader::with_capacity(1024 * 1024, r))
}

/// `resourceType` of the first non-blank line (a cheap scan, not a parse).
fn first_type(path: &Path) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut r = open(path)?;
    while r.read_until(b'\n', &mut line)? > 0 {
        if let Some(i) = memchr::memmem::find(&line, b"\"resourceType\"") {
            let rest = &line[i + 14..];
            let q1 = memchr::memchr(b'"', rest).map(|q| q + 1);
            if let Some(q1) = q1 {
                if let Some(q2) = memchr::memchr(b'"', &rest[q1..]) {
                    return Ok(Some(
                        String::from_utf8_lossy(&rest[q1..q1 + q2]).into_owned(),
                    ));
                }
            }
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        line.clear();
    }
    Ok(None)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut brokers = std::env::var("FHIRHOSE_TEST_KAFKA_BROKERS").unwrap_or_default();
    let mut compression = "zstd".to_string();
    let mut prefix = format!("bare{}", std::process::id());
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--brokers" => brokers = args.next().ok_or("--brokers B")?,
            "--compression" => compression = args.next().ok_or("--compression C")?,
            "--topic-prefix" => prefix = args.next().ok_or("--topic-prefix P")?,
            _ => collect(Path::new(&a), &mut paths)?,
        }
    }
    if brokers.is_empty() {
        return Err("no brokers: --brokers or FHIRHOSE_TEST_KAFKA_BROKERS".into());
    }
    if paths.is_empty() {
        return Err("no .ndjson or .ndjson.gz input".into());
    }

    let mut files = Vec::new();
    for p in paths {
        if let Some(t) = first_type(&p)? {
            files.push((format!("{prefix}.{t}"), p));
        }
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let mut topics: Vec<&str> = files.iter().map(|(t, _)| t.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    let new: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, default_partitions(), TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in rt.block_on(admin.create_topics(&new, &opts))? {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(format!("topic {t}: {code:?}").into());
            }
        }
    }

    let producer: BaseProducer<Counter> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &compression)
        .set("linger.ms", default_linger_ms().to_string())
        .set(
            "queue.buffering.max.messages",
            default_queue_max_messages().to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            default_queue_max_kbytes().to_string(),
        )
        .set("message.max.bytes", default_message_max_bytes().to_string())
        .set("client.id", "fhirhose-bare-bench")
        .create_with_context(Counter {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })?;

    let start = Instant::now();
    let (mut bytes, mut sent) = (0u64, 0u64);
    let mut line = Vec::with_capacity(64 * 1024);
    for (topic, path) in &files {
        let mut r = open(path)?;
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            let mut payload: &[u8] = &line;
            while let [rest @ .., b'\n' | b'\r'] = payload {
                payload = rest;
            }
            if payload.is_empty() {
                continue;
            }
            let mut record = BaseRecord::<(), [u8]>::to(topic).payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            sent += 1;
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    let ctx = producer.context();
    println!(
        "{{\"brokers\":\"{brokers}\",\"compression\":\"{compression}\",\"bytes\":{bytes},\"messages\":{sent},\"acked\":{},\"failed\":{},\"secs\":{secs:.3},\"mb_per_s\":{:.1},\"msgs_per_s\":{:.0}}}",
        ctx.acked.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
        bytes as f64 / 1e6 / secs,
        sent as f64 / secs
    );
    Ok(())
}
