//! Export job records: a narrow [`JobStore`] trait, SQLite (tables `export_jobs` in the
//! state database, opened through our own connection) and in-memory implementations.
//!
//! A job record is written *before* the first status poll, so a process that dies at any
//! point after the kick-off finds the status URL again and re-attaches instead of kicking
//! off a second export. The owner pid and a heartbeat tell a crashed job (re-attach) from
//! one another process is working on (refuse unless forced).
//!
//! Status URLs are stored as given (they identify the job on the server); file URLs,
//! which may be signed, are never stored: a resumed job polls its status URL again for a
//! fresh manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::error::BulkError;

/// Where a job is in its life (see the state machine in [`super`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum JobState {
    /// Kick-off accepted, status URL known, not polled yet.
    KickedOff,
    /// Polling.
    InProgress,
    /// Manifest received; files are being landed.
    Downloading,
    /// Every file durable, status URL deleted, `transactionTime` recorded.
    Done,
    /// Some files failed; `--resume` fetches the rest.
    Partial,
    /// The server failed the job, or the deadline passed.
    Failed,
    /// The grant is gone; checkpoints kept, resume after `fhirhose auth login`.
    NeedsReauthorization,
    /// Replaced by a forced kick-off.
    Abandoned,
}

impl JobState {
    /// Stable text form (database and reports).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KickedOff => "kicked-off",
            Self::InProgress => "in-progress",
            Self::Downloading => "downloading",
            Self::Done => "done",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::NeedsReauthorization => "needs-reauthorization",
            Self::Abandoned => "abandoned",
        }
    }

    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "kicked-off" => Self::KickedOff,
            "in-progress" => Self::InProgress,
            "downloading" => Self::Downloading,
            "done" => Self::Done,
            "partial" => Self::Partial,
            "failed" => Self::Failed,
            "needs-reauthorization" => Self::NeedsReauthorization,
            "abandoned" => Self::Abandoned,
            _ => return None,
        })
    }

    /// A job in this state can be re-attached to (the server job may still exist).
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            Self::KickedOff
                | Self::InProgress
                | Self::Downloading
                | Self::Partial
                | Self::NeedsReauthorization
        )
    }
}

/// One export job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// Our id (a sortable timestamp + random suffix).
    pub job_id: String,
    /// Source name (tenant).
    pub source: String,
    /// [`super::ExportRequest::fingerprint`].
    pub fingerprint: String,
    /// The request as JSON (parameters only).
    pub request: String,
    /// The server's status URL.
    pub status_url: String,
    /// State.
    pub state: JobState,
    /// The `_since` sent, if any.
    pub since: Option<String>,
    /// The manifest's `transactionTime`, once known.
    pub transaction_time: Option<String>,
    /// The audit event of the token that authorized the kick-off.
    pub auth_event_id: Option<String>,
    /// Last `X-Progress`.
    pub progress: Option<String>,
    /// What the job waits for (`poll in 30s`, `downloads`...).
    pub waiting_for: Option<String>,
    /// Owner process.
    pub owner_pid: u32,
    /// Unix seconds of the owner's last heartbeat.
    pub heartbeat: i64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 last update.
    pub updated_at: String,
    /// The job report (JSON), when finished.
    pub report: Option<String>,
    /// Last error, one line.
    pub error: Option<String>,
}

/// One timestamped step of a job, for the report's timeline: a kick-off, a status poll
/// (with the wait after it), a download's start and end, a retry. No URLs, no content:
/// file names are the lake names (`Patient.001.ndjson`), reasons are classes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `kickoff`, `reattach`, `poll`, `manifest`, `download-start`, `download-end`,
    /// `retry`, `complete`, `failed`.
    pub kind: String,
    /// The file (lake name), for download and retry events.
    pub file: Option<String>,
    /// HTTP status, when one was received.
    pub status: Option<u16>,
    /// Why: the wait reason of a poll, a retry's reason, a download's outcome.
    pub reason: Option<String>,
    /// How long: the wait after a poll, a retry's wait.
    pub duration_ms: Option<u64>,
    /// Bytes, for download ends.
    pub bytes: Option<u64>,
    /// A short, PHI-free detail (`X-Progress` percentage, a count).
    pub detail: Option<String>,
}

impl JobEvent {
    /// An event of `kind` for `job_id`, stamped now.
    pub fn now(job_id: &str, kind: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            at_ms: unix_ms_now(),
            kind: kind.to_owned(),
            ..Self::default()
        }
    }
}

/// Unix milliseconds now.
pub(crate) fn unix_ms_now() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Records a job's timeline events into its store. Best effort: a failed write is logged
/// at debug and never fails the job (the timeline is for people, the checkpoint is not).
#[derive(Clone)]
pub struct JobEvents {
    store: std::sync::Arc<dyn JobStore>,
    job_id: String,
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents")
            .field("job_id", &self.job_id)
            .finish_non_exhaustive()
    }
}

impl JobEvents {
    /// A recorder for `job_id`.
    pub fn new(store: std::sync::Arc<dyn JobStore>, job_id: impl Into<String>) -> Self {
        Self {
            store,
            job_id: job_id.into(),
        }
    }

    /// Records an event of `kind`, filled in by `f`.
    pub fn emit(&self, kind: &str, f: impl FnOnce(&mut JobEvent)) {
        let mut e = JobEvent::now(&self.job_id, kind);
        f(&mut e);
        if let Err(err) = self.store.add_event(&e) {
            tracing::debug!(job = %self.job_id, kind, error = %err, "cannot record a job event");
        }
    }
}

/// Persistence of export jobs.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces a job.
    fn put(&self, job: &JobRecord) -> Result<(), BulkError>;
    /// A job by id.
    fn get(&self, job_id: &str) -> Result<Option<JobRecord>, BulkError>;
    /// The newest resumable job of this source and request.
    fn resumable(&self, source: &str, fingerprint: &str) -> Result<Option<JobRecord>, BulkError>;
    /// The newest `done` job's `transactionTime` for this source and request.
    fn last_transaction_time(
        &self,
        source: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, BulkError>;
    /// The newest jobs first.
    fn list(&self, limit: usize) -> Result<Vec<JobRecord>, BulkError>;
    /// Appends a timeline event (stores without a timeline ignore it).
    fn add_event(&self, _event: &JobEvent) -> Result<(), BulkError> {
        Ok(())
    }
    /// A job's timeline events, oldest first.
    fn events(&self, _job_id: &str) -> Result<Vec<JobEvent>, BulkError> {
        Ok(Vec::new())
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 now.
pub(crate) fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A heartbeat older than this means the owner is gone. Owners beat every
/// [`HEARTBEAT_EVERY`]; three missed beats are a crash, not a slow disk.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(45);
/// How often a running export refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

impl JobRecord {
    /// Whether another live process holds this job: not us, a fresh heartbeat, and (on
    /// Linux) the owner process still exists.
    pub fn held_by_other(&self, now_unix: i64) -> bool {
        self.owner_pid != std::process::id()
            && process_alive(self.owner_pid)
            && self.state.is_resumable()
            && self.state != JobState::Partial
            && self.state != JobState::NeedsReauthorization
            && now_unix - self.heartbeat < HEARTBEAT_STALE.as_secs() as i64
    }
}

/// Whether a process with this id exists (a crashed owner's job may be re-attached at
/// once instead of after its heartbeat goes stale). Without `/proc`, assume it does.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// SQLite job store (the state database file, our own tables).
#[derive(Debug)]
pub struct SqliteJobStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS export_jobs (
    job_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request TEXT NOT NULL,
    status_url TEXT NOT NULL,
    state TEXT NOT NULL,
    since TEXT,
    transaction_time TEXT,
    auth_event_id TEXT,
    progress TEXT,
    waiting_for TEXT,
    owner_pid INTEGER NOT NULL,
    heartbeat INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    report TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS export_jobs_by_request ON export_jobs (source, fingerprint, created_at);
CREATE TABLE IF NOT EXISTS export_job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    file TEXT,
    status INTEGER,
    reason TEXT,
    duration_ms INTEGER,
    bytes INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS export_job_events_by_job ON export_job_events (job_id, at_ms);
";

const COLUMNS: &str = "job_id, source, fingerprint, request, status_url, state, since, transaction_time, \
     auth_event_id, progress, waiting_for, owner_pid, heartbeat, created_at, updated_at, report, error";

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = r.get(5)?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        source: r.get(1)?,
        fingerprint: r.get(2)?,
        request: r.get(3)?,
        status_url: r.get(4)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        since: r.get(6)?,
        transaction_time: r.get(7)?,
        auth_event_id: r.get(8)?,
        progress: r.get(9)?,
        waiting_for: r.get(10)?,
        owner_pid: r.get(11)?,
        heartbeat: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
        report: r.get(15)?,
        error: r.get(16)?,
    })
}

impl SqliteJobStore {
    /// Opens (and creates) the tables in the database at `path`.
    pub fn open(path: &Path) -> Result<Self, BulkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| BulkError::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, BulkError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, BulkError> {
        // Other connections (the pipeline's state store) share the file: WAL lets them
        // read while we write, and busy_timeout waits out their short write locks.
        conn.busy_timeout(Duration::from_secs(10))?;
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobStore for SqliteJobStore {
    fn put(&self, j: &JobRecord) -> Result<(), BulkError> {
        self.conn().execute(
            &format!("INSERT OR REPLACE INTO export_jobs ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
            params![
                j.job_id,
                j.source,
                j.fingerprint,
                j.request,
                j.status_url,
                j.state.as_str(),
                j.since,
                j.transaction_time,
                j.auth_event_id,
                j.progress,
                j.waiting_for,
                j.owner_pid,
                j.heartbeat,
                j.created_at,
                j.updated_at,
                j.report,
                j.error
            ],
        )?;
        Ok(())
    }

    fn get(&self, job_id: &str) -> Result<Option<JobRecord>, BulkError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM export_jobs WHERE job_id = ?1"),
                [job_id],
                row_to_job,
            )
            .optional()?)
    }

    fn resumable(&self, source: &str, fingerprint: &str) -> Result<Option<JobRecord>, BulkError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM export_jobs WHERE source = ?1 AND fingerprint = ?2 \
             ORDER BY created_at DESC, job_id DESC"
        ))?;
        let rows = st.query_map([source, fingerprint], row_to_job)?;
        for r in rows {
            let r = r?;
            if r.state.is_resumable() {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn last_transaction_time(
        &self,
        source: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, BulkError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT transaction_time FROM export_jobs WHERE source = ?1 AND fingerprint = ?2 \
                 AND state = 'done' AND transaction_time IS NOT NULL \
                 ORDER BY transaction_time DESC LIMIT 1",
                [source, fingerprint],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn list(&self, limit: usize) -> Result<Vec<JobRecord>, BulkError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM export_jobs ORDER BY created_at DESC, job_id DESC LIMIT ?1"
        ))?;
        let rows = st.query_map([limit as i64], row_to_job)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn add_event(&self, e: &JobEvent) -> Result<(), BulkError> {
        self.conn().execute(
            "INSERT INTO export_job_events (job_id, at_ms, kind, file, status, reason, duration_ms, bytes, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                e.job_id,
                e.at_ms,
                e.kind,
                e.file,
                e.status,
                e.reason,
                e.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
                e.bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                e.detail
            ],
        )?;
        Ok(())
    }

    fn events(&self, job_id: &str) -> Result<Vec<JobEvent>, BulkError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT job_id, at_ms, kind, file, status, reason, duration_ms, bytes, detail \
             FROM export_job_events WHERE job_id = ?1 ORDER BY at_ms, seq",
        )?;
        let rows = st.query_map([job_id], |r| {
            Ok(JobEvent {
                job_id: r.get(0)?,
                at_ms: r.get(1)?,
                kind: r.get(2)?,
                file: r.get(3)?,
                status: r.get(4)?,
                reason: r.get(5)?,
                duration_ms: r.get::<_, Option<i64>>(6)?.map(|d| d.max(0) as u64),
                bytes: r.get::<_, Option<i64>>(7)?.map(|b| b.max(0) as u64),
                detail: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// In-memory job store (tests).
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    jobs: Mutex<BTreeMap<String, JobRecord>>,
    events: Mutex<Vec<JobEvent>>,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobStore for MemoryJobStore {
    fn put(&self, job: &JobRecord) -> Result<(), BulkError> {
        self.jobs().insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    fn get(&self, job_id: &str) -> Result<Option<JobRecord>, BulkError> {
        Ok(self.jobs().get(job_id).cloned())
    }

    fn resumable(&self, source: &str, fingerprint: &str) -> Result<Option<JobRecord>, BulkError> {
        Ok(self
            .jobs()
            .values()
            .filter(|j| j.source == source && j.fingerprint == fingerprint)
            .filter(|j| j.state.is_resumable())
            .max_by(|a, b| (&a.created_at, &a.job_id).cmp(&(&b.created_at, &b.job_id)))
            .cloned())
    }

    fn last_transaction_time(
        &self,
        source: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, BulkError> {
        Ok(self
            .jobs()
            .values()
            .filter(|j| j.source == source && j.fingerprint == fingerprint)
            .filter(|j| j.state == JobState::Done)
            .filter_map(|j| j.transaction_time.clone())
            .max())
    }

    fn list(&self, limit: usize) -> Result<Vec<JobRecord>, BulkError> {
        let mut v: Vec<_> = self.jobs().values().cloned().collect();
        v.sort_by(|a, b| (&b.created_at, &b.job_id).cmp(&(&a.created_at, &a.job_id)));
        v.truncate(limit);
        Ok(v)
    }

    fn add_event(&self, e: &JobEvent) -> Result<(), BulkError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e.clone());
        Ok(())
    }

    fn events(&self, job_id: &str) -> Result<Vec<JobEvent>, BulkError> {
        let mut v: Vec<JobEvent> = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.job_id == job_id)
            .cloned()
            .collect();
        v.sort_by_key(|e| e.at_ms);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: JobState, tt: Option<&str>) -> JobRecord {
        JobRecord {
            job_id: id.into(),
            source: "s".into(),
            fingerprint: "f".into(),
            request: "{}".into(),
            status_url: "https://ehr.example/status/1".into(),
            state,
            since: None,
            transaction_time: tt.map(str::to_owned),
            auth_event_id: None,
            progress: None,
            waiting_for: None,
            owner_pid: 1,
            heartbeat: 0,
            created_at: format!("2024-01-01T00:00:0{}Z", &id[1..]),
            updated_at: String::new(),
            report: None,
            error: None,
        }
    }

    fn conformance(store: &dyn JobStore) {
        store
            .put(&job("j1", JobState::Done, Some("2024-01-01T00:00:00Z")))
            .unwrap();
        store
            .put(&job("j2", JobState::Done, Some("2024-02-01T00:00:00Z")))
            .unwrap();
        store.put(&job("j3", JobState::InProgress, None)).unwrap();
        assert_eq!(
            store.last_transaction_time("s", "f").unwrap().as_deref(),
            Some("2024-02-01T00:00:00Z")
        );
        assert_eq!(store.resumable("s", "f").unwrap().unwrap().job_id, "j3");
        assert!(store.resumable("s", "other").unwrap().is_none());
        let mut j3 = store.get("j3").unwrap().unwrap();
        j3.state = JobState::Abandoned;
        store.put(&j3).unwrap();
        assert!(store.resumable("s", "f").unwrap().is_none());
        assert_eq!(store.list(2).unwrap().len(), 2);
        assert_eq!(store.list(10).unwrap()[0].job_id, "j3");
        let mut poll = JobEvent::now("j3", "poll");
        poll.status = Some(202);
        poll.duration_ms = Some(1500);
        poll.reason = Some("retry-after".into());
        store.add_event(&poll).unwrap();
        let mut end = JobEvent::now("j3", "download-end");
        end.at_ms = poll.at_ms + 10;
        end.file = Some("Patient.001.ndjson".into());
        end.bytes = Some(42);
        store.add_event(&end).unwrap();
        store.add_event(&JobEvent::now("j1", "kickoff")).unwrap();
        assert_eq!(store.events("j3").unwrap(), vec![poll, end]);
        assert_eq!(store.events("j1").unwrap().len(), 1);
        assert!(store.events("nope").unwrap().is_empty());
    }

    #[test]
    fn sqlite_store_conformance() {
        conformance(&SqliteJobStore::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        conformance(&SqliteJobStore::open(&p).unwrap());
        // Reopening keeps the jobs.
        assert_eq!(SqliteJobStore::open(&p).unwrap().list(10).unwrap().len(), 3);
    }

    #[test]
    fn memory_store_conformance() {
        conformance(&MemoryJobStore::new());
    }

    #[test]
    fn heartbeat_decides_who_holds_a_job() {
        let mut j = job("j1", JobState::InProgress, None);
        // Our parent process exists and is not us.
        j.owner_pid = std::os::unix::process::parent_id();
        j.heartbeat = 1000;
        assert!(j.held_by_other(1010));
        assert!(!j.held_by_other(1000 + 60));
        j.owner_pid = std::process::id();
        assert!(!j.held_by_other(1010));
        // A crashed owner (no such process) holds nothing, however fresh its heartbeat.
        j.owner_pid = u32::MAX - 1;
        assert!(!j.held_by_other(1010));
    }
}
