//! End to end: the real `fhirhose export` / `fhirhose fetch` binary against an in-process
//! sandbox EHR (SMART backend services with an ES384 key), into a temporary local lake, no
//! Kafka. The lake's Parquet rows and raw lines must equal what the sandbox holds.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Setup;
use common::{local_store, objects, resource_rows, BIN};
use fhirhose_sandbox::SandboxConfig;

async fn setup(faults: &str, patients: usize) -> Setup {
    common::sandbox_with_client(
        SandboxConfig {
            patients,
            faults: faults.parse().unwrap(),
            export_polls: 1,
            resources_per_file: 40,
            ..SandboxConfig::default()
        },
        "fhirhose-e2e",
    )
    .await
}

trait E2eArgs {
    fn args(&self, extra: &[&str]) -> Vec<String>;
}

impl E2eArgs for Setup {
    fn args(&self, extra: &[&str]) -> Vec<String> {
        self.export_args("sandbox", extra)
    }
}

impl Setup {
    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("report.json")).unwrap())
            .unwrap()
    }

    fn kickoffs(&self) -> usize {
        self.sb
            .request_log()
            .iter()
            .filter(|l| l.path.contains("$export") && l.status == 202)
            .count()
    }

    /// Parquet `resources` rows and raw export lines per type, and whether (type, id) keys
    /// are unique.
    async fn lake_counts(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, bool) {
        let store = local_store(&self.lake());
        let (rows, keys) = resource_rows(&store).await;
        let unique = keys.iter().collect::<HashSet<_>>().len() == keys.len();
        let mut raw: BTreeMap<String, u64> = BTreeMap::new();
        for (k, b) in objects(&store, "raw/sandbox/export").await {
            let name = k.rsplit('/').next().unwrap();
            if name.contains(".deleted.") || name.contains(".error.") {
                continue;
            }
            let ty = name.split('.').next().unwrap().to_owned();
            *raw.entry(ty).or_default() +=
                b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count() as u64;
        }
        (rows, raw, unique)
    }

    fn expected(&self) -> BTreeMap<String, u64> {
        self.sb
            .resource_counts()
            .into_iter()
            .map(|(k, v)| (k, v as u64))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_lands_every_resource_and_since_auto_is_incremental() {
    let s = setup("", 6).await;
    let out = common::fhirhose_async(s.args(&["--since", "auto"]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let (rows, raw, unique) = s.lake_counts().await;
    assert_eq!(
        rows,
        s.expected(),
        "parquet rows per type = sandbox resources"
    );
    assert_eq!(raw, s.expected(), "raw lines per type = sandbox resources");
    assert!(unique);
    let report = s.report();
    assert_eq!(report["state"], "done");
    assert!(report["status_deleted"].as_bool().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("export job") && stdout.contains("(done)"));
    // No token, key or signed query in the output.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Bearer") && !stdout.contains("Bearer"));

    // Second run with --since auto: only what changed since the recorded transactionTime.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.sb.touch_resources("Condition", 2);
    let out = common::fhirhose_async(s.args(&["--since", "auto"]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let report2 = s.report();
    assert_eq!(report2["since"], report["transaction_time"]);
    assert_eq!(report2["output"]["Condition"]["lines"], 2);

    // --list-jobs shows both jobs, done.
    let list = common::fhirhose_async(
        vec![
            "export".into(),
            "--list-jobs".into(),
            "--state".into(),
            s.dir.path().join("state/state.db").to_str().unwrap().into(),
        ],
        s.dir.path(),
    )
    .await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.matches(" done ").count(), 2, "{text}");
    s.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_with_faults_on_equals_the_sandbox() {
    let s = setup(
        "reset=0.2@file,503=every:5@status+file,retry-after=1,redirect-files,error-file,deleted,tiny-files=9,seed=7",
        4,
    )
    .await;
    let out = common::fhirhose_async(s.args(&["--profile", "generic"]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let (rows, raw, unique) = s.lake_counts().await;
    assert_eq!(rows, s.expected());
    assert_eq!(raw, s.expected());
    assert!(unique);
    let report = s.report();
    assert_eq!(report["state"], "done");
    assert_eq!(report["error_files"], 1);
    // The `deleted` file became rows of the deletions table.
    let deletions: usize = common::table(&local_store(&s.lake()), "deletions")
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(deletions >= 1);
    let log = s.sb.request_log();
    assert!(log
        .iter()
        .filter(|l| l.origin == "storage")
        .all(|l| !l.bearer_present));
    assert!(log.iter().any(|l| l.origin == "storage"));
    // No hammering: consecutive status requests are at least the 1 s Retry-After apart
    // (the sandbox's 202s and its injected 503s both ask for 1 s).
    let polls: Vec<_> = log
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains("bulkstatus"))
        .map(|l| l.time)
        .collect();
    assert!(polls.len() >= 2);
    for w in polls.windows(2) {
        let gap = w[1].duration_since(w[0]).unwrap_or_default();
        assert!(
            gap >= Duration::from_millis(900),
            "polled again after {gap:?}"
        );
    }
    s.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_files_make_the_job_partial_and_resume_fetches_only_those() {
    let s = setup("404=first:2@file,tiny-files=10", 3).await;
    let out = common::fhirhose_async(s.args(&[]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(s.report()["state"], "partial");
    assert_eq!(s.report()["files_failed"], 2);
    s.sb.set_faults("tiny-files=10".parse().unwrap());
    s.sb.clear_request_log();
    let out = common::fhirhose_async(s.args(&["--resume"]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let report = s.report();
    assert_eq!(report["state"], "done");
    assert_eq!(report["reattached"], true);
    assert_eq!(report["files_landed"], 2);
    assert_eq!(s.kickoffs(), 0);
    let file_gets =
        s.sb.request_log()
            .iter()
            .filter(|l| l.path.starts_with("/files/"))
            .count();
    assert_eq!(file_gets, 2);
    let (rows, _, unique) = s.lake_counts().await;
    assert_eq!(rows, s.expected());
    assert!(unique);
    s.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_then_rerun_reattaches_without_duplicates() {
    let s = setup("slow=150ms@file,tiny-files=5", 4).await;
    let args = s.args(&[]);
    let cwd = s.dir.path().to_owned();
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(&cwd)
        .env("FHIRHOSE_LOG_LEVEL", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some files were served, then kill -9.
    let total_files = {
        let mut n = 0;
        for _ in 0..400 {
            n =
                s.sb.request_log()
                    .iter()
                    .filter(|l| l.path.starts_with("/files/") && l.status == 200)
                    .count();
            if n >= 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        n
    };
    assert!(total_files >= 6, "downloads started");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s.kickoffs(), 1);
    let out = common::fhirhose_async(s.args(&[]), s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let report = s.report();
    assert_eq!(report["reattached"], true);
    assert!(report["files_skipped"].as_u64().unwrap() >= 1);
    assert_eq!(s.kickoffs(), 1, "no second kick-off");
    let (rows, raw, unique) = s.lake_counts().await;
    assert_eq!(rows, s.expected());
    assert_eq!(raw, s.expected());
    assert!(unique, "no duplicated rows");
    s.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_pages_a_search_into_the_lake() {
    let s = setup("", 3).await;
    let pid = s.sb.patient_ids()[0].clone();
    let mut args = s.args(&[]);
    args[0] = "fetch".into();
    let pos = args.iter().position(|a| a == "--report-json").unwrap();
    args.drain(pos..pos + 2);
    args.insert(1, "Observation".into());
    args.extend([
        "--patient".into(),
        pid.clone(),
        "--param".into(),
        "_count=3".into(),
    ]);
    let out = common::fhirhose_async(args, s.dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let store = local_store(&s.lake());
    let (rows, _) = resource_rows(&store).await;
    assert!(rows["Observation"] > 3, "several pages: {rows:?}");
    assert_eq!(rows.len(), 1);
    let raw = objects(&store, "raw/sandbox/fetch").await;
    assert_eq!(raw.len(), 1);
    s.sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_and_secrets_from_the_environment() {
    let s = setup("", 1).await;
    // No FHIR URL.
    let out = common::fhirhose_async(vec!["export".into()], s.dir.path()).await;
    assert_eq!(out.status.code(), Some(2));
    // A client secret from a named environment variable; the config file names sources.
    s.sb.register_secret_client("conf", "from-env", "system/*.read");
    let cfg = s.dir.path().join("fhirhose.toml");
    std::fs::write(
        &cfg,
        format!(
            "[sources.one]\nfhir_url = \"{}\"\nclient_id = \"conf\"\nsecret_env = \"E2E_SECRET\"\nlake_prefix = \"sandbox\"\n\n[sources.two]\nfhir_url = \"http://127.0.0.1:9/fhir\"\n",
            s.sb.base_url()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "export",
        "--config",
        cfg.to_str().unwrap(),
        "--source",
        "one",
        "--lake",
        s.lake().to_str().unwrap(),
        "--state",
        s.dir.path().join("state/state.db").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cwd = s.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .current_dir(&cwd)
            .env("FHIRHOSE_LOG_LEVEL", "warn")
            .env("E2E_SECRET", "from-env")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, _, _) = s.lake_counts().await;
    assert_eq!(rows, s.expected());
    // A wrong secret is an authorization failure: exit code 3.
    let mut args = s.args(&[]);
    let k = args.iter().position(|a| a == "--key-file").unwrap();
    args.drain(k..k + 2);
    args.extend(["--secret-env".into(), "E2E_WRONG".into()]);
    let cwd = s.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .current_dir(&cwd)
            .env("E2E_WRONG", "nope")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("nope"));
    s.sb.shutdown().await;
}
