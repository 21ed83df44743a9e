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
//! - Nothing secret or PHI is stored here: locations, counts, hashes and error classes only.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

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
";

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
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Self, StateError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
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

    /// Marks a file task done with its final counts. Call only when every output is durable.
    pub fn file_done(&self, rec: &FileRecord) -> Result<(), StateError> {
        self.conn().execute(
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
