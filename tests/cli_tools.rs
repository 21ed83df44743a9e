//! `fhirhose keys generate` and `fhirhose sandbox`, through the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn keys_generate_writes_a_private_key_0600_and_a_public_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let o = fhirhose(
        dir.path(),
        &[
            "keys",
            "generate",
            "--alg",
            "ES384",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let key = out.join("private_key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("jwks.json")).unwrap()).unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["alg"], "ES384");
    assert!(k.get("d").is_none(), "the JWKS holds no private part");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("PRIVATE KEY"));
    // Never overwrites an existing key; a bad algorithm is a usage error.
    let again = fhirhose(
        dir.path(),
        &["keys", "generate", "--out", out.to_str().unwrap()],
    );
    assert!(!again.status.success());
    let bad = fhirhose(
        dir.path(),
        &["keys", "generate", "--alg", "HS256", "--out", "x"],
    );
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn sandbox_command_serves_a_smart_configuration_and_an_export_lands() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["sandbox", "--port", "0", "--patients", "5"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first.rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");
    let lake = dir.path().join("lake");
    let out = fhirhose(
        dir.path(),
        &[
            "export",
            "--fhir-url",
            &base,
            "--client-id",
            "fhirhose-sandbox-client",
            "--key-file",
            "fhirhose-sandbox-client/private_key.pem",
            "--scopes",
            "system/*.rs",
            "--system",
            "--lake",
            lake.to_str().unwrap(),
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success());
    assert!(lake.join("tables/patient").exists());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Patient"));
}

#[test]
fn demo_runs_a_full_smart_export_and_reads_the_events_back() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    for _ in 0..2 {
        // Twice: a rerun starts fresh and gives the same counts.
        let out = fhirhose(
            dir.path(),
            &["demo", "--dir", demo.to_str().unwrap(), "--patients", "5"],
        );
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("events read back from Kafka"), "{stdout}");
        let s = summary(&demo.join("summary.json"));
        let resources = s["resources"].as_u64().unwrap();
        assert!(resources > 0);
        let events: u64 = s["events_by_topic"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(events, resources, "one event per resource");
        let patients_line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("fhir.Patient"))
            .unwrap();
        assert!(patients_line.trim_end().ends_with(" 5"), "{patients_line}");
    }
}
