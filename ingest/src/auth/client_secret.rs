//! Confidential clients with a shared secret: `client_secret_basic` and
//! `client_secret_post` (RFC 6749 §2.3.1).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::HeaderValue;

use crate::http::Secret;

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`, marked sensitive.
pub(crate) fn basic_header(client_id: &str, secret: &Secret) -> Option<HeaderValue> {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(client_id), enc(secret.expose()));
    let mut v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Form fields for `client_secret_post`.
pub(crate) fn post_fields(client_id: &str, secret: &Secret) -> [(&'static str, String); 2] {
    [
        ("client_id", client_id.to_owned()),
        ("client_secret", secret.expose().to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_encodes_per_rfc6749() {
        let v = basic_header("my app", &Secret::new("p@ss:word")).unwrap();
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "my+app:p%40ss%3Aword");
        assert!(v.is_sensitive());
    }
}
