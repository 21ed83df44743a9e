//! The bulk export client against the workspace sandbox EHR with fault injection.
//!
//! Files are "landed" by a small stand-in for the pipeline that reads each input file to
//! the end (through `InputFile::open`, as the pipeline does) and remembers the
//! fingerprints of landed files, like the state store's checkpoints. Time is virtual: the
//! transport runs on a `ManualClock`, so polls and retries never sleep for real.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirhose_ingest::auth::{
    AuthConfig, AuthEventKind, Authorizer, ClientAuthConfig, MemoryAuditSink,
};
use fhirhose_ingest::bulk::{
    ExportLevel, ExportOptions, ExportRequest, Exporter, FileOutcome, JobState, JobStore,
    MemoryJobStore, PollPolicy, Profile, ReadyJob, Since,
};
use fhirhose_ingest::http::{HttpClient, HttpConfig, HttpErrorKind, ManualClock, Secret};
use fhirhose_ingest::search::{SearchOpener, SearchRequest};
use fhirhose_ingest::source::FileKind;
use fhirhose_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use tokio::io::AsyncReadExt;
use url::Url;

struct Env {
    sb: RunningSandbox,
    clock: ManualClock,
    auth: Authorizer,
    audit: Arc<MemoryAuditSink>,
    store: Arc<MemoryJobStore>,
    _dir: tempfile::TempDir,
}

fn http(clock: &ManualClock) -> HttpClient {
    HttpConfig {
        use_system_proxy: false,
        jitter_seed: Some(5),
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap()
}

async fn env_with(cfg: SandboxConfig, scopes: &str) -> Env {
    let sb = Sandbox::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A client secret: virtual time runs ahead of the sandbox's real clock, and a
    // signed assertion dated in the virtual future would be refused.
    sb.register_secret_client("bulk", "s3cret", scopes);
    let clock = ManualClock::starting_now();
    let cfg = AuthConfig::new(
        Url::parse(&sb.base_url()).unwrap(),
        "bulk",
        scopes,
        ClientAuthConfig::ClientSecretBasic {
            secret: Secret::new("s3cret"),
        },
    );
    let audit = Arc::new(MemoryAuditSink::new());
    let auth = Authorizer::build(&cfg, &http(&clock), audit.clone())
        .await
        .unwrap();
    Env {
        sb,
        clock,
        auth,
        audit,
        store: Arc::new(MemoryJobStore::new()),
        _dir: dir,
    }
}

async fn env(faults: &str) -> Env {
    env_with(
        SandboxConfig {
            patients: 4,
            faults: faults.parse().unwrap(),
            export_polls: 1,
            resources_per_file: 50,
            ..SandboxConfig::default()
        },
        "system/*.read",
    )
    .await
}

impl Env {
    fn exporter(&self) -> Exporter {
        Exporter::new(
            self.auth.authorized_client(),
            self.store.clone(),
            Some(self.auth.clone()),
        )
    }

    fn options(&self, request: ExportRequest) -> ExportOptions {
        let mut o = ExportOptions::new(
            "sandbox",
            Url::parse(&self.sb.base_url()).unwrap(),
            request,
            Profile::generic(),
        );
        o.poll = PollPolicy {
            jitter_seed: Some(3),
            ..o.poll
        };
        o
    }

    fn kickoffs(&self) -> usize {
        self.sb
            .request_log()
            .iter()
            .filter(|e| e.path.contains("$export") && e.status == 202)
            .count()
    }
}

/// Reads every file to the end; `landed` plays the state store's `done` checkpoints.
async fn land(
    ready: &ReadyJob,
    landed: &Mutex<HashMap<String, Vec<u8>>>,
) -> (Vec<FileOutcome>, Vec<Vec<u8>>) {
    let mut outcomes = Vec::new();
    let mut bodies = Vec::new();
    for f in &ready.files {
        if let Some(b) = landed.lock().unwrap().get(&f.fingerprint) {
            outcomes.push(FileOutcome::durable(count_lines(b), true));
            bodies.push(b.clone());
            continue;
        }
        let mut buf = Vec::new();
        let res = async {
            let mut r = f.open().await.map_err(|e| e.to_string())?;
            r.read_to_end(&mut buf).await.map_err(|e| e.to_string())
        }
        .await;
        match res {
            Ok(_) => {
                outcomes.push(FileOutcome::durable(count_lines(&buf), false));
                landed
                    .lock()
                    .unwrap()
                    .insert(f.fingerprint.clone(), buf.clone());
            }
            Err(e) => outcomes.push(FileOutcome::failed(e)),
        }
        bodies.push(buf);
    }
    (outcomes, bodies)
}

fn count_lines(b: &[u8]) -> u64 {
    b.split(|c| *c == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64
}

/// Lands the files with faults on, then fetches them again with faults off (before the
/// job is deleted): returns the report, the landed bytes and the clean bytes.
async fn run_and_compare(
    e: &Env,
) -> (fhirhose_ingest::bulk::JobReport, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let opts = e.options(ExportRequest::system());
    let ex = e.exporter();
    let ready = ex.prepare(&opts).await.unwrap();
    let landed = Mutex::default();
    let (outcomes, bodies) = land(&ready, &landed).await;
    let clean = clean_bodies(e, &ready).await;
    let report = ex.complete(&ready, &outcomes, &opts, 0.0).await.unwrap();
    (report, bodies, clean)
}

/// Runs an export to the end; returns the report and the files' bytes.
async fn run(
    e: &Env,
    opts: &ExportOptions,
    landed: &Mutex<HashMap<String, Vec<u8>>>,
) -> (fhirhose_ingest::bulk::JobReport, ReadyJob, Vec<Vec<u8>>) {
    let ex = e.exporter();
    let ready = ex.prepare(opts).await.unwrap();
    let (outcomes, bodies) = land(&ready, landed).await;
    let report = ex.complete(&ready, &outcomes, opts, 0.0).await.unwrap();
    (report, ready, bodies)
}

fn output_lines(report: &fhirhose_ingest::bulk::JobReport) -> BTreeMap<String, usize> {
    report
        .output
        .iter()
        .map(|(k, v)| (k.clone(), v.lines as usize))
        .collect()
}

/// The clean bytes of every file, fetched again with faults off.
async fn clean_bodies(e: &Env, ready: &ReadyJob) -> Vec<Vec<u8>> {
    e.sb.set_faults(Default::default());
    let mut out = Vec::new();
    for f in &ready.files {
        let mut buf = Vec::new();
        f.open().await.unwrap().read_to_end(&mut buf).await.unwrap();
        out.push(buf);
    }
    out
}

#[tokio::test]
async fn full_export_lands_everything_deletes_the_job_and_supports_since_auto() {
    let e = env("").await;
    let landed = Mutex::default();
    let mut req = ExportRequest::system();
    req.since = Some(Since::Auto);
    let opts = e.options(req);
    let (report, ready, _) = run(&e, &opts, &landed).await;
    assert_eq!(report.state, "done");
    assert!(report.status_deleted);
    assert!(report.count_mismatches.is_empty(), "{report:?}");
    assert_eq!(
        output_lines(&report),
        e.sb.resource_counts().into_iter().collect()
    );
    assert_eq!(
        report.since, None,
        "first run of the request exports everything"
    );
    assert!(!report.transaction_time.is_empty());
    let log = e.sb.request_log();
    assert!(log
        .iter()
        .any(|l| l.method == "DELETE" && l.path.contains("bulkstatus")));
    // Names and groups follow the lake convention.
    assert!(ready
        .files
        .iter()
        .all(|f| f.group.as_deref() == Some(&*format!("export/{}", report.job_id))));
    assert!(ready.files.iter().any(|f| f.name == "Patient.001.ndjson"));
    // The job points at the audit event of its token.
    let rec = e.store.get(&report.job_id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Done);
    let grants = e.audit.of_kind(AuthEventKind::Grant);
    assert_eq!(
        rec.auth_event_id.as_deref(),
        Some(&*grants[0].id.to_string())
    );

    // Incremental: touched resources come back, from the recorded transactionTime.
    std::thread::sleep(Duration::from_millis(5));
    e.sb.touch_resources("Observation", 3);
    let (report2, _, _) = run(&e, &opts, &landed).await;
    assert_eq!(report2.since.as_deref(), Some(&*report.transaction_time));
    assert_eq!(report2.output.get("Observation").map(|c| c.lines), Some(3));
    let kick =
        e.sb.request_log()
            .into_iter()
            .rfind(|l| l.path.contains("$export"))
            .unwrap();
    assert!(kick.query.unwrap_or_default().contains("_since="));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn poll_waits_follow_retry_after_seconds_and_log_progress() {
    let e = env_with(
        SandboxConfig {
            patients: 2,
            export_polls: 4,
            poll_retry_after: 7,
            ..SandboxConfig::default()
        },
        "system/*.read",
    )
    .await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    assert_eq!(report.polls, 5);
    assert_eq!(report.waits_by_reason.get("retry-after"), Some(&4));
    assert_eq!(
        e.clock
            .sleeps()
            .iter()
            .filter(|d| **d == Duration::from_secs(7))
            .count(),
        4,
        "{:?}",
        e.clock.sleeps()
    );
    assert_eq!(report.last_progress.as_deref(), Some("80% complete"));
    // No hammering: status requests equal the polls.
    let status_gets =
        e.sb.request_log()
            .iter()
            .filter(|l| l.method == "GET" && l.path.contains("bulkstatus"))
            .count();
    assert_eq!(status_gets, 5);
    e.sb.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_capped_by_the_profile() {
    let e = env_with(
        SandboxConfig {
            patients: 1,
            export_polls: 2,
            faults: "poll-retry-after=7200".parse().unwrap(),
            ..SandboxConfig::default()
        },
        "system/*.read",
    )
    .await;
    let mut opts = e.options(ExportRequest::system());
    opts.poll.retry_after_cap = Duration::from_secs(900);
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &opts, &landed).await;
    assert_eq!(report.state, "done");
    assert!(e.clock.sleeps().contains(&Duration::from_secs(900)));
    assert!(!e
        .clock
        .sleeps()
        .iter()
        .any(|d| *d > Duration::from_secs(900)));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn throttling_while_polling_waits_for_an_http_date_retry_after() {
    let e = env("429=first:1@status,retry-after=date:30").await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    // The date hint (about 30 s away, to a second's precision) was honoured.
    let hinted: Vec<_> = e
        .clock
        .sleeps()
        .into_iter()
        .filter(|d| *d >= Duration::from_secs(25) && *d <= Duration::from_secs(31))
        .collect();
    assert_eq!(hinted.len(), 1, "{:?}", e.clock.sleeps());
    e.sb.shutdown().await;
}

#[tokio::test]
async fn server_errors_while_polling_and_downloading_are_waited_out() {
    let e = env("503=every:2@status+file,429=every:3@file,retry-after=2").await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done", "{report:?}");
    assert_eq!(
        output_lines(&report),
        e.sb.resource_counts().into_iter().collect()
    );
    let faults =
        e.sb.request_log()
            .iter()
            .filter(|l| l.status == 503)
            .count();
    assert!(faults >= 2);
    assert!(e.clock.sleeps().contains(&Duration::from_secs(2)));
    assert!(
        report
            .retries_by_reason
            .get("transport-retried")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_connection_cut_mid_file_resumes_with_range_byte_identical() {
    let e = env("reset=first:3@file").await;
    let (report, bodies, clean) = run_and_compare(&e).await;
    assert_eq!(report.state, "done", "{report:?}");
    assert!(report.retries_by_reason.get("reset").copied().unwrap_or(0) >= 1);
    assert!(
        e.sb.request_log().iter().any(|l| l.status == 206),
        "a ranged resume"
    );
    assert_eq!(bodies, clean);
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_server_that_ignores_range_is_refetched_and_skipped_byte_identical() {
    let e = env("reset=first:2@file,truncate=first:1@file,ignore-range").await;
    let (report, bodies, clean) = run_and_compare(&e).await;
    assert_eq!(report.state, "done", "{report:?}");
    assert!(
        report
            .retries_by_reason
            .get("range-ignored")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(!e.sb.request_log().iter().any(|l| l.status == 206));
    assert_eq!(bodies, clean);
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_truncated_body_is_detected_and_completed() {
    let e = env("truncate=first:2@file").await;
    let (report, bodies, clean) = run_and_compare(&e).await;
    assert_eq!(report.state, "done", "{report:?}");
    assert!(
        report
            .retries_by_reason
            .get("truncated")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(report.count_mismatches.is_empty());
    assert_eq!(bodies, clean);
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_cross_origin_redirect_never_carries_the_token() {
    let e = env("redirect-files").await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done", "{report:?}");
    assert!(report.requires_access_token);
    let log = e.sb.request_log();
    let storage: Vec<_> = log.iter().filter(|l| l.origin == "storage").collect();
    assert!(!storage.is_empty());
    assert!(storage.iter().all(|l| !l.bearer_present && l.status == 200));
    // requiresAccessToken: the FHIR-origin file GET (answered 307) carried it.
    assert!(log
        .iter()
        .filter(|l| l.origin == "fhir" && l.path.starts_with("/files/"))
        .all(|l| l.bearer_present && l.status == 307));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn files_without_required_token_get_none() {
    let e = env_with(
        SandboxConfig {
            patients: 1,
            require_access_token: false,
            ..SandboxConfig::default()
        },
        "system/*.read",
    )
    .await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    assert!(!report.requires_access_token);
    assert!(e
        .sb
        .request_log()
        .iter()
        .filter(|l| l.path.starts_with("/files/"))
        .all(|l| !l.bearer_present));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn token_expiry_mid_export_refreshes_and_continues() {
    let e = env("token-lifetime=1s,tiny-files=20").await;
    let ex = e.exporter();
    let opts = e.options(ExportRequest::system());
    let ready = ex.prepare(&opts).await.unwrap();
    // Real time, not a backoff: let the server-side token lifetime pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let landed = Mutex::default();
    let (outcomes, _) = land(&ready, &landed).await;
    let report = ex.complete(&ready, &outcomes, &opts, 0.0).await.unwrap();
    assert_eq!(report.state, "done", "{report:?}");
    // Expired tokens were replaced (proactively, or after a 401 and one replay); no
    // request failed for it.
    let tokens =
        e.audit.of_kind(AuthEventKind::Grant).len() + e.audit.of_kind(AuthEventKind::Refresh).len();
    assert!(tokens >= 2, "{tokens}");
    assert!(e
        .sb
        .request_log()
        .iter()
        .filter(|l| l.path.starts_with("/files/"))
        .all(|l| l.status == 200 || l.status == 401));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn error_and_deleted_files_are_landed_with_their_kind() {
    let e = env("error-file,deleted").await;
    let landed = Mutex::default();
    let (report, ready, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    assert_eq!(report.error_files, 1);
    assert!(report.deleted_files >= 1);
    let err = ready
        .files
        .iter()
        .find(|f| f.kind == FileKind::Error)
        .unwrap();
    assert!(err.name.starts_with("OperationOutcome.error."));
    let del = ready
        .files
        .iter()
        .find(|f| f.kind == FileKind::Deleted)
        .unwrap();
    assert!(del.name.contains(".deleted."));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_404_on_delete_is_fine() {
    let e = env("delete-404").await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    assert!(report.status_deleted);
    assert!(e
        .sb
        .request_log()
        .iter()
        .any(|l| l.method == "DELETE" && l.status == 404));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn many_tiny_files() {
    let e = env("tiny-files=1").await;
    let landed = Mutex::default();
    let (report, ready, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(report.state, "done");
    let total: usize = e.sb.resource_counts().values().sum();
    assert_eq!(ready.files.len(), total);
    assert_eq!(
        output_lines(&report),
        e.sb.resource_counts().into_iter().collect()
    );
    let fps: HashSet<_> = ready.files.iter().map(|f| f.fingerprint.clone()).collect();
    assert_eq!(fps.len(), total, "fingerprints are unique");
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_restart_reattaches_without_a_second_kickoff() {
    let e = env("").await;
    let opts = e.options(ExportRequest::system());
    // First process: kicks off, gets the manifest, "crashes" before landing anything.
    let first = e.exporter().prepare(&opts).await.unwrap();
    drop(first.job.heartbeat());
    let fps: Vec<_> = first.files.iter().map(|f| f.fingerprint.clone()).collect();
    // Second process: same request.
    let landed = Mutex::default();
    let (report, ready, _) = run(&e, &opts, &landed).await;
    assert!(report.reattached);
    assert_eq!(report.job_id, first.job.id());
    assert_eq!(e.kickoffs(), 1);
    assert_eq!(
        ready
            .files
            .iter()
            .map(|f| f.fingerprint.clone())
            .collect::<Vec<_>>(),
        fps
    );
    assert_eq!(report.state, "done");
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_live_job_refuses_a_second_kickoff_unless_forced() {
    let e = env("").await;
    let opts = e.options(ExportRequest::system());
    let first = e.exporter().prepare(&opts).await.unwrap();
    // Pretend another live process (our parent) owns it.
    let mut rec = first.job.record();
    rec.owner_pid = std::os::unix::process::parent_id();
    e.store.put(&rec).unwrap();
    let err = e.exporter().prepare(&opts).await.unwrap_err();
    assert_eq!(err.kind(), fhirhose_ingest::bulk::BulkErrorKind::JobLive);
    assert_eq!(e.kickoffs(), 1);
    let forced = e
        .exporter()
        .prepare(&opts.clone().force(true))
        .await
        .unwrap();
    assert!(!forced.reattached);
    assert_eq!(e.kickoffs(), 2);
    assert_eq!(
        e.store.get(&rec.job_id).unwrap().unwrap().state,
        JobState::Abandoned
    );
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_file_that_exhausts_retries_makes_the_job_partial_and_resume_fetches_the_rest() {
    let e = env("tiny-files=10").await;
    let opts = e.options(ExportRequest::system());
    let ex = e.exporter();
    let ready = ex.prepare(&opts).await.unwrap();
    // Every download of the second file fails from now on.
    let second = ready.files[1].clone();
    let landed: Mutex<HashMap<String, Vec<u8>>> = Mutex::default();
    let mut outcomes = Vec::new();
    for (i, f) in ready.files.iter().enumerate() {
        if i == 1 {
            outcomes.push(FileOutcome::failed("HTTP 500 after 6 attempts"));
            continue;
        }
        let mut buf = Vec::new();
        f.open().await.unwrap().read_to_end(&mut buf).await.unwrap();
        outcomes.push(FileOutcome::durable(count_lines(&buf), false));
        landed.lock().unwrap().insert(f.fingerprint.clone(), buf);
    }
    let report = ex.complete(&ready, &outcomes, &opts, 0.0).await.unwrap();
    assert_eq!(report.state, "partial");
    assert_eq!(report.files_failed, 1);
    assert!(!report.status_deleted);
    assert!(!e.sb.request_log().iter().any(|l| l.method == "DELETE"));
    e.sb.clear_request_log();

    let (report2, _, _) = run(&e, &opts.clone().resume(true), &landed).await;
    assert!(report2.reattached);
    assert_eq!(report2.state, "done");
    assert_eq!(report2.files_landed, 1);
    assert_eq!(report2.files_skipped as usize, ready.files.len() - 1);
    let file_gets: Vec<_> =
        e.sb.request_log()
            .into_iter()
            .filter(|l| l.path.starts_with("/files/"))
            .collect();
    assert_eq!(file_gets.len(), 1, "only the missing file is fetched");
    assert_eq!(e.kickoffs(), 0);
    let _ = second;
    e.sb.shutdown().await;
}

#[tokio::test]
async fn downloads_give_up_after_max_attempts() {
    let e = env("500=always@file").await;
    let mut opts = e.options(ExportRequest::system());
    opts.profile.download.max_attempts = 2;
    let ex = e.exporter();
    let ready = ex.prepare(&opts).await.unwrap();
    let landed = Mutex::default();
    let (outcomes, _) = land(&ready, &landed).await;
    assert!(outcomes.iter().all(|o| !o.durable));
    let report = ex.complete(&ready, &outcomes, &opts, 0.0).await.unwrap();
    assert_eq!(report.state, "partial");
    assert!(
        report.failures[0].contains("after 2 attempts"),
        "{:?}",
        report.failures
    );
    e.sb.shutdown().await;
}

#[tokio::test]
async fn a_failed_export_is_fatal_and_recorded() {
    let e = env("export-error").await;
    let opts = e.options(ExportRequest::system());
    let err = e.exporter().prepare(&opts).await.unwrap_err();
    assert!(err.to_string().contains("error:exception"), "{err}");
    let jobs = e.store.list(10).unwrap();
    assert_eq!(jobs[0].state, JobState::Failed);
    e.sb.shutdown().await;
}

#[tokio::test]
async fn bulk_v4_server_with_post_kickoff_and_repeated_types() {
    let e = env("bulk-v4,error-file").await;
    let mut profile = Profile::generic();
    profile.kickoff.method = fhirhose_ingest::bulk::KickoffMethod::Post;
    profile.kickoff.type_param = fhirhose_ingest::bulk::TypeParam::Repeated;
    let mut req = ExportRequest::system();
    req.level = ExportLevel::Group(fhirhose_sandbox::GROUP_ALL_PATIENTS.into());
    req.types = vec!["Patient".into(), "Observation".into()];
    let mut opts = e.options(req);
    opts.profile = profile;
    let landed = Mutex::default();
    let (report, ready, _) = run(&e, &opts, &landed).await;
    assert_eq!(report.state, "done");
    assert_eq!(
        report.output.keys().cloned().collect::<Vec<_>>(),
        ["Observation", "Patient"]
    );
    assert!(
        ready.files.iter().any(|f| f.kind == FileKind::Error),
        "outcome read as error"
    );
    assert!(e
        .sb
        .request_log()
        .iter()
        .any(|l| l.method == "POST" && l.path.ends_with("$export") && l.status == 202));
    e.sb.shutdown().await;
}

#[tokio::test]
async fn type_defaults_to_the_grant_and_scope_denial_is_local() {
    let e = env_with(
        SandboxConfig {
            patients: 2,
            ..SandboxConfig::default()
        },
        "system/Patient.read system/Condition.read",
    )
    .await;
    let landed = Mutex::default();
    let (report, _, _) = run(&e, &e.options(ExportRequest::system()), &landed).await;
    assert_eq!(
        report.output.keys().cloned().collect::<Vec<_>>(),
        ["Condition", "Patient"]
    );
    let kick =
        e.sb.request_log()
            .into_iter()
            .find(|l| l.path.contains("$export"))
            .unwrap();
    assert!(kick.query.unwrap_or_default().contains("_type="));
    // Observation is outside the grant: refused before anything is sent.
    e.sb.clear_request_log();
    let mut req = ExportRequest::system();
    req.types = vec!["Observation".into()];
    let err = e.exporter().prepare(&e.options(req)).await.unwrap_err();
    match err {
        fhirhose_ingest::bulk::BulkError::Http(h) => {
            assert_eq!(h.kind(), HttpErrorKind::ScopeDenied)
        }
        other => panic!("{other}"),
    }
    assert!(e.sb.request_log().is_empty());
    e.sb.shutdown().await;
}

#[tokio::test]
async fn search_paging_follows_next_links_and_respects_scopes() {
    let e = env_with(
        SandboxConfig {
            patients: 3,
            page_size: 2,
            ..SandboxConfig::default()
        },
        "system/Patient.read system/Observation.read",
    )
    .await;
    let base = Url::parse(&e.sb.base_url()).unwrap();
    let opener = SearchOpener::new(
        e.auth.authorized_client(),
        &base,
        &SearchRequest::new("Patient"),
    )
    .unwrap();
    let stats = opener.stats();
    let file = opener.input_file("run1");
    assert_eq!(file.group.as_deref(), Some("fetch/run1"));
    let mut buf = Vec::new();
    file.open()
        .await
        .unwrap()
        .read_to_end(&mut buf)
        .await
        .unwrap();
    assert_eq!(count_lines(&buf), 3);
    assert_eq!(stats.pages(), 2);
    for line in buf.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["resourceType"], "Patient");
    }
    // Patient-level: one patient's observations.
    let pid = e.sb.patient_ids()[0].clone();
    let mut req = SearchRequest::new("Observation");
    req.patient = Some(pid.clone());
    let opener = SearchOpener::new(e.auth.authorized_client(), &base, &req).unwrap();
    let mut buf = Vec::new();
    opener
        .input_file("run2")
        .open()
        .await
        .unwrap()
        .read_to_end(&mut buf)
        .await
        .unwrap();
    assert!(count_lines(&buf) > 0);
    for line in buf.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["subject"]["reference"], format!("Patient/{pid}"));
    }
    // Outside the grant: refused locally.
    e.sb.clear_request_log();
    let opener = SearchOpener::new(
        e.auth.authorized_client(),
        &base,
        &SearchRequest::new("Condition"),
    )
    .unwrap();
    let mut buf = Vec::new();
    let res = async {
        let mut r = opener
            .input_file("run3")
            .open()
            .await
            .map_err(|e| e.to_string())?;
        r.read_to_end(&mut buf).await.map_err(|e| e.to_string())
    }
    .await;
    assert!(res.unwrap_err().contains("refused locally"));
    assert!(e.sb.request_log().is_empty());
    e.sb.shutdown().await;
}

/// App Launch (PKCE) login against the sandbox: a patient-context grant with a refresh
/// token.
async fn launch_login(
    sb: &RunningSandbox,
    clock: &ManualClock,
) -> (Authorizer, Arc<MemoryAuditSink>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let scopes = "launch/patient patient/*.read offline_access";
    sb.register_public_client("launch-app", &redirect, scopes);
    let mut cfg = AuthConfig::new(
        Url::parse(&sb.base_url()).unwrap(),
        "launch-app",
        scopes,
        ClientAuthConfig::Public,
    );
    cfg.redirect_port = port;
    let http = http(clock);
    let pending = fhirhose_ingest::auth::begin_login(&http, &cfg)
        .await
        .unwrap();
    let authorize = pending.authorize_url().clone();
    let audit = Arc::new(MemoryAuditSink::new());
    let finish = tokio::spawn(pending.finish(audit.clone()));
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser.get(authorize).send().await.unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(browser.get(location).send().await.unwrap().status(), 200);
    let grant = finish.await.unwrap().unwrap();
    let auth = Authorizer::from_grant(&cfg, &http, audit.clone(), &grant)
        .await
        .unwrap();
    (auth, audit)
}

#[tokio::test]
async fn a_lost_grant_stops_the_job_as_needs_reauthorization_and_keeps_it() {
    // The export takes an hour of (virtual) polling; the token expires meanwhile and the
    // refresh is refused with invalid_grant.
    let sb = Sandbox::start(SandboxConfig {
        patients: 2,
        export_polls: 1,
        poll_retry_after: 3600,
        faults: "invalid-grant-on-refresh".parse().unwrap(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _audit) = launch_login(&sb, &clock).await;
    let store = Arc::new(MemoryJobStore::new());
    let ex = Exporter::new(auth.authorized_client(), store.clone(), Some(auth.clone()));
    let mut req = ExportRequest::system();
    req.level = ExportLevel::Patient;
    let opts = ExportOptions::new(
        "sandbox",
        Url::parse(&sb.base_url()).unwrap(),
        req,
        Profile::generic(),
    );
    let err = ex.prepare(&opts).await.unwrap_err();
    assert!(err.needs_reauthorization(), "{err}");
    let jobs = store.list(10).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::NeedsReauthorization);
    assert!(
        jobs[0].state.is_resumable(),
        "kept for --resume after a new login"
    );
    assert!(!jobs[0].status_url.is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn a_grant_lost_during_downloads_ends_the_job_as_needs_reauthorization() {
    let sb = Sandbox::start(SandboxConfig {
        patients: 2,
        export_polls: 0,
        faults: "invalid-grant-on-refresh".parse().unwrap(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _audit) = launch_login(&sb, &clock).await;
    let store = Arc::new(MemoryJobStore::new());
    let ex = Exporter::new(auth.authorized_client(), store.clone(), Some(auth.clone()));
    let mut req = ExportRequest::system();
    req.level = ExportLevel::Patient;
    let opts = ExportOptions::new(
        "sandbox",
        Url::parse(&sb.base_url()).unwrap(),
        req,
        Profile::generic(),
    );
    let ready = ex.prepare(&opts).await.unwrap();
    clock.advance(Duration::from_secs(24 * 3600));
    let landed = Mutex::default();
    let (outcomes, _) = land(&ready, &landed).await;
    assert!(outcomes.iter().all(|o| !o.durable));
    let report = ex.complete(&ready, &outcomes, &opts, 0.0).await.unwrap();
    assert_eq!(report.state, "needs-reauthorization");
    assert!(!sb.request_log().iter().any(|l| l.method == "DELETE"));
    let rec = store.get(&report.job_id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::NeedsReauthorization);
    sb.shutdown().await;
}
