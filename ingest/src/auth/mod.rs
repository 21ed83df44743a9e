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
mod token;

pub use audit::{
    AuditError, AuditSink, AuthEvent, AuthEventKind, AuthOutcome, JsonlAuditSink, MemoryAuditSink,
};
pub use authorizer::{remaining, Authorizer, ContextBearer};
pub use client_credentials::JWT_BEARER_ASSERTION_TYPE;
pub use config::{AuthConfig, ClientAuthConfig};
pub use discovery::{discover, SmartConfiguration};
pub use error::{AuthError, AuthErrorKind, ScopeDenied};
pub use jwt::{client_assertion, decode_unverified, sign_jws, MAX_ASSERTION_LIFETIME};
pub use keys::{generate_keys, verify_with_jwk, Alg, GeneratedKeys, SigningKey};
pub use launch::{begin_login, login, oauth_error, Grant, PendingLogin};
pub use pkce::{challenge_s256, random_state, Pkce};
pub use scopes::{ExportTypes, Interactions, ResourceScope, ScopeContext, ScopeSet};
pub use token::{CacheKey, LaunchContext, Token};
