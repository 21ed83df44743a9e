//! The synthetic data generator and file-backed data.

mod common;

use std::path::Path;

use fhirhose_sandbox::generate::{Generator, RESOURCE_TYPES};
use fhirhose_sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;

fn digest_dir(dir: &Path, patients: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let files = Generator::new(seed)
        .write_ndjson_dir(dir, patients)
        .unwrap();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(&f.path).unwrap();
            assert_eq!(bytes.len() as u64, f.bytes);
            assert_eq!(
                bytes.iter().filter(|b| **b == b'\n').count() as u64,
                f.lines
            );
            (f.resource_type.clone(), bytes)
        })
        .collect()
}

#[test]
fn same_seed_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let first = digest_dir(a.path(), 15, 42);
    let second = digest_dir(b.path(), 15, 42);
    let other = digest_dir(c.path(), 15, 43);
    assert_eq!(first, second);
    assert_ne!(first, other);
    let types: Vec<&str> = first.iter().map(|(t, _)| t.as_str()).collect();
    for t in RESOURCE_TYPES {
        assert!(types.contains(t), "{t} missing");
    }
}

#[test]
fn realistic_shapes() {
    let mut patients = Vec::new();
    let mut bp = None;
    let mut value_kinds = std::collections::BTreeSet::new();
    let mut notes = Vec::new();
    Generator::new(5).for_each_resource(30, |ty, line| {
        let v: Value = serde_json::from_slice(line).unwrap();
        match ty {
            "Patient" => patients.push(v),
            "Condition" => {
                if let Some(t) = v["note"][0]["text"].as_str() {
                    notes.push(t.to_owned());
                }
            }
            "Observation" => {
                for k in [
                    "valueQuantity",
                    "valueCodeableConcept",
                    "valueString",
                    "valueBoolean",
                    "component",
                ] {
                    if v.get(k).is_some() {
                        value_kinds.insert(k);
                    }
                }
                if v["code"]["coding"][0]["code"] == "85354-9" {
                    bp.get_or_insert(v);
                }
            }
            _ => {}
        }
    });
    assert!(
        notes.iter().any(|n| n.contains('\n')),
        "escaped newlines in notes"
    );
    assert!(
        notes.iter().any(|n| n.contains('🙂')),
        "surrogate-pair escapes in notes"
    );
    assert!(
        patients
            .iter()
            .any(|p| !p["name"][0]["family"].as_str().unwrap().is_ascii()),
        "non-ASCII names"
    );
    let p = &patients[0];
    assert_eq!(p["name"][0]["given"].as_array().unwrap().len(), 2);
    assert!(p["identifier"].to_string().contains("us-ssn"));
    assert!(p["identifier"].to_string().contains("\"MR\""));
    assert!(p["extension"].to_string().contains("us-core-race"));
    assert!(p["address"][0]["city"].is_string());
    assert!(p["birthDate"].is_string() && p["gender"].is_string());
    let bp = bp.expect("a blood pressure panel");
    assert_eq!(bp["component"].as_array().unwrap().len(), 2);
    assert_eq!(value_kinds.len(), 5, "{value_kinds:?}");
}

#[tokio::test]
async fn serves_ndjson_and_gzip_directories() {
    // A generated directory...
    let dir = tempfile::tempdir().unwrap();
    Generator::new(8).write_ndjson_dir(dir.path(), 4).unwrap();
    let sb = Sandbox::start(SandboxConfig {
        data_dir: Some(dir.path().to_owned()),
        require_auth: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sb.patient_ids().len(), 4);
    let b: Value = common::http()
        .get(format!("{}/Patient", sb.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["total"], 4);
    sb.shutdown().await;

    // ...and the shared gzip corpus.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus");
    let sb = Sandbox::start(SandboxConfig {
        data_dir: Some(corpus),
        require_auth: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    assert!(!sb.patient_ids().is_empty());

    // A full system export of the corpus returns every resource it holds.
    let c = common::http();
    let r = c
        .get(format!("{}/$export", sb.base_url()))
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    let mut manifest = Value::Null;
    for _ in 0..5 {
        let r = c.get(&status_url).send().await.unwrap();
        if r.status() == 200 {
            manifest = r.json().await.unwrap();
            break;
        }
    }
    assert_eq!(
        manifest["requiresAccessToken"], false,
        "no auth, no token needed"
    );
    let exported: u64 = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    let held: usize = sb.resource_counts().values().sum();
    assert_eq!(exported as usize, held);
    sb.shutdown().await;
}

#[test]
fn config_deserializes_with_defaults() {
    let cfg: SandboxConfig = serde_json::from_value(serde_json::json!({
        "patients": 3,
        "token_lifetime": "3s",
        "export_min_duration": 2,
        "faults": "429=every:5,redirect-files"
    }))
    .unwrap();
    assert_eq!(cfg.patients, 3);
    assert_eq!(cfg.token_lifetime, std::time::Duration::from_secs(3));
    assert_eq!(cfg.export_min_duration, std::time::Duration::from_secs(2));
    assert!(cfg.faults.redirect_files);
    assert_eq!(cfg.faults.to_string(), "429=every:5,redirect-files");
    assert_eq!(
        cfg.resources_per_file,
        SandboxConfig::default().resources_per_file
    );
    assert!(serde_json::from_value::<SandboxConfig>(serde_json::json!({"patiens": 3})).is_err());
}
