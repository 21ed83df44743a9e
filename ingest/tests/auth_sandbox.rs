//! Interoperability: the auth and http modules against the workspace sandbox EHR
//! (`fhirhose-sandbox`), which shares no code with them.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use fhirhose_ingest::auth::{
    begin_login, generate_keys, Alg, AuthConfig, AuthErrorKind, AuthEventKind, Authorizer,
    ClientAuthConfig, MemoryAuditSink,
};
use fhirhose_ingest::http::{
    HttpClient, HttpConfig, HttpErrorKind, Interaction, ManualClock, Request, Secret, TokenPolicy,
};
use fhirhose_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use url::Url;

async fn sandbox(faults: &str) -> RunningSandbox {
    Sandbox::start(SandboxConfig {
        patients: 3,
        faults: faults.parse().unwrap(),
        export_polls: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

fn http(clock: &ManualClock) -> HttpClient {
    HttpConfig {
        use_system_proxy: false,
        jitter_seed: Some(11),
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap()
}

fn base(sb: &RunningSandbox) -> Url {
    Url::parse(&sb.base_url()).unwrap()
}

fn fhir_url(sb: &RunningSandbox, path: &str) -> Url {
    Url::parse(&format!("{}/{path}", sb.base_url())).unwrap()
}

async fn backend_client(
    sb: &RunningSandbox,
    alg: Alg,
    registered: &str,
    requested: &str,
    clock: &ManualClock,
    dir: &std::path::Path,
) -> (Authorizer, Arc<MemoryAuditSink>) {
    let keys = generate_keys(alg, dir).unwrap();
    sb.register_jwks_client("bulk-client", keys.jwks.clone(), registered);
    let cfg = AuthConfig::new(
        base(sb),
        "bulk-client",
        requested,
        ClientAuthConfig::PrivateKeyJwt {
            key_path: keys.private_key_path,
            kid: None,
            jku: None,
        },
    );
    let audit = Arc::new(MemoryAuditSink::new());
    let auth = Authorizer::build(&cfg, &http(clock), audit.clone())
        .await
        .unwrap();
    (auth, audit)
}

#[tokio::test]
async fn backend_services_es384_and_rs384_against_sandbox() {
    for alg in [Alg::ES384, Alg::RS384] {
        let sb = sandbox("").await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let (auth, audit) = backend_client(
            &sb,
            alg,
            "system/*.read",
            "system/*.read",
            &clock,
            dir.path(),
        )
        .await;
        let client = auth.authorized_client();
        let bundle: Value = client
            .get(fhir_url(&sb, "Patient"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bundle["total"], 3, "{alg}");
        assert_eq!(audit.of_kind(AuthEventKind::Grant).len(), 1);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn client_secret_basic_and_post_against_sandbox() {
    let sb = sandbox("").await;
    sb.register_secret_client("conf", "s3cret", "system/Patient.read");
    let clock = ManualClock::starting_now();
    for client_auth in [
        ClientAuthConfig::ClientSecretBasic {
            secret: Secret::new("s3cret"),
        },
        ClientAuthConfig::ClientSecretPost {
            secret: Secret::new("s3cret"),
        },
    ] {
        let cfg = AuthConfig::new(base(&sb), "conf", "system/Patient.read", client_auth);
        let auth = Authorizer::build(&cfg, &http(&clock), Arc::new(MemoryAuditSink::new()))
            .await
            .unwrap();
        let r = auth
            .authorized_client()
            .get(fhir_url(&sb, "Patient"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn scope_denial_never_reaches_the_sandbox() {
    let sb = sandbox("").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend_client(
        &sb,
        Alg::ES384,
        "system/Patient.read",
        "system/Patient.read",
        &clock,
        dir.path(),
    )
    .await;
    let client = auth.authorized_client();
    client.get(fhir_url(&sb, "Patient")).await.unwrap();
    let err = client
        .get(fhir_url(&sb, "Observation?category=laboratory"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::ScopeDenied);
    assert_eq!(err.scope_denied().unwrap().missing, "system/Observation.s");
    assert!(sb
        .request_log()
        .iter()
        .all(|e| !e.path.contains("Observation")));
    assert_eq!(audit.of_kind(AuthEventKind::ScopeDenied).len(), 1);
    sb.shutdown().await;
}

#[tokio::test]
async fn sandbox_retry_after_date_is_honoured() {
    let sb = sandbox("429=first:1@fhir,retry-after=date:20").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _) = backend_client(
        &sb,
        Alg::ES384,
        "system/*.read",
        "system/*.read",
        &clock,
        dir.path(),
    )
    .await;
    let r = auth
        .authorized_client()
        .get(fhir_url(&sb, "Patient"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.attempts(), 2);
    let waited: Duration = clock.sleeps().iter().sum();
    // The HTTP date has one-second resolution and the wall clocks differ slightly.
    assert!(
        waited >= Duration::from_secs(15) && waited <= Duration::from_secs(21),
        "{:?}",
        clock.sleeps()
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn revocation_mid_job_recovers_with_a_new_grant() {
    let sb = sandbox("revoke-after=2").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, audit) = backend_client(
        &sb,
        Alg::ES384,
        "system/*.read",
        "system/*.read",
        &clock,
        dir.path(),
    )
    .await;
    let client = auth.authorized_client();
    for _ in 0..4 {
        let r = client.get(fhir_url(&sb, "Patient")).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let kinds: Vec<_> = audit.events().iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&AuthEventKind::Unauthorized), "{kinds:?}");
    assert!(kinds.contains(&AuthEventKind::Refresh), "{kinds:?}");
    sb.shutdown().await;
}

#[tokio::test]
async fn export_file_redirect_to_storage_drops_the_bearer() {
    let sb = sandbox("redirect-files").await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let (auth, _) = backend_client(
        &sb,
        Alg::ES384,
        "system/*.read",
        "system/*.read",
        &clock,
        dir.path(),
    )
    .await;
    let client = auth.authorized_client();
    let kickoff = client
        .send(
            Request::get(fhir_url(&sb, "$export?_type=Patient"))
                .header(
                    HeaderName::from_static("prefer"),
                    HeaderValue::from_static("respond-async"),
                )
                .header(
                    reqwest::header::ACCEPT,
                    HeaderValue::from_static("application/fhir+json"),
                ),
        )
        .await
        .unwrap();
    assert_eq!(kickoff.status(), 202);
    let status_url = kickoff.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let status_url = base(&sb).join(&status_url).unwrap();
    let manifest: Value = client
        .send(Request::get(status_url).interaction(Interaction::Other))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["requiresAccessToken"], true);
    let file = Url::parse(manifest["output"][0]["url"].as_str().unwrap()).unwrap();
    let resp = client
        .send(
            Request::get(file)
                .interaction(Interaction::FileDownload {
                    resource_type: Some("Patient".into()),
                })
                .token(TokenPolicy::Required),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.url().origin().ascii_serialization(),
        sb.storage_origin().trim_end_matches('/')
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        3
    );
    let log = sb.request_log();
    let storage: Vec<_> = log.iter().filter(|e| e.origin != "fhir").collect();
    assert_eq!(storage.len(), 1, "{log:?}");
    assert!(
        !storage[0].bearer_present,
        "the bearer never reaches storage"
    );
    let fhir_file = log
        .iter()
        .find(|e| e.origin == "fhir" && e.path.starts_with("/files/"))
        .unwrap();
    assert!(
        fhir_file.bearer_present,
        "requiresAccessToken: the FHIR origin got it"
    );
    sb.shutdown().await;
}

async fn launch_login(
    sb: &RunningSandbox,
    clock: &ManualClock,
) -> (
    AuthConfig,
    HttpClient,
    Arc<MemoryAuditSink>,
    fhirhose_ingest::auth::Grant,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let scopes = "launch/patient patient/*.read offline_access";
    sb.register_public_client("launch-app", &redirect, scopes);
    let mut cfg = AuthConfig::new(base(sb), "launch-app", scopes, ClientAuthConfig::Public);
    cfg.redirect_port = port;
    let http = http(clock);
    let pending = begin_login(&http, &cfg).await.unwrap();
    let authorize = pending.authorize_url().clone();
    let audit = Arc::new(MemoryAuditSink::new());
    let finish = tokio::spawn(pending.finish(audit.clone()));
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser.get(authorize).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&redirect), "{location}");
    assert_eq!(browser.get(location).send().await.unwrap().status(), 200);
    let grant = finish.await.unwrap().unwrap();
    (cfg, http, audit, grant)
}

#[tokio::test]
async fn app_launch_with_pkce_against_sandbox() {
    let sb = sandbox("").await;
    let clock = ManualClock::starting_now();
    let (cfg, http, audit, grant) = launch_login(&sb, &clock).await;
    let patient = grant.token.context.patient.clone().expect("launch patient");
    assert_eq!(patient, sb.patient_ids()[0]);
    assert!(
        grant.token.refresh.is_some(),
        "offline_access gives a refresh token"
    );
    let auth = Authorizer::from_grant(&cfg, &http, audit.clone(), &grant)
        .await
        .unwrap();
    let client = auth.authorized_client();
    let r = client
        .get(fhir_url(&sb, &format!("Patient/{patient}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Past expiry: the refresh-token grant is used, and the new token works.
    clock.advance(Duration::from_secs(24 * 3600));
    let r = client
        .get(fhir_url(&sb, &format!("Patient/{patient}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(audit.of_kind(AuthEventKind::Refresh).len(), 1);
    auth.revoke().await.unwrap();
    sb.shutdown().await;
}

#[tokio::test]
async fn sandbox_invalid_grant_on_refresh_needs_reauthorization() {
    let sb = sandbox("invalid-grant-on-refresh").await;
    let clock = ManualClock::starting_now();
    let (cfg, http, audit, grant) = launch_login(&sb, &clock).await;
    let auth = Authorizer::from_grant(&cfg, &http, audit.clone(), &grant)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(24 * 3600));
    let err = auth.token().await.unwrap_err();
    assert_eq!(err.kind(), AuthErrorKind::NeedsReauthorization);
    let last = audit.events().pop().unwrap();
    assert_eq!(last.kind, AuthEventKind::Failure);
    sb.shutdown().await;
}
