//! fhirhose-sandbox: a local SMART on FHIR + Bulk Data server with synthetic data and
//! fault injection, for `fhirhose sandbox`, `fhirhose demo` and the workspace tests.
//!
//! It depends on nothing else of ours on purpose: a fake EHR that shared the client's code
//! would share its bugs. It listens on 127.0.0.1 only, on two ports: the FHIR origin and a
//! separate *storage* origin that plays the role of a signed-URL object store.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fhirhose_sandbox::{Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::start(SandboxConfig {
//!     patients: 3,
//!     faults: "429=first:1@fhir,retry-after=date".parse()?,
//!     ..SandboxConfig::default()
//! })
//! .await?;
//! sandbox.register_secret_client("demo", "s3cret", "system/*.read");
//!
//! let http = reqwest::Client::new();
//! let token: serde_json::Value = http
//!     .post(sandbox.token_url())
//!     .basic_auth("demo", Some("s3cret"))
//!     .form(&[("grant_type", "client_credentials"), ("scope", "system/Patient.read")])
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! let token = token["access_token"].as_str().unwrap_or_default();
//!
//! let url = format!("{}/Patient", sandbox.base_url());
//! let first = http.get(&url).bearer_auth(token).send().await?;
//! assert_eq!(first.status(), 429); // the injected fault, with an HTTP-date Retry-After
//! let bundle: serde_json::Value = http.get(&url).bearer_auth(token).send().await?.json().await?;
//! assert_eq!(bundle["total"], 3);
//!
//! let log = sandbox.request_log();
//! assert_eq!(log.last().map(|e| e.status), Some(200));
//! assert!(!format!("{log:?}").contains(token)); // tokens never reach the log
//! sandbox.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # URL layout (FHIR origin `http://127.0.0.1:PORT`)
//!
//! | method, path | what |
//! |---|---|
//! | `GET /fhir/.well-known/smart-configuration` | SMART discovery (no token) |
//! | `GET /fhir/metadata` | CapabilityStatement with the oauth-uris extension (no token) |
//! | `POST /auth/token` | token endpoint: `client_credentials` with a `private_key_jwt` assertion (RS384/ES384) or a client secret (basic or post), `authorization_code` (PKCE S256), `refresh_token` |
//! | `GET /auth/authorize` | App Launch authorize: auto-approves, redirects to `redirect_uri` with `code` and `state` |
//! | `POST /auth/revoke` | RFC 7009 revocation (always 200) |
//! | `POST /auth/introspect` | RFC 7662 introspection |
//! | `GET /fhir/{type}/{id}` | read |
//! | `GET /fhir/{type}?...`, `POST /fhir/{type}/_search` | search: `patient`/`subject`, `_id`, `_lastUpdated` (gt/ge/lt/le/eq), `category`, `_count`; searchset Bundles with `next` links |
//! | `GET|POST /fhir/$export`, `/fhir/Patient/$export`, `/fhir/Group/{id}/$export` | bulk kick-off (`Prefer: respond-async` required); group [`GROUP_ALL_PATIENTS`] holds every patient |
//! | `GET /fhir/bulkstatus/{job}` | status: 202 + `X-Progress` + `Retry-After`, then 200 + manifest |
//! | `DELETE /fhir/bulkstatus/{job}` | cancel/delete the job: 202, then 404 |
//! | `GET /files/{job}/{n}.ndjson` | export file: gzip on `Accept-Encoding`, `Range`/`If-Range`, `ETag`, `Last-Modified` |
//!
//! Storage origin (second port): `GET /files/{job}/{n}.ndjson?expires=..&sig=..`, reached
//! through the `redirect-files` fault's 307. It refuses requests that carry an
//! `Authorization` header (400, like S3 with a pre-signed URL) and bad signatures (403).
//!
//! Every FHIR request (not discovery) needs a bearer token when
//! [`SandboxConfig::require_auth`] is set: 401 with `WWW-Authenticate` when it is missing,
//! unknown, expired or revoked; 403 with an OperationOutcome naming the missing scope.
//!
//! # Data
//!
//! By default the server generates `patients` synthetic patients with [`generate`]
//! (deterministic from `seed`; about 36 KB of NDJSON per patient, so ~28 000 patients make
//! 1 GB). With `data_dir` it serves the `*.ndjson` and `*.ndjson.gz` files of a directory
//! instead (e.g. `tests/data/corpus`). Either way the resources are held in memory as raw
//! lines, so memory is about the size of the data set. An export job snapshots its
//! selection at kick-off, so its files are byte-identical across downloads (and across
//! runs with the same seed and parameters). Generated `meta.lastUpdated` values lie in
//! 2016–2024; [`RunningSandbox::touch_resources`] and [`RunningSandbox::delete_resource`]
//! change data after an export, for incremental (`_since`) exports and `deleted` files.
//!
//! # Faults
//!
//! [`FaultSpec`] is parsed from the `--faults` syntax documented in [`faults`], e.g.
//! `429=0.2,retry-after=date,500=every:7@status,reset=0.05@file,slow=200ms@fhir,
//! token-lifetime=3s,redirect-files,tiny-files=5,error-file,deleted,seed=42`. Rates use a
//! seeded RNG (or exact `every:N` / `first:N` schedules), so a run is reproducible;
//! [`RunningSandbox::set_faults`] switches them at runtime, and every injected fault is
//! named in the [`RequestLogEntry::fault`] of the request it hit.
//!
//! # App Launch
//!
//! Register a public client with [`RunningSandbox::register_public_client`], then drive
//! `GET /auth/authorize` (auto-approved) and the `authorization_code` grant with PKCE S256.
//! The launch patient is the `launch` parameter when it names a patient (EHR launch), else
//! [`SandboxConfig::launch_patient`], else the first patient. `patient/...` scopes limit
//! reads, searches and exports to that patient's compartment; v2 `?category=` scope
//! constraints are enforced on the resource's first category code.

// Handlers return ready-made HTTP error responses through `Result<_, Response>`; one is
// built per failed request, so the size of the `Err` variant does not matter here.
#![allow(clippy::result_large_err)]

mod auth;
mod bulk;
pub mod faults;
pub mod generate;
mod jwt;
mod rng;
mod scopes;
mod server;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use faults::{FaultSpec, FaultSpecError};

/// Id of the Group that contains every patient (for `Group/{id}/$export`).
pub const GROUP_ALL_PATIENTS: &str = "all-patients";

/// Default access-token lifetime: five minutes, the common EHR choice for backend services.
const fn default_token_lifetime() -> Duration {
    Duration::from_secs(300)
}

/// Default resources per export file: small enough that a modest data set spans several
/// files (exercising the client's per-file logic), large enough to be realistic.
const fn default_resources_per_file() -> usize {
    10_000
}

/// Default page size for search when `_count` is absent (HAPI's default is 20, Epic's 1000;
/// 50 keeps paging visible in tests).
const fn default_page_size() -> usize {
    50
}

/// Configuration of a [`Sandbox`]. `SandboxConfig::default()` is a 10-patient server on
/// ephemeral ports with no faults.
///
/// Deserializable (e.g. from a `[sandbox]` TOML table): every field is optional,
/// durations are `"300s"`, `"200ms"`, `"2m"` or a number of seconds, and `faults` uses the
/// `--faults` string syntax.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// FHIR origin port; 0 picks an ephemeral port.
    pub port: u16,
    /// Storage origin port; 0 picks an ephemeral port.
    pub storage_port: u16,
    /// Number of synthetic patients (ignored with `data_dir`).
    pub patients: usize,
    /// Seed of the data generator.
    pub seed: u64,
    /// Serve the `*.ndjson` / `*.ndjson.gz` files of this directory instead of generating.
    pub data_dir: Option<PathBuf>,
    /// Faults to inject from the start (see [`RunningSandbox::set_faults`]).
    pub faults: FaultSpec,
    /// Access-token lifetime (`token-lifetime` in the fault spec overrides it).
    #[serde(deserialize_with = "de_duration")]
    pub token_lifetime: Duration,
    /// Export manifests say `requiresAccessToken: true` and file downloads on the FHIR
    /// origin demand a valid token (only when `require_auth` is also set).
    pub require_access_token: bool,
    /// FHIR requests demand a bearer token. When false, requests without a token get full
    /// access (a token, if sent, is still checked).
    pub require_auth: bool,
    /// Maximum resources per export output file (`tiny-files` overrides it).
    pub resources_per_file: usize,
    /// Number of status polls answered 202 before the manifest.
    pub export_polls: u32,
    /// Minimum wall time between kick-off and completion.
    #[serde(deserialize_with = "de_duration")]
    pub export_min_duration: Duration,
    /// `Retry-After` (seconds) on 202 status responses.
    pub poll_retry_after: u64,
    /// Patient context for App Launch; default the first patient.
    pub launch_patient: Option<String>,
    /// Search page size when `_count` is absent.
    pub page_size: usize,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => faults::parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid duration `{t}` (use e.g. 300s or 200ms)"))
        }),
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            port: 0,
            storage_port: 0,
            patients: 10,
            seed: 1,
            data_dir: None,
            faults: FaultSpec::default(),
            token_lifetime: default_token_lifetime(),
            require_access_token: true,
            require_auth: true,
            resources_per_file: default_resources_per_file(),
            export_polls: 1,
            export_min_duration: Duration::ZERO,
            poll_retry_after: 1,
            launch_patient: None,
            page_size: default_page_size(),
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A listener could not bind.
    #[error("cannot bind 127.0.0.1:{port}: {source}")]
    Bind {
        /// Requested port.
        port: u16,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The data directory could not be loaded.
    #[error("cannot load sandbox data: {0}")]
    Data(String),
}

/// One request as the sandbox saw it. Never contains a token, a secret, an assertion, a
/// code or a signature: those query values are replaced by `REDACTED`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestLogEntry {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string with secret values redacted.
    pub query: Option<String>,
    /// Response status (200 even when a `reset`/`truncate` fault cut the body).
    pub status: u16,
    /// Whether an `Authorization: Bearer` header was present.
    pub bearer_present: bool,
    /// `"fhir"` or `"storage"`.
    pub origin: &'static str,
    /// Injected faults, e.g. `"429"`, `"slow+reset"`.
    pub fault: Option<String>,
    /// When the response was produced.
    pub time: SystemTime,
}

/// Entry point; see [`Sandbox::start`].
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// Loads or generates the data, binds both listeners on 127.0.0.1 and starts serving.
    pub async fn start(cfg: SandboxConfig) -> Result<RunningSandbox, SandboxError> {
        server::start(cfg).await
    }
}

/// A running sandbox. Dropping it without [`RunningSandbox::shutdown`] aborts the servers.
#[derive(Debug)]
pub struct RunningSandbox {
    shared: Arc<server::Shared>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RunningSandbox {
    /// FHIR base URL, e.g. `http://127.0.0.1:PORT/fhir`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Origin of the FHIR listener, e.g. `http://127.0.0.1:PORT` (export file URLs and the
    /// authorization endpoints live here, outside the FHIR base).
    pub fn fhir_origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// Token endpoint URL (also the `aud` client assertions must carry).
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// App Launch authorize endpoint URL.
    pub fn authorize_url(&self) -> String {
        format!("{}/auth/authorize", self.shared.origin)
    }

    /// Origin of the second listener serving redirected file downloads.
    pub fn storage_origin(&self) -> String {
        self.shared.storage_origin.clone()
    }

    /// Number of resources of each type the server holds (what a full system-level
    /// export with `system/*.read` returns).
    pub fn resource_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.shared.store().counts()
    }

    /// The fault spec currently in force.
    pub fn faults(&self) -> FaultSpec {
        server::lock(&self.shared.faults).spec.clone()
    }

    /// Ids of all patients, in data order.
    pub fn patient_ids(&self) -> Vec<String> {
        self.shared.store().patient_ids()
    }

    /// Gives the first `count` live resources of `resource_type` a new version now (new
    /// `meta.lastUpdated` and `meta.versionId`), so an export with `_since` set to an
    /// earlier `transactionTime` returns them. Export jobs already started keep serving
    /// the old bytes. Returns the ids touched.
    pub fn touch_resources(&self, resource_type: &str, count: usize) -> Vec<String> {
        self.shared
            .store_mut()
            .touch(resource_type, count, server::now_ms())
    }

    /// Deletes a resource: reads answer 410, searches and new exports leave it out, and an
    /// export whose `_since` precedes the deletion lists it in the manifest's `deleted`
    /// file. Returns false if there was no such live resource.
    pub fn delete_resource(&self, resource_type: &str, id: &str) -> bool {
        self.shared
            .store_mut()
            .delete(resource_type, id, server::now_ms())
    }

    /// Registers a backend-services client authenticating with `private_key_jwt` against
    /// this JWKS (`{"keys": [...]}`), allowed `scopes` (space-separated).
    pub fn register_jwks_client(&self, client_id: &str, jwks: serde_json::Value, scopes: &str) {
        self.shared
            .register(client_id, auth::ClientKind::Jwks(jwks), scopes);
    }

    /// Registers a confidential client authenticating with a secret (basic or post).
    pub fn register_secret_client(&self, client_id: &str, secret: &str, scopes: &str) {
        self.shared.register(
            client_id,
            auth::ClientKind::Secret(secret.to_owned()),
            scopes,
        );
    }

    /// Registers a public App Launch client (PKCE, no secret) with its redirect URI.
    pub fn register_public_client(&self, client_id: &str, redirect_uri: &str, scopes: &str) {
        self.shared.register(
            client_id,
            auth::ClientKind::Public(redirect_uri.to_owned()),
            scopes,
        );
    }

    /// Requests so far (the most recent 100 000), in order of completion.
    pub fn request_log(&self) -> Vec<RequestLogEntry> {
        server::lock(&self.shared.log).iter().cloned().collect()
    }

    /// Empties the request log.
    pub fn clear_request_log(&self) {
        server::lock(&self.shared.log).clear();
    }

    /// Replaces the fault spec (counters and RNG restart from the new spec's seed).
    pub fn set_faults(&self, f: FaultSpec) {
        *server::lock(&self.shared.faults) = faults::FaultEngine::new(f);
    }

    /// Every credential the sandbox issued or received so far: access and refresh tokens,
    /// authorization codes, PKCE verifiers, client assertions and secrets (at most
    /// 10 000). For tests that search a client's logs for leaked credentials.
    pub fn credentials_seen(&self) -> Vec<String> {
        server::lock(&self.shared.auth).seen.clone()
    }

    /// Revokes every access and refresh token issued so far.
    pub fn revoke_all_tokens(&self) {
        server::lock(&self.shared.auth).revoke_all();
    }

    /// Stops both listeners, waiting briefly for in-flight requests.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for h in self.handles.drain(..) {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), h)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}
