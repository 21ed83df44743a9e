//! The SQL-on-FHIR v2 conformance suite must pass in full (shareable and experimental).

use std::path::{Path, PathBuf};

use fhirhose_normalize::conformance::{run_dir, run_dir_prepared, Report};

fn suite(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/sql-on-fhir-v2/upstream-sql-on-fhir.js")
        .join(dir)
}

fn assert_all_pass(report: &Report, expected_total: usize) {
    let failures = report.failures();
    for (file, t) in &failures {
        eprintln!(
            "FAIL {file} :: {}: {}",
            t.name,
            t.reason.as_deref().unwrap_or("")
        );
    }
    assert_eq!(report.total(), expected_total, "unexpected number of tests");
    assert!(
        failures.is_empty(),
        "{} of {} tests failed",
        failures.len(),
        report.total()
    );
}

#[test]
fn upstream_suite_passes() {
    let report = run_dir(&suite("tests")).unwrap();
    assert_eq!(report.files.len(), 22);
    assert_all_pass(&report, 144);
}

#[test]
fn newer_reference_key_tests_pass() {
    let report = run_dir(&suite("newer-indexed")).unwrap();
    assert_all_pass(&report, 7);
}

#[test]
fn upstream_suite_passes_on_prepared_lines() {
    let report = run_dir_prepared(&suite("tests")).unwrap();
    assert_eq!(report.files.len(), 22);
    assert_all_pass(&report, 144);
    let report = run_dir_prepared(&suite("newer-indexed")).unwrap();
    assert_all_pass(&report, 7);
}

#[test]
fn official_report_has_the_schema_shape() {
    let report = run_dir(&suite("newer-indexed")).unwrap();
    let json = report.to_official_json();
    let tests = json["fn_reference_keys.json"]["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 7);
    for t in tests {
        assert!(t["name"].is_string());
        assert_eq!(t["result"]["passed"], serde_json::Value::Bool(true));
        assert!(t["result"].get("error").is_none());
    }
}

/// The older FHIR/sql-on-fhir-v2 copy differs from upstream only in `join()` on an empty
/// collection (`""` there, null upstream, issue #292); everything else must pass.
#[test]
fn older_suite_differs_only_in_join_on_empty() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sql-on-fhir-v2/tests");
    let report = run_dir(&dir).unwrap();
    assert_eq!(report.total(), 134);
    let failures: Vec<String> = report
        .failures()
        .iter()
        .map(|(file, t)| format!("{file} :: {}", t.name))
        .collect();
    for (file, t) in report.failures() {
        eprintln!(
            "older suite: {file} :: {}: {}",
            t.name,
            t.reason.as_deref().unwrap_or("")
        );
    }
    assert_eq!(
        failures,
        [
            "fhirpath.json :: string join",
            "fhirpath.json :: string join: default separator"
        ],
        "only the two join-on-empty tests may fail"
    );
}
