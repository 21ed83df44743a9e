//! The set of ViewDefinitions a run evaluates, and per-block builders for their tables.
//!
//! Each view becomes one table, `tables/<view name>/<view version>/…`, whose rows carry the
//! lineage columns `_raw_key`, `_line`, `_run_id`, `_ingested_at` and `_view_version` after
//! the view's own columns. The version is the hash of the view's JSON, so editing a view
//! writes a new folder instead of mixing two schemas in one.
//!
//! A view that fails on one resource (for example a malformed instant in an `instant`
//! column) does not stop the resource from landing elsewhere: the failure is counted per view
//! and the resource's rows are left out of that table only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fhirhose_normalize::{CompiledView, ViewBatchBuilder};
use simd_json::BorrowedValue;

include!(concat!(env!("OUT_DIR"), "/canonical_views.rs"));

/// Batches produced by one block: (view index, batch).
pub(crate) type ViewOutputs = Vec<(usize, RecordBatch)>;

#[derive(Debug)]
struct Entry {
    view: Arc<CompiledView>,
    schema: SchemaRef,
}

/// Compiled views, indexed by resource type.
#[derive(Debug, Default)]
pub struct ViewSet {
    entries: Vec<Entry>,
    by_type: HashMap<String, Vec<usize>>,
}

fn lineage_fields() -> Vec<Field> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    vec![
        Field::new("_raw_key", DataType::Utf8, false),
        Field::new("_line", DataType::Int64, false),
        Field::new("_run_id", DataType::Utf8, false),
        Field::new("_ingested_at", ts, false),
        Field::new("_view_version", DataType::Utf8, false),
    ]
}

impl ViewSet {
    /// No views.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The canonical views shipped in `schemas/views/`.
    pub fn canonical() -> anyhow::Result<Self> {
        let mut set = Self::default();
        for (file, bytes) in CANONICAL_VIEWS {
            set.add(bytes)
                .with_context(|| format!("canonical view {file}"))?;
        }
        Ok(set)
    }

    /// Adds every `*.json` ViewDefinition in `dir`; a view with the name of one already in the
    /// set replaces it.
    pub fn add_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("views folder {} cannot be read", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!(
                "views folder {} holds no .json ViewDefinitions",
                dir.display()
            );
        }
        for p in paths {
            let bytes = std::fs::read(&p)
                .with_context(|| format!("view {} cannot be read", p.display()))?;
            self.add(&bytes)
                .with_context(|| format!("view {} is invalid", p.display()))?;
        }
        Ok(())
    }

    /// Compiles and adds one view.
    pub fn add(&mut self, json: &[u8]) -> anyhow::Result<()> {
        let view = Arc::new(CompiledView::from_json_slice(json)?);
        let mut fields: Vec<Field> = view.fields().iter().map(|f| f.as_ref().clone()).collect();
        for lf in lineage_fields() {
            if fields.iter().any(|f| f.name() == lf.name()) {
                bail!(
                    "view {} has a column named {}, which is reserved for lineage",
                    view.name(),
                    lf.name()
                );
            }
            fields.push(lf);
        }
        let schema = Arc::new(Schema::new(fields));
        if let Some(pos) = self
            .entries
            .iter()
            .position(|e| e.view.name() == view.name())
        {
            self.entries[pos] = Entry { view, schema };
        } else {
            self.entries.push(Entry { view, schema });
        }
        self.by_type.clear();
        for (i, e) in self.entries.iter().enumerate() {
            self.by_type
                .entry(e.view.resource().to_string())
                .or_default()
                .push(i);
        }
        Ok(())
    }

    /// Keeps only the named views (for `reprocess --view`).
    pub fn retain(&mut self, names: &[String]) -> anyhow::Result<()> {
        for n in names {
            if !self.entries.iter().any(|e| e.view.name() == n) {
                bail!("no view named {n}");
            }
        }
        let entries = std::mem::take(&mut self.entries);
        for e in entries {
            if names.iter().any(|n| n == e.view.name()) {
                self.entries.push(e);
            }
        }
        self.by_type.clear();
        for (i, e) in self.entries.iter().enumerate() {
            self.by_type
                .entry(e.view.resource().to_string())
                .or_default()
                .push(i);
        }
        Ok(())
    }

    /// Number of views.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no views.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (name, version) of every view.
    pub fn names(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (e.view.name().to_string(), e.view.version().to_string()))
            .collect()
    }

    /// Table name, version and schema (view columns plus lineage) of view `idx`.
    pub(crate) fn table(&self, idx: usize) -> (&str, &str, SchemaRef) {
        let e = &self.entries[idx];
        (e.view.name(), e.view.version(), Arc::clone(&e.schema))
    }

    /// Builders for one block.
    pub(crate) fn builders(&self) -> ViewBuilders<'_> {
        ViewBuilders {
            set: self,
            open: (0..self.entries.len()).map(|_| None).collect(),
            errors: 0,
        }
    }
}

struct Lineage {
    raw_key: StringBuilder,
    line: Int64Builder,
    rows: usize,
}

/// Per-block builders.
pub(crate) struct ViewBuilders<'a> {
    set: &'a ViewSet,
    open: Vec<Option<(ViewBatchBuilder<'a>, Lineage)>>,
    pub(crate) errors: u64,
}

impl ViewBuilders<'_> {
    /// Evaluates every view of `resource_type` on `value`.
    pub(crate) fn append(
        &mut self,
        resource_type: &str,
        value: &BorrowedValue<'_>,
        raw_key: &str,
        line: u64,
    ) {
        let Some(idxs) = self.set.by_type.get(resource_type) else {
            return;
        };
        for &i in idxs {
            let slot = self.open[i].get_or_insert_with(|| {
                (
                    self.set.entries[i].view.builder(),
                    Lineage {
                        raw_key: StringBuilder::new(),
                        line: Int64Builder::new(),
                        rows: 0,
                    },
                )
            });
            match slot.0.append(value) {
                Ok(n) => {
                    for _ in 0..n {
                        slot.1.raw_key.append_value(raw_key);
                        slot.1.line.append_value(line as i64);
                    }
                    slot.1.rows += n;
                }
                Err(_) => self.errors += 1,
            }
        }
    }

    /// The batches, with lineage columns.
    pub(crate) fn finish(self, run_id: &str, ingested_at_us: i64) -> ViewOutputs {
        let mut out = Vec::new();
        for (i, slot) in self.open.into_iter().enumerate() {
            let Some((mut b, mut lin)) = slot else {
                continue;
            };
            if lin.rows == 0 {
                continue;
            }
            let e = &self.set.entries[i];
            let mut cols: Vec<ArrayRef> = b.finish();
            let n = lin.rows;
            cols.push(Arc::new(lin.raw_key.finish()));
            cols.push(Arc::new(lin.line.finish()));
            let mut run = StringBuilder::with_capacity(n, n * run_id.len());
            let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            let mut ver = StringBuilder::with_capacity(n, n * 16);
            for _ in 0..n {
                run.append_value(run_id);
                at.append_value(ingested_at_us);
                ver.append_value(e.view.version());
            }
            cols.push(Arc::new(run.finish()));
            cols.push(Arc::new(at.finish()));
            cols.push(Arc::new(ver.finish()));
            match RecordBatch::try_new(Arc::clone(&e.schema), cols) {
                Ok(b) => out.push((i, b)),
                Err(err) => {
                    tracing::error!(view = e.view.name(), error = %err, "view batch does not match its schema")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_views_compile_and_cover_the_main_types() {
        let set = ViewSet::canonical().unwrap();
        assert!(set.len() >= 20);
        for t in ["Patient", "Observation", "Encounter", "Condition"] {
            assert!(set.by_type.contains_key(t), "{t}");
        }
    }

    #[test]
    fn evaluates_with_lineage() {
        let set = ViewSet::canonical().unwrap();
        let mut b = set.builders();
        let mut line = br#"{"resourceType":"Patient","id":"p1","name":[{"family":"Ng","given":["A"]},{"family":"Ho"}],"birthDate":"1970"}"#.to_vec();
        let v = simd_json::to_borrowed_value(&mut line).unwrap();
        b.append("Patient", &v, "raw/k", 7);
        let out = b.finish("run", 0);
        let (name_idx, batch) = out
            .iter()
            .find(|(i, _)| set.table(*i).0 == "patient_name")
            .unwrap();
        assert_eq!(batch.num_rows(), 2);
        let schema = set.table(*name_idx).2;
        assert_eq!(schema.field(schema.fields().len() - 5).name(), "_raw_key");
        assert_eq!(batch.num_columns(), schema.fields().len());
    }
}
