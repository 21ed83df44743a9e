//! The two narrow hooks the auth layer plugs into the transport.
//!
//! * [`BearerSource`]: a token per request; on 401, a refreshed token (the transport
//!   replays the request once).
//! * [`RequestGuard`]: the scope policy, consulted *before* a request is sent.

use futures::future::BoxFuture;
use reqwest::Method;
use url::Url;

use super::redact::Secret;
use crate::auth::{AuthError, ScopeDenied};

/// Supplies bearer tokens to the transport.
pub trait BearerSource: Send + Sync {
    /// A currently valid access token (refreshing first if it is about to expire).
    fn bearer(&self) -> BoxFuture<'_, Result<Secret, AuthError>>;
    /// The server rejected `rejected` with 401: obtain a new token. Concurrent callers
    /// that report the same rejected token share one refresh.
    fn invalidate(&self, rejected: &Secret) -> BoxFuture<'_, Result<Secret, AuthError>>;
}

/// Refuses requests the grant does not cover, before anything is sent.
pub trait RequestGuard: Send + Sync {
    /// `Ok` if the request is allowed.
    fn check(&self, req: &RequestDescr<'_>) -> Result<(), ScopeDenied>;
}

/// What a request does in FHIR terms; the scope policy decides on this.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interaction {
    /// `GET [base]/Type/id` (also vread and instance history).
    Read {
        /// Resource type.
        resource_type: String,
    },
    /// `GET [base]/Type?params` or `POST [base]/Type/_search`.
    Search {
        /// Resource type; `None` for a system-level search.
        resource_type: Option<String>,
        /// Search parameters, as sent (`name`, `value`), modifiers kept in the name.
        params: Vec<(String, String)>,
    },
    /// `POST [base]/Type`.
    Create {
        /// Resource type.
        resource_type: String,
    },
    /// `PUT [base]/Type/id`.
    Update {
        /// Resource type.
        resource_type: String,
    },
    /// `DELETE [base]/Type/id`.
    Delete {
        /// Resource type.
        resource_type: String,
    },
    /// A Bulk Data `$export` kick-off; `types` is the `_type` list (empty when absent).
    Export {
        /// Requested resource types.
        types: Vec<String>,
    },
    /// Downloading a Bulk Data output file (`requiresAccessToken` decides the token).
    FileDownload {
        /// The manifest entry's `type`, when known.
        resource_type: Option<String>,
    },
    /// Anything the scope policy does not judge: discovery, `metadata`, token calls,
    /// bulk status polls and deletes.
    Other,
}

impl Interaction {
    /// Infers the interaction from a FHIR REST URL under `base`. URLs outside `base`
    /// are [`Interaction::Other`].
    pub fn infer(base: &Url, method: &Method, url: &Url) -> Self {
        if url.origin() != base.origin() {
            return Self::Other;
        }
        let base_path = base.path().trim_end_matches('/');
        let Some(rest) = url.path().strip_prefix(base_path) else {
            return Self::Other;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            // `/fhirx/...` is not under `/fhir`.
            return Self::Other;
        }
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let params: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if segs.last().is_some_and(|s| *s == "$export") {
            let types = params
                .iter()
                .filter(|(k, _)| k == "_type")
                .flat_map(|(_, v)| v.split(','))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect();
            return Self::Export { types };
        }
        let is_type = |s: &str| s.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        match (method, segs.as_slice()) {
            (_, []) | (_, ["metadata"]) | (_, [".well-known", ..]) => Self::Other,
            (&Method::GET, [t]) if is_type(t) => Self::Search {
                resource_type: Some((*t).to_owned()),
                params,
            },
            (&Method::POST, [t, "_search"]) if is_type(t) => Self::Search {
                resource_type: Some((*t).to_owned()),
                params,
            },
            (&Method::GET, [s]) | (&Method::POST, [s]) if *s == "_search" => Self::Search {
                resource_type: None,
                params,
            },
            (&Method::GET, [t, _, ..]) if is_type(t) => Self::Read {
                resource_type: (*t).to_owned(),
            },
            (&Method::POST, [t]) if is_type(t) => Self::Create {
                resource_type: (*t).to_owned(),
            },
            (&Method::PUT, [t, _]) if is_type(t) => Self::Update {
                resource_type: (*t).to_owned(),
            },
            (&Method::DELETE, [t, _]) if is_type(t) => Self::Delete {
                resource_type: (*t).to_owned(),
            },
            _ => Self::Other,
        }
    }
}

/// The request as the guard sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestDescr<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Full URL (do not log it unredacted).
    pub url: &'a Url,
    /// What the request does.
    pub interaction: &'a Interaction,
}

impl<'a> RequestDescr<'a> {
    /// Describes a request.
    pub fn new(method: &'a Method, url: &'a Url, interaction: &'a Interaction) -> Self {
        Self {
            method,
            url,
            interaction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_interactions() {
        let base = Url::parse("https://ehr.example/fhir/r4/").unwrap();
        let i = |m: Method, p: &str| Interaction::infer(&base, &m, &base.join(p).unwrap());
        assert_eq!(
            i(Method::GET, "Patient/123"),
            Interaction::Read {
                resource_type: "Patient".into()
            }
        );
        assert_eq!(
            i(Method::GET, "Observation?category=laboratory&patient=1"),
            Interaction::Search {
                resource_type: Some("Observation".into()),
                params: vec![
                    ("category".into(), "laboratory".into()),
                    ("patient".into(), "1".into())
                ]
            }
        );
        assert_eq!(
            i(
                Method::GET,
                "$export?_type=Patient,Observation&_type=Condition"
            ),
            Interaction::Export {
                types: vec!["Patient".into(), "Observation".into(), "Condition".into()]
            }
        );
        assert_eq!(
            i(Method::POST, "Group/g1/$export"),
            Interaction::Export { types: vec![] }
        );
        assert_eq!(i(Method::GET, "metadata"), Interaction::Other);
        assert_eq!(
            Interaction::infer(
                &Url::parse("https://ehr.example/fhir").unwrap(),
                &Method::GET,
                &Url::parse("https://ehr.example/fhirx/Patient/1").unwrap()
            ),
            Interaction::Other
        );
        let other = Url::parse("https://files.example/fhir/r4/Patient/1").unwrap();
        assert_eq!(
            Interaction::infer(&base, &Method::GET, &other),
            Interaction::Other
        );
    }
}
