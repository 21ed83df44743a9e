//! File downloads that resume: a [`StreamOpener`] whose byte stream survives connection
//! resets and truncated bodies.
//!
//! ```text
//!  GET url ──► 200/206 ── chunks ──► (bytes counted: offset N)
//!                │            │
//!                │            ├─ error mid-body (reset) ─┐
//!                │            └─ clean end, but short ───┤  short = fewer bytes than
//!                │                                        │  Content-Length/Content-Range,
//!                │                                        │  or no trailing newline
//!                │     wait (Retry-After or backoff) ◄────┘
//!                │        │
//!                └─ GET url, Range: bytes=N-, If-Range: <ETag | Last-Modified>
//!                     ├─ 206 from N ──► continue
//!                     ├─ 200 (Range ignored or validator changed) ──► skip N bytes, continue
//!                     └─ 416 ──► the file ended at N: done
//! ```
//!
//! The pipeline sees exactly the file's bytes, once, in order: what it already read is
//! never repeated and nothing is skipped. Transfer encodings (gzip, deflate) are decoded by
//! the transport before counting, and a ranged request is sent without `Accept-Encoding`,
//! so offsets always refer to the identity representation. A file that exhausts
//! `max_attempts` fails with an I/O error: the pipeline dead-letters it with the reason.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{
    HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;
use tokio::io::AsyncRead;
use tracing::{debug, warn};
use url::Url;

use crate::http::{redact_url, HttpClient, HttpError, Interaction, Request, TokenPolicy};
use crate::source::{SourceError, StreamOpener};

/// Counters shared by every download of a job, for the job report.
#[derive(Debug, Default)]
pub struct DownloadStats {
    bytes: AtomicU64,
    retries: Mutex<BTreeMap<String, u64>>,
    reauth: AtomicBool,
}

impl DownloadStats {
    /// Bytes received (after transfer decoding), resumed bytes counted once.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Resumes and retries per reason (`reset`, `truncated`, `range-ignored`, `http-429`
    /// after the transport gave up, `transport-retried` for replays inside the transport).
    pub fn retries(&self) -> BTreeMap<String, u64> {
        self.retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a download stopped because the grant is gone.
    pub fn needs_reauthorization(&self) -> bool {
        self.reauth.load(Ordering::Relaxed)
    }

    fn retry(&self, reason: &str) {
        self.retry_n(reason, 1);
    }

    fn retry_n(&self, reason: &str, n: u64) {
        *self
            .retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_owned())
            .or_default() += n;
    }
}

/// Opens one export file as a resumable stream.
pub struct HttpFileOpener {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    url: Url,
    resource_type: Option<String>,
    token: TokenPolicy,
    max_attempts: u32,
    backoff_floor: Duration,
    backoff_ceiling: Duration,
    stats: Arc<DownloadStats>,
    observe: Observe,
}

/// Metrics labels and the job timeline of one file (see [`HttpFileOpener::observed`]).
#[derive(Clone, Default)]
struct Observe {
    source: Option<String>,
    file: Option<String>,
    events: Option<super::store::JobEvents>,
}

impl Observe {
    fn source(&self) -> String {
        self.source
            .clone()
            .unwrap_or_else(fhirhose_metrics::default_source)
    }

    fn emit(&self, kind: &str, f: impl FnOnce(&mut super::store::JobEvent)) {
        if let Some(ev) = &self.events {
            let file = self.file.clone();
            ev.emit(kind, |e| {
                e.file = file;
                f(e);
            });
        }
    }
}

/// The reason class (`fhirhose_retries_total{reason}`) of a download retry reason.
fn retry_class(reason: &str) -> &'static str {
    match reason {
        "http-429" => "throttled",
        "http-408" => "timeout",
        "http-401" | "http-403" => "auth",
        r if r.starts_with("http-") => "server",
        _ => "transport",
    }
}

impl std::fmt::Debug for HttpFileOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFileOpener")
            .field("url", &redact_url(&self.inner.url))
            .field("token", &self.inner.token)
            .finish_non_exhaustive()
    }
}

impl HttpFileOpener {
    /// An opener for `url`. `token` follows the manifest's `requiresAccessToken`.
    pub fn new(
        http: HttpClient,
        url: Url,
        resource_type: Option<String>,
        token: TokenPolicy,
        max_attempts: u32,
        stats: Arc<DownloadStats>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                http,
                url,
                resource_type,
                token,
                max_attempts: max_attempts.max(1),
                backoff_floor: Duration::from_millis(500),
                backoff_ceiling: Duration::from_secs(60),
                stats,
                observe: Observe::default(),
            }),
        }
    }

    /// Labels this file's metrics with `source` and records its download start, end and
    /// retries in the job timeline under `file` (the lake name, never the URL).
    pub fn observed(
        mut self,
        source: &str,
        file: &str,
        events: Option<super::store::JobEvents>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.observe = Observe {
                source: Some(source.to_owned()),
                file: Some(file.to_owned()),
                events,
            };
        }
        self
    }

    /// The byte stream (used by [`StreamOpener::open`]).
    pub fn stream(&self) -> BoxStream<'static, std::io::Result<Bytes>> {
        let st = Resume {
            inner: self.inner.clone(),
            offset: 0,
            validator: None,
            expected_len: None,
            body: None,
            skip: 0,
            attempts: 0,
            last_byte: None,
            done: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            match st.next_chunk().await {
                Ok(Some(b)) => Some((Ok(b), st)),
                Ok(None) => {
                    st.finished(None);
                    None
                }
                Err(e) => {
                    st.done = true;
                    st.finished(Some(&e));
                    Some((Err(e), st))
                }
            }
        })
        .boxed()
    }
}

impl StreamOpener for HttpFileOpener {
    fn open(&self) -> BoxFuture<'_, Result<Pin<Box<dyn AsyncRead + Send>>, SourceError>> {
        let s = self.stream();
        Box::pin(async move {
            let r: Pin<Box<dyn AsyncRead + Send>> = Box::pin(tokio_util::io::StreamReader::new(s));
            Ok(r)
        })
    }

    fn display(&self) -> String {
        redact_url(&self.inner.url)
    }
}

struct Resume {
    inner: Arc<Inner>,
    /// Bytes handed to the reader so far.
    offset: u64,
    /// `If-Range` value from the first response (a strong ETag, else Last-Modified).
    validator: Option<HeaderValue>,
    /// Full length of the identity representation, when the server said.
    expected_len: Option<u64>,
    body: Option<BoxStream<'static, Result<Bytes, HttpError>>>,
    /// Bytes to drop from the current body (a 200 answering a ranged request).
    skip: u64,
    /// Requests made.
    attempts: u32,
    last_byte: Option<u8>,
    done: bool,
}

/// The retry reason class of a download retry detail (`http-429`, `transport`, `reset`,
/// `truncated`): `throttled`, `timeout`, `auth`, `server` or `transport`, as the transport
/// logs its own retries.
fn reason_class(detail: &str) -> &'static str {
    match detail
        .strip_prefix("http-")
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(429) => "throttled",
        Some(408) => "timeout",
        Some(401 | 403) => "auth",
        Some(_) => "server",
        None => "transport",
    }
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl Resume {
    /// Counts the download's outcome and records its end in the timeline.
    fn finished(&self, err: Option<&std::io::Error>) {
        use fhirhose_metrics::catalogue::FILE_DOWNLOADS;
        let o = &self.inner.observe;
        let ty = self.inner.resource_type.as_deref().unwrap_or("unknown");
        let outcome = if err.is_some() { "failure" } else { "success" };
        FILE_DOWNLOADS.inc(&[&o.source(), ty, outcome]);
        let bytes = self.offset;
        let attempts = self.attempts;
        o.emit("download-end", |e| {
            e.reason = Some(outcome.to_owned());
            e.bytes = Some(bytes);
            e.detail = Some(format!("{attempts} requests"));
        });
    }

    fn retry_wait(&self, hint: Option<Duration>) -> Duration {
        if let Some(h) = hint {
            return h;
        }
        let i = &self.inner;
        i.backoff_floor
            .saturating_mul(2u32.saturating_pow(self.attempts.saturating_sub(1).min(16)))
            .min(i.backoff_ceiling)
    }

    /// Gives up, or waits before the next request.
    async fn before_retry(&mut self, reason: &str, hint: Option<Duration>) -> std::io::Result<()> {
        let url = redact_url(&self.inner.url);
        let o = &self.inner.observe;
        if self.attempts >= self.inner.max_attempts {
            fhirhose_metrics::catalogue::RETRIES_EXHAUSTED.inc(&[
                &o.source(),
                "download",
                retry_class(reason),
            ]);
            warn!(url = %url, attempts = self.attempts, reason = reason_class(reason), detail = reason, offset = self.offset, "giving up on export file");
            return Err(io_err(format!(
                "download of {url} failed after {} attempts (last: {reason})",
                self.attempts
            )));
        }
        self.inner.stats.retry(reason);
        let wait = self.retry_wait(hint);
        let status = reason.strip_prefix("http-").unwrap_or("none");
        fhirhose_metrics::catalogue::RETRIES.inc(&[
            &o.source(),
            "download",
            retry_class(reason),
            status,
        ]);
        let offset = self.offset;
        o.emit("retry", |e| {
            e.reason = Some(reason.to_owned());
            e.status = status.parse().ok();
            e.duration_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            e.bytes = Some(offset);
        });
        warn!(url = %url, attempt = self.attempts, reason = reason_class(reason), detail = reason, offset = self.offset, wait_ms = wait.as_millis() as u64, "resuming export file");
        self.inner.http.clock().sleep(wait).await;
        Ok(())
    }

    async fn request(&mut self) -> std::io::Result<()> {
        loop {
            self.attempts += 1;
            if self.attempts == 1 {
                self.inner.observe.emit("download-start", |_| {});
            }
            let i = &self.inner;
            let mut req = Request::get(i.url.clone())
                .interaction(Interaction::FileDownload {
                    resource_type: i.resource_type.clone(),
                })
                .token(i.token);
            if self.offset > 0 {
                let range = HeaderValue::from_str(&format!("bytes={}-", self.offset))
                    .map_err(|e| io_err(e.to_string()))?;
                req = req.header(RANGE, range);
                if let Some(v) = &self.validator {
                    req = req.header(reqwest::header::IF_RANGE, v.clone());
                }
            }
            match i.http.send(req).await {
                Ok(resp) => {
                    if resp.attempts() > 1 {
                        // 429/5xx/transport failures the transport retried (each one is
                        // logged there with its reason and Retry-After).
                        i.stats
                            .retry_n("transport-retried", u64::from(resp.attempts() - 1));
                        let n = resp.attempts() - 1;
                        i.observe.emit("retry", |e| {
                            e.reason = Some("transport-retried".into());
                            e.detail = Some(format!("{n} retried inside the transport"));
                        });
                    }
                    let status = resp.status();
                    let h = resp.headers();
                    if self.validator.is_none() {
                        self.validator = h
                            .get(ETAG)
                            .filter(|v| !v.as_bytes().starts_with(b"W/"))
                            .or_else(|| h.get(LAST_MODIFIED))
                            .cloned();
                    }
                    let identity = h.get(CONTENT_ENCODING).is_none();
                    if status == StatusCode::PARTIAL_CONTENT {
                        let (start, total) = h
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_content_range)
                            .ok_or_else(|| io_err("206 without a valid Content-Range".into()))?;
                        if start != self.offset {
                            return Err(io_err(format!(
                                "206 starts at byte {start}, expected {}",
                                self.offset
                            )));
                        }
                        self.expected_len = total.or(self.expected_len);
                        self.skip = 0;
                    } else {
                        if self.offset > 0 {
                            debug!(url = %redact_url(&i.url), offset = self.offset, "server ignored Range; skipping what was read");
                            i.stats.retry("range-ignored");
                        }
                        if identity {
                            self.expected_len = h
                                .get(CONTENT_LENGTH)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok());
                        }
                        self.skip = self.offset;
                    }
                    self.body = Some(resp.bytes_stream());
                    return Ok(());
                }
                Err(e) if e.status() == Some(416) && self.offset > 0 => {
                    // Nothing after `offset`: the file really ended there.
                    self.done = true;
                    return Ok(());
                }
                Err(e) => {
                    if e.needs_reauthorization() {
                        i.stats.reauth.store(true, Ordering::Relaxed);
                    }
                    let reason = match e.status() {
                        Some(s) => format!("http-{s}"),
                        None => "transport".to_owned(),
                    };
                    if !e.is_retryable() {
                        return Err(io_err(format!("{e}")));
                    }
                    self.before_retry(&reason, e.retry_after()).await?;
                }
            }
        }
    }

    fn complete(&self) -> bool {
        match self.expected_len {
            Some(n) => self.offset >= n,
            // Without a length, an NDJSON file that ends mid-line was cut short. (A file
            // that truly lacks its final newline is confirmed by a 416 on resume.)
            None => self.offset == 0 || self.last_byte == Some(b'\n'),
        }
    }

    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.body.is_none() {
                self.request().await?;
                if self.done {
                    return Ok(None);
                }
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = (self.skip as usize).min(chunk.len());
                        chunk = chunk.slice(n..);
                        self.skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.offset += chunk.len() as u64;
                    self.last_byte = chunk.last().copied();
                    fhirhose_metrics::catalogue::DOWNLOAD_BYTES.add(
                        &[
                            &self.inner.observe.source(),
                            self.inner.resource_type.as_deref().unwrap_or("unknown"),
                        ],
                        chunk.len() as u64,
                    );
                    self.inner
                        .stats
                        .bytes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    return Ok(Some(chunk));
                }
                Some(Err(_)) => {
                    self.body = None;
                    self.before_retry("reset", None).await?;
                }
                None => {
                    self.body = None;
                    if self.skip > 0 {
                        // A full refetch shorter than what we already had: the file changed.
                        return Err(io_err(format!(
                            "{} is shorter than the {} bytes already read",
                            redact_url(&self.inner.url),
                            self.offset
                        )));
                    }
                    if self.complete() {
                        self.done = true;
                        return Ok(None);
                    }
                    self.before_retry("truncated", None).await?;
                }
            }
        }
    }
}

/// `bytes a-b/len` → (a, Some(len)); `bytes a-b/*` → (a, None).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
