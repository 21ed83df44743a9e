//! End to end through the binary against the in-process sandbox EHR:
//! `fhirhose auth login` (App Launch, PKCE S256, loopback redirect driven by the test),
//! `fetch --auth app-launch` on the stored refresh token, refresh after expiry, `auth
//! revoke`, `auth check`, and the audit trail (state DB table, the lake's
//! `audit/<source>/<run>.jsonl`, the run → auth event lineage in the manifest). Every
//! run logs at trace level, and its output must hold none of the credentials the sandbox
//! issued or received.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{local_store, objects, table, BIN};
use fhirhose_ingest::auth::{
    generate_keys, Alg, AuthConfig, AuthEventKind, AuthFlow, Authorizer, ClientAuthConfig,
    MemoryAuditSink,
};
use fhirhose_ingest::http::HttpConfig;
use fhirhose_ingest::state::{AuditFilter, AuditRecord, RunAuth, StateStore};
use fhirhose_sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use serde_json::Value;

const APP: &str = "fhirhose-app";
const APP_SCOPES: &str = "launch/patient openid fhirUser offline_access patient/*.read";

/// Runs the binary at trace level, so that the log checks see everything it could log.
async fn fhirhose(args: Vec<String>, cwd: &Path) -> Output {
    let mut full = vec!["--log-level".to_owned(), "trace".to_owned()];
    full.extend(args);
    common::fhirhose_async(full, cwd).await
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One object of the lake.
async fn get(store: &Arc<dyn object_store::ObjectStore>, key: &str) -> bytes::Bytes {
    store
        .get(&object_store::path::Path::from(key))
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .bytes()
        .await
        .unwrap()
}

fn events(state: &Path, f: AuditFilter) -> Vec<AuditRecord> {
    StateStore::open(state).unwrap().auth_events(&f).unwrap()
}

/// Asserts that no credential the sandbox saw appears in any of `texts`.
fn assert_no_credentials(sb: &RunningSandbox, extra: &[String], texts: &[&str]) {
    let mut secrets = sb.credentials_seen();
    secrets.extend(extra.iter().cloned());
    assert!(!secrets.is_empty());
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        for (i, t) in texts.iter().enumerate() {
            assert!(
                !t.contains(s.as_str()),
                "output #{i} contains a credential ({} chars starting {:?})",
                s.len(),
                &s[..4]
            );
        }
    }
}

/// `auth login` with the browser played by the test. Returns (stdout, stderr, code).
async fn login(sb: &RunningSandbox, dir: &Path, port: u16) -> (String, String, String) {
    let state = dir.join("state/state.db");
    let mut child = Command::new(BIN)
        .args([
            "--log-level",
            "trace",
            "auth",
            "login",
            "--fhir-url",
            &sb.base_url(),
            "--client-id",
            APP,
            "--redirect-port",
            &port.to_string(),
            "--no-browser",
            "--state",
            state.to_str().unwrap(),
            "--source",
            "sbx",
        ])
        .current_dir(dir)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let authorize = tokio::task::spawn_blocking(move || loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the authorize URL");
        if line.starts_with("http") && line.contains("/auth/authorize") {
            return line;
        }
    })
    .await
    .unwrap();
    let url = url::Url::parse(authorize.trim()).unwrap();
    let q = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(q("response_type").as_deref(), Some("code"));
    assert_eq!(q("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(q("code_challenge").unwrap().len(), 43);
    assert_eq!(q("aud").as_deref(), Some(sb.base_url().as_str()));
    assert!(q("state").unwrap().len() >= 16);
    assert!(q("code_verifier").is_none());

    // The browser: the sandbox auto-approves and redirects to the loopback listener.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let resp = browser.get(url.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let back = url::Url::parse(&location).unwrap();
    assert_eq!(back.port(), Some(port));
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    // A forged redirect with the wrong state is refused and the login keeps waiting.
    let forged = format!("http://127.0.0.1:{port}/callback?code=forged&state=wrong");
    assert_eq!(browser.get(forged).send().await.unwrap().status(), 400);
    let page = browser.get(back).send().await.unwrap();
    assert_eq!(page.status(), 200);

    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = reader.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "login -> {:?}\n{stdout}\n{}",
        out.status.code(),
        tail(&stderr, 30)
    );
    assert_eq!(out.status.code(), Some(0));
    (stdout, stderr, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_launch_login_fetch_refresh_revoke_with_audit_and_no_leaks() {
    let sb = Sandbox::start(SandboxConfig {
        patients: 3,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    sb.register_public_client(
        APP,
        &format!("http://127.0.0.1:{port}/callback"),
        APP_SCOPES,
    );
    let state = dir.path().join("state/state.db");
    let lake = dir.path().join("lake");

    // 1. Login: PKCE, loopback redirect, refresh token stored with mode 0600.
    let (login_out, login_err, code) = login(&sb, dir.path(), port).await;
    assert!(login_out.contains("granted scopes:"), "{login_out}");
    assert!(login_out.contains("patient/*.read"));
    let token_file = dir
        .path()
        .join("state/credentials")
        .join(format!("{APP}.json"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "login file mode {mode:o}");
        let dmode = std::fs::metadata(token_file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700, "credentials folder mode {dmode:o}");
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    let refresh_token = stored["refresh_token"].as_str().unwrap().to_owned();
    assert!(refresh_token.starts_with("sbx-rt-"));
    let grants = events(&state, AuditFilter::default());
    assert_eq!(grants.len(), 1, "{grants:?}");
    let login_ev = &grants[0];
    assert_eq!(
        (login_ev.kind.as_str(), login_ev.outcome.as_str()),
        ("grant", "success")
    );
    assert_eq!(login_ev.grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(login_ev.client_id, APP);
    assert_eq!(login_ev.endpoint_host, "127.0.0.1");
    assert_eq!(login_ev.source.as_deref(), Some("sbx"));
    assert!(login_ev.patient.is_some());
    assert!(login_ev.expires_at.is_some());
    assert!(login_out.contains(&login_ev.event_id));

    // 2. fetch on the stored login: the refresh-token grant, audited and linked to the run.
    let fetch_args = |summary: &str| {
        strs(&[
            "fetch",
            "Observation",
            "--client-id",
            APP,
            "--auth",
            "app-launch",
            "--state",
            state.to_str().unwrap(),
            "--lake",
            lake.to_str().unwrap(),
            "--source",
            "sbx",
            "--no-canonical-views",
            "--summary-json",
            dir.path().join(summary).to_str().unwrap(),
        ])
    };
    let out = fhirhose(fetch_args("fetch1.json"), dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("fetch1.json")).unwrap()).unwrap();
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    assert!(summary["resources"].as_u64().unwrap() > 0);
    let run_events = events(
        &state,
        AuditFilter {
            run_id: Some(run_id.clone()),
            ..AuditFilter::default()
        },
    );
    let kinds: Vec<&str> = run_events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["refresh"], "one refresh for the whole fetch");
    let refresh = &run_events[0];
    assert_eq!(refresh.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(refresh.outcome, "success");
    assert_eq!(refresh.patient, login_ev.patient, "same launch context");
    let store = local_store(&lake);
    let manifest: Value =
        serde_json::from_slice(&get(&store, &format!("manifests/{run_id}.json")).await).unwrap();
    assert_eq!(manifest["auth_event_id"], refresh.event_id.as_str());
    let audit_key = format!("audit/sbx/{run_id}.jsonl");
    assert_eq!(manifest["audit_log"], audit_key.as_str());
    let lake_audit = get(&store, &audit_key).await;
    let lines: Vec<AuditRecord> = String::from_utf8_lossy(&lake_audit)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, run_events, "the lake log = the run's events");
    assert_eq!(
        StateStore::open(&state).unwrap().run_auth(&run_id).unwrap(),
        Some(RunAuth {
            auth_event_id: Some(refresh.event_id.clone()),
            job_id: None
        })
    );
    // Parquet rows carry the run id that joins to the manifest.
    let batches = table(&store, "resources").await;
    assert!(batches.iter().all(|b| {
        use arrow_array::cast::AsArray as _;
        let c = b.column_by_name("_run_id").unwrap().as_string::<i32>();
        (0..b.num_rows()).all(|i| c.value(i) == run_id)
    }));
    let fetch_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let fetch_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(fetch_err.contains("TRACE") || fetch_err.contains("DEBUG"));

    // 3. Refresh after expiry (library, on the same login file): the 2 s token is reused
    // while fresh, then refreshed once it expired.
    sb.set_faults("token-lifetime=2s".parse().unwrap());
    let mut cfg = AuthConfig::new(
        sb.base_url().parse().unwrap(),
        APP,
        APP_SCOPES,
        ClientAuthConfig::Public,
    );
    cfg.flow = AuthFlow::AppLaunch;
    cfg.refresh_margin = Duration::ZERO;
    cfg.refresh_token_path = Some(token_file.clone());
    let http = HttpConfig::default().build().unwrap();
    let mem = Arc::new(MemoryAuditSink::new());
    let auth = Authorizer::build(&cfg, &http, mem.clone()).await.unwrap();
    let t1 = auth.token().await.unwrap();
    let t1b = auth.token().await.unwrap();
    assert_eq!(t1.event_id, t1b.event_id, "a fresh token is reused");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let t2 = auth.token().await.unwrap();
    assert_ne!(t2.event_id, t1.event_id);
    assert_ne!(t2.access.expose(), t1.access.expose());
    assert_eq!(mem.of_kind(AuthEventKind::Refresh).len(), 2);
    assert!(token_file.exists());
    drop(auth);

    // 4. Revoke: the server forgets the refresh token, the file is gone, it is audited.
    let out = fhirhose(
        strs(&[
            "auth",
            "revoke",
            "--client-id",
            APP,
            "--state",
            state.to_str().unwrap(),
        ]),
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let revoke_out = String::from_utf8_lossy(&out.stdout).into_owned();
    let revoke_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(revoke_out.contains("revoked"), "{revoke_out}");
    assert!(!token_file.exists());
    let all = events(&state, AuditFilter::default());
    let revocation = all.iter().find(|e| e.kind == "revocation").unwrap();
    assert_eq!(revocation.outcome, "success");
    let token_url = sb.token_url();
    let rejected = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", APP),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 400);
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    // Without a login, an app-launch fetch stops with the authorization exit code.
    let out = fhirhose(fetch_args("fetch2.json"), dir.path()).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth login"));

    // 5. `fhirhose audit` lists them; JSON output round-trips.
    let out = fhirhose(
        strs(&[
            "audit",
            "--state",
            state.to_str().unwrap(),
            "--format",
            "json",
        ]),
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let listed: Vec<AuditRecord> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, events(&state, AuditFilter::default()));
    let kinds: Vec<&str> = listed.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.starts_with(&["grant", "refresh"]), "{kinds:?}");
    assert!(kinds.contains(&"revocation"));
    let out = fhirhose(
        strs(&[
            "audit",
            "--state",
            state.to_str().unwrap(),
            "--run",
            &run_id,
        ]),
        dir.path(),
    )
    .await;
    let table_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table_out.contains(&refresh.event_id));
    assert!(!table_out.contains(&login_ev.event_id), "filtered by run");

    // 6. No credential in any output: tokens, the code, the PKCE verifier.
    let mut state_db = std::fs::read(&state).unwrap();
    state_db.extend(std::fs::read(state.with_extension("db-wal")).unwrap_or_default());
    let state_text = String::from_utf8_lossy(&state_db).into_owned();
    let lake_text: String = objects(&store, "audit")
        .await
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_no_credentials(
        &sb,
        &[refresh_token.clone(), code.clone()],
        &[
            &login_out,
            &login_err,
            &fetch_out,
            &fetch_err,
            &revoke_out,
            &revoke_err,
            &table_out,
            &lake_text,
            &state_text,
        ],
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_export_links_run_to_grant_and_writes_the_audit_log() {
    let sb = Sandbox::start(SandboxConfig {
        patients: 3,
        export_polls: 1,
        resources_per_file: 40,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = generate_keys(Alg::ES384, &dir.path().join("keys")).unwrap();
    sb.register_jwks_client("fhirhose-e2e", keys.jwks.clone(), "system/*.read");
    let state: PathBuf = dir.path().join("state/state.db");
    let lake = dir.path().join("lake");
    let key = keys.private_key_path.to_str().unwrap().to_owned();
    let base = sb.base_url();
    let auth_args = [
        "--fhir-url",
        base.as_str(),
        "--client-id",
        "fhirhose-e2e",
        "--key-file",
        key.as_str(),
        "--state",
        state.to_str().unwrap(),
    ];

    // `auth check`: one token exchange, granted scopes and expiry, no token.
    let mut check = strs(&["auth", "check"]);
    check.extend(strs(&auth_args));
    let out = fhirhose(check, dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let check_out = String::from_utf8_lossy(&out.stdout).into_owned();
    let check_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        check_out.contains("granted scopes:   system/*.read"),
        "{check_out}"
    );
    assert!(check_out.contains("expires at "));

    let mut export = strs(&["export"]);
    export.extend(strs(&auth_args));
    export.extend(strs(&[
        "--lake",
        lake.to_str().unwrap(),
        "--source",
        "sandbox",
        "--no-canonical-views",
        "--report-json",
        dir.path().join("report.json").to_str().unwrap(),
        "--summary-json",
        dir.path().join("summary.json").to_str().unwrap(),
    ]));
    let out = fhirhose(export, dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let export_out = String::from_utf8_lossy(&out.stdout).into_owned();
    let export_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let job_id = report["job_id"].as_str().unwrap().to_owned();

    // The state DB: the grant, tagged with source, run and job; the run points at it.
    let run_events = events(
        &state,
        AuditFilter {
            run_id: Some(run_id.clone()),
            ..AuditFilter::default()
        },
    );
    let grant = run_events
        .iter()
        .find(|e| e.kind == "grant")
        .expect("the export's grant");
    assert_eq!(grant.outcome, "success");
    assert_eq!(grant.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(grant.client_id, "fhirhose-e2e");
    assert_eq!(grant.endpoint_host, "127.0.0.1");
    assert_eq!(grant.granted_scopes, vec!["system/*.read".to_owned()]);
    assert_eq!(grant.source.as_deref(), Some("sandbox"));
    assert_eq!(grant.job_id.as_deref(), Some(job_id.as_str()));
    assert!(grant.expires_at.is_some());
    assert_eq!(report["auth_event_id"], grant.event_id.as_str());
    assert_eq!(
        StateStore::open(&state).unwrap().run_auth(&run_id).unwrap(),
        Some(RunAuth {
            auth_event_id: Some(grant.event_id.clone()),
            job_id: Some(job_id.clone())
        })
    );
    // The check's grant belongs to no run.
    let all = events(&state, AuditFilter::default());
    assert_eq!(all.iter().filter(|e| e.kind == "grant").count(), 2);
    assert!(all.iter().any(|e| e.kind == "grant" && e.run_id.is_none()));

    // The lake: manifest → auth event, and the run's audit log.
    let store = local_store(&lake);
    let mkey = format!("manifests/{run_id}.json");
    let manifest: Value = serde_json::from_slice(&get(&store, &mkey).await).unwrap();
    assert_eq!(manifest["auth_event_id"], grant.event_id.as_str());
    assert_eq!(manifest["export_job_id"], job_id.as_str());
    let akey = format!("audit/sandbox/{run_id}.jsonl");
    assert_eq!(manifest["audit_log"], akey.as_str());
    let lake_audit = String::from_utf8_lossy(&get(&store, &akey).await).into_owned();
    let lines: Vec<AuditRecord> = lake_audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|e| e.event_id == grant.event_id));
    assert!(lines
        .iter()
        .all(|e| e.run_id.as_deref() == Some(run_id.as_str())));

    // `fhirhose audit --job` finds the grant.
    let out = fhirhose(
        strs(&[
            "audit",
            "--state",
            state.to_str().unwrap(),
            "--job",
            &job_id,
            "--format",
            "json",
        ]),
        dir.path(),
    )
    .await;
    let by_job: Vec<AuditRecord> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(by_job.iter().any(|e| e.event_id == grant.event_id));
    assert!(by_job
        .iter()
        .all(|e| e.run_id.as_deref() == Some(run_id.as_str())));

    // No assertion, token or private key in any output.
    let pem = std::fs::read_to_string(&keys.private_key_path).unwrap();
    let key_lines: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    assert!(!key_lines.is_empty());
    let seen = sb.credentials_seen();
    assert!(
        seen.iter().any(|s| s.matches('.').count() == 2),
        "an assertion was seen"
    );
    assert_no_credentials(
        &sb,
        &key_lines,
        &[
            &check_out,
            &check_err,
            &export_out,
            &export_err,
            &lake_audit,
        ],
    );
    assert!(!export_err.contains("PRIVATE KEY"));
    sb.shutdown().await;
}
