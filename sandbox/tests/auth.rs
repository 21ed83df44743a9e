//! Discovery, backend-services JWT verification, client secrets, scopes, token lifecycle
//! and the App Launch (PKCE) flow.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

#[tokio::test]
async fn discovery_documents() {
    let sb = sandbox("").await;
    let c = http();
    let cfg: Value = c
        .get(format!("{}/.well-known/smart-configuration", sb.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["token_endpoint"], sb.token_url());
    assert!(cfg["authorization_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/auth/authorize"));
    assert!(cfg["revocation_endpoint"].is_string());
    assert!(cfg["introspection_endpoint"].is_string());
    let methods = cfg["token_endpoint_auth_methods_supported"].to_string();
    for m in [
        "private_key_jwt",
        "client_secret_basic",
        "client_secret_post",
    ] {
        assert!(methods.contains(m), "{m}");
    }
    assert_eq!(
        cfg["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!(["RS384", "ES384"])
    );
    assert_eq!(
        cfg["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert!(cfg["grant_types_supported"]
        .to_string()
        .contains("client_credentials"));

    let cap: Value = c
        .get(format!("{}/metadata", sb.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cap["resourceType"], "CapabilityStatement");
    assert_eq!(cap["software"]["name"], "fhirhose-sandbox");
    let ext = &cap["rest"][0]["security"]["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(ext["extension"][0]["valueUri"], sb.token_url());
    assert!(cap["rest"][0]["operation"].to_string().contains("export"));
    sb.shutdown().await;
}

async fn assertion_error(sb: &fhirhose_sandbox::RunningSandbox, a: &str) -> (u16, Value) {
    let resp = http()
        .post(sb.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.read"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn jwt_assertions_are_verified() {
    let sb = sandbox("").await;
    let aud = sb.token_url();

    // Valid ES384 and RS384 assertions are accepted.
    for (alg, kid) in [("ES384", "es-1"), ("RS384", "rs-1")] {
        let resp = token_response(&sb, alg, kid, "system/Observation.read").await;
        assert_eq!(resp.status(), 200, "{alg}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["token_type"], "bearer");
        assert_eq!(v["scope"], "system/Observation.read");
        assert!(v["expires_in"].as_u64().unwrap() > 0);
    }

    // Signed by a key that is not in the JWKS (kid claims the registered one).
    let (status, v) = assertion_error(
        &sb,
        &assertion("ES384-other", "es-1", BULK_CLIENT, &aud, now() + 60, &jti()),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{v}"
    );

    // Expired.
    let (status, v) = assertion_error(
        &sb,
        &assertion("ES384", "es-1", BULK_CLIENT, &aud, now() - 10, &jti()),
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(v["error_description"].as_str().unwrap().contains("expired"));

    // More than five minutes in the future.
    let (status, _) = assertion_error(
        &sb,
        &assertion("ES384", "es-1", BULK_CLIENT, &aud, now() + 3600, &jti()),
    )
    .await;
    assert_eq!(status, 401);

    // Wrong audience.
    let (status, v) = assertion_error(
        &sb,
        &assertion(
            "RS384",
            "rs-1",
            BULK_CLIENT,
            "https://elsewhere/token",
            now() + 60,
            &jti(),
        ),
    )
    .await;
    assert_eq!(status, 401);
    assert!(v["error_description"].as_str().unwrap().contains("aud"));

    // Unknown kid.
    let (status, _) = assertion_error(
        &sb,
        &assertion("ES384", "nope", BULK_CLIENT, &aud, now() + 60, &jti()),
    )
    .await;
    assert_eq!(status, 401);

    // Replayed jti: first use succeeds, second fails.
    let a = assertion("ES384", "es-1", BULK_CLIENT, &aud, now() + 60, "same-jti");
    assert_eq!(assertion_error(&sb, &a).await.0, 200);
    let (status, v) = assertion_error(&sb, &a).await;
    assert_eq!(status, 401);
    assert!(v["error_description"].as_str().unwrap().contains("jti"));
    sb.shutdown().await;
}

#[tokio::test]
async fn client_secret_basic_and_post() {
    let sb = sandbox("").await;
    let c = http();
    let basic = c
        .post(sb.token_url())
        .basic_auth(SECRET_CLIENT, Some(SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.read system/Encounter.read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let v: Value = basic.json().await.unwrap();
    assert_eq!(
        v["scope"], "system/Patient.read",
        "granted = requested ∩ registered"
    );

    let post = c
        .post(sb.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", SECRET_CLIENT),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);

    let wrong = c
        .post(sb.token_url())
        .basic_auth(SECRET_CLIENT, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    sb.shutdown().await;
}

#[tokio::test]
async fn scopes_are_enforced_and_tokens_checked() {
    let sb = sandbox("").await;
    let c = http();
    let tok = token(&sb, "system/Observation.rs").await;
    let base = sb.base_url();

    let ok = c
        .get(format!("{base}/Observation?_count=2"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let forbidden = c
        .get(format!("{base}/Patient"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let oo: Value = forbidden.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Patient"));

    let missing = c.get(format!("{base}/Observation")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    // Revocation (RFC 7009) makes the token unusable.
    let r = c
        .post(format!("{}/auth/revoke", base.trim_end_matches("/fhir")))
        .form(&[("token", tok.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked = c
        .get(format!("{base}/Observation"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 401);
    assert!(revoked.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    // revoke_all_tokens from the API.
    let tok2 = token(&sb, "system/*.read").await;
    sb.revoke_all_tokens();
    let r = c
        .get(format!("{base}/Patient"))
        .bearer_auth(&tok2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The token never reaches the request log.
    let log = sb.request_log();
    assert!(log.iter().any(|e| e.bearer_present && e.status == 403));
    assert!(!format!("{log:?}").contains(&tok));
    sb.shutdown().await;
}

#[tokio::test]
async fn short_token_lifetime_and_revoke_after() {
    let sb = sandbox("token-lifetime=0s").await;
    let tok = token(&sb, "system/*.read").await;
    let r = http()
        .get(format!("{}/Patient", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("expired"));

    sb.set_faults("revoke-after=2".parse().unwrap());
    let tok = token(&sb, "system/*.read").await;
    let c = http();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            c.get(format!("{}/Patient", sb.base_url()))
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 200, 401]);
    sb.shutdown().await;
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn authorize(sb: &fhirhose_sandbox::RunningSandbox, challenge: &str, aud: &str) -> url::Url {
    let resp = http()
        .get(sb.authorize_url())
        .query(&[
            ("response_type", "code"),
            ("client_id", APP_CLIENT),
            ("redirect_uri", REDIRECT),
            (
                "scope",
                "launch/patient patient/Observation.read openid fhirUser offline_access",
            ),
            ("state", "xyz-state"),
            ("aud", aud),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

fn q(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn app_launch_with_pkce_and_refresh() {
    let sb = sandbox("").await;
    let c = http();
    let (verifier, challenge) = pkce();

    // aud must be the FHIR base.
    let bad = authorize(&sb, &challenge, "https://wrong.example/fhir").await;
    assert_eq!(q(&bad, "error").as_deref(), Some("invalid_request"));
    assert_eq!(q(&bad, "state").as_deref(), Some("xyz-state"));

    let loc = authorize(&sb, &challenge, &sb.base_url()).await;
    assert!(loc.as_str().starts_with(REDIRECT));
    assert_eq!(q(&loc, "state").as_deref(), Some("xyz-state"));
    let code = q(&loc, "code").expect("code");

    let exchange = |verifier: String, code: String| {
        let c = c.clone();
        let url = sb.token_url();
        async move {
            c.post(url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", REDIRECT),
                    ("client_id", APP_CLIENT),
                    ("code_verifier", verifier.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    // A wrong verifier fails, and burns the code.
    let wrong = exchange("not-the-verifier".into(), code.clone()).await;
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );

    let code = q(&authorize(&sb, &challenge, &sb.base_url()).await, "code").unwrap();
    let ok = exchange(verifier.clone(), code.clone()).await;
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    let patient = v["patient"].as_str().expect("patient context");
    assert_eq!(patient, sb.patient_ids()[0]);
    assert_eq!(v["need_patient_banner"], true);
    assert!(v["fhirUser"].as_str().unwrap().starts_with("Practitioner/"));
    assert!(v["scope"]
        .as_str()
        .unwrap()
        .contains("patient/Observation.read"));
    check_id_token(
        &sb,
        v["id_token"].as_str().expect("openid gives an id_token"),
    )
    .await;
    let refresh = v["refresh_token"]
        .as_str()
        .expect("offline_access gives a refresh token")
        .to_owned();
    let at = v["access_token"].as_str().unwrap().to_owned();

    // Codes are single-use.
    assert_eq!(exchange(verifier, code).await.status(), 400);

    // Patient scopes restrict search to the launch patient.
    let bundle: Value = c
        .get(format!("{}/Observation?_count=1000", sb.base_url()))
        .bearer_auth(&at)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    let expected = format!("Patient/{patient}");
    assert!(entries
        .iter()
        .all(|e| e["resource"]["subject"]["reference"] == expected.as_str()));

    // Refresh works, then fails under the invalid-grant-on-refresh fault.
    let refresh_req = || {
        c.post(sb.token_url()).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", APP_CLIENT),
        ])
    };
    let r = refresh_req().send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["access_token"].is_string());
    sb.set_faults("invalid-grant-on-refresh".parse().unwrap());
    let r = refresh_req().send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // Codes and verifiers never reach the request log.
    let log = format!("{:?}", sb.request_log());
    assert!(!log.contains(&refresh) && !log.contains(&at));
    sb.shutdown().await;
}

#[tokio::test]
async fn ehr_launch_and_introspection() {
    let sb = sandbox("").await;
    let c = http();
    let (verifier, challenge) = pkce();
    let patient = sb.patient_ids()[2].clone();
    let resp = c
        .get(sb.authorize_url())
        .query(&[
            ("response_type", "code"),
            ("client_id", APP_CLIENT),
            ("redirect_uri", REDIRECT),
            ("scope", "launch patient/*.read"),
            ("state", "s1"),
            ("aud", sb.base_url().as_str()),
            ("launch", patient.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let code = q(&loc, "code").unwrap();
    let v: Value = c
        .post(sb.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", APP_CLIENT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["patient"], patient.as_str(), "launch selects the patient");
    assert!(
        v["encounter"].is_string(),
        "EHR launch carries an encounter"
    );
    assert!(
        v.get("refresh_token").is_none(),
        "no offline_access, no refresh token"
    );
    let at = v["access_token"].as_str().unwrap();

    let introspect = |token: String| {
        let c = c.clone();
        let url = sb.token_url().replace("/token", "/introspect");
        async move {
            c.post(url)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let active = introspect(at.to_owned()).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["patient"], patient.as_str());
    assert_eq!(introspect("bogus".into()).await["active"], false);

    // PKCE is mandatory.
    let resp = c
        .get(sb.authorize_url())
        .query(&[
            ("response_type", "code"),
            ("client_id", APP_CLIENT),
            ("redirect_uri", REDIRECT),
            ("state", "s2"),
            ("aud", sb.base_url().as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "plain"),
        ])
        .send()
        .await
        .unwrap();
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(q(&loc, "error").as_deref(), Some("invalid_request"));
    // An unregistered redirect_uri is answered directly, never redirected to.
    let resp = c
        .get(sb.authorize_url())
        .query(&[
            ("response_type", "code"),
            ("client_id", APP_CLIENT),
            ("redirect_uri", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    sb.shutdown().await;
}

/// The id_token verifies (RS256) against the key published at `jwks_uri`.
async fn check_id_token(sb: &fhirhose_sandbox::RunningSandbox, id_token: &str) {
    use rsa::traits::PublicKeyParts as _;
    let cfg: Value = http()
        .get(format!("{}/.well-known/smart-configuration", sb.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = http()
        .get(cfg["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    let n =
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap());
    let e =
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap());
    let pk = rsa::RsaPublicKey::new(n, e).unwrap();
    assert!(pk.size() >= 256);
    let (input, sig) = id_token.rsplit_once('.').unwrap();
    const PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let scheme = rsa::Pkcs1v15Sign {
        hash_len: Some(32),
        prefix: Box::new(PREFIX),
    };
    pk.verify(
        scheme,
        &Sha256::digest(input.as_bytes()),
        &URL_SAFE_NO_PAD.decode(sig).unwrap(),
    )
    .expect("id_token signature verifies");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(input.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], APP_CLIENT);
    assert_eq!(claims["iss"], cfg["issuer"]);
    assert!(claims["fhirUser"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/Practitioner/", sb.base_url())));
}
