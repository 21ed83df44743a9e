//! FHIR search paging for real-time, patient-level reads.
//!
//! A [`SearchRequest`] becomes `GET [base]/{Type}?params`; the searchset Bundle's `next`
//! links are followed page by page. [`SearchOpener`] is a [`StreamOpener`]: it yields one
//! resource JSON per line (the `match` and `include` entries of every page), so search
//! results go through the same pipeline as export files. Requests use the authorized
//! transport: the scope guard refuses a search the grant does not cover before anything is
//! sent, and retries, Retry-After and rate limits apply as for any request.
//!
//! A `next` link on another origin is refused (a token must not follow it, and a FHIR
//! server has no reason to page elsewhere).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tracing::{debug, info};
use url::Url;

use crate::http::{redact_url, HttpClient, HttpError, Interaction, Request};
use crate::source::{FileKind, InputFile, Location, SourceError, StreamOpener};

/// Pages followed at most: a guard against a server whose `next` links loop.
pub const MAX_PAGES: u64 = 100_000;

/// Search errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The request is invalid.
    #[error("the search request is invalid: {0}")]
    Request(String),
    /// A page could not be fetched.
    #[error("a search page could not be fetched")]
    Http(#[from] HttpError),
    /// A page is not a searchset Bundle.
    #[error("the page from {url} is not a Bundle: {reason}")]
    Page {
        /// Redacted URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// What to search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SearchRequest {
    /// Resource type.
    pub resource_type: String,
    /// `patient` parameter (or `_id` for `Patient`).
    pub patient: Option<String>,
    /// `_lastUpdated=ge<since>`.
    pub since: Option<String>,
    /// Other parameters.
    pub params: Vec<(String, String)>,
}

impl SearchRequest {
    /// A search for every resource of `resource_type`.
    pub fn new(resource_type: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            ..Self::default()
        }
    }

    /// The first page's URL.
    pub fn url(&self, base: &Url) -> Result<Url, SearchError> {
        let t = &self.resource_type;
        let valid = t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(SearchError::Request(format!(
                "`{t}` is not a FHIR resource type"
            )));
        }
        let mut u = base.clone();
        u.path_segments_mut()
            .map_err(|()| SearchError::Request("the FHIR base URL cannot have a path".into()))?
            .pop_if_empty()
            .push(t);
        {
            let mut q = u.query_pairs_mut();
            if let Some(p) = &self.patient {
                if t == "Patient" {
                    q.append_pair("_id", p.trim_start_matches("Patient/"));
                } else {
                    q.append_pair("patient", p);
                }
            }
            if let Some(s) = &self.since {
                q.append_pair("_lastUpdated", &format!("ge{s}"));
            }
            for (k, v) in &self.params {
                q.append_pair(k, v);
            }
        }
        if u.query() == Some("") {
            u.set_query(None);
        }
        Ok(u)
    }
}

/// Counters of a search.
#[derive(Debug, Default)]
pub struct SearchStats {
    pages: AtomicU64,
    resources: AtomicU64,
}

impl SearchStats {
    /// Pages fetched.
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Resources yielded.
    pub fn resources(&self) -> u64 {
        self.resources.load(Ordering::Relaxed)
    }
}

/// Streams a search's resources as NDJSON.
#[derive(Clone)]
pub struct SearchOpener {
    http: HttpClient,
    first: Url,
    resource_type: String,
    stats: Arc<SearchStats>,
}

impl std::fmt::Debug for SearchOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchOpener")
            .field("url", &redact_url(&self.first))
            .finish_non_exhaustive()
    }
}

impl SearchOpener {
    /// A search over the authorized transport.
    pub fn new(http: HttpClient, base: &Url, req: &SearchRequest) -> Result<Self, SearchError> {
        Ok(Self {
            http,
            first: req.url(base)?,
            resource_type: req.resource_type.clone(),
            stats: Arc::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> Arc<SearchStats> {
        self.stats.clone()
    }

    /// The first page URL.
    pub fn first_url(&self) -> &Url {
        &self.first
    }

    /// An input file for the pipeline; `run_id` makes each fetch its own raw object.
    pub fn input_file(self, run_id: &str) -> InputFile {
        let mut h = Sha256::new();
        h.update(self.first.as_str().as_bytes());
        h.update(b"\n");
        h.update(run_id.as_bytes());
        let name = format!("{}.search.ndjson", self.resource_type);
        InputFile {
            location: Location::Stream(Arc::new(self)),
            name,
            size: 0,
            gzip: false,
            fingerprint: hex::encode(h.finalize()),
            kind: FileKind::Resources,
            group: Some(format!("fetch/{run_id}")),
        }
    }

    /// One chunk of NDJSON per page.
    pub fn pages(&self) -> BoxStream<'static, Result<Bytes, SearchError>> {
        let state = (self.clone(), Some(self.first.clone()));
        futures::stream::unfold(state, |(me, next)| async move {
            let url = next?;
            match me.page(&url).await {
                Ok((chunk, next)) => Some((Ok(chunk), (me, next))),
                Err(e) => Some((Err(e), (me, None))),
            }
        })
        .boxed()
    }

    async fn page(&self, url: &Url) -> Result<(Bytes, Option<Url>), SearchError> {
        let n = self.stats.pages.fetch_add(1, Ordering::Relaxed) + 1;
        let redacted = redact_url(url);
        if n > MAX_PAGES {
            return Err(SearchError::Page {
                url: redacted,
                reason: format!("more than {MAX_PAGES} pages"),
            });
        }
        let req = Request::get(url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/fhir+json"));
        // Inferred from the URL: a search of this type (the scope guard judges it).
        let req = if n == 1 {
            req
        } else {
            req.interaction(Interaction::Search {
                resource_type: Some(self.resource_type.clone()),
                params: url
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            })
        };
        let resp = self.http.send(req).await?;
        let body = resp.bytes().await?;
        let bad = |reason: String| SearchError::Page {
            url: redacted.clone(),
            reason,
        };
        let bundle: Value =
            serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if bundle["resourceType"] != "Bundle" {
            return Err(bad("resourceType is not Bundle".into()));
        }
        let mut out = BytesMut::new();
        let mut count = 0u64;
        for e in bundle["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "outcome" {
                continue;
            }
            let r = &e["resource"];
            if r.is_object() {
                serde_json::to_writer((&mut out).writer(), r)
                    .map_err(|e| bad(format!("cannot serialize an entry: {e}")))?;
                out.put_u8(b'\n');
                count += 1;
            }
        }
        self.stats.resources.fetch_add(count, Ordering::Relaxed);
        let next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(|u| url.join(u))
            .transpose()
            .map_err(|e| bad(format!("invalid next link: {e}")))?;
        if let Some(n) = &next {
            if n.origin() != self.first.origin() {
                return Err(bad(format!(
                    "the next link points to another origin ({})",
                    redact_url(n)
                )));
            }
        }
        debug!(
            page = n,
            resources = count,
            more = next.is_some(),
            "search page fetched"
        );
        if next.is_none() {
            info!(pages = n, resources = self.stats.resources(), url = %redact_url(&self.first), "search complete");
        }
        Ok((out.freeze(), next))
    }
}

impl StreamOpener for SearchOpener {
    fn open(&self) -> BoxFuture<'_, Result<Pin<Box<dyn AsyncRead + Send>>, SourceError>> {
        let s = self
            .pages()
            .map(|r| r.map_err(|e| std::io::Error::other(error_chain(&e))));
        Box::pin(async move {
            let r: Pin<Box<dyn AsyncRead + Send>> = Box::pin(tokio_util::io::StreamReader::new(s));
            Ok(r)
        })
    }

    fn display(&self) -> String {
        redact_url(&self.first)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_urls() {
        let base = Url::parse("https://ehr.example/fhir/").unwrap();
        let mut r = SearchRequest::new("Observation");
        r.patient = Some("p1".into());
        r.since = Some("2024-01-01".into());
        r.params.push(("category".into(), "laboratory".into()));
        let u = r.url(&base).unwrap();
        assert_eq!(u.path(), "/fhir/Observation");
        let q: Vec<_> = u.query_pairs().collect();
        assert_eq!(q[0].1, "p1");
        assert_eq!(q[1].1, "ge2024-01-01");
        let mut p = SearchRequest::new("Patient");
        p.patient = Some("Patient/p1".into());
        assert_eq!(p.url(&base).unwrap().query(), Some("_id=p1"));
        assert!(SearchRequest::new("../x").url(&base).is_err());
        assert!(SearchRequest::new("Patient")
            .url(&base)
            .unwrap()
            .query()
            .is_none());
    }
}
