//! Redaction: what may appear in logs and error messages.
//!
//! Signed file URLs carry credentials in their query string, and URLs may carry userinfo,
//! so every URL that reaches a log line or an error goes through [`redact_url`] first.
//! Tokens, client secrets and assertions are held in [`Secret`], which never prints itself.

use std::fmt;

use url::Url;

/// Renders a URL for logs and errors: scheme, host, port and path only.
///
/// The query string, the fragment and any userinfo are dropped, because signed URLs
/// (S3, Azure SAS) and some FHIR searches carry credentials or identifiers there.
///
/// ```
/// use fhirhose_ingest::http::redact_url;
/// let url = url::Url::parse("https://u:p@files.example/a/b.ndjson?X-Amz-Signature=abc#x").unwrap();
/// assert_eq!(redact_url(&url), "https://files.example/a/b.ndjson");
/// ```
pub fn redact_url(url: &Url) -> String {
    let mut out = String::with_capacity(url.as_str().len());
    out.push_str(url.scheme());
    if url.has_host() || url.scheme() == "file" {
        out.push_str("://");
    } else {
        out.push(':');
    }
    if let Some(host) = url.host_str() {
        out.push_str(host);
    }
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(url.path());
    out
}

/// A credential (access token, refresh token, client secret, assertion, code verifier).
///
/// `Debug`, `Display` and `Serialize` print `[redacted]` (so a configuration can be
/// shown safely); `Deserialize` reads the real value. The value is reachable only
/// through [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_query_userinfo_fragment() {
        let u = Url::parse("https://user:pw@ehr.example:8443/fhir/Patient?name=Smith&_count=5#f")
            .unwrap();
        assert_eq!(redact_url(&u), "https://ehr.example:8443/fhir/Patient");
        let u = Url::parse("http://127.0.0.1:1234/").unwrap();
        assert_eq!(redact_url(&u), "http://127.0.0.1:1234/");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("eyJhbGciOi.token");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "eyJhbGciOi.token");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        let back: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(back.expose(), "abc");
    }
}
