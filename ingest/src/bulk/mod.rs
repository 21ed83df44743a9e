//! FHIR Bulk Data `$export` client: kick-off, adaptive polling, resumable downloads,
//! incremental syncs and vendor profiles.
//!
//! # Export lifecycle
//!
//! ```text
//!                 ┌───────────── same request already unfinished? ─────────────┐
//!                 │ no                                          yes (not held by │
//!                 ▼                                              a live process) │
//!   kick-off (GET query | POST Parameters, Prefer: respond-async)               │
//!                 │ 202 + Content-Location                                       │
//!                 ▼                                                              │
//!   ┌──────────────────────┐  persisted BEFORE the first poll                   │
//!   │ kicked-off           │◄───────────────────────────────────────────────────┘
//!   └──────────┬───────────┘                                    re-attach
//!              │ GET status: 202 (Retry-After | backoff), 429/5xx (wait)
//!              ▼
//!   ┌──────────────────────┐  fatal OperationOutcome, 4xx, deadline ┌────────┐
//!   │ in-progress          │───────────────────────────────────────►│ failed │
//!   └──────────┬───────────┘                                        └────────┘
//!              │ 200 manifest (+ `link` next partials)
//!              ▼
//!   ┌──────────────────────┐  grant gone (invalid_grant, revoked) ┌───────────────────────┐
//!   │ downloading          │─────────────────────────────────────►│ needs-reauthorization │
//!   └──────────┬───────────┘  (also from kicked-off/in-progress)  └───────────────────────┘
//!              │ every file durable                │ some file exhausted its retries
//!              ▼                                   ▼
//!   DELETE status URL (404 fine)           ┌─────────┐  `--resume`: poll the status URL
//!   record transactionTime                 │ partial │  again (fresh manifest), land only
//!              ▼                           └─────────┘  files not yet `done`
//!   ┌──────────────────────┐
//!   │ done                 │   `--since auto` of the same request starts from its
//!   └──────────────────────┘   transactionTime
//! ```
//!
//! A forced kick-off (`--force`) marks the previous unfinished job `abandoned`.
//!
//! # Guarantees
//!
//! * One kick-off per request: the job (request fingerprint, status URL) is stored before
//!   the first poll, and a restart re-attaches. A job whose owner process still beats its
//!   heartbeat is refused unless forced.
//! * Files are landed through the ingest pipeline; each file's fingerprint is derived from
//!   the status URL and the file URL (without query), so a resumed job skips files whose
//!   checkpoint says `done`. The status URL is deleted only once every file is durable.
//! * The bearer token goes to file URLs only when the manifest says `requiresAccessToken`,
//!   and never across origins (the transport strips it on cross-origin redirects).
//! * Logs carry redacted URLs only; no token, no signed query string, no resource content.
//!
//! Modules: [`profile`] (vendor profiles), [`kickoff`], [`poll`], [`manifest`],
//! [`download`] (Range resume), [`store`] (job records), [`config`] (multi-source TOML).

pub mod config;
pub mod download;
mod error;
pub mod kickoff;
pub mod manifest;
pub mod poll;
pub mod profile;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use url::Url;

pub use download::{DownloadStats, HttpFileOpener};
pub use error::{BulkError, BulkErrorKind};
pub use kickoff::{build_kickoff, ExportLevel, ExportRequest, Since};
pub use manifest::{Manifest, ManifestFile};
pub use poll::{progress_figure, PollPolicy, PollStats, Poller, ProgressObserver};
pub use profile::{KickoffMethod, Profile, TypeParam};
pub use store::{
    JobEvent, JobEvents, JobRecord, JobState, JobStore, MemoryJobStore, SqliteJobStore,
};

use crate::auth::{Authorizer, ExportTypes};
use crate::http::{redact_url, HttpClient, Interaction, Request};
use crate::source::{FileKind, InputFile, Location};

/// What to export and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Source (tenant) name; jobs are keyed by source and request.
    pub source: String,
    /// The FHIR base URL.
    pub base: Url,
    /// The request.
    pub request: ExportRequest,
    /// Vendor profile.
    pub profile: Profile,
    /// Kick off even when an unfinished job of the same request exists.
    pub force: bool,
    /// Require an unfinished job to re-attach to.
    pub resume: bool,
    /// Poll policy (default from the profile).
    pub poll: PollPolicy,
    /// Called on every 202 while the job is queued on the server (progress displays).
    pub on_progress: Option<ProgressObserver>,
}

impl ExportOptions {
    /// Options with the profile's poll policy.
    pub fn new(
        source: impl Into<String>,
        base: Url,
        request: ExportRequest,
        profile: Profile,
    ) -> Self {
        let poll = profile.poll_policy();
        Self {
            source: source.into(),
            base,
            request,
            profile,
            force: false,
            resume: false,
            poll,
            on_progress: None,
        }
    }

    /// Sets `force`.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Sets `resume`.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }
}

/// A job being worked on: its record, kept in the store on every change.
#[derive(Debug, Clone)]
pub struct JobHandle {
    record: Arc<Mutex<JobRecord>>,
    store: Arc<dyn JobStore>,
}

impl JobHandle {
    /// A snapshot of the record.
    pub fn record(&self) -> JobRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The job id.
    pub fn id(&self) -> String {
        self.record().job_id
    }

    /// Changes the record and stores it.
    pub fn update(&self, f: impl FnOnce(&mut JobRecord)) -> Result<(), BulkError> {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
        r.updated_at = store::rfc3339_now();
        r.heartbeat = store::unix_now();
        self.store.put(&r)
    }

    /// Moves to `state`, logging the transition.
    pub fn transition(&self, state: JobState) -> Result<(), BulkError> {
        let from = self.record().state;
        if from != state {
            info!(job = %self.id(), from = from.as_str(), to = state.as_str(), "export job state changed");
        }
        self.update(|r| r.state = state)
    }

    /// Refreshes the heartbeat every [`store::HEARTBEAT_EVERY`] until the returned guard
    /// is dropped.
    pub fn heartbeat(&self) -> HeartbeatGuard {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(store::HEARTBEAT_EVERY).await;
                if let Err(e) = me.update(|_| {}) {
                    warn!(error = %e, "export job heartbeat failed");
                }
            }
        });
        HeartbeatGuard(task)
    }
}

/// Stops a job's heartbeat when dropped.
#[derive(Debug)]
pub struct HeartbeatGuard(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A job whose manifest is ready, with the files to land.
#[derive(Debug)]
pub struct ReadyJob {
    /// The job.
    pub job: JobHandle,
    /// The (merged) manifest.
    pub manifest: Manifest,
    /// One input file per manifest file, in manifest order.
    pub files: Vec<InputFile>,
    /// Polling statistics of this run.
    pub poll: PollStats,
    /// Whether this run re-attached to an existing job.
    pub reattached: bool,
    /// Download counters shared by the files' openers.
    pub downloads: Arc<DownloadStats>,
    /// Seconds from the start of this run to the manifest.
    pub wait_s: f64,
}

/// What became of one manifest file.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FileOutcome {
    /// Landed now or by an earlier run.
    pub durable: bool,
    /// Landed by an earlier run (skipped now).
    pub skipped: bool,
    /// Lines (resources) landed.
    pub lines: u64,
    /// Why it failed.
    pub error: Option<String>,
}

impl FileOutcome {
    /// A durable file.
    pub fn durable(lines: u64, skipped: bool) -> Self {
        Self {
            durable: true,
            skipped,
            lines,
            error: None,
        }
    }

    /// A failed file.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            durable: false,
            skipped: false,
            lines: 0,
            error: Some(error.into()),
        }
    }
}

/// Per-type counts in the job report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TypeCounts {
    /// Files.
    pub files: u64,
    /// Resources the manifest announced.
    pub manifest_count: u64,
    /// Lines landed.
    pub lines: u64,
}

/// The job report, printed and written as JSON.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct JobReport {
    /// Our job id.
    pub job_id: String,
    /// Final state.
    pub state: String,
    /// Source.
    pub source: String,
    /// Redacted status URL.
    pub status_url: String,
    /// Whether this run re-attached to an earlier kick-off.
    pub reattached: bool,
    /// `_since` sent.
    pub since: Option<String>,
    /// The manifest's `transactionTime`.
    pub transaction_time: String,
    /// Whether file downloads carried the token.
    pub requires_access_token: bool,
    /// The audit event of the token that authorized the kick-off.
    pub auth_event_id: Option<String>,
    /// Output files per resource type.
    pub output: BTreeMap<String, TypeCounts>,
    /// `deleted` files.
    pub deleted_files: u64,
    /// `error` files.
    pub error_files: u64,
    /// Files landed by this run.
    pub files_landed: u64,
    /// Files already landed by an earlier run.
    pub files_skipped: u64,
    /// Files that failed (dead-lettered with their reason).
    pub files_failed: u64,
    /// Failed files and why (redacted).
    pub failures: Vec<String>,
    /// Files whose line count differs from the manifest's `count`.
    pub count_mismatches: Vec<String>,
    /// Bytes downloaded (after transfer decoding).
    pub bytes: u64,
    /// Download retries and resumes per reason.
    pub retries_by_reason: BTreeMap<String, u64>,
    /// Status polls.
    pub polls: u64,
    /// Poll waits per reason.
    pub waits_by_reason: BTreeMap<String, u64>,
    /// Seconds spent waiting between polls.
    pub waited_s: f64,
    /// Last `X-Progress`.
    pub last_progress: Option<String>,
    /// Seconds from the start of the run to the manifest.
    pub manifest_wait_s: f64,
    /// Seconds spent landing files.
    pub download_s: f64,
    /// Whether the status URL was deleted (or already gone).
    pub status_deleted: bool,
}

/// A file URL without query and fragment (signed-URL parameters change between polls).
fn url_key(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.into()
}

/// Hex sha256 of the file's identity in this job (status URL + file URL without query).
pub fn file_fingerprint(status_url: &str, file_url: &Url) -> String {
    let mut h = Sha256::new();
    h.update(status_url.as_bytes());
    h.update(b"\n");
    h.update(url_key(file_url).as_bytes());
    hex::encode(h.finalize())
}

fn new_job_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format(&fmt).unwrap_or_default(), &rand[..8])
}

/// Runs exports against one FHIR server.
#[derive(Clone)]
pub struct Exporter {
    http: HttpClient,
    store: Arc<dyn JobStore>,
    auth: Option<Authorizer>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("http", &self.http)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter over an authorized transport (see
    /// [`Authorizer::authorized_client`]). With `auth`, `_type` defaults to what the grant
    /// allows and jobs point at the audit event of the token that authorized them.
    pub fn new(http: HttpClient, store: Arc<dyn JobStore>, auth: Option<Authorizer>) -> Self {
        Self { http, store, auth }
    }

    /// The transport.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The job store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The request with `_type` defaulted from the grant.
    pub fn effective_request(&self, req: &ExportRequest) -> ExportRequest {
        let mut req = req.clone();
        if req.types.is_empty() {
            if let Some(a) = &self.auth {
                if let ExportTypes::Only(types) = a.allowed_export_types() {
                    req.types = types;
                }
            }
        }
        req
    }

    /// Finds or kicks off the job, polls it to completion, and returns the files to land.
    /// On failure the job record says why (`failed`, `needs-reauthorization`).
    pub async fn prepare(&self, opts: &ExportOptions) -> Result<ReadyJob, BulkError> {
        let started = self.http.clock().elapsed();
        let request = self.effective_request(&opts.request);
        let fingerprint = request.fingerprint(&opts.base);
        let existing = self.store.resumable(&opts.source, &fingerprint)?;
        let (job, reattached) = match existing {
            Some(j) if j.held_by_other(store::unix_now()) && !opts.force => {
                return Err(BulkError::JobLive {
                    job_id: j.job_id,
                    pid: j.owner_pid,
                });
            }
            Some(j) if !opts.force => {
                info!(job = %j.job_id, state = j.state.as_str(), status_url = %redact_status(&j.status_url), "re-attaching to export job");
                fhirhose_metrics::catalogue::EXPORT_JOBS_RESUMED.inc(&[&opts.source]);
                let state = j.state.as_str();
                self.events(&j.job_id)
                    .emit("reattach", |e| e.reason = Some(state.to_owned()));
                let h = JobHandle {
                    record: Arc::new(Mutex::new(j)),
                    store: self.store.clone(),
                };
                h.update(|r| {
                    r.owner_pid = std::process::id();
                    r.error = None;
                })?;
                (h, true)
            }
            other => {
                if opts.resume {
                    return Err(BulkError::Request(
                        "there is no unfinished export of this request to resume".into(),
                    ));
                }
                if let Some(mut old) = other {
                    warn!(job = %old.job_id, "forced kick-off; abandoning the unfinished job");
                    old.state = JobState::Abandoned;
                    old.updated_at = store::rfc3339_now();
                    self.store.put(&old)?;
                }
                (self.kickoff(opts, &request, &fingerprint).await?, false)
            }
        };
        let _beat = job.heartbeat();
        let queued = matches!(
            job.record().state,
            JobState::KickedOff | JobState::InProgress
        );
        let result = self.poll(opts, &job).await;
        let (manifest, poll) = match result {
            Ok(m) => m,
            Err(e) => {
                self.fail(&job, &e);
                return Err(e);
            }
        };
        let files = manifest.files.len();
        self.events(&job.id())
            .emit("manifest", |e| e.detail = Some(format!("{files} files")));
        if queued {
            // Kick-off to manifest, for jobs this run watched on the server.
            if let Some(age) = job_age(&job.record()) {
                fhirhose_metrics::catalogue::EXPORT_SERVER_SECONDS
                    .observe(&[&opts.source], age.as_secs_f64());
            }
        }
        let downloads = Arc::new(DownloadStats::default());
        let files = self.input_files(&job.record(), &manifest, opts, &downloads);
        job.update(|r| {
            r.transaction_time = Some(manifest.transaction_time.clone());
            r.waiting_for = Some("downloads".into());
        })?;
        job.transition(JobState::Downloading)?;
        let wait_s = self
            .http
            .clock()
            .elapsed()
            .saturating_sub(started)
            .as_secs_f64();
        Ok(ReadyJob {
            job,
            manifest,
            files,
            poll,
            reattached,
            downloads,
            wait_s,
        })
    }

    fn fail(&self, job: &JobHandle, e: &BulkError) {
        let state = if e.needs_reauthorization() {
            JobState::NeedsReauthorization
        } else if matches!(e.kind(), BulkErrorKind::Transport | BulkErrorKind::Store) {
            // Worth re-attaching later: the server job may still be fine.
            job.record().state
        } else {
            JobState::Failed
        };
        let msg = e.to_string();
        if let Err(se) = job.update(|r| {
            r.state = state;
            r.error = Some(msg);
            r.waiting_for = None;
        }) {
            warn!(error = %se, "cannot record the export job failure");
        }
        warn!(job = %job.id(), state = state.as_str(), error = %e, "export job stopped");
        let rec = job.record();
        self.events(&rec.job_id).emit("failed", |ev| {
            ev.reason = Some(state.as_str().to_owned());
            ev.status = match e {
                BulkError::ServerFailed { status, .. } => Some(*status),
                BulkError::Http(h) => h.status(),
                _ => None,
            };
        });
        if !state.is_resumable() || state == JobState::NeedsReauthorization {
            ended(&rec, state);
        }
    }

    /// The timeline recorder of a job in this exporter's store.
    fn events(&self, job_id: &str) -> JobEvents {
        JobEvents::new(self.store.clone(), job_id)
    }

    async fn kickoff(
        &self,
        opts: &ExportOptions,
        request: &ExportRequest,
        fingerprint: &str,
    ) -> Result<JobHandle, BulkError> {
        let since = match &request.since {
            None => None,
            Some(Since::At(s)) => Some(s.clone()),
            Some(Since::Auto) => {
                let t = self
                    .store
                    .last_transaction_time(&opts.source, fingerprint)?;
                match &t {
                    Some(t) => {
                        info!(since = %t, "incremental export from the last successful transactionTime")
                    }
                    None => {
                        info!("no earlier successful export of this request; exporting everything")
                    }
                }
                t
            }
        };
        let req = build_kickoff(&opts.base, request, since.as_deref(), &opts.profile.kickoff)?;
        let kick_url = req.url().clone();
        let resp = self.http.send(req).await?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| kick_url.join(l).ok());
        let request_id = resp.request_id().to_owned();
        drop(resp);
        let Some(status_url) = location.filter(|_| status == StatusCode::ACCEPTED) else {
            return Err(BulkError::NoStatusUrl {
                url: redact_url(&kick_url),
                status: status.as_u16(),
            });
        };
        let auth_event_id = match &self.auth {
            Some(a) => a.token().await.ok().map(|t| t.event_id.to_string()),
            None => None,
        };
        let now = store::rfc3339_now();
        let rec = JobRecord {
            job_id: new_job_id(),
            source: opts.source.clone(),
            fingerprint: fingerprint.to_owned(),
            request: request.to_json(),
            status_url: status_url.to_string(),
            state: JobState::KickedOff,
            since,
            transaction_time: None,
            auth_event_id,
            progress: None,
            waiting_for: Some("first status poll".into()),
            owner_pid: std::process::id(),
            heartbeat: store::unix_now(),
            created_at: now.clone(),
            updated_at: now,
            report: None,
            error: None,
        };
        // Persisted before the first poll: a crash from here on re-attaches.
        self.store.put(&rec)?;
        fhirhose_metrics::catalogue::EXPORT_KICKOFFS.inc(&[&opts.source]);
        self.events(&rec.job_id).emit("kickoff", |e| {
            e.status = Some(status.as_u16());
            e.detail =
                (!request.types.is_empty()).then(|| format!("{} types", request.types.len()));
        });
        info!(job = %rec.job_id, request_id = %request_id, status_url = %redact_url(&status_url), "export kicked off");
        Ok(JobHandle {
            record: Arc::new(Mutex::new(rec)),
            store: self.store.clone(),
        })
    }

    async fn poll(
        &self,
        opts: &ExportOptions,
        job: &JobHandle,
    ) -> Result<(Manifest, PollStats), BulkError> {
        let rec = job.record();
        let status_url = Url::parse(&rec.status_url)
            .map_err(|e| BulkError::Store(format!("stored status URL is invalid: {e}")))?;
        let age = time::OffsetDateTime::parse(
            &rec.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .map(|c| (time::OffsetDateTime::now_utc() - c).unsigned_abs())
        .unwrap_or_default();
        let deadline = opts.poll.deadline.saturating_sub(age);
        if rec.state == JobState::KickedOff {
            job.transition(JobState::InProgress)?;
        }
        let hook_job = job.clone();
        let observer = opts.on_progress.clone();
        let poller = Poller::new(self.http.clone(), opts.poll.clone())
            .on_progress(Arc::new(move |progress: Option<&str>, wait: Duration| {
                if let Some(o) = &observer {
                    (o.0)(progress, wait);
                }
                let progress = progress.map(str::to_owned);
                let _ = hook_job.update(|r| {
                    r.progress = progress;
                    r.waiting_for = Some(format!("status poll in {:.0}s", wait.as_secs_f64()));
                });
            }))
            .observed(&opts.source, Some(self.events(&rec.job_id)));
        poller
            .wait_for_manifest(&status_url, &rec.job_id, deadline)
            .await
    }

    /// One input file per manifest file (see the module docs for naming and fingerprints).
    pub fn input_files(
        &self,
        job: &JobRecord,
        manifest: &Manifest,
        opts: &ExportOptions,
        downloads: &Arc<DownloadStats>,
    ) -> Vec<InputFile> {
        let width = opts.profile.files.index_width;
        let token = manifest.token_policy();
        let kind_key = |k: FileKind| match k {
            FileKind::Resources => (0u8, ""),
            FileKind::Deleted => (1, ".deleted"),
            FileKind::Error => (2, ".error"),
        };
        // A file's index within its kind and type follows the order of the URLs (without
        // query), not the manifest's order, so a resumed job's fresh manifest names every
        // file as before even if the server lists them differently.
        let mut by_group: BTreeMap<(u8, String), Vec<String>> = BTreeMap::new();
        for f in &manifest.files {
            by_group
                .entry((kind_key(f.kind).0, f.resource_type.clone()))
                .or_default()
                .push(url_key(&f.url));
        }
        for v in by_group.values_mut() {
            // Shorter first, so `2.ndjson` comes before `10.ndjson`.
            v.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        }
        manifest
            .files
            .iter()
            .map(|f| {
                let (k, infix) = kind_key(f.kind);
                let key = url_key(&f.url);
                let n = by_group
                    .get(&(k, f.resource_type.clone()))
                    .and_then(|v| v.iter().position(|x| *x == key))
                    .unwrap_or(0)
                    + 1;
                let ty = sanitize_type(&f.resource_type);
                let name = format!("{ty}{infix}.{n:0width$}.ndjson");
                let opener = HttpFileOpener::new(
                    self.http.clone(),
                    f.url.clone(),
                    Some(f.resource_type.clone()),
                    token,
                    opts.profile.download.max_attempts,
                    downloads.clone(),
                )
                .observed(&opts.source, &name, Some(self.events(&job.job_id)));
                InputFile {
                    location: Location::Stream(Arc::new(opener)),
                    name,
                    size: 0,
                    gzip: false,
                    fingerprint: file_fingerprint(&job.status_url, &f.url),
                    kind: f.kind,
                    group: Some(format!("export/{}", job.job_id)),
                }
            })
            .collect()
    }

    /// Completes a job after its files went through the pipeline: DELETE the status URL
    /// when every file is durable, record the outcome, and build the report.
    pub async fn complete(
        &self,
        ready: &ReadyJob,
        outcomes: &[FileOutcome],
        opts: &ExportOptions,
        download_s: f64,
    ) -> Result<JobReport, BulkError> {
        let rec = ready.job.record();
        let m = &ready.manifest;
        let mut report = JobReport {
            job_id: rec.job_id.clone(),
            source: rec.source.clone(),
            status_url: redact_status(&rec.status_url),
            reattached: ready.reattached,
            since: rec.since.clone(),
            transaction_time: m.transaction_time.clone(),
            requires_access_token: m.requires_access_token,
            auth_event_id: rec.auth_event_id.clone(),
            bytes: ready.downloads.bytes(),
            retries_by_reason: ready.downloads.retries(),
            polls: ready.poll.polls,
            waits_by_reason: ready.poll.waits_by_reason.clone(),
            waited_s: ready.poll.waited_s,
            last_progress: ready.poll.last_progress.clone(),
            manifest_wait_s: ready.wait_s,
            download_s,
            ..JobReport::default()
        };
        for (i, f) in m.files.iter().enumerate() {
            let o = outcomes
                .get(i)
                .cloned()
                .unwrap_or_else(|| FileOutcome::failed("not run"));
            match f.kind {
                FileKind::Resources => {
                    let t = report.output.entry(f.resource_type.clone()).or_default();
                    t.files += 1;
                    t.manifest_count += f.count.unwrap_or(0);
                    t.lines += o.lines;
                }
                FileKind::Deleted => report.deleted_files += 1,
                FileKind::Error => report.error_files += 1,
            }
            let name = ready
                .files
                .get(i)
                .map(|x| x.name.clone())
                .unwrap_or_default();
            if o.durable {
                if o.skipped {
                    report.files_skipped += 1;
                } else {
                    report.files_landed += 1;
                }
                if let Some(c) = f.count {
                    if c != o.lines && f.kind == FileKind::Resources {
                        warn!(job = %rec.job_id, file = %name, manifest_count = c, lines = o.lines, "line count differs from the manifest count");
                        report
                            .count_mismatches
                            .push(format!("{name}: manifest count {c}, {} lines", o.lines));
                    }
                }
            } else {
                report.files_failed += 1;
                report.failures.push(format!(
                    "{name}: {}",
                    o.error.as_deref().unwrap_or("unknown error")
                ));
            }
        }
        let all_durable = report.files_failed == 0;
        let state = if all_durable {
            if opts.profile.delete.on_complete {
                report.status_deleted = self.delete_status(&rec, opts).await;
            }
            JobState::Done
        } else if ready.downloads.needs_reauthorization() {
            JobState::NeedsReauthorization
        } else {
            JobState::Partial
        };
        report.state = state.as_str().to_owned();
        let (landed, failed) = (report.files_landed, report.files_failed);
        self.events(&rec.job_id).emit("complete", |e| {
            e.reason = Some(state.as_str().to_owned());
            e.detail = Some(format!("{landed} files landed, {failed} failed"));
        });
        ended(&rec, state);
        let json = serde_json::to_string(&report).unwrap_or_default();
        ready.job.update(|r| {
            r.report = Some(json);
            r.waiting_for = match state {
                JobState::Partial => Some("`fhirhose export --resume` for the failed files".into()),
                JobState::NeedsReauthorization => {
                    Some("`fhirhose auth login`, then --resume".into())
                }
                _ => None,
            };
            r.error = report.failures.first().cloned();
        })?;
        ready.job.transition(state)?;
        Ok(report)
    }

    async fn delete_status(&self, rec: &JobRecord, opts: &ExportOptions) -> bool {
        let Ok(url) = Url::parse(&rec.status_url) else {
            return false;
        };
        let req = Request::new(Method::DELETE, url.clone()).interaction(Interaction::Other);
        match self.http.send(req).await {
            Ok(resp) => {
                info!(job = %rec.job_id, status = resp.status().as_u16(), "export job deleted on the server");
                true
            }
            Err(e) if e.status() == Some(404) && opts.profile.delete.not_found_ok => {
                info!(job = %rec.job_id, "export job already gone on the server (404)");
                true
            }
            Err(e) => {
                warn!(job = %rec.job_id, error = %e, url = %redact_url(&url), "DELETE of the export status URL failed; files are landed");
                false
            }
        }
    }
}

/// Time since the job's kick-off (wall clock; jobs outlive processes).
fn job_age(rec: &JobRecord) -> Option<Duration> {
    let created = time::OffsetDateTime::parse(
        &rec.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((time::OffsetDateTime::now_utc() - created).unsigned_abs())
}

/// Counts a job that ended in `state`, with its kick-off-to-end duration.
fn ended(rec: &JobRecord, state: JobState) {
    use fhirhose_metrics::catalogue::{EXPORT_DURATION_SECONDS, EXPORT_JOBS};
    EXPORT_JOBS.inc(&[&rec.source, state.as_str()]);
    if let Some(age) = job_age(rec) {
        EXPORT_DURATION_SECONDS.observe(&[&rec.source, state.as_str()], age.as_secs_f64());
    }
}

/// A resource type as a file-name segment: ASCII alphanumerics only.
fn sanitize_type(t: &str) -> String {
    let s: String = t.chars().filter(char::is_ascii_alphanumeric).collect();
    if s.is_empty() {
        "Unknown".into()
    } else {
        s
    }
}

fn redact_status(s: &str) -> String {
    Url::parse(s).map(|u| redact_url(&u)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fingerprints_ignore_signed_queries() {
        let a = Url::parse("https://s.example/f/1.ndjson?sig=abc&expires=1").unwrap();
        let b = Url::parse("https://s.example/f/1.ndjson?sig=def&expires=2").unwrap();
        let c = Url::parse("https://s.example/f/2.ndjson").unwrap();
        assert_eq!(file_fingerprint("s1", &a), file_fingerprint("s1", &b));
        assert_ne!(file_fingerprint("s1", &a), file_fingerprint("s1", &c));
        assert_ne!(file_fingerprint("s1", &a), file_fingerprint("s2", &a));
        assert_eq!(file_fingerprint("s1", &a).len(), 64);
    }

    #[test]
    fn file_names_do_not_depend_on_manifest_order() {
        let store = Arc::new(MemoryJobStore::new());
        let http = crate::http::HttpConfig::default().build().unwrap();
        let ex = Exporter::new(http, store.clone(), None);
        let rec = job(&store).record();
        let opts = ExportOptions::new(
            "s",
            Url::parse("https://ehr.example/fhir/").unwrap(),
            ExportRequest::system(),
            Profile::generic(),
        );
        let status = Url::parse(&rec.status_url).unwrap();
        let files = [
            r#"{"type":"Patient","url":"https://f.example/2.ndjson?sig=a"}"#,
            r#"{"type":"Patient","url":"https://f.example/10.ndjson?sig=b"}"#,
            r#"{"type":"Patient","url":"https://f.example/1.ndjson"}"#,
            r#"{"type":"Observation","url":"https://f.example/3.ndjson"}"#,
        ];
        let names = |order: &[usize]| {
            let body = format!(
                r#"{{"transactionTime":"t","output":[{}],"error":[{{"url":"https://f.example/e.ndjson"}}]}}"#,
                order
                    .iter()
                    .map(|i| files[*i])
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let m = Manifest::parse(body.as_bytes(), &status).unwrap();
            let stats = Arc::new(DownloadStats::default());
            let mut v: Vec<(String, String)> = ex
                .input_files(&rec, &m, &opts, &stats)
                .into_iter()
                .map(|f| (f.fingerprint, f.name))
                .collect();
            v.sort();
            v
        };
        let a = names(&[0, 1, 2, 3]);
        assert_eq!(a, names(&[3, 2, 1, 0]));
        let mut n: Vec<_> = a.iter().map(|(_, n)| n.as_str()).collect();
        n.sort_unstable();
        assert_eq!(
            n,
            [
                "Observation.001.ndjson",
                "OperationOutcome.error.001.ndjson",
                "Patient.001.ndjson",
                "Patient.002.ndjson",
                "Patient.003.ndjson"
            ]
        );
    }

    fn job(store: &Arc<MemoryJobStore>) -> JobHandle {
        let rec = JobRecord {
            job_id: "j".into(),
            source: "s".into(),
            fingerprint: "f".into(),
            request: "{}".into(),
            status_url: "https://ehr.example/status/1".into(),
            state: JobState::InProgress,
            since: None,
            transaction_time: None,
            auth_event_id: None,
            progress: None,
            waiting_for: None,
            owner_pid: std::process::id(),
            heartbeat: 0,
            created_at: store::rfc3339_now(),
            updated_at: String::new(),
            report: None,
            error: None,
        };
        store.put(&rec).unwrap();
        JobHandle {
            record: Arc::new(Mutex::new(rec)),
            store: store.clone(),
        }
    }

    #[test]
    fn failures_map_to_job_states() {
        let store = Arc::new(MemoryJobStore::new());
        let http = crate::http::HttpConfig::default().build().unwrap();
        let ex = Exporter::new(http, store.clone(), None);
        let j = job(&store);
        let reauth = BulkError::Http(crate::http::HttpError::Auth {
            url: "u".into(),
            source: Box::new(crate::auth::AuthError::NeedsReauthorization {
                reason: "invalid_grant".into(),
            }),
        });
        assert!(reauth.needs_reauthorization());
        ex.fail(&j, &reauth);
        let rec = store.get("j").unwrap().unwrap();
        assert_eq!(rec.state, JobState::NeedsReauthorization);
        assert!(
            rec.state.is_resumable(),
            "checkpoints kept, resumable after login"
        );
        assert!(rec.error.is_some());

        let j = job(&store);
        ex.fail(
            &j,
            &BulkError::Deadline {
                job_id: "j".into(),
                days: 1.0,
            },
        );
        assert_eq!(store.get("j").unwrap().unwrap().state, JobState::Failed);
    }
}
