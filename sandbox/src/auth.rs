//! The authorization server: token, authorize, revoke and introspect endpoints.
//!
//! - `POST /auth/token`
//!   - `grant_type=client_credentials` (SMART Backend Services): the client authenticates
//!     with `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//!     and a `client_assertion` verified against its registered JWKS (see `jwt`), or with
//!     a secret (`client_secret_basic` or `client_secret_post`). A `jti` is refused while a
//!     previous assertion with the same `jti` has not expired.
//!   - `grant_type=authorization_code`: `code`, `redirect_uri`, `code_verifier` (PKCE S256)
//!     and `client_id`; codes are single-use and live 60 s.
//!   - `grant_type=refresh_token`: refresh tokens are issued when `offline_access` or
//!     `online_access` was granted; the `invalid-grant-on-refresh` fault makes them fail.
//!
//! The granted scope is the intersection of the requested and registered scopes.
//! Errors are OAuth JSON (`{"error": ..., "error_description": ...}`): `invalid_client`
//! is 401, everything else 400.
//!
//! - `GET /auth/authorize`: App Launch. Validates `response_type=code`, the client and its
//!   `redirect_uri`, `aud` (must be the FHIR base URL), `state`, and PKCE
//!   (`code_challenge_method=S256`); auto-approves and redirects (302) with `code` and
//!   `state`. The launch context is the patient named by `launch` (EHR launch, when it is a
//!   patient id), else `SandboxConfig::launch_patient`, else the first patient.
//! - `GET /auth/jwks`: the public key of the RS256 `id_token`s issued when `openid` is
//!   granted (`iss` is the origin, `aud` the client, `sub`/`fhirUser` the user).
//! - `POST /auth/revoke`: RFC 7009; always 200.
//! - `POST /auth/introspect`: RFC 7662.

use std::collections::HashMap;
use std::time::Duration;

// tokio's Instant is std's unless a test pauses time, which then also expires tokens.
use tokio::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::jwt;
use crate::scopes;
use crate::server::{json_value, lock, random_hex, unix_now, Req, Shared};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Authorization codes are exchanged within seconds by real clients; one minute is the
/// upper bound RFC 6749 §4.1.2 recommends ("maximum ... of 10 minutes") tightened.
const CODE_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(crate) enum ClientKind {
    Jwks(Value),
    Secret(String),
    Public(String),
}

struct Client {
    kind: ClientKind,
    scopes: String,
}

pub(crate) struct TokenInfo {
    pub(crate) client_id: String,
    pub(crate) scope: String,
    pub(crate) patient: Option<String>,
    expires: Instant,
    exp_unix: i64,
    revoked: bool,
}

#[derive(Clone)]
struct Context {
    client_id: String,
    scope: String,
    patient: Option<String>,
    encounter: Option<String>,
    fhir_user: Option<String>,
}

struct Code {
    ctx: Context,
    redirect_uri: String,
    challenge: String,
    expires: Instant,
}

/// Clients, tokens, codes and seen `jti`s. No `Debug`: it holds secrets.
#[derive(Default)]
pub(crate) struct AuthState {
    clients: HashMap<String, Client>,
    tokens: HashMap<String, TokenInfo>,
    refresh: HashMap<String, Context>,
    codes: HashMap<String, Code>,
    jtis: HashMap<(String, String), i64>,
    /// Every credential issued or received (tokens, codes, verifiers, assertions,
    /// secrets), for tests that search logs for leaks. Bounded.
    pub(crate) seen: Vec<String>,
}

/// Most credentials remembered in [`AuthState::seen`].
const SEEN_LIMIT: usize = 10_000;

impl AuthState {
    pub(crate) fn register(&mut self, client_id: &str, kind: ClientKind, scopes: &str) {
        self.clients.insert(
            client_id.to_owned(),
            Client {
                kind,
                scopes: scopes.to_owned(),
            },
        );
    }

    pub(crate) fn saw(&mut self, secret: &str) {
        if !secret.is_empty() && self.seen.len() < SEEN_LIMIT {
            self.seen.push(secret.to_owned());
        }
    }

    pub(crate) fn revoke_all(&mut self) {
        for t in self.tokens.values_mut() {
            t.revoked = true;
        }
        self.refresh.clear();
    }

    pub(crate) fn lookup(&self, token: &str) -> Result<&TokenInfo, &'static str> {
        let info = self.tokens.get(token).ok_or("unknown access token")?;
        if info.revoked {
            return Err("access token revoked");
        }
        if Instant::now() >= info.expires {
            return Err("access token expired");
        }
        Ok(info)
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = json_value(
        status,
        &json!({"error": error, "error_description": description}),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn invalid_client(description: &str) -> Response {
    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

pub(crate) fn handle(sh: &Shared, r: &Req, rest: &str) -> Response {
    match (r.method.as_str(), rest) {
        ("POST", "token") => token(sh, r),
        ("GET", "jwks") => match &sh.id_token_key {
            Some(k) => json_value(StatusCode::OK, &jwt::id_token_jwks(k)),
            None => json_value(StatusCode::OK, &json!({"keys": []})),
        },
        ("GET", "authorize") => authorize(sh, &r.query),
        ("POST", "authorize") => authorize(sh, &r.form()),
        ("POST", "revoke") => {
            let form = r.form();
            if let Some((_, t)) = form.iter().find(|(k, _)| k == "token") {
                let mut auth = lock(&sh.auth);
                if let Some(info) = auth.tokens.get_mut(t) {
                    info.revoked = true;
                }
                auth.refresh.remove(t);
            }
            StatusCode::OK.into_response()
        }
        ("POST", "introspect") => {
            let form = r.form();
            let token = form
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.as_str());
            let auth = lock(&sh.auth);
            let body = match token.map(|t| auth.lookup(t)) {
                Some(Ok(info)) => json!({
                    "active": true,
                    "scope": info.scope,
                    "client_id": info.client_id,
                    "token_type": "Bearer",
                    "exp": info.exp_unix,
                    "patient": info.patient,
                }),
                _ => json!({"active": false}),
            };
            json_value(StatusCode::OK, &body)
        }
        _ => oauth_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "unknown authorization endpoint",
        ),
    }
}

/// The authenticated client: (id, confidential).
fn authenticate_client(
    sh: &Shared,
    r: &Req,
    form: &[(String, String)],
) -> Result<(String, bool), Response> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(kind) = get("client_assertion_type") {
        if kind != JWT_BEARER {
            return Err(invalid_client("unsupported client_assertion_type"));
        }
        let assertion =
            get("client_assertion").ok_or_else(|| invalid_client("missing client_assertion"))?;
        let client_id = get("client_id")
            .map(str::to_owned)
            .or_else(|| jwt::unverified_issuer(assertion))
            .ok_or_else(|| invalid_client("cannot tell which client this is (no iss)"))?;
        // Read before taking the auth lock (never hold both).
        let skew = lock(&sh.faults).spec.clock_skew_s;
        let mut auth = lock(&sh.auth);
        let jwks = match auth.clients.get(&client_id).map(|c| &c.kind) {
            Some(ClientKind::Jwks(jwks)) => jwks.clone(),
            _ => {
                return Err(invalid_client(
                    "unknown client or client not registered for private_key_jwt",
                ))
            }
        };
        let now = unix_now();
        let v = jwt::verify(assertion, &client_id, &jwks, &sh.token_url, now + skew)
            .map_err(|e| invalid_client(&e))?;
        auth.jtis.retain(|_, exp| *exp > now);
        if auth
            .jtis
            .contains_key(&(v.client_id.clone(), v.jti.clone()))
        {
            return Err(invalid_client(
                "jti has already been used (replayed assertion)",
            ));
        }
        auth.jtis.insert((v.client_id.clone(), v.jti), v.exp);
        return Ok((v.client_id, true));
    }
    let (id, secret) = if let Some(basic) = r.header("authorization").and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    }) {
        let decoded = STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        (dec(id), Some(dec(secret)))
    } else if let Some(id) = get("client_id") {
        (id.to_owned(), get("client_secret").map(str::to_owned))
    } else {
        return Err(invalid_client("no client authentication"));
    };
    let auth = lock(&sh.auth);
    match (auth.clients.get(&id).map(|c| &c.kind), secret) {
        (Some(ClientKind::Secret(s)), Some(given)) if *s == given => Ok((id, true)),
        (Some(ClientKind::Public(_)), None) => Ok((id, false)),
        _ => Err(invalid_client("unknown client or bad credentials")),
    }
}

fn token_lifetime(sh: &Shared) -> Duration {
    lock(&sh.faults)
        .spec
        .token_lifetime
        .unwrap_or(sh.cfg.token_lifetime)
}

/// Issues an access token (and a refresh token when `with_refresh`); returns the response.
fn issue(sh: &Shared, ctx: &Context, refresh: Option<String>, app_launch: bool) -> Response {
    let lifetime = token_lifetime(sh);
    let token = format!("sbx-at-{}", random_hex(24));
    let mut auth = lock(&sh.auth);
    auth.saw(&token);
    auth.tokens.insert(
        token.clone(),
        TokenInfo {
            client_id: ctx.client_id.clone(),
            scope: ctx.scope.clone(),
            patient: ctx.patient.clone(),
            expires: Instant::now() + lifetime,
            exp_unix: unix_now() + lifetime.as_secs() as i64,
            revoked: false,
        },
    );
    let mut body = Map::new();
    body.insert("access_token".into(), token.into());
    body.insert("token_type".into(), "bearer".into());
    body.insert("expires_in".into(), lifetime.as_secs().into());
    body.insert("scope".into(), ctx.scope.clone().into());
    if app_launch {
        if let Some(p) = &ctx.patient {
            body.insert("patient".into(), p.clone().into());
            body.insert("need_patient_banner".into(), true.into());
        }
        if let Some(e) = &ctx.encounter {
            body.insert("encounter".into(), e.clone().into());
        }
        if let Some(u) = &ctx.fhir_user {
            body.insert("fhirUser".into(), u.clone().into());
        }
        let granted: Vec<&str> = ctx.scope.split_whitespace().collect();
        if granted.contains(&"openid") {
            let now = unix_now();
            let mut claims = json!({
                "iss": sh.origin,
                "sub": ctx.fhir_user.as_deref().unwrap_or("sandbox-user"),
                "aud": ctx.client_id,
                "iat": now,
                "exp": now + lifetime.as_secs() as i64,
            });
            if let Some(u) = &ctx.fhir_user {
                claims["fhirUser"] = format!("{}/{u}", sh.base_url).into();
            }
            if let Some(id_token) = sh
                .id_token_key
                .as_ref()
                .and_then(|k| jwt::sign_rs256(k, &claims))
            {
                body.insert("id_token".into(), id_token.into());
            }
        }
        let refresh = refresh.or_else(|| {
            (granted.contains(&"offline_access") || granted.contains(&"online_access"))
                .then(|| format!("sbx-rt-{}", random_hex(24)))
        });
        if let Some(rt) = refresh {
            auth.saw(&rt);
            auth.refresh.insert(rt.clone(), ctx.clone());
            body.insert("refresh_token".into(), rt.into());
        }
    }
    let mut resp = json_value(StatusCode::OK, &Value::Object(body));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn token(sh: &Shared, r: &Req) -> Response {
    let form = r.form();
    {
        let mut auth = lock(&sh.auth);
        for (k, v) in &form {
            if matches!(
                k.as_str(),
                "client_assertion" | "code" | "code_verifier" | "refresh_token" | "client_secret"
            ) {
                auth.saw(v);
            }
        }
        if let Some(basic) = r.header("authorization") {
            auth.saw(basic.trim_start_matches("Basic ").trim());
        }
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let grant_type = get("grant_type").unwrap_or_default();
    match grant_type {
        "client_credentials" | "authorization_code" | "refresh_token" => {}
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            )
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "supported: client_credentials, authorization_code, refresh_token",
            )
        }
    }
    let (client_id, confidential) = match authenticate_client(sh, r, &form) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    match grant_type {
        "client_credentials" => {
            if !confidential {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "client_credentials needs a confidential client",
                );
            }
            let registered = lock(&sh.auth)
                .clients
                .get(&client_id)
                .map(|c| c.scopes.clone())
                .unwrap_or_default();
            let requested = get("scope").unwrap_or_default();
            let granted = scopes::grant(requested, &registered);
            if granted.is_empty() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "none of the requested scopes is registered for this client",
                );
            }
            let ctx = Context {
                client_id,
                scope: granted,
                patient: None,
                encounter: None,
                fhir_user: None,
            };
            issue(sh, &ctx, None, false)
        }
        "authorization_code" => {
            let Some(code) = get("code") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "missing code");
            };
            let Some(stored) = lock(&sh.auth).codes.remove(code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or already used code",
                );
            };
            if Instant::now() >= stored.expires {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "authorization code expired",
                );
            }
            if stored.ctx.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code was issued to another client",
                );
            }
            if get("redirect_uri") != Some(stored.redirect_uri.as_str()) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri does not match",
                );
            }
            let Some(verifier) = get("code_verifier") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "missing code_verifier (PKCE)",
                );
            };
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != stored.challenge {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            issue(sh, &stored.ctx, None, true)
        }
        _ => {
            if lock(&sh.faults).spec.invalid_grant_on_refresh {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token rejected (injected fault)",
                );
            }
            let Some(rt) = get("refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "missing refresh_token",
                );
            };
            let Some(mut ctx) = lock(&sh.auth).refresh.get(rt).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or revoked refresh token",
                );
            };
            if ctx.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token belongs to another client",
                );
            }
            if let Some(narrower) = get("scope") {
                ctx.scope = scopes::grant(narrower, &ctx.scope);
            }
            issue(sh, &ctx, Some(rt.to_owned()), true)
        }
    }
}

fn redirect(uri: &str, pairs: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(uri) {
        Ok(u) => u,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is not a URL",
            )
        }
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn authorize(sh: &Shared, params: &[(String, String)]) -> Response {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let client_id = get("client_id").unwrap_or_default();
    let redirect_uri = get("redirect_uri").unwrap_or_default();
    let registered = {
        let auth = lock(&sh.auth);
        match auth.clients.get(client_id) {
            Some(Client {
                kind: ClientKind::Public(uri),
                scopes,
            }) if uri == redirect_uri => scopes.clone(),
            // Never redirect to an unverified URI: answer here instead.
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "unknown client_id or redirect_uri not registered",
                )
            }
        }
    };
    let state = get("state").unwrap_or_default();
    let fail = |error: &str, description: &str| {
        redirect(
            redirect_uri,
            &[
                ("error", error),
                ("error_description", description),
                ("state", state),
            ],
        )
    };
    if get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    if state.is_empty() {
        return fail("invalid_request", "state is required");
    }
    if get("aud").map(|a| a.trim_end_matches('/')) != Some(sh.base_url.as_str()) {
        return fail("invalid_request", "aud must be the FHIR base URL");
    }
    let Some(challenge) = get("code_challenge").filter(|c| !c.is_empty()) else {
        return fail("invalid_request", "code_challenge is required (PKCE)");
    };
    if get("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let scope = scopes::grant(get("scope").unwrap_or_default(), &registered);
    let granted: Vec<&str> = scope.split_whitespace().collect();
    let launch = get("launch");
    let wants_patient = granted
        .iter()
        .any(|s| s.starts_with("launch") || s.starts_with("patient/"));
    let wants_encounter = launch.is_some() || granted.contains(&"launch/encounter");
    let store = sh.store();
    let patient = wants_patient
        .then(|| {
            launch
                .filter(|l| store.get("Patient", l).is_some())
                .map(str::to_owned)
                .or_else(|| sh.cfg.launch_patient.clone())
                .or_else(|| store.patient_ids().into_iter().next())
        })
        .flatten();
    let encounter = patient
        .as_deref()
        .filter(|_| wants_encounter)
        .and_then(|p| store.first_encounter_of(p));
    let fhir_user = (granted.contains(&"openid") && granted.contains(&"fhirUser"))
        .then(|| {
            store
                .first_practitioner()
                .map(|p| format!("Practitioner/{p}"))
        })
        .flatten();
    drop(store);
    let code = format!("sbx-code-{}", random_hex(16));
    lock(&sh.auth).saw(&code);
    lock(&sh.auth).codes.insert(
        code.clone(),
        Code {
            ctx: Context {
                client_id: client_id.to_owned(),
                scope,
                patient,
                encounter,
                fhir_user,
            },
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.to_owned(),
            expires: Instant::now() + CODE_LIFETIME,
        },
    );
    redirect(redirect_uri, &[("code", &code), ("state", state)])
}
