//! Compact JWS for `private_key_jwt` client assertions (SMART Backend Services).
//!
//! Header `{alg, typ: "JWT", kid, jku?}`; claims `iss = sub = client_id`,
//! `aud = token URL`, `exp ≤ now + 5 min`, `iat`, unique `jti`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

use super::error::AuthError;
use super::keys::SigningKey;
use crate::http::Secret;

/// The longest assertion lifetime SMART allows.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Signs `header.claims` with `key` and returns the compact JWS.
pub fn sign_jws(key: &SigningKey, header: &Value, claims: &Value) -> Result<String, AuthError> {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{h}.{c}");
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Builds a client assertion for `token_url`.
pub fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    token_url: &Url,
    jku: Option<&Url>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Secret, AuthError> {
    let lifetime = lifetime.min(MAX_ASSERTION_LIFETIME);
    let mut header = json!({"alg": key.alg().as_str(), "typ": "JWT", "kid": key.kid()});
    if let Some(jku) = jku {
        header["jku"] = json!(jku.as_str());
    }
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url.as_str(),
        "exp": (now + lifetime).unix_timestamp(),
        "iat": now.unix_timestamp(),
        "jti": Uuid::new_v4().to_string(),
    });
    sign_jws(key, &header, &claims).map(Secret::new)
}

/// Splits a compact JWS into (header, claims, signing input, signature) without
/// verifying it.
pub fn decode_unverified(jws: &str) -> Option<(Value, Value, String, Vec<u8>)> {
    let mut parts = jws.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some((header, claims, format!("{h}.{c}"), sig))
}
