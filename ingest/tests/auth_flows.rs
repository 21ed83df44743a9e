//! SMART authorization flows against small local servers.

mod http_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use fhirhose_ingest::auth::{
    begin_login, challenge_s256, decode_unverified, generate_keys, verify_with_jwk, Alg,
    AuthConfig, AuthErrorKind, AuthEventKind, AuthOutcome, Authorizer, ClientAuthConfig,
    ExportTypes, LaunchContext, MemoryAuditSink, JWT_BEARER_ASSERTION_TYPE,
};
use fhirhose_ingest::http::{
    BearerSource, HttpClient, HttpConfig, HttpErrorKind, ManualClock, Secret,
};
use http_support::{capture_logs, json, resp, serve, Recorded, TestServer};
use serde_json::json;

type Script = dyn Fn(&Recorded, usize) -> Response + Send + Sync;

/// A SMART server: discovery under /fhir, token at /token, revoke at /revoke, and the
/// FHIR API under /fhir answered by `fhir`. `token(req, n)` gets the n-th token call.
async fn smart_server(
    token: impl Fn(&Recorded, usize) -> Response + Send + Sync + 'static,
    fhir: impl Fn(&Recorded, usize) -> Response + Send + Sync + 'static,
) -> TestServer {
    let token: Arc<Script> = Arc::new(token);
    let fhir: Arc<Script> = Arc::new(fhir);
    let token_calls = Arc::new(AtomicUsize::new(0));
    serve(move |r, n| {
        let host = r.header("host").unwrap();
        let root = format!("http://{host}");
        match r.path.as_str() {
            "/fhir/.well-known/smart-configuration" => json(
                200,
                json!({
                    "token_endpoint": format!("{root}/token"),
                    "authorization_endpoint": format!("{root}/authorize"),
                    "revocation_endpoint": format!("{root}/revoke"),
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
                    "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"]
                }),
            ),
            "/token" => token(r, token_calls.fetch_add(1, Ordering::SeqCst)),
            "/revoke" => resp(200, &[], ""),
            _ => fhir(r, n),
        }
    })
    .await
}

fn http(clock: &ManualClock) -> HttpClient {
    HttpConfig {
        use_system_proxy: false,
        jitter_seed: Some(5),
        max_attempts: 2,
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap()
}

fn ok_token(access: &str, expires_in: u64, scope: &str) -> Response {
    json(
        200,
        json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": scope}),
    )
}

fn not_found(_: &Recorded, _: usize) -> Response {
    resp(404, &[], "")
}

async fn backend(
    alg: Alg,
    srv: &TestServer,
    clock: &ManualClock,
    dir: &std::path::Path,
    scopes: &str,
) -> (Authorizer, Arc<MemoryAuditSink>) {
    let keys = generate_keys(alg, dir).unwrap();
    let cfg = AuthConfig::new(
        srv.url("fhir"),
        "backend-client",
        scopes,
        ClientAuthConfig::PrivateKeyJwt {
            key_path: keys.private_key_path,
            kid: None,
            jku: None,
        },
    );
    let audit = Arc::new(MemoryAuditSink::new());
    let a = Authorizer::build(&cfg, &http(clock), audit.clone())
        .await
        .unwrap();
    (a, audit)
}

async fn check_backend_assertion(alg: Alg) {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 300, "system/*.rs"),
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(alg, &srv, &clock, dir.path(), "system/*.rs").await;

    // Key files: private 0600, public JWKS with kid/alg/use/key_ops.
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("jwks.json")).unwrap()).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["alg"], alg.as_str());
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["key_ops"], json!(["verify"]));
    assert!(jwk.get("d").is_none());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("private_key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let t = auth.token().await.unwrap();
    assert_eq!(t.access.expose(), "at-0");
    clock.advance(Duration::from_secs(280));
    assert_eq!(
        auth.token().await.unwrap().access.expose(),
        "at-1",
        "refreshed before expiry"
    );

    let calls: Vec<_> = srv
        .hits()
        .into_iter()
        .filter(|h| h.path == "/token")
        .collect();
    assert_eq!(calls.len(), 2);
    let mut jtis = Vec::new();
    for call in &calls {
        assert_eq!(
            call.form_value("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(call.form_value("scope").as_deref(), Some("system/*.rs"));
        assert_eq!(
            call.form_value("client_assertion_type").as_deref(),
            Some(JWT_BEARER_ASSERTION_TYPE)
        );
        assert_eq!(call.header("authorization"), None);
        let jws = call.form_value("client_assertion").unwrap();
        let (header, claims, input, sig) = decode_unverified(&jws).unwrap();
        assert_eq!(header["alg"], alg.as_str());
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], jwk["kid"]);
        assert_eq!(claims["iss"], "backend-client");
        assert_eq!(claims["sub"], "backend-client");
        assert_eq!(claims["aud"], srv.url("token").as_str());
        let exp = claims["exp"].as_i64().unwrap();
        let now = claims["iat"].as_i64().unwrap();
        assert!(exp > now && exp - now <= 300, "exp within 5 minutes");
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
        if alg == Alg::ES384 {
            assert_eq!(sig.len(), 96);
        }
        assert!(
            verify_with_jwk(jwk, input.as_bytes(), &sig),
            "signature verifies with the JWKS"
        );
        let mut tampered = input.clone().into_bytes();
        tampered[0] ^= 1;
        assert!(!verify_with_jwk(jwk, &tampered, &sig));
    }
    assert_ne!(jtis[0], jtis[1], "jti is unique");

    let evs = audit.events();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0].kind, AuthEventKind::Grant);
    assert_eq!(evs[1].kind, AuthEventKind::Refresh);
    assert_eq!(evs[0].client_id, "backend-client");
    assert_eq!(evs[0].granted_scopes, vec!["system/*.rs".to_owned()]);
    assert!(evs[0].expires_at.is_some());
    assert_eq!(evs[0].id.get_version_num(), 7);
    let serialized = serde_json::to_string(&evs).unwrap();
    assert!(!serialized.contains("at-0") && !serialized.contains("at-1"));
    assert_eq!(t.event_id, evs[0].id);
}

#[tokio::test]
async fn backend_services_es384() {
    check_backend_assertion(Alg::ES384).await;
}

#[tokio::test]
async fn backend_services_rs384() {
    check_backend_assertion(Alg::RS384).await;
}

#[tokio::test]
async fn client_secret_basic_and_post() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 300, "system/Patient.rs"),
        not_found,
    )
    .await;
    let clock = ManualClock::starting_now();
    for (auth_cfg, basic) in [
        (
            ClientAuthConfig::ClientSecretBasic {
                secret: Secret::new("s3cret"),
            },
            true,
        ),
        (
            ClientAuthConfig::ClientSecretPost {
                secret: Secret::new("s3cret"),
            },
            false,
        ),
    ] {
        let cfg = AuthConfig::new(
            srv.url("fhir"),
            "conf-client",
            "system/Patient.rs",
            auth_cfg,
        );
        let a = Authorizer::build(&cfg, &http(&clock), Arc::new(MemoryAuditSink::new()))
            .await
            .unwrap();
        a.token().await.unwrap();
        let call = srv
            .hits()
            .into_iter()
            .rev()
            .find(|h| h.path == "/token")
            .unwrap();
        if basic {
            // base64("conf-client:s3cret")
            assert_eq!(
                call.header("authorization").as_deref(),
                Some("Basic Y29uZi1jbGllbnQ6czNjcmV0")
            );
            assert_eq!(call.form_value("client_secret"), None);
        } else {
            assert_eq!(call.header("authorization"), None);
            assert_eq!(call.form_value("client_id").as_deref(), Some("conf-client"));
            assert_eq!(call.form_value("client_secret").as_deref(), Some("s3cret"));
        }
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 120, "system/*.rs"),
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _) = backend(Alg::ES384, &srv, &clock, dir.path(), "system/*.rs").await;
    assert_eq!(auth.bearer().await.unwrap().expose(), "at-0");
    // 120 s lifetime, 60 s margin: at +61 s every caller must see the need to refresh.
    clock.advance(Duration::from_secs(61));
    let calls = (0..50).map(|_| auth.bearer());
    let tokens = futures::future::join_all(calls).await;
    assert!(tokens
        .iter()
        .all(|t| t.as_ref().unwrap().expose() == "at-1"));
    assert_eq!(
        srv.count_path("/token"),
        2,
        "one grant + exactly one refresh"
    );
}

#[tokio::test]
async fn unauthorized_refreshes_and_replays_once() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 3600, "system/*.rs"),
        |r, _| {
            if r.header("authorization").as_deref() == Some("Bearer at-1") {
                json(200, json!({"resourceType": "Patient", "id": "1"}))
            } else {
                resp(401, &[], "")
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(Alg::ES384, &srv, &clock, dir.path(), "system/*.rs").await;
    let client = auth.authorized_client();
    let r = client.get(srv.url("fhir/Patient/1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(srv.count_path("/fhir/Patient/1"), 2);
    assert_eq!(srv.count_path("/token"), 2);
    let kinds: Vec<_> = audit.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuthEventKind::Grant,
            AuthEventKind::Unauthorized,
            AuthEventKind::Refresh
        ]
    );
}

#[tokio::test]
async fn scope_denied_before_any_network_call() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 3600, "system/Patient.rs"),
        |_, _| json(200, json!({"resourceType": "Bundle"})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(Alg::ES384, &srv, &clock, dir.path(), "system/Patient.rs").await;
    let client = auth.authorized_client();
    let before = srv.count();
    let err = client
        .get(srv.url("fhir/Observation?code=1234-5"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::ScopeDenied);
    let denied = err.scope_denied().unwrap();
    assert_eq!(denied.missing, "system/Observation.s");
    assert!(denied.to_string().contains("system/Observation.s"));
    assert_eq!(srv.count(), before, "no token call, no FHIR call");
    // An export of a type outside the grant is refused too; the allowed types are known.
    let err = client
        .get(srv.url("fhir/$export?_type=Patient,Observation"))
        .await;
    assert_eq!(
        err.unwrap_err().scope_denied().unwrap().missing,
        "system/Observation.rs"
    );
    assert_eq!(srv.count(), before);
    assert_eq!(
        auth.allowed_export_types(),
        ExportTypes::Only(vec!["Patient".into()])
    );
    let denials = audit.of_kind(AuthEventKind::ScopeDenied);
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0].outcome, AuthOutcome::Denied);
    assert_eq!(
        denials[0].error_class.as_deref(),
        Some("system/Observation.s")
    );
    assert!(
        !denials[0].detail.as_deref().unwrap().contains("1234-5"),
        "no query in audit"
    );
    // Allowed requests go through.
    client.get(srv.url("fhir/Patient?name=x")).await.unwrap();
}

#[tokio::test]
async fn partial_grant_is_reported_and_audited() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 3600, "system/Patient.rs"),
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(
        Alg::ES384,
        &srv,
        &clock,
        dir.path(),
        "system/Patient.rs system/Observation.rs",
    )
    .await;
    auth.token().await.unwrap();
    assert_eq!(
        auth.missing_scopes(),
        vec!["system/Observation.rs".to_owned()]
    );
    let ev = &audit.events()[0];
    assert_eq!(ev.outcome, AuthOutcome::Partial);
    assert_eq!(ev.missing_scopes, vec!["system/Observation.rs".to_owned()]);
    assert_eq!(ev.requested_scopes.len(), 2);
}

#[tokio::test]
async fn token_endpoint_failure_is_audited() {
    let srv = smart_server(
        |_, _| {
            json(
                400,
                json!({"error": "invalid_client", "error_description": "unknown key"}),
            )
        },
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(Alg::ES384, &srv, &clock, dir.path(), "system/*.rs").await;
    let err = auth.token().await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::Rejected);
    assert!(err.to_string().contains("invalid_client"), "{err}");
    let ev = &audit.events()[0];
    assert_eq!(ev.kind, AuthEventKind::Failure);
    assert_eq!(ev.error_class.as_deref(), Some("invalid_client"));
}

#[tokio::test]
async fn revoke_calls_endpoint_and_forgets_tokens() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 3600, "system/*.rs"),
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend(Alg::ES384, &srv, &clock, dir.path(), "system/*.rs").await;
    auth.token().await.unwrap();
    auth.revoke().await.unwrap();
    let revokes: Vec<_> = srv
        .hits()
        .into_iter()
        .filter(|h| h.path == "/revoke")
        .collect();
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].form_value("token").as_deref(), Some("at-0"));
    assert_eq!(
        revokes[0].form_value("token_type_hint").as_deref(),
        Some("access_token")
    );
    let ev = audit.of_kind(AuthEventKind::Revocation);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].outcome, AuthOutcome::Success);
    // The grant is gone locally.
    let err = auth.token().await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::NeedsReauthorization);
}

/// Drives the loopback redirect like a browser would.
async fn browser_redirect(authorize: &url::Url, state_override: Option<&str>, code: &str) -> u16 {
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    let mut cb = url::Url::parse(&q["redirect_uri"]).unwrap();
    cb.query_pairs_mut()
        .append_pair("code", code)
        .append_pair("state", state_override.unwrap_or(&q["state"]));
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(cb)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn app_launch_pkce_refresh_invalid_grant_and_no_secrets_in_logs() {
    let (logs, _guard) = capture_logs();
    let challenge = Arc::new(std::sync::Mutex::new(String::new()));
    let ch2 = challenge.clone();
    let srv = smart_server(
        move |r, n| match r.form_value("grant_type").as_deref() {
            Some("authorization_code") => {
                let verifier = r.form_value("code_verifier").unwrap();
                if r.form_value("code").as_deref() != Some("the-auth-code-123")
                    || challenge_s256(&verifier) != *ch2.lock().unwrap()
                {
                    return json(400, json!({"error": "invalid_grant"}));
                }
                json(200, json!({
                    "access_token": "launch-access-AAA", "token_type": "Bearer", "expires_in": 300,
                    "refresh_token": "launch-refresh-RRR", "patient": "pat-1", "encounter": "enc-1",
                    "scope": "launch/patient patient/Observation.rs offline_access",
                    "need_patient_banner": true, "smart_style_url": "https://ehr/style.json"
                }))
            }
            Some("refresh_token") if n == 1 => {
                assert_eq!(r.form_value("refresh_token").as_deref(), Some("launch-refresh-RRR"));
                json(200, json!({"access_token": "launch-access-BBB", "token_type": "Bearer", "expires_in": 300}))
            }
            _ => json(400, json!({"error": "invalid_grant", "error_description": "refresh token revoked"})),
        },
        |r, _| {
            if r.header("authorization").as_deref() == Some("Bearer launch-access-BBB") {
                json(200, json!({"resourceType": "Bundle"}))
            } else {
                resp(401, &[], "")
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("refresh.json");
    let clock = ManualClock::starting_now();
    let mut cfg = AuthConfig::new(
        srv.url("fhir"),
        "launch-app",
        "launch/patient patient/Observation.rs patient/Condition.rs offline_access",
        ClientAuthConfig::ClientSecretBasic {
            secret: Secret::new("client-secret-SSS"),
        },
    );
    cfg.launch = Some("ehr-launch-xyz".into());
    cfg.refresh_token_path = Some(stored.clone());
    let http = http(&clock);
    let pending = begin_login(&http, &cfg).await.unwrap();
    let authorize = pending.authorize_url().clone();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["aud"], srv.url("fhir").as_str());
    assert_eq!(q["launch"], "ehr-launch-xyz");
    assert_eq!(q["client_id"], "launch-app");
    assert!(
        q["redirect_uri"].starts_with("http://127.0.0.1:")
            && q["redirect_uri"].ends_with("/callback")
    );
    *challenge.lock().unwrap() = q["code_challenge"].clone();

    let audit = Arc::new(MemoryAuditSink::new());
    let finish = tokio::spawn(pending.finish(audit.clone()));
    assert_eq!(
        browser_redirect(&authorize, Some("forged"), "evil").await,
        400
    );
    assert_eq!(
        browser_redirect(&authorize, None, "the-auth-code-123").await,
        200
    );
    let grant = finish.await.unwrap().unwrap();
    assert_eq!(grant.token.context.patient.as_deref(), Some("pat-1"));
    assert_eq!(grant.token.context.encounter.as_deref(), Some("enc-1"));
    assert_eq!(grant.token.context.need_patient_banner, Some(true));
    assert_eq!(
        grant.missing_scopes,
        vec!["patient/Condition.rs".to_owned()]
    );
    let code_call = srv.hits().into_iter().find(|h| h.path == "/token").unwrap();
    assert!(code_call
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(
        code_call.form_value("redirect_uri").as_deref(),
        Some(q["redirect_uri"].as_str())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "refresh token file is private");
    }

    let auth = Authorizer::from_grant(&cfg, &http, audit.clone(), &grant)
        .await
        .unwrap();
    // Another patient's requests never get this token.
    let other = auth.bearer_for(&LaunchContext::for_patient("pat-2"));
    assert_eq!(
        other.bearer().await.unwrap_err().kind(),
        AuthErrorKind::NeedsReauthorization
    );
    // 401 → refresh (refresh_token grant) → replay.
    let client = auth.authorized_client();
    let r = client
        .get(srv.url("fhir/Observation?patient=pat-1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Expiry → refresh → invalid_grant → NeedsReauthorization, stored token deleted.
    clock.advance(Duration::from_secs(400));
    let err = client
        .get(srv.url("fhir/Observation?patient=pat-1"))
        .await
        .unwrap_err();
    assert!(err.needs_reauthorization(), "{err}");
    assert_eq!(
        err.auth_error().unwrap().kind(),
        AuthErrorKind::NeedsReauthorization
    );
    assert!(
        !stored.exists(),
        "stored refresh token deleted after invalid_grant"
    );

    let kinds: Vec<_> = audit.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuthEventKind::Grant,
            AuthEventKind::Unauthorized,
            AuthEventKind::Refresh,
            AuthEventKind::Failure
        ]
    );
    let events = audit.events();
    assert_eq!(events[0].patient.as_deref(), Some("pat-1"));
    assert_eq!(
        events[3].error_class.as_deref(),
        Some("needs_reauthorization")
    );

    let out = logs.contents();
    assert!(
        out.contains("access token obtained"),
        "logs were captured: {out}"
    );
    let verifier = srv
        .hits()
        .into_iter()
        .find_map(|h| h.form_value("code_verifier"))
        .unwrap();
    let audit_json = serde_json::to_string(&events).unwrap();
    for secret in [
        "launch-access-AAA",
        "launch-access-BBB",
        "launch-refresh-RRR",
        "client-secret-SSS",
        "the-auth-code-123",
        verifier.as_str(),
        "Y2xpZW50LXNlY3JldC1TU1M", // base64 of the secret
    ] {
        assert!(!out.contains(secret), "log leaks {secret}");
        assert!(!audit_json.contains(secret), "audit leaks {secret}");
        assert!(!err.to_string().contains(secret));
    }
}

#[tokio::test]
async fn backend_logs_hold_no_assertion_or_key() {
    let (logs, _guard) = capture_logs();
    let srv = smart_server(
        |_, n| {
            if n < 2 {
                ok_token(&format!("backend-token-{n}-ZZZ"), 3600, "system/*.rs")
            } else {
                json(400, json!({"error": "invalid_client"}))
            }
        },
        |r, _| {
            if r.header("authorization").as_deref() == Some("Bearer backend-token-1-ZZZ") {
                json(200, json!({}))
            } else {
                resp(401, &[], "")
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _) = backend(Alg::RS384, &srv, &clock, dir.path(), "system/*.rs").await;
    let client = auth.authorized_client();
    client.get(srv.url("fhir/Patient/1")).await.unwrap();
    // At expiry the next grant fails (invalid_client): an Auth error, audited, no leak.
    clock.advance(Duration::from_secs(3600));
    let err = client.get(srv.url("fhir/Patient/1")).await.unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Auth);
    let out = logs.contents();
    assert!(out.contains("retrying request"), "{out}");
    assert!(out.contains("reason=\"auth\""), "{out}");
    let pem = std::fs::read_to_string(dir.path().join("private_key.pem")).unwrap();
    let key_line = pem.lines().nth(2).unwrap();
    let assertions: Vec<String> = srv
        .hits()
        .into_iter()
        .filter_map(|h| h.form_value("client_assertion"))
        .collect();
    assert_eq!(assertions.len(), 3);
    for a in &assertions {
        assert!(!out.contains(a.as_str()));
        let sig = a.rsplit('.').next().unwrap();
        assert!(!out.contains(sig));
    }
    for s in ["backend-token-0-ZZZ", "backend-token-1-ZZZ", key_line] {
        assert!(!out.contains(s), "log leaks {s}");
    }
}

/// Runs begin_login → browser redirect → finish against `srv`.
async fn login_flow(
    cfg: &AuthConfig,
    http: &HttpClient,
    audit: Arc<MemoryAuditSink>,
) -> fhirhose_ingest::auth::Grant {
    let pending = begin_login(http, cfg).await.unwrap();
    let authorize = pending.authorize_url().clone();
    let finish = tokio::spawn(pending.finish(audit));
    assert_eq!(browser_redirect(&authorize, None, "code-1").await, 200);
    finish.await.unwrap().unwrap()
}

#[tokio::test]
async fn stored_refresh_token_restarts_and_revoke_deletes_it() {
    let srv = smart_server(
        |r, _| match r.form_value("grant_type").as_deref() {
            Some("authorization_code") => json(
                200,
                json!({"access_token": "A", "token_type": "Bearer", "expires_in": 300,
                       "refresh_token": "R", "patient": "p9", "scope": "patient/*.rs offline_access"}),
            ),
            Some("refresh_token") if r.form_value("refresh_token").as_deref() == Some("R") => {
                json(200, json!({"access_token": "B", "token_type": "Bearer", "expires_in": 300}))
            }
            _ => json(400, json!({"error": "invalid_grant"})),
        },
        not_found,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("grant.json");
    let clock = ManualClock::starting_now();
    let http = http(&clock);
    let mut cfg = AuthConfig::new(
        srv.url("fhir"),
        "public-app",
        "patient/*.rs offline_access",
        ClientAuthConfig::Public,
    );
    cfg.refresh_token_path = Some(stored.clone());
    let audit = Arc::new(MemoryAuditSink::new());
    let grant = login_flow(&cfg, &http, audit.clone()).await;
    assert!(grant.missing_scopes.is_empty());
    assert!(stored.exists());
    let code_call = srv.hits().into_iter().find(|h| h.path == "/token").unwrap();
    assert_eq!(
        code_call.form_value("client_id").as_deref(),
        Some("public-app")
    );
    assert!(code_call.form_value("code_verifier").unwrap().len() >= 43);

    // A new process: the stored grant is used through the refresh-token grant.
    let auth = Authorizer::build(&cfg, &http, audit.clone()).await.unwrap();
    let t = auth.token().await.unwrap();
    assert_eq!(t.access.expose(), "B");
    assert_eq!(t.context.patient.as_deref(), Some("p9"));
    assert_eq!(
        t.refresh.as_ref().unwrap().expose(),
        "R",
        "refresh token kept"
    );
    assert!(auth
        .bearer_for(&LaunchContext::for_patient("p9"))
        .bearer()
        .await
        .is_ok());

    auth.revoke().await.unwrap();
    let revokes: Vec<_> = srv
        .hits()
        .into_iter()
        .filter(|h| h.path == "/revoke")
        .collect();
    let revoked: Vec<_> = revokes
        .iter()
        .map(|h| {
            (
                h.form_value("token").unwrap(),
                h.form_value("token_type_hint").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revoked,
        vec![
            ("R".to_owned(), "refresh_token".to_owned()),
            ("B".to_owned(), "access_token".to_owned())
        ]
    );
    assert!(
        !stored.exists(),
        "revocation deletes the stored refresh token"
    );
    assert_eq!(audit.of_kind(AuthEventKind::Revocation).len(), 1);
    assert_eq!(
        Authorizer::build(&cfg, &http, audit.clone())
            .await
            .unwrap_err()
            .kind(),
        AuthErrorKind::NeedsReauthorization
    );
}

#[tokio::test]
async fn discovery_falls_back_to_the_capability_statement() {
    let srv = serve(|r, _| {
        let root = format!("http://{}", r.header("host").unwrap());
        match r.path.as_str() {
            "/fhir/metadata" => json(
                200,
                json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": {"extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "token", "valueUri": format!("{root}/oauth/token")},
                        {"url": "authorize", "valueUri": format!("{root}/oauth/authorize")}
                    ]}]}}]}),
            ),
            _ => resp(404, &[], ""),
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let cfg = fhirhose_ingest::auth::discover(&http(&clock), &srv.url("fhir"))
        .await
        .unwrap();
    assert_eq!(cfg.token_endpoint.unwrap().path(), "/oauth/token");
    assert_eq!(
        cfg.authorization_endpoint.unwrap().path(),
        "/oauth/authorize"
    );
    assert!(cfg.revocation_endpoint.is_none());
    assert_eq!(srv.count_path("/fhir/.well-known/smart-configuration"), 1);

    let none = serve(|_, _| resp(404, &[], "")).await;
    let err = fhirhose_ingest::auth::discover(&http(&clock), &none.url("fhir"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::Config);
}

#[tokio::test]
async fn explicit_flow_selection() {
    let srv = smart_server(
        |_, n| ok_token(&format!("at-{n}"), 300, "system/*.rs"),
        not_found,
    )
    .await;
    let clock = ManualClock::starting_now();
    let secret = ClientAuthConfig::ClientSecretPost {
        secret: Secret::new("s"),
    };
    // A confidential App Launch client with no stored grant must log in first.
    let mut cfg = AuthConfig::new(srv.url("fhir"), "c", "patient/*.rs", secret);
    cfg.flow = fhirhose_ingest::auth::AuthFlow::AppLaunch;
    let err = Authorizer::build(&cfg, &http(&clock), Arc::new(MemoryAuditSink::new()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::NeedsReauthorization);
    assert_eq!(srv.count_path("/token"), 0);
    // Backend services cannot use a public client.
    let mut cfg = AuthConfig::new(
        srv.url("fhir"),
        "c",
        "system/*.rs",
        ClientAuthConfig::Public,
    );
    cfg.flow = fhirhose_ingest::auth::AuthFlow::BackendServices;
    let err = Authorizer::build(&cfg, &http(&clock), Arc::new(MemoryAuditSink::new()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::Config);
}
