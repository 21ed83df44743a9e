//! Vendor profiles: an EHR's Bulk Data capabilities and quirks as data.
//!
//! Profiles live in `schemas/profiles/*.toml` and are embedded in the binary. Code reads
//! the fields of a [`Profile`]; it never branches on a profile's (vendor's) name. A
//! profile is chosen by name ([`Profile::builtin`]), loaded from a file
//! ([`Profile::from_path`]), or detected from a CapabilityStatement's `software.name` and
//! `publisher` ([`Profile::detect`]).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::BulkError;
use crate::http::{HttpConfig, OriginLimits};

/// The embedded profiles, `(name, TOML text)`.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    (
        "generic",
        include_str!("../../../schemas/profiles/generic.toml"),
    ),
    ("epic", include_str!("../../../schemas/profiles/epic.toml")),
    (
        "oracle-cerner",
        include_str!("../../../schemas/profiles/oracle-cerner.toml"),
    ),
    (
        "athenahealth",
        include_str!("../../../schemas/profiles/athenahealth.toml"),
    ),
    ("hapi", include_str!("../../../schemas/profiles/hapi.toml")),
    (
        "smart-reference",
        include_str!("../../../schemas/profiles/smart-reference.toml"),
    ),
];

/// How the kick-off is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KickoffMethod {
    /// `GET [base]/$export?...` (Bulk Data 1.0/2.0).
    #[default]
    Get,
    /// `POST [base]/$export` with a Parameters resource (the only form in Bulk Data 4.0).
    Post,
}

/// How several `_type` values are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TypeParam {
    /// One parameter, comma-joined (`_type=Patient,Observation`).
    #[default]
    Joined,
    /// One parameter per type (`_type=Patient&_type=Observation`).
    Repeated,
}

/// CapabilityStatement substrings that select a profile (case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectRules {
    /// Matched against `software.name`.
    pub software: Vec<String>,
    /// Matched against `publisher`.
    pub publisher: Vec<String>,
}

/// Kick-off settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KickoffProfile {
    /// GET or POST.
    pub method: KickoffMethod,
    /// `_type` joined or repeated.
    pub type_param: TypeParam,
    /// Send `Prefer: handling=lenient` (the server drops unsupported parameters instead of
    /// failing the request).
    pub lenient: bool,
}

/// Status polling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollProfile {
    /// First backoff wait when the server gives no `Retry-After`, in seconds.
    pub floor_secs: f64,
    /// Largest computed backoff wait, in seconds.
    pub ceiling_secs: f64,
    /// Largest `Retry-After` honoured between polls, in seconds.
    pub retry_after_cap_secs: f64,
    /// Give up on a job after this many days.
    pub deadline_days: f64,
}

/// Default first poll wait: 2 s, the IG's example interval for a job that is not done.
const fn default_floor_secs() -> f64 {
    2.0
}
/// Default largest computed wait: 2 min keeps a slow job's poll count in the hundreds a day.
const fn default_ceiling_secs() -> f64 {
    120.0
}
/// Default `Retry-After` cap: an hour, the longest wait EHRs are known to ask for.
const fn default_retry_after_cap_secs() -> f64 {
    3600.0
}
/// Default deadline: two days, longer than any population export we know of takes.
const fn default_deadline_days() -> f64 {
    2.0
}

impl Default for PollProfile {
    fn default() -> Self {
        Self {
            floor_secs: default_floor_secs(),
            ceiling_secs: default_ceiling_secs(),
            retry_after_cap_secs: default_retry_after_cap_secs(),
            deadline_days: default_deadline_days(),
        }
    }
}

/// File download settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadProfile {
    /// Files downloaded at once.
    pub concurrency: u32,
    /// Attempts per file (resumes included) before it is dead-lettered.
    pub max_attempts: u32,
    /// Requests per second to the server's origin.
    pub requests_per_sec: f64,
    /// Token-bucket burst.
    pub burst: u32,
}

impl Default for DownloadProfile {
    fn default() -> Self {
        // Four parallel downloads is the IG's suggestion; 10 req/s matches the transport's
        // default politeness.
        Self {
            concurrency: 4,
            max_attempts: 6,
            requests_per_sec: 10.0,
            burst: 10,
        }
    }
}

/// Completion settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteProfile {
    /// DELETE the status URL once every file is durable.
    pub on_complete: bool,
    /// A 404 answer to that DELETE counts as success.
    pub not_found_ok: bool,
}

impl Default for DeleteProfile {
    fn default() -> Self {
        Self {
            on_complete: true,
            not_found_ok: true,
        }
    }
}

/// File naming in the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesProfile {
    /// Zero-padded width of the per-type file index (`Observation.003.ndjson`).
    pub index_width: usize,
}

impl Default for FilesProfile {
    fn default() -> Self {
        Self { index_width: 3 }
    }
}

/// One vendor profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// One line about the server.
    #[serde(default)]
    pub description: String,
    /// Known quirks, for the operator (informational).
    #[serde(default)]
    pub quirks: Vec<String>,
    /// Detection rules.
    #[serde(default)]
    pub detect: DetectRules,
    /// Kick-off.
    #[serde(default)]
    pub kickoff: KickoffProfile,
    /// Polling.
    #[serde(default)]
    pub poll: PollProfile,
    /// Downloads.
    #[serde(default)]
    pub download: DownloadProfile,
    /// Completion.
    #[serde(default)]
    pub delete: DeleteProfile,
    /// File naming.
    #[serde(default)]
    pub files: FilesProfile,
}

impl Profile {
    /// Parses and validates a profile.
    pub fn from_toml(text: &str) -> Result<Self, BulkError> {
        let p: Self = toml::from_str(text).map_err(|e| BulkError::Profile {
            name: "<toml>".into(),
            reason: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Loads a profile file.
    pub fn from_path(path: &Path) -> Result<Self, BulkError> {
        let text = std::fs::read_to_string(path).map_err(|e| BulkError::Profile {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// An embedded profile by name.
    pub fn builtin(name: &str) -> Result<Self, BulkError> {
        let (_, text) = BUILTIN_PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| BulkError::Profile {
                name: name.into(),
                reason: format!(
                    "no such profile; known profiles are {}",
                    BUILTIN_PROFILES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        Self::from_toml(text)
    }

    /// A name of a built-in profile, or a path to a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Self, BulkError> {
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            Self::from_path(Path::new(name_or_path))
        } else {
            Self::builtin(name_or_path)
        }
    }

    /// The generic profile.
    pub fn generic() -> Self {
        Self::builtin("generic").expect("the embedded generic profile is valid")
    }

    /// Picks the embedded profile whose detection rules match the CapabilityStatement's
    /// `software.name` or `publisher`; the generic profile when none does.
    pub fn detect(capability_statement: &Value) -> Self {
        let software = capability_statement["software"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        let publisher = capability_statement["publisher"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        let matches = |needles: &[String], hay: &str| {
            !hay.is_empty()
                && needles
                    .iter()
                    .any(|n| !n.is_empty() && hay.contains(&n.to_lowercase()))
        };
        for (_, text) in BUILTIN_PROFILES {
            let Ok(p) = Self::from_toml(text) else {
                continue;
            };
            if matches(&p.detect.software, &software) || matches(&p.detect.publisher, &publisher) {
                return p;
            }
        }
        Self::generic()
    }

    fn validate(&self) -> Result<(), BulkError> {
        let bad = |reason: &str| BulkError::Profile {
            name: self.name.clone(),
            reason: reason.into(),
        };
        let p = &self.poll;
        for v in [
            p.floor_secs,
            p.ceiling_secs,
            p.retry_after_cap_secs,
            p.deadline_days,
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad("poll durations must be positive numbers"));
            }
        }
        if p.floor_secs > p.ceiling_secs {
            return Err(bad("poll.floor_secs must not exceed poll.ceiling_secs"));
        }
        let d = &self.download;
        if d.concurrency == 0 || d.max_attempts == 0 || d.burst == 0 {
            return Err(bad(
                "download.concurrency, max_attempts and burst must be at least 1",
            ));
        }
        if !(d.requests_per_sec.is_finite() && d.requests_per_sec > 0.0) {
            return Err(bad("download.requests_per_sec must be a positive number"));
        }
        Ok(())
    }

    /// The polling policy this profile asks for.
    pub fn poll_policy(&self) -> super::poll::PollPolicy {
        super::poll::PollPolicy {
            floor: Duration::from_secs_f64(self.poll.floor_secs),
            ceiling: Duration::from_secs_f64(self.poll.ceiling_secs),
            retry_after_cap: Duration::from_secs_f64(self.poll.retry_after_cap_secs),
            deadline: Duration::from_secs_f64(self.poll.deadline_days * 86_400.0),
            jitter_seed: None,
        }
    }

    /// Applies the profile's politeness to a transport configuration (per-origin rate
    /// and concurrency limits; the Retry-After cap covers polls and downloads).
    pub fn apply_to(&self, http: &mut HttpConfig) {
        http.origin_limits = OriginLimits {
            requests_per_sec: self.download.requests_per_sec,
            burst: self.download.burst,
            // Polls and the kick-off share the origin with downloads.
            max_concurrency: self.download.concurrency + 1,
            ..http.origin_limits.clone()
        };
        let cap = Duration::from_secs_f64(self.poll.retry_after_cap_secs);
        if cap > http.retry_after_cap {
            http.retry_after_cap = cap;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses() {
        for (name, text) in BUILTIN_PROFILES {
            let p = Profile::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&p.name, name);
        }
        assert_eq!(BUILTIN_PROFILES.len(), 6);
    }

    #[test]
    fn profiles_differ_where_vendors_differ() {
        let athena = Profile::builtin("athenahealth").unwrap();
        assert_eq!(athena.kickoff.type_param, TypeParam::Repeated);
        let cerner = Profile::builtin("oracle-cerner").unwrap();
        assert!(cerner.poll.retry_after_cap_secs >= 3600.0);
        assert!(Profile::builtin("nope").is_err());
    }

    #[test]
    fn detects_from_capability_statement() {
        let cs = serde_json::json!({"software": {"name": "HAPI FHIR Server"}, "publisher": "x"});
        assert_eq!(Profile::detect(&cs).name, "hapi");
        let cs = serde_json::json!({"publisher": "Cerner Corporation"});
        assert_eq!(Profile::detect(&cs).name, "oracle-cerner");
        let cs = serde_json::json!({"software": {"name": "fhirhose-sandbox"}});
        assert_eq!(Profile::detect(&cs).name, "generic");
    }

    #[test]
    fn rejects_invalid_values() {
        let text = BUILTIN_PROFILES[0]
            .1
            .replace("concurrency = 4", "concurrency = 0");
        assert!(Profile::from_toml(&text).is_err());
        assert!(Profile::from_toml("name = \"x\"\nbogus = 1").is_err());
    }

    #[test]
    fn applies_politeness() {
        let p = Profile::builtin("epic").unwrap();
        let mut h = HttpConfig::default();
        p.apply_to(&mut h);
        assert_eq!(h.origin_limits.requests_per_sec, 5.0);
        assert_eq!(h.origin_limits.max_concurrency, 3);
        assert_eq!(h.retry_after_cap, Duration::from_secs(3600));
    }
}
