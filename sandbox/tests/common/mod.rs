//! Shared helpers: a sandbox with known clients, a reqwest client, JWT signing.
#![allow(dead_code, unreachable_pub)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use fhirhose_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha384};

pub const BULK_CLIENT: &str = "bulk-client";
pub const SECRET_CLIENT: &str = "secret-client";
pub const SECRET: &str = "correct horse battery staple";
pub const APP_CLIENT: &str = "app-client";
pub const REDIRECT: &str = "http://127.0.0.1:1/callback";

const RSA_PEM: &str = include_str!("test_rsa_key.pem");

pub fn es_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).expect("valid scalar")
}

pub fn other_es_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).expect("valid scalar")
}

pub fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).expect("test key parses")
}

pub fn es_jwk(key: &p384::ecdsa::SigningKey, kid: &str) -> Value {
    let pk = p384::PublicKey::from(key.verifying_key());
    let mut v: Value = serde_json::from_str(&pk.to_jwk_string()).expect("jwk json");
    v["kid"] = kid.into();
    v["alg"] = "ES384".into();
    v
}

pub fn rsa_jwk(key: &rsa::RsaPrivateKey, kid: &str) -> Value {
    json!({
        "kty": "RSA",
        "kid": kid,
        "alg": "RS384",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

pub fn jwks() -> Value {
    json!({"keys": [es_jwk(&es_key(), "es-1"), rsa_jwk(&rsa_key(), "rs-1")]})
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A compact JWS client assertion.
pub fn assertion(alg: &str, kid: &str, client_id: &str, aud: &str, exp: i64, jti: &str) -> String {
    let header_alg = if alg.starts_with("ES384") {
        "ES384"
    } else {
        alg
    };
    let header = json!({"alg": header_alg, "kid": kid, "typ": "JWT"});
    let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": exp, "jti": jti});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = match alg {
        "ES384" => sign_es(&es_key(), signing_input.as_bytes()),
        "ES384-other" => sign_es(&other_es_key(), signing_input.as_bytes()),
        _ => sign_rs(signing_input.as_bytes()),
    };
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

pub fn sign_es(key: &p384::ecdsa::SigningKey, msg: &[u8]) -> Vec<u8> {
    use p384::ecdsa::signature::Signer as _;
    let sig: p384::ecdsa::Signature = key.sign(msg);
    sig.to_bytes().to_vec()
}

pub fn sign_rs(msg: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 19] = [
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ];
    let scheme = rsa::Pkcs1v15Sign {
        hash_len: Some(48),
        prefix: Box::new(PREFIX),
    };
    rsa_key()
        .sign(scheme, &Sha384::digest(msg))
        .expect("rsa signs")
}

pub fn jti() -> String {
    format!("jti-{}", rand::random::<u64>())
}

pub async fn start(cfg: SandboxConfig) -> RunningSandbox {
    let sb = Sandbox::start(cfg).await.expect("sandbox starts");
    sb.register_jwks_client(BULK_CLIENT, jwks(), "system/*.read");
    sb.register_secret_client(
        SECRET_CLIENT,
        SECRET,
        "system/Patient.read system/Observation.rs",
    );
    sb.register_public_client(
        APP_CLIENT,
        REDIRECT,
        "launch/patient patient/*.read openid fhirUser offline_access",
    );
    sb
}

pub async fn sandbox(faults: &str) -> RunningSandbox {
    start(SandboxConfig {
        patients: 5,
        faults: faults.parse().expect("valid fault spec"),
        poll_retry_after: 0,
        ..SandboxConfig::default()
    })
    .await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client builds")
}

pub async fn token_response(
    sb: &RunningSandbox,
    alg: &str,
    kid: &str,
    scope: &str,
) -> reqwest::Response {
    let a = assertion(alg, kid, BULK_CLIENT, &sb.token_url(), now() + 120, &jti());
    http()
        .post(sb.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a.as_str()),
        ])
        .send()
        .await
        .expect("token request")
}

/// A backend-services token for `scope`.
pub async fn token(sb: &RunningSandbox, scope: &str) -> String {
    let resp = token_response(sb, "ES384", "es-1", scope).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("token json");
    v["access_token"].as_str().expect("access_token").to_owned()
}
