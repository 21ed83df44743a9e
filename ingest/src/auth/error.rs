//! Authorization errors. `Display` never contains a token, secret, assertion, code or
//! verifier; URLs are redacted.

use std::path::PathBuf;

use crate::http::HttpError;

/// Coarse classes callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// Configuration is wrong (missing endpoint, unsupported method, bad key file).
    Config,
    /// The server could not be reached or answered with a transient failure.
    Transport,
    /// The authorization server refused the client (`invalid_client`, `unauthorized_client`,
    /// `invalid_scope`, ...). Retrying with the same configuration cannot help.
    Rejected,
    /// The grant is gone (`invalid_grant`, revoked, refresh token expired, no refresh
    /// token): a person must authorize again. Jobs stop cleanly on this.
    NeedsReauthorization,
    /// The authorization callback was wrong (state mismatch, error from the server).
    Callback,
    /// Writing the audit record failed.
    Audit,
}

/// An authorization error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Invalid configuration.
    #[error("invalid authorization configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Key material could not be read, parsed or written.
    #[error("key file {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SMART discovery failed.
    #[error("SMART discovery at {url} failed: {reason}")]
    Discovery {
        /// Redacted base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An HTTP call to an authorization endpoint failed.
    #[error("{operation} request failed")]
    Http {
        /// `token`, `refresh`, `revoke`, `discovery`.
        operation: &'static str,
        /// The transport error.
        #[source]
        source: Box<HttpError>,
    },
    /// The token endpoint answered with an OAuth error.
    #[error("token endpoint {url} refused the {operation} request: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenEndpoint {
        /// `token` or `refresh`.
        operation: &'static str,
        /// Redacted token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code.
        error: String,
        /// The OAuth `error_description`, if any.
        description: Option<String>,
    },
    /// The token response could not be understood.
    #[error("invalid token response from {url}: {reason}")]
    InvalidTokenResponse {
        /// Redacted token URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A person must authorize again.
    #[error("authorization must be renewed: {reason}")]
    NeedsReauthorization {
        /// Why (`invalid_grant`, revoked, no refresh token).
        reason: String,
    },
    /// The authorization redirect was unusable.
    #[error("authorization callback rejected: {reason}")]
    Callback {
        /// What is wrong.
        reason: String,
    },
    /// Writing an audit event failed.
    #[error("could not record the authorization audit event")]
    Audit(#[from] super::audit::AuditError),
}

impl AuthError {
    /// The class of this error.
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            Self::Config { .. } | Self::Key { .. } | Self::Io { .. } => AuthErrorKind::Config,
            Self::Discovery { .. } => AuthErrorKind::Config,
            Self::Http { source, .. } => {
                if source.is_retryable() {
                    AuthErrorKind::Transport
                } else {
                    AuthErrorKind::Rejected
                }
            }
            Self::TokenEndpoint { error, .. } => {
                if error == "invalid_grant" {
                    AuthErrorKind::NeedsReauthorization
                } else if error == "temporarily_unavailable" {
                    AuthErrorKind::Transport
                } else {
                    AuthErrorKind::Rejected
                }
            }
            Self::InvalidTokenResponse { .. } => AuthErrorKind::Rejected,
            Self::NeedsReauthorization { .. } => AuthErrorKind::NeedsReauthorization,
            Self::Callback { .. } => AuthErrorKind::Callback,
            Self::Audit(_) => AuthErrorKind::Audit,
        }
    }

    /// A short class label for audit records (`transport`, `invalid_grant`, ...).
    pub fn class(&self) -> String {
        match self {
            Self::TokenEndpoint { error, .. } => error.clone(),
            Self::Http { source, .. } => match source.status() {
                Some(s) => format!("http_{s}"),
                None => "transport".into(),
            },
            Self::NeedsReauthorization { .. } => "needs_reauthorization".into(),
            Self::Config { .. } | Self::Key { .. } | Self::Io { .. } => "config".into(),
            Self::Discovery { .. } => "discovery".into(),
            Self::InvalidTokenResponse { .. } => "invalid_token_response".into(),
            Self::Callback { .. } => "callback".into(),
            Self::Audit(_) => "audit".into(),
        }
    }
}

/// A request refused locally because the grant does not cover it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} is not covered by the granted scopes: requires {missing}")]
#[non_exhaustive]
pub struct ScopeDenied {
    /// The scope that would allow the request, e.g. `system/Observation.rs`.
    pub missing: String,
    /// What was attempted, e.g. `search Observation`.
    pub action: String,
}

impl ScopeDenied {
    /// A refusal naming the scope that would have allowed `action`.
    pub fn new(missing: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            missing: missing.into(),
            action: action.into(),
        }
    }
}

/// Makes server-provided text (an OAuth `error_description`) safe for messages and
/// logs: at most 200 characters, and any long token-like word (a JWT, an echoed
/// assertion or secret) replaced by `[redacted]`.
pub(crate) fn sanitize_server_text(s: &str) -> String {
    let tokenish = |w: &str| {
        w.len() >= 24
            && w.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
            })
    };
    let out: Vec<&str> = s
        .split_whitespace()
        .map(|w| if tokenish(w) { "[redacted]" } else { w })
        .collect();
    let mut out = out.join(" ");
    if out.chars().count() > 200 {
        out = out.chars().take(200).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_is_sanitized() {
        let jwt = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJjIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let s = sanitize_server_text(&format!("bad assertion {jwt} for client c1"));
        assert_eq!(s, "bad assertion [redacted] for client c1");
        assert!(sanitize_server_text(&"word ".repeat(100)).ends_with("..."));
    }

    #[test]
    fn display_is_a_sentence_without_secrets() {
        let e = AuthError::TokenEndpoint {
            operation: "token",
            url: "https://auth.example/token".into(),
            status: 400,
            error: "invalid_client".into(),
            description: Some("unknown kid".into()),
        };
        assert_eq!(
            e.to_string(),
            "token endpoint https://auth.example/token refused the token request: invalid_client (unknown kid)"
        );
        assert_eq!(e.kind(), AuthErrorKind::Rejected);
        let e = AuthError::TokenEndpoint {
            operation: "refresh",
            url: String::new(),
            status: 400,
            error: "invalid_grant".into(),
            description: None,
        };
        assert_eq!(e.kind(), AuthErrorKind::NeedsReauthorization);
        let d = ScopeDenied::new("system/Observation.rs", "$export of Observation");
        assert_eq!(
            d.to_string(),
            "$export of Observation is not covered by the granted scopes: requires system/Observation.rs"
        );
    }
}
