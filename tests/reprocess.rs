//! `fhirhose reprocess` through the real binary, on a local-folder lake (no services).
//!
//! Each test ingests part of the corpus, edits a view through `--views`, and checks the rebuilt
//! table against the raw NDJSON, the table pointers, garbage collection and crash safety.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

/// Small corpus files (Patient, Condition, Organization, AllergyIntolerance).
const FILES: [&str; 4] = [
    "Patient.01.ndjson.gz",
    "Condition.01.ndjson.gz",
    "Organization.01.ndjson.gz",
    "AllergyIntolerance.01.ndjson.gz",
];

struct Lake {
    dir: tempfile::TempDir,
}

impl Lake {
    fn root(&self) -> PathBuf {
        self.dir.path().join("lake")
    }
    fn lake(&self) -> String {
        self.root().to_string_lossy().into_owned()
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        fhirhose(self.dir.path(), args)
    }
    fn pointer_bytes(&self, table: &str) -> Vec<u8> {
        std::fs::read(self.root().join(format!("tables/{table}/_current.json")))
            .unwrap_or_else(|e| panic!("pointer of {table}: {e}"))
    }
    fn pointer(&self, table: &str) -> Value {
        serde_json::from_slice(&self.pointer_bytes(table)).unwrap()
    }
    /// Every row of the table's current version, through its pointer.
    fn current_rows(&self, table: &str) -> Vec<RecordBatch> {
        let p = self.pointer(table);
        let mut out = Vec::new();
        for f in p["files"].as_array().unwrap() {
            let path = self.root().join(f["key"].as_str().unwrap());
            let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let batches: Vec<RecordBatch> = r.map(Result::unwrap).collect();
            assert_eq!(
                batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
                f["rows"].as_u64().unwrap(),
                "row count of {path:?} in the pointer"
            );
            out.extend(batches);
        }
        out
    }
    /// Folders under `tables/<table>/`.
    fn folders(&self, table: &str) -> BTreeSet<String> {
        std::fs::read_dir(self.root().join("tables").join(table))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
    /// Every resource line of the lake's raw store of one type, parsed.
    fn raw_resources(&self, resource_type: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut stack = vec![self.root().join("raw")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "ndjson") {
                    for l in BufReader::new(std::fs::File::open(&p).unwrap()).lines() {
                        let v: Value = serde_json::from_str(&l.unwrap()).unwrap();
                        if v["resourceType"] == resource_type {
                            out.push(v);
                        }
                    }
                }
            }
        }
        out
    }
}

/// A lake with `FILES` ingested with the canonical views.
fn ingested() -> Lake {
    let l = Lake {
        dir: tempfile::tempdir().unwrap(),
    };
    let mut args = vec!["ingest".to_string(), "--lake".into(), l.lake()];
    args.extend(["--state".into(), "state.db".into()]);
    for f in FILES {
        args.push(corpus().join(f).to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(l.run(&args).status.success());
    l
}

/// A views folder holding the canonical patient view with `edit` applied.
fn views_dir(l: &Lake, tag: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = l.dir.path().join(format!("views-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(repo().join("schemas/views/patient.json")).unwrap())
            .unwrap();
    edit(&mut v);
    std::fs::write(
        dir.join("patient.json"),
        serde_json::to_vec_pretty(&v).unwrap(),
    )
    .unwrap();
    dir
}

/// The patient view with a `city` column and only female patients.
fn female_with_city(v: &mut Value) {
    v["where"] = json!([{"path": "gender = 'female'"}]);
    v["select"][0]["column"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "city", "path": "address.first().city", "type": "string"}));
}

fn reprocess(l: &Lake, extra: &[&str]) -> (std::process::Output, Value) {
    let summary = l.dir.path().join("reprocess-summary.json");
    let lake = l.lake();
    let mut args = vec![
        "reprocess",
        "--lake",
        &lake,
        "--summary-json",
        summary.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = l.run(&args);
    let s = summary_or_null(&summary);
    (out, s)
}

fn summary_or_null(p: &Path) -> Value {
    std::fs::read(p)
        .ok()
        .map_or(Value::Null, |b| serde_json::from_slice(&b).unwrap())
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b
            .column_by_name(col)
            .unwrap_or_else(|| panic!("no column {col}"));
        let c = c.as_string::<i32>();
        for i in 0..c.len() {
            out.push(c.is_valid(i).then(|| c.value(i).to_string()));
        }
    }
    out
}

#[test]
fn ingest_writes_pointers_for_every_table_it_writes() {
    let l = ingested();
    let res = l.pointer("resources");
    assert_eq!(res["version"], "v1");
    assert_eq!(res["built_by"], "ingest");
    assert_eq!(res["rows"], 100 + 639 + 203 + 38);
    let p = l.pointer("patient");
    assert_eq!(p["view_hash"], p["version"]);
    assert_eq!(p["rows"], 100);
    assert_eq!(p["files"].as_array().unwrap().len(), 1);
    assert!(p["files"][0]["raw_key"]
        .as_str()
        .unwrap()
        .starts_with("raw/local/"));
    assert_eq!(
        l.current_rows("condition")
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        639
    );
}

#[test]
fn reprocess_rebuilds_an_edited_view_switches_the_pointer_and_collects_old_versions() {
    let l = ingested();
    let v1 = l.pointer("patient")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let untouched: BTreeMap<&str, Vec<u8>> = ["condition", "resources", "patient_name"]
        .into_iter()
        .map(|t| (t, l.pointer_bytes(t)))
        .collect();

    // v2: a new column and a where clause.
    let d2 = views_dir(&l, "v2", female_with_city);
    let (out, s) = reprocess(&l, &["--views", d2.to_str().unwrap(), "--view", "patient"]);
    assert!(out.status.success());
    assert_eq!(s["status"], "ok");
    assert_eq!(s["tables"]["patient"]["action"], "rebuilt");
    assert_eq!(s["tables"]["patient"]["previous_version"], v1.as_str());
    assert!(s["objects"].as_u64().unwrap() >= 4);
    assert!(String::from_utf8_lossy(&out.stdout).contains("patient"));

    // Rows: exactly the female patients of the raw NDJSON, with their first address' city.
    let raw = l.raw_resources("Patient");
    assert_eq!(raw.len(), 100);
    let expected: BTreeMap<String, Option<String>> = raw
        .iter()
        .filter(|p| p["gender"] == "female")
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["address"][0]["city"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(expected.len(), 40);
    let p2 = l.pointer("patient");
    let v2 = p2["version"].as_str().unwrap().to_string();
    assert_ne!(v2, v1);
    assert!(v2.starts_with(p2["view_hash"].as_str().unwrap()));
    assert_eq!(p2["built_by"], "reprocess");
    assert_eq!(p2["rows"], 40);
    assert_eq!(p2["previous"][0]["version"], v1.as_str());
    let rows = l.current_rows("patient");
    let ids = strings(&rows, "id");
    let cities = strings(&rows, "city");
    let got: BTreeMap<String, Option<String>> =
        ids.into_iter().map(Option::unwrap).zip(cities).collect();
    assert_eq!(got, expected);
    assert!(strings(&rows, "_view_version")
        .iter()
        .all(|v| v.as_deref() == p2["view_hash"].as_str()));
    assert!(strings(&rows, "_raw_key")
        .iter()
        .all(|k| k.as_deref().unwrap().starts_with("raw/local/")));

    // Other tables were not touched.
    for (t, before) in &untouched {
        assert_eq!(&l.pointer_bytes(t), before, "{t} pointer changed");
    }

    // Unchanged views: nothing to do, nothing written.
    let before = l.pointer_bytes("patient");
    let (out, s) = reprocess(&l, &["--views", d2.to_str().unwrap(), "--view", "patient"]);
    assert!(out.status.success());
    assert_eq!(s["status"], "up_to_date");
    assert_eq!(l.pointer_bytes("patient"), before);
    assert_eq!(
        l.folders("patient"),
        BTreeSet::from([v1.clone(), v2.clone()])
    );

    // v3 (keep 1): v2 stays as the previous version, the ingest-built v1 goes.
    let d3 = views_dir(&l, "v3", |v| {
        female_with_city(v);
        v["where"] = json!([{"path": "gender = 'male'"}]);
    });
    let (out, s) = reprocess(
        &l,
        &[
            "--views",
            d3.to_str().unwrap(),
            "--view",
            "patient",
            "--keep-versions",
            "1",
        ],
    );
    assert!(out.status.success());
    let v3 = l.pointer("patient")["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(l.pointer("patient")["rows"], 60);
    assert_eq!(
        s["tables"]["patient"]["gc_deleted_folders"],
        json!([format!("tables/patient/{v1}")])
    );
    assert_eq!(
        l.folders("patient"),
        BTreeSet::from([v2.clone(), v3.clone()])
    );

    // --force with unchanged views rebuilds the same rows (only `_run_id` differs).
    let rows3 = l.current_rows("patient");
    let (out, _) = reprocess(
        &l,
        &[
            "--views",
            d3.to_str().unwrap(),
            "--view",
            "patient",
            "--force",
            "--keep-versions",
            "0",
        ],
    );
    assert!(out.status.success());
    let v4 = l.pointer("patient")["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v4, v3);
    let rows4 = l.current_rows("patient");
    let strip = |bs: &[RecordBatch]| -> Vec<RecordBatch> {
        bs.iter()
            .map(|b| {
                let i = b.schema().index_of("_run_id").unwrap();
                let mut b = b.clone();
                b.remove_column(i);
                b
            })
            .collect()
    };
    assert_eq!(strip(&rows3), strip(&rows4));
    // keep 0: only the current version is left.
    assert_eq!(l.folders("patient"), BTreeSet::from([v4]));
}

#[test]
fn ingest_after_reprocess_appends_to_the_rebuilt_version() {
    let l = ingested();
    let d = views_dir(&l, "v2", female_with_city);
    let (out, _) = reprocess(&l, &["--views", d.to_str().unwrap(), "--view", "patient"]);
    assert!(out.status.success());
    let v2 = l.pointer("patient")["version"]
        .as_str()
        .unwrap()
        .to_string();
    // The same patients again, from another file, with the edited view: one more part.
    let copy = l.dir.path().join("more");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(corpus().join(FILES[0]), copy.join("Patient.02.ndjson.gz")).unwrap();
    let lake = l.lake();
    let o = l.run(&[
        "ingest",
        "--lake",
        &lake,
        "--state",
        "state.db",
        "--views",
        d.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let p = l.pointer("patient");
    assert_eq!(
        p["version"],
        v2.as_str(),
        "the rebuilt version stays current"
    );
    assert_eq!(p["rows"], 80);
    assert_eq!(p["files"].as_array().unwrap().len(), 2);
    // An ingest with the old (canonical) patient view cannot extend the new version.
    let o = l.run(&[
        "ingest",
        "--lake",
        &lake,
        "--state",
        "state.db",
        "--force",
        copy.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(l.pointer("patient")["rows"], 80);
}

#[test]
fn a_failing_or_killed_reprocess_leaves_the_previous_version_current() {
    let l = ingested();
    let before = l.pointer_bytes("patient");
    let v1 = l.pointer("patient")["version"]
        .as_str()
        .unwrap()
        .to_string();

    // A view that fails on every patient (several identifiers in a single-valued column).
    let bad = views_dir(&l, "bad", |v| {
        v["select"][0]["column"].as_array_mut().unwrap().push(
            json!({"name": "identifier_value", "path": "identifier.value", "type": "string"}),
        );
    });
    let (out, s) = reprocess(&l, &["--views", bad.to_str().unwrap(), "--view", "patient"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(s["status"], "failed");
    assert_eq!(s["tables"]["patient"]["action"], "not_switched");
    assert!(s["view_errors"].as_u64().unwrap() >= 100);
    assert_eq!(l.pointer_bytes("patient"), before);
    assert_eq!(
        l.folders("patient"),
        BTreeSet::from([v1.clone()]),
        "the partial version was removed"
    );

    // Killed mid-way: rebuild every view, one object at a time, and kill after the first.
    let lake = l.lake();
    let tables: Vec<String> = std::fs::read_dir(l.root().join("tables"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let pointers: BTreeMap<String, Vec<u8>> = tables
        .iter()
        .map(|t| (t.clone(), l.pointer_bytes(t)))
        .collect();
    let mut child = Command::new(BIN)
        .args([
            "reprocess",
            "--lake",
            &lake,
            "--force",
            "--file-concurrency",
            "1",
            "--workers",
            "1",
        ])
        .current_dir(l.dir.path())
        .env("FHIRHOSE_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let progressed = lines.any(|l| l.unwrap().contains("raw object reprocessed"));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(progressed);
    assert!(!status.success(), "killed before it finished");
    for (t, b) in &pointers {
        assert_eq!(&l.pointer_bytes(t), b, "{t}: the old version stays current");
    }
    let partial = |l: &Lake| -> Vec<String> {
        tables
            .iter()
            .flat_map(|t| l.folders(t).into_iter().map(move |f| format!("{t}/{f}")))
            .filter(|f| f.contains('-'))
            .collect()
    };
    let orphans = partial(&l);
    assert!(
        !orphans.is_empty(),
        "the killed run left a partial version behind"
    );

    // The next successful reprocess removes the interrupted run's folders.
    let (out, s) = reprocess(&l, &["--force"]);
    assert!(out.status.success());
    assert_eq!(s["status"], "ok");
    let left = partial(&l);
    for o in &orphans {
        assert!(!left.contains(o), "{o} was not collected: {left:?}");
    }
    for t in tables
        .iter()
        .filter(|t| *t != "resources" && *t != "deletions")
    {
        let p = l.pointer(t);
        assert_eq!(p["built_by"], "reprocess", "{t}");
        assert!(l.folders(t).contains(p["version"].as_str().unwrap()));
        assert_eq!(p["previous"].as_array().unwrap().len(), 1, "{t}");
    }
}

#[test]
fn source_restricted_reprocess_carries_other_sources_only_with_the_same_definition() {
    let l = Lake {
        dir: tempfile::tempdir().unwrap(),
    };
    let lake = l.lake();
    let b = l.dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(corpus().join(FILES[0]), b.join("Patient.02.ndjson.gz")).unwrap();
    let a = corpus().join(FILES[0]);
    for (src, input) in [("a", a.to_str().unwrap()), ("b", b.to_str().unwrap())] {
        let o = l.run(&[
            "ingest", "--lake", &lake, "--state", "state.db", "--source", src, input,
        ]);
        assert!(o.status.success());
    }
    assert_eq!(l.pointer("patient")["rows"], 200);
    let d = views_dir(&l, "v2", female_with_city);
    let views = d.to_str().unwrap();
    // A changed view cannot keep source b's rows, which have the old columns.
    let (out, _) = reprocess(
        &l,
        &["--views", views, "--view", "patient", "--source", "a"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(l.pointer("patient")["rows"], 200);
    let (out, _) = reprocess(&l, &["--views", views, "--view", "patient"]);
    assert!(out.status.success());
    assert_eq!(l.pointer("patient")["rows"], 80);
    // Same definition: source a is rebuilt, source b's file is carried over.
    let (out, _) = reprocess(
        &l,
        &[
            "--views",
            views,
            "--view",
            "patient",
            "--source",
            "a",
            "--force",
            "--keep-versions",
            "0",
        ],
    );
    assert!(out.status.success());
    let p = l.pointer("patient");
    assert_eq!(p["rows"], 80);
    let raws: BTreeSet<&str> = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["raw_key"].as_str().unwrap().split('/').nth(1).unwrap())
        .collect();
    assert_eq!(raws, BTreeSet::from(["a", "b"]));
    // The carried file's folder survives even with --keep-versions 0.
    assert_eq!(
        l.current_rows("patient")
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        80
    );
}
