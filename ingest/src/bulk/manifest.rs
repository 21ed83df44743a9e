//! The completion manifest: `output`, `deleted` and `error` files (`outcome` in Bulk
//! Data 4.0), `requiresAccessToken`, `transactionTime`, and partial manifests chained
//! with a `link` of relation `next`.

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::error::BulkError;
use crate::http::TokenPolicy;
use crate::source::FileKind;

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManifestFile {
    /// Resource type of the file (`OperationOutcome` for error files, `Bundle` for
    /// deleted files).
    pub resource_type: String,
    /// Download URL (may carry a signed query string: never log it unredacted).
    pub url: Url,
    /// Resources the server says the file holds.
    pub count: Option<u64>,
    /// Output, deleted or error.
    pub kind: FileKind,
}

/// A (possibly merged partial) manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Manifest {
    /// The server's `transactionTime`: the `_since` of the next incremental export.
    pub transaction_time: String,
    /// Whether file downloads need the bearer token.
    pub requires_access_token: bool,
    /// All files, output first, then deleted, then error.
    pub files: Vec<ManifestFile>,
    /// The `next` partial manifest, if any.
    pub next: Option<Url>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    url: String,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    transaction_time: Option<String>,
    #[serde(default)]
    requires_access_token: Option<bool>,
    #[serde(default)]
    output: Vec<RawFile>,
    #[serde(default)]
    deleted: Vec<RawFile>,
    #[serde(default)]
    error: Vec<RawFile>,
    /// Bulk Data 4.0 name of `error`.
    #[serde(default)]
    outcome: Vec<RawFile>,
    #[serde(default)]
    link: Vec<Value>,
}

impl Manifest {
    /// Parses a manifest body; relative file URLs resolve against `status_url`.
    pub fn parse(body: &[u8], status_url: &Url) -> Result<Self, BulkError> {
        let bad = |reason: String| BulkError::Manifest {
            url: crate::http::redact_url(status_url),
            reason,
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
        if !value.is_object() || value.get("output").is_none() {
            return Err(bad("not a manifest (no `output`)".into()));
        }
        let raw: RawManifest =
            serde_json::from_value(value).map_err(|e| bad(format!("not a manifest: {e}")))?;
        let mut files = Vec::new();
        let groups = [
            (raw.output, FileKind::Resources, None),
            (raw.deleted, FileKind::Deleted, Some("Bundle")),
            (raw.error, FileKind::Error, Some("OperationOutcome")),
            (raw.outcome, FileKind::Error, Some("OperationOutcome")),
        ];
        for (list, kind, default_type) in groups {
            for f in list {
                let url = status_url
                    .join(&f.url)
                    .map_err(|e| bad(format!("invalid file URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    // Never `file:`, `data:` or the like, whatever the server says.
                    return Err(bad(format!(
                        "file URL scheme `{}` is not http(s)",
                        url.scheme()
                    )));
                }
                let resource_type =
                    f.ty.or_else(|| default_type.map(str::to_owned))
                        .ok_or_else(|| bad("an output file has no type".into()))?;
                files.push(ManifestFile {
                    resource_type,
                    url,
                    count: f.count,
                    kind,
                });
            }
        }
        let next = raw
            .link
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(|u| status_url.join(u))
            .transpose()
            .map_err(|e| bad(format!("invalid next link: {e}")))?;
        if let Some(n) = next
            .as_ref()
            .filter(|n| !matches!(n.scheme(), "http" | "https"))
        {
            return Err(bad(format!(
                "next link scheme `{}` is not http(s)",
                n.scheme()
            )));
        }
        Ok(Self {
            transaction_time: raw.transaction_time.unwrap_or_default(),
            requires_access_token: raw.requires_access_token.unwrap_or(false),
            files,
            next,
        })
    }

    /// Appends a following partial manifest.
    pub fn merge(&mut self, next: Manifest) {
        self.files.extend(next.files);
        self.requires_access_token |= next.requires_access_token;
        if self.transaction_time.is_empty() {
            self.transaction_time = next.transaction_time;
        }
        self.next = next.next;
    }

    /// The token policy for file downloads.
    pub fn token_policy(&self) -> TokenPolicy {
        if self.requires_access_token {
            TokenPolicy::Required
        } else {
            TokenPolicy::Never
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Url {
        Url::parse("https://ehr.example/fhir/bulkstatus/1").unwrap()
    }

    #[test]
    fn file_urls_that_are_not_http_are_rejected() {
        for u in [
            "file:///etc/passwd",
            "data:text/plain,x",
            "ftp://ehr.example/f",
        ] {
            let body = format!(r#"{{"output":[{{"type":"Patient","url":"{u}"}}]}}"#);
            let e = Manifest::parse(body.as_bytes(), &status()).unwrap_err();
            assert!(e.to_string().contains("not http(s)"), "{e}");
        }
        let body = br#"{"output":[],"link":[{"relation":"next","url":"file:///x"}]}"#;
        assert!(Manifest::parse(body, &status()).is_err());
    }

    #[test]
    fn parses_all_file_kinds_and_v4_outcome() {
        let body = br#"{"transactionTime":"2024-05-01T00:00:00Z","requiresAccessToken":true,
            "output":[{"type":"Patient","url":"https://ehr.example/files/1.ndjson","count":3}],
            "deleted":[{"type":"Bundle","url":"/files/2.ndjson"}],
            "outcome":[{"type":"OperationOutcome","url":"https://ehr.example/files/3.ndjson"}],
            "link":[{"relation":"next","url":"https://ehr.example/fhir/bulkstatus/1?page=2"}]}"#;
        let m = Manifest::parse(body, &status()).unwrap();
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files[0].count, Some(3));
        assert_eq!(m.files[1].kind, FileKind::Deleted);
        assert_eq!(
            m.files[1].url.as_str(),
            "https://ehr.example/files/2.ndjson"
        );
        assert_eq!(m.files[2].kind, FileKind::Error);
        assert_eq!(m.token_policy(), TokenPolicy::Required);
        assert!(m.next.is_some());
    }

    #[test]
    fn merge_follows_partials() {
        let mut a = Manifest::parse(
            br#"{"transactionTime":"t","output":[{"type":"A","url":"https://x/1"}]}"#,
            &status(),
        )
        .unwrap();
        assert_eq!(a.token_policy(), TokenPolicy::Never);
        let b = Manifest::parse(
            br#"{"output":[{"type":"B","url":"https://x/2"}]}"#,
            &status(),
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.files.len(), 2);
        assert_eq!(a.transaction_time, "t");
    }

    #[test]
    fn rejects_garbage() {
        assert!(Manifest::parse(b"[]", &status()).is_err());
        assert!(Manifest::parse(br#"{"output":[{"url":"https://x/1"}]}"#, &status()).is_err());
    }
}
