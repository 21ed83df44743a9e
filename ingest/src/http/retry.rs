//! Retry = classification + policy + clock (STYLE.md #3).
//!
//! * **Classification** ([`Outcome::classify`]): 2xx/3xx succeed, 401 asks the bearer
//!   source for a fresh token and replays once, 403 is a scope problem, 408/429/5xx are
//!   transient, any other 4xx is fatal. Transport errors are retried when the request
//!   never reached the server (connect errors) or when the request is idempotent.
//! * **Policy** ([`RetryPolicy`]): a server hint (`Retry-After`, seconds or HTTP-date)
//!   always wins over computed backoff, capped by `retry_after_cap`; otherwise exponential
//!   backoff with full jitter from a seedable RNG. Attempts *and* elapsed time are bounded.
//! * **Clock**: waits go through [`super::Clock`] so tests do not sleep.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use time::OffsetDateTime;

/// What to do with a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx, or a 3xx that is not a followable redirect (304).
    Success,
    /// 301/302/303/307/308.
    Redirect,
    /// 401: refresh the token once and replay once.
    Unauthorized,
    /// 403: the server says the grant does not cover the request.
    Forbidden,
    /// 408, 429, 5xx.
    Transient,
    /// Any other 4xx (or 1xx oddities).
    Fatal,
}

impl Outcome {
    pub(crate) fn classify(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Success,
            301 | 302 | 303 | 307 | 308 => Self::Redirect,
            300..=399 => Self::Success,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            408 | 429 | 500..=599 => Self::Transient,
            _ => Self::Fatal,
        }
    }
}

/// The reason label used in the `retrying request` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    Throttled,
    Server,
    Transport,
    Timeout,
    Auth,
}

impl RetryReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Server => "server",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::Auth => "auth",
        }
    }

    pub(crate) fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            429 => Self::Throttled,
            408 => Self::Timeout,
            _ => Self::Server,
        }
    }
}

/// Delay-seconds at or above this (about 31 years) are not delays but Unix timestamps.
const EPOCH_SECONDS_FLOOR: u64 = 1_000_000_000;
/// Timestamps at or above this are Unix milliseconds (1e12 ms is September 2001).
const EPOCH_MILLIS_FLOOR: u64 = 1_000_000_000_000;

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or
/// asctime). A date in the past means "now". Returns `None` for anything unparsable.
///
/// Some servers send an absolute Unix time where delta-seconds belong (the SMART reference
/// bulk-data-server's rate limiter sends epoch seconds, or epoch milliseconds on the request
/// that trips the limit). A digit string of at least [`EPOCH_SECONDS_FLOOR`] cannot be a
/// meaningful delay, so it is read as epoch seconds (or milliseconds past
/// [`EPOCH_MILLIS_FLOOR`]) and turned into the time left until then.
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings saturate rather than fail; the cap applies later.
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        if n < EPOCH_SECONDS_FLOOR {
            return Some(Duration::from_secs(n));
        }
        let millis = if n >= EPOCH_MILLIS_FLOOR {
            i128::from(n)
        } else {
            i128::from(n) * 1000
        };
        let now_ms = now.unix_timestamp_nanos() / 1_000_000;
        let left = u64::try_from((millis - now_ms).max(0)).unwrap_or(u64::MAX);
        return Some(Duration::from_millis(left));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let when = OffsetDateTime::from(when);
    let delta = when - now;
    Some(if delta.is_positive() {
        Duration::try_from(delta).unwrap_or(Duration::ZERO)
    } else {
        Duration::ZERO
    })
}

/// `Retry-After` from response headers, if present and parsable.
pub(crate) fn retry_after_header(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Retry bounds and backoff shape. Built by [`super::HttpConfig::build`].
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) max_elapsed: Duration,
    pub(crate) base: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) retry_after_cap: Duration,
    rng: Mutex<StdRng>,
}

impl RetryPolicy {
    pub(crate) fn new(
        max_attempts: u32,
        max_elapsed: Duration,
        base: Duration,
        max_backoff: Duration,
        retry_after_cap: Duration,
        seed: Option<u64>,
    ) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            max_attempts,
            max_elapsed,
            base,
            max_backoff,
            retry_after_cap,
            rng: Mutex::new(rng),
        }
    }

    /// The wait before attempt `attempt + 1`, given that attempt `attempt` (1-based) failed
    /// with an optional server hint. The hint wins, capped; otherwise full jitter:
    /// `uniform(0, min(max_backoff, base * 2^(attempt-1)))`.
    pub(crate) fn wait(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(h) = hint {
            return h.min(self.retry_after_cap);
        }
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exp.min(self.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let ms = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            rng.random_range(0..=ceiling_ms)
        };
        Duration::from_millis(ms)
    }

    /// Whether another attempt fits the bounds after waiting `wait`.
    pub(crate) fn allows(&self, attempts_done: u32, elapsed: Duration, wait: Duration) -> bool {
        attempts_done < self.max_attempts && elapsed.saturating_add(wait) <= self.max_elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn classify_statuses() {
        let c = |s: u16| Outcome::classify(StatusCode::from_u16(s).unwrap());
        assert_eq!(c(200), Outcome::Success);
        assert_eq!(c(202), Outcome::Success);
        assert_eq!(c(206), Outcome::Success);
        assert_eq!(c(304), Outcome::Success);
        assert_eq!(c(302), Outcome::Redirect);
        assert_eq!(c(307), Outcome::Redirect);
        assert_eq!(c(401), Outcome::Unauthorized);
        assert_eq!(c(403), Outcome::Forbidden);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(c(s), Outcome::Transient, "{s}");
        }
        for s in [400, 404, 410, 422] {
            assert_eq!(c(s), Outcome::Fatal, "{s}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = datetime!(1994-11-06 08:49:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // IMF-fixdate, RFC 850, asctime: all 37 s after `now`.
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(v, now),
                Some(Duration::from_secs(37)),
                "{v}"
            );
        }
        // A date in the past means retry now.
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_unix_timestamps_mean_time_left() {
        // The SMART reference bulk-data-server's rate limiter: epoch seconds while blocked,
        // epoch milliseconds (now + 5 min) on the request that trips the limit.
        let now = datetime!(2026-12-07 13:45:28 UTC);
        let secs = now.unix_timestamp();
        assert_eq!(
            parse_retry_after(&(secs + 300).to_string(), now),
            Some(Duration::from_secs(300))
        );
        let millis = now.unix_timestamp_nanos() / 1_000_000 + 299_500;
        assert_eq!(
            parse_retry_after(&millis.to_string(), now),
            Some(Duration::from_millis(299_500))
        );
        // A timestamp in the past means retry now.
        assert_eq!(
            parse_retry_after(&(secs - 10).to_string(), now),
            Some(Duration::ZERO)
        );
        // Just below the floor is still a (huge) delay; absurd lengths stay saturated.
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(999_999_999))
        );
        assert!(parse_retry_after("99999999999999999999999", now)
            .is_some_and(|d| d > Duration::from_secs(100 * 365 * 86_400)));
    }

    #[test]
    fn hint_wins_and_is_capped() {
        let p = RetryPolicy::new(
            5,
            Duration::from_secs(600),
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(60),
            Some(7),
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn full_jitter_is_bounded_and_seeded() {
        let mk = || {
            RetryPolicy::new(
                10,
                Duration::from_secs(600),
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Some(42),
            )
        };
        let (a, b) = (mk(), mk());
        for attempt in 1..=8 {
            let wa = a.wait(attempt, None);
            assert_eq!(wa, b.wait(attempt, None), "same seed, same jitter");
            let ceiling =
                Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
            assert!(wa <= ceiling, "attempt {attempt}: {wa:?} > {ceiling:?}");
        }
        // Huge attempt numbers do not overflow.
        assert!(a.wait(200, None) <= Duration::from_secs(2));
    }

    #[test]
    fn bounds_on_attempts_and_elapsed() {
        let p = RetryPolicy::new(
            3,
            Duration::from_secs(10),
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(60),
            Some(1),
        );
        assert!(p.allows(1, Duration::ZERO, Duration::from_secs(1)));
        assert!(!p.allows(3, Duration::ZERO, Duration::ZERO));
        assert!(!p.allows(1, Duration::from_secs(9), Duration::from_secs(2)));
    }
}
