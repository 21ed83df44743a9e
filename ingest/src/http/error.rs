//! Transport errors. `Display` never contains a query string, a token or a body.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{AuthError, ScopeDenied};

/// A response body kept for the caller (an OperationOutcome, an OAuth error), at most
/// [`ERROR_BODY_LIMIT`] bytes. Its `Debug` prints only the length: bodies can carry PHI.
#[derive(Clone, Default)]
pub struct ErrorBody(pub Bytes);

/// How much of an error response body is kept.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

impl fmt::Debug for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorBody({} bytes)", self.0.len())
    }
}

/// Coarse classes callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpErrorKind {
    /// The client configuration is invalid.
    Config,
    /// The request builder was misused (bad URL, bad header).
    InvalidRequest,
    /// Refused locally by the [`super::RequestGuard`]; nothing was sent.
    ScopeDenied,
    /// The [`super::BearerSource`] could not provide a token.
    Auth,
    /// Connection, TLS or protocol failure.
    Transport,
    /// No response headers within the response timeout.
    Timeout,
    /// HTTP 401 even after one token refresh.
    Unauthorized,
    /// HTTP 403.
    Forbidden,
    /// HTTP 408, 429 or 5xx (returned only when retries are exhausted or disabled).
    Transient,
    /// Any other 4xx: retrying cannot help.
    Fatal,
    /// Too many redirects, or a redirect without a usable `Location`.
    Redirect,
    /// The response body could not be read or decoded.
    Decode,
}

/// An HTTP transport error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Invalid configuration.
    #[error("invalid HTTP client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The request could not be built.
    #[error("invalid request to {url}: {reason}")]
    InvalidRequest {
        /// Redacted URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The request guard refused the request before it was sent.
    #[error("request to {url} was refused locally")]
    ScopeDenied {
        /// Redacted URL.
        url: String,
        /// The missing scope.
        #[source]
        source: ScopeDenied,
    },
    /// No access token could be obtained.
    #[error("could not obtain an access token for {url}")]
    Auth {
        /// Redacted URL.
        url: String,
        /// Why.
        #[source]
        source: Box<AuthError>,
    },
    /// Connection or protocol failure.
    #[error("transport error calling {url} (request {request_id})")]
    Transport {
        /// Redacted URL.
        url: String,
        /// The `X-Request-Id` sent.
        request_id: String,
        /// The underlying error, stripped of its URL.
        #[source]
        source: reqwest::Error,
    },
    /// No response within the response timeout.
    #[error("no response from {url} within {after:?} (request {request_id})")]
    Timeout {
        /// Redacted URL.
        url: String,
        /// The `X-Request-Id` sent.
        request_id: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// A non-success HTTP status.
    #[error("{url} answered HTTP {status} (request {request_id})")]
    Status {
        /// The status code.
        status: u16,
        /// Redacted URL.
        url: String,
        /// The `X-Request-Id` sent.
        request_id: String,
        /// `Retry-After`, if the server sent one.
        retry_after: Option<Duration>,
        /// The start of the response body.
        body: ErrorBody,
    },
    /// Redirect problems.
    #[error("redirect from {url} could not be followed: {reason}")]
    Redirect {
        /// Redacted URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The response body could not be decoded.
    #[error("could not decode the response from {url}: {reason}")]
    Decode {
        /// Redacted URL.
        url: String,
        /// The decoder's message (positions only, never content).
        reason: String,
    },
    /// Retries ran out; `last` is the final failure.
    #[error("gave up on {url} after {attempts} attempts in {elapsed:?}")]
    Exhausted {
        /// Redacted URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent, including waits.
        elapsed: Duration,
        /// The last failure.
        #[source]
        last: Box<HttpError>,
    },
}

impl HttpError {
    /// The class of this error (for `Exhausted`, the class of the last failure).
    pub fn kind(&self) -> HttpErrorKind {
        match self {
            Self::Config { .. } => HttpErrorKind::Config,
            Self::InvalidRequest { .. } => HttpErrorKind::InvalidRequest,
            Self::ScopeDenied { .. } => HttpErrorKind::ScopeDenied,
            Self::Auth { .. } => HttpErrorKind::Auth,
            Self::Transport { .. } => HttpErrorKind::Transport,
            Self::Timeout { .. } => HttpErrorKind::Timeout,
            Self::Status { status, .. } => match *status {
                401 => HttpErrorKind::Unauthorized,
                403 => HttpErrorKind::Forbidden,
                408 | 429 | 500..=599 => HttpErrorKind::Transient,
                _ => HttpErrorKind::Fatal,
            },
            Self::Redirect { .. } => HttpErrorKind::Redirect,
            Self::Decode { .. } => HttpErrorKind::Decode,
            Self::Exhausted { last, .. } => last.kind(),
        }
    }

    /// Whether a later, separate attempt could succeed (transient statuses, transport
    /// failures, timeouts). `Exhausted` answers for its last failure.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            HttpErrorKind::Transient | HttpErrorKind::Transport | HttpErrorKind::Timeout
        )
    }

    /// The server's `Retry-After` hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            Self::Exhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The error response body (first 64 KiB), if the server answered.
    pub fn body(&self) -> Option<&Bytes> {
        match self {
            Self::Status { body, .. } => Some(&body.0),
            Self::Exhausted { last, .. } => last.body(),
            _ => None,
        }
    }

    /// The auth error behind an [`HttpErrorKind::Auth`] failure.
    pub fn auth_error(&self) -> Option<&AuthError> {
        match self {
            Self::Auth { source, .. } => Some(source),
            Self::Exhausted { last, .. } => last.auth_error(),
            _ => None,
        }
    }

    /// The local scope refusal behind an [`HttpErrorKind::ScopeDenied`] failure.
    pub fn scope_denied(&self) -> Option<&ScopeDenied> {
        match self {
            Self::ScopeDenied { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True when the grant is gone (`invalid_grant`, revoked) and a person must
    /// authorize again: the job runner stops cleanly instead of retrying.
    pub fn needs_reauthorization(&self) -> bool {
        self.auth_error()
            .is_some_and(|e| e.kind() == crate::auth::AuthErrorKind::NeedsReauthorization)
    }
}
