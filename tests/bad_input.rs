//! The bad-input catalogue (README, "Bad input"): what fhirhose does with each kind of bad
//! input, through the real binary. Cases already proven elsewhere are not repeated here:
//! malformed JSON, huge lines, invalid UTF-8, a missing `resourceType` or `id` and a truncated
//! last line (`tests/ingest_e2e.rs`, `bad_lines_are_dead_lettered_with_reasons_and_good_lines_land`),
//! a manifest pointing at missing files (`tests/export_e2e.rs`,
//! `failed_files_make_the_job_partial_and_resume_fetches_only_those`), an unwritable lake
//! (`tests/ingest_e2e.rs`). Each case gets a clear error and loses nothing.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use arrow_array::cast::AsArray;
use common::{local_store, objects, table};
use fhirhose_ingest::auth::{generate_keys, Alg};
use fhirhose_sandbox::{Sandbox, SandboxConfig};

fn patient(id: &str, version: &str) -> String {
    format!(
        r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"{version}"}},"name":[{{"family":"Doe"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_mismatch_duplicate_ids_and_deep_nesting_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("Patient.ndjson");
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{}", patient("p1", "1")).unwrap(); // 1
                                                    // 2: an Observation in a file named Patient: accepted under its own type.
    writeln!(
        f,
        r#"{{"resourceType":"Observation","id":"o1","status":"final","code":{{"text":"x"}}}}"#
    )
    .unwrap();
    writeln!(f, "{}", patient("p1", "2")).unwrap(); // 3: same id, next version
    writeln!(f, "{}", patient("p1", "2")).unwrap(); // 4: the very same version again
                                                    // 5: nested far deeper than the 128-level limit.
    let deep = format!(
        r#"{{"resourceType":"Patient","id":"deep","extension":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    writeln!(f, "{deep}").unwrap();
    writeln!(f, "{}", patient("p2", "1")).unwrap(); // 6
    drop(f);
    let lake = dir.path().join("lake");
    let summary = dir.path().join("summary.json");
    let out = common::fhirhose(
        dir.path(),
        &[
            "ingest",
            input.to_str().unwrap(),
            "--lake",
            lake.to_str().unwrap(),
            "--summary-json",
            summary.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "bad lines never fail a run");
    let s = common::summary(&summary);
    assert_eq!(s["lines"], 6);
    assert_eq!(s["resources"], 5);
    assert_eq!(s["resources_by_type"]["Patient"], 4);
    assert_eq!(s["resources_by_type"]["Observation"], 1);
    assert_eq!(s["dead_letters_by_reason"]["too_deep"], 1);
    assert_eq!(s["dead_letters"], 1);

    // Every accepted line is a row, duplicates included, each with its own line number.
    let store = local_store(&lake);
    let mut rows: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
    for b in table(&store, "resources").await {
        let t = b
            .column_by_name("resource_type")
            .unwrap()
            .as_string::<i32>();
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        let v = b.column_by_name("version_id").unwrap().as_string::<i32>();
        let line = b
            .column_by_name("_line")
            .unwrap()
            .as_primitive::<arrow_array::types::Int64Type>();
        for i in 0..b.num_rows() {
            rows.entry((t.value(i).into(), id.value(i).into()))
                .or_default()
                .push((v.value(i).into(), line.value(i)));
        }
    }
    let p1 = &rows[&("Patient".to_string(), "p1".to_string())];
    assert_eq!(
        p1,
        &vec![("1".into(), 1), ("2".into(), 3), ("2".into(), 4)],
        "duplicates are kept, told apart by _line"
    );
    assert_eq!(
        rows[&("Observation".to_string(), "o1".to_string())].len(),
        1
    );
    // The mismatched resource reaches its own type's view table, not the file's.
    let obs: usize = table(&store, "observation")
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(obs, 1);
    // The deep line is a dead letter pointing at its raw bytes; no content in the letter.
    let dl = objects(&store, "deadletter").await;
    let letter: serde_json::Value = serde_json::from_slice(
        dl.values()
            .next()
            .unwrap()
            .split(|b| *b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(letter["reason"], "too_deep");
    assert_eq!(letter["line"], 5);
    assert!(!letter.to_string().contains("Doe"));
    assert_eq!(letter["length"], deep.len() as u64);
}

#[test]
fn a_view_with_a_bad_fhirpath_is_a_usage_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let views = dir.path().join("views");
    std::fs::create_dir_all(&views).unwrap();
    std::fs::write(
        views.join("broken.json"),
        r#"{"resourceType":"ViewDefinition","name":"broken","resource":"Patient","status":"active",
           "select":[{"column":[{"name":"x","path":"name.where(family = )"}]}]}"#,
    )
    .unwrap();
    let input = dir.path().join("Patient.ndjson");
    std::fs::write(&input, format!("{}\n", patient("p1", "1"))).unwrap();
    let lake = dir.path().join("lake");
    let out = common::fhirhose(
        dir.path(),
        &[
            "ingest",
            input.to_str().unwrap(),
            "--lake",
            lake.to_str().unwrap(),
            "--views",
            views.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken"), "names the view: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Nothing was landed (the run never started).
    assert!(!lake.join("raw").exists() && !lake.join("tables").exists());
}

struct Ehr {
    sb: fhirhose_sandbox::RunningSandbox,
    dir: tempfile::TempDir,
}

async fn ehr(faults: &str) -> (Ehr, std::path::PathBuf, std::path::PathBuf) {
    let sb = Sandbox::start(SandboxConfig {
        patients: 2,
        faults: faults.parse().unwrap(),
        export_polls: 1,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registered = generate_keys(Alg::ES384, &dir.path().join("registered")).unwrap();
    let rotated_out = generate_keys(Alg::ES384, &dir.path().join("rotated")).unwrap();
    sb.register_jwks_client("bad-input", registered.jwks.clone(), "system/*.read");
    (
        Ehr { sb, dir },
        registered.private_key_path,
        rotated_out.private_key_path,
    )
}

async fn export(e: &Ehr, key: &Path) -> std::process::Output {
    let args: Vec<String> = [
        "export",
        "--fhir-url",
        &e.sb.base_url(),
        "--client-id",
        "bad-input",
        "--key-file",
        key.to_str().unwrap(),
        "--lake",
        e.dir.path().join("lake").to_str().unwrap(),
        "--state",
        e.dir.path().join("state.db").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cwd = e.dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(common::BIN)
            .args(&args)
            .current_dir(&cwd)
            .env("FHIRHOSE_LOG_LEVEL", "warn")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap();
        eprintln!(
            "export -> {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
    .await
    .unwrap()
}

fn assert_token_refused(e: &Ehr, out: &std::process::Output, why: &str) {
    assert_eq!(out.status.code(), Some(3), "an authorization failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid_client"),
        "the server's error code: {err}"
    );
    assert!(err.contains(why), "the server's reason ({why}): {err}");
    assert!(
        !err.contains("eyJ"),
        "no assertion or token in the error: {err}"
    );
    assert!(
        !e.sb
            .request_log()
            .iter()
            .any(|l| l.path.contains("$export")),
        "no kick-off without a token"
    );
    assert!(!e.dir.path().join("lake/raw").exists(), "nothing landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_out_key_is_refused_at_the_token_endpoint_and_nothing_lands() {
    let (e, good, rotated) = ehr("").await;
    let out = export(&e, &rotated).await;
    assert_token_refused(&e, &out, "JWKS");
    // The registered key still works: nothing was left half-done.
    let out = export(&e, &good).await;
    assert_eq!(out.status.code(), Some(0));
    e.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_at_the_token_endpoint_is_a_clear_error() {
    // The server's clock 10 minutes ahead: the assertion looks expired.
    let (e, good, _) = ehr("clock-skew=600").await;
    let out = export(&e, &good).await;
    assert_token_refused(&e, &out, "expired");
    e.sb.shutdown().await;
    // 10 minutes behind: the assertion's exp looks too far in the future.
    let (e, good, _) = ehr("clock-skew=-600").await;
    let out = export(&e, &good).await;
    assert_token_refused(&e, &out, "future");
    // A server clock a little behind (or ahead) is tolerated: assertions live 4 of the
    // allowed 5 minutes.
    e.sb.set_faults("clock-skew=-45".parse().unwrap());
    let out = export(&e, &good).await;
    assert_eq!(out.status.code(), Some(0));
    e.sb.set_faults("clock-skew=120".parse().unwrap());
    let out = export(&e, &good).await;
    assert_eq!(out.status.code(), Some(0));
    e.sb.shutdown().await;
}

/// `ingest --views-only` (the benchmark's "normalize only"): view tables and dead letters,
/// nothing else — no raw copy, no `resources` table, no manifest, no state database — and
/// lineage that points to the input file itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_only_writes_view_tables_and_dead_letters_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("Patient.ndjson");
    let mut f = std::fs::File::create(&input).unwrap();
    writeln!(f, "{}", patient("p1", "1")).unwrap();
    writeln!(f, "{{not json").unwrap();
    writeln!(f, "{}", patient("p2", "1")).unwrap();
    drop(f);
    let lake = dir.path().join("lake");
    let summary = dir.path().join("summary.json");
    let args = [
        "ingest",
        "--views-only",
        input.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ];
    for run in 0..2 {
        let out = common::fhirhose(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0));
        let s = common::summary(&summary);
        // No state: a second run processes the file again (and rewrites the same parts).
        assert_eq!(s["files_done"], 1, "run {run}");
        assert_eq!(s["resources"], 2);
        assert_eq!(s["dead_letters_by_reason"]["invalid_json"], 1);
    }
    let store = local_store(&lake);
    let keys: Vec<String> = objects(&store, "").await.into_keys().collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("tables/patient") || k.starts_with("deadletter/")),
        "only view tables and dead letters: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.starts_with("deadletter/")));
    assert!(!dir.path().join(".fhirhose").exists(), "no state database");
    let mut ids = Vec::new();
    for b in table(&store, "patient/").await {
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        let raw = b.column_by_name("_raw_key").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            ids.push(id.value(i).to_string());
            assert_eq!(raw.value(i), input.display().to_string());
        }
    }
    ids.sort();
    assert_eq!(ids, ["p1", "p2"]);

    // Kafka settings conflict with a views-only run: a usage error that names them.
    let mut with_kafka = args.to_vec();
    with_kafka.extend(["--kafka-brokers", "127.0.0.1:9"]);
    let out = common::fhirhose(dir.path(), &with_kafka);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--views-only publishes no events"));
}
