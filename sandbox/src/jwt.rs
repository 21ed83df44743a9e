//! Verification of SMART Backend Services client assertions (`private_key_jwt`).
//!
//! Checks, in order: three base64url parts; header `alg` is RS384 or ES384 with a `kid`;
//! the JWKS has a key with that `kid` of the matching type (`RSA`, or `EC` on `P-384`);
//! the signature verifies (RS384: RSASSA-PKCS1-v1_5 with SHA-384; ES384: the raw 96-byte
//! `r || s` form JWS uses, not DER); `iss == sub == client_id`; `aud` (string or array)
//! contains the token URL; `exp` is present, in the future and at most five minutes away
//! ([`MAX_ASSERTION_LIFETIME_S`]); `jti` is present. Replay (`jti` seen before its `exp`)
//! is checked by the caller, which owns the memory of seen ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha384};

/// SMART Backend Services: "exp ... no more than five minutes in the future".
pub(crate) const MAX_ASSERTION_LIFETIME_S: i64 = 300;

#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) client_id: String,
    pub(crate) jti: String,
    pub(crate) exp: i64,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("invalid base64url: {e}"))
}

/// The `iss` claim, read without verification (to find the client's JWKS).
pub(crate) fn unverified_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let v: Value = serde_json::from_slice(&b64(payload).ok()?).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

pub(crate) fn verify(
    jwt: &str,
    client_id: &str,
    jwks: &Value,
    token_url: &str,
    now: i64,
) -> Result<Verified, String> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("client_assertion is not a compact JWS (three dot-separated parts)".into());
    };
    let header: Value =
        serde_json::from_slice(&b64(h)?).map_err(|e| format!("header is not JSON: {e}"))?;
    let claims: Value =
        serde_json::from_slice(&b64(p)?).map_err(|e| format!("payload is not JSON: {e}"))?;
    let sig = b64(sig)?;
    let alg = header["alg"].as_str().unwrap_or_default();
    let kid = header["kid"].as_str().ok_or("header has no kid")?;
    // A JWK Set, or (leniently) a single JWK registered on its own.
    let single = std::slice::from_ref(jwks);
    let keys = match jwks["keys"].as_array() {
        Some(keys) => keys.as_slice(),
        None if jwks.get("kty").is_some() => single,
        None => &[],
    };
    let key = keys
        .iter()
        .find(|k| k["kid"].as_str() == Some(kid))
        .ok_or_else(|| format!("no key with kid `{kid}` in the registered JWKS"))?;
    let signed = &jwt.as_bytes()[..h.len() + 1 + p.len()];
    match alg {
        "RS384" => verify_rs384(key, signed, &sig)?,
        "ES384" => verify_es384(key, signed, &sig)?,
        other => {
            return Err(format!(
                "unsupported alg `{other}` (RS384 and ES384 are accepted)"
            ))
        }
    }

    let iss = claims["iss"].as_str().ok_or("assertion has no iss")?;
    let sub = claims["sub"].as_str().ok_or("assertion has no sub")?;
    if iss != client_id || sub != client_id {
        return Err("iss and sub must both equal the client_id".into());
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == token_url,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(token_url)),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("aud must be the token endpoint URL {token_url}"));
    }
    let exp = claims["exp"]
        .as_i64()
        .ok_or("assertion has no numeric exp")?;
    if exp <= now {
        return Err("assertion has expired".into());
    }
    if exp > now + MAX_ASSERTION_LIFETIME_S {
        return Err("assertion exp is more than five minutes in the future".into());
    }
    let jti = claims["jti"].as_str().ok_or("assertion has no jti")?;
    Ok(Verified {
        client_id: client_id.to_owned(),
        jti: jti.to_owned(),
        exp,
    })
}

/// RSASSA-PKCS1-v1_5 with SHA-384. The DigestInfo prefix is spelled out (RFC 8017 §9.2
/// note 1) so that we need not enable sha2's `oid` feature.
pub(crate) fn pkcs1v15_sha384() -> rsa::Pkcs1v15Sign {
    const PREFIX: [u8; 19] = [
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    rsa::Pkcs1v15Sign {
        hash_len: Some(48),
        prefix: Box::new(PREFIX),
    }
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (RS256, what SMART requires for `id_token`).
fn pkcs1v15_sha256() -> rsa::Pkcs1v15Sign {
    const PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    rsa::Pkcs1v15Sign {
        hash_len: Some(32),
        prefix: Box::new(PREFIX),
    }
}

/// The sandbox's `id_token` signing key. It is committed to the repository on purpose:
/// it signs synthetic identities only and makes tokens reproducible across runs.
pub(crate) const ID_TOKEN_KID: &str = "fhirhose-sandbox-id-1";

pub(crate) fn id_token_key() -> Option<rsa::RsaPrivateKey> {
    use rsa::pkcs8::DecodePrivateKey as _;
    rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("sandbox_id_token_key.pem")).ok()
}

/// The public half of the `id_token` key as a JWK Set.
pub(crate) fn id_token_jwks(key: &rsa::RsaPrivateKey) -> Value {
    use rsa::traits::PublicKeyParts as _;
    serde_json::json!({"keys": [{
        "kty": "RSA",
        "kid": ID_TOKEN_KID,
        "alg": "RS256",
        "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }]})
}

/// A compact RS256 JWS over `claims`.
pub(crate) fn sign_rs256(key: &rsa::RsaPrivateKey, claims: &Value) -> Option<String> {
    let header = serde_json::json!({"alg": "RS256", "kid": ID_TOKEN_KID, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let digest = sha2::Sha256::digest(input.as_bytes());
    let sig = key.sign(pkcs1v15_sha256(), &digest).ok()?;
    Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

fn verify_rs384(key: &Value, signed: &[u8], sig: &[u8]) -> Result<(), String> {
    if key["kty"] != "RSA" {
        return Err("alg RS384 needs an RSA key".into());
    }
    let n = b64(key["n"].as_str().ok_or("RSA key has no n")?)?;
    let e = b64(key["e"].as_str().ok_or("RSA key has no e")?)?;
    let pk = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .map_err(|e| format!("invalid RSA key: {e}"))?;
    let digest = Sha384::digest(signed);
    pk.verify(pkcs1v15_sha384(), &digest, sig)
        .map_err(|_| "signature verification failed".to_owned())
}

fn verify_es384(key: &Value, signed: &[u8], sig: &[u8]) -> Result<(), String> {
    use p384::ecdsa::signature::Verifier as _;
    if key["kty"] != "EC" || key["crv"] != "P-384" {
        return Err("alg ES384 needs an EC key on P-384".into());
    }
    // Only the public members: extra JWK members (kid, alg, use, key_ops) are not ours to judge.
    let clean = serde_json::json!({"kty": "EC", "crv": "P-384", "x": key["x"], "y": key["y"]});
    let pk = p384::PublicKey::from_jwk_str(&clean.to_string())
        .map_err(|e| format!("invalid EC key: {e}"))?;
    let vk = p384::ecdsa::VerifyingKey::from(&pk);
    if sig.len() != 96 {
        return Err("ES384 signature must be 96 bytes (r || s)".into());
    }
    let sig = p384::ecdsa::Signature::from_slice(sig)
        .map_err(|_| "malformed ES384 signature".to_owned())?;
    vk.verify(signed, &sig)
        .map_err(|_| "signature verification failed".to_owned())
}
