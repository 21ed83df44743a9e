//! Runner for the SQL-on-FHIR v2 conformance suite (test files in the format of
//! `tests.schema.json`).
//!
//! Each test's view is compiled with [`CompiledView::from_json_slice`], every resource of
//! the file is parsed with simd-json and appended through the same [`ViewBatchBuilder`]
//! the pipeline uses, and the resulting **Arrow arrays** are rendered back to JSON rows
//! for comparison, so the suite exercises the whole path.
//!
//! Comparison rules (those of the reference runner):
//! - rows are compared as a multiset (order-insensitive); values compare structurally,
//!   numbers by value (`5` equals `5.0`), and a column missing from an expected row is null;
//! - `expectColumns` compares the output column names in order;
//! - `expectError` passes when the view is rejected at compile time or any resource fails
//!   to evaluate.
//!
//! [`ViewBatchBuilder`]: crate::ViewBatchBuilder

use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef};
use serde_json::{json, Map, Value as Json};

use crate::view::compile::{ColKind, ColumnMeta};
use crate::CompiledView;

/// The suite files could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A test file is not JSON or not in the suite's format.
    #[error("{path} is not a valid test file: {reason}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Outcome of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// The test's `title`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Outcomes of one test file, in suite order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// File name, e.g. `basic.json`.
    pub file: String,
    /// One entry per test, in file order.
    pub tests: Vec<TestOutcome>,
}

/// Outcomes of a directory of test files, sorted by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One entry per file.
    pub files: Vec<FileReport>,
}

impl Report {
    /// Number of tests run.
    pub fn total(&self) -> usize {
        self.files.iter().map(|f| f.tests.len()).sum()
    }

    /// Number of tests passed.
    pub fn passed(&self) -> usize {
        self.files
            .iter()
            .flat_map(|f| &f.tests)
            .filter(|t| t.passed)
            .count()
    }

    /// `(file, test)` for every failed test.
    pub fn failures(&self) -> Vec<(&str, &TestOutcome)> {
        self.files
            .iter()
            .flat_map(|f| {
                f.tests
                    .iter()
                    .filter(|t| !t.passed)
                    .map(move |t| (f.file.as_str(), t))
            })
            .collect()
    }

    /// The report in the official format (`test-report.schema.json`):
    /// `{"<file>.json": {"tests": [{"name": ..., "result": {"passed": bool, "error"?: ...}}]}}`.
    pub fn to_official_json(&self) -> Json {
        let mut out = Map::new();
        for f in &self.files {
            let tests: Vec<Json> = f
                .tests
                .iter()
                .map(|t| {
                    let mut result = Map::new();
                    result.insert("passed".into(), Json::Bool(t.passed));
                    if let Some(r) = &t.reason {
                        result.insert("error".into(), Json::String(r.clone()));
                    }
                    json!({ "name": t.name, "result": result })
                })
                .collect();
            out.insert(f.file.clone(), json!({ "tests": tests }));
        }
        Json::Object(out)
    }
}

/// Runs every `*.json` file of `dir`, sorted by file name.
pub fn run_dir(dir: &Path) -> Result<Report, ConformanceError> {
    run_dir_with(dir, false)
}

/// [`run_dir`] with every resource passed through [`crate::prepare_line`] before parsing,
/// as the pipeline does, so decimals reach the engine as marked exact-text strings.
pub fn run_dir_prepared(dir: &Path) -> Result<Report, ConformanceError> {
    run_dir_with(dir, true)
}

fn run_dir_with(dir: &Path, prepare: bool) -> Result<Report, ConformanceError> {
    let io = |source| ConformanceError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == "json") {
            paths.push(p);
        }
    }
    paths.sort();
    let mut report = Report::default();
    for p in paths {
        report.files.push(run_file_with(&p, prepare)?);
    }
    Ok(report)
}

/// Runs one test file.
pub fn run_file(path: &Path) -> Result<FileReport, ConformanceError> {
    run_file_with(path, false)
}

/// [`run_file`] through [`crate::prepare_line`] (see [`run_dir_prepared`]).
pub fn run_file_prepared(path: &Path) -> Result<FileReport, ConformanceError> {
    run_file_with(path, true)
}

fn run_file_with(path: &Path, prepare: bool) -> Result<FileReport, ConformanceError> {
    let bytes = fs::read(path).map_err(|source| ConformanceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let format = |reason: String| ConformanceError::Format {
        path: path.to_owned(),
        reason,
    };
    let doc: Json = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    let resources = doc
        .get("resources")
        .and_then(Json::as_array)
        .ok_or_else(|| format("missing `resources` array".into()))?;
    let tests = doc
        .get("tests")
        .and_then(Json::as_array)
        .ok_or_else(|| format("missing `tests` array".into()))?;
    let resource_bytes: Vec<Vec<u8>> = resources
        .iter()
        .map(|r| {
            let json = serde_json::to_vec(r).map_err(|e| format(e.to_string()))?;
            if !prepare {
                return Ok(json);
            }
            let mut prepared = Vec::with_capacity(json.len());
            crate::prepare_line(&json, &mut prepared);
            Ok(prepared)
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(tests.len());
    for t in tests {
        let name = t
            .get("title")
            .and_then(Json::as_str)
            .unwrap_or("(untitled)")
            .to_owned();
        let result = run_test(t, &resource_bytes);
        out.push(TestOutcome {
            name,
            passed: result.is_ok(),
            reason: result.err(),
        });
    }
    Ok(FileReport {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        tests: out,
    })
}

fn run_test(t: &Json, resources: &[Vec<u8>]) -> Result<(), String> {
    let expect_error = t
        .get("expectError")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let view_json = t.get("view").ok_or("test has no view")?;
    let view_bytes = serde_json::to_vec(view_json).map_err(|e| e.to_string())?;
    let view = match CompiledView::from_json_slice(&view_bytes) {
        Ok(v) => v,
        Err(e) if expect_error => {
            let _ = e;
            return Ok(());
        }
        Err(e) => return Err(format!("view rejected: {e}")),
    };
    let mut builder = view.builder();
    for r in resources {
        let mut buf = r.clone();
        let value = simd_json::to_borrowed_value(&mut buf)
            .map_err(|e| format!("resource is not JSON: {e}"))?;
        match builder.append(&value) {
            Ok(_) => {}
            Err(_) if expect_error => return Ok(()),
            Err(e) => return Err(format!("evaluation failed: {e}")),
        }
    }
    if expect_error {
        return Err("expected an error, but the view compiled and evaluated".into());
    }
    let rows = builder.len();
    let arrays = builder.finish();
    let actual = render_rows(&view.columns, &arrays, rows);

    if let Some(cols) = t.get("expectColumns").and_then(Json::as_array) {
        let want: Vec<&str> = cols.iter().filter_map(Json::as_str).collect();
        let got: Vec<&str> = view.fields().iter().map(|f| f.name().as_str()).collect();
        if want != got {
            return Err(format!("expected columns {want:?}, got {got:?}"));
        }
    }
    if let Some(expect) = t.get("expect") {
        let expect = expect.as_array().ok_or("`expect` is not an array")?;
        compare_rows(expect, &actual)?;
    }
    Ok(())
}

/// Renders arrays from a builder of `view` as JSON rows keyed by column name: booleans and
/// integers as JSON values, decimals as JSON numbers, instants as microseconds since the
/// epoch, lists as arrays. Used by the conformance runner and by golden tests.
pub fn json_rows(view: &CompiledView, arrays: &[ArrayRef]) -> Vec<Map<String, Json>> {
    let rows = arrays.first().map_or(0, |a| a.len());
    render_rows(&view.columns, arrays, rows)
}

/// Renders Arrow columns back to JSON rows keyed by column name.
fn render_rows(cols: &[ColumnMeta], arrays: &[ArrayRef], rows: usize) -> Vec<Map<String, Json>> {
    (0..rows)
        .map(|i| {
            cols.iter()
                .zip(arrays)
                .map(|(c, a)| {
                    (
                        c.name.clone(),
                        render_value(c.kind, a.as_ref(), i, c.collection),
                    )
                })
                .collect()
        })
        .collect()
}

fn render_value(kind: ColKind, a: &dyn Array, i: usize, collection: bool) -> Json {
    if a.is_null(i) {
        return Json::Null;
    }
    if collection {
        let list = a.as_list::<i32>();
        let items = list.value(i);
        return Json::Array(
            (0..items.len())
                .map(|j| render_value(kind, items.as_ref(), j, false))
                .collect(),
        );
    }
    match kind {
        ColKind::Bool => Json::Bool(a.as_boolean().value(i)),
        ColKind::Int => Json::from(a.as_primitive::<Int64Type>().value(i)),
        ColKind::Str => Json::String(a.as_string::<i32>().value(i).to_owned()),
        ColKind::Dec => {
            let s = a.as_string::<i32>().value(i);
            if let Ok(int) = s.parse::<i64>() {
                return Json::from(int);
            }
            s.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Json::String(s.to_owned()), Json::Number)
        }
        ColKind::Instant => Json::from(a.as_primitive::<TimestampMicrosecondType>().value(i)),
    }
}

fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => x == y,
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        _ => a == b,
    }
}

fn row_eq(expected: &Map<String, Json>, actual: &Map<String, Json>) -> bool {
    expected.keys().all(|k| actual.contains_key(k))
        && actual
            .iter()
            .all(|(k, v)| json_eq(expected.get(k).unwrap_or(&Json::Null), v))
}

fn compare_rows(expect: &[Json], actual: &[Map<String, Json>]) -> Result<(), String> {
    if expect.len() != actual.len() {
        return Err(format!(
            "expected {} rows, got {}: {}",
            expect.len(),
            actual.len(),
            Json::from(actual.iter().cloned().map(Json::Object).collect::<Vec<_>>())
        ));
    }
    let mut used = vec![false; actual.len()];
    for e in expect {
        let e = e.as_object().ok_or("expected row is not an object")?;
        let hit = actual
            .iter()
            .enumerate()
            .position(|(i, a)| !used[i] && row_eq(e, a));
        match hit {
            Some(i) => used[i] = true,
            None => {
                return Err(format!(
                    "expected row {} not found in {}",
                    Json::Object(e.clone()),
                    Json::from(actual.iter().cloned().map(Json::Object).collect::<Vec<_>>())
                ))
            }
        }
    }
    Ok(())
}
