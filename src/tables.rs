//! Table pointers: which version of each table is current, and garbage collection of old ones.
//!
//! Every table has one small pointer object, `tables/<table>/_current.json` ([`TablePointer`]).
//! Readers take the table's Parquet files from its `files` list and nothing else; a glob over
//! `tables/<table>/**` may see versions that are being built or are kept for rollback.
//!
//! Invariants:
//! - A pointer is written (one whole-object PUT, which replaces the previous object
//!   atomically on S3 and on the local file system: object_store writes a temporary file and
//!   renames it) only after every Parquet file it lists was closed, i.e. completely uploaded
//!   and visible. A crash before the PUT leaves the previous pointer, and so the previous
//!   version, current.
//! - Garbage collection runs only after the switch and never deletes a folder that holds a
//!   file of the current version or of one of the `keep` previous versions.
//! - `reprocess` builds a version in a folder of its own, `<view hash>-<run id>`; ingest
//!   writes into `<view hash>` (`v1` for `resources` and `deletions`). A version's files may
//!   span both: ingest appends the parts of newly landed files to a reprocessed version of the
//!   same view hash.
//!
//! Pointer updates are read-modify-write without a lock: run one `reprocess` at a time per
//! lake. Concurrent ingests into one lake converge, because an ingest-built version lists its
//! whole folder whenever it is updated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Context;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::lake::Lake;
use crate::pipeline::{key_segment, RunSummary, ViewSet};

/// Name of the pointer object inside a table's folder.
pub const POINTER_FILE: &str = "_current.json";

/// Layout version of [`TablePointer`]; readers refuse a newer one.
pub const POINTER_FORMAT: u32 = 1;

/// Previous versions remembered in a pointer. GC needs only `keep` of them; a few more make
/// the history readable.
const MAX_HISTORY: usize = 16;

/// One table's current version (`tables/<table>/_current.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePointer {
    /// [`POINTER_FORMAT`].
    pub format: u32,
    /// Table name (the view's name, `resources` or `deletions`).
    pub table: String,
    /// The version: its folder name under `tables/<table>/`.
    pub version: String,
    /// Hash of the ViewDefinition that produced the rows (`_view_version`); `v1` for the
    /// built-in tables.
    pub view_hash: String,
    /// When this version was first made current (RFC 3339, UTC).
    pub created_at: String,
    /// When the pointer was last written.
    pub updated_at: String,
    /// The run that built this version.
    pub run_id: String,
    /// The run that last wrote the pointer (an ingest appending files, or `run_id`).
    pub updated_by_run: String,
    /// `ingest` or `reprocess`: what built the version.
    pub built_by: String,
    /// Rows over all files.
    pub rows: u64,
    /// Every Parquet file of the version, keys relative to the lake root.
    pub files: Vec<TableFile>,
    /// Versions this one replaced, newest first.
    #[serde(default)]
    pub previous: Vec<PreviousVersion>,
}

/// One Parquet file of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableFile {
    /// Object key, relative to the lake root.
    pub key: String,
    /// Rows in the file.
    pub rows: u64,
    /// Object size in bytes.
    pub bytes: u64,
    /// The raw object its rows come from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_key: Option<String>,
}

/// A version that was current before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousVersion {
    /// Its version (folder name).
    pub version: String,
    /// Its view hash.
    pub view_hash: String,
    /// When it became current.
    pub created_at: String,
    /// When it stopped being current.
    pub replaced_at: String,
    /// Folders (`tables/<table>/<dir>`) holding its files.
    pub folders: Vec<String>,
    /// Its rows.
    pub rows: u64,
}

impl TablePointer {
    fn recount(&mut self) {
        self.rows = self.files.iter().map(|f| f.rows).sum();
    }

    /// Folders (`tables/<table>/<dir>`) that hold this version's files.
    pub fn folders(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .filter_map(|f| folder_of(&f.key))
            .collect()
    }

    fn as_previous(&self, replaced_at: &str) -> PreviousVersion {
        let mut folders: BTreeSet<String> = self.folders();
        // An empty version still owns its own folder name.
        folders.insert(format!(
            "tables/{}/{}",
            key_segment(&self.table),
            self.version
        ));
        PreviousVersion {
            version: self.version.clone(),
            view_hash: self.view_hash.clone(),
            created_at: self.created_at.clone(),
            replaced_at: replaced_at.to_string(),
            folders: folders.into_iter().collect(),
            rows: self.rows,
        }
    }
}

/// `tables/<t>/<dir>` of a key `tables/<t>/<dir>/<file>`.
fn folder_of(key: &str) -> Option<String> {
    let mut parts = key.splitn(4, '/');
    let (a, t, d) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    Some(format!("{a}/{t}/{d}"))
}

/// Now, RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Key of a table's pointer.
pub fn pointer_key(table: &str) -> ObjectPath {
    ObjectPath::from(format!("tables/{}/{POINTER_FILE}", key_segment(table)))
}

/// Reads a table's pointer; `None` when the table has none yet.
pub async fn read_pointer(
    store: &Arc<dyn ObjectStore>,
    table: &str,
) -> anyhow::Result<Option<TablePointer>> {
    let key = pointer_key(table);
    let bytes = match store.get(&key).await {
        Ok(r) => r.bytes().await,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => Err(e),
    }
    .with_context(|| format!("table pointer {key} cannot be read"))?;
    let p: TablePointer = serde_json::from_slice(&bytes)
        .with_context(|| format!("table pointer {key} is not a valid pointer"))?;
    if p.format > POINTER_FORMAT {
        anyhow::bail!(
            "table pointer {key} has format {} but this fhirhose reads up to {POINTER_FORMAT}",
            p.format
        );
    }
    Ok(Some(p))
}

async fn write_pointer(store: &Arc<dyn ObjectStore>, p: &TablePointer) -> anyhow::Result<()> {
    let key = pointer_key(&p.table);
    let body = serde_json::to_vec_pretty(p).expect("pointer serializes");
    store
        .put(&key, PutPayload::from(body))
        .await
        .with_context(|| format!("table pointer {key} cannot be written"))?;
    Ok(())
}

/// Rows in a Parquet object, from its footer.
async fn footer_rows(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    size: u64,
) -> anyhow::Result<u64> {
    let reader = ParquetObjectReader::new(Arc::clone(store), key.clone()).with_file_size(size);
    let b = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .with_context(|| format!("parquet footer of {key} cannot be read"))?;
    Ok(u64::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0))
}

/// What a switch did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchOutcome {
    /// The version that was current before, if any.
    pub previous_version: Option<String>,
    /// Folders deleted by garbage collection.
    pub deleted_folders: Vec<String>,
    /// Objects deleted by garbage collection.
    pub deleted_objects: u64,
}

/// Makes `new` the current version of its table, then deletes versions beyond the newest
/// `keep` previous ones (and folders of interrupted `reprocess` runs older than `run_id`).
///
/// `new.previous` is replaced by the history of the pointer it supersedes.
pub async fn switch(
    store: &Arc<dyn ObjectStore>,
    mut new: TablePointer,
    keep: usize,
) -> anyhow::Result<SwitchOutcome> {
    let old = read_pointer(store, &new.table).await?;
    let now = now_rfc3339();
    let mut history = Vec::new();
    if let Some(old) = &old {
        if old.version != new.version {
            history.push(old.as_previous(&now));
        }
        history.extend(
            old.previous
                .iter()
                .filter(|p| p.version != new.version)
                .cloned(),
        );
    }
    let evicted: Vec<PreviousVersion> = history.split_off(keep.min(history.len()));
    new.previous = history;
    new.previous.truncate(MAX_HISTORY);
    new.recount();
    // The switch itself: one PUT. Everything below is clean-up.
    write_pointer(store, &new).await?;
    let mut out = SwitchOutcome {
        previous_version: old.map(|o| o.version),
        ..Default::default()
    };
    let mut protected: BTreeSet<String> = new.folders();
    protected.insert(format!(
        "tables/{}/{}",
        key_segment(&new.table),
        new.version
    ));
    for p in &new.previous {
        protected.extend(p.folders.iter().cloned());
    }
    let mut doomed: BTreeSet<String> = evicted
        .iter()
        .flat_map(|p| p.folders.iter().cloned())
        .collect();
    // Folders of reprocess runs that never switched (crashed or failed) and began before
    // this one.
    let table_dir = ObjectPath::from(format!("tables/{}", key_segment(&new.table)));
    let listing = store
        .list_with_delimiter(Some(&table_dir))
        .await
        .with_context(|| format!("table folder {table_dir} cannot be listed"))?;
    for dir in listing.common_prefixes {
        let name = dir.filename().unwrap_or_default();
        if let Some(run) = reprocess_run_of(name) {
            if run != new.run_id.as_str() {
                doomed.insert(dir.to_string());
            }
        }
    }
    for folder in doomed.difference(&protected) {
        let n = delete_prefix(store, folder).await?;
        if n > 0 {
            info!(folder = %folder, objects = n, "deleted an old table version");
            out.deleted_folders.push(folder.clone());
            out.deleted_objects += n;
        }
    }
    Ok(out)
}

/// The run id in a reprocess folder name `<16 hex>-<run id>`.
fn reprocess_run_of(dir: &str) -> Option<&str> {
    let (hash, run) = dir.split_once('-')?;
    (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !run.is_empty())
        .then_some(run)
}

/// Deletes every object under `prefix`; returns how many.
pub(crate) async fn delete_prefix(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> anyhow::Result<u64> {
    let p = ObjectPath::from(prefix);
    let keys: Vec<ObjectPath> = store
        .list(Some(&p))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .with_context(|| format!("{prefix} cannot be listed"))?;
    let n = keys.len() as u64;
    for k in keys {
        match store.delete(&k).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("{k} cannot be deleted")),
        }
    }
    Ok(n)
}

/// A part written by one ingested file.
#[derive(Debug, Clone)]
struct NewPart {
    key: String,
    rows: u64,
    raw_key: String,
}

/// Updates the pointers of every table an ingest run wrote to (called once per run, after
/// the run's files are done). See the module docs for the rules; a table whose view changed
/// since its current version keeps that version and is named in a warning.
pub async fn publish_ingest(
    lake: &Lake,
    views: &ViewSet,
    summary: &RunSummary,
) -> anyhow::Result<()> {
    let store = &lake.store;
    // Table segment → view hash (folder) for the views of this run.
    let mut by_table: BTreeMap<String, Vec<NewPart>> = BTreeMap::new();
    for f in summary.file_reports.iter().filter(|f| f.status == "done") {
        let rows_by_seg: HashMap<String, u64> = f
            .parquet_rows_by_table
            .iter()
            .map(|(t, n)| (key_segment(t), *n))
            .collect();
        for key in &f.parquet_keys {
            let Some(seg) = key.split('/').nth(1) else {
                continue;
            };
            by_table.entry(seg.to_string()).or_default().push(NewPart {
                key: key.clone(),
                rows: rows_by_seg.get(seg).copied().unwrap_or(0),
                raw_key: f.raw_key.clone(),
            });
        }
    }
    let names: HashMap<String, String> = views
        .names()
        .into_iter()
        .map(|(n, _)| (key_segment(&n), n))
        .chain(["resources", "deletions"].map(|t| (t.to_string(), t.to_string())))
        .collect();
    for (seg, parts) in by_table {
        let table = names.get(&seg).cloned().unwrap_or_else(|| seg.clone());
        if let Err(e) = publish_table(store, &table, &summary.run_id, &parts).await {
            warn!(table = %table, error = format!("{e:#}"), "table pointer was not updated");
        }
    }
    Ok(())
}

async fn publish_table(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    run_id: &str,
    parts: &[NewPart],
) -> anyhow::Result<()> {
    let Some(folder) = parts.first().and_then(|p| folder_of(&p.key)) else {
        return Ok(());
    };
    let version = folder.rsplit('/').next().unwrap_or_default().to_string();
    let now = now_rfc3339();
    let old = read_pointer(store, table).await?;
    let mut ptr = match old {
        Some(p) if p.version == version => p,
        Some(p) if p.view_hash == version => {
            // A reprocessed version of the same view: add this run's parts, replacing any
            // earlier part of the same raw object.
            let mut p = p;
            let raws: BTreeSet<&str> = parts.iter().map(|n| n.raw_key.as_str()).collect();
            let keys: BTreeSet<&str> = parts.iter().map(|n| n.key.as_str()).collect();
            p.files.retain(|f| {
                !keys.contains(f.key.as_str())
                    && !f.raw_key.as_deref().is_some_and(|r| raws.contains(r))
            });
            for n in parts {
                let path = ObjectPath::from(n.key.as_str());
                let meta = store
                    .head(&path)
                    .await
                    .with_context(|| format!("{} cannot be read", n.key))?;
                p.files.push(TableFile {
                    key: n.key.clone(),
                    rows: n.rows,
                    bytes: meta.size,
                    raw_key: Some(n.raw_key.clone()),
                });
            }
            p.files.sort_by(|a, b| a.key.cmp(&b.key));
            p.updated_at = now;
            p.updated_by_run = run_id.to_string();
            p.recount();
            return write_pointer(store, &p).await;
        }
        Some(p) => {
            warn!(
                table = %table,
                current = %p.version,
                written = %version,
                "the view changed since the table's current version, which stays current; run `fhirhose reprocess --view {table}` to rebuild it from raw"
            );
            return Ok(());
        }
        None => TablePointer {
            format: POINTER_FORMAT,
            table: table.to_string(),
            version: version.clone(),
            view_hash: version.clone(),
            created_at: now.clone(),
            updated_at: now.clone(),
            run_id: run_id.to_string(),
            updated_by_run: run_id.to_string(),
            built_by: "ingest".into(),
            rows: 0,
            files: Vec::new(),
            previous: Vec::new(),
        },
    };
    // An ingest-built version is its whole folder: list it, so that concurrent ingests and
    // files landed before pointers existed are all included.
    let known: HashMap<String, TableFile> =
        ptr.files.drain(..).map(|f| (f.key.clone(), f)).collect();
    let fresh: HashMap<&str, &NewPart> = parts.iter().map(|n| (n.key.as_str(), n)).collect();
    let listed: Vec<_> = store
        .list(Some(&ObjectPath::from(folder.as_str())))
        .try_collect()
        .await
        .with_context(|| format!("{folder} cannot be listed"))?;
    for m in listed {
        let key = m.location.to_string();
        if !key.ends_with(".parquet") {
            continue;
        }
        let file = if let Some(n) = fresh.get(key.as_str()) {
            TableFile {
                key: key.clone(),
                rows: n.rows,
                bytes: m.size,
                raw_key: Some(n.raw_key.clone()),
            }
        } else if let Some(f) = known.get(&key).filter(|f| f.bytes == m.size) {
            f.clone()
        } else {
            TableFile {
                key: key.clone(),
                rows: footer_rows(store, &m.location, m.size).await?,
                bytes: m.size,
                raw_key: None,
            }
        };
        ptr.files.push(file);
    }
    ptr.files.sort_by(|a, b| a.key.cmp(&b.key));
    ptr.updated_at = now;
    ptr.updated_by_run = run_id.to_string();
    ptr.recount();
    write_pointer(store, &ptr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn ptr(table: &str, version: &str, run: &str, files: &[&str]) -> TablePointer {
        TablePointer {
            format: POINTER_FORMAT,
            table: table.into(),
            version: version.into(),
            view_hash: version.split('-').next().unwrap().into(),
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            run_id: run.into(),
            updated_by_run: run.into(),
            built_by: "reprocess".into(),
            rows: 0,
            files: files
                .iter()
                .map(|k| TableFile {
                    key: (*k).into(),
                    rows: 2,
                    bytes: 1,
                    raw_key: None,
                })
                .collect(),
            previous: Vec::new(),
        }
    }

    async fn put(store: &Arc<dyn ObjectStore>, key: &str) {
        store
            .put(&ObjectPath::from(key), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }

    #[test]
    fn folders_and_run_ids() {
        assert_eq!(
            folder_of("tables/p/abc/x.parquet").as_deref(),
            Some("tables/p/abc")
        );
        assert_eq!(folder_of("tables/p/_current.json"), None);
        assert_eq!(
            reprocess_run_of("0123456789abcdef-20250101T000000Z-1a2b3c4d"),
            Some("20250101T000000Z-1a2b3c4d")
        );
        assert_eq!(reprocess_run_of("0123456789abcdef"), None);
        assert_eq!(reprocess_run_of("v1"), None);
    }

    #[tokio::test]
    async fn switch_keeps_n_previous_versions_and_never_the_current_one() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let h = "0123456789abcdef";
        let v = |run: &str| format!("{h}-{run}");
        put(&store, &format!("tables/p/{h}/a.parquet")).await;
        // r0: an interrupted run that never switched.
        put(&store, &format!("tables/p/{}/a.parquet", v("r0"))).await;
        let mut keep1 = Vec::new();
        for run in ["r1", "r2", "r3", "r4"] {
            let key = format!("tables/p/{}/a.parquet", v(run));
            put(&store, &key).await;
            let out = switch(&store, ptr("p", &v(run), run, &[&key]), 1)
                .await
                .unwrap();
            keep1.push(out);
            let cur = read_pointer(&store, "p").await.unwrap().unwrap();
            assert_eq!(cur.version, v(run));
            assert_eq!(cur.rows, 2);
            assert!(cur.previous.len() <= 1);
        }
        assert_eq!(
            keep1[0].deleted_folders,
            vec![format!("tables/p/{}", v("r0"))]
        );
        assert_eq!(
            keep1[2].deleted_folders,
            vec![format!("tables/p/{}", v("r1"))]
        );
        let left: BTreeSet<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert!(left.contains(&format!("tables/p/{}/a.parquet", v("r4"))));
        assert!(left.contains(&format!("tables/p/{}/a.parquet", v("r3"))));
        assert!(!left.contains(&format!("tables/p/{}/a.parquet", v("r2"))));
        // Ingest's own folder was never part of a version here, and is left alone.
        assert!(left.contains(&format!("tables/p/{h}/a.parquet")));
        // keep 0: the previous version goes at once, the current one stays.
        put(&store, &format!("tables/p/{}/a.parquet", v("r5"))).await;
        let key = format!("tables/p/{}/a.parquet", v("r5"));
        let out = switch(&store, ptr("p", &v("r5"), "r5", &[&key]), 0)
            .await
            .unwrap();
        assert_eq!(out.previous_version.as_deref(), Some(v("r4").as_str()));
        let left: BTreeSet<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert!(left.contains(&key));
        assert!(!left
            .iter()
            .any(|k| k.contains("-r4/") || k.contains("-r3/")));
    }
}
