//! Bulk export errors. `Display` is a sentence with a redacted URL; never a token, a
//! query string or resource content.

use crate::http::HttpError;

/// Coarse classes callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkErrorKind {
    /// Bad profile, request or configuration: fix and run again.
    Config,
    /// The same request is being exported by another live process.
    JobLive,
    /// The server refused or failed the export (fatal OperationOutcome, 4xx).
    Server,
    /// Waiting took longer than the deadline.
    Deadline,
    /// The grant is gone; a person must authorize again.
    NeedsReauthorization,
    /// The state store failed.
    Store,
    /// A transport failure that retries did not overcome.
    Transport,
}

/// A bulk export error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// A profile could not be loaded.
    #[error("vendor profile {name} is invalid: {reason}")]
    Profile {
        /// Profile name or path.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The export request is invalid.
    #[error("the export request is invalid: {0}")]
    Request(String),
    /// Another live process exports the same request.
    #[error("export job {job_id} for the same request is still live (held by process {pid}); pass --force to kick off another")]
    JobLive {
        /// The live job.
        job_id: String,
        /// The process holding it.
        pid: u32,
    },
    /// The server answered the kick-off without a status URL.
    #[error(
        "the kick-off at {url} was answered HTTP {status} without a Content-Location status URL"
    )]
    NoStatusUrl {
        /// Redacted kick-off URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server reported the export as failed.
    #[error("the export at {url} failed on the server (HTTP {status}): {summary}")]
    ServerFailed {
        /// Redacted status URL.
        url: String,
        /// The status code.
        status: u16,
        /// The OperationOutcome's issue codes and severities (no diagnostics text, which
        /// may carry PHI).
        summary: String,
    },
    /// The manifest could not be understood.
    #[error("the manifest from {url} is invalid: {reason}")]
    Manifest {
        /// Redacted status URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The job did not complete before the deadline.
    #[error("export job {job_id} did not complete within {days:.1} days")]
    Deadline {
        /// Our job id.
        job_id: String,
        /// The deadline.
        days: f64,
    },
    /// A transport failure.
    #[error("an export request failed")]
    Http(#[from] HttpError),
    /// The job store failed.
    #[error("the export job store failed: {0}")]
    Store(String),
}

impl BulkError {
    /// The class of this error.
    pub fn kind(&self) -> BulkErrorKind {
        match self {
            Self::Profile { .. } | Self::Request(_) => BulkErrorKind::Config,
            Self::JobLive { .. } => BulkErrorKind::JobLive,
            Self::NoStatusUrl { .. } | Self::ServerFailed { .. } | Self::Manifest { .. } => {
                BulkErrorKind::Server
            }
            Self::Deadline { .. } => BulkErrorKind::Deadline,
            Self::Http(e) if e.needs_reauthorization() => BulkErrorKind::NeedsReauthorization,
            Self::Http(e) if e.is_retryable() => BulkErrorKind::Transport,
            Self::Http(_) => BulkErrorKind::Server,
            Self::Store(_) => BulkErrorKind::Store,
        }
    }

    /// True when the grant is gone and the job must stop cleanly.
    pub fn needs_reauthorization(&self) -> bool {
        self.kind() == BulkErrorKind::NeedsReauthorization
    }
}

impl From<rusqlite::Error> for BulkError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}
