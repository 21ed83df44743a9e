//! Redaction: what may appear in logs and error messages.
//!
//! Signed file URLs carry credentials in their query string, and URLs may carry userinfo,
//! so every URL that reaches a log line or an error goes through [`redact_url`] first.
//! Tokens, client secrets and assertions are held in [`Secret`], which never prints itself.
//!
//! [`redact_text`] is the last line of defence, applied to every formatted log line and
//! to the final error message of the binary: it scrubs credentials and signed query
//! strings that slipped past the call sites. It cannot recognise a name or a birth date,
//! so call sites must still never format resource content (see `fhirhose::logging`).

use std::borrow::Cow;
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

/// What replaces a scrubbed value.
pub const REDACTED: &str = "[redacted]";

/// Field and parameter names whose values are credentials. Matched case-insensitively on
/// whole identifiers; identifiers ending in `_token`, `_secret`, `_password` or
/// `_assertion` count too.
const SENSITIVE_KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "client_assertion",
    "assertion",
    "client_secret",
    "secret",
    "password",
    "passwd",
    "authorization",
    "code",
    "code_verifier",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "apikey",
    "api_key",
];

/// Shortest run of base64url characters treated as an opaque credential.
const LONG_RUN: usize = 32;

fn is_sensitive_key(ident: &str) -> bool {
    let l = ident.to_ascii_lowercase();
    SENSITIVE_KEYS.contains(&l.as_str())
        || [
            "_token",
            "_secret",
            "_password",
            "_assertion",
            "-token",
            "-signature",
        ]
        .iter()
        .any(|suf| l.ends_with(suf))
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Ends a bare (unquoted) value: whitespace, quotes, escapes, separators and brackets.
fn ends_bare(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'"' | b'\''
                | b'\\'
                | b'&'
                | b','
                | b';'
                | b')'
                | b'('
                | b']'
                | b'['
                | b'}'
                | b'{'
                | b'<'
                | b'>'
                | b'`'
                | b'|'
        )
}

/// Ends a query string: like [`ends_bare`], but `&` and `,` belong to the query.
fn ends_query(b: u8) -> bool {
    b != b'&' && b != b',' && ends_bare(b)
}

fn is_b64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+')
}

/// Whether a long run is benign: hyphen-separated hex groups of at most 32 digits (UUIDs,
/// simple UUIDs, run ids) rather than an opaque credential.
fn benign_run(run: &[u8]) -> bool {
    run.split(|b| *b == b'-')
        .all(|g| g.len() <= 32 && g.iter().all(u8::is_ascii_hexdigit))
}

/// Scrubs credentials from one piece of log or error text, keeping everything else
/// (and JSON log lines valid JSON):
///
/// * the query string of anything URL-like (`?name=value...`) becomes `?[redacted]`;
/// * the value after a credential-like name (`token=`, `"access_token":"`,
///   `client_secret: `, `Authorization: Bearer ...`, `code=`, `sig=`...) becomes
///   `[redacted]`;
/// * JWT-shaped strings (`eyJ...`), PEM blocks and runs of 32 or more base64url
///   characters that are not UUID-like hex become `[redacted]`;
/// * an embedded FHIR resource (`{"resourceType"...`) is cut from its `{` to the end of
///   the text (or of the JSON string that holds it).
///
/// ```
/// use fhirhose_ingest::http::redact_text;
/// let line = "GET https://files.example/f.ndjson?sig=abc&se=2030 token=sbx-at-123";
/// assert_eq!(redact_text(line), "GET https://files.example/f.ndjson?[redacted] token=[redacted]");
/// ```
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    let mut changed = false;
    // Replaces text[start..end] with `with`.
    let replace = |out: &mut Vec<u8>, copied: &mut usize, start: usize, end: usize, with: &str| {
        out.extend_from_slice(&b[*copied..start]);
        out.extend_from_slice(with.as_bytes());
        *copied = end;
    };
    while i < b.len() {
        let c = b[i];
        let at_word_start = i == 0 || !is_ident_byte(b[i - 1]);
        // An embedded resource: cut to the end of the enclosing JSON string (an unescaped
        // quote) or of the text.
        if c == b'{' {
            let rest = &b[i + 1..];
            let escaped = rest.starts_with(b"\\\"resourceType\\\"");
            if escaped || rest.starts_with(b"\"resourceType\"") {
                let mut end = b.len();
                if escaped {
                    let mut j = i + 1;
                    while j < b.len() {
                        if b[j] == b'\\' {
                            j += 2;
                            continue;
                        }
                        if b[j] == b'"' {
                            end = j;
                            break;
                        }
                        j += 1;
                    }
                }
                replace(&mut out, &mut copied, i, end, "{[redacted resource]}");
                changed = true;
                i = end;
                continue;
            }
        }
        // PEM blocks.
        if c == b'-' && b[i..].starts_with(b"-----BEGIN") {
            let end = find(&b[i + 10..], b"-----END")
                .and_then(|e| {
                    let after = i + 10 + e + 8;
                    find(&b[after..], b"-----").map(|k| after + k + 5)
                })
                .unwrap_or(b.len());
            replace(&mut out, &mut copied, i, end, REDACTED);
            changed = true;
            i = end;
            continue;
        }
        // Query strings: `?` followed by `name=`.
        if c == b'?' {
            let mut j = i + 1;
            while j < b.len() && (is_ident_byte(b[j]) || matches!(b[j], b'.' | b'%' | b':')) {
                j += 1;
            }
            if j > i + 1 && j < b.len() && b[j] == b'=' {
                let mut end = j;
                while end < b.len() && !ends_query(b[end]) {
                    end += 1;
                }
                replace(&mut out, &mut copied, i + 1, end, REDACTED);
                changed = true;
                i = end;
                continue;
            }
        }
        if at_word_start && is_ident_byte(c) {
            let mut j = i;
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            let ident = &text[i..j];
            // `Bearer xyz` / `Basic xyz`.
            if (ident.eq_ignore_ascii_case("bearer") || ident.eq_ignore_ascii_case("basic"))
                && j < b.len()
                && b[j] == b' '
            {
                let start = j + 1;
                let mut end = start;
                while end < b.len() && !ends_bare(b[end]) {
                    end += 1;
                }
                if end > start {
                    replace(&mut out, &mut copied, start, end, REDACTED);
                    changed = true;
                    i = end;
                    continue;
                }
            }
            if is_sensitive_key(ident) {
                if let Some((start, end)) = sensitive_value(b, j) {
                    replace(&mut out, &mut copied, start, end, REDACTED);
                    changed = true;
                    i = end;
                    continue;
                }
            }
            // JWTs and long opaque runs.
            let mut end = i;
            while end < b.len()
                && (is_b64_byte(b[end]) || (b[end] == b'.' && ident.starts_with("eyJ")))
            {
                end += 1;
            }
            // Base64 padding belongs to the run.
            while end < b.len() && b[end] == b'=' && end - i >= LONG_RUN {
                end += 1;
            }
            let run = &b[i..end];
            let jwt = ident.starts_with("eyJ") && run.len() >= 16;
            if jwt || (run.len() >= LONG_RUN && !benign_run(run)) {
                replace(&mut out, &mut copied, i, end, REDACTED);
                changed = true;
                i = end;
                continue;
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.extend_from_slice(&b[copied..]);
    // Only ASCII was inserted and cuts happen at ASCII bytes, so this never fails.
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value span after a credential-like name ending at `j`: `name=value`,
/// `name: value`, `"name":"value"`, `\"name\":\"value\"` (inside a JSON string).
/// JSON literals and nested objects are left alone, so JSON lines stay valid.
fn sensitive_value(b: &[u8], mut j: usize) -> Option<(usize, usize)> {
    // The closing quote of a JSON key, escaped or not.
    if b[j..].starts_with(b"\\\"") {
        j += 2;
    } else if j < b.len() && b[j] == b'"' {
        j += 1;
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    if j >= b.len() || !(b[j] == b'=' || b[j] == b':') {
        return None;
    }
    j += 1;
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    if j >= b.len() {
        return None;
    }
    if b[j..].starts_with(b"\\\"") {
        let start = j + 2;
        let end = find(&b[start..], b"\\\"").map_or(b.len(), |e| start + e);
        return (end > start).then_some((start, end));
    }
    if b[j] == b'"' {
        let start = j + 1;
        let mut end = start;
        while end < b.len() && b[end] != b'"' {
            end += if b[end] == b'\\' { 2 } else { 1 };
        }
        let end = end.min(b.len());
        return (end > start).then_some((start, end));
    }
    // `Authorization: Bearer xyz`: the scheme stays, the credential goes.
    let mut start = j;
    for scheme in [&b"Bearer "[..], b"Basic ", b"bearer ", b"basic "] {
        if b[j..].starts_with(scheme) {
            start = j + scheme.len();
        }
    }
    let mut end = start;
    while end < b.len() && !ends_bare(b[end]) {
        end += 1;
    }
    let value = &b[start..end];
    let literal = value.is_empty()
        || matches!(value, b"true" | b"false" | b"null")
        || value
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-'));
    (!literal).then_some((start, end))
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

    #[test]
    fn redact_text_scrubs_credentials_and_queries() {
        let cases = [
            ("plain text 42 Patient/123", "plain text 42 Patient/123"),
            (
                "download https://s.example/a.ndjson?sig=abc%2F&se=1 failed",
                "download https://s.example/a.ndjson?[redacted] failed",
            ),
            (
                "/fhir/Patient?name=Smith,Jo&_count=5",
                "/fhir/Patient?[redacted]",
            ),
            ("is it? yes", "is it? yes"),
            (
                "token=abc.def client_id=app",
                "token=[redacted] client_id=app",
            ),
            ("client_secret: s3cr3t;", "client_secret: [redacted];"),
            (
                "Authorization: Bearer sbx-at-ab12",
                "Authorization: Bearer [redacted]",
            ),
            ("sent bearer abcdef", "sent bearer [redacted]"),
            ("code=xyz&state=1", "code=[redacted]&state=1"),
            ("exit code 4", "exit code 4"),
            (
                r#"{"access_token":"sbx-at-1","expires_in":300,"token":null}"#,
                r#"{"access_token":"[redacted]","expires_in":300,"token":null}"#,
            ),
            (
                r#"{"message":"got \"refresh_token\":\"rt-9\" back"}"#,
                r#"{"message":"got \"refresh_token\":\"[redacted]\" back"}"#,
            ),
            (
                "assertion eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ4In0.sig-_",
                "assertion [redacted]",
            ),
            (
                "id 0192a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b ok",
                "id 0192a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b ok",
            ),
            (
                "run 20250101T000000Z-abcdef12",
                "run 20250101T000000Z-abcdef12",
            ),
            (
                "opaque sbx-at-0123456789abcdef0123456789abcdef0123456789abcdef.",
                "opaque [redacted].",
            ),
            (
                "key -----BEGIN PRIVATE KEY-----\nMIGkAgEBBDD\n-----END PRIVATE KEY----- end",
                "key [redacted] end",
            ),
            (
                r#"bad line {"resourceType":"Patient","name":[{"family":"Doe"}]}"#,
                "bad line {[redacted resource]}",
            ),
            (
                r#"{"error":"x {\"resourceType\":\"Patient\",\"birthDate\":\"1970-01-01\"} y","level":"WARN"}"#,
                r#"{"error":"x {[redacted resource]}","level":"WARN"}"#,
            ),
            (
                "names: Jos\u{e9} \u{fc}ber token=\u{e9}t\u{e9}",
                "names: Jos\u{e9} \u{fc}ber token=[redacted]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_text(input), want, "{input}");
        }
        // JSON lines stay JSON.
        let line = r#"{"url":"https://x.example/f?X-Amz-Signature=ab","token":"t","n":1}"#;
        let v: serde_json::Value = serde_json::from_str(&redact_text(line)).unwrap();
        assert_eq!(v["url"], "https://x.example/f?[redacted]");
        assert_eq!(v["token"], "[redacted]");
        assert_eq!(v["n"], 1);
        assert!(matches!(redact_text("nothing here"), Cow::Borrowed(_)));
    }
}
