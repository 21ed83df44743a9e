//! Fault injection: what can go wrong, how often, and the `--faults` grammar.
//!
//! A [`FaultSpec`] is parsed from a comma-separated list of items:
//!
//! ```text
//! spec    := item ("," item)*
//! item    := STATUS "=" when          e.g. 429=0.2   503=every:4@status   500=first:2
//!          | "reset" ["=" when]       abort the connection half-way through the body
//!          | "truncate" ["=" when]    end the body cleanly after half its bytes (no length
//!                                     header, so only the content reveals it)
//!          | "slow" "=" (DURATION | when)    delay the response (default delay 100ms)
//!          | "slow-delay" "=" DURATION
//!          | "retry-after" "=" (SECS | "date" | "date:" SECS)
//!                                     Retry-After on injected 429/503: delta-seconds
//!                                     (default 1) or an HTTP-date that far in the future
//!          | "poll-retry-after" "=" SECS      (alias "retry-after-cap") vendor quirk:
//!                                     status polls answer 202 with this Retry-After (3600 =
//!                                     the hour-long Retry-After some EHRs send)
//!          | "token-lifetime" "=" DURATION    access tokens expire after this
//!          | "clock-skew" "=" ["-"] SECS    the token endpoint's clock runs this far
//!                                     ahead (or behind) when it checks client assertions
//!          | "revoke-after" "=" N     revoke every token after N authenticated FHIR
//!                                     requests (a revocation mid-job); fires once
//!          | "invalid-grant-on-refresh"       refresh_token grants fail with invalid_grant
//!          | "redirect-files"         file URLs answer 307 to the storage origin with a
//!                                     signed-looking `?sig=` query; storage rejects bearers
//!          | "ignore-range"           file downloads ignore `Range` (200, whole file)
//!          | "delete-404"             DELETE on a status URL answers 404
//!          | "tiny-files" ["=" N]     at most N resources per output file (default 1)
//!          | "error-file"             the manifest carries an `error` file of OperationOutcomes
//!          | "deleted"                the manifest carries a `deleted` file (Bundles of DELETEs)
//!          | "export-error"           the export job fails: status answers 500 + OperationOutcome
//!          | "bad-line"               the first output file has one malformed JSON line in
//!                                     its middle (not counted in the manifest `count`)
//!          | "crlf"                   output files use `\r\n` line endings
//!          | "reject-repeated-type"   vendor quirk: a repeated `_type` parameter is a 400
//!          | "bulk-v4"                Bulk Data 4.0 server: kick-off is POST-only (GET is
//!                                     405), comma-joined `_type` is a 400, and the manifest
//!                                     names its error files `outcome` instead of `error`
//!          | "single-job"             vendor quirk: kick-off answers 429 while another
//!                                     export of the same client is still in progress
//!          | "max-concurrent-files" "=" N     more than N concurrent file downloads: 429
//!          | "rate-limit" "=" N "/" ("s" | "m") ["@" targets]
//!                                     token bucket of N requests per second/minute (burst
//!                                     N); beyond it 429 with Retry-After = time to the next
//!                                     token (rounded up to whole seconds)
//!          | "seed" "=" N             seed of the fault RNG (default 0)
//! when    := rate ["@" targets]
//! rate    := FLOAT in [0,1] (probability, drawn from the seeded RNG)
//!          | "always" | "every:" N (the Nth, 2Nth, ... eligible request) | "first:" N
//! targets := target ("+" target)*     default: kickoff+status+file+fhir
//! target  := "token" | "kickoff" | "status" | "file" | "fhir" | "all"
//! DURATION:= INT ("ms" | "s" | "m")  (a bare 0 is allowed)
//! STATUS  := an HTTP status 400..=599 (429 and 503 carry Retry-After)
//! ```
//!
//! Discovery (`/.well-known/smart-configuration`, `/metadata`) never fails, so a client
//! can always start. Each request draws at most one status fault (first matching rule in
//! spec order); `slow` and one body fault (`reset`/`truncate`) may combine with success.
//! Probabilities come from one SplitMix64 stream seeded by `seed`, so a given request
//! sequence sees the same faults on every run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::rng::SplitMix64;

/// Where a rule applies. A request belongs to exactly one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets(u8);

impl Targets {
    /// `POST /auth/token` (and the other `/auth/*` endpoints).
    pub const TOKEN: Self = Self(1);
    /// Bulk export kick-off (`$export`).
    pub const KICKOFF: Self = Self(2);
    /// Bulk status polls and DELETE.
    pub const STATUS: Self = Self(4);
    /// Export file downloads, on either origin.
    pub const FILE: Self = Self(8);
    /// FHIR read and search.
    pub const FHIR: Self = Self(16);
    /// Everything except discovery.
    pub const ALL: Self = Self(31);
    /// The default for rules without `@`.
    pub const DEFAULT: Self = Self(2 | 4 | 8 | 16);

    /// Whether `self` includes every target of `other`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

/// How often a rule fires.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Rate {
    /// Independently with this probability, from the seeded RNG.
    Probability(f64),
    /// The Nth, 2Nth, 3Nth... eligible request.
    Every(u64),
    /// The first N eligible requests.
    First(u64),
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer with this status (429 and 503 with `Retry-After`) instead of the real response.
    Status(u16),
    /// Send half of the body, then abort the connection.
    Reset,
    /// Send half of the body and end it cleanly (chunked, no `Content-Length`).
    Truncate,
    /// Delay the response by [`FaultSpec::slow_delay`].
    Slow,
}

/// A token-bucket rate limit (`rate-limit=N/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period (also the burst size).
    pub requests: u32,
    /// The period.
    pub per: Duration,
    /// Which requests count.
    pub targets: Targets,
}

/// One rate-driven rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// What happens.
    pub kind: FaultKind,
    /// How often.
    pub rate: Rate,
    /// To which requests.
    pub targets: Targets,
}

/// How `Retry-After` is written on injected 429/503 responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <IMF-fixdate>` this many seconds in the future.
    HttpDate(u64),
}

/// The full fault configuration; `FaultSpec::default()` injects nothing. See the module
/// docs for the grammar [`FromStr`] accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Seed of the fault RNG.
    pub seed: u64,
    /// Rate-driven rules, in spec order.
    pub rules: Vec<FaultRule>,
    /// Delay applied by `slow` rules.
    pub slow_delay: Duration,
    /// `Retry-After` style for injected 429/503.
    pub retry_after: RetryAfter,
    /// Status polls answer 202 with this `Retry-After` (seconds) instead of the configured one.
    pub poll_retry_after: Option<u64>,
    /// Overrides the configured access-token lifetime.
    pub token_lifetime: Option<Duration>,
    /// Revoke all tokens after this many authenticated FHIR requests.
    pub revoke_after: Option<u64>,
    /// `refresh_token` grants fail with `invalid_grant`.
    pub invalid_grant_on_refresh: bool,
    /// File downloads on the FHIR origin redirect (307) to the storage origin.
    pub redirect_files: bool,
    /// File downloads ignore `Range`.
    pub ignore_range: bool,
    /// DELETE on a status URL answers 404.
    pub delete_404: bool,
    /// Caps resources per output file.
    pub tiny_files: Option<usize>,
    /// The manifest lists an `error` file.
    pub error_file: bool,
    /// The manifest lists a `deleted` file.
    pub deleted: bool,
    /// Export jobs fail (status 500 with an OperationOutcome).
    pub export_error: bool,
    /// A repeated `_type` parameter is rejected with 400.
    pub reject_repeated_type: bool,
    /// The first output file carries one malformed line.
    pub bad_line: bool,
    /// Output files use CRLF line endings.
    pub crlf: bool,
    /// Behave like a Bulk Data 4.0 server (POST-only kick-off, `outcome` in the manifest).
    pub bulk_v4: bool,
    /// Only one in-progress export per client; further kick-offs get 429.
    pub single_job: bool,
    /// File downloads beyond this many in flight get 429.
    pub max_concurrent_files: Option<usize>,
    /// A token-bucket rate limit answered with 429.
    pub rate_limit: Option<RateLimit>,
    /// The token endpoint's clock is this many seconds ahead (negative: behind) when it
    /// checks client assertions.
    pub clock_skew_s: i64,
}

/// Default delay of `slow` when only a rate is given: long enough to be visible in a
/// timing assertion, short enough to keep tests fast.
const fn default_slow_delay() -> Duration {
    Duration::from_millis(100)
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            seed: 0,
            rules: Vec::new(),
            slow_delay: default_slow_delay(),
            retry_after: RetryAfter::Seconds(1),
            poll_retry_after: None,
            token_lifetime: None,
            revoke_after: None,
            invalid_grant_on_refresh: false,
            redirect_files: false,
            ignore_range: false,
            delete_404: false,
            tiny_files: None,
            error_file: false,
            deleted: false,
            export_error: false,
            reject_repeated_type: false,
            bad_line: false,
            crlf: false,
            bulk_v4: false,
            single_job: false,
            max_concurrent_files: None,
            rate_limit: None,
            clock_skew_s: 0,
        }
    }
}

impl FaultSpec {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }
}

/// A `--faults` string that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fault item `{item}`: {reason}")]
pub struct FaultSpecError {
    /// The offending item.
    pub item: String,
    /// Why it was rejected.
    pub reason: String,
}

pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if let Some(n) = s.strip_suffix("ms") {
        return n.parse().ok().map(Duration::from_millis);
    }
    if let Some(n) = s.strip_suffix('s') {
        return n.parse().ok().map(Duration::from_secs);
    }
    if let Some(n) = s.strip_suffix('m') {
        return n.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "always" {
        return Ok(Rate::Probability(1.0));
    }
    if let Some(n) = s.strip_prefix("every:") {
        return match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Rate::Every(n)),
            _ => Err(format!("`every:` needs a positive integer, got `{n}`")),
        };
    }
    if let Some(n) = s.strip_prefix("first:") {
        return n
            .parse::<u64>()
            .map(Rate::First)
            .map_err(|_| format!("`first:` needs an integer, got `{n}`"));
    }
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(Rate::Probability(p)),
        _ => Err(format!(
            "expected a probability in [0,1], always, every:N or first:N, got `{s}`"
        )),
    }
}

fn parse_targets(s: &str) -> Result<Targets, String> {
    let mut t = 0u8;
    for part in s.split('+') {
        t |= match part {
            "token" => Targets::TOKEN.0,
            "kickoff" => Targets::KICKOFF.0,
            "status" => Targets::STATUS.0,
            "file" | "files" => Targets::FILE.0,
            "fhir" => Targets::FHIR.0,
            "all" => Targets::ALL.0,
            other => return Err(format!("unknown target `{other}`")),
        };
    }
    Ok(Targets(t))
}

fn parse_when(v: Option<&str>) -> Result<(Rate, Targets), String> {
    let Some(v) = v else {
        return Ok((Rate::Probability(1.0), Targets::DEFAULT));
    };
    let (rate, targets) = match v.split_once('@') {
        Some((r, t)) => (r, parse_targets(t)?),
        None => (v, Targets::DEFAULT),
    };
    Ok((parse_rate(rate)?, targets))
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spec(s)
    }
}

fn parse_spec<'a>(s: &'a str) -> Result<FaultSpec, FaultSpecError> {
    {
        let mut spec = FaultSpec::default();
        for raw in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let err = |reason: String| FaultSpecError {
                item: raw.to_owned(),
                reason,
            };
            let (key, value) = match raw.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (raw, None),
            };
            let need = |v: Option<&'a str>| v.ok_or_else(|| err("needs a value".to_owned()));
            let int = |v: Option<&'a str>| -> Result<u64, FaultSpecError> {
                let v = need(v)?;
                v.parse()
                    .map_err(|_| err(format!("expected an integer, got `{v}`")))
            };
            let dur = |v: Option<&'a str>| -> Result<Duration, FaultSpecError> {
                let v = need(v)?;
                parse_duration(v)
                    .ok_or_else(|| err(format!("expected a duration like 200ms or 3s, got `{v}`")))
            };
            match key {
                k if k.len() == 3 && k.bytes().all(|b| b.is_ascii_digit()) => {
                    let code: u16 = k.parse().map_err(|_| err("bad status".to_owned()))?;
                    if !(400..=599).contains(&code) {
                        return Err(err("status must be in 400..=599".to_owned()));
                    }
                    let (rate, targets) = parse_when(Some(need(value)?)).map_err(err)?;
                    spec.rules.push(FaultRule {
                        kind: FaultKind::Status(code),
                        rate,
                        targets,
                    });
                }
                "reset" | "truncate" => {
                    let (rate, targets) = parse_when(value).map_err(err)?;
                    let kind = if key == "reset" {
                        FaultKind::Reset
                    } else {
                        FaultKind::Truncate
                    };
                    spec.rules.push(FaultRule {
                        kind,
                        rate,
                        targets,
                    });
                }
                "slow" => {
                    let v = need(value)?;
                    let (head, targets) = match v.split_once('@') {
                        Some((h, t)) => (h, parse_targets(t).map_err(err)?),
                        None => (v, Targets::DEFAULT),
                    };
                    let rate = match parse_duration(head) {
                        Some(d) => {
                            spec.slow_delay = d;
                            Rate::Probability(1.0)
                        }
                        None => parse_rate(head).map_err(err)?,
                    };
                    spec.rules.push(FaultRule {
                        kind: FaultKind::Slow,
                        rate,
                        targets,
                    });
                }
                "slow-delay" => spec.slow_delay = dur(value)?,
                "retry-after" => {
                    let v = need(value)?;
                    spec.retry_after = if v == "date" {
                        RetryAfter::HttpDate(1)
                    } else if let Some(n) = v.strip_prefix("date:") {
                        RetryAfter::HttpDate(
                            n.parse().map_err(|_| err(format!("bad seconds `{n}`")))?,
                        )
                    } else {
                        RetryAfter::Seconds(
                            v.parse()
                                .map_err(|_| err(format!("expected seconds or date, got `{v}`")))?,
                        )
                    };
                }
                "poll-retry-after" | "retry-after-cap" => spec.poll_retry_after = Some(int(value)?),
                "token-lifetime" => spec.token_lifetime = Some(dur(value)?),
                "clock-skew" => {
                    spec.clock_skew_s = need(value)?
                        .parse()
                        .map_err(|_| err("clock-skew takes signed seconds".into()))?;
                }
                "revoke-after" => spec.revoke_after = Some(int(value)?),
                "seed" => spec.seed = int(value)?,
                "tiny-files" => {
                    let n = match value {
                        Some(_) => int(value)? as usize,
                        None => 1,
                    };
                    spec.tiny_files = Some(n.max(1));
                }
                "invalid-grant-on-refresh" => spec.invalid_grant_on_refresh = true,
                "redirect-files" => spec.redirect_files = true,
                "ignore-range" => spec.ignore_range = true,
                "delete-404" => spec.delete_404 = true,
                "error-file" => spec.error_file = true,
                "deleted" => spec.deleted = true,
                "export-error" => spec.export_error = true,
                "reject-repeated-type" => spec.reject_repeated_type = true,
                "rate-limit" => {
                    let v = need(value)?;
                    let (head, targets) = match v.split_once('@') {
                        Some((h, t)) => (h, parse_targets(t).map_err(err)?),
                        None => (v, Targets::DEFAULT),
                    };
                    let (n, unit) = head
                        .split_once('/')
                        .ok_or_else(|| err("expected N/s or N/m".to_owned()))?;
                    let requests: u32 =
                        n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            err(format!("expected a positive integer, got `{n}`"))
                        })?;
                    let per = match unit {
                        "s" => Duration::from_secs(1),
                        "m" => Duration::from_secs(60),
                        other => return Err(err(format!("unit must be s or m, got `{other}`"))),
                    };
                    spec.rate_limit = Some(RateLimit {
                        requests,
                        per,
                        targets,
                    });
                }
                "bulk-v4" => spec.bulk_v4 = true,
                "bad-line" => spec.bad_line = true,
                "crlf" => spec.crlf = true,
                "single-job" => spec.single_job = true,
                "max-concurrent-files" => {
                    spec.max_concurrent_files = Some(int(value)?.max(1) as usize)
                }
                other => return Err(err(format!("unknown fault `{other}`"))),
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Targets::ALL {
            return f.write_str("all");
        }
        let names = [
            (Targets::TOKEN, "token"),
            (Targets::KICKOFF, "kickoff"),
            (Targets::STATUS, "status"),
            (Targets::FILE, "file"),
            (Targets::FHIR, "fhir"),
        ];
        let parts: Vec<&str> = names
            .iter()
            .filter(|(t, _)| self.contains(*t))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&parts.join("+"))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Probability(p) if *p >= 1.0 => f.write_str("always"),
            // `{:?}` keeps a decimal point ("0.0"), so `slow=0.0` reads back as a rate,
            // not as the duration `0`.
            Rate::Probability(p) => write!(f, "{p:?}"),
            Rate::Every(n) => write!(f, "every:{n}"),
            Rate::First(n) => write!(f, "first:{n}"),
        }
    }
}

/// The canonical `--faults` string: parsing it gives back an equal spec.
impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = FaultSpec::default();
        let mut items: Vec<String> = Vec::new();
        for r in &self.rules {
            let targets = if r.targets == Targets::DEFAULT {
                String::new()
            } else {
                format!("@{}", r.targets)
            };
            items.push(format!("{}={}{targets}", r.kind, r.rate));
        }
        if self.slow_delay != d.slow_delay {
            items.push(format!("slow-delay={}ms", self.slow_delay.as_millis()));
        }
        match self.retry_after {
            RetryAfter::Seconds(1) => {}
            RetryAfter::Seconds(s) => items.push(format!("retry-after={s}")),
            RetryAfter::HttpDate(s) => items.push(format!("retry-after=date:{s}")),
        }
        if let Some(s) = self.poll_retry_after {
            items.push(format!("poll-retry-after={s}"));
        }
        if let Some(t) = self.token_lifetime {
            items.push(format!("token-lifetime={}ms", t.as_millis()));
        }
        if let Some(n) = self.revoke_after {
            items.push(format!("revoke-after={n}"));
        }
        if let Some(n) = self.tiny_files {
            items.push(format!("tiny-files={n}"));
        }
        if let Some(n) = self.max_concurrent_files {
            items.push(format!("max-concurrent-files={n}"));
        }
        if let Some(l) = self.rate_limit {
            let unit = if l.per >= Duration::from_secs(60) {
                "m"
            } else {
                "s"
            };
            let targets = if l.targets == Targets::DEFAULT {
                String::new()
            } else {
                format!("@{}", l.targets)
            };
            items.push(format!("rate-limit={}/{unit}{targets}", l.requests));
        }
        let flags = [
            (self.invalid_grant_on_refresh, "invalid-grant-on-refresh"),
            (self.redirect_files, "redirect-files"),
            (self.ignore_range, "ignore-range"),
            (self.delete_404, "delete-404"),
            (self.error_file, "error-file"),
            (self.deleted, "deleted"),
            (self.export_error, "export-error"),
            (self.reject_repeated_type, "reject-repeated-type"),
            (self.bad_line, "bad-line"),
            (self.crlf, "crlf"),
            (self.bulk_v4, "bulk-v4"),
            (self.single_job, "single-job"),
        ];
        items.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| (*n).to_owned()),
        );
        if self.seed != d.seed {
            items.push(format!("seed={}", self.seed));
        }
        f.write_str(&items.join(","))
    }
}

/// Deserializes from the `--faults` string syntax.
impl<'de> serde::Deserialize<'de> for FaultSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Status(s) => write!(f, "{s}"),
            FaultKind::Reset => f.write_str("reset"),
            FaultKind::Truncate => f.write_str("truncate"),
            FaultKind::Slow => f.write_str("slow"),
        }
    }
}

/// What the engine decided for one request.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Decision {
    pub(crate) status: Option<u16>,
    /// Set when the status comes from the rate limit: seconds until the next token.
    pub(crate) rate_limited: Option<u64>,
    pub(crate) slow: Option<Duration>,
    pub(crate) body: Option<FaultKind>,
}

impl Decision {
    /// Short names of the faults applied, for the request log.
    pub(crate) fn label(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.rate_limited.is_some() {
            parts.push("rate-limit".to_owned());
        } else if let Some(s) = self.status {
            parts.push(s.to_string());
        }
        if self.slow.is_some() {
            parts.push("slow".to_owned());
        }
        if let Some(b) = self.body {
            parts.push(b.to_string());
        }
        (!parts.is_empty()).then(|| parts.join("+"))
    }
}

/// Per-server fault state: the spec, the RNG and per-rule counters.
#[derive(Debug)]
pub(crate) struct FaultEngine {
    pub(crate) spec: FaultSpec,
    rng: SplitMix64,
    counters: Vec<u64>,
    pub(crate) authenticated_requests: u64,
    pub(crate) revoked: bool,
    /// Token bucket: (tokens left, last refill).
    bucket: Option<(f64, tokio::time::Instant)>,
}

impl FaultEngine {
    pub(crate) fn new(spec: FaultSpec) -> Self {
        Self {
            rng: SplitMix64::new(spec.seed),
            counters: vec![0; spec.rules.len()],
            spec,
            authenticated_requests: 0,
            revoked: false,
            bucket: None,
        }
    }

    pub(crate) fn decide(&mut self, target: Targets) -> Decision {
        let mut d = Decision::default();
        for (i, rule) in self.spec.rules.iter().enumerate() {
            if !rule.targets.contains(target) {
                continue;
            }
            self.counters[i] += 1;
            let n = self.counters[i];
            let fire = match rule.rate {
                Rate::Probability(p) => self.rng.chance(p),
                Rate::Every(k) => n % k == 0,
                Rate::First(k) => n <= k,
            };
            if !fire {
                continue;
            }
            match rule.kind {
                FaultKind::Status(s) if d.status.is_none() => d.status = Some(s),
                FaultKind::Slow => d.slow = Some(self.spec.slow_delay),
                k @ (FaultKind::Reset | FaultKind::Truncate) if d.body.is_none() => {
                    d.body = Some(k)
                }
                _ => {}
            }
        }
        if d.status.is_none() {
            if let Some(limit) = self.spec.rate_limit.filter(|l| l.targets.contains(target)) {
                d.rate_limited = self.take_token(limit);
                if d.rate_limited.is_some() {
                    d.status = Some(429);
                }
            }
        }
        if d.status.is_some() {
            d.body = None;
        }
        d
    }

    /// `None` when a token was available, else the seconds until the next one.
    fn take_token(&mut self, limit: RateLimit) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let cap = f64::from(limit.requests);
        let rate = cap / limit.per.as_secs_f64();
        let (tokens, last) = self.bucket.get_or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let s: FaultSpec = "429=0.2,retry-after=date,500=0.1,reset=0.05,truncate=0.05,slow=200ms,token-lifetime=3s,\
             redirect-files,ignore-range,delete-404,tiny-files,error-file,deleted,reject-repeated-type,\
             retry-after-cap=3600,invalid-grant-on-refresh,revoke-after=7,503=every:3@status+file,seed=5"
            .parse()
            .unwrap();
        assert_eq!(s.rules.len(), 6);
        assert_eq!(s.rules[0].kind, FaultKind::Status(429));
        assert_eq!(s.retry_after, RetryAfter::HttpDate(1));
        assert_eq!(s.slow_delay, Duration::from_millis(200));
        assert_eq!(s.token_lifetime, Some(Duration::from_secs(3)));
        assert_eq!(s.tiny_files, Some(1));
        assert_eq!(s.poll_retry_after, Some(3600));
        assert_eq!(s.revoke_after, Some(7));
        assert_eq!(s.seed, 5);
        assert!(s.redirect_files && s.ignore_range && s.delete_404 && s.error_file && s.deleted);
        assert!(s.reject_repeated_type && s.invalid_grant_on_refresh);
        assert_eq!(s.rules[5].rate, Rate::Every(3));
        assert!(s.rules[5].targets.contains(Targets::FILE));
        assert!(!s.rules[5].targets.contains(Targets::FHIR));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "",
            "429=0.2,retry-after=date,500=0.1,reset=0.05,truncate=0.05,slow=200ms,token-lifetime=3s,\
             redirect-files,ignore-range,delete-404,tiny-files,error-file,deleted,reject-repeated-type,\
             retry-after-cap=3600,invalid-grant-on-refresh,revoke-after=7,503=every:3@status+file,seed=5",
            "slow=0.0@all,504=first:2@token,bad-line,crlf,bulk-v4,single-job,max-concurrent-files=2",
            "rate-limit=5/s@file+status",
            "rate-limit=600/m",
        ] {
            let spec: FaultSpec = s.parse().unwrap();
            let shown = spec.to_string();
            assert_eq!(shown.parse::<FaultSpec>().unwrap(), spec, "{shown}");
        }
        assert_eq!(FaultSpec::default().to_string(), "");
    }

    #[test]
    fn rate_limit_is_a_token_bucket() {
        let mut e = FaultEngine::new("rate-limit=2/m@fhir".parse().unwrap());
        assert_eq!(e.decide(Targets::FHIR).status, None);
        assert_eq!(e.decide(Targets::FHIR).status, None);
        let d = e.decide(Targets::FHIR);
        assert_eq!(d.status, Some(429));
        assert!(matches!(d.rate_limited, Some(29..=30)), "{d:?}");
        assert_eq!(d.label().as_deref(), Some("rate-limit"));
        assert_eq!(
            e.decide(Targets::FILE).status,
            None,
            "other targets are not limited"
        );
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "rate-limit=0/s",
            "rate-limit=5/h",
            "rate-limit=5",
            "429",
            "429=2",
            "frobnicate",
            "slow=fast",
            "200=0.1",
            "500=0.1@nowhere",
            "tiny-files=x",
        ] {
            assert!(bad.parse::<FaultSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules_are_exact_and_rates_reproducible() {
        let mut e = FaultEngine::new("500=every:3,503=first:1@status".parse().unwrap());
        let got: Vec<_> = (0..6).map(|_| e.decide(Targets::FHIR).status).collect();
        assert_eq!(got, [None, None, Some(500), None, None, Some(500)]);
        assert_eq!(e.decide(Targets::STATUS).status, Some(503));
        assert_eq!(e.decide(Targets::TOKEN).status, None);

        let run = || {
            let mut e = FaultEngine::new("429=0.3,seed=11".parse().unwrap());
            (0..200)
                .map(|_| e.decide(Targets::FILE).status.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let hits = a.iter().filter(|h| **h).count();
        assert!((30..90).contains(&hits), "{hits}");
    }
}
