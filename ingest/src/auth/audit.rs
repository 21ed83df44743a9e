//! Authorization audit events.
//!
//! Every grant, refresh, failure, 401, revocation and scope denial becomes an
//! [`AuthEvent`]. Events carry who/what/when/outcome and launch-context ids, never a
//! token, assertion, secret, code or verifier. Jobs and files point at [`AuthEvent::id`].

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthEventKind {
    /// A new token was granted (client credentials, authorization code).
    Grant,
    /// A token was refreshed (refresh grant, or a new client-credentials grant).
    Refresh,
    /// A grant or refresh failed.
    Failure,
    /// A resource server rejected a token with 401.
    Unauthorized,
    /// Tokens were revoked and deleted.
    Revocation,
    /// A request was refused locally by the scope policy.
    ScopeDenied,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthOutcome {
    /// As asked.
    Success,
    /// Granted, but fewer scopes than requested.
    Partial,
    /// Failed.
    Failure,
    /// Refused locally.
    Denied,
}

/// One audit record. Contains no credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuthEvent {
    /// UUID v7 (time-ordered).
    #[serde(with = "super::serde_util::uuid")]
    pub id: Uuid,
    /// When.
    #[serde(with = "super::serde_util::rfc3339")]
    pub time: OffsetDateTime,
    /// What.
    pub kind: AuthEventKind,
    /// OAuth client id.
    pub client_id: String,
    /// FHIR base URL (redacted).
    pub issuer: String,
    /// Token endpoint / audience (redacted).
    pub aud: String,
    /// Scopes asked for.
    pub requested_scopes: Vec<String>,
    /// Scopes the server granted (empty on failure).
    pub granted_scopes: Vec<String>,
    /// Requested but not granted.
    pub missing_scopes: Vec<String>,
    /// The OAuth grant type of the token request (`client_credentials`,
    /// `authorization_code`, `refresh_token`); `None` for events without one.
    #[serde(default)]
    pub grant_type: Option<String>,
    /// Launch context: patient id.
    pub patient: Option<String>,
    /// Launch context: encounter id.
    pub encounter: Option<String>,
    /// Launch context: `fhirUser`.
    pub fhir_user: Option<String>,
    /// Token expiry.
    #[serde(default, with = "super::serde_util::opt_rfc3339")]
    pub expires_at: Option<OffsetDateTime>,
    /// Outcome.
    pub outcome: AuthOutcome,
    /// Error class (`invalid_grant`, `http_503`, `transport`, a missing scope...).
    pub error_class: Option<String>,
    /// Short, credential-free detail (the denied action, the redacted URL).
    pub detail: Option<String>,
}

impl AuthEvent {
    /// A new event at `time` with a v7 id derived from it.
    pub fn new(kind: AuthEventKind, time: OffsetDateTime, outcome: AuthOutcome) -> Self {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(time.unix_timestamp()).unwrap_or(0),
            time.nanosecond(),
        );
        Self {
            id: Uuid::new_v7(ts),
            time,
            kind,
            client_id: String::new(),
            issuer: String::new(),
            aud: String::new(),
            requested_scopes: Vec::new(),
            granted_scopes: Vec::new(),
            missing_scopes: Vec::new(),
            grant_type: None,
            patient: None,
            encounter: None,
            fhir_user: None,
            expires_at: None,
            outcome,
            error_class: None,
            detail: None,
        }
    }
}

/// Writing an audit event failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink could not write.
    #[error("cannot write the audit log {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The event could not be serialized.
    #[error("cannot serialize the audit event")]
    Serialize(#[from] serde_json::Error),
    /// Another sink-specific failure.
    #[error("audit sink failed: {0}")]
    Other(String),
}

/// Where audit events go. Implementations must be durable before returning `Ok`.
pub trait AuditSink: Send + Sync {
    /// Records one event.
    fn record(&self, ev: &AuthEvent) -> Result<(), AuditError>;
}

/// Keeps events in memory (tests, `--dry-run`).
#[derive(Debug, Default)]
pub struct MemoryAuditSink {
    events: Mutex<Vec<AuthEvent>>,
}

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<AuthEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The events of one kind.
    pub fn of_kind(&self, kind: AuthEventKind) -> Vec<AuthEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, ev: &AuthEvent) -> Result<(), AuditError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ev.clone());
        Ok(())
    }
}

/// Appends one JSON object per line to a file (opened with `O_APPEND`, mode 0600,
/// flushed per event).
#[derive(Debug)]
pub struct JsonlAuditSink {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlAuditSink {
    /// Opens (creating) the file for appending.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }
}

impl AuditSink for JsonlAuditSink {
    fn record(&self, ev: &AuthEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_appends_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut a = AuthEvent::new(AuthEventKind::Grant, t, AuthOutcome::Success);
        a.client_id = "c1".into();
        let b = AuthEvent::new(AuthEventKind::Refresh, t, AuthOutcome::Success);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.get_version_num(), 7);
        JsonlAuditSink::open(&p).unwrap().record(&a).unwrap();
        JsonlAuditSink::open(&p).unwrap().record(&b).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<AuthEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![a, b]);
    }
}
