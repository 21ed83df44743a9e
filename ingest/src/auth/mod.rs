//! SMART on FHIR authorization: discovery, backend services (`private_key_jwt`
//! RS384/ES384), confidential clients (`client_secret_basic`/`_post`), App Launch
//! (authorization code + PKCE S256, standalone and EHR launch, refresh), a
//! context-bound token cache with single-flight refresh, scopes as policy, revocation
//! and audit.
//!
//! Wiring: build an [`Authorizer`] (or log in with [`login`] and continue with
//! [`Authorizer::from_grant`]), then use [`Authorizer::authorized_client`] for FHIR
//! calls: it attaches tokens only to the FHIR origin and refuses requests outside the
//! grant before they are sent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use fhirhose_ingest::auth::{AuthConfig, Authorizer, ClientAuthConfig, JsonlAuditSink};
//! use fhirhose_ingest::http::{HttpConfig, Interaction, Request, TokenPolicy};
//!
//! let http = HttpConfig::default().build()?;
//! let cfg = AuthConfig::new(
//!     "https://ehr.example/fhir/r4".parse()?,
//!     "my-backend-client",
//!     "system/Patient.rs system/Observation.rs",
//!     ClientAuthConfig::PrivateKeyJwt { key_path: "keys/private_key.pem".into(), kid: None, jku: None },
//! );
//! let audit = Arc::new(JsonlAuditSink::open("auth-audit.jsonl".as_ref())?);
//! let auth = Authorizer::build(&cfg, &http, audit).await?;
//! let token = auth.token().await?; // audited; token.event_id identifies the grant
//! let fhir = auth.authorized_client(); // bearer on the FHIR origin + scope guard
//! let kickoff = Request::get("https://ehr.example/fhir/r4/$export?_type=Patient".parse()?);
//! let resp = fhir.send(kickoff).await?;
//! // Output files: say what they are and whether the manifest requires the token.
//! let file = Request::get("https://files.example/1.ndjson".parse()?)
//!     .interaction(Interaction::FileDownload { resource_type: Some("Patient".into()) })
//!     .token(TokenPolicy::Never);
//! # let _ = (token, resp, file);
//! # Ok(()) }
//! ```
//!
//! Secrets (tokens, assertions, client secrets, private keys, codes, PKCE verifiers)
//! travel as [`crate::http::Secret`] and never reach a log line, an error message or an
//! audit event.

mod audit;
mod authorizer;
mod client_credentials;
mod client_secret;
mod config;
mod discovery;
mod error;
mod jwt;
mod keys;
mod launch;
mod pkce;
mod scopes;
mod serde_util;
mod sqlite_audit;
mod token;

pub use audit::{
    AuditError, AuditSink, AuthEvent, AuthEventKind, AuthOutcome, JsonlAuditSink, MemoryAuditSink,
};
pub use authorizer::{remaining, Authorizer, ContextBearer};
pub use client_credentials::JWT_BEARER_ASSERTION_TYPE;
pub use config::{AuthConfig, AuthFlow, ClientAuthConfig};
pub use discovery::{discover, SmartConfiguration};
pub use error::{AuthError, AuthErrorKind, ScopeDenied};
pub use jwt::{client_assertion, decode_unverified, sign_jws, MAX_ASSERTION_LIFETIME};
pub use keys::{generate_keys, verify_with_jwk, Alg, GeneratedKeys, SigningKey};
pub use launch::{begin_login, login, oauth_error, Grant, PendingLogin};
pub use pkce::{challenge_s256, random_state, Pkce};
pub use scopes::{ExportTypes, Interactions, ResourceScope, ScopeContext, ScopeSet};
pub use sqlite_audit::{audit_record, audit_time, AuditScope, SqliteAuditSink};
pub use token::{CacheKey, LaunchContext, Token};
