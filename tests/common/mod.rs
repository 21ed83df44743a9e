//! Shared helpers for the end-to-end tests.
//!
//! The tests run the real `fhirhose` binary against real services that `scripts/test.sh`
//! starts on loopback: a Kafka-protocol broker (`FHIRHOSE_TEST_KAFKA_BROKERS`) and an S3 API
//! endpoint (`AWS_ENDPOINT_URL`, bucket `FHIRHOSE_TEST_S3_BUCKET`). A test that needs a service
//! which is not configured fails with a message saying how to run it; it never skips silently.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_fhirhose");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus() -> PathBuf {
    repo().join("tests/data/corpus")
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `bash scripts/test.sh`, which starts the broker and the S3 endpoint")
    })
}

pub fn brokers() -> String {
    required_env("FHIRHOSE_TEST_KAFKA_BROKERS")
}

pub fn bucket() -> String {
    required_env("AWS_ENDPOINT_URL");
    required_env("FHIRHOSE_TEST_S3_BUCKET")
}

/// A unique name for topics and prefixes of one test.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Runs `fhirhose` with args in `cwd` (log level `warn` unless the args say otherwise, no proxy
/// for loopback servers) and prints what it wrote, for the test's failure output.
pub fn fhirhose(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("FHIRHOSE_LOG_LEVEL", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("RUST_LOG")
        .output()
        .expect("run fhirhose");
    eprintln!(
        "fhirhose {args:?} -> {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`fhirhose`] off the async runtime, for tests whose sandbox server lives on it.
pub async fn fhirhose_async(args: Vec<String>, cwd: &Path) -> Output {
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fhirhose(&cwd, &args)
    })
    .await
    .expect("fhirhose task")
}

/// The corpus' own description: file → (type, lines, sha256 of the decompressed bytes).
pub fn corpus_files() -> Vec<(String, String, u64, String)> {
    let tsv = std::fs::read_to_string(corpus().join("_files.tsv")).unwrap();
    tsv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[5].to_string(),
            )
        })
        .collect()
}

pub fn lines_by_type() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (_, t, n, _) in corpus_files() {
        *m.entry(t).or_default() += n;
    }
    m
}

/// Every object under `prefix` of a store: key → bytes.
pub async fn objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, bytes::Bytes> {
    use futures::TryStreamExt;
    let p = object_store::path::Path::from(prefix);
    let metas: Vec<_> = store.list(Some(&p)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let b = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(m.location.to_string(), b);
    }
    out
}

/// Reads every Parquet object of a table: all batches.
pub async fn table(store: &Arc<dyn ObjectStore>, table: &str) -> Vec<RecordBatch> {
    let objs = objects(store, &format!("tables/{table}")).await;
    let mut batches = Vec::new();
    for (k, b) in objs {
        if !k.ends_with(".parquet") {
            continue;
        }
        let r = ParquetRecordBatchReaderBuilder::try_new(b)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(r.map(|b| b.unwrap()));
    }
    batches
}

/// Rows of the `resources` table per resource_type, and the (type, id) keys seen.
pub async fn resource_rows(
    store: &Arc<dyn ObjectStore>,
) -> (BTreeMap<String, u64>, Vec<(String, String)>) {
    let mut counts = BTreeMap::new();
    let mut keys = Vec::new();
    for b in table(store, "resources").await {
        let t = b
            .column_by_name("resource_type")
            .unwrap()
            .as_string::<i32>();
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            *counts.entry(t.value(i).to_string()).or_default() += 1;
            keys.push((t.value(i).to_string(), id.value(i).to_string()));
        }
    }
    (counts, keys)
}

pub fn local_store(root: &Path) -> Arc<dyn ObjectStore> {
    Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root).unwrap())
}

pub fn s3_store(prefix: &str) -> Arc<dyn ObjectStore> {
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
        .build()
        .unwrap();
    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
}

/// A message read back from the broker.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads every message of `topics` from the start until `expected` messages arrived (or the
/// deadline passed).
pub fn consume(topics: &[String], expected: usize, deadline: Duration) -> Vec<Event> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    while Instant::now() < end && out.len() < expected {
        match consumer.poll(Duration::from_millis(250)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        headers.insert(
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Event {
                    topic: m.topic().to_string(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    // Linger briefly to catch anything beyond what was expected (duplicates).
    let linger = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < linger {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Event {
                topic: m.topic().to_string(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: HashMap::new(),
            });
        }
    }
    out
}

pub fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A running sandbox EHR with one SMART backend-services client (an ES384 key in `dir`),
/// registered for `system/*.read`.
pub struct Setup {
    pub sb: fhirhose_sandbox::RunningSandbox,
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub client_id: String,
}

#[allow(dead_code)]
impl Setup {
    /// `<dir>/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lake of [`Setup::export_args`].
    pub fn lake(&self) -> PathBuf {
        self.path("lake")
    }

    /// The state database of [`Setup::export_args`].
    pub fn state(&self) -> PathBuf {
        self.path("state/state.db")
    }

    /// `fhirhose export` against the sandbox with this client's key, into [`Setup::lake`] and
    /// [`Setup::state`] for `source`, with the job report at `<dir>/report.json`; then `extra`.
    pub fn export_args(&self, source: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "export",
            "--fhir-url",
            &self.sb.base_url(),
            "--client-id",
            &self.client_id,
            "--key-file",
            self.key.to_str().unwrap(),
            "--lake",
            self.lake().to_str().unwrap(),
            "--state",
            self.state().to_str().unwrap(),
            "--source",
            source,
            "--report-json",
            self.path("report.json").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

/// Starts a sandbox with `cfg` and registers `client_id` with a fresh ES384 key.
pub async fn sandbox_with_client(cfg: fhirhose_sandbox::SandboxConfig, client_id: &str) -> Setup {
    use fhirhose_ingest::auth::{generate_keys, Alg};
    let sb = fhirhose_sandbox::Sandbox::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = generate_keys(Alg::ES384, &dir.path().join("keys")).unwrap();
    sb.register_jwks_client(client_id, keys.jwks.clone(), "system/*.read");
    Setup {
        sb,
        dir,
        key: keys.private_key_path,
        client_id: client_id.to_owned(),
    }
}
