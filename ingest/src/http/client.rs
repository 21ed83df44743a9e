//! [`HttpClient`]: requests with classified retries, manual redirects, token placement,
//! scope checks before sending, request ids and per-origin politeness.
//!
//! ```text
//!  send(req)
//!    ├─ guard.check(req)          refused → ScopeDenied, nothing sent
//!    └─ attempt 1..=max_attempts (and within max_elapsed)
//!         ├─ hop 0..=max_redirects
//!         │    acquire origin permit (concurrency, rate, RateLimit pause)
//!         │    attach bearer iff policy allows for this origin and no cross-origin hop yet
//!         │    send with X-Request-Id, wait ≤ response_timeout for headers
//!         │    3xx → next hop (cross-origin: strip Authorization, Cookie)
//!         ├─ 2xx → Response
//!         ├─ 401 with our token → invalidate → replay once
//!         ├─ 408/429/5xx, transport, timeout(idempotent) → wait (Retry-After wins) → retry
//!         └─ 403, other 4xx → error
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE,
    LOCATION, PROXY_AUTHORIZATION,
};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};
use url::Url;
use uuid::Uuid;

use super::clock::Clock;
use super::config::HttpConfig;
use super::error::{ErrorBody, HttpError, ERROR_BODY_LIMIT};
use super::hooks::{BearerSource, Interaction, RequestDescr, RequestGuard};
use super::limit::{Limiters, OriginLimiter, Permit};
use super::redact::{redact_url, Secret};
use super::retry::{retry_after_header, Outcome, RetryPolicy, RetryReason};

/// The request id header sent with every request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where the bearer token may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TokenPolicy {
    /// Attach the token iff the URL has the FHIR server's origin (the default).
    #[default]
    FhirOrigin,
    /// Attach the token to this URL whatever its origin (a manifest said
    /// `requiresAccessToken: true`). Still dropped on a cross-origin redirect.
    Required,
    /// Never attach a token (signed URLs, `requiresAccessToken: false`, token calls).
    Never,
}

/// One logical request (replayed as needed). `Debug` shows neither headers nor body
/// (they may hold credentials).
#[derive(Clone)]
pub struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    interaction: Option<Interaction>,
    token: TokenPolicy,
    idempotent: Option<bool>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &redact_url(&self.url))
            .field("interaction", &self.interaction)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request without body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            interaction: None,
            token: TokenPolicy::default(),
            idempotent: None,
        }
    }

    /// `GET url`.
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }

    /// `POST url`.
    pub fn post(url: Url) -> Self {
        Self::new(Method::POST, url)
    }

    /// Adds a header (replacing one of the same name).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON body (`application/fhir+json` when `fhir`).
    pub fn json<T: serde::Serialize + ?Sized>(
        mut self,
        value: &T,
        fhir: bool,
    ) -> Result<Self, HttpError> {
        let body = serde_json::to_vec(value).map_err(|e| HttpError::InvalidRequest {
            url: redact_url(&self.url),
            reason: format!("body is not serializable: {e}"),
        })?;
        let ct = if fhir {
            "application/fhir+json"
        } else {
            "application/json"
        };
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        self.body = Some(body.into());
        Ok(self)
    }

    /// An `application/x-www-form-urlencoded` body (OAuth token calls).
    pub fn form<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k.as_ref(), v.as_ref());
        }
        self.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        self.body = Some(ser.finish().into());
        self
    }

    /// What the request does, for the scope guard. When unset, it is inferred from the
    /// URL relative to the FHIR base (see [`Interaction::infer`]).
    pub fn interaction(mut self, interaction: Interaction) -> Self {
        self.interaction = Some(interaction);
        self
    }

    /// Where the bearer token may go (default [`TokenPolicy::FhirOrigin`]).
    pub fn token(mut self, policy: TokenPolicy) -> Self {
        self.token = policy;
        self
    }

    /// Whether the request may be replayed after a timeout or a broken connection.
    /// Defaults from the method (GET, HEAD, PUT, DELETE, OPTIONS are idempotent).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// The request URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// A successful response. Holds its origin's concurrency permit until dropped.
pub struct Response {
    inner: reqwest::Response,
    url: Url,
    request_id: String,
    attempts: u32,
    retry_after: Option<Duration>,
    permit: Permit,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.inner.status())
            .field("url", &redact_url(&self.url))
            .field("request_id", &self.request_id)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Response {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// Response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The final URL, after redirects.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The `X-Request-Id` sent.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Attempts made (1 when the first succeeded).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The response's `Retry-After` (seconds or HTTP-date, relative to the client's
    /// clock), uncapped: a bulk status poll's 202 carries it.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    fn body_error(url: &Url, e: reqwest::Error, request_id: &str) -> HttpError {
        HttpError::Transport {
            url: redact_url(url),
            request_id: request_id.to_owned(),
            source: e.without_url(),
        }
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, HttpError> {
        let Self {
            inner,
            url,
            request_id,
            permit,
            ..
        } = self;
        let out = inner
            .bytes()
            .await
            .map_err(|e| Self::body_error(&url, e, &request_id));
        drop(permit);
        out
    }

    /// The body decoded as JSON.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        let url = self.url.clone();
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| HttpError::Decode {
            url: redact_url(&url),
            reason: e.to_string(),
        })
    }

    /// The body as a stream of chunks; the permit is released when the stream is dropped.
    pub fn bytes_stream(self) -> BoxStream<'static, Result<Bytes, HttpError>> {
        let Self {
            inner,
            url,
            request_id,
            permit,
            ..
        } = self;
        inner
            .bytes_stream()
            .map(move |r| {
                let _held = &permit;
                r.map_err(|e| Self::body_error(&url, e, &request_id))
            })
            .boxed()
    }
}

struct BearerBinding {
    base: Url,
    source: Arc<dyn BearerSource>,
}

struct Shared {
    client: reqwest::Client,
    config: HttpConfig,
    policy: RetryPolicy,
    limiters: Limiters,
    clock: Arc<dyn Clock>,
}

/// The HTTP transport. Cheap to clone; clones share connections and politeness state.
#[derive(Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
    bearer: Option<Arc<BearerBinding>>,
    guard: Option<Arc<dyn RequestGuard>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field(
                "fhir_base",
                &self.bearer.as_ref().map(|b| redact_url(&b.base)),
            )
            .field("guard", &self.guard.is_some())
            .finish()
    }
}

/// A failed attempt and what may be done about it.
struct Failure {
    error: HttpError,
    retry: Option<RetryReason>,
    hint: Option<Duration>,
    /// The token the server rejected with 401.
    rejected: Option<Secret>,
}

/// Counts one retry of the transport's loop (`fhirhose_retries_total{layer="request"}`).
fn record_retry(reason: RetryReason, status: Option<u16>) {
    let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
    fhirhose_metrics::catalogue::RETRIES.inc(&[
        &fhirhose_metrics::default_source(),
        "request",
        reason.as_str(),
        &status,
    ]);
}

fn origin_key(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

impl HttpClient {
    pub(crate) fn from_config(
        config: HttpConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, HttpError> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(config.user_agent.clone());
        if !config.use_system_proxy {
            b = b.no_proxy();
        }
        let client = b.build().map_err(|e| HttpError::Config {
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        let policy = RetryPolicy::new(
            config.max_attempts,
            config.max_elapsed,
            config.backoff_base,
            config.backoff_max,
            config.retry_after_cap,
            config.jitter_seed,
        );
        let limiters = Limiters::new(
            config.origin_limits.clone(),
            config.origin_overrides.clone(),
            config.retry_after_cap,
            clock.clone(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                policy,
                limiters,
                clock,
            }),
            bearer: None,
            guard: None,
        })
    }

    /// A client that attaches tokens from `source` to requests for `fhir_base`'s origin.
    pub fn with_bearer(&self, fhir_base: Url, source: Arc<dyn BearerSource>) -> Self {
        Self {
            bearer: Some(Arc::new(BearerBinding {
                base: fhir_base,
                source,
            })),
            ..self.clone()
        }
    }

    /// A client that checks every request with `guard` before sending it.
    pub fn with_guard(&self, guard: Arc<dyn RequestGuard>) -> Self {
        Self {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// The FHIR base URL tokens are bound to, if any.
    pub fn fhir_base(&self) -> Option<&Url> {
        self.bearer.as_ref().map(|b| &b.base)
    }

    /// The injected clock (shared with auth for token expiry).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The current AIMD concurrency limit for `url`'s origin.
    pub fn concurrency_limit(&self, url: &Url) -> u32 {
        self.shared
            .limiters
            .for_origin(&origin_key(url))
            .concurrency_limit()
    }

    /// `GET url` with default settings.
    pub async fn get(&self, url: Url) -> Result<Response, HttpError> {
        self.send(Request::get(url)).await
    }

    /// Sends a request, retrying as classified. See the module docs.
    pub async fn send(&self, req: Request) -> Result<Response, HttpError> {
        let request_id = Uuid::new_v4().to_string();
        let shared = &*self.shared;
        let start = shared.clock.elapsed();
        let redacted = redact_url(&req.url);

        let interaction = match (&req.interaction, &self.bearer) {
            (Some(i), _) => i.clone(),
            (None, Some(b)) => Interaction::infer(&b.base, &req.method, &req.url),
            (None, None) => Interaction::Other,
        };
        if let Some(guard) = &self.guard {
            if interaction != Interaction::Other {
                guard
                    .check(&RequestDescr::new(&req.method, &req.url, &interaction))
                    .map_err(|source| {
                        debug!(request_id = %request_id, url = %redacted, missing = %source.missing, "request refused by scope policy");
                        HttpError::ScopeDenied {
                            url: redacted.clone(),
                            source,
                        }
                    })?;
            }
        }

        let idempotent = req.idempotent.unwrap_or_else(|| is_idempotent(&req.method));
        let mut token: Option<Secret> = None;
        let mut refreshed = false;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self
                .attempt(&req, &request_id, &mut token, idempotent)
                .await
            {
                Ok(mut resp) => {
                    resp.attempts = attempt;
                    return Ok(resp);
                }
                Err(f) => f,
            };
            let elapsed = shared.clock.elapsed().saturating_sub(start);

            if let Some(rejected) = failure.rejected {
                if refreshed {
                    return Err(failure.error);
                }
                refreshed = true;
                record_retry(RetryReason::Auth, Some(401));
                warn!(
                    reason = RetryReason::Auth.as_str(),
                    status = 401u16,
                    attempt,
                    wait_ms = 0u64,
                    request_id = %request_id,
                    url = %redacted,
                    "retrying request"
                );
                let source = self.bearer.as_ref().map(|b| b.source.clone());
                let Some(source) = source else {
                    return Err(failure.error);
                };
                match source.invalidate(&rejected).await {
                    Ok(t) => token = Some(t),
                    Err(e) => {
                        return Err(HttpError::Auth {
                            url: redacted,
                            source: Box::new(e),
                        })
                    }
                }
                // The replay after a refresh does not count against max_attempts.
                attempt -= 1;
                continue;
            }

            let Some(reason) = failure.retry else {
                return Err(failure.error);
            };
            let wait = shared.policy.wait(attempt, failure.hint);
            if !shared.policy.allows(attempt, elapsed, wait) {
                fhirhose_metrics::catalogue::RETRIES_EXHAUSTED.inc(&[
                    &fhirhose_metrics::default_source(),
                    "request",
                    reason.as_str(),
                ]);
                warn!(
                    reason = reason.as_str(),
                    status = failure.error.status(),
                    attempt,
                    request_id = %request_id,
                    url = %redacted,
                    "giving up on request"
                );
                return Err(HttpError::Exhausted {
                    url: redacted,
                    attempts: attempt,
                    elapsed,
                    last: Box::new(failure.error),
                });
            }
            record_retry(reason, failure.error.status());
            warn!(
                reason = reason.as_str(),
                status = failure.error.status(),
                attempt,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                request_id = %request_id,
                url = %redacted,
                "retrying request"
            );
            shared.clock.sleep(wait).await;
            // Ask the bearer source again: the token may have expired during the wait
            // (the source refreshes ahead of expiry; the 401 path only catches one).
            token = None;
        }
    }

    async fn bearer_token(
        &self,
        token: &mut Option<Secret>,
        url: &Url,
    ) -> Result<Secret, HttpError> {
        if let Some(t) = token {
            return Ok(t.clone());
        }
        let Some(b) = &self.bearer else {
            return Err(HttpError::InvalidRequest {
                url: redact_url(url),
                reason: "a token is required but no bearer source is configured".into(),
            });
        };
        let t = b.source.bearer().await.map_err(|e| HttpError::Auth {
            url: redact_url(url),
            source: Box::new(e),
        })?;
        *token = Some(t.clone());
        Ok(t)
    }

    /// One attempt, following redirects.
    async fn attempt(
        &self,
        req: &Request,
        request_id: &str,
        token: &mut Option<Secret>,
        idempotent: bool,
    ) -> Result<Response, Failure> {
        let shared = &*self.shared;
        let fatal = |error: HttpError| Failure {
            error,
            retry: None,
            hint: None,
            rejected: None,
        };
        let mut method = req.method.clone();
        let mut url = req.url.clone();
        let mut headers = req.headers.clone();
        let mut body = req.body.clone();
        let mut may_send_token = match req.token {
            TokenPolicy::Never => false,
            TokenPolicy::Required => true,
            TokenPolicy::FhirOrigin => self
                .bearer
                .as_ref()
                .is_some_and(|b| b.base.origin() == url.origin()),
        };
        let token_origin = url.origin();
        let rid = HeaderValue::from_str(request_id).map_err(|e| {
            fatal(HttpError::InvalidRequest {
                url: redact_url(&url),
                reason: e.to_string(),
            })
        })?;

        let mut hop = 0u32;
        loop {
            // The token comes before the origin permit: fetching it may call a token
            // endpoint on this same origin, which needs a permit of its own, and requests
            // holding every permit while waiting for that call would deadlock.
            let bearer = if may_send_token && url.origin() == token_origin {
                Some(self.bearer_token(token, &url).await.map_err(fatal)?)
            } else {
                None
            };
            let limiter: Arc<OriginLimiter> = shared.limiters.for_origin(&origin_key(&url));
            let permit = limiter.acquire().await;
            let mut rb = shared
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .header(REQUEST_ID_HEADER, rid.clone());
            let mut sent_token = None;
            if let Some(t) = bearer {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                        fatal(HttpError::InvalidRequest {
                            url: redact_url(&url),
                            reason: "the access token is not a valid header value".into(),
                        })
                    })?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
                sent_token = Some(t);
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            debug!(method = %method, url = %redact_url(&url), request_id, hop, "sending request");
            let res = match tokio::time::timeout(shared.config.response_timeout, rb.send()).await {
                Err(_) => {
                    return Err(Failure {
                        error: HttpError::Timeout {
                            url: redact_url(&url),
                            request_id: request_id.to_owned(),
                            after: shared.config.response_timeout,
                        },
                        retry: idempotent.then_some(RetryReason::Timeout),
                        hint: None,
                        rejected: None,
                    })
                }
                Ok(Err(e)) => {
                    let retry = (e.is_connect() || idempotent).then_some(RetryReason::Transport);
                    return Err(Failure {
                        error: HttpError::Transport {
                            url: redact_url(&url),
                            request_id: request_id.to_owned(),
                            source: e.without_url(),
                        },
                        retry,
                        hint: None,
                        rejected: None,
                    });
                }
                Ok(Ok(r)) => r,
            };
            limiter.observe_headers(res.headers());
            let status = res.status();
            let outcome = Outcome::classify(status);
            match outcome {
                Outcome::Success => {
                    limiter.on_success();
                    let retry_after = retry_after_header(res.headers(), shared.clock.now_utc());
                    return Ok(Response {
                        inner: res,
                        url,
                        request_id: request_id.to_owned(),
                        attempts: 1,
                        retry_after,
                        permit,
                    });
                }
                Outcome::Redirect => {
                    limiter.on_success();
                    let next = res
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|loc| url.join(loc).ok());
                    let Some(next) = next else {
                        return Err(fatal(HttpError::Redirect {
                            url: redact_url(&url),
                            reason: "missing or invalid Location header".into(),
                        }));
                    };
                    if hop >= shared.config.max_redirects {
                        return Err(fatal(HttpError::Redirect {
                            url: redact_url(&req.url),
                            reason: format!("more than {} redirects", shared.config.max_redirects),
                        }));
                    }
                    hop += 1;
                    if next.origin() != url.origin() {
                        // Credentials never follow a cross-origin redirect, not even back.
                        may_send_token = false;
                        headers.remove(AUTHORIZATION);
                        headers.remove(PROXY_AUTHORIZATION);
                        headers.remove(COOKIE);
                    }
                    let to_get = status == StatusCode::SEE_OTHER
                        || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                            && method == Method::POST);
                    if to_get {
                        method = Method::GET;
                        body = None;
                        headers.remove(CONTENT_TYPE);
                        headers.remove(CONTENT_LENGTH);
                    }
                    debug!(from = %redact_url(&url), to = %redact_url(&next), request_id, status = status.as_u16(), "following redirect");
                    drop(permit);
                    url = next;
                }
                _ => {
                    let hint = retry_after_header(res.headers(), shared.clock.now_utc());
                    match outcome {
                        Outcome::Transient if status == StatusCode::TOO_MANY_REQUESTS => {
                            limiter.on_throttle(hint)
                        }
                        Outcome::Transient => {}
                        _ => limiter.on_success(),
                    }
                    let body = read_error_body(res).await;
                    drop(permit);
                    let error = HttpError::Status {
                        status: status.as_u16(),
                        url: redact_url(&url),
                        request_id: request_id.to_owned(),
                        retry_after: hint,
                        body: ErrorBody(body),
                    };
                    let (retry, rejected) = match outcome {
                        Outcome::Transient => (Some(RetryReason::for_status(status)), None),
                        Outcome::Unauthorized => (None, sent_token),
                        _ => (None, None),
                    };
                    return Err(Failure {
                        error,
                        retry,
                        hint,
                        rejected,
                    });
                }
            }
        }
    }
}

/// Reads at most [`ERROR_BODY_LIMIT`] bytes of an error response.
async fn read_error_body(mut res: reqwest::Response) -> Bytes {
    let mut buf = BytesMut::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match res.chunk().await {
            Ok(Some(c)) => {
                let take = c.len().min(ERROR_BODY_LIMIT - buf.len());
                buf.extend_from_slice(&c[..take]);
            }
            _ => break,
        }
    }
    buf.freeze()
}
