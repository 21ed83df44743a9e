//! HTTP plumbing: listeners, dispatch, fault application, the request log, bearer-token
//! checks, discovery documents, FHIR read and search.
//!
//! Each request goes through one pipeline, so every response (faulted or not) is logged:
//!
//! ```text
//! request ─► classify target ─► fault engine decides ─► [slow: sleep]
//!        ─► injected status? ──yes──► 429/5xx (+Retry-After)
//!                     │no
//!                     ▼
//!             route ─► handler ─► [reset/truncate body] ─► log (no tokens) ─► response
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::auth::{self, AuthState, ClientKind};
use crate::bulk;
use crate::faults::{Decision, FaultEngine, FaultKind, RetryAfter, Targets};
use crate::rng::fmt_instant_ms;
use crate::scopes::{self, Access, ResourceScope};
use crate::store::{parse_time_ms, Entry, Store};
use crate::{RequestLogEntry, RunningSandbox, SandboxConfig, SandboxError};

/// Bodies we accept (token forms, Parameters resources, `_search` forms) are small.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
/// The request log keeps the most recent entries only, so a long-running
/// `fhirhose sandbox` does not grow without bound (an entry is ~200 bytes).
const MAX_LOG_ENTRIES: usize = 100_000;
/// Hard cap on `_count`, like most servers.
const MAX_PAGE_SIZE: usize = 1000;
/// Query parameters whose values never reach the request log.
const REDACTED_PARAMS: &[&str] = &[
    "sig",
    "code",
    "code_verifier",
    "access_token",
    "token",
    "refresh_token",
    "client_secret",
    "client_assertion",
    "password",
];

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn now_instant() -> String {
    fmt_instant_ms(now_ms())
}

/// IMF-fixdate, the HTTP-date form (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn http_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// State shared by both listeners.
pub(crate) struct Shared {
    pub(crate) cfg: SandboxConfig,
    pub(crate) origin: String,
    pub(crate) base_url: String,
    pub(crate) token_url: String,
    pub(crate) storage_origin: String,
    /// Read-mostly; written only by `RunningSandbox::{touch_resources, delete_resource}`.
    /// Take one guard per request (no nested read locks: a queued writer would deadlock).
    pub(crate) store: RwLock<Store>,
    pub(crate) auth: Mutex<AuthState>,
    pub(crate) faults: Mutex<FaultEngine>,
    pub(crate) jobs: Mutex<HashMap<String, bulk::Job>>,
    pub(crate) log: Mutex<VecDeque<RequestLogEntry>>,
    /// File downloads currently being answered (for `max-concurrent-files`).
    pub(crate) files_in_flight: AtomicUsize,
    /// Key of the storage origin's URL signatures.
    pub(crate) url_key: String,
    /// `id_token` signing key (RS256).
    pub(crate) id_token_key: Option<rsa::RsaPrivateKey>,
}

impl fmt::Debug for Shared {
    // Deliberately omits the auth state: it holds tokens and secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("base_url", &self.base_url)
            .field("storage_origin", &self.storage_origin)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, client_id: &str, kind: ClientKind, scopes: &str) {
        lock(&self.auth).register(client_id, kind, scopes);
    }

    fn record(&self, r: &Req, origin: &'static str, status: StatusCode, fault: Option<String>) {
        let query = r.raw_query.as_ref().map(|_| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &r.query {
                if REDACTED_PARAMS.contains(&k.as_str()) {
                    ser.append_pair(k, "REDACTED");
                } else {
                    ser.append_pair(k, v);
                }
            }
            ser.finish()
        });
        let entry = RequestLogEntry {
            method: r.method.clone(),
            path: r.path.clone(),
            query,
            status: status.as_u16(),
            bearer_present: r.bearer().is_some(),
            origin,
            fault,
            time: SystemTime::now(),
        };
        tracing::debug!(
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            origin,
            fault = entry.fault.as_deref().unwrap_or(""),
            "sandbox request"
        );
        let mut log = lock(&self.log);
        if log.len() >= MAX_LOG_ENTRIES {
            log.pop_front();
        }
        log.push_back(entry);
    }
}

/// A buffered request.
#[derive(Debug)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) raw_query: Option<String>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn bearer(&self) -> Option<&str> {
        let h = self.header("authorization")?;
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// `application/x-www-form-urlencoded` body pairs.
    pub(crate) fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

pub(crate) fn fhir_json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.into(),
    )
        .into_response()
}

pub(crate) fn json_value(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// An OperationOutcome with one issue.
pub(crate) fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    let severity = if status.is_success() {
        "information"
    } else {
        "error"
    };
    let v = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    });
    fhir_json(status, v.to_string())
}

/// Who is calling and what they may do.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) client_id: Option<String>,
    pub(crate) scopes: Vec<ResourceScope>,
    pub(crate) patient: Option<String>,
    /// No token and `require_auth` off: everything is allowed.
    pub(crate) unrestricted: bool,
}

fn unauthorized(error: Option<&str>, description: &str) -> Response {
    let challenge = match error {
        Some(e) => format!(
            r#"Bearer realm="fhirhose-sandbox", error="{e}", error_description="{description}""#
        ),
        None => r#"Bearer realm="fhirhose-sandbox""#.to_owned(),
    };
    let mut resp = outcome(StatusCode::UNAUTHORIZED, "login", description);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Checks the bearer token of a FHIR request (and counts it for `revoke-after`).
pub(crate) fn authenticate(sh: &Shared, r: &Req) -> Result<Grant, Response> {
    let Some(token) = r.bearer() else {
        if sh.cfg.require_auth {
            return Err(unauthorized(None, "an access token is required"));
        }
        return Ok(Grant {
            client_id: None,
            scopes: Vec::new(),
            patient: None,
            unrestricted: true,
        });
    };
    {
        let mut f = lock(&sh.faults);
        f.authenticated_requests += 1;
        if let Some(n) = f.spec.revoke_after {
            if f.authenticated_requests > n && !f.revoked {
                f.revoked = true;
                drop(f);
                lock(&sh.auth).revoke_all();
            }
        }
    }
    let auth = lock(&sh.auth);
    match auth.lookup(token) {
        Ok(info) => Ok(Grant {
            client_id: Some(info.client_id.clone()),
            scopes: info
                .scope
                .split_whitespace()
                .filter_map(scopes::parse)
                .collect(),
            patient: info.patient.clone(),
            unrestricted: false,
        }),
        Err(reason) => Err(unauthorized(Some("invalid_token"), reason)),
    }
}

/// What `grant` may do with `perm` on `ty`, or a 403 naming the missing scope.
pub(crate) fn require(grant: &Grant, ty: &str, perm: u8) -> Result<Access, Response> {
    if grant.unrestricted {
        return Ok(Access {
            patient_only: false,
            category: None,
        });
    }
    match scopes::access(&grant.scopes, ty, perm) {
        Some(a) if !a.patient_only || grant.patient.is_some() => Ok(a),
        _ => Err(outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "missing scope: {} on {ty} requires e.g. system/{ty}.rs, system/{ty}.read or patient/{ty}.read",
                scopes::perm_name(perm)
            ),
        )),
    }
}

/// Whether `e` is visible under `access` for `grant`.
pub(crate) fn visible(e: &Entry, access: &Access, grant: &Grant) -> bool {
    e.deleted_ms.is_none()
        && (!access.patient_only || e.patient.as_deref() == grant.patient.as_deref())
        && access
            .category
            .as_deref()
            .is_none_or(|c| e.category.as_deref() == Some(c))
}

fn classify(path: &str) -> Option<Targets> {
    if path.starts_with("/auth/") {
        Some(Targets::TOKEN)
    } else if path.contains("$export") || path.contains("%24export") {
        Some(Targets::KICKOFF)
    } else if path.starts_with("/fhir/bulkstatus/") {
        Some(Targets::STATUS)
    } else if path.starts_with("/files/") {
        Some(Targets::FILE)
    } else if path.starts_with("/fhir/metadata") || path.starts_with("/fhir/.well-known/") {
        None
    } else if path.starts_with("/fhir") {
        Some(Targets::FHIR)
    } else {
        None
    }
}

fn fault_status(sh: &Shared, status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let issue = if status == 429 {
        "throttled"
    } else {
        "transient"
    };
    let mut resp = outcome(code, issue, &format!("injected fault: HTTP {status}"));
    if status == 429 || status == 503 {
        let value = match retry_after {
            Some(s) => s.to_string(),
            None => match lock(&sh.faults).spec.retry_after {
                RetryAfter::Seconds(s) => s.to_string(),
                RetryAfter::HttpDate(s) => http_date(SystemTime::now() + Duration::from_secs(s)),
            },
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

/// Cuts a successful body in half: `Reset` then aborts the connection, `Truncate` ends the
/// (chunked) body cleanly.
async fn apply_body_fault(resp: Response, fault: Option<FaultKind>) -> Response {
    let Some(kind) = fault else { return resp };
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    let half = bytes.slice(..bytes.len() / 2);
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(half) });
    let body = if kind == FaultKind::Reset {
        let fail = futures::stream::once(async {
            // Give hyper a moment to put the first half on the wire before the abort.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ))
        });
        Body::from_stream(first.chain(fail))
    } else {
        Body::from_stream(first)
    };
    Response::from_parts(parts, body)
}

async fn buffer(req: Request) -> Result<Req, Response> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_REQUEST_BODY)
        .await
        .map_err(|_| {
            outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                "request body too large",
            )
        })?;
    let raw_query = parts.uri.query().map(str::to_owned);
    let query = raw_query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    Ok(Req {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().replace("%24", "$"),
        raw_query,
        query,
        headers: parts.headers,
        body,
    })
}

async fn serve_origin(sh: Arc<Shared>, req: Request, origin: &'static str) -> Response {
    let r = match buffer(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let target = if origin == "storage" {
        Some(Targets::FILE)
    } else {
        classify(&r.path)
    };
    let decision = target.map_or_else(Decision::default, |t| lock(&sh.faults).decide(t));
    // Vendor quirk: too many concurrent downloads are throttled. A download counts from
    // arrival until its body has been sent.
    let limit = (target == Some(Targets::FILE))
        .then(|| lock(&sh.faults).spec.max_concurrent_files)
        .flatten();
    let (slot, over_limit) = match limit {
        Some(max) => {
            let (slot, n) = InFlight::enter(&sh);
            (Some(slot), n > max)
        }
        None => (None, false),
    };
    if let Some(d) = decision.slow {
        tokio::time::sleep(d).await;
    }
    let resp = match decision.status {
        Some(s) => fault_status(&sh, s, decision.rate_limited),
        None if over_limit => fault_status(&sh, 429, None),
        None if origin == "storage" => bulk::storage_download(&sh, &r).await,
        None => route(&sh, &r).await,
    };
    let resp = apply_body_fault(resp, decision.body).await;
    // Keep the download counted until its body has been sent.
    let resp = match slot {
        Some(slot) => {
            let (parts, body) = resp.into_parts();
            let stream = body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
        None => resp,
    };
    sh.record(&r, origin, resp.status(), decision.label());
    resp
}

/// Counts a file download in flight until dropped (it travels with the response body).
struct InFlight(Arc<Shared>);

impl InFlight {
    /// The guard and the number in flight including this one.
    fn enter(sh: &Arc<Shared>) -> (Self, usize) {
        let n = sh.files_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        (Self(sh.clone()), n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.files_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn fhir_handler(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    serve_origin(sh, req, "fhir").await
}

async fn storage_handler(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    serve_origin(sh, req, "storage").await
}

async fn route(sh: &Arc<Shared>, r: &Req) -> Response {
    let path = r.path.as_str();
    if let Some(rest) = path.strip_prefix("/auth/") {
        return auth::handle(sh, r, rest);
    }
    if let Some(rest) = path.strip_prefix("/files/") {
        return bulk::fhir_download(sh, r, rest).await;
    }
    let Some(rest) = path.strip_prefix("/fhir") else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such endpoint; the FHIR base is /fhir",
        );
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let m = r.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", [".well-known", "smart-configuration"]) => {
            json_value(StatusCode::OK, &smart_configuration(sh))
        }
        ("GET", ["metadata"]) => fhir_json(StatusCode::OK, capability_statement(sh).to_string()),
        ("GET" | "POST", ["$export"]) => bulk::kickoff(sh, r, bulk::Level::System),
        ("GET" | "POST", ["Patient", "$export"]) => bulk::kickoff(sh, r, bulk::Level::Patient),
        ("GET" | "POST", ["Group", id, "$export"]) => bulk::kickoff(sh, r, bulk::Level::Group(id)),
        ("GET", ["bulkstatus", id]) => bulk::status(sh, r, id),
        ("DELETE", ["bulkstatus", id]) => bulk::delete(sh, r, id),
        ("GET", [ty]) => search(sh, r, ty, &r.query),
        ("POST", [ty, "_search"]) => {
            let mut params = r.form();
            params.extend(r.query.iter().cloned());
            search(sh, r, ty, &params)
        }
        ("GET", ["Group", id]) if *id == crate::GROUP_ALL_PATIENTS => group(sh, r),
        ("GET", [ty, id]) => read(sh, r, ty, id),
        _ => outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!("{m} {path} is not supported by the sandbox"),
        ),
    }
}

fn smart_configuration(sh: &Shared) -> Value {
    let o = &sh.origin;
    json!({
        "issuer": o,
        "jwks_uri": format!("{o}/auth/jwks"),
        "authorization_endpoint": format!("{o}/auth/authorize"),
        "token_endpoint": sh.token_url,
        "revocation_endpoint": format!("{o}/auth/revoke"),
        "introspection_endpoint": format!("{o}/auth/introspect"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "system/*.read", "system/*.rs", "user/*.read", "user/*.rs", "patient/*.read", "patient/*.rs",
            "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
            "offline_access", "online_access"
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-ehr-encounter",
            "context-standalone-patient", "context-banner", "permission-offline", "permission-online",
            "permission-patient", "permission-user", "permission-v1", "permission-v2", "sso-openid-connect"
        ]
    })
}

fn capability_statement(sh: &Shared) -> Value {
    let o = &sh.origin;
    let resources: Vec<Value> = sh
        .store()
        .types()
        .map(|t| {
            json!({
                "type": t,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": "_id", "type": "token"},
                    {"name": "_lastUpdated", "type": "date"},
                    {"name": "patient", "type": "reference"},
                    {"name": "category", "type": "token"}
                ],
                "operation": if t == "Patient" || t == "Group" {
                    json!([{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}])
                } else {
                    json!([])
                }
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "kind": "instance",
        "software": {"name": "fhirhose-sandbox", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirhose local SMART + Bulk Data sandbox", "url": sh.base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "token", "valueUri": sh.token_url},
                        {"url": "authorize", "valueUri": format!("{o}/auth/authorize")},
                        {"url": "revoke", "valueUri": format!("{o}/auth/revoke")},
                        {"url": "introspect", "valueUri": format!("{o}/auth/introspect")}
                    ]
                }]
            },
            "resource": resources,
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
                {"name": "group-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}
            ]
        }]
    })
}

fn known_type(store: &Store, ty: &str) -> bool {
    store.has_type(ty) || ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

/// The synthetic Group of every patient (members listed, so clients can count them).
fn group(sh: &Shared, r: &Req) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    if let Err(resp) = require(&grant, "Group", scopes::R) {
        return resp;
    }
    let ids = sh.store().patient_ids();
    let members: Vec<Value> = ids
        .iter()
        .map(|id| json!({"entity": {"reference": format!("Patient/{id}")}}))
        .collect();
    let v = json!({
        "resourceType": "Group",
        "id": crate::GROUP_ALL_PATIENTS,
        "meta": {"versionId": "1", "lastUpdated": now_instant()},
        "type": "person",
        "actual": true,
        "name": "All patients",
        "quantity": ids.len(),
        "member": members,
    });
    fhir_json(StatusCode::OK, v.to_string())
}

fn read(sh: &Shared, r: &Req, ty: &str, id: &str) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let access = match require(&grant, ty, scopes::R) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let store = sh.store();
    match store.get(ty, id) {
        Some(e) if e.deleted_ms.is_some() => outcome(
            StatusCode::GONE,
            "deleted",
            &format!("{ty}/{id} has been deleted"),
        ),
        Some(e) if visible(e, &access, &grant) => fhir_json(StatusCode::OK, e.line.clone()),
        Some(_) => outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "resource is outside the granted patient compartment or category",
        ),
        None => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{ty}/{id} not found"),
        ),
    }
}

pub(crate) struct Filters {
    ids: Option<Vec<String>>,
    patient: Option<String>,
    category: Option<String>,
    last_updated: Vec<(&'static str, i64)>,
}

pub(crate) fn parse_filters(ty: &str, params: &[(String, String)]) -> Result<Filters, String> {
    let mut f = Filters {
        ids: None,
        patient: None,
        category: None,
        last_updated: Vec::new(),
    };
    for (k, v) in params {
        match k.as_str() {
            "_id" => f.ids = Some(v.split(',').map(str::to_owned).collect()),
            "patient" | "subject" | "subject:Patient" => {
                f.patient = Some(v.rsplit('/').next().unwrap_or(v).to_owned());
            }
            "category" => f.category = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "_lastUpdated" => {
                let (op, val) = match v.get(..2) {
                    Some(p @ ("gt" | "ge" | "lt" | "le" | "eq")) => (p, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let ms = parse_time_ms(val)
                    .ok_or_else(|| format!("cannot parse _lastUpdated value `{v}`"))?;
                let op = match op {
                    "gt" => "gt",
                    "ge" => "ge",
                    "lt" => "lt",
                    "le" => "le",
                    _ => "ge",
                };
                f.last_updated.push((op, ms));
            }
            _ => {}
        }
    }
    if ty == "Patient" {
        if let Some(p) = f.patient.take() {
            f.ids.get_or_insert_with(Vec::new).push(p);
        }
    }
    Ok(f)
}

impl Filters {
    pub(crate) fn matches(&self, e: &Entry) -> bool {
        if let Some(ids) = &self.ids {
            if !ids.iter().any(|i| **i == *e.id) {
                return false;
            }
        }
        if let Some(p) = &self.patient {
            if e.patient.as_deref() != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(c) = &self.category {
            if e.category.as_deref() != Some(c.as_str()) {
                return false;
            }
        }
        self.last_updated.iter().all(|(op, t)| match *op {
            "gt" => e.last_updated_ms > *t,
            "ge" => e.last_updated_ms >= *t,
            "lt" => e.last_updated_ms < *t,
            _ => e.last_updated_ms <= *t,
        })
    }
}

fn search(sh: &Shared, r: &Req, ty: &str, params: &[(String, String)]) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let store = sh.store();
    if !known_type(&store, ty) {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!("unknown resource type {ty}"),
        );
    }
    let access = match require(&grant, ty, scopes::S) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let filters = match parse_filters(ty, params) {
        Ok(f) => f,
        Err(msg) => return outcome(StatusCode::BAD_REQUEST, "invalid", &msg),
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let count = get("_count")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(sh.cfg.page_size)
        .min(MAX_PAGE_SIZE);
    let offset = get("_offset")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let matches: Vec<&Entry> = store
        .entries(ty)
        .iter()
        .filter(|e| visible(e, &access, &grant) && filters.matches(e))
        .collect();
    let total = matches.len();
    let page_url = |off: usize| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params.iter().filter(|(k, _)| k != "_offset") {
            ser.append_pair(k, v);
        }
        ser.append_pair("_offset", &off.to_string());
        format!("{}/{ty}?{}", sh.base_url, ser.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": page_url(offset)})];
    if count > 0 && offset + count < total {
        links.push(json!({"relation": "next", "url": page_url(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": page_url(offset.saturating_sub(count))}));
    }
    let head = json!({
        "resourceType": "Bundle",
        "id": random_hex(8),
        "meta": {"lastUpdated": now_instant()},
        "type": "searchset",
        "total": total,
        "link": links,
    })
    .to_string();
    // Splice raw resources into the Bundle without re-serializing them.
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(br#","entry":["#);
    for (i, e) in matches.iter().skip(offset).take(count).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let full_url = Value::String(format!("{}/{ty}/{}", sh.base_url, e.id)).to_string();
        out.extend_from_slice(br#"{"fullUrl":"#);
        out.extend_from_slice(full_url.as_bytes());
        out.extend_from_slice(br#","resource":"#);
        out.extend_from_slice(&e.line);
        out.extend_from_slice(br#","search":{"mode":"match"}}"#);
    }
    out.extend_from_slice(b"]}");
    fhir_json(StatusCode::OK, out)
}

pub(crate) async fn start(cfg: SandboxConfig) -> Result<RunningSandbox, SandboxError> {
    let (seed, patients, dir) = (cfg.seed, cfg.patients, cfg.data_dir.clone());
    let store = tokio::task::spawn_blocking(move || match dir {
        Some(d) => Store::load_dir(&d).map_err(|e| SandboxError::Data(e.to_string())),
        None => Ok(Store::generate(seed, patients)),
    })
    .await
    .map_err(|e| SandboxError::Data(format!("loader panicked: {e}")))??;

    let bind = |port: u16| async move {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|source| SandboxError::Bind { port, source })?;
        let p = l
            .local_addr()
            .map_err(|source| SandboxError::Bind { port, source })?
            .port();
        Ok::<_, SandboxError>((l, format!("http://127.0.0.1:{p}")))
    };
    let (fhir_l, origin) = bind(cfg.port).await?;
    let (storage_l, storage_origin) = bind(cfg.storage_port).await?;

    let shared = Arc::new(Shared {
        base_url: format!("{origin}/fhir"),
        token_url: format!("{origin}/auth/token"),
        origin,
        storage_origin,
        store: RwLock::new(store),
        auth: Mutex::new(AuthState::default()),
        faults: Mutex::new(FaultEngine::new(cfg.faults.clone())),
        jobs: Mutex::new(HashMap::new()),
        log: Mutex::new(VecDeque::new()),
        files_in_flight: AtomicUsize::new(0),
        url_key: random_hex(32),
        id_token_key: crate::jwt::id_token_key(),
        cfg,
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let spawn = |listener: TcpListener, app: Router| {
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::warn!(error = %e, "sandbox listener stopped");
            }
        })
    };
    let fhir_app = Router::new()
        .fallback(fhir_handler)
        .with_state(shared.clone());
    let storage_app = Router::new()
        .fallback(storage_handler)
        .with_state(shared.clone());
    let handles = vec![spawn(fhir_l, fhir_app), spawn(storage_l, storage_app)];
    tracing::info!(base_url = %shared.base_url, storage = %shared.storage_origin, "sandbox started");
    Ok(RunningSandbox {
        shared,
        handles,
        shutdown: tx,
    })
}
