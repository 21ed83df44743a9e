//! Status polling: respectful waits until the manifest is ready.
//!
//! ```text
//!  GET status ─┬─ 202 ───────────────► wait: Retry-After (capped) or backoff ──┐
//!              │   (X-Progress logged)                                          │
//!              ├─ 429 / 5xx transient ► wait: Retry-After (capped) or backoff ──┤
//!              │   (after the transport's own retries; OperationOutcome codes   │
//!              │    transient/throttled/timeout/lock-error mean "wait")         │
//!              ├─ 200 ───────────────► manifest (+ `link` next partials) ─► done│
//!              ├─ 4xx, 5xx with a fatal OperationOutcome ─────────────► failed  │
//!              └─ deadline passed ─────────────────────────────────► failed     │
//!                        ▲                                                      │
//!                        └──────────────────────────────────────────────────────┘
//! ```
//!
//! Backoff without a server hint is exponential from the profile's floor to its ceiling
//! with "equal jitter" (half fixed, half random from a seedable RNG), so many clients do
//! not poll in lockstep but none polls faster than the floor. A `Retry-After` always wins,
//! capped by the profile (Cerner asks for hours). Every wait goes through the transport's
//! [`Clock`], so tests run days of polling in microseconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};
use url::Url;

use super::error::BulkError;
use super::manifest::Manifest;
use crate::http::{redact_url, Clock, HttpClient, HttpError, Interaction, Request};

/// How to wait between polls.
#[derive(Debug, Clone, PartialEq)]
pub struct PollPolicy {
    /// First computed wait.
    pub floor: Duration,
    /// Largest computed wait.
    pub ceiling: Duration,
    /// Largest honoured `Retry-After`.
    pub retry_after_cap: Duration,
    /// Overall time a job may take.
    pub deadline: Duration,
    /// Jitter seed (`None`: from the OS).
    pub jitter_seed: Option<u64>,
}

impl Default for PollPolicy {
    fn default() -> Self {
        super::profile::Profile::generic().poll_policy()
    }
}

/// Why the poller waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitReason {
    /// The server's `Retry-After` on a 202.
    RetryAfter,
    /// Computed backoff on a 202 without a hint.
    Backoff,
    /// A 429 or transient 5xx.
    Throttled,
}

impl WaitReason {
    /// Label for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetryAfter => "retry-after",
            Self::Backoff => "backoff",
            Self::Throttled => "throttled",
        }
    }
}

/// What polling observed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PollStats {
    /// Status requests made (transport retries not counted).
    pub polls: u64,
    /// Every wait, in seconds, in order.
    pub waits_s: Vec<f64>,
    /// Waits per reason.
    pub waits_by_reason: std::collections::BTreeMap<String, u64>,
    /// The last `X-Progress` seen.
    pub last_progress: Option<String>,
    /// Total time spent waiting, in seconds.
    pub waited_s: f64,
}

/// Called on every 202, with the `X-Progress` text, so the job record can show it.
pub type ProgressHook = Arc<dyn Fn(Option<&str>, Duration) + Send + Sync>;

/// A [`ProgressHook`] with a `Debug` form, for options structs.
#[derive(Clone)]
pub struct ProgressObserver(pub ProgressHook);

impl std::fmt::Debug for ProgressObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressObserver")
    }
}

/// The PHI-free figure in an `X-Progress` text: the first percentage (`42%`, `42.5%`) or
/// fraction (`3/10`), else `None`. `X-Progress` is free text from the server; only this
/// figure is shown on progress lines and stored in job timelines.
pub fn progress_figure(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let num = &text[start..i];
            let rest = text[i..].trim_start();
            if rest.starts_with('%') {
                return Some(format!("{num}%"));
            }
            if let Some(r) = rest.strip_prefix('/').map(str::trim_start) {
                let d: String = r.chars().take_while(char::is_ascii_digit).collect();
                if !d.is_empty() {
                    return Some(format!("{num}/{d}"));
                }
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Polls a status URL until the manifest is ready.
pub struct Poller {
    http: HttpClient,
    policy: PollPolicy,
    rng: Mutex<StdRng>,
    progress: Option<ProgressHook>,
    source: Option<String>,
    events: Option<super::store::JobEvents>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Issue codes that mean "try again later" in an OperationOutcome.
const TRANSIENT_CODES: &[&str] = &[
    "transient",
    "throttled",
    "timeout",
    "lock-error",
    "no-store",
    "incomplete",
];

/// Classifies a failed status response: `Ok(hint)` when it is worth waiting (with the
/// server's `Retry-After`), else the fatal error. A body that is an OperationOutcome
/// decides; otherwise 408/429/5xx, transport failures and timeouts wait.
pub(crate) fn classify_failure(err: HttpError, url: &Url) -> Result<Option<Duration>, BulkError> {
    if err.needs_reauthorization() {
        return Err(BulkError::Http(err));
    }
    let Some(status) = err.status() else {
        return if err.is_retryable() {
            Ok(None)
        } else {
            Err(BulkError::Http(err))
        };
    };
    let outcome: Option<Value> = err
        .body()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .filter(|v| v["resourceType"] == "OperationOutcome");
    let summary = outcome.as_ref().map(outcome_summary).unwrap_or_default();
    let codes_transient = outcome.as_ref().map(|o| {
        o["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
            .all(|i| {
                i["code"]
                    .as_str()
                    .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            })
    });
    let status_transient = matches!(status, 408 | 429 | 500..=599);
    let transient = match codes_transient {
        Some(t) => status_transient && t,
        None => status_transient,
    };
    if transient {
        Ok(err.retry_after())
    } else {
        Err(BulkError::ServerFailed {
            url: redact_url(url),
            status,
            summary: if summary.is_empty() {
                "no OperationOutcome".into()
            } else {
                summary
            },
        })
    }
}

/// `severity:code` of each issue (diagnostics are left out: they may carry PHI).
pub fn outcome_summary(o: &Value) -> String {
    o["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{}:{}",
                i["severity"].as_str().unwrap_or("?"),
                i["code"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Poller {
    /// A poller over `http` (its clock paces the waits).
    pub fn new(http: HttpClient, policy: PollPolicy) -> Self {
        let rng = match policy.jitter_seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            http,
            policy,
            rng: Mutex::new(rng),
            progress: None,
            source: None,
            events: None,
        }
    }

    /// Labels metrics with `source` and records each poll in the job's timeline.
    pub fn observed(mut self, source: &str, events: Option<super::store::JobEvents>) -> Self {
        self.source = Some(source.to_owned());
        self.events = events;
        self
    }

    /// Counts a poll (and its wait) and records it in the timeline.
    fn record_poll(
        &self,
        outcome: &str,
        status: Option<u16>,
        wait: Option<(Duration, WaitReason)>,
        progress: Option<&str>,
    ) {
        use fhirhose_metrics::catalogue::{EXPORT_POLLS, EXPORT_POLL_WAIT_SECONDS};
        let source = self
            .source
            .clone()
            .unwrap_or_else(fhirhose_metrics::default_source);
        EXPORT_POLLS.inc(&[&source, outcome]);
        if let Some((w, r)) = wait {
            EXPORT_POLL_WAIT_SECONDS.observe(&[&source, r.as_str()], w.as_secs_f64());
        }
        if let Some(ev) = &self.events {
            ev.emit("poll", |e| {
                e.status = status;
                e.reason = wait.map(|(_, r)| r.as_str().to_owned());
                e.duration_ms = wait.map(|(w, _)| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
                e.detail = progress.and_then(progress_figure);
            });
        }
    }

    /// Calls `hook` on every 202.
    pub fn on_progress(mut self, hook: ProgressHook) -> Self {
        self.progress = Some(hook);
        self
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.http.clock()
    }

    /// The computed wait before poll `n` (0-based count of waits without a hint).
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let p = &self.policy;
        let exp = p
            .floor
            .saturating_mul(2u32.saturating_pow(n.min(20)))
            .min(p.ceiling);
        let half = exp / 2;
        let jitter = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            rng.random_range(0.0..=1.0f64)
        };
        (half + half.mul_f64(jitter)).max(p.floor.min(p.ceiling))
    }

    fn hinted(&self, hint: Duration) -> Duration {
        hint.min(self.policy.retry_after_cap)
    }

    /// Polls `status_url` until the manifest (all partials merged) is ready, the job
    /// fails, or `deadline` (measured on the clock from now) passes. `job_id` names the
    /// job in logs.
    pub async fn wait_for_manifest(
        &self,
        status_url: &Url,
        job_id: &str,
        deadline: Duration,
    ) -> Result<(Manifest, PollStats), BulkError> {
        let clock = self.clock().clone();
        let start = clock.elapsed();
        let mut stats = PollStats::default();
        let mut backoffs = 0u32;
        let redacted = redact_url(status_url);
        let mut state = "submitted";
        loop {
            stats.polls += 1;
            let req = Request::get(status_url.clone())
                .header(ACCEPT, HeaderValue::from_static("application/json"))
                .interaction(Interaction::Other);
            let (wait, reason) = match self.http.send(req).await {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    let progress = resp
                        .headers()
                        .get("x-progress")
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.chars().take(100).collect::<String>());
                    if state != "in-progress" {
                        info!(
                            job = job_id,
                            from = state,
                            to = "in-progress",
                            "export job state changed"
                        );
                        state = "in-progress";
                    }
                    let (wait, reason) = match resp.retry_after() {
                        Some(h) => (self.hinted(h), WaitReason::RetryAfter),
                        None => {
                            backoffs += 1;
                            (self.backoff(backoffs - 1), WaitReason::Backoff)
                        }
                    };
                    info!(
                        job = job_id,
                        progress = progress.as_deref().unwrap_or("-"),
                        wait_ms = wait.as_millis() as u64,
                        reason = reason.as_str(),
                        request_id = resp.request_id(),
                        "export job in progress"
                    );
                    if let Some(h) = &self.progress {
                        h(progress.as_deref(), wait);
                    }
                    self.record_poll(
                        "in_progress",
                        Some(202),
                        Some((wait, reason)),
                        progress.as_deref(),
                    );
                    stats.last_progress = progress;
                    (wait, reason)
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    self.record_poll(
                        if status == 200 {
                            "complete"
                        } else {
                            "unexpected"
                        },
                        Some(status),
                        None,
                        None,
                    );
                    let body = resp.bytes().await?;
                    if status != 200 {
                        return Err(BulkError::Manifest {
                            url: redacted,
                            reason: format!("unexpected HTTP {status} from the status URL"),
                        });
                    }
                    let mut manifest = Manifest::parse(&body, status_url)?;
                    let mut pages = 1u32;
                    while let Some(next) = manifest.next.take() {
                        pages += 1;
                        let req = Request::get(next.clone())
                            .header(ACCEPT, HeaderValue::from_static("application/json"))
                            .interaction(Interaction::Other);
                        let body = self.http.send(req).await?.bytes().await?;
                        manifest.merge(Manifest::parse(&body, &next)?);
                        if pages > 10_000 {
                            return Err(BulkError::Manifest {
                                url: redacted,
                                reason: "more than 10000 partial manifests".into(),
                            });
                        }
                    }
                    info!(
                        job = job_id,
                        from = state,
                        to = "complete",
                        files = manifest.files.len(),
                        manifest_pages = pages,
                        polls = stats.polls,
                        "export job state changed"
                    );
                    return Ok((manifest, stats));
                }
                Err(e) => {
                    let status = e.status();
                    let hint = classify_failure(e, status_url)?;
                    let wait = match hint {
                        Some(h) => self.hinted(h),
                        None => {
                            backoffs += 1;
                            self.backoff(backoffs - 1)
                        }
                    };
                    warn!(
                        job = job_id,
                        status,
                        wait_ms = wait.as_millis() as u64,
                        reason = match status {
                            Some(429) => "throttled",
                            Some(408) => "timeout",
                            Some(401 | 403) => "auth",
                            Some(_) => "server",
                            None => "transport",
                        },
                        "status poll failed; waiting"
                    );
                    self.record_poll(
                        "throttled",
                        status,
                        Some((wait, WaitReason::Throttled)),
                        None,
                    );
                    (wait, WaitReason::Throttled)
                }
            };
            let elapsed = clock.elapsed().saturating_sub(start);
            if elapsed + wait > deadline {
                warn!(job = job_id, url = %redacted, "export deadline reached");
                return Err(BulkError::Deadline {
                    job_id: job_id.to_owned(),
                    days: deadline.as_secs_f64() / 86_400.0,
                });
            }
            stats.waits_s.push(wait.as_secs_f64());
            stats.waited_s += wait.as_secs_f64();
            *stats
                .waits_by_reason
                .entry(reason.as_str().to_owned())
                .or_default() += 1;
            clock.sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ErrorBody, HttpConfig, ManualClock};

    fn poller(seed: u64) -> Poller {
        let clock = ManualClock::starting_now();
        let http = HttpConfig::default()
            .build_with_clock(Arc::new(clock))
            .unwrap();
        Poller::new(
            http,
            PollPolicy {
                floor: Duration::from_secs(2),
                ceiling: Duration::from_secs(60),
                retry_after_cap: Duration::from_secs(600),
                deadline: Duration::from_secs(86_400),
                jitter_seed: Some(seed),
            },
        )
    }

    #[test]
    fn backoff_grows_within_floor_and_ceiling() {
        let p = poller(7);
        let waits: Vec<Duration> = (0..12).map(|n| p.backoff(n)).collect();
        for w in &waits {
            assert!(
                *w >= Duration::from_secs(2) && *w <= Duration::from_secs(60),
                "{w:?}"
            );
        }
        assert!(waits[5] > waits[0]);
        assert!(waits[11] >= Duration::from_secs(30));
        // Same seed, same waits.
        let q = poller(7);
        assert_eq!(waits, (0..12).map(|n| q.backoff(n)).collect::<Vec<_>>());
    }

    #[test]
    fn progress_figures_keep_numbers_only() {
        assert_eq!(progress_figure("42% complete").as_deref(), Some("42%"));
        assert_eq!(
            progress_figure("Exporting: 12.5 %").as_deref(),
            Some("12.5%")
        );
        assert_eq!(
            progress_figure("file 3/10 for Smith").as_deref(),
            Some("3/10")
        );
        assert_eq!(progress_figure("processing John Smith 1970"), None);
        assert_eq!(progress_figure("in progress"), None);
        assert_eq!(progress_figure(""), None);
    }

    #[test]
    fn retry_after_is_capped() {
        let p = poller(1);
        assert_eq!(
            p.hinted(Duration::from_secs(7200)),
            Duration::from_secs(600)
        );
        assert_eq!(p.hinted(Duration::from_secs(5)), Duration::from_secs(5));
    }

    fn status_err(status: u16, body: &str) -> HttpError {
        HttpError::Status {
            status,
            url: "x".into(),
            request_id: "r".into(),
            retry_after: None,
            body: ErrorBody(bytes::Bytes::from(body.to_owned())),
        }
    }

    #[test]
    fn operation_outcomes_are_classified() {
        let u = Url::parse("https://ehr.example/status/1").unwrap();
        let oo = |code: &str| {
            format!(
                r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}"}}]}}"#
            )
        };
        assert!(classify_failure(status_err(503, &oo("transient")), &u).is_ok());
        assert!(classify_failure(status_err(429, &oo("throttled")), &u).is_ok());
        assert!(classify_failure(status_err(502, "<html>"), &u).is_ok());
        let fatal = classify_failure(status_err(500, &oo("exception")), &u).unwrap_err();
        assert!(fatal.to_string().contains("error:exception"), "{fatal}");
        assert!(classify_failure(status_err(404, &oo("not-found")), &u).is_err());
        assert!(classify_failure(status_err(400, ""), &u).is_err());
    }
}
