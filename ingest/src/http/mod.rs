//! The HTTP transport shared by discovery, token calls, bulk export, search paging and
//! file downloads.
//!
//! Contract:
//! * Redirects are followed here, never by reqwest, so credentials can be placed by rule:
//!   the bearer token goes only to the FHIR server's origin (or to a file URL whose
//!   manifest said `requiresAccessToken: true`) and never survives a cross-origin hop.
//! * Retries are classified in [`retry`](self) terms: 401 refreshes once and replays once;
//!   403 and other 4xx fail; 408/429/5xx, transport errors and (idempotent) timeouts are
//!   retried with the server's `Retry-After` winning over jittered backoff, bounded in
//!   attempts and elapsed time. Every retry logs `retrying request` with its reason.
//! * Every request carries an `X-Request-Id` (uuid v4), logged with it.
//! * Per origin: token-bucket rate limit, AIMD concurrency limit, `RateLimit-*` pauses.
//! * Logs and error messages carry URLs only through [`redact_url`]; tokens travel as
//!   [`Secret`]; error bodies are kept but never displayed.

mod client;
mod clock;
mod config;
mod error;
mod hooks;
mod limit;
mod redact;
mod retry;

pub use client::{HttpClient, Request, Response, TokenPolicy, REQUEST_ID_HEADER};
pub use clock::{Clock, ManualClock, TokioClock};
pub use config::HttpConfig;
pub use error::{ErrorBody, HttpError, HttpErrorKind, ERROR_BODY_LIMIT};
pub use hooks::{BearerSource, Interaction, RequestDescr, RequestGuard};
pub use limit::OriginLimits;
pub use redact::{redact_text, redact_url, Secret, REDACTED};
pub use retry::parse_retry_after;
