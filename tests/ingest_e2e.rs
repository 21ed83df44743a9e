//! End to end: `fhirhose ingest` on the corpus into a local lake and into the S3 endpoint,
//! with the real Kafka-protocol broker; bad input; clear errors for bad arguments.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

fn topics_for(prefix: &str) -> Vec<String> {
    lines_by_type()
        .keys()
        .map(|t| format!("{prefix}.{t}"))
        .collect()
}

/// Checks the lake against the corpus: rows per type, raw hashes, manifest.
async fn check_lake(store: &std::sync::Arc<dyn object_store::ObjectStore>) {
    let expected = lines_by_type();
    let (rows, keys) = resource_rows(store).await;
    assert_eq!(
        rows, expected,
        "parquet rows per type = input lines per type"
    );
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "no duplicated (type, id) rows");

    let raw = objects(store, "raw").await;
    let mut raw_by_name: BTreeMap<String, String> = BTreeMap::new();
    for (k, b) in &raw {
        let name = k.rsplit('/').next().unwrap().to_string();
        raw_by_name.insert(name, hex::encode(Sha256::digest(b)));
    }
    for (file, _, _, sha) in corpus_files() {
        let name = file.trim_end_matches(".gz").to_string();
        assert_eq!(raw_by_name.get(&name), Some(&sha), "raw sha256 of {name}");
    }
    assert_eq!(
        raw.len(),
        corpus_files().len(),
        "one raw object per input file"
    );

    // Canonical view tables landed too, one row per resource for the main views.
    let patient_rows: usize = table(store, "patient")
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(patient_rows as u64, expected["Patient"]);
    let obs_rows: usize = table(store, "observation")
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(obs_rows as u64, expected["Observation"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_lands_in_local_lake_and_broker_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("e2e");
    let lake = dir.path().join("lake");
    let summary_path = dir.path().join("summary.json");
    let corpus = corpus();
    let brokers = brokers();
    let args = [
        "ingest",
        "--lake",
        lake.to_str().unwrap(),
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        &prefix,
        "--summary-json",
        summary_path.to_str().unwrap(),
        corpus.to_str().unwrap(),
    ];
    let out = fhirhose(dir.path(), &args);
    assert!(out.status.success());
    let s = summary(&summary_path);
    let expected = lines_by_type();
    let total: u64 = expected.values().sum();
    assert_eq!(s["resources"], total);
    assert_eq!(s["lines"], total);
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(s["files_done"], 19);
    assert_eq!(s["parquet_rows_by_table"]["resources"], total);
    for (t, n) in &expected {
        assert_eq!(s["resources_by_type"][t], *n, "{t}");
        assert_eq!(s["events_by_topic"][format!("{prefix}.{t}")], *n, "{t}");
    }

    let store = local_store(&lake);
    check_lake(&store).await;

    // Events read back: one per resource, keyed Type/id, with deterministic ce_id headers.
    let events = consume(
        &topics_for(&prefix),
        total as usize,
        Duration::from_secs(90),
    );
    assert_eq!(
        events.len() as u64,
        total,
        "events on the broker = input lines"
    );
    let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *per_topic.entry(e.topic.clone()).or_default() += 1;
    }
    for (t, n) in &expected {
        assert_eq!(per_topic.get(&format!("{prefix}.{t}")), Some(n), "{t}");
    }
    let e = events
        .iter()
        .find(|e| e.topic.ends_with(".Patient"))
        .unwrap();
    assert!(e.key.starts_with("Patient/"));
    assert_eq!(e.headers["ce_specversion"], "1.0");
    assert_eq!(e.headers["ce_subject"], e.key);
    assert_eq!(e.headers["content-type"], "application/fhir+json");
    let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
    assert_eq!(format!("Patient/{}", v["id"].as_str().unwrap()), e.key);
    // ce_time is meta.lastUpdated where the resource has one (only DocumentReference here).
    assert!(!e.headers.contains_key("ce_time"));
    let d = events
        .iter()
        .find(|e| e.topic.ends_with(".DocumentReference"))
        .unwrap();
    assert_eq!(d.headers["ce_time"], "2018-05-25T00:00:00+00:00");
    let ids: HashSet<_> = events
        .iter()
        .filter_map(|e| e.headers.get("ce_id"))
        .collect();
    assert_eq!(ids.len() as u64, total, "ce_id unique per resource");

    // A second run: nothing new anywhere.
    let before = objects(&store, "").await;
    let out = fhirhose(dir.path(), &args);
    assert!(out.status.success());
    let s2 = summary(&summary_path);
    assert_eq!(s2["files_skipped"], 19);
    assert_eq!(s2["resources"], 0);
    let after = objects(&store, "").await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(before, after, "no object changed");
    let events = consume(
        &topics_for(&prefix),
        total as usize + 1,
        Duration::from_secs(5),
    );
    assert_eq!(events.len() as u64, total, "no event published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_lands_in_s3_with_create_only_raw_objects() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("s3");
    let lake = format!("s3://{}/{prefix}", bucket());
    let summary_path = dir.path().join("summary.json");
    // A small inline limit sends the larger files through the staged multipart + create-only
    // copy path, the rest through a single create-only PUT.
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            &lake,
            "--kafka-brokers",
            &brokers(),
            "--topic-prefix",
            &prefix,
            "--raw-inline-bytes",
            "500000",
            "--summary-json",
            summary_path.to_str().unwrap(),
            corpus().to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let store = s3_store(&prefix);
    check_lake(&store).await;
    assert!(
        objects(&store, "raw/_staging").await.is_empty(),
        "no staging leftovers"
    );
    let total: u64 = lines_by_type().values().sum();
    let events = consume(
        &topics_for(&prefix),
        total as usize,
        Duration::from_secs(90),
    );
    assert_eq!(events.len() as u64, total);

    // Forced re-run with a fresh state database: raw objects are verified (same sha256), not
    // rewritten; Parquet parts are replaced under the same names, so rows stay unique.
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            &lake,
            "--state",
            dir.path().join("other-state.db").to_str().unwrap(),
            "--raw-inline-bytes",
            "500000",
            corpus().to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    check_lake(&store).await;
}

fn write_bad_file(path: &std::path::Path) -> Vec<(u64, &'static str)> {
    let mut f = std::fs::File::create(path).unwrap();
    let good = |id: &str| {
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"{id}\",\"name\":[{{\"family\":\"Doe\"}}]}}\n"
        )
    };
    let mut expected = Vec::new();
    f.write_all(good("g1").as_bytes()).unwrap(); // 1
    f.write_all(b"{\"resourceType\":\"Patient\",\"id\":\"b1\",\n")
        .unwrap(); // 2 broken JSON
    expected.push((2, "invalid_json"));
    f.write_all(b"{\"resourceType\":\"Patient\",\"name\":[]}\n")
        .unwrap(); // 3 no id
    expected.push((3, "missing_id"));
    f.write_all(good("g2").as_bytes()).unwrap(); // 4
    let long = format!(
        "{{\"resourceType\":\"Patient\",\"id\":\"big\",\"text\":\"{}\"}}\n",
        "x".repeat(5000)
    );
    f.write_all(long.as_bytes()).unwrap(); // 5 over the limit
    expected.push((5, "oversize"));
    f.write_all(b"{\"resourceType\":\"Patient\",\"id\":\"u1\",\"name\":\"\xff\xfe\"}\n")
        .unwrap(); // 6
    expected.push((6, "invalid_utf8"));
    f.write_all(b"{\"id\":\"nort\"}\n").unwrap(); // 7
    expected.push((7, "missing_resource_type"));
    f.write_all(good("g3").as_bytes()).unwrap(); // 8
    f.write_all(b"{\"resourceType\":\"Patient\",\"id\":\"trunc")
        .unwrap(); // 9 truncated, no newline
    expected.push((9, "truncated"));
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_dead_lettered_with_reasons_and_good_lines_land() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let expected = write_bad_file(&input.join("Patient.bad.ndjson"));
    let prefix = unique("bad");
    let lake = dir.path().join("lake");
    let summary_path = dir.path().join("summary.json");
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            lake.to_str().unwrap(),
            "--kafka-brokers",
            &brokers(),
            "--topic-prefix",
            &prefix,
            "--max-line-bytes",
            "1000",
            "--summary-json",
            summary_path.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "dead letters never fail the run");
    let s = summary(&summary_path);
    assert_eq!(s["resources"], 3);
    assert_eq!(s["lines"], 9);
    assert_eq!(s["dead_letters"], expected.len() as u64);
    for (_, reason) in &expected {
        assert_eq!(s["dead_letters_by_reason"][reason], 1, "{reason}");
    }

    let store = local_store(&lake);
    let (rows, _) = resource_rows(&store).await;
    assert_eq!(rows.get("Patient"), Some(&3));
    // The dead-letter object: one JSON line per bad line, with reason and raw pointer.
    let dl = objects(&store, "deadletter").await;
    assert_eq!(dl.len(), 1);
    let body = dl.values().next().unwrap();
    let letters: Vec<serde_json::Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let got: Vec<(u64, String)> = letters
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = expected.iter().map(|(l, r)| (*l, r.to_string())).collect();
    assert_eq!(got, want);
    // The pointer leads to the exact bytes in the raw object, which keeps everything.
    let raw = objects(&store, "raw").await;
    let raw_bytes = raw.values().next().unwrap();
    assert_eq!(
        raw_bytes.as_ref(),
        std::fs::read(input.join("Patient.bad.ndjson"))
            .unwrap()
            .as_slice()
    );
    for l in &letters {
        assert_eq!(l["raw_key"].as_str().unwrap(), raw.keys().next().unwrap());
        let (o, n) = (
            l["offset"].as_u64().unwrap() as usize,
            l["length"].as_u64().unwrap() as usize,
        );
        assert!(o + n <= raw_bytes.len());
        if l["reason"] == "missing_id" {
            assert_eq!(
                &raw_bytes[o..o + n],
                b"{\"resourceType\":\"Patient\",\"name\":[]}"
            );
        }
    }
    // The dead-letter topic has them too, with reason headers and no content in headers.
    let events = consume(
        &[format!("{prefix}.deadletter")],
        expected.len(),
        Duration::from_secs(60),
    );
    assert_eq!(events.len(), expected.len());
    let mut reasons: Vec<String> = events
        .iter()
        .map(|e| e.headers["fhirhose_reason"].clone())
        .collect();
    reasons.sort();
    let mut want_reasons: Vec<String> = expected.iter().map(|(_, r)| r.to_string()).collect();
    want_reasons.sort();
    assert_eq!(reasons, want_reasons);
    for e in &events {
        for v in e.headers.values() {
            assert!(!v.contains("Doe"), "no content in headers");
        }
    }
    let good = consume(&[format!("{prefix}.Patient")], 3, Duration::from_secs(60));
    assert_eq!(good.len(), 3);
}

#[test]
fn unknown_input_is_a_one_line_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            dir.path().join("lake").to_str().unwrap(),
            "/nonexistent/in.ndjson",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/in.ndjson"), "{err}");
}

#[test]
fn unreachable_broker_fails_fast_and_lands_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let started = std::time::Instant::now();
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            lake.to_str().unwrap(),
            "--kafka-brokers",
            "127.0.0.1:1",
            corpus().join("Patient.01.ndjson.gz").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!lake.join("raw").exists(), "nothing landed");
}

#[test]
fn unwritable_lake_is_a_clear_error_and_nothing_is_marked_done() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let out = fhirhose(
        dir.path(),
        &[
            "ingest",
            "--lake",
            blocker.join("lake").to_str().unwrap(),
            corpus().join("Patient.01.ndjson.gz").to_str().unwrap(),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lake"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // No file was recorded as done.
    let state = dir.path().join(".fhirhose/state.db");
    if state.exists() {
        let out = fhirhose(dir.path(), &["status"]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("done"));
    }
}
