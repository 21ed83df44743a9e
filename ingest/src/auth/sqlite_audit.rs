//! [`SqliteAuditSink`]: authorization audit events into the state database's
//! `auth_events` table, tagged with the source, run and export job they happened in.
//!
//! Invariants:
//! - An event is durable (committed to SQLite) before [`AuditSink::record`] returns, so a
//!   grant that could not be audited is never used (the authorizer fails instead).
//! - Rows carry no credentials: [`AuthEvent`] has none to give, and the scope (source,
//!   run, job) is set by the command, not taken from requests.
//! - Times are stored as fixed-width RFC 3339 UTC with microseconds, so text order is
//!   time order (`--since` compares text).

use std::path::Path;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::audit::{AuditError, AuditSink, AuthEvent};
use crate::state::{AuditRecord, StateStore};

/// Where events of this process belong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditScope {
    /// Source (tenant or EHR).
    pub source: Option<String>,
    /// Current run.
    pub run_id: Option<String>,
    /// Current export job.
    pub job_id: Option<String>,
}

/// Records audit events in the state database.
#[derive(Debug)]
pub struct SqliteAuditSink {
    state: Arc<StateStore>,
    scope: Mutex<AuditScope>,
}

impl SqliteAuditSink {
    /// Opens (creating) the state database at `path`.
    pub fn open(path: &Path, scope: AuditScope) -> Result<Self, AuditError> {
        let state = StateStore::open(path).map_err(|e| AuditError::Other(e.to_string()))?;
        Ok(Self::new(Arc::new(state), scope))
    }

    /// Over an open state store.
    pub fn new(state: Arc<StateStore>, scope: AuditScope) -> Self {
        Self {
            state,
            scope: Mutex::new(scope),
        }
    }

    /// The state store.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.state
    }

    fn scope_lock(&self) -> std::sync::MutexGuard<'_, AuditScope> {
        self.scope.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events from now on belong to this run.
    pub fn set_run(&self, run_id: impl Into<String>) {
        self.scope_lock().run_id = Some(run_id.into());
    }

    /// Events from now on belong to this export job.
    pub fn set_job(&self, job_id: impl Into<String>) {
        self.scope_lock().job_id = Some(job_id.into());
    }

    /// The current scope.
    pub fn scope(&self) -> AuditScope {
        self.scope_lock().clone()
    }
}

/// Fixed-width RFC 3339 UTC with microseconds (`2024-05-01T12:00:00.000000Z`).
pub fn audit_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// The stored form of an event in `scope`.
pub fn audit_record(ev: &AuthEvent, scope: &AuditScope) -> AuditRecord {
    let endpoint_host = url::Url::parse(&ev.aud)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    AuditRecord {
        event_id: ev.id.to_string(),
        time: audit_time(ev.time),
        kind: snake(&ev.kind),
        outcome: snake(&ev.outcome),
        source: scope.source.clone(),
        run_id: scope.run_id.clone(),
        job_id: scope.job_id.clone(),
        client_id: ev.client_id.clone(),
        issuer: ev.issuer.clone(),
        token_endpoint: ev.aud.clone(),
        endpoint_host,
        grant_type: ev.grant_type.clone(),
        requested_scopes: ev.requested_scopes.clone(),
        granted_scopes: ev.granted_scopes.clone(),
        missing_scopes: ev.missing_scopes.clone(),
        patient: ev.patient.clone(),
        encounter: ev.encounter.clone(),
        fhir_user: ev.fhir_user.clone(),
        expires_at: ev.expires_at.map(audit_time),
        error_class: ev.error_class.clone(),
        detail: ev.detail.clone(),
    }
}

impl AuditSink for SqliteAuditSink {
    fn record(&self, ev: &AuthEvent) -> Result<(), AuditError> {
        let rec = audit_record(ev, &self.scope());
        self.state
            .record_auth_event(&rec)
            .map_err(|e| AuditError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthEventKind, AuthOutcome};
    use crate::state::{AuditFilter, RunAuth};

    #[test]
    fn records_scope_and_filters_by_run_job_and_time() {
        let state = Arc::new(StateStore::in_memory().unwrap());
        let sink = SqliteAuditSink::new(
            state.clone(),
            AuditScope {
                source: Some("ehr".into()),
                ..AuditScope::default()
            },
        );
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut grant = AuthEvent::new(AuthEventKind::Grant, t0, AuthOutcome::Success);
        grant.client_id = "c".into();
        grant.aud = "https://auth.example/token".into();
        grant.grant_type = Some("client_credentials".into());
        grant.granted_scopes = vec!["system/*.rs".into()];
        grant.expires_at = Some(t0 + time::Duration::seconds(300));
        sink.set_run("r1");
        sink.record(&grant).unwrap();
        let later = t0 + time::Duration::milliseconds(1500);
        let refresh = AuthEvent::new(AuthEventKind::Refresh, later, AuthOutcome::Partial);
        sink.set_run("r2");
        sink.set_job("j9");
        sink.record(&refresh).unwrap();

        let all = state.auth_events(&AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 2);
        let g = &all[0];
        assert_eq!(g.event_id, grant.id.to_string());
        assert_eq!(g.kind, "grant");
        assert_eq!(g.outcome, "success");
        assert_eq!(g.endpoint_host, "auth.example");
        assert_eq!(g.source.as_deref(), Some("ehr"));
        assert_eq!(g.run_id.as_deref(), Some("r1"));
        assert_eq!(g.job_id, None);
        assert_eq!(g.granted_scopes, vec!["system/*.rs".to_owned()]);
        assert_eq!(g.time, "2023-11-14T22:13:20.000000Z");
        assert_eq!(g.expires_at.as_deref(), Some("2023-11-14T22:18:20.000000Z"));
        assert_eq!(all[1].kind, "refresh");
        assert_eq!(all[1].outcome, "partial");

        let by_run = |r: &str| AuditFilter {
            run_id: Some(r.into()),
            ..AuditFilter::default()
        };
        assert_eq!(state.auth_events(&by_run("r1")).unwrap().len(), 1);
        // The run r1 becomes part of job j9: its events join the job.
        state
            .begin_run(&crate::state::RunRecord {
                run_id: "r1".into(),
                kind: "export".into(),
                source: "ehr".into(),
                lake: "l".into(),
                started_at: "t".into(),
                finished_at: None,
                status: "running".into(),
                summary: None,
            })
            .unwrap();
        state
            .set_run_auth("r1", Some(&grant.id.to_string()), Some("j9"))
            .unwrap();
        assert_eq!(
            state.run_auth("r1").unwrap(),
            Some(RunAuth {
                auth_event_id: Some(grant.id.to_string()),
                job_id: Some("j9".into())
            })
        );
        let job = AuditFilter {
            job_id: Some("j9".into()),
            ..AuditFilter::default()
        };
        assert_eq!(state.auth_events(&job).unwrap().len(), 2);
        // Sub-second times still order as text.
        let since = AuditFilter {
            since: Some("2023-11-14T22:13:20.500000Z".into()),
            ..AuditFilter::default()
        };
        let recent = state.auth_events(&since).unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].kind, "refresh");
    }

    #[test]
    fn old_databases_gain_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let c = rusqlite::Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL,
                 lake TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL, summary TEXT);
                 INSERT INTO runs VALUES ('old', 'ingest', 's', 'l', 't', NULL, 'ok', NULL);",
            )
            .unwrap();
        }
        let s = StateStore::open(&p).unwrap();
        assert_eq!(s.run_auth("old").unwrap(), Some(RunAuth::default()));
        s.set_run_auth("old", Some("e1"), None).unwrap();
        assert_eq!(
            s.run_auth("old").unwrap().unwrap().auth_event_id.as_deref(),
            Some("e1")
        );
        assert_eq!(s.runs(5).unwrap().len(), 1);
        // Opening again is a no-op.
        drop(s);
        StateStore::open(&p).unwrap();
    }
}
