//! [`HttpConfig`]: documented defaults, validated by [`HttpConfig::build`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::HttpClient;
use super::clock::{Clock, TokioClock};
use super::error::HttpError;
use super::limit::OriginLimits;

/// Transport settings. Every field has a default; vendor profiles override a few.
///
/// ```
/// use fhirhose_ingest::http::HttpConfig;
/// let client = HttpConfig::default().build().unwrap();
/// # drop(client);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `User-Agent` header.
    pub user_agent: String,
    /// TCP + TLS connect timeout. Default 10 s.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive. Default 60 s: bulk status polls and
    /// search pages on busy EHRs routinely take tens of seconds.
    #[serde(with = "secs")]
    pub response_timeout: Duration,
    /// Maximum idle time between body chunks. Default 120 s (large NDJSON downloads
    /// must not be cut by a total timeout, only by a stall).
    #[serde(with = "secs")]
    pub read_timeout: Duration,
    /// Redirects followed per attempt. Default 5.
    pub max_redirects: u32,
    /// Attempts per request, the first included. Default 6.
    pub max_attempts: u32,
    /// Upper bound on the time one request may take across attempts and waits.
    /// Default 30 min.
    #[serde(with = "secs")]
    pub max_elapsed: Duration,
    /// First backoff ceiling (full jitter doubles it each attempt). Default 500 ms.
    #[serde(with = "secs")]
    pub backoff_base: Duration,
    /// Largest computed backoff. Default 60 s.
    #[serde(with = "secs")]
    pub backoff_max: Duration,
    /// Largest wait honoured from `Retry-After` or `RateLimit-Reset`. Default 10 min:
    /// long enough for EHR maintenance windows announced via 503, short enough that a
    /// broken hint (a date far in the future) cannot stall a job forever.
    #[serde(with = "secs")]
    pub retry_after_cap: Duration,
    /// Seed for backoff jitter; `None` seeds from the OS. Tests set it.
    pub jitter_seed: Option<u64>,
    /// Default per-origin politeness.
    pub origin_limits: OriginLimits,
    /// Per-origin overrides, keyed by ASCII origin (`https://ehr.example:443` without
    /// default port: `https://ehr.example`).
    pub origin_overrides: HashMap<String, OriginLimits>,
    /// Honour `HTTP(S)_PROXY` environment variables. Default true.
    pub use_system_proxy: bool,
}

const fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}
const fn default_read_timeout() -> Duration {
    Duration::from_secs(120)
}
const fn default_max_elapsed() -> Duration {
    Duration::from_secs(30 * 60)
}
const fn default_backoff_base() -> Duration {
    Duration::from_millis(500)
}
const fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
const fn default_retry_after_cap() -> Duration {
    Duration::from_secs(10 * 60)
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            user_agent: concat!("fhirhose/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            read_timeout: default_read_timeout(),
            max_redirects: 5,
            max_attempts: 6,
            max_elapsed: default_max_elapsed(),
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
            retry_after_cap: default_retry_after_cap(),
            jitter_seed: None,
            origin_limits: OriginLimits::default(),
            origin_overrides: HashMap::new(),
            use_system_proxy: true,
        }
    }
}

impl HttpConfig {
    /// Validates the settings and builds a client with the production clock.
    pub fn build(&self) -> Result<HttpClient, HttpError> {
        self.build_with_clock(Arc::new(TokioClock::new()))
    }

    /// Like [`HttpConfig::build`] with an injected clock (tests: `ManualClock`).
    pub fn build_with_clock(&self, clock: Arc<dyn Clock>) -> Result<HttpClient, HttpError> {
        self.validate()
            .map_err(|reason| HttpError::Config { reason })?;
        HttpClient::from_config(self.clone(), clock)
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("read_timeout", self.read_timeout),
            ("max_elapsed", self.max_elapsed),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.backoff_base > self.backoff_max {
            return Err("backoff_base must not exceed backoff_max".into());
        }
        self.origin_limits.validate()?;
        for (origin, l) in &self.origin_overrides {
            l.validate()
                .map_err(|e| format!("origin_overrides[{origin}]: {e}"))?;
        }
        Ok(())
    }
}

/// `Duration` as (fractional) seconds in config files.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip() {
        let c = HttpConfig::default();
        assert!(c.validate().is_ok());
        let json = serde_json::to_string(&c).unwrap();
        let back: HttpConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let partial: HttpConfig =
            serde_json::from_str(r#"{"max_attempts": 3, "retry_after_cap": 1.5}"#).unwrap();
        assert_eq!(partial.max_attempts, 3);
        assert_eq!(partial.retry_after_cap, Duration::from_millis(1500));
    }

    #[test]
    fn rejects_bad_values() {
        let c = HttpConfig {
            max_attempts: 0,
            ..HttpConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("max_attempts"));
        let mut c = HttpConfig::default();
        c.origin_limits.requests_per_sec = 0.0;
        assert!(c.validate().is_err());
    }
}
