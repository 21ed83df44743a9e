//! [`Authorizer`]: obtains, caches, refreshes and revokes tokens for one FHIR server,
//! audits every step, and is both the transport's [`BearerSource`] and its
//! [`RequestGuard`].
//!
//! ```text
//!  bearer()/invalidate()
//!     └─ slot(key) ── async lock (one refresh in flight per key) ──┐
//!          fresh and not the rejected token → return it            │
//!          else grant: client_credentials (backend, secret)        │
//!                  or refresh_token (App Launch)                   │
//!          invalid_grant / no refresh token → NeedsReauthorization │
//!          audit Grant | Refresh | Failure (never the token) ──────┘
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};
use url::Url;
use uuid::Uuid;

use super::audit::{AuditSink, AuthEvent, AuthEventKind, AuthOutcome};
use super::client_credentials::assertion_fields;
use super::client_secret::{basic_header, post_fields};
use super::config::{AuthConfig, AuthFlow, ClientAuthConfig};
use super::discovery::{discover, SmartConfiguration};
use super::error::{sanitize_server_text, AuthError, AuthErrorKind, ScopeDenied};
use super::keys::{replace_private, SigningKey};
use super::scopes::{ExportTypes, ScopeSet};
use super::token::{CacheKey, LaunchContext, Slot, Token, TokenCache, TokenResponse};
use crate::http::{
    redact_url, BearerSource, Clock, HttpClient, Interaction, Request, RequestDescr, RequestGuard,
    Secret, TokenPolicy,
};

/// Client authentication, resolved (keys loaded).
pub(crate) enum ClientAuth {
    PrivateKeyJwt {
        key: Arc<SigningKey>,
        jku: Option<Url>,
    },
    Basic(Secret),
    Post(Secret),
    Public,
}

impl ClientAuth {
    pub(crate) fn load(cfg: &ClientAuthConfig) -> Result<Self, AuthError> {
        Ok(match cfg {
            ClientAuthConfig::PrivateKeyJwt { key_path, kid, jku } => Self::PrivateKeyJwt {
                key: Arc::new(SigningKey::from_file(key_path, kid.as_deref())?),
                jku: jku.clone(),
            },
            ClientAuthConfig::ClientSecretBasic { secret } => Self::Basic(secret.clone()),
            ClientAuthConfig::ClientSecretPost { secret } => Self::Post(secret.clone()),
            ClientAuthConfig::Public => Self::Public,
            #[allow(unreachable_patterns)]
            _ => {
                return Err(AuthError::Config {
                    reason: "unsupported client authentication".into(),
                })
            }
        })
    }

    fn method_name(&self) -> &'static str {
        match self {
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
            Self::Basic(_) => "client_secret_basic",
            Self::Post(_) => "client_secret_post",
            Self::Public => "none",
        }
    }
}

/// How an expired token is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A new `client_credentials` grant (no refresh tokens in backend services).
    ClientCredentials,
    /// The refresh-token grant (App Launch).
    RefreshToken,
}

/// The refresh token file written when `refresh_token_path` is set.
#[derive(Debug, Serialize, Deserialize)]
struct StoredGrant {
    client_id: String,
    #[serde(with = "super::serde_util::url")]
    token_endpoint: Url,
    #[serde(with = "super::serde_util::url")]
    fhir_base: Url,
    scopes: String,
    context: LaunchContext,
    /// Written in clear on purpose (this file is the credential store, mode 0600).
    refresh_token: String,
}

struct Inner {
    http: HttpClient,
    clock: Arc<dyn Clock>,
    cfg: AuthConfig,
    endpoints: SmartConfiguration,
    token_url: Url,
    client_auth: ClientAuth,
    requested: ScopeSet,
    mode: Mode,
    audit: Arc<dyn AuditSink>,
    cache: TokenCache,
    current: Mutex<Option<CacheKey>>,
    /// Scopes of the latest grant or refresh; the guard reads it without waiting for an
    /// in-flight refresh.
    granted: Mutex<Option<ScopeSet>>,
}

/// Tokens for one FHIR server and client. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("client_id", &self.inner.cfg.client_id)
            .field("fhir_base", &redact_url(&self.inner.cfg.fhir_base))
            .field("method", &self.inner.client_auth.method_name())
            .finish_non_exhaustive()
    }
}

/// A bearer source bound to one launch context (see [`Authorizer::bearer_for`]).
#[derive(Debug, Clone)]
pub struct ContextBearer {
    auth: Authorizer,
    key: CacheKey,
}

/// Endpoints from configuration or discovery.
pub(crate) async fn resolve_endpoints(
    http: &HttpClient,
    cfg: &AuthConfig,
) -> Result<(SmartConfiguration, Url), AuthError> {
    let endpoints = match discover(http, &cfg.fhir_base).await {
        Ok(e) => e,
        Err(e) if cfg.token_endpoint.is_some() => {
            debug!(error = %e, "discovery failed; using the configured token endpoint");
            SmartConfiguration::default()
        }
        Err(e) => return Err(e),
    };
    let token_url = cfg
        .token_endpoint
        .clone()
        .or_else(|| endpoints.token_endpoint.clone())
        .ok_or_else(|| AuthError::Discovery {
            url: redact_url(&cfg.fhir_base),
            reason: "no token_endpoint advertised".into(),
        })?;
    Ok((endpoints, token_url))
}

impl Authorizer {
    /// Discovers endpoints and prepares a client for backend services
    /// (`private_key_jwt`) or a confidential client (`client_secret_*`); tokens are
    /// obtained on first use. With `client_auth: public` (App Launch), a refresh token
    /// stored at `refresh_token_path` is required; otherwise use [`super::login`] and
    /// [`Authorizer::from_grant`].
    ///
    /// `http` must be a client without bearer source (token calls carry no token).
    pub async fn build(
        cfg: &AuthConfig,
        http: &HttpClient,
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self, AuthError> {
        let client_auth = ClientAuth::load(&cfg.client_auth)?;
        let (endpoints, token_url) = resolve_endpoints(http, cfg).await?;
        let stored = match &cfg.refresh_token_path {
            Some(p) if p.exists() => Some(read_stored(p)?),
            _ => None,
        };
        let app_launch = match cfg.flow {
            AuthFlow::BackendServices => false,
            AuthFlow::AppLaunch => true,
            AuthFlow::Auto => stored.is_some() || matches!(client_auth, ClientAuth::Public),
        };
        if cfg.flow == AuthFlow::BackendServices && matches!(client_auth, ClientAuth::Public) {
            return Err(AuthError::Config {
                reason: "backend services need private_key_jwt or a client secret".into(),
            });
        }
        let mode = if app_launch {
            Mode::RefreshToken
        } else {
            Mode::ClientCredentials
        };
        if !endpoints.supports_auth_method(client_auth.method_name()) {
            warn!(
                method = client_auth.method_name(),
                "token endpoint does not advertise this client authentication method"
            );
        }
        let this = Self::assemble(cfg, http, audit, endpoints, token_url, client_auth, mode);
        match (mode, stored) {
            (Mode::ClientCredentials, _) => {
                let key = this.key_for(&LaunchContext::default());
                *this.current_lock() = Some(key);
            }
            (Mode::RefreshToken, Some(st)) => {
                // An expired placeholder: the first bearer() uses the refresh token.
                let token = Token {
                    access: Secret::new(String::new()),
                    expires_at: Some(time::OffsetDateTime::UNIX_EPOCH),
                    refresh: Some(Secret::new(st.refresh_token)),
                    granted: ScopeSet::parse(&st.scopes),
                    context: st.context.clone(),
                    event_id: Uuid::nil(),
                };
                this.install(&st.context, token).await;
            }
            (Mode::RefreshToken, None) => {
                return Err(AuthError::NeedsReauthorization {
                    reason: "no stored grant; run `fhirhose auth login`".into(),
                })
            }
        }
        Ok(this)
    }

    pub(crate) fn assemble(
        cfg: &AuthConfig,
        http: &HttpClient,
        audit: Arc<dyn AuditSink>,
        endpoints: SmartConfiguration,
        token_url: Url,
        client_auth: ClientAuth,
        mode: Mode,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock: http.clock().clone(),
                http: http.clone(),
                cfg: cfg.clone(),
                endpoints,
                token_url,
                client_auth,
                requested: ScopeSet::parse(&cfg.scopes),
                mode,
                audit,
                cache: TokenCache::default(),
                current: Mutex::new(None),
                granted: Mutex::new(None),
            }),
        }
    }

    /// Continues an App Launch grant from [`super::login`]: refreshes with its refresh
    /// token when it expires.
    pub async fn from_grant(
        cfg: &AuthConfig,
        http: &HttpClient,
        audit: Arc<dyn AuditSink>,
        grant: &super::launch::Grant,
    ) -> Result<Self, AuthError> {
        let client_auth = ClientAuth::load(&cfg.client_auth)?;
        let this = Self::assemble(
            cfg,
            http,
            audit,
            grant.endpoints.clone(),
            grant.token_endpoint.clone(),
            client_auth,
            Mode::RefreshToken,
        );
        this.install(&grant.token.context, (*grant.token).clone())
            .await;
        Ok(this)
    }

    async fn install(&self, ctx: &LaunchContext, token: Token) {
        let key = self.key_for(ctx);
        let slot = self.inner.cache.slot(&key);
        *self.granted_lock() = Some(token.granted.clone());
        *slot.lock().await = Some(Arc::new(token));
        *self.current_lock() = Some(key);
    }

    fn current_lock(&self) -> std::sync::MutexGuard<'_, Option<CacheKey>> {
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key_for(&self, ctx: &LaunchContext) -> CacheKey {
        CacheKey::new(
            &self.inner.cfg.client_id,
            &self.inner.token_url,
            ctx,
            &self.inner.requested,
        )
    }

    /// The discovered SMART configuration.
    pub fn endpoints(&self) -> &SmartConfiguration {
        &self.inner.endpoints
    }

    /// The token endpoint in use.
    pub fn token_endpoint(&self) -> &Url {
        &self.inner.token_url
    }

    /// The scopes asked for.
    pub fn requested_scopes(&self) -> &ScopeSet {
        &self.inner.requested
    }

    /// A bearer source that only ever returns the token of `ctx`'s grant.
    pub fn bearer_for(&self, ctx: &LaunchContext) -> ContextBearer {
        ContextBearer {
            auth: self.clone(),
            key: self.key_for(ctx),
        }
    }

    /// A transport client that attaches this authorizer's tokens to the FHIR server's
    /// origin and checks every request against the granted scopes first.
    pub fn authorized_client(&self) -> HttpClient {
        let me = Arc::new(self.clone());
        self.inner
            .http
            .with_bearer(self.inner.cfg.fhir_base.clone(), me.clone())
            .with_guard(me)
    }

    fn current_key(&self) -> Result<CacheKey, AuthError> {
        self.current_lock()
            .clone()
            .ok_or_else(|| AuthError::NeedsReauthorization {
                reason: "no grant is available".into(),
            })
    }

    /// The current token (obtaining or refreshing it first when needed).
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let key = self.current_key()?;
        self.token_for_key(&key, None).await
    }

    /// The scopes the current grant holds (the requested ones before the first grant).
    pub fn granted_scopes(&self) -> ScopeSet {
        self.granted_lock()
            .clone()
            .unwrap_or_else(|| self.inner.requested.clone())
    }

    /// Requested scopes the server did not grant (empty before the first grant).
    pub fn missing_scopes(&self) -> Vec<String> {
        self.granted_lock()
            .as_ref()
            .map(|g| self.inner.requested.missing_from(g))
            .unwrap_or_default()
    }

    fn granted_lock(&self) -> std::sync::MutexGuard<'_, Option<ScopeSet>> {
        self.inner.granted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `_type` an export may request under the current grant.
    pub fn allowed_export_types(&self) -> ExportTypes {
        self.granted_scopes().allowed_export_types()
    }

    /// The cached token for `key` without waiting (None while a refresh is running).
    fn token_now(&self, key: &CacheKey) -> Option<Arc<Token>> {
        let slot = self.inner.cache.existing(key)?;
        let guard = slot.try_lock().ok()?;
        guard.clone().filter(|t| !t.access.expose().is_empty())
    }

    async fn token_for_key(
        &self,
        key: &CacheKey,
        rejected: Option<&Secret>,
    ) -> Result<Arc<Token>, AuthError> {
        let slot: Slot =
            match self.inner.mode {
                Mode::ClientCredentials => self.inner.cache.slot(key),
                Mode::RefreshToken => self.inner.cache.existing(key).ok_or_else(|| {
                    AuthError::NeedsReauthorization {
                        reason: "no grant for this launch context".into(),
                    }
                })?,
            };
        let mut guard = slot.lock().await;
        let now = self.inner.clock.now_utc();
        if let Some(t) = guard.as_ref() {
            let was_rejected = rejected.is_some_and(|r| *r == t.access);
            if !was_rejected && !t.needs_refresh(now, self.inner.cfg.refresh_margin) {
                return Ok(t.clone());
            }
        }
        let previous = guard.clone();
        let result = match self.inner.mode {
            Mode::ClientCredentials => {
                let kind = if previous.is_some() {
                    AuthEventKind::Refresh
                } else {
                    AuthEventKind::Grant
                };
                self.client_credentials(kind).await
            }
            Mode::RefreshToken => self.refresh(previous.as_deref()).await,
        };
        match result {
            Ok(t) => {
                let t = Arc::new(t);
                *guard = Some(t.clone());
                Ok(t)
            }
            Err(e) => {
                if e.kind() == AuthErrorKind::NeedsReauthorization {
                    *guard = None;
                    self.forget_stored();
                }
                Err(e)
            }
        }
    }

    async fn client_credentials(&self, kind: AuthEventKind) -> Result<Token, AuthError> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !self.inner.requested.is_empty() {
            form.push(("scope", self.inner.requested.to_string()));
        }
        let op = if kind == AuthEventKind::Grant {
            "token"
        } else {
            "refresh"
        };
        let resp = self.token_call(op, form, kind).await?;
        self.accept(resp, kind, None)
    }

    async fn refresh(&self, previous: Option<&Token>) -> Result<Token, AuthError> {
        let Some(prev) = previous else {
            return Err(self.fail(
                AuthEventKind::Failure,
                AuthError::NeedsReauthorization {
                    reason: "no grant for this launch context".into(),
                },
            ));
        };
        let Some(refresh) = prev.refresh.clone() else {
            return Err(self.fail(
                AuthEventKind::Refresh,
                AuthError::NeedsReauthorization {
                    reason: "the token expired and the grant has no refresh token".into(),
                },
            ));
        };
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.expose().to_owned()),
        ];
        let resp = self
            .token_call("refresh", form, AuthEventKind::Refresh)
            .await?;
        self.accept(resp, AuthEventKind::Refresh, Some(prev))
    }

    /// Turns a token response into a [`Token`], checks the launch context, audits it
    /// and persists the refresh token when configured.
    pub(crate) fn accept(
        &self,
        mut resp: TokenResponse,
        kind: AuthEventKind,
        previous: Option<&Token>,
    ) -> Result<Token, AuthError> {
        if let Some(prev) = previous {
            let changed = |a: &Option<String>, b: &Option<String>| b.is_some() && a != b;
            if changed(&prev.context.patient, &resp.context.patient)
                || changed(&prev.context.encounter, &resp.context.encounter)
                || changed(&prev.context.fhir_user, &resp.context.fhir_user)
            {
                return Err(self.fail(
                    kind,
                    AuthError::NeedsReauthorization {
                        reason: "the launch context changed on refresh".into(),
                    },
                ));
            }
            resp.context = prev.context.clone();
            if resp.refresh.is_none() {
                resp.refresh = prev.refresh.clone();
            }
        }
        let granted = resp
            .scope
            .as_deref()
            .map(ScopeSet::parse)
            .unwrap_or_else(|| self.inner.requested.clone());
        let missing = self.inner.requested.missing_from(&granted);
        let now = self.inner.clock.now_utc();
        let expires_at = resp.expires_in.map(|d| now + d);
        let mut ev = self.event(
            kind,
            if missing.is_empty() {
                AuthOutcome::Success
            } else {
                AuthOutcome::Partial
            },
        );
        ev.grant_type = self.grant_type(kind);
        ev.granted_scopes = granted.scopes().map(str::to_owned).collect();
        ev.missing_scopes = missing.clone();
        ev.patient = resp.context.patient.clone();
        ev.encounter = resp.context.encounter.clone();
        ev.fhir_user = resp.context.fhir_user.clone();
        ev.expires_at = expires_at;
        self.inner.audit.record(&ev)?;
        fhirhose_metrics::catalogue::TOKEN_REQUESTS.inc(&[
            &fhirhose_metrics::default_source(),
            if missing.is_empty() {
                "success"
            } else {
                "partial"
            },
        ]);
        if !missing.is_empty() {
            warn!(client_id = %loggable_client_id(&self.inner.cfg.client_id), missing = %missing.join(" "), "server granted fewer scopes than requested");
        }
        info!(
            client_id = %loggable_client_id(&self.inner.cfg.client_id),
            kind = ?kind,
            expires_in_s = resp.expires_in.map(|d| d.as_secs()),
            event_id = %ev.id,
            "access token obtained"
        );
        *self.granted_lock() = Some(granted.clone());
        let token = Token {
            access: resp.access,
            expires_at,
            refresh: resp.refresh,
            granted,
            context: resp.context,
            event_id: ev.id,
        };
        self.persist(&token)?;
        Ok(token)
    }

    fn persist(&self, token: &Token) -> Result<(), AuthError> {
        let (Some(path), Some(refresh)) = (&self.inner.cfg.refresh_token_path, &token.refresh)
        else {
            return Ok(());
        };
        let stored = StoredGrant {
            client_id: self.inner.cfg.client_id.clone(),
            token_endpoint: self.inner.token_url.clone(),
            fhir_base: self.inner.cfg.fhir_base.clone(),
            scopes: token.granted.to_string(),
            context: token.context.clone(),
            refresh_token: refresh.expose().to_owned(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| AuthError::Config {
            reason: format!("cannot serialize the stored grant: {e}"),
        })?;
        replace_private(path, &bytes)
    }

    fn forget_stored(&self) {
        if let Some(p) = &self.inner.cfg.refresh_token_path {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(path = %p.display(), error = %e, "cannot delete the stored refresh token");
                }
            }
        }
    }

    pub(crate) fn event(&self, kind: AuthEventKind, outcome: AuthOutcome) -> AuthEvent {
        let mut ev = AuthEvent::new(kind, self.inner.clock.now_utc(), outcome);
        ev.client_id = self.inner.cfg.client_id.clone();
        ev.issuer = redact_url(&self.inner.cfg.fhir_base);
        ev.aud = redact_url(&self.inner.token_url);
        ev.requested_scopes = self.inner.requested.scopes().map(str::to_owned).collect();
        ev
    }

    /// The OAuth grant type a token request of `kind` uses (for audit events).
    fn grant_type(&self, kind: AuthEventKind) -> Option<String> {
        let g = match (self.inner.mode, kind) {
            (Mode::ClientCredentials, AuthEventKind::Grant | AuthEventKind::Refresh) => {
                "client_credentials"
            }
            (Mode::RefreshToken, AuthEventKind::Grant) => "authorization_code",
            (Mode::RefreshToken, AuthEventKind::Refresh) => "refresh_token",
            _ => return None,
        };
        Some(g.to_owned())
    }

    /// Audits a failure and returns the error (the audit error wins if recording fails).
    pub(crate) fn fail(&self, kind: AuthEventKind, err: AuthError) -> AuthError {
        let grant_type = self.grant_type(kind);
        let kind = if kind == AuthEventKind::Revocation {
            kind
        } else {
            AuthEventKind::Failure
        };
        let mut ev = self.event(kind, AuthOutcome::Failure);
        ev.grant_type = grant_type;
        ev.error_class = Some(err.class());
        if kind != AuthEventKind::Revocation {
            fhirhose_metrics::catalogue::TOKEN_REQUESTS
                .inc(&[&fhirhose_metrics::default_source(), "failure"]);
        }
        warn!(client_id = %loggable_client_id(&self.inner.cfg.client_id), error_class = %err.class(), error = %err, "authorization failed");
        match self.inner.audit.record(&ev) {
            Ok(()) => err,
            Err(a) => AuthError::Audit(a),
        }
    }

    /// Calls the token endpoint with client authentication added.
    pub(crate) async fn token_call(
        &self,
        operation: &'static str,
        mut form: Vec<(&'static str, String)>,
        kind: AuthEventKind,
    ) -> Result<TokenResponse, AuthError> {
        let url = self.inner.token_url.clone();
        let client_id = &self.inner.cfg.client_id;
        let mut basic = None;
        match &self.inner.client_auth {
            ClientAuth::PrivateKeyJwt { key, jku } => {
                let fields = assertion_fields(
                    key,
                    client_id,
                    &url,
                    jku.as_ref(),
                    self.inner.clock.now_utc(),
                    self.inner.cfg.assertion_lifetime,
                )?;
                form.extend(fields);
            }
            ClientAuth::Basic(secret) => {
                basic = Some(
                    basic_header(client_id, secret).ok_or_else(|| AuthError::Config {
                        reason: "the client id or secret cannot be sent in a header".into(),
                    })?,
                );
            }
            ClientAuth::Post(secret) => form.extend(post_fields(client_id, secret)),
            ClientAuth::Public => form.push(("client_id", client_id.clone())),
        }
        let mut req = Request::post(url.clone())
            .form(&form)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .token(TokenPolicy::Never)
            .interaction(Interaction::Other);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        debug!(operation, url = %redact_url(&url), method = self.inner.client_auth.method_name(), "calling token endpoint");
        let resp = match self.inner.http.send(req).await {
            Ok(r) => r,
            Err(e) => {
                let oauth = e
                    .body()
                    .filter(|_| matches!(e.status(), Some(400..=499)))
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|v| {
                        let code = v.get("error")?.as_str()?.to_owned();
                        let desc = v
                            .get("error_description")
                            .and_then(Value::as_str)
                            .map(sanitize_server_text);
                        Some((code, desc))
                    });
                let err = match oauth {
                    Some((code, _)) if code == "invalid_grant" && operation == "refresh" => {
                        AuthError::NeedsReauthorization {
                            reason: "the refresh token was rejected (invalid_grant)".into(),
                        }
                    }
                    Some((code, description)) => AuthError::TokenEndpoint {
                        operation,
                        url: redact_url(&url),
                        status: e.status().unwrap_or(0),
                        error: code,
                        description,
                    },
                    None => AuthError::Http {
                        operation,
                        source: Box::new(e),
                    },
                };
                return Err(self.fail(kind, err));
            }
        };
        let v: Value = match resp.json().await {
            Ok(v) => v,
            Err(e) => {
                return Err(self.fail(
                    kind,
                    AuthError::Http {
                        operation,
                        source: Box::new(e),
                    },
                ))
            }
        };
        TokenResponse::parse(&v).map_err(|reason| {
            self.fail(
                kind,
                AuthError::InvalidTokenResponse {
                    url: redact_url(&url),
                    reason,
                },
            )
        })
    }

    /// Revokes the stored tokens at the revocation endpoint (when advertised), then
    /// deletes them locally (cache and refresh-token file). Audited.
    pub async fn revoke(&self) -> Result<(), AuthError> {
        let slots = self.inner.cache.all();
        let mut first_err = None;
        let mut revoked_remotely = 0u32;
        for slot in slots {
            let token = slot.lock().await.take();
            let Some(token) = token else { continue };
            let Some(endpoint) = self.inner.endpoints.revocation_endpoint.clone() else {
                continue;
            };
            let mut candidates = Vec::new();
            if let Some(r) = &token.refresh {
                candidates.push((r.clone(), "refresh_token"));
            }
            if !token.access.expose().is_empty() {
                candidates.push((token.access.clone(), "access_token"));
            }
            for (secret, hint) in candidates {
                match self.revoke_one(&endpoint, &secret, hint).await {
                    Ok(()) => revoked_remotely += 1,
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                }
            }
        }
        self.inner.cache.clear();
        *self.current_lock() = None;
        *self.granted_lock() = None;
        if let Some(p) = &self.inner.cfg.refresh_token_path {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_err.get_or_insert(AuthError::Io {
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        let mut ev = self.event(
            AuthEventKind::Revocation,
            if first_err.is_none() {
                AuthOutcome::Success
            } else {
                AuthOutcome::Failure
            },
        );
        ev.detail = Some(if self.inner.endpoints.revocation_endpoint.is_some() {
            format!("{revoked_remotely} token(s) revoked at the server; local copies deleted")
        } else {
            "no revocation endpoint advertised; local copies deleted".into()
        });
        ev.error_class = first_err.as_ref().map(AuthError::class);
        self.inner.audit.record(&ev)?;
        info!(client_id = %loggable_client_id(&self.inner.cfg.client_id), revoked_remotely, "tokens revoked");
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn revoke_one(
        &self,
        endpoint: &Url,
        token: &Secret,
        hint: &str,
    ) -> Result<(), AuthError> {
        let mut form = vec![
            ("token", token.expose().to_owned()),
            ("token_type_hint", hint.to_owned()),
        ];
        let mut basic = None;
        match &self.inner.client_auth {
            ClientAuth::PrivateKeyJwt { key, jku } => form.extend(assertion_fields(
                key,
                &self.inner.cfg.client_id,
                endpoint,
                jku.as_ref(),
                self.inner.clock.now_utc(),
                self.inner.cfg.assertion_lifetime,
            )?),
            ClientAuth::Basic(s) => basic = basic_header(&self.inner.cfg.client_id, s),
            ClientAuth::Post(s) => form.extend(post_fields(&self.inner.cfg.client_id, s)),
            ClientAuth::Public => form.push(("client_id", self.inner.cfg.client_id.clone())),
        }
        let mut req = Request::post(endpoint.clone())
            .form(&form)
            .token(TokenPolicy::Never)
            .interaction(Interaction::Other);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        self.inner
            .http
            .send(req)
            .await
            .map(drop)
            .map_err(|e| AuthError::Http {
                operation: "revoke",
                source: Box::new(e),
            })
    }

    fn audit_unauthorized(&self, key: &CacheKey) {
        let mut ev = self.event(AuthEventKind::Unauthorized, AuthOutcome::Failure);
        ev.error_class = Some("http_401".into());
        if let Some(t) = self.token_now(key) {
            ev.patient = t.context.patient.clone();
            ev.encounter = t.context.encounter.clone();
            ev.fhir_user = t.context.fhir_user.clone();
            ev.granted_scopes = t.granted.scopes().map(str::to_owned).collect();
            ev.expires_at = t.expires_at;
        }
        if let Err(e) = self.inner.audit.record(&ev) {
            warn!(error = %e, "cannot record the 401 audit event");
        }
    }
}

/// Longest client id logged verbatim.
const CLIENT_ID_LOG_MAX: usize = 64;

/// The client id as it appears in logs. Ordinary ids are short and logged as they are; some
/// servers issue the client id as a signed token (the SMART reference bulk-data-server's
/// `/auth/register` returns a JWT carrying the client's JWKS and settings), which would
/// flood every auth log line, so a long id is logged as its first characters, its length
/// and a SHA-256 prefix (enough to tell two registrations apart).
pub(crate) fn loggable_client_id(id: &str) -> String {
    use sha2::{Digest, Sha256};
    if id.chars().count() <= CLIENT_ID_LOG_MAX {
        return id.to_owned();
    }
    let head: String = id.chars().take(12).collect();
    let digest = Sha256::digest(id.as_bytes());
    format!(
        "{head}…({} chars, sha256:{})",
        id.chars().count(),
        hex::encode(&digest[..6])
    )
}

fn read_stored(p: &PathBuf) -> Result<StoredGrant, AuthError> {
    let bytes = std::fs::read(p).map_err(|source| AuthError::Io {
        path: p.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| AuthError::Key {
        path: p.clone(),
        reason: format!("not a stored grant: {e}"),
    })
}

impl BearerSource for Authorizer {
    fn bearer(&self) -> BoxFuture<'_, Result<Secret, AuthError>> {
        Box::pin(async move { Ok(self.token().await?.access.clone()) })
    }

    fn invalidate(&self, rejected: &Secret) -> BoxFuture<'_, Result<Secret, AuthError>> {
        let rejected = rejected.clone();
        Box::pin(async move {
            let key = self.current_key()?;
            self.audit_unauthorized(&key);
            Ok(self
                .token_for_key(&key, Some(&rejected))
                .await?
                .access
                .clone())
        })
    }
}

impl BearerSource for ContextBearer {
    fn bearer(&self) -> BoxFuture<'_, Result<Secret, AuthError>> {
        Box::pin(async move {
            Ok(self
                .auth
                .token_for_key(&self.key, None)
                .await?
                .access
                .clone())
        })
    }

    fn invalidate(&self, rejected: &Secret) -> BoxFuture<'_, Result<Secret, AuthError>> {
        let rejected = rejected.clone();
        Box::pin(async move {
            self.auth.audit_unauthorized(&self.key);
            Ok(self
                .auth
                .token_for_key(&self.key, Some(&rejected))
                .await?
                .access
                .clone())
        })
    }
}

impl RequestGuard for Authorizer {
    fn check(&self, req: &RequestDescr<'_>) -> Result<(), ScopeDenied> {
        let scopes = self.granted_scopes();
        scopes.check(req).inspect_err(|denied| {
            fhirhose_metrics::catalogue::SCOPE_DENIALS
                .inc(&[&fhirhose_metrics::default_source(), &denied.missing]);
            let mut ev = self.event(AuthEventKind::ScopeDenied, AuthOutcome::Denied);
            ev.granted_scopes = scopes.scopes().map(str::to_owned).collect();
            ev.error_class = Some(denied.missing.clone());
            ev.detail = Some(format!("{} ({})", denied.action, redact_url(req.url)));
            warn!(missing = %denied.missing, action = %denied.action, "request refused by scope policy");
            if let Err(e) = self.inner.audit.record(&ev) {
                warn!(error = %e, "cannot record the scope denial audit event");
            }
        })
    }
}

/// Remaining time of a token (for status output).
pub fn remaining(token: &Token, now: time::OffsetDateTime) -> Option<Duration> {
    token
        .expires_at
        .map(|e| Duration::try_from(e - now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod log_tests {
    use super::loggable_client_id;

    #[test]
    fn short_client_ids_are_logged_verbatim() {
        assert_eq!(loggable_client_id("my-app"), "my-app");
        let id64 = "a".repeat(64);
        assert_eq!(loggable_client_id(&id64), id64);
    }

    #[test]
    fn jwt_client_ids_are_shortened_and_distinguishable() {
        // Shaped like the registration token of the SMART reference bulk-data-server.
        let a = format!("eyJhbGciOiJIUzI1NiJ9.{}.sig-a", "e".repeat(500));
        let b = format!("eyJhbGciOiJIUzI1NiJ9.{}.sig-b", "e".repeat(500));
        let la = loggable_client_id(&a);
        assert!(la.starts_with("eyJhbGciOiJI…("), "{la}");
        assert!(la.contains(&format!("{} chars", a.len())), "{la}");
        assert!(la.len() < 80, "{la}");
        assert!(!la.contains("eeeeeeee"), "{la}");
        assert_ne!(la, loggable_client_id(&b));
    }
}
