//! The export request and its kick-off.
//!
//! An [`ExportRequest`] is what the user asked for (level and parameters). Its
//! [`fingerprint`](ExportRequest::fingerprint) identifies "the same request" across runs:
//! the FHIR base, the level and every parameter except `_since` (so `--since auto` finds
//! the previous run of the same request). [`build_kickoff`] turns it into a GET with a
//! query or a POST with a Parameters resource, as the profile says.

use reqwest::header::{HeaderValue, ACCEPT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

use super::error::BulkError;
use super::profile::{KickoffMethod, KickoffProfile, TypeParam};
use crate::http::{Interaction, Request};

/// Export level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExportLevel {
    /// `[base]/$export`.
    #[default]
    System,
    /// `[base]/Patient/$export`.
    Patient,
    /// `[base]/Group/{id}/$export`.
    Group(String),
}

/// `_since`: an instant, or the last successful `transactionTime` of the same request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Since {
    /// A FHIR instant.
    At(String),
    /// The previous successful run's `transactionTime` (a full export when there is none).
    Auto,
}

impl Since {
    /// `auto` or an instant (validated loosely: `YYYY-MM-DD...`).
    pub fn parse(s: &str) -> Result<Self, BulkError> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let ok = s.len() >= 10
            && s.as_bytes()[4] == b'-'
            && s.as_bytes()[7] == b'-'
            && s[..4].bytes().all(|b| b.is_ascii_digit());
        if ok {
            Ok(Self::At(s.to_owned()))
        } else {
            Err(BulkError::Request(format!(
                "--since must be `auto` or a FHIR instant like 2024-01-01T00:00:00Z, got `{s}`"
            )))
        }
    }
}

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
#[non_exhaustive]
pub struct ExportRequest {
    /// Level.
    pub level: ExportLevel,
    /// `_outputFormat` (default: the server's, `application/fhir+ndjson`).
    pub output_format: Option<String>,
    /// `_since`.
    pub since: Option<Since>,
    /// `_type`.
    pub types: Vec<String>,
    /// `_typeFilter` values (`Type?search`).
    pub type_filters: Vec<String>,
    /// `_elements`.
    pub elements: Vec<String>,
    /// `patient` references (`Patient/123`) for patient and group level.
    pub patients: Vec<String>,
    /// `includeAssociatedData` values.
    pub include_associated_data: Vec<String>,
    /// `organizeOutputBy`.
    pub organize_output_by: Option<String>,
    /// Any other parameters, sent as given.
    pub custom: Vec<(String, String)>,
}

impl ExportRequest {
    /// A system-level export of everything the grant allows.
    pub fn system() -> Self {
        Self::default()
    }

    /// The kick-off URL under `base`.
    pub fn kickoff_url(&self, base: &Url) -> Result<Url, BulkError> {
        let mut u = base.clone();
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|()| BulkError::Request("the FHIR base URL cannot have a path".into()))?;
            segs.pop_if_empty();
            match &self.level {
                ExportLevel::System => {}
                ExportLevel::Patient => {
                    segs.push("Patient");
                }
                ExportLevel::Group(id) => {
                    if id.is_empty() || id.contains('/') {
                        return Err(BulkError::Request(format!("invalid Group id `{id}`")));
                    }
                    segs.push("Group").push(id);
                }
            }
            segs.push("$export");
        }
        Ok(u)
    }

    /// Parameters other than `_since` and `_type`, in a stable order.
    fn other_params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(f) = &self.output_format {
            p.push(("_outputFormat".to_owned(), f.clone()));
        }
        for f in &self.type_filters {
            p.push(("_typeFilter".to_owned(), f.clone()));
        }
        if !self.elements.is_empty() {
            p.push(("_elements".to_owned(), self.elements.join(",")));
        }
        for v in &self.include_associated_data {
            p.push(("includeAssociatedData".to_owned(), v.clone()));
        }
        if let Some(o) = &self.organize_output_by {
            p.push(("organizeOutputBy".to_owned(), o.clone()));
        }
        for (k, v) in &self.custom {
            p.push((k.clone(), v.clone()));
        }
        p
    }

    /// Identifies the same request across runs (see the module docs).
    pub fn fingerprint(&self, base: &Url) -> String {
        let mut types = self.types.clone();
        types.sort();
        types.dedup();
        let mut params = self.other_params();
        params.sort();
        let mut patients = self.patients.clone();
        patients.sort();
        let canonical = json!({
            "base": base.as_str().trim_end_matches('/'),
            "level": self.level,
            "types": types,
            "patients": patients,
            "params": params,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The request as JSON for the job record (no secrets: parameters only).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Builds the kick-off request. `since` is the resolved `_since` instant, if any.
pub fn build_kickoff(
    base: &Url,
    req: &ExportRequest,
    since: Option<&str>,
    profile: &KickoffProfile,
) -> Result<Request, BulkError> {
    let mut url = req.kickoff_url(base)?;
    let mut params: Vec<(String, String)> = Vec::new();
    if let Some(s) = since {
        params.push(("_since".into(), s.to_owned()));
    }
    let repeated = profile.type_param == TypeParam::Repeated;
    if !req.types.is_empty() {
        if repeated {
            params.extend(req.types.iter().map(|t| ("_type".to_owned(), t.clone())));
        } else {
            params.push(("_type".into(), req.types.join(",")));
        }
    }
    params.extend(req.other_params());
    let prefer = if profile.lenient {
        "respond-async, handling=lenient"
    } else {
        "respond-async"
    };
    let interaction = Interaction::Export {
        types: req.types.clone(),
    };
    let r = match profile.method {
        KickoffMethod::Get => {
            if !req.patients.is_empty() {
                return Err(BulkError::Request(
                    "the `patient` parameter needs a POST kick-off (profile kickoff.method = \"post\")"
                        .into(),
                ));
            }
            if !params.is_empty() {
                let mut q = url.query_pairs_mut();
                for (k, v) in &params {
                    q.append_pair(k, v);
                }
            }
            Request::get(url)
        }
        KickoffMethod::Post => {
            let mut parameter: Vec<Value> = params
                .iter()
                .map(|(k, v)| json!({"name": k, "valueString": v}))
                .collect();
            if let Some(s) = since {
                // `_since` is an instant in a Parameters resource.
                parameter[0] = json!({"name": "_since", "valueInstant": s});
            }
            for p in &req.patients {
                parameter.push(json!({"name": "patient", "valueReference": {"reference": p}}));
            }
            let body = json!({"resourceType": "Parameters", "parameter": parameter});
            url.set_query(None);
            Request::post(url).json(&body, true)?.idempotent(false)
        }
    };
    Ok(
        r.header(ACCEPT, HeaderValue::from_static("application/fhir+json"))
            .header(
                reqwest::header::HeaderName::from_static("prefer"),
                HeaderValue::from_static(prefer),
            )
            .interaction(interaction),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://ehr.example/fhir/r4/").unwrap()
    }

    #[test]
    fn kickoff_urls_per_level() {
        let mut r = ExportRequest::system();
        assert_eq!(
            r.kickoff_url(&base()).unwrap().as_str(),
            "https://ehr.example/fhir/r4/$export"
        );
        r.level = ExportLevel::Patient;
        assert!(r
            .kickoff_url(&base())
            .unwrap()
            .as_str()
            .ends_with("/r4/Patient/$export"));
        r.level = ExportLevel::Group("g1".into());
        assert!(r
            .kickoff_url(&base())
            .unwrap()
            .as_str()
            .ends_with("/r4/Group/g1/$export"));
        r.level = ExportLevel::Group("a/b".into());
        assert!(r.kickoff_url(&base()).is_err());
    }

    #[test]
    fn fingerprint_ignores_since_and_type_order() {
        let mut a = ExportRequest::system();
        a.types = vec!["Patient".into(), "Observation".into()];
        let mut b = a.clone();
        b.types.reverse();
        b.since = Some(Since::At("2024-01-01T00:00:00Z".into()));
        assert_eq!(a.fingerprint(&base()), b.fingerprint(&base()));
        b.type_filters
            .push("Observation?category=laboratory".into());
        assert_ne!(a.fingerprint(&base()), b.fingerprint(&base()));
    }

    #[test]
    fn get_joined_and_repeated_types() {
        let mut r = ExportRequest::system();
        r.types = vec!["Patient".into(), "Observation".into()];
        r.type_filters = vec!["Observation?category=laboratory".into()];
        let joined = build_kickoff(
            &base(),
            &r,
            Some("2024-01-01T00:00:00Z"),
            &KickoffProfile::default(),
        )
        .unwrap();
        let q: Vec<(String, String)> = joined
            .url()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(q.contains(&("_type".into(), "Patient,Observation".into())));
        assert!(q.contains(&("_since".into(), "2024-01-01T00:00:00Z".into())));
        assert!(q.contains(&(
            "_typeFilter".into(),
            "Observation?category=laboratory".into()
        )));
        let repeated = build_kickoff(
            &base(),
            &r,
            None,
            &KickoffProfile {
                type_param: TypeParam::Repeated,
                ..KickoffProfile::default()
            },
        )
        .unwrap();
        let types: Vec<_> = repeated
            .url()
            .query_pairs()
            .filter(|(k, _)| k == "_type")
            .collect();
        assert_eq!(types.len(), 2);
    }

    #[test]
    fn post_uses_parameters() {
        let mut r = ExportRequest::system();
        r.level = ExportLevel::Group("g".into());
        r.patients = vec!["Patient/1".into()];
        let req = build_kickoff(
            &base(),
            &r,
            Some("2024-01-01T00:00:00Z"),
            &KickoffProfile {
                method: KickoffMethod::Post,
                ..KickoffProfile::default()
            },
        )
        .unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert!(req.url().query().is_none());
        let get = build_kickoff(&base(), &r, None, &KickoffProfile::default());
        assert!(get.is_err(), "patient needs POST");
    }

    #[test]
    fn since_parsing() {
        assert_eq!(Since::parse("auto").unwrap(), Since::Auto);
        assert!(Since::parse("2024-03-01").is_ok());
        assert!(Since::parse("yesterday").is_err());
    }
}
