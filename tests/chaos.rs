//! Chaos: the real `fhirhose` binary is killed with SIGKILL at seeded random points while it
//! lands a Bulk Data export from the in-process sandbox EHR with faults on (kick-off, status
//! polling, downloads, Parquet writing, Kafka publishing), and restarted until it finishes.
//! The final lake must equal that of a clean run (raw bytes per file; Parquet rows by
//! `(type, id, version)`, zero lost, zero duplicated; row counts of every table), and every
//! resource's `ce_id` must be on its Kafka topic, with duplicates bounded by what was in
//! flight at each kill.
//!
//! Needs a Kafka-protocol broker (`FHIRHOSE_TEST_KAFKA_BROKERS`, started by `scripts/test.sh`);
//! without one the tests fail with a message saying so. `scripts/chaos.sh` runs the same test
//! with more kills (`KILLS=50`), more data and another seed.
//!
//! Knobs (environment): `CHAOS_KILLS` (default 8), `CHAOS_SEED` (1), `CHAOS_PATIENTS` (10).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::Array;
use common::{local_store, objects, table, BIN};
use fhirhose_ingest::auth::{generate_keys, Alg};
use fhirhose_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::Message;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: the kill schedule is a function of the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// The pipeline's deterministic event id (`pipeline::block::ce_id`), recomputed here so the
/// test checks the contract and not the code's own helper.
fn ce_id(raw_key: &str, line: i64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(raw_key.as_bytes());
    h.update(b"\n");
    h.update((line as u64).to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

const RESOURCES_PER_FILE: usize = 25;

async fn sandbox(
    patients: usize,
    faults: &str,
    client: &str,
    jwks: serde_json::Value,
) -> RunningSandbox {
    let sb = Sandbox::start(SandboxConfig {
        patients,
        faults: faults.parse().unwrap(),
        export_polls: 2,
        resources_per_file: RESOURCES_PER_FILE,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    sb.register_jwks_client(client, jwks, "system/*.read");
    sb
}

fn export_args(
    sb: &RunningSandbox,
    dir: &Path,
    key: &Path,
    lake: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = [
        "export",
        "--fhir-url",
        &sb.base_url(),
        "--client-id",
        "chaos",
        "--key-file",
        key.to_str().unwrap(),
        "--lake",
        dir.join(lake).to_str().unwrap(),
        "--state",
        dir.join(format!("{lake}-state/state.db")).to_str().unwrap(),
        "--source",
        "sandbox",
        "--profile",
        "generic",
        "--report-json",
        dir.join(format!("{lake}-report.json")).to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn spawn(args: &[String], cwd: &Path) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("FHIRHOSE_LOG_LEVEL", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fhirhose")
}

/// Where the kill lands. The sandbox's request log tells when a phase began; the processing
/// phases are reached by waiting longer after the first download of this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Start,
    Poll,
    Download,
    Parquet,
    Kafka,
}

const PHASES: [Phase; 5] = [
    Phase::Start,
    Phase::Poll,
    Phase::Download,
    Phase::Parquet,
    Phase::Kafka,
];

/// Waits until `pred` holds for a request logged after `from`, or the child exits.
async fn wait_for(
    sb: &RunningSandbox,
    child: &mut Child,
    from: usize,
    pred: impl Fn(&fhirhose_sandbox::RequestLogEntry) -> bool,
) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if sb.request_log().iter().skip(from).any(&pred) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// One attempt: starts the binary and kills it at a point of `phase`. Returns `None` when
/// the kill happened, else the exit code of an attempt that finished first.
async fn attempt(
    sb: &RunningSandbox,
    args: &[String],
    cwd: &Path,
    phase: Phase,
    rng: &mut Rng,
) -> Option<Option<i32>> {
    let from = sb.request_log().len();
    let mut child = spawn(args, cwd);
    let is_poll = |l: &fhirhose_sandbox::RequestLogEntry| l.path.contains("bulkstatus");
    let is_file = |l: &fhirhose_sandbox::RequestLogEntry| l.path.starts_with("/files/");
    let reached = match phase {
        Phase::Start => true,
        Phase::Poll => wait_for(sb, &mut child, from, is_poll).await,
        _ => wait_for(sb, &mut child, from, is_file).await,
    };
    let delay = match phase {
        Phase::Start => rng.ms(0, 400),
        Phase::Poll => rng.ms(0, 30),
        Phase::Download => rng.ms(0, 80),
        Phase::Parquet => rng.ms(80, 500),
        Phase::Kafka => rng.ms(300, 1500),
    };
    let end = Instant::now() + delay;
    while reached && Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        return None;
    }
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "attempt finished before its kill ({phase:?}): {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.status.code())
}

/// Raw export files by name (the job id folder stripped): name → bytes. Asserts one job.
async fn raw_files(lake: &Path) -> BTreeMap<String, bytes::Bytes> {
    let mut jobs = HashSet::new();
    let mut out = BTreeMap::new();
    for (k, b) in objects(&local_store(lake), "raw/sandbox/export").await {
        // raw/sandbox/export/<job>/<name>
        let parts: Vec<&str> = k.splitn(5, '/').collect();
        jobs.insert(parts[3].to_string());
        out.insert(parts[4].to_string(), b);
    }
    assert_eq!(
        jobs.len(),
        1,
        "raw objects of exactly one export job: {jobs:?}"
    );
    out
}

/// `(type, id, version)` of every `resources` row, and every row's ce_id.
async fn resource_keys(lake: &Path) -> (Vec<(String, String, String)>, Vec<String>) {
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for b in table(&local_store(lake), "resources").await {
        let t = b
            .column_by_name("resource_type")
            .unwrap()
            .as_string::<i32>();
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        let v = b.column_by_name("version_id").unwrap().as_string::<i32>();
        let rk = b.column_by_name("_raw_key").unwrap().as_string::<i32>();
        let line = b
            .column_by_name("_line")
            .unwrap()
            .as_primitive::<arrow_array::types::Int64Type>();
        for i in 0..b.num_rows() {
            let ver = if v.is_null(i) { "" } else { v.value(i) };
            keys.push((t.value(i).into(), id.value(i).into(), ver.into()));
            ids.push(ce_id(rk.value(i), line.value(i)));
        }
    }
    keys.sort();
    (keys, ids)
}

/// Rows per table (every table folder of the lake).
async fn table_rows(lake: &Path) -> BTreeMap<String, usize> {
    let store = local_store(lake);
    let mut names = HashSet::new();
    for k in objects(&store, "tables").await.keys() {
        names.insert(k.split('/').nth(1).unwrap().to_string());
    }
    let mut out = BTreeMap::new();
    for n in names {
        let rows = table(&store, &n).await.iter().map(|b| b.num_rows()).sum();
        out.insert(n, rows);
    }
    out
}

/// Every upsert event's ce_id on `topics`, read from the start until `expected` distinct ids
/// arrived and the topics stayed quiet for 3 s (so duplicates are counted too).
fn upsert_ce_ids(topics: &[String], expected: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", common::unique("chaos"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).unwrap();
    let mut ids = Vec::new();
    let mut distinct = HashSet::new();
    let end = Instant::now() + Duration::from_secs(120);
    let mut last = Instant::now();
    while Instant::now() < end {
        if distinct.len() >= expected && last.elapsed() > Duration::from_secs(3) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let mut id = None;
                let mut ty = None;
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        let v = String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned();
                        match x.key {
                            "ce_id" => id = Some(v),
                            "ce_type" => ty = Some(v),
                            _ => {}
                        }
                    }
                }
                if ty.as_deref() == Some(fhirhose_sinks::kafka::CE_TYPE_UPSERT) {
                    let id = id.expect("every event carries ce_id");
                    distinct.insert(id.clone());
                    ids.push(id);
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_an_export_loses_and_duplicates_nothing() {
    let brokers = common::brokers();
    let kills = env_num("CHAOS_KILLS", 8) as usize;
    let seed = env_num("CHAOS_SEED", 1);
    let patients = env_num("CHAOS_PATIENTS", 10) as usize;
    let dir = tempfile::tempdir().unwrap();
    let keys = generate_keys(Alg::ES384, &dir.path().join("keys")).unwrap();
    let key = keys.private_key_path.clone();
    let tiny = format!("tiny-files={RESOURCES_PER_FILE}");

    // The reference: a clean run (no faults, no kills) over the same data.
    let clean = sandbox(patients, &tiny, "chaos", keys.jwks.clone()).await;
    let out = common::fhirhose_async(
        export_args(&clean, dir.path(), &key, "clean", &[]),
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "clean run");
    clean.shutdown().await;

    let faults = format!(
        "reset=0.05@file,503=0.05@status+file,429=0.03@file,retry-after=1,slow=15ms@file,{tiny},seed={seed}"
    );
    let sb = sandbox(patients, &faults, "chaos", keys.jwks.clone()).await;
    let prefix = common::unique("chaos");
    let args = export_args(
        &sb,
        dir.path(),
        &key,
        "chaos",
        &["--kafka-brokers", &brokers, "--topic-prefix", &prefix],
    );
    let mut rng = Rng(seed);
    let mut done_kills = 0;
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    let mut attempts = 0;
    let mut finished = false;
    while done_kills < kills {
        attempts += 1;
        assert!(
            attempts <= kills * 3,
            "the export kept finishing before its kill"
        );
        let phase = PHASES[(rng.next() % PHASES.len() as u64) as usize];
        match attempt(&sb, &args, dir.path(), phase, &mut rng).await {
            None => {
                done_kills += 1;
                *by_phase.entry(format!("{phase:?}")).or_default() += 1;
            }
            // It finished: the job is landed; another run would be a new export.
            Some(Some(0)) => {
                finished = true;
                break;
            }
            // It ended on its own (a faulted file): the next attempt resumes the job.
            Some(_) => {}
        }
    }
    // Restart until it finishes (faulted files may need another run).
    for _ in 0..4 {
        if finished {
            break;
        }
        let out = common::fhirhose_async(args.clone(), dir.path()).await;
        if out.status.code() == Some(0) {
            finished = true;
            break;
        }
    }
    assert!(finished, "the export finished after the kills");
    eprintln!(
        "chaos: {done_kills} kills by phase {by_phase:?}, {attempts} attempts, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        done_kills >= kills.min(3),
        "too few kills landed ({done_kills}); the data set is too small for {kills}"
    );

    // Raw bytes: the same files with the same bytes as the clean run.
    let clean_raw = raw_files(&dir.path().join("clean")).await;
    let chaos_raw = raw_files(&dir.path().join("chaos")).await;
    assert_eq!(
        clean_raw.keys().collect::<Vec<_>>(),
        chaos_raw.keys().collect::<Vec<_>>()
    );
    for (k, v) in &clean_raw {
        assert!(chaos_raw[k] == *v, "raw bytes of {k} differ");
    }

    // Parquet: every (type, id, version) once, as in the clean run; every table's row count.
    let (clean_keys, _) = resource_keys(&dir.path().join("clean")).await;
    let (chaos_keys, expected_ids) = resource_keys(&dir.path().join("chaos")).await;
    let unique: HashSet<_> = chaos_keys.iter().collect();
    assert_eq!(unique.len(), chaos_keys.len(), "duplicated resource rows");
    assert_eq!(
        chaos_keys, clean_keys,
        "resource rows differ from the clean run"
    );
    let total: usize = sb.resource_counts().values().sum();
    assert_eq!(chaos_keys.len(), total, "every resource of the sandbox");
    assert_eq!(
        table_rows(&dir.path().join("chaos")).await,
        table_rows(&dir.path().join("clean")).await,
        "rows per table"
    );

    // Kafka: every resource's ce_id, duplicates within the in-flight window of each kill.
    let topics: Vec<String> = sb
        .resource_counts()
        .keys()
        .map(|t| format!("{prefix}.{t}"))
        .collect();
    let expected: HashSet<String> = expected_ids.into_iter().collect();
    let seen = upsert_ce_ids(&topics, expected.len());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    assert_eq!(missing, 0, "resources without an event on Kafka");
    assert!(
        counts.keys().all(|id| expected.contains(*id)),
        "events whose ce_id is not a landed resource"
    );
    let duplicates = seen.len() - counts.len();
    // At a kill, at most the files in progress (2 at once, each at most one tiny file of
    // RESOURCES_PER_FILE lines) had unacknowledged or un-checkpointed events.
    let window = 2 * RESOURCES_PER_FILE;
    eprintln!(
        "chaos: {} resources, {} events, {duplicates} duplicates (bound {})",
        expected.len(),
        seen.len(),
        done_kills * window
    );
    assert!(duplicates <= done_kills * window, "{duplicates} duplicates");
    sb.shutdown().await;
}

/// Writes `n` Patient lines.
fn patients_file(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        writeln!(
            f,
            r#"{{"resourceType":"Patient","id":"p{i}","meta":{{"versionId":"1"}},"gender":"other","birthDate":"1970-01-01"}}"#
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_kafka_then_resume_skips_the_acknowledged_lines() {
    let brokers = common::brokers();
    const N: usize = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("Patient.ndjson");
    patients_file(&input, N);
    let lake: PathBuf = dir.path().join("lake");
    let state = dir.path().join("state.db");
    let prefix = common::unique("wm");
    let args: Vec<String> = [
        "ingest",
        input.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        &prefix,
        "--no-canonical-views",
        "--summary-json",
        dir.path().join("summary.json").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::fs::create_dir_all(&lake).unwrap();
    let lake_url = fhirhose::lake::Lake::open(lake.to_str().unwrap())
        .unwrap()
        .url;
    let sink = format!("kafka:{brokers}|{prefix}");
    let watcher = fhirhose_ingest::state::StateStore::open(&state).unwrap();
    let mut child = spawn(&args, dir.path());
    // Kill as soon as a watermark is checkpointed (the file is mid-Kafka then).
    let mut seen = 0;
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && child.try_wait().unwrap().is_none() {
        if let Some(f) = watcher.files(&lake_url).unwrap_or_default().first() {
            seen = watcher
                .file_watermark(&lake_url, &f.fingerprint, &sink)
                .unwrap_or(0);
        }
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(watcher);
    assert!(
        seen > 0,
        "a watermark was checkpointed before the file finished"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let st = fhirhose_ingest::state::StateStore::open(&state).unwrap();
    let f = st.files(&lake_url).unwrap().remove(0);
    assert_ne!(f.status.name(), "done", "killed before the file landed");
    let wm = st.file_watermark(&lake_url, &f.fingerprint, &sink).unwrap();
    assert!(wm >= seen && wm < N as u64, "watermark {wm} of {N}");
    drop(st);

    let out = common::fhirhose_async(args.clone(), dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let summary = common::summary(&dir.path().join("summary.json"));
    assert_eq!(
        summary["events_skipped"], wm,
        "lines up to the watermark not published again"
    );
    assert_eq!(summary["resources"], N as u64);
    // The watermark is gone once the file is done.
    let st = fhirhose_ingest::state::StateStore::open(&state).unwrap();
    assert_eq!(
        st.file_watermark(&lake_url, &f.fingerprint, &sink).unwrap(),
        0
    );

    let ids = upsert_ce_ids(&[format!("{prefix}.Patient")], N);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), N, "every resource's event");
    let duplicates = ids.len() - N;
    eprintln!("watermark {wm} of {N}; {duplicates} duplicates");
    assert!(
        duplicates as u64 <= N as u64 - wm,
        "only lines above the watermark are published again ({duplicates})"
    );
    let (keys, _) = resource_keys(&lake).await;
    assert_eq!(keys.len(), N);
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), N);
}
