//! The state store: an embedded SQLite database of runs and file tasks.
//!
//! Invariants:
//! - A file task is recorded `done` only after its raw object, its Parquet parts and every
//!   Kafka delivery are durable (the pipeline calls [`StateStore::file_done`] last). A crash
//!   before that leaves it `running` or `failed`, and the next run processes it again; since
//!   every output is written to a deterministic key, that second attempt converges on the same
//!   lake instead of adding to it.
//! - Files are keyed by `(lake, fingerprint)`: the same input ingested into two lakes is two
//!   tasks.
//! - Writes are single statements or transactions; the database runs in WAL mode with a busy
//!   timeout so that `fhirhose status` can read while a run writes.
//! - A file task that publishes events checkpoints its *ack watermark* in `file_watermarks`:
//!   the highest line `L` such that every event of lines `1..=L` was acknowledged by the
//!   broker, tagged with the event sink it was published to. A later attempt at the same file
//!   and sink may skip publishing lines `<= L` (see `fhirhose::pipeline::watermark`). The row
//!   is deleted in the same transaction that records the file `done`, so a forced re-run of a
//!   landed file publishes everything again.
//! - Nothing secret or PHI is stored here: locations, counts, hashes and error classes only.
//!   The `auth_events` audit table holds who/what/when/outcome of every authorization
//!   event and launch-context ids, never a token, assertion, secret, code or verifier.
//! - The audit table is append-only: rows are inserted and only ever gain a `job_id`
//!   (known after an export's kick-off), never change otherwise.
//! - Schema changes are additive: new tables with `CREATE TABLE IF NOT EXISTS`, new
//!   columns of existing tables with `ALTER TABLE ADD COLUMN` when missing (see
//!   [`migrate`]), so an older database opens and keeps its rows.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The database could not be opened or created.
    #[error("state database {path} cannot be opened: {source}")]
    Open {
        /// Database path.
        path: String,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("state database query failed: {0}")]
    Query(#[from] rusqlite::Error),
    /// The parent folder could not be created.
    #[error("state folder {path} cannot be created: {source}")]
    Io {
        /// Folder path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Status of a file task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Started, not finished (or crashed).
    Running,
    /// Everything durable.
    Done,
    /// Failed; will be retried by the next run.
    Failed,
}

impl FileStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => Self::Running,
        }
    }
}

/// One file task's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Lake URL the file was ingested into.
    pub lake: String,
    /// Input fingerprint.
    pub fingerprint: String,
    /// Input location (path or URL without query).
    pub input: String,
    /// Raw object key.
    pub raw_key: String,
    /// Status.
    pub status: FileStatus,
    /// Hex sha256 of the raw bytes (when done).
    pub sha256: Option<String>,
    /// Raw bytes.
    pub bytes: u64,
    /// Lines framed.
    pub lines: u64,
    /// Resources landed.
    pub resources: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Run that last touched it.
    pub run_id: String,
    /// Error class and message of the last failure (no PHI).
    pub error: Option<String>,
}

/// One run's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// `ingest`, `export`, `reprocess`, ...
    pub kind: String,
    /// Source name.
    pub source: String,
    /// Lake URL.
    pub lake: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: Option<String>,
    /// `running`, `ok`, `partial`, `failed`.
    pub status: String,
    /// The run summary JSON when finished.
    pub summary: Option<String>,
}

/// SQLite-backed state.
#[derive(Debug)]
pub struct StateStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  source TEXT NOT NULL,
  lake TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  status TEXT NOT NULL,
  summary TEXT
);
CREATE TABLE IF NOT EXISTS files (
  lake TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  input TEXT NOT NULL,
  raw_key TEXT NOT NULL,
  status TEXT NOT NULL,
  sha256 TEXT,
  bytes INTEGER NOT NULL DEFAULT 0,
  lines INTEGER NOT NULL DEFAULT 0,
  resources INTEGER NOT NULL DEFAULT 0,
  dead_letters INTEGER NOT NULL DEFAULT 0,
  run_id TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  error TEXT,
  PRIMARY KEY (lake, fingerprint)
);
CREATE TABLE IF NOT EXISTS auth_events (
  event_id TEXT PRIMARY KEY,
  time TEXT NOT NULL,
  kind TEXT NOT NULL,
  outcome TEXT NOT NULL,
  source TEXT,
  run_id TEXT,
  job_id TEXT,
  client_id TEXT NOT NULL,
  issuer TEXT NOT NULL,
  token_endpoint TEXT NOT NULL,
  endpoint_host TEXT NOT NULL,
  grant_type TEXT,
  requested_scopes TEXT NOT NULL,
  granted_scopes TEXT NOT NULL,
  missing_scopes TEXT NOT NULL,
  patient TEXT,
  encounter TEXT,
  fhir_user TEXT,
  expires_at TEXT,
  error_class TEXT,
  detail TEXT
);
CREATE INDEX IF NOT EXISTS auth_events_by_run ON auth_events (run_id, time);
CREATE INDEX IF NOT EXISTS auth_events_by_job ON auth_events (job_id, time);
CREATE TABLE IF NOT EXISTS file_watermarks (
  lake TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  sink TEXT NOT NULL,
  acked_through INTEGER NOT NULL,
  run_id TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  PRIMARY KEY (lake, fingerprint)
);
";

/// Columns added to existing tables after their first release: (table, column, type).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The audit event of the grant in force when the run started fetching (lineage).
    ("runs", "auth_event_id", "TEXT"),
    // The export job whose files the run landed.
    ("runs", "job_id", "TEXT"),
];

/// Creates missing tables and adds missing columns.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, ty) in ADDED_COLUMNS {
        let present = conn
            .prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .any(|c| c == column);
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

/// One authorization audit event as stored (and as written to the lake's
/// `audit/<source>/<run_id>.jsonl`). Contains no credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Event id (UUID v7).
    pub event_id: String,
    /// RFC 3339 time.
    pub time: String,
    /// `grant`, `refresh`, `failure`, `unauthorized`, `revocation`, `scope_denied`.
    pub kind: String,
    /// `success`, `partial`, `failure`, `denied`.
    pub outcome: String,
    /// Source (tenant or EHR) the command worked for.
    pub source: Option<String>,
    /// The run the event happened in.
    pub run_id: Option<String>,
    /// The export job the event happened in.
    pub job_id: Option<String>,
    /// OAuth client id.
    pub client_id: String,
    /// FHIR base URL (redacted).
    pub issuer: String,
    /// Token endpoint (redacted).
    pub token_endpoint: String,
    /// Host of the token endpoint.
    pub endpoint_host: String,
    /// `client_credentials`, `authorization_code`, `refresh_token`.
    pub grant_type: Option<String>,
    /// Scopes asked for.
    pub requested_scopes: Vec<String>,
    /// Scopes granted.
    pub granted_scopes: Vec<String>,
    /// Requested but not granted.
    pub missing_scopes: Vec<String>,
    /// Launch context patient id.
    pub patient: Option<String>,
    /// Launch context encounter id.
    pub encounter: Option<String>,
    /// Launch context `fhirUser`.
    pub fhir_user: Option<String>,
    /// RFC 3339 token expiry.
    pub expires_at: Option<String>,
    /// Error class.
    pub error_class: Option<String>,
    /// Credential-free detail.
    pub detail: Option<String>,
}

/// A run's authorization lineage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAuth {
    /// The audit event of the grant in force when the run started fetching.
    pub auth_event_id: Option<String>,
    /// The export job whose files the run landed.
    pub job_id: Option<String>,
}

/// Which audit events to list; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Events of this run.
    pub run_id: Option<String>,
    /// Events of this export job (recorded in it, of its runs, or its kick-off grant).
    pub job_id: Option<String>,
    /// Events at or after this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many (newest kept), 0 for all.
    pub limit: usize,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl StateStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StateError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let open_err = |source| StateError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        migrate(&conn).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StateError> {
        let conn = Connection::open_in_memory()?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are
        // atomic), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new run.
    pub fn begin_run(&self, run: &RunRecord) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO runs (run_id, kind, source, lake, started_at, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![run.run_id, run.kind, run.source, run.lake, run.started_at, run.status],
        )?;
        Ok(())
    }

    /// Closes a run with its status and summary.
    pub fn finish_run(&self, run_id: &str, status: &str, summary: &str) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE runs SET finished_at = ?2, status = ?3, summary = ?4 WHERE run_id = ?1",
            params![run_id, now(), status, summary],
        )?;
        Ok(())
    }

    /// Lists runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT run_id, kind, source, lake, started_at, finished_at, status, summary FROM runs ORDER BY started_at DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(RunRecord {
                run_id: r.get(0)?,
                kind: r.get(1)?,
                source: r.get(2)?,
                lake: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                status: r.get(6)?,
                summary: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The record of a file task, if any.
    pub fn file(&self, lake: &str, fingerprint: &str) -> Result<Option<FileRecord>, StateError> {
        let conn = self.conn();
        let rec = conn
            .query_row(
                "SELECT lake, fingerprint, input, raw_key, status, sha256, bytes, lines, resources, dead_letters, run_id, error FROM files WHERE lake = ?1 AND fingerprint = ?2",
                params![lake, fingerprint],
                row_to_file,
            )
            .optional()?;
        Ok(rec)
    }

    /// Files of a lake, in input order.
    pub fn files(&self, lake: &str) -> Result<Vec<FileRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT lake, fingerprint, input, raw_key, status, sha256, bytes, lines, resources, dead_letters, run_id, error FROM files WHERE lake = ?1 ORDER BY input",
        )?;
        let rows = stmt.query_map(params![lake], row_to_file)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a file task as started by `run_id` (inserting or resetting it).
    pub fn file_started(
        &self,
        lake: &str,
        fingerprint: &str,
        input: &str,
        raw_key: &str,
        run_id: &str,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO files (lake, fingerprint, input, raw_key, status, run_id, updated_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6)
             ON CONFLICT (lake, fingerprint) DO UPDATE SET status = 'running', input = excluded.input, raw_key = excluded.raw_key, run_id = excluded.run_id, updated_at = excluded.updated_at, error = NULL",
            params![lake, fingerprint, input, raw_key, run_id, now()],
        )?;
        Ok(())
    }

    /// The ack watermark checkpointed for a file task and event sink (0 when none).
    pub fn file_watermark(
        &self,
        lake: &str,
        fingerprint: &str,
        sink: &str,
    ) -> Result<u64, StateError> {
        let v: Option<i64> = self
            .conn()
            .query_row(
                "SELECT acked_through FROM file_watermarks WHERE lake = ?1 AND fingerprint = ?2 AND sink = ?3",
                params![lake, fingerprint, sink],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Checkpoints a file task's ack watermark: every event of lines `1..=acked_through`
    /// published to `sink` was acknowledged. Never moves a watermark of the same sink back.
    pub fn set_file_watermark(
        &self,
        lake: &str,
        fingerprint: &str,
        sink: &str,
        acked_through: u64,
        run_id: &str,
    ) -> Result<(), StateError> {
        let line = i64::try_from(acked_through).unwrap_or(i64::MAX);
        self.conn().execute(
            "INSERT INTO file_watermarks (lake, fingerprint, sink, acked_through, run_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (lake, fingerprint) DO UPDATE SET
               acked_through = CASE WHEN file_watermarks.sink = excluded.sink THEN max(file_watermarks.acked_through, excluded.acked_through) ELSE excluded.acked_through END,
               sink = excluded.sink, run_id = excluded.run_id, updated_at = excluded.updated_at",
            params![lake, fingerprint, sink, line, run_id, now()],
        )?;
        Ok(())
    }

    /// Marks a file task done with its final counts (and drops its ack watermark, in the
    /// same transaction). Call only when every output is durable.
    pub fn file_done(&self, rec: &FileRecord) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM file_watermarks WHERE lake = ?1 AND fingerprint = ?2",
            params![rec.lake, rec.fingerprint],
        )?;
        tx.execute(
            "INSERT INTO files (lake, fingerprint, input, raw_key, status, sha256, bytes, lines, resources, dead_letters, run_id, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'done', ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (lake, fingerprint) DO UPDATE SET status = 'done', input = excluded.input, raw_key = excluded.raw_key, sha256 = excluded.sha256,
               bytes = excluded.bytes, lines = excluded.lines, resources = excluded.resources, dead_letters = excluded.dead_letters,
               run_id = excluded.run_id, updated_at = excluded.updated_at, error = NULL",
            params![
                rec.lake,
                rec.fingerprint,
                rec.input,
                rec.raw_key,
                rec.sha256,
                rec.bytes as i64,
                rec.lines as i64,
                rec.resources as i64,
                rec.dead_letters as i64,
                rec.run_id,
                now()
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks a file task failed with an error message (no PHI: classes and locations only).
    pub fn file_failed(
        &self,
        lake: &str,
        fingerprint: &str,
        error: &str,
    ) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE files SET status = 'failed', error = ?3, updated_at = ?4 WHERE lake = ?1 AND fingerprint = ?2",
            params![lake, fingerprint, error, now()],
        )?;
        Ok(())
    }
}

const AUDIT_COLUMNS: &str = "event_id, time, kind, outcome, source, run_id, job_id, client_id, issuer, token_endpoint, endpoint_host, grant_type, requested_scopes, granted_scopes, missing_scopes, patient, encounter, fhir_user, expires_at, error_class, detail";

impl StateStore {
    /// Appends one authorization audit event.
    pub fn record_auth_event(&self, e: &AuditRecord) -> Result<(), StateError> {
        let j = |v: &Vec<String>| v.join(" ");
        self.conn().execute(
            &format!("INSERT INTO auth_events ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"),
            params![
                e.event_id, e.time, e.kind, e.outcome, e.source, e.run_id, e.job_id, e.client_id,
                e.issuer, e.token_endpoint, e.endpoint_host, e.grant_type,
                j(&e.requested_scopes), j(&e.granted_scopes), j(&e.missing_scopes),
                e.patient, e.encounter, e.fhir_user, e.expires_at, e.error_class, e.detail
            ],
        )?;
        Ok(())
    }

    /// Audit events matching `f`, oldest first.
    pub fn auth_events(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StateError> {
        let conn = self.conn();
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM auth_events WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        if let Some(r) = &f.run_id {
            args.push(r.clone());
            sql.push_str(&format!(" AND run_id = ?{}", args.len()));
        }
        if let Some(j) = &f.job_id {
            args.push(j.clone());
            let n = args.len();
            // Recorded in the job, in one of its runs, or the grant its kick-off used.
            sql.push_str(&format!(
                " AND (job_id = ?{n} OR run_id IN (SELECT run_id FROM runs WHERE job_id = ?{n})"
            ));
            let has_jobs: bool = conn
                .query_row(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'export_jobs'",
                    [],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if has_jobs {
                sql.push_str(&format!(
                    " OR event_id IN (SELECT auth_event_id FROM export_jobs WHERE job_id = ?{n})"
                ));
            }
            sql.push(')');
        }
        if let Some(t) = &f.since {
            args.push(t.clone());
            sql.push_str(&format!(" AND time >= ?{}", args.len()));
        }
        sql.push_str(" ORDER BY time DESC, event_id DESC");
        if f.limit > 0 {
            sql.push_str(&format!(" LIMIT {}", f.limit));
        }
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_audit)?;
        let mut out: Vec<AuditRecord> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Records the authorization lineage of a run: the audit event of the grant in force
    /// and the export job it landed files for. Events recorded in the run without a job id
    /// get this job id.
    pub fn set_run_auth(
        &self,
        run_id: &str,
        auth_event_id: Option<&str>,
        job_id: Option<&str>,
    ) -> Result<(), StateError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE runs SET auth_event_id = COALESCE(?2, auth_event_id), job_id = COALESCE(?3, job_id) WHERE run_id = ?1",
            params![run_id, auth_event_id, job_id],
        )?;
        if let Some(j) = job_id {
            conn.execute(
                "UPDATE auth_events SET job_id = ?2 WHERE run_id = ?1 AND job_id IS NULL",
                params![run_id, j],
            )?;
        }
        Ok(())
    }

    /// A run's authorization lineage (`None` when there is no such run).
    pub fn run_auth(&self, run_id: &str) -> Result<Option<RunAuth>, StateError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT auth_event_id, job_id FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| {
                    Ok(RunAuth {
                        auth_event_id: r.get(0)?,
                        job_id: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}

fn row_to_audit(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let split = |s: String| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };
    Ok(AuditRecord {
        event_id: r.get(0)?,
        time: r.get(1)?,
        kind: r.get(2)?,
        outcome: r.get(3)?,
        source: r.get(4)?,
        run_id: r.get(5)?,
        job_id: r.get(6)?,
        client_id: r.get(7)?,
        issuer: r.get(8)?,
        token_endpoint: r.get(9)?,
        endpoint_host: r.get(10)?,
        grant_type: r.get(11)?,
        requested_scopes: split(r.get(12)?),
        granted_scopes: split(r.get(13)?),
        missing_scopes: split(r.get(14)?),
        patient: r.get(15)?,
        encounter: r.get(16)?,
        fhir_user: r.get(17)?,
        expires_at: r.get(18)?,
        error_class: r.get(19)?,
        detail: r.get(20)?,
    })
}

fn row_to_file(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    let status: String = r.get(4)?;
    Ok(FileRecord {
        lake: r.get(0)?,
        fingerprint: r.get(1)?,
        input: r.get(2)?,
        raw_key: r.get(3)?,
        status: FileStatus::parse(&status),
        sha256: r.get(5)?,
        bytes: r.get::<_, i64>(6)? as u64,
        lines: r.get::<_, i64>(7)? as u64,
        resources: r.get::<_, i64>(8)? as u64,
        dead_letters: r.get::<_, i64>(9)? as u64,
        run_id: r.get(10)?,
        error: r.get(11)?,
    })
}

impl FileStatus {
    /// Lowercase name, as stored.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lifecycle() {
        let s = StateStore::in_memory().unwrap();
        assert!(s.file("lake", "fp").unwrap().is_none());
        s.file_started("lake", "fp", "in.ndjson", "raw/k", "r1")
            .unwrap();
        assert_eq!(
            s.file("lake", "fp").unwrap().unwrap().status,
            FileStatus::Running
        );
        s.file_failed("lake", "fp", "broker unreachable").unwrap();
        let f = s.file("lake", "fp").unwrap().unwrap();
        assert_eq!(f.status, FileStatus::Failed);
        assert_eq!(f.error.as_deref(), Some("broker unreachable"));
        let done = FileRecord {
            lake: "lake".into(),
            fingerprint: "fp".into(),
            input: "in.ndjson".into(),
            raw_key: "raw/k".into(),
            status: FileStatus::Done,
            sha256: Some("ab".into()),
            bytes: 10,
            lines: 2,
            resources: 2,
            dead_letters: 0,
            run_id: "r2".into(),
            error: None,
        };
        s.file_done(&done).unwrap();
        assert_eq!(s.file("lake", "fp").unwrap().unwrap(), done);
        // Another lake is another task.
        assert!(s.file("other", "fp").unwrap().is_none());
        assert_eq!(s.files("lake").unwrap().len(), 1);
    }

    #[test]
    fn watermarks_move_forward_per_sink_and_vanish_when_done() {
        let s = StateStore::in_memory().unwrap();
        s.file_started("lake", "fp", "in.ndjson", "raw/k", "r1")
            .unwrap();
        assert_eq!(s.file_watermark("lake", "fp", "kafka:a").unwrap(), 0);
        s.set_file_watermark("lake", "fp", "kafka:a", 40, "r1")
            .unwrap();
        s.set_file_watermark("lake", "fp", "kafka:a", 30, "r1")
            .unwrap();
        assert_eq!(s.file_watermark("lake", "fp", "kafka:a").unwrap(), 40);
        // Another sink never sees it; a checkpoint for another sink replaces it.
        assert_eq!(s.file_watermark("lake", "fp", "kafka:b").unwrap(), 0);
        s.set_file_watermark("lake", "fp", "kafka:b", 5, "r2")
            .unwrap();
        assert_eq!(s.file_watermark("lake", "fp", "kafka:a").unwrap(), 0);
        assert_eq!(s.file_watermark("lake", "fp", "kafka:b").unwrap(), 5);
        // A restart (file_started) keeps it; done drops it.
        s.file_started("lake", "fp", "in.ndjson", "raw/k", "r3")
            .unwrap();
        assert_eq!(s.file_watermark("lake", "fp", "kafka:b").unwrap(), 5);
        s.file_done(&FileRecord {
            lake: "lake".into(),
            fingerprint: "fp".into(),
            input: "in.ndjson".into(),
            raw_key: "raw/k".into(),
            status: FileStatus::Done,
            sha256: None,
            bytes: 0,
            lines: 0,
            resources: 0,
            dead_letters: 0,
            run_id: "r3".into(),
            error: None,
        })
        .unwrap();
        assert_eq!(s.file_watermark("lake", "fp", "kafka:b").unwrap(), 0);
    }

    #[test]
    fn runs_round_trip() {
        let s = StateStore::in_memory().unwrap();
        let r = RunRecord {
            run_id: "r1".into(),
            kind: "ingest".into(),
            source: "local".into(),
            lake: "l".into(),
            started_at: now(),
            finished_at: None,
            status: "running".into(),
            summary: None,
        };
        s.begin_run(&r).unwrap();
        s.finish_run("r1", "ok", "{}").unwrap();
        let runs = s.runs(10).unwrap();
        assert_eq!(runs[0].status, "ok");
        assert_eq!(runs[0].summary.as_deref(), Some("{}"));
    }
}
