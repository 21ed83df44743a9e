//! No PHI and no credentials in logs, at trace level, in both log formats.
//!
//! The real `fhirhose` binary exports from an in-process sandbox EHR that serves generated
//! data with a fixed seed (written to a folder first, so the test knows every name,
//! identifier, birth date, address line and phone it holds), with faults on (resets,
//! truncations, 429/503 with Retry-After, redirects to a storage origin with signed query
//! strings, token expiry and revocation, a malformed line, error and deleted files).
//! Everything the binary writes (stderr and stdout) is searched for every one of those
//! values, for the client secret, the private key, any access or refresh token, any JWT
//! and any query string. Zero hits are allowed. A second part ingests a file of malformed
//! lines full of PHI, so parser and view errors are proven not to echo content.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::BIN;
use fhirhose_ingest::auth::{generate_keys, Alg};
use fhirhose_sandbox::generate::Generator;
use fhirhose_sandbox::{Sandbox, SandboxConfig};

const SEED: u64 = 20_240_607;
const PATIENTS: usize = 5;
const CLIENT_SECRET: &str = "cs-Xq7PhiTestSecretNeverLogged-4f2a";
const FAULTS: &str = "reset=0.15@file,truncate=0.1@file,503=every:4@status+file,429=0.1@file+fhir,\
retry-after=1,redirect-files,error-file,deleted,bad-line,tiny-files=25,token-lifetime=3s,revoke-after=12,seed=11";

/// PHI values of the served data: names, identifier values, birth dates, address lines,
/// postal codes and telecom values of every resource.
fn phi_values(dir: &Path) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, parent: &str, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let take = matches!(
                        k.as_str(),
                        "family" | "given" | "birthDate" | "line" | "postalCode"
                    ) || (k == "value" && matches!(parent, "identifier" | "telecom"));
                    if take {
                        match x {
                            serde_json::Value::String(s) => {
                                out.insert(s.clone());
                            }
                            serde_json::Value::Array(a) => {
                                out.extend(a.iter().filter_map(|s| s.as_str().map(str::to_owned)));
                            }
                            _ => {}
                        }
                    }
                    walk(x, k, out);
                }
            }
            serde_json::Value::Array(a) => {
                for x in a {
                    walk(x, parent, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            walk(&v, "", &mut out);
        }
    }
    out
}

/// Whether `needle` occurs in `hay` as a whole word (not inside a longer alphanumeric run).
fn contains_word(hay: &str, needle: &str) -> bool {
    let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    hay.match_indices(needle).any(|(i, _)| {
        edge(hay[..i].chars().next_back()) && edge(hay[i + needle.len()..].chars().next())
    })
}

/// Every leak in `text`: PHI values, secrets, key material, tokens, JWTs, query strings.
fn leaks(text: &str, phi: &BTreeSet<String>, secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        for p in phi {
            if contains_word(line, p) {
                found.push(format!("PHI `{p}` in: {line}"));
            }
        }
        for s in secrets {
            if line.contains(s.as_str()) {
                found.push(format!("secret in: {line}"));
            }
        }
        for pat in [
            "sbx-at-",
            "sbx-rt-",
            "sbx-code-",
            "eyJ",
            "PRIVATE KEY",
            "sig=",
            "client_secret=",
        ] {
            if line.contains(pat) {
                found.push(format!("`{pat}` in: {line}"));
            }
        }
        // A query string: `?name=` (only `?[redacted]` may follow a `?`).
        for (i, _) in line.match_indices('?') {
            let rest = &line[i + 1..];
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_-.%".contains(c)))
                .unwrap_or(rest.len());
            if name_len > 0 && rest[name_len..].starts_with('=') {
                found.push(format!("query string in: {line}"));
            }
        }
        if let Some(i) = line.find("Bearer ") {
            if !line[i + 7..].starts_with("[redacted]") {
                found.push(format!("bearer value in: {line}"));
            }
        }
    }
    found
}

/// The private key's secret material: every base64 line of the PEM.
fn key_material(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .flat_map(|l| [l.to_owned(), l[..16].to_owned()])
        .collect()
}

async fn run(args: Vec<String>, cwd: &Path, env: Vec<(&'static str, String)>) -> Output {
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(BIN);
        c.args(&args)
            .current_dir(&cwd)
            .env_remove("RUST_LOG")
            .env_remove("FHIRHOSE_LOG_LEVEL")
            .env_remove("FHIRHOSE_LOG_FORMAT")
            .env_remove("FHIRHOSE_CONFIG")
            .env("NO_PROXY", "127.0.0.1,localhost");
        for (k, v) in env {
            c.env(k, v);
        }
        output_within(c, RUN_DEADLINE)
    })
    .await
    .unwrap()
}

/// Longest a run may take; a hung run is killed and its output kept for the failure.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Runs a command, killing it after `deadline`.
fn output_within(mut c: Command, deadline: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("run fhirhose");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn all_output(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every retry line names its reason class and its wait (JSON logs).
fn check_retries(stderr: &str) -> usize {
    let mut n = 0;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let msg = v["message"].as_str().unwrap_or_default();
        if matches!(
            msg,
            "retrying request" | "resuming export file" | "status poll failed; waiting"
        ) {
            n += 1;
            let reason = v["reason"].as_str().unwrap_or_default();
            assert!(
                ["transport", "auth", "throttled", "server", "timeout"].contains(&reason),
                "retry without a reason class: {line}"
            );
            assert!(v["wait_ms"].is_u64(), "retry without its wait: {line}");
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_at_trace_with_faults_logs_no_phi_and_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Generator::new(SEED)
        .write_ndjson_dir(&data, PATIENTS)
        .unwrap();
    let phi = phi_values(&data);
    assert!(phi.len() > 40, "too few PHI values to search for: {phi:?}");

    let sb = Sandbox::start(SandboxConfig {
        data_dir: Some(data.clone()),
        faults: FAULTS.parse().unwrap(),
        export_polls: 2,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let keys = generate_keys(Alg::ES384, &dir.path().join("keys")).unwrap();
    sb.register_jwks_client("phi-jwt", keys.jwks.clone(), "system/*.read");
    sb.register_secret_client("phi-secret", CLIENT_SECRET, "system/*.read");
    let mut secrets = key_material(&keys.private_key_path);
    secrets.push(CLIENT_SECRET.to_owned());

    // 1. private_key_jwt, human logs at trace, everything on the command line.
    let args: Vec<String> = [
        "--log-level",
        "trace",
        "export",
        "--fhir-url",
        &sb.base_url(),
        "--client-id",
        "phi-jwt",
        "--key-file",
        keys.private_key_path.to_str().unwrap(),
        "--lake",
        dir.path().join("lake1").to_str().unwrap(),
        "--state",
        dir.path().join("state1/state.db").to_str().unwrap(),
        "--source",
        "sandbox",
        "--profile",
        "generic",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let human = run(args, dir.path(), vec![]).await;
    let human_text = all_output(&human);
    eprintln!("--- human run: {:?}\n{human_text}", human.status.code());

    // 2. client_secret_basic, JSON logs at trace, settings from a config file.
    std::fs::write(dir.path().join("client.secret"), CLIENT_SECRET).unwrap();
    let cfg = dir.path().join("fhirhose.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[log]
level = "trace"
format = "json"
[lake]
url = "lake2"
state = "state2/state.db"
source = "sandbox"
[auth]
fhir_url = "{}"
client_id = "phi-secret"
secret_file = "client.secret"
profile = "generic"
"#,
            sb.base_url()
        ),
    )
    .unwrap();
    let json = run(
        vec![
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "export".into(),
        ],
        dir.path(),
        vec![],
    )
    .await;
    let json_text = all_output(&json);
    eprintln!("--- json run: {:?}\n{json_text}", json.status.code());

    let tokens_issued = sb
        .request_log()
        .iter()
        .filter(|l| l.path.ends_with("/auth/token") && l.status == 200)
        .count();
    sb.shutdown().await;

    // Both exports ran to the end through the faults.
    assert_eq!(human.status.code(), Some(0), "human run failed");
    assert_eq!(json.status.code(), Some(0), "json run failed");
    assert!(
        tokens_issued >= 4,
        "expected token refreshes, saw {tokens_issued} grants"
    );
    assert!(
        dir.path().join("lake2/raw/sandbox").is_dir(),
        "config file lake not used"
    );
    assert!(human_text.lines().count() > 100, "trace logging seems off");

    // Faults happened and every retry says why and how long it waits.
    let json_stderr = String::from_utf8_lossy(&json.stderr);
    assert!(check_retries(&json_stderr) >= 3, "too few retries logged");
    assert!(human_text.contains("retrying request") || human_text.contains("resuming export file"));

    let mut found = leaks(&human_text, &phi, &secrets);
    found.extend(leaks(&json_text, &phi, &secrets));
    assert!(
        found.is_empty(),
        "{} leaks:\n{}",
        found.len(),
        found.join("\n")
    );
}

/// Malformed lines full of PHI: the parser's and the views' complaints must not echo them.
const BAD_LINES: &[&str] = &[
    // Valid, so normal processing is logged at trace too.
    r#"{"resourceType":"Patient","id":"ok1","name":[{"family":"Zyxwarden","given":["Quillfeather"]}],"birthDate":"1961-07-04","identifier":[{"value":"MRN-99887766"}],"telecom":[{"system":"phone","value":"555-867-5309"}],"address":[{"line":["42 Wallaby Way"]}]}"#,
    // Invalid JSON in the middle of a name.
    r#"{"resourceType":"Patient","id":"bad1","name":[{"family":"Zyxwarden" "given":["Quillfeather"]}]}"#,
    // Cut off after an identifier.
    r#"{"resourceType":"Patient","id":"bad2","identifier":[{"value":"MRN-99887766"}],"birthDate":"1961-07-04"#,
    // An unterminated string holding a phone number.
    r#"{"resourceType":"Patient","id":"bad3","telecom":[{"value":"555-867-5309}]}"#,
    // Not an object.
    r#"["Zyxwarden","Quillfeather","1961-07-04"]"#,
    // An id made of PHI.
    r#"{"resourceType":"Patient","id":"Zyxwarden Quillfeather 1961-07-04"}"#,
    // A resource type made of PHI.
    r#"{"resourceType":"Zyxwarden","id":"bad4"}"#,
    // A birth date that is not a date (a view error), with an address.
    r#"{"resourceType":"Patient","id":"bad5","birthDate":"Zyxwarden-1961","address":[{"line":["42 Wallaby Way"]}]}"#,
    // Control characters and a bad escape inside a name.
    "{\"resourceType\":\"Patient\",\"id\":\"bad6\",\"name\":[{\"family\":\"Zyx\\qwarden\u{1}\"}]}",
    // Oversize (over --max-line-bytes).
    "OVERSIZE",
];

const BAD_PHI: &[&str] = &[
    "Zyxwarden",
    "Quillfeather",
    "1961-07-04",
    "MRN-99887766",
    "555-867-5309",
    "42 Wallaby Way",
    "Zyx\\qwarden",
];

#[test]
fn ingest_of_malformed_phi_lines_logs_no_content() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/Patient.ndjson");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    let mut text = String::new();
    for l in BAD_LINES {
        if *l == "OVERSIZE" {
            text.push_str(&format!(
                r#"{{"resourceType":"Patient","id":"big","name":[{{"family":"Zyxwarden","text":"{}"}}]}}"#,
                "Quillfeather ".repeat(400)
            ));
        } else {
            text.push_str(l);
        }
        text.push('\n');
    }
    // Invalid UTF-8 in a name, and a final line without a newline (truncated).
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"bad7\",\"name\":[{\"family\":\"Zyxwarden\xff\xfe\"}]}\n");
    bytes.extend_from_slice(
        br#"{"resourceType":"Patient","id":"bad8","name":[{"family":"Quillfeather"#,
    );
    std::fs::write(&input, bytes).unwrap();
    let phi: BTreeSet<String> = BAD_PHI.iter().map(|s| s.to_string()).collect();

    for format in ["human", "json"] {
        let mut out = Command::new(BIN);
        out.args([
            "--log-level",
            "trace",
            "--log-format",
            format,
            "ingest",
            input.to_str().unwrap(),
            "--lake",
            dir.path().join(format!("lake-{format}")).to_str().unwrap(),
            "--state",
            dir.path()
                .join(format!("state-{format}.db"))
                .to_str()
                .unwrap(),
            "--max-line-bytes",
            "4096",
            "--strict",
            "--summary-json",
            dir.path()
                .join(format!("summary-{format}.json"))
                .to_str()
                .unwrap(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("FHIRHOSE_LOG_LEVEL")
        .env_remove("FHIRHOSE_CONFIG");
        let out = output_within(out, RUN_DEADLINE);
        let text = all_output(&out);
        eprintln!("--- ingest {format}: {:?}\n{text}", out.status.code());
        // Dead letters with --strict: exit code 5.
        assert_eq!(out.status.code(), Some(5), "{format}");
        let summary = common::summary(&dir.path().join(format!("summary-{format}.json")));
        assert!(summary["dead_letters"].as_u64().unwrap() >= 9, "{summary}");
        let found = leaks(&text, &phi, &[]);
        assert!(
            found.is_empty(),
            "{format}: {} leaks:\n{}",
            found.len(),
            found.join("\n")
        );
        if format == "json" {
            for l in String::from_utf8_lossy(&out.stderr).lines() {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
            }
        }
    }
}

/// Leaks the checker itself must catch (so a clean result means something).
#[test]
fn the_leak_checker_finds_leaks() {
    let phi: BTreeSet<String> = ["Smith".to_string(), "1970-01-01".to_string()].into();
    let secrets = vec!["s3cret-value".to_string()];
    for bad in [
        "name Smith here",
        "born 1970-01-01",
        "x s3cret-value y",
        "token sbx-at-abc",
        "GET /f.ndjson?sig=abc",
        "GET /Patient?name=x",
        "Authorization: Bearer abc",
        "jwt eyJhbGciOi",
    ] {
        assert!(!leaks(bad, &phi, &secrets).is_empty(), "{bad}");
    }
    for ok in [
        "Smithson 1970-01-01T00:00:00Z",
        "GET /f.ndjson?[redacted] Bearer [redacted]",
        "is it? yes",
    ] {
        assert!(leaks(ok, &phi, &secrets).is_empty(), "{ok}");
    }
}
