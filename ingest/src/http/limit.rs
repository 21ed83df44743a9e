//! Per-origin politeness: a token-bucket rate limit, an AIMD concurrency limit, and
//! pauses requested by `RateLimit-*` / `X-RateLimit-*` headers.
//!
//! AIMD: a 429 halves the allowed concurrency for that origin (never below 1); every
//! `recover_after` consecutive successes raise it by one, up to the configured maximum.
//! Permits are held by the [`super::Response`] until it is dropped, so a large download
//! counts against concurrency for as long as its body streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::debug;

use super::clock::Clock;

/// Politeness settings for one origin (scheme, host, port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginLimits {
    /// Sustained requests per second. Default 10: conservative enough for EHR FHIR APIs
    /// that publish no limit (Epic and Cerner document per-client throttles in this range).
    pub requests_per_sec: f64,
    /// Token-bucket burst size. Default 10 (one second of traffic).
    pub burst: u32,
    /// Maximum concurrent requests. Default 4, the Bulk Data IG's suggestion for parallel
    /// file downloads from one server.
    pub max_concurrency: u32,
    /// Consecutive successes before AIMD raises the concurrency by one. Default 20.
    pub recover_after: u32,
}

impl Default for OriginLimits {
    fn default() -> Self {
        Self {
            requests_per_sec: default_requests_per_sec(),
            burst: 10,
            max_concurrency: 4,
            recover_after: 20,
        }
    }
}

const fn default_requests_per_sec() -> f64 {
    10.0
}

impl OriginLimits {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.requests_per_sec.is_finite() && self.requests_per_sec > 0.0) {
            return Err("requests_per_sec must be a positive number".into());
        }
        if self.burst == 0 || self.max_concurrency == 0 || self.recover_after == 0 {
            return Err("burst, max_concurrency and recover_after must be at least 1".into());
        }
        Ok(())
    }
}

/// All origins' limiters.
#[derive(Debug)]
pub(crate) struct Limiters {
    default: OriginLimits,
    overrides: HashMap<String, OriginLimits>,
    max_pause: Duration,
    clock: Arc<dyn Clock>,
    map: Mutex<HashMap<String, Arc<OriginLimiter>>>,
}

impl Limiters {
    pub(crate) fn new(
        default: OriginLimits,
        overrides: HashMap<String, OriginLimits>,
        max_pause: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            default,
            overrides,
            max_pause,
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn for_origin(&self, origin: &str) -> Arc<OriginLimiter> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(origin.to_owned())
            .or_insert_with(|| {
                let limits = self.overrides.get(origin).unwrap_or(&self.default).clone();
                Arc::new(OriginLimiter::new(
                    origin.to_owned(),
                    limits,
                    self.max_pause,
                    self.clock.clone(),
                ))
            })
            .clone()
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last_refill: Duration,
    paused_until: Duration,
    limit: u32,
    in_flight: u32,
    successes: u32,
}

/// One origin's limiter.
#[derive(Debug)]
pub(crate) struct OriginLimiter {
    origin: String,
    limits: OriginLimits,
    max_pause: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    notify: Notify,
}

/// A concurrency slot; released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Arc<OriginLimiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut st = self.limiter.lock();
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        self.limiter.notify.notify_waiters();
    }
}

impl OriginLimiter {
    fn new(
        origin: String,
        limits: OriginLimits,
        max_pause: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.elapsed();
        Self {
            state: Mutex::new(State {
                tokens: f64::from(limits.burst),
                last_refill: now,
                paused_until: now,
                limit: limits.max_concurrency,
                in_flight: 0,
                successes: 0,
            }),
            origin,
            limits,
            max_pause,
            clock,
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current AIMD concurrency limit.
    pub(crate) fn concurrency_limit(&self) -> u32 {
        self.lock().limit
    }

    /// Waits for a concurrency slot, then for a rate token (and any header-requested pause).
    pub(crate) async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.in_flight < st.limit {
                    st.in_flight += 1;
                    break;
                }
            }
            notified.await;
        }
        let permit = Permit {
            limiter: self.clone(),
        };
        loop {
            let wait = {
                let mut st = self.lock();
                let now = self.clock.elapsed();
                if st.paused_until > now {
                    st.paused_until - now
                } else {
                    let dt = now.saturating_sub(st.last_refill).as_secs_f64();
                    st.last_refill = now;
                    st.tokens = (st.tokens + dt * self.limits.requests_per_sec)
                        .min(f64::from(self.limits.burst));
                    if st.tokens >= 1.0 {
                        st.tokens -= 1.0;
                        break;
                    }
                    Duration::from_secs_f64((1.0 - st.tokens) / self.limits.requests_per_sec)
                }
            };
            self.clock.sleep(wait).await;
        }
        permit
    }

    /// A request to this origin succeeded (any non-throttled response).
    pub(crate) fn on_success(&self) {
        let mut st = self.lock();
        st.successes += 1;
        if st.successes >= self.limits.recover_after && st.limit < self.limits.max_concurrency {
            st.limit += 1;
            st.successes = 0;
            debug!(origin = %self.origin, limit = st.limit, "raising concurrency limit");
            drop(st);
            self.notify.notify_waiters();
        }
    }

    /// The origin answered 429: halve concurrency (min 1), and pause for `hint` if given.
    pub(crate) fn on_throttle(&self, hint: Option<Duration>) {
        let mut st = self.lock();
        st.successes = 0;
        st.limit = (st.limit / 2).max(1);
        if let Some(h) = hint {
            let until = self.clock.elapsed() + h.min(self.max_pause);
            st.paused_until = st.paused_until.max(until);
        }
        debug!(origin = %self.origin, limit = st.limit, "lowering concurrency limit after 429");
    }

    /// Reads `RateLimit-Remaining`/`RateLimit-Reset` (IETF draft) or the `X-RateLimit-*`
    /// equivalents; when nothing remains, pauses the origin until the reset.
    pub(crate) fn observe_headers(&self, headers: &HeaderMap) {
        let get = |names: &[&str]| {
            names.iter().find_map(|n| {
                headers
                    .get(*n)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        };
        let Some(remaining) = get(&["ratelimit-remaining", "x-ratelimit-remaining"]) else {
            return;
        };
        if remaining > 0.0 {
            return;
        }
        let Some(reset) = get(&["ratelimit-reset", "x-ratelimit-reset"]) else {
            return;
        };
        // Some servers send an epoch timestamp rather than delta seconds.
        let secs = if reset > 1_000_000_000.0 {
            reset - self.clock.now_utc().unix_timestamp() as f64
        } else {
            reset
        };
        if !(secs.is_finite() && secs > 0.0) {
            return;
        }
        let pause = Duration::from_secs_f64(secs).min(self.max_pause);
        let mut st = self.lock();
        let until = self.clock.elapsed() + pause;
        st.paused_until = st.paused_until.max(until);
        debug!(origin = %self.origin, pause_ms = pause.as_millis() as u64, "rate limit exhausted, pausing origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::clock::ManualClock;
    use reqwest::header::HeaderValue;

    fn limiter(limits: OriginLimits, clock: &ManualClock) -> Arc<OriginLimiter> {
        Arc::new(OriginLimiter::new(
            "http://x".into(),
            limits,
            Duration::from_secs(120),
            Arc::new(clock.clone()),
        ))
    }

    #[tokio::test]
    async fn token_bucket_spaces_requests() {
        let clock = ManualClock::starting_now();
        let l = limiter(
            OriginLimits {
                requests_per_sec: 2.0,
                burst: 2,
                max_concurrency: 10,
                recover_after: 5,
            },
            &clock,
        );
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(l.acquire().await);
        }
        // Two from the burst, then one every 500 ms.
        let slept: Duration = clock.sleeps().iter().sum();
        assert_eq!(slept, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn aimd_halves_and_recovers() {
        let clock = ManualClock::starting_now();
        let l = limiter(
            OriginLimits {
                requests_per_sec: 1000.0,
                burst: 1000,
                max_concurrency: 8,
                recover_after: 3,
            },
            &clock,
        );
        l.on_throttle(None);
        assert_eq!(l.concurrency_limit(), 4);
        l.on_throttle(None);
        l.on_throttle(None);
        l.on_throttle(None);
        assert_eq!(l.concurrency_limit(), 1, "never below 1");
        for _ in 0..3 {
            l.on_success();
        }
        assert_eq!(l.concurrency_limit(), 2);
        // With limit 2, a third acquire must wait until a permit is dropped.
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.acquire().await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("third permit granted after a drop")
            .unwrap();
    }

    #[tokio::test]
    async fn ratelimit_headers_pause_origin() {
        let clock = ManualClock::starting_now();
        let l = limiter(OriginLimits::default(), &clock);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("7"));
        l.observe_headers(&h);
        let _p = l.acquire().await;
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(7)]);

        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", HeaderValue::from_static("5"));
        h.insert("ratelimit-reset", HeaderValue::from_static("30"));
        l.observe_headers(&h);
        let _q = l.acquire().await;
        assert_eq!(clock.sleeps().len(), 1, "remaining > 0 does not pause");
    }
}
