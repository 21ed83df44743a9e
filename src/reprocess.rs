//! `fhirhose reprocess`: rebuild view tables from the raw store, without the EHR.
//!
//! ```text
//!  raw/<source>/…/*.ndjson ──get (streamed)──► Framer ──blocks──► [blocking pool: parse + views]
//!                                                                     │ (in order)
//!            tables/<view>/<hash>-<run>/<stem>-<raw key hash>.parquet ◄┘
//!                                   │ all objects done, no view errors
//!                                   ▼
//!            tables/<view>/_current.json  (switch, one PUT per table)  ──► GC of old versions
//! ```
//!
//! Invariants:
//! - Reads raw objects and writes only under `tables/<view>/`: no raw object, dead letter,
//!   manifest or Kafka event is written. The `resources` and `deletions` tables are not views
//!   and are left as they are.
//! - The same framing, parsing and view evaluation as ingest ([`crate::pipeline`]'s block
//!   worker), so a rebuilt table has the rows ingest would have written with the same views:
//!   `_raw_key` and `_line` are identical, `_view_version` is the view's hash, `_run_id` is the
//!   reprocess run and `_ingested_at` is the raw object's last-modified time (when its bytes
//!   landed), so rebuilding twice gives the same rows but for `_run_id`.
//! - Memory is bounded as in ingest: `file_concurrency` raw objects at once, each with
//!   `workers × 2` blocks in flight and a Parquet buffer budget across its open tables.
//! - A table switches only when every raw object was read and every view evaluated every
//!   resource without an error (unless `--allow-view-errors`); otherwise no table switches
//!   and the new folders are removed. A crash at any point before a table's pointer PUT
//!   leaves its previous version current; the orphaned folder is removed by a later
//!   successful reprocess of that table (see [`crate::tables`]).
//! - A view whose current version already has its hash is skipped (nothing to do) unless
//!   `--force`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use fhirhose_ingest::framing::{
    default_block_bytes, default_max_line_bytes, Frame, Framer, FramerConfig,
};
use fhirhose_ingest::source::FileKind;
use fhirhose_sinks::parquet::{ParquetConfig, TableWriter};
use futures::{SinkExt, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::cli::{new_run_id, UsageError};
use crate::lake::Lake;
use crate::pipeline::block::{process_block, process_oversize, FileCtx};
use crate::pipeline::budget::default_parquet_budget;
use crate::pipeline::{key_segment, ViewSet};
use crate::tables::{self, TableFile, TablePointer, POINTER_FORMAT};

/// Previous versions kept by default: one, so a bad view edit can be rolled back by hand.
pub const fn default_keep_versions() -> usize {
    1
}

/// `fhirhose reprocess`.
#[derive(Debug, Args)]
pub struct ReprocessArgs {
    /// The lake: a folder, file:// URL or s3://bucket/prefix.
    #[arg(long, env = "FHIRHOSE_LAKE", default_value = "./fhirhose-lake")]
    pub lake: String,
    /// Rebuild only this view (repeatable); default: every view whose definition changed.
    #[arg(long = "view", value_name = "NAME")]
    pub only: Vec<String>,
    /// A folder of ViewDefinitions (*.json) besides the canonical ones (a view with a
    /// canonical view's name replaces it).
    #[arg(long, env = "FHIRHOSE_VIEWS")]
    pub views: Option<PathBuf>,
    /// Do not consider the canonical views.
    #[arg(long)]
    pub no_canonical_views: bool,
    /// Read only this source's raw objects (repeatable); default: every source in the lake.
    #[arg(long = "source", value_name = "S")]
    pub sources: Vec<String>,
    /// Previous versions of each rebuilt table to keep; older ones are deleted.
    #[arg(long, default_value_t = default_keep_versions())]
    pub keep_versions: usize,
    /// Rebuild views even when their current version has the same definition.
    #[arg(long)]
    pub force: bool,
    /// Switch tables even if a view failed on some resources (their rows are left out).
    #[arg(long)]
    pub allow_view_errors: bool,
    /// Raw objects processed at once.
    #[arg(long, default_value_t = 2)]
    pub file_concurrency: usize,
    /// Parsing workers per object (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Longest NDJSON line (as at ingest); longer lines were dead-lettered and are skipped.
    #[arg(long, env = "FHIRHOSE_MAX_LINE_BYTES", default_value_t = default_max_line_bytes())]
    pub max_line_bytes: usize,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

/// What happened to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableOutcome {
    /// `rebuilt`, `up_to_date` (same definition, skipped) or `not_switched` (the run failed).
    pub action: String,
    /// The view's hash.
    pub view_hash: String,
    /// The current version after the run.
    pub version: Option<String>,
    /// The version current before the run.
    pub previous_version: Option<String>,
    /// Rows in the new version.
    pub rows: u64,
    /// Parquet files in the new version.
    pub files: u64,
    /// Folders deleted by garbage collection.
    pub gc_deleted_folders: Vec<String>,
}

/// The reprocess summary (`--summary-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReprocessSummary {
    /// Run id (part of the new versions' folder names).
    pub run_id: String,
    /// Lake URL.
    pub lake: String,
    /// `ok`, `up_to_date` (nothing to rebuild) or `failed`.
    pub status: String,
    /// Raw objects read.
    pub objects: u64,
    /// Raw objects not read because they feed no view (`deleted` and `error` files).
    pub objects_skipped: u64,
    /// Raw bytes read.
    pub bytes: u64,
    /// Lines framed.
    pub lines: u64,
    /// Resources evaluated.
    pub resources: u64,
    /// Resources that a rebuilt view could not evaluate (any view: the count is per
    /// resource and view, as at ingest).
    pub view_errors: u64,
    /// Lines that were dead letters at ingest too (skipped again).
    pub dead_lines: u64,
    /// Per table.
    pub tables: BTreeMap<String, TableOutcome>,
    /// Wall time in seconds.
    pub wall_time_s: f64,
    /// Raw MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Error, when failed (no PHI).
    pub error: Option<String>,
}

/// Runs `fhirhose reprocess`.
pub async fn run(a: ReprocessArgs) -> anyhow::Result<u8> {
    if a.max_line_bytes == 0 {
        return Err(UsageError("--max-line-bytes must be at least 1".into()).into());
    }
    let lake = Lake::open(&a.lake).map_err(|e| UsageError(format!("{e:#}")))?;
    let mut views = if a.no_canonical_views {
        ViewSet::empty()
    } else {
        ViewSet::canonical()?
    };
    if let Some(dir) = &a.views {
        views
            .add_dir(dir)
            .map_err(|e| UsageError(format!("{e:#}")))?;
    }
    if !a.only.is_empty() {
        views
            .retain(&a.only)
            .map_err(|e| UsageError(format!("{e:#}")))?;
    }
    if views.is_empty() {
        return Err(UsageError("no views to reprocess".into()).into());
    }
    let summary = reprocess(&lake, views, &a).await?;
    print_summary(&summary);
    if let Some(p) = &a.summary_json {
        std::fs::write(p, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write summary to {}", p.display()))?;
    }
    Ok(if summary.status == "failed" { 4 } else { 0 })
}

/// A raw object to read.
#[derive(Debug, Clone)]
struct RawObject {
    meta: ObjectMeta,
    key: String,
}

/// What one raw object produced.
#[derive(Debug, Default)]
struct ObjectOut {
    lines: u64,
    resources: u64,
    dead: u64,
    view_errors: u64,
    /// (view index, file).
    files: Vec<(usize, TableFile)>,
}

/// The reprocess itself (without printing); see the module docs.
pub async fn reprocess(
    lake: &Lake,
    mut views: ViewSet,
    a: &ReprocessArgs,
) -> anyhow::Result<ReprocessSummary> {
    let started = Instant::now();
    let store = Arc::clone(&lake.store);
    let run_id = new_run_id();
    let mut s = ReprocessSummary {
        run_id: run_id.clone(),
        lake: lake.url.clone(),
        ..Default::default()
    };

    // Which views need a rebuild.
    let mut current: HashMap<String, TablePointer> = HashMap::new();
    let mut rebuild = Vec::new();
    for (name, hash) in views.names() {
        let ptr = tables::read_pointer(&store, &name).await?;
        let up_to_date = ptr.as_ref().is_some_and(|p| p.view_hash == hash);
        if up_to_date && !a.force {
            info!(table = %name, version = %ptr.as_ref().map(|p| p.version.as_str()).unwrap_or(""), "table is up to date; skipping");
            s.tables.insert(
                name.clone(),
                TableOutcome {
                    action: "up_to_date".into(),
                    view_hash: hash.clone(),
                    version: ptr.as_ref().map(|p| p.version.clone()),
                    previous_version: ptr.as_ref().map(|p| p.version.clone()),
                    rows: ptr.as_ref().map_or(0, |p| p.rows),
                    files: ptr.as_ref().map_or(0, |p| p.files.len() as u64),
                    ..Default::default()
                },
            );
        } else {
            rebuild.push(name.clone());
        }
        if let Some(p) = ptr {
            current.insert(name, p);
        }
    }
    if rebuild.is_empty() {
        s.status = "up_to_date".into();
        s.wall_time_s = started.elapsed().as_secs_f64();
        return Ok(s);
    }
    views.retain(&rebuild)?;
    lake.check_writable().await?;

    // Which raw objects to read.
    let prefixes: Vec<String> = if a.sources.is_empty() {
        vec!["raw/".into()]
    } else {
        a.sources
            .iter()
            .map(|src| format!("raw/{}/", key_segment(src)))
            .collect()
    };
    let mut objects = Vec::new();
    for p in &prefixes {
        let listed: Vec<ObjectMeta> = store
            .list(Some(&ObjectPath::from(p.as_str())))
            .try_collect()
            .await
            .with_context(|| format!("raw objects under {p} cannot be listed"))?;
        for meta in listed {
            let key = meta.location.to_string();
            if !key.ends_with(".ndjson") || key.starts_with("raw/_staging/") {
                continue;
            }
            if raw_kind(&key) != FileKind::Resources {
                s.objects_skipped += 1;
                continue;
            }
            objects.push(RawObject { meta, key });
        }
    }
    objects.sort_by(|x, y| x.key.cmp(&y.key));

    // With --source, files of the other sources are carried over, which needs the same
    // definition (the same columns).
    let mut carried: HashMap<usize, Vec<TableFile>> = HashMap::new();
    if !a.sources.is_empty() {
        for idx in 0..views.len() {
            let (name, hash, _) = views.table(idx);
            let Some(p) = current.get(name) else { continue };
            let others: Vec<TableFile> = p
                .files
                .iter()
                .filter(|f| {
                    !f.raw_key
                        .as_deref()
                        .is_some_and(|r| prefixes.iter().any(|p| r.starts_with(p.as_str())))
                })
                .cloned()
                .collect();
            if others.is_empty() {
                continue;
            }
            if p.view_hash != hash {
                return Err(UsageError(format!(
                    "view {name} changed and its current version holds rows of sources not named by --source: reprocess all sources (omit --source)"
                ))
                .into());
            }
            carried.insert(idx, others);
        }
    }

    let total = objects.len();
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let framer = FramerConfig {
        max_line_bytes: a.max_line_bytes,
        block_bytes: default_block_bytes(),
    };
    let views = Arc::new(views);
    let folders: Vec<String> = (0..views.len())
        .map(|i| {
            let (name, hash, _) = views.table(i);
            format!(
                "tables/{}/{}-{}",
                key_segment(name),
                key_segment(hash),
                key_segment(&run_id)
            )
        })
        .collect();
    let job = ObjectJob {
        store: Arc::clone(&store),
        views: Arc::clone(&views),
        folders: folders.clone(),
        run_id: run_id.clone(),
        framer,
        workers,
        parquet: ParquetConfig::default(),
    };
    let mut results = futures::stream::iter(objects.iter().cloned().enumerate())
        .map(|(i, obj)| {
            let job = &job;
            async move { (i, job.run(&obj).await.map(|o| (obj, o))) }
        })
        .buffered(a.file_concurrency.max(1));
    let mut files: Vec<Vec<TableFile>> = vec![Vec::new(); views.len()];
    let mut view_errors = 0u64;
    let mut failure: Option<String> = None;
    while let Some((i, r)) = results.next().await {
        match r {
            Ok((obj, out)) => {
                s.objects += 1;
                s.bytes += obj.meta.size;
                s.lines += out.lines;
                s.resources += out.resources;
                s.dead_lines += out.dead;
                let rows: u64 = out.files.iter().map(|(_, f)| f.rows).sum();
                info!(
                    object = i + 1,
                    of = total,
                    raw_key = %obj.key,
                    bytes = obj.meta.size,
                    resources = out.resources,
                    rows,
                    "raw object reprocessed"
                );
                view_errors += out.view_errors;
                for (idx, f) in out.files {
                    files[idx].push(f);
                }
            }
            Err(e) => {
                failure = Some(format!("{e:#}"));
                break;
            }
        }
    }
    drop(results);
    s.view_errors = view_errors;
    if failure.is_none() && view_errors > 0 && !a.allow_view_errors {
        failure = Some(format!(
            "{view_errors} resources could not be evaluated by a rebuilt view; no table was switched (fix the view, or pass --allow-view-errors to switch anyway)"
        ));
    }
    s.wall_time_s = started.elapsed().as_secs_f64();
    if s.wall_time_s > 0.0 {
        s.mb_per_s = s.bytes as f64 / 1e6 / s.wall_time_s;
    }

    if let Some(err) = failure {
        warn!(error = %err, "reprocess failed; the current versions stay current");
        for (idx, folder) in folders.iter().enumerate() {
            let (name, hash, _) = views.table(idx);
            if let Err(e) = tables::delete_prefix(&store, folder).await {
                warn!(folder = %folder, error = format!("{e:#}"), "partial version could not be removed; a later reprocess removes it");
            }
            s.tables.insert(
                name.to_string(),
                TableOutcome {
                    action: "not_switched".into(),
                    view_hash: hash.to_string(),
                    version: current.get(name).map(|p| p.version.clone()),
                    previous_version: current.get(name).map(|p| p.version.clone()),
                    ..Default::default()
                },
            );
        }
        s.status = "failed".into();
        s.error = Some(err);
        return Ok(s);
    }

    // Switch, table by table.
    for (idx, mut fs) in files.into_iter().enumerate() {
        let (name, hash, _) = views.table(idx);
        fs.extend(carried.remove(&idx).unwrap_or_default());
        fs.sort_by(|x, y| x.key.cmp(&y.key));
        let now = tables::now_rfc3339();
        let ptr = TablePointer {
            format: POINTER_FORMAT,
            table: name.to_string(),
            version: folders[idx]
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string(),
            view_hash: hash.to_string(),
            created_at: now.clone(),
            updated_at: now,
            run_id: run_id.clone(),
            updated_by_run: run_id.clone(),
            built_by: "reprocess".into(),
            rows: fs.iter().map(|f| f.rows).sum(),
            files: fs,
            previous: Vec::new(),
        };
        let (rows, nfiles, version) = (ptr.rows, ptr.files.len() as u64, ptr.version.clone());
        let out = tables::switch(&store, ptr, a.keep_versions).await?;
        info!(table = %name, version = %version, rows, "table switched to the new version");
        s.tables.insert(
            name.to_string(),
            TableOutcome {
                action: "rebuilt".into(),
                view_hash: hash.to_string(),
                version: Some(version),
                previous_version: out.previous_version,
                rows,
                files: nfiles,
                gc_deleted_folders: out.deleted_folders,
            },
        );
    }
    s.status = "ok".into();
    s.wall_time_s = started.elapsed().as_secs_f64();
    if s.wall_time_s > 0.0 {
        s.mb_per_s = s.bytes as f64 / 1e6 / s.wall_time_s;
    }
    Ok(s)
}

/// What a raw object holds, from its key: export jobs name their `deleted` and `error` files
/// `<Type>.deleted.<n>.ndjson` and `<Type>.error.<n>.ndjson` (see `fhirhose_ingest::bulk`);
/// everything else holds resources.
fn raw_kind(key: &str) -> FileKind {
    let name = key.rsplit('/').next().unwrap_or(key);
    let is_export = key.split('/').nth(2) == Some("export");
    if is_export && name.contains(".deleted.") {
        FileKind::Deleted
    } else if is_export && name.contains(".error.") {
        FileKind::Error
    } else {
        FileKind::Resources
    }
}

/// Everything needed to reprocess one raw object.
struct ObjectJob {
    store: Arc<dyn ObjectStore>,
    views: Arc<ViewSet>,
    folders: Vec<String>,
    run_id: String,
    framer: FramerConfig,
    workers: usize,
    parquet: ParquetConfig,
}

impl ObjectJob {
    async fn run(&self, obj: &RawObject) -> anyhow::Result<ObjectOut> {
        let ctx = Arc::new(FileCtx {
            kind: FileKind::Resources,
            raw_key: obj.key.as_str().into(),
            run_id: self.run_id.as_str().into(),
            ingested_at_us: obj.meta.last_modified.timestamp_micros(),
            max_line_bytes: self.framer.max_line_bytes,
            views: Arc::clone(&self.views),
            // Reprocess rebuilds views only; the `resources` table is left as it is.
            resources_table: false,
            events: false,
        });
        let part = part_name(&obj.key);
        let (mut tx, rx) = futures::channel::mpsc::channel::<Frame>(self.workers * 2);
        let reader = async {
            let mut body = self
                .store
                .get(&obj.meta.location)
                .await
                .with_context(|| format!("raw object {} cannot be read", obj.key))?
                .into_stream();
            let mut framer = Framer::new(self.framer);
            let mut frames = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.with_context(|| format!("raw object {} cannot be read", obj.key))?;
                framer.push(&chunk, &mut frames);
                for f in frames.drain(..) {
                    if tx.send(f).await.is_err() {
                        anyhow::bail!("the writer stopped");
                    }
                }
            }
            framer.finish(&mut frames);
            for f in frames.drain(..) {
                if tx.send(f).await.is_err() {
                    anyhow::bail!("the writer stopped");
                }
            }
            drop(tx);
            Ok::<(), anyhow::Error>(())
        };
        let writer = async {
            let mut out = ObjectOut::default();
            let mut writers: HashMap<usize, TableWriter> = HashMap::new();
            let mut blocks = rx
                .map(|frame| {
                    let ctx = Arc::clone(&ctx);
                    tokio::task::spawn_blocking(move || match frame {
                        Frame::Block(b) => process_block(&ctx, b),
                        Frame::Oversize(o) => process_oversize(&ctx, &o),
                    })
                })
                .buffered(self.workers);
            while let Some(b) = blocks.next().await {
                let b = b.context("a parsing worker failed")?;
                out.lines += b.lines;
                out.resources += b.events.len() as u64;
                out.dead += b.dead.len() as u64;
                out.view_errors += b.view_errors;
                for (idx, batch) in &b.views {
                    let w = match writers.entry(*idx) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let (_, _, schema) = self.views.table(*idx);
                            let key = ObjectPath::from(format!("{}/{part}", self.folders[*idx]));
                            e.insert(TableWriter::create(
                                Arc::clone(&self.store),
                                key,
                                schema,
                                &self.parquet,
                            )?)
                        }
                    };
                    w.write(batch).await?;
                }
                enforce_budget(&mut writers).await?;
            }
            let mut ws: Vec<_> = writers.into_iter().collect();
            ws.sort_by_key(|(i, _)| *i);
            for (idx, w) in ws {
                let parts = w.parts();
                w.close().await?;
                for (key, rows) in parts {
                    let bytes = self
                        .store
                        .head(&key)
                        .await
                        .with_context(|| format!("{key} cannot be read back"))?
                        .size;
                    out.files.push((
                        idx,
                        TableFile {
                            key: key.to_string(),
                            rows,
                            bytes,
                            raw_key: Some(obj.key.clone()),
                        },
                    ));
                }
            }
            Ok::<_, anyhow::Error>(out)
        };
        let ((), out) = tokio::try_join!(reader, writer)?;
        Ok(out)
    }
}

/// Cuts row groups, largest first, until the buffered total fits the pipeline's budget.
async fn enforce_budget(writers: &mut HashMap<usize, TableWriter>) -> anyhow::Result<()> {
    loop {
        let total: usize = writers.values().map(TableWriter::buffered_bytes).sum();
        let largest = writers
            .values_mut()
            .max_by_key(|w| w.buffered_bytes())
            .filter(|w| w.buffered_bytes() > 0);
        match largest {
            Some(w) if total > default_parquet_budget() => w.flush().await?,
            _ => return Ok(()),
        }
    }
}

/// `<stem>-<first 16 hex of sha256(raw key)>.parquet`: unique per raw object, stable across
/// runs.
fn part_name(raw_key: &str) -> String {
    let name = raw_key.rsplit('/').next().unwrap_or(raw_key);
    let stem = name.strip_suffix(".ndjson").unwrap_or(name);
    let h = hex::encode(Sha256::digest(raw_key.as_bytes()));
    format!("{}-{}.parquet", key_segment(stem), &h[..16])
}

/// Human summary on stdout.
pub fn print_summary(s: &ReprocessSummary) {
    println!("reprocess {} ({}) in {}", s.run_id, s.status, s.lake);
    println!(
        "  read: {} raw objects ({} skipped: deleted/error files), {:.1} MB, {} lines, {} resources in {:.2} s ({:.1} MB/s)",
        s.objects,
        s.objects_skipped,
        s.bytes as f64 / 1e6,
        s.lines,
        s.resources,
        s.wall_time_s,
        s.mb_per_s
    );
    if s.dead_lines > 0 {
        println!("  {} lines skipped (dead letters at ingest)", s.dead_lines);
    }
    println!("  tables:");
    for (t, o) in &s.tables {
        println!(
            "    {t:<28} {:<12} {:>10} rows {:>5} files  version {}{}",
            o.action,
            o.rows,
            o.files,
            o.version.as_deref().unwrap_or("-"),
            if o.gc_deleted_folders.is_empty() {
                String::new()
            } else {
                format!("  (deleted {} old)", o.gc_deleted_folders.len())
            }
        );
    }
    if let Some(e) = &s.error {
        println!("  FAILED: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_part_names() {
        assert_eq!(
            raw_kind("raw/ehr/export/j1/Patient.deleted.01.ndjson"),
            FileKind::Deleted
        );
        assert_eq!(
            raw_kind("raw/ehr/export/j1/Patient.error.01.ndjson"),
            FileKind::Error
        );
        assert_eq!(
            raw_kind("raw/ehr/export/j1/Patient.01.ndjson"),
            FileKind::Resources
        );
        assert_eq!(
            raw_kind("raw/local/ingest/abc/x.deleted.1.ndjson"),
            FileKind::Resources
        );
        let a = part_name("raw/local/ingest/abc/Patient.01.ndjson");
        assert!(
            a.starts_with("Patient.01-") && a.ends_with(".parquet"),
            "{a}"
        );
        assert_ne!(a, part_name("raw/local/ingest/abd/Patient.01.ndjson"));
    }
}
