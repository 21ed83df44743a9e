//! The ingest pipeline: input files → raw store, Parquet tables, Kafka events.
//!
//! ```text
//!  InputFile ──open/decompress──► reader ──► RawWriter (sha256, create-only)
//!                                   │
//!                                   └─► Framer ──blocks──► [blocking pool: parse + rows]
//!                                                              │  (in order)
//!                                                              ▼
//!                                   Parquet parts ◄── consumer ──► Kafka (DeliveryTracker)
//!                                                        └──► dead letters
//! ```
//!
//! A file task is done only when its raw object is stored, its Parquet parts are closed and
//! every Kafka delivery came back Ok; only then is it recorded `done` in the state store. A
//! task that fails leaves no `done` record, and its outputs are all at deterministic keys, so a
//! later run redoes it without duplicating rows (Parquet parts are replaced, raw objects are
//! verified by sha256) — events are re-published with the same `ce_id`, except those of lines
//! at or below the file's checkpointed ack watermark ([`watermark`]), which a resumed attempt
//! skips.
//!
//! A views-only run ([`IngestConfig::views_only`], `ingest --views-only`) keeps the same path
//! minus the raw writer, the `resources` table and the state: nothing is recorded as done,
//! so it is not resumable, and `_raw_key` and dead letters point to the input itself.
//!
//! Memory is bounded by the run's [`budget::MemoryBudget`], shared by all files at once: the
//! bytes of blocks in flight (framed, being parsed, waiting for the sinks) and the Parquet row
//! groups in progress across every open table of every file. Per file there is in addition
//! the raw writer's buffer, each open table's queued batches and spool buffer, and librdkafka's
//! queue limit. None of it grows with the size of a file or of the run, and two large files at
//! once hold no more blocks or row groups than one.

pub(crate) mod block;
pub mod budget;
mod resource_types;
pub mod views;
pub mod watermark;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirhose_ingest::framing::{Frame, Framer, FramerConfig};
use fhirhose_ingest::source::InputFile;
use fhirhose_ingest::state::{FileRecord, FileStatus, StateStore};
use fhirhose_sinks::deadletter::DeadLetterWriter;
use fhirhose_sinks::kafka::{
    EventMeta, Publisher, CE_TYPE_DEADLETTER, CE_TYPE_DELETE, CE_TYPE_UPSERT,
};
use fhirhose_sinks::parquet::{ParquetConfig, TableWriter};
use fhirhose_sinks::raw::RawWriter;
use futures::{SinkExt, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::lake::Lake;
use block::{
    deletions_schema, process_block, process_oversize, BlockOut, FileCtx, RESOURCES_VERSION,
};
pub use block::{parse_instant_us, resources_schema};
pub use views::ViewSet;

/// Read size from the (decompressed) input stream.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// How long to wait for a file's Kafka delivery reports once all its events are sent.
pub const fn default_delivery_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Settings of one ingest run.
#[derive(Debug)]
pub struct IngestConfig {
    /// Where everything lands.
    pub lake: Lake,
    /// Source name (a tenant or EHR), part of raw keys and `ce_source`.
    pub source: String,
    /// This run's id.
    pub run_id: String,
    /// Publisher, when brokers are configured.
    pub kafka: Option<Arc<Publisher>>,
    /// State store.
    pub state: Arc<StateStore>,
    /// Line limits and block size.
    pub framer: FramerConfig,
    /// Parquet settings.
    pub parquet: ParquetConfig,
    /// Files processed at once.
    pub file_concurrency: usize,
    /// Blocks parsed at once per file.
    pub workers: usize,
    /// Memory shared by the run's files (blocks in flight, Parquet row groups).
    pub memory: Arc<budget::MemoryBudget>,
    /// Views to evaluate.
    pub views: Arc<ViewSet>,
    /// See [`default_delivery_timeout`].
    pub delivery_timeout: Duration,
    /// Process files even when the state store says they are done.
    pub force: bool,
    /// See [`fhirhose_sinks::raw::default_inline_limit`].
    pub raw_inline_bytes: usize,
    /// Authorization lineage written into the run manifest.
    pub lineage: RunLineage,
    /// Write the view tables only: no raw copy, no `resources` table, no run manifest
    /// (`fhirhose ingest --views-only`). `_raw_key` and dead letters then point to the input.
    pub views_only: bool,
}

/// Which authorization a run's files were fetched under, written into
/// `manifests/<run_id>.json` so that Parquet rows (`_run_id`) join to the run and on to
/// the audit event (`fhirhose audit --run`). Empty for runs that fetched nothing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunLineage {
    /// The audit event of the token grant in force when the run started fetching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_event_id: Option<String>,
    /// The export job whose files the run landed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_job_id: Option<String>,
    /// The lake key of the run's authorization audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
}

/// Outcome of one file task.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    /// Input path or URL.
    pub input: String,
    /// Raw object key.
    pub raw_key: String,
    /// `done`, `skipped` (already done earlier) or `failed`.
    pub status: String,
    /// Hex sha256 of the raw bytes.
    pub sha256: Option<String>,
    /// Raw bytes (decompressed).
    pub bytes: u64,
    /// Lines framed (blank lines included).
    pub lines: u64,
    /// Resources landed.
    pub resources: u64,
    /// Resources per type.
    pub resources_by_type: BTreeMap<String, u64>,
    /// Dead letters per reason.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Dead-letter object, if any.
    pub dead_letter_key: Option<String>,
    /// Events acknowledged per topic.
    pub events_by_topic: BTreeMap<String, u64>,
    /// Events not published again because an earlier attempt's ack watermark covers them.
    pub events_skipped: u64,
    /// Parquet rows per table.
    pub parquet_rows_by_table: BTreeMap<String, u64>,
    /// Parquet objects written.
    pub parquet_keys: Vec<String>,
    /// Deletions (from Bulk Data `deleted` files) per resource type.
    pub deleted_by_type: BTreeMap<String, u64>,
    /// OperationOutcome issues (from Bulk Data `error` files) per severity.
    pub outcomes_by_severity: BTreeMap<String, u64>,
    /// Resources that a view could not evaluate (they landed everywhere else).
    pub view_errors: u64,
    /// Error, when failed (no PHI: a class and a location).
    pub error: Option<String>,
}

/// The run summary (`--summary-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Source name.
    pub source: String,
    /// Lake URL.
    pub lake: String,
    /// `ok`, `partial` (some files failed) or `failed` (all failed).
    pub status: String,
    /// Files given.
    pub files: u64,
    /// Files landed in this run.
    pub files_done: u64,
    /// Files skipped because an earlier run landed them.
    pub files_skipped: u64,
    /// Files that failed.
    pub files_failed: u64,
    /// Raw bytes read (decompressed).
    pub bytes: u64,
    /// Lines framed.
    pub lines: u64,
    /// Resources landed.
    pub resources: u64,
    /// Resources per type.
    pub resources_by_type: BTreeMap<String, u64>,
    /// Dead letters.
    pub dead_letters: u64,
    /// Dead letters per reason.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Whether events were published (false when no broker was configured).
    pub events_published: bool,
    /// Events acknowledged per topic.
    pub events_by_topic: BTreeMap<String, u64>,
    /// Events not published again because an earlier attempt's ack watermark covers them.
    pub events_skipped: u64,
    /// Parquet rows per table.
    pub parquet_rows_by_table: BTreeMap<String, u64>,
    /// Deletions per resource type.
    pub deleted_by_type: BTreeMap<String, u64>,
    /// OperationOutcome issues from `error` files, per severity.
    pub outcomes_by_severity: BTreeMap<String, u64>,
    /// Resources that a view could not evaluate.
    pub view_errors: u64,
    /// Wall time in seconds.
    pub wall_time_s: f64,
    /// Raw MB (10^6 bytes) per second of wall time.
    pub mb_per_s: f64,
    /// Resources per second of wall time.
    pub resources_per_s: f64,
    /// Per-file outcomes.
    pub file_reports: Vec<FileReport>,
}

impl RunSummary {
    fn add(&mut self, f: &FileReport) {
        match f.status.as_str() {
            "done" => self.files_done += 1,
            "skipped" => self.files_skipped += 1,
            _ => self.files_failed += 1,
        }
        if f.status == "skipped" {
            return;
        }
        self.bytes += f.bytes;
        self.lines += f.lines;
        self.resources += f.resources;
        merge(&mut self.resources_by_type, &f.resources_by_type);
        merge(&mut self.dead_letters_by_reason, &f.dead_letters_by_reason);
        self.dead_letters += f.dead_letters_by_reason.values().sum::<u64>();
        merge(&mut self.events_by_topic, &f.events_by_topic);
        self.events_skipped += f.events_skipped;
        merge(&mut self.parquet_rows_by_table, &f.parquet_rows_by_table);
        merge(&mut self.deleted_by_type, &f.deleted_by_type);
        merge(&mut self.outcomes_by_severity, &f.outcomes_by_severity);
        self.view_errors += f.view_errors;
    }
}

fn merge(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Errors of a file task (one line, no PHI).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading the input failed.
    #[error("reading {input} failed: {source}")]
    Read {
        /// Input.
        input: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Opening the input failed.
    #[error(transparent)]
    Source(#[from] fhirhose_ingest::source::SourceError),
    /// The raw store failed.
    #[error(transparent)]
    Raw(#[from] fhirhose_sinks::raw::RawError),
    /// Parquet failed.
    #[error(transparent)]
    Parquet(#[from] fhirhose_sinks::parquet::ParquetError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] fhirhose_sinks::kafka::PublishError),
    /// Dead letters could not be written.
    #[error(transparent)]
    DeadLetter(#[from] fhirhose_sinks::deadletter::DeadLetterError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] fhirhose_ingest::state::StateError),
    /// A worker panicked or was cancelled.
    #[error("a parsing worker failed: {0}")]
    Worker(String),
}

/// Sanitises a name for use as one object-key segment.
pub(crate) fn key_segment(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// Where a file's outputs go; all derived from the source name and the input fingerprint.
#[derive(Debug, Clone)]
pub(crate) struct FileKeys {
    pub raw: String,
    pub dead_letters: String,
    pub part_name: String,
}

impl FileKeys {
    pub(crate) fn for_input(source: &str, input: &InputFile) -> Self {
        let fp = &input.fingerprint[..16.min(input.fingerprint.len())];
        let stem = key_segment(input.stem());
        let src = key_segment(source);
        let group = input.group.as_deref().map_or_else(
            || format!("ingest/{fp}"),
            |g| g.split('/').map(key_segment).collect::<Vec<_>>().join("/"),
        );
        Self {
            raw: format!("raw/{src}/{group}/{stem}.ndjson"),
            dead_letters: format!("deadletter/{src}/{group}/{stem}.ndjson"),
            part_name: format!("{stem}-{fp}.parquet"),
        }
    }
}

/// Runs the ingest of `inputs`; never fails as a whole: failures are per file, in the summary.
pub async fn run_ingest(cfg: Arc<IngestConfig>, inputs: Vec<InputFile>) -> RunSummary {
    let started = Instant::now();
    let mut s = RunSummary {
        run_id: cfg.run_id.clone(),
        source: cfg.source.clone(),
        lake: cfg.lake.url.clone(),
        files: inputs.len() as u64,
        events_published: cfg.kafka.is_some(),
        ..Default::default()
    };
    let reports: Vec<FileReport> = futures::stream::iter(inputs)
        .map(|input| {
            let cfg = Arc::clone(&cfg);
            async move { crate::observe::file_finished(&cfg.source, ingest_file(&cfg, input).await) }
        })
        .buffered(cfg.file_concurrency.max(1))
        .collect()
        .await;
    for r in &reports {
        s.add(r);
    }
    s.file_reports = reports;
    let wall = started.elapsed().as_secs_f64();
    s.wall_time_s = wall;
    if wall > 0.0 {
        s.mb_per_s = s.bytes as f64 / 1e6 / wall;
        s.resources_per_s = s.resources as f64 / wall;
    }
    s.status = if s.files_failed == 0 {
        "ok".into()
    } else if s.files_failed == s.files {
        "failed".into()
    } else {
        "partial".into()
    };
    // A run that landed nothing (every file already done) leaves the lake untouched, and a
    // views-only run stored no raw object for a manifest to list.
    if s.files_done + s.files_failed == 0 || cfg.views_only {
        return s;
    }
    if let Err(e) = write_manifest(&cfg, &s).await {
        warn!(error = %e, "run manifest could not be written");
    }
    s
}

async fn write_manifest(cfg: &IngestConfig, s: &RunSummary) -> Result<(), object_store::Error> {
    #[derive(Serialize)]
    struct ManifestFile<'a> {
        input: &'a str,
        raw_key: &'a str,
        sha256: &'a Option<String>,
        bytes: u64,
        lines: u64,
        resources: u64,
        dead_letters: u64,
        dead_letter_key: &'a Option<String>,
        parquet_keys: &'a [String],
    }
    #[derive(Serialize)]
    struct Manifest<'a> {
        run_id: &'a str,
        source: &'a str,
        status: &'a str,
        #[serde(flatten)]
        lineage: &'a RunLineage,
        files: Vec<ManifestFile<'a>>,
    }
    let m = Manifest {
        run_id: &s.run_id,
        source: &s.source,
        status: &s.status,
        lineage: &cfg.lineage,
        files: s
            .file_reports
            .iter()
            .filter(|f| f.status == "done")
            .map(|f| ManifestFile {
                input: &f.input,
                raw_key: &f.raw_key,
                sha256: &f.sha256,
                bytes: f.bytes,
                lines: f.lines,
                resources: f.resources,
                dead_letters: f.dead_letters_by_reason.values().sum(),
                dead_letter_key: &f.dead_letter_key,
                parquet_keys: &f.parquet_keys,
            })
            .collect(),
    };
    let body = serde_json::to_vec_pretty(&m).expect("manifest serializes");
    let key = ObjectPath::from(format!("manifests/{}.json", key_segment(&s.run_id)));
    cfg.lake
        .store
        .put_opts(
            &key,
            PutPayload::from(body),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .map(|_| ())
}

async fn ingest_file(cfg: &IngestConfig, input: InputFile) -> FileReport {
    let mut keys = FileKeys::for_input(&cfg.source, &input);
    if cfg.views_only {
        keys.raw = input.display();
    }
    let mut report = FileReport {
        input: input.display(),
        raw_key: keys.raw.clone(),
        ..Default::default()
    };
    if !cfg.force {
        match cfg.state.file(&cfg.lake.url, &input.fingerprint) {
            Ok(Some(rec)) if rec.status == FileStatus::Done => {
                info!(file = %input.name, "already landed by an earlier run; skipping");
                report.status = "skipped".into();
                report.sha256 = rec.sha256;
                report.bytes = rec.bytes;
                report.lines = rec.lines;
                report.resources = rec.resources;
                return report;
            }
            Ok(_) => {}
            Err(e) => {
                report.status = "failed".into();
                report.error = Some(e.to_string());
                return report;
            }
        }
    }
    let started = Instant::now();
    match ingest_file_inner(cfg, &input, &keys, &mut report).await {
        Ok(()) => {
            report.status = "done".into();
            info!(
                file = %input.name,
                resources = report.resources,
                dead_letters = report.dead_letters_by_reason.values().sum::<u64>(),
                bytes = report.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "file landed"
            );
        }
        Err(e) => {
            warn!(file = %input.name, error = %e, "file failed; it will be retried by the next run");
            let _ = cfg
                .state
                .file_failed(&cfg.lake.url, &input.fingerprint, &e.to_string());
            report.status = "failed".into();
            report.error = Some(e.to_string());
        }
    }
    report
}

/// Per-file sinks, fed in block order.
struct FileSinks<'a> {
    cfg: &'a IngestConfig,
    keys: &'a FileKeys,
    source_uri: String,
    resources: Option<TableWriter>,
    deletions: Option<TableWriter>,
    views: HashMap<usize, TableWriter>,
    dead: DeadLetterWriter,
    wm: watermark::AckWatermark,
    /// The file's fingerprint and the publisher's sink id, for watermark checkpoints.
    checkpoint: Option<(&'a str, String)>,
    topics: HashMap<String, String>,
    report: FileReport,
    /// This file's part of the run's Parquet budget.
    parquet_share: budget::ParquetShare,
}

impl FileSinks<'_> {
    /// Writes the ack watermark when it moved (and the interval passed, unless `force`).
    fn checkpoint(&mut self, force: bool) -> Result<(), FileError> {
        if let Some((fp, sink)) = &self.checkpoint {
            if let Some(line) = self.wm.due(force) {
                self.cfg.state.set_file_watermark(
                    &self.cfg.lake.url,
                    fp,
                    sink,
                    line,
                    &self.cfg.run_id,
                )?;
            }
        }
        Ok(())
    }

    async fn topic(
        &mut self,
        publisher: &Publisher,
        resource_type: &str,
    ) -> Result<String, FileError> {
        if let Some(t) = self.topics.get(resource_type) {
            return Ok(t.clone());
        }
        let t = publisher.topic_for(resource_type);
        publisher.ensure_topic(&t).await?;
        self.topics.insert(resource_type.to_string(), t.clone());
        Ok(t)
    }

    async fn consume(&mut self, out: BlockOut) -> Result<(), FileError> {
        crate::observe::progress::add_resources(out.events.len() as u64);
        let store: &Arc<dyn ObjectStore> = &self.cfg.lake.store;
        self.report.lines += out.lines;
        if let Some(batch) = &out.resources {
            if self.resources.is_none() {
                let key = ObjectPath::from(format!(
                    "tables/resources/{RESOURCES_VERSION}/{}",
                    self.keys.part_name
                ));
                self.resources = Some(TableWriter::create(
                    Arc::clone(store),
                    key,
                    resources_schema(),
                    &self.cfg.parquet,
                )?);
            }
            self.resources
                .as_mut()
                .expect("created above")
                .write(batch)
                .await?;
        }
        if let Some(batch) = &out.deletions {
            if self.deletions.is_none() {
                let key = ObjectPath::from(format!(
                    "tables/deletions/{RESOURCES_VERSION}/{}",
                    self.keys.part_name
                ));
                self.deletions = Some(TableWriter::create(
                    Arc::clone(store),
                    key,
                    deletions_schema(),
                    &self.cfg.parquet,
                )?);
            }
            self.deletions
                .as_mut()
                .expect("created above")
                .write(batch)
                .await?;
        }
        self.enforce_parquet_budget().await?;
        for (sev, n) in &out.outcomes {
            *self
                .report
                .outcomes_by_severity
                .entry(sev.clone())
                .or_default() += n;
        }
        self.report.view_errors += out.view_errors;
        for d in &out.deletes {
            *self
                .report
                .deleted_by_type
                .entry(d.resource_type.clone())
                .or_default() += 1;
        }
        if let Some(publisher) = self.cfg.kafka.clone() {
            for d in &out.deletes {
                if self.wm.skips(d.line) {
                    self.report.events_skipped += 1;
                    continue;
                }
                let topic = self.topic(&publisher, &d.resource_type).await?;
                let subject = format!("{}/{}", d.resource_type, d.id);
                let id = format!("del-{}-{}", block::ce_id(&self.keys.raw, d.line), d.entry);
                let meta = EventMeta {
                    ce_id: &id,
                    source: &self.source_uri,
                    ce_type: CE_TYPE_DELETE,
                    subject: &subject,
                    time: None,
                    raw_key: &self.keys.raw,
                    line: d.line,
                    run_id: &self.cfg.run_id,
                };
                publisher
                    .send(
                        &topic,
                        subject.as_bytes(),
                        None,
                        meta.headers(&[]),
                        self.wm.tracker(),
                    )
                    .await?;
                *self.report.events_by_topic.entry(topic).or_default() += 1;
            }
        }
        for (idx, batch) in &out.views {
            if !self.views.contains_key(idx) {
                let (name, version, schema) = self.cfg.views.table(*idx);
                let key = ObjectPath::from(format!(
                    "tables/{}/{}/{}",
                    key_segment(name),
                    key_segment(version),
                    self.keys.part_name
                ));
                self.views.insert(
                    *idx,
                    TableWriter::create(Arc::clone(store), key, schema, &self.cfg.parquet)?,
                );
            }
            self.views
                .get_mut(idx)
                .expect("inserted above")
                .write(batch)
                .await?;
        }
        for ev in &out.events {
            match self.report.resources_by_type.get_mut(ev.resource_type) {
                Some(n) => *n += 1,
                None => {
                    self.report
                        .resources_by_type
                        .insert(ev.resource_type.to_string(), 1);
                }
            }
            self.report.resources += 1;
        }
        let run_id = self.cfg.run_id.clone();
        if let Some(publisher) = self.cfg.kafka.clone() {
            for ev in &out.events {
                if self.wm.skips(ev.line) {
                    self.report.events_skipped += 1;
                    continue;
                }
                let topic = self.topic(&publisher, ev.resource_type).await?;
                let subject = format!("{}/{}", ev.resource_type, ev.id);
                let ce_id = block::ce_id(&self.keys.raw, ev.line);
                let meta = EventMeta {
                    ce_id: &ce_id,
                    source: &self.source_uri,
                    ce_type: CE_TYPE_UPSERT,
                    subject: &subject,
                    time: ev.last_updated.as_deref(),
                    raw_key: &self.keys.raw,
                    line: ev.line,
                    run_id: &run_id,
                };
                publisher
                    .send(
                        &topic,
                        subject.as_bytes(),
                        Some(&out.data[ev.start..ev.start + ev.len]),
                        meta.headers(&[]),
                        self.wm.tracker(),
                    )
                    .await?;
                *self.report.events_by_topic.entry(topic).or_default() += 1;
            }
        }
        for d in &out.dead {
            self.dead.write(&d.letter).await?;
            *self
                .report
                .dead_letters_by_reason
                .entry(d.letter.reason.as_str().to_string())
                .or_default() += 1;
            if self.wm.skips(d.letter.line) {
                if self.cfg.kafka.is_some() {
                    self.report.events_skipped += 1;
                }
                continue;
            }
            if let Some(publisher) = self.cfg.kafka.clone() {
                let topic = publisher.deadletter_topic();
                if !self.topics.contains_key("\0deadletter") {
                    publisher.ensure_topic(&topic).await?;
                    self.topics.insert("\0deadletter".into(), topic.clone());
                }
                let key = format!("{}#{}", d.letter.raw_key, d.letter.line);
                let dl_id = format!("dl-{}", block::ce_id(&d.letter.raw_key, d.letter.line));
                let offset = d.letter.offset.to_string();
                let length = d.letter.length.to_string();
                let meta = EventMeta {
                    ce_id: &dl_id,
                    source: &self.source_uri,
                    ce_type: CE_TYPE_DEADLETTER,
                    subject: &key,
                    time: None,
                    raw_key: &d.letter.raw_key,
                    line: d.letter.line,
                    run_id: &run_id,
                };
                // Oversize lines have no bytes at hand: an empty value, the pointer in headers.
                let payload: Option<&[u8]> =
                    Some(d.span.map_or(&[][..], |(s, l)| &out.data[s..s + l]));
                publisher
                    .send(
                        &topic,
                        key.as_bytes(),
                        payload,
                        meta.headers(&[
                            ("fhirhose_reason", d.letter.reason.as_str()),
                            ("fhirhose_offset", &offset),
                            ("fhirhose_length", &length),
                        ]),
                        self.wm.tracker(),
                    )
                    .await?;
                *self.report.events_by_topic.entry(topic).or_default() += 1;
            }
        }
        // Every event of this block's lines is with the producer now.
        self.wm.block_sent(self.report.lines);
        self.checkpoint(false)?;
        Ok(())
    }

    /// Reports the file's Parquet memory to the run's budget and, while the run is over it and
    /// this file holds at least an equal share ([`budget::ParquetShare::report`]), cuts this
    /// file's row groups, largest first.
    async fn enforce_parquet_budget(&mut self) -> Result<(), FileError> {
        loop {
            let mut total = 0usize;
            let mut largest: Option<(usize, &mut TableWriter)> = None;
            for w in self
                .resources
                .iter_mut()
                .chain(self.deletions.iter_mut())
                .chain(self.views.values_mut())
            {
                let size = w.buffered_bytes();
                total += size;
                if largest.as_ref().is_none_or(|(s, _)| size > *s) {
                    largest = Some((size, w));
                }
            }
            let cut = self.parquet_share.report(total);
            match largest {
                Some((size, w)) if cut && size > 0 => {
                    w.flush().await?;
                }
                _ => return Ok(()),
            }
        }
    }

    async fn finish(mut self) -> Result<FileReport, FileError> {
        if let Some(w) = self.deletions.take() {
            self.report
                .parquet_keys
                .extend(w.part_keys().iter().map(ToString::to_string));
            let rows = w.close().await?;
            *self
                .report
                .parquet_rows_by_table
                .entry("deletions".into())
                .or_default() += rows;
        }
        if let Some(w) = self.resources.take() {
            self.report
                .parquet_keys
                .extend(w.part_keys().iter().map(ToString::to_string));
            let rows = w.close().await?;
            *self
                .report
                .parquet_rows_by_table
                .entry("resources".into())
                .or_default() += rows;
        }
        let mut views: Vec<_> = self.views.drain().collect();
        views.sort_by_key(|(i, _)| *i);
        for (idx, w) in views {
            self.report
                .parquet_keys
                .extend(w.part_keys().iter().map(ToString::to_string));
            let rows = w.close().await?;
            let (name, _, _) = self.cfg.views.table(idx);
            *self
                .report
                .parquet_rows_by_table
                .entry(name.to_string())
                .or_default() += rows;
        }
        if self.cfg.kafka.is_some() {
            self.wm.wait_all(self.cfg.delivery_timeout).await?;
        }
        let dl_key = self.dead.key().to_string();
        if self.dead.finish().await? > 0 {
            self.report.dead_letter_key = Some(dl_key);
        }
        Ok(self.report)
    }
}

async fn ingest_file_inner(
    cfg: &IngestConfig,
    input: &InputFile,
    keys: &FileKeys,
    report: &mut FileReport,
) -> Result<(), FileError> {
    cfg.state.file_started(
        &cfg.lake.url,
        &input.fingerprint,
        &input.display(),
        &keys.raw,
        &cfg.run_id,
    )?;
    // The ack watermark of earlier attempts at this file for this sink (module `watermark`).
    let checkpoint = cfg
        .kafka
        .as_ref()
        .map(|p| (input.fingerprint.as_str(), p.sink_id()));
    let resume_through = match &checkpoint {
        Some((fp, sink)) => cfg.state.file_watermark(&cfg.lake.url, fp, sink)?,
        None => 0,
    };
    if resume_through > 0 {
        info!(
            file = %input.name,
            acked_through = resume_through,
            "resuming: events of lines up to the ack watermark are not published again"
        );
    }
    let store = Arc::clone(&cfg.lake.store);
    // Blocks queued ahead of the workers: one per worker (plus the sender's slot) keeps them
    // busy, since reading and framing are much faster than parsing; more would only hold
    // memory (a block is 512 KiB by default).
    // Each block also holds its bytes' share of the run's block budget, from the reader to the
    // sinks, so that files running at once share one bound.
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<(Frame, budget::BlockPermit)>(cfg.workers.max(1));
    let display = input.display();

    let reader = async {
        let mut r = input.open().await?;
        // Views-only runs keep no raw copy: the input itself is what `_raw_key` points to.
        let mut raw = (!cfg.views_only).then(|| {
            RawWriter::with_inline_limit(
                Arc::clone(&store),
                ObjectPath::from(keys.raw.clone()),
                cfg.raw_inline_bytes,
            )
        });
        let abort = |raw: Option<RawWriter>| async move {
            if let Some(raw) = raw {
                raw.abort().await;
            }
        };
        let mut framer = Framer::new(cfg.framer);
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut frames = Vec::new();
        let mut bytes = 0u64;
        loop {
            let n = match r.read(&mut buf).await {
                Ok(n) => n,
                Err(source) => {
                    abort(raw).await;
                    return Err(FileError::Read {
                        input: display.clone(),
                        source,
                    });
                }
            };
            if n == 0 {
                break;
            }
            if let Some(raw) = raw.as_mut() {
                raw.write(&buf[..n]).await?;
            }
            bytes += n as u64;
            crate::observe::progress::add_bytes(n as u64);
            framer.push(&buf[..n], &mut frames);
            for f in frames.drain(..) {
                let permit = cfg.memory.acquire_block(frame_bytes(&f)).await;
                if tx.send((f, permit)).await.is_err() {
                    // The consumer stopped: its error is the one to report.
                    abort(raw).await;
                    return Err(FileError::Worker("consumer stopped".into()));
                }
            }
        }
        framer.finish(&mut frames);
        for f in frames.drain(..) {
            let permit = cfg.memory.acquire_block(frame_bytes(&f)).await;
            if tx.send((f, permit)).await.is_err() {
                abort(raw).await;
                return Err(FileError::Worker("consumer stopped".into()));
            }
        }
        drop(tx);
        Ok::<_, FileError>(match raw {
            Some(raw) => {
                let o = raw.finish().await?;
                (o.key, Some(o.sha256), o.bytes)
            }
            None => (keys.raw.clone(), None, bytes),
        })
    };

    let ctx = Arc::new(FileCtx {
        kind: input.kind,
        raw_key: keys.raw.as_str().into(),
        run_id: cfg.run_id.as_str().into(),
        ingested_at_us: now_us(),
        max_line_bytes: cfg.framer.max_line_bytes,
        views: Arc::clone(&cfg.views),
        resources_table: !cfg.views_only,
        events: cfg.kafka.is_some(),
    });
    let consumer = async {
        let mut sinks = FileSinks {
            cfg,
            keys,
            source_uri: format!("urn:fhirhose:source:{}", key_segment(&cfg.source)),
            resources: None,
            deletions: None,
            views: HashMap::new(),
            dead: DeadLetterWriter::new(
                Arc::clone(&store),
                ObjectPath::from(keys.dead_letters.clone()),
            ),
            wm: watermark::AckWatermark::new(resume_through, watermark::CHECKPOINT_INTERVAL),
            checkpoint: checkpoint.clone(),
            topics: HashMap::new(),
            report: FileReport::default(),
            parquet_share: budget::ParquetShare::new(Arc::clone(&cfg.memory)),
        };
        let mut outputs = rx
            .map(|(frame, permit)| {
                let ctx = Arc::clone(&ctx);
                tokio::task::spawn_blocking(move || {
                    let out = match frame {
                        Frame::Block(b) => process_block(&ctx, b),
                        Frame::Oversize(o) => process_oversize(&ctx, &o),
                    };
                    (out, permit)
                })
            })
            .buffered(cfg.workers.max(1));
        let mut consumed = Ok(());
        while let Some(out) = outputs.next().await {
            consumed = match out {
                // The permit is returned once the sinks have taken the block's rows.
                Ok((out, _permit)) => sinks.consume(out).await,
                Err(e) => Err(FileError::Worker(e.to_string())),
            };
            if consumed.is_err() {
                break;
            }
        }
        if let Err(e) = consumed {
            // Keep what was acknowledged so far for the next attempt (best effort).
            let _ = sinks.checkpoint(true);
            return Err(e);
        }
        sinks.finish().await
    };

    let ((raw_key, sha256, bytes), file_report) = tokio::try_join!(reader, consumer)?;
    let input_name = report.input.clone();
    *report = FileReport {
        input: input_name,
        raw_key: raw_key.clone(),
        sha256: sha256.clone(),
        bytes,
        ..file_report
    };
    cfg.state.file_done(&FileRecord {
        lake: cfg.lake.url.clone(),
        fingerprint: input.fingerprint.clone(),
        input: input.display(),
        raw_key,
        status: FileStatus::Done,
        sha256,
        bytes,
        lines: report.lines,
        resources: report.resources,
        dead_letters: report.dead_letters_by_reason.values().sum(),
        run_id: cfg.run_id.clone(),
        error: None,
    })?;
    Ok(())
}

/// The bytes a frame holds while in flight (an oversize line is reported, not held).
fn frame_bytes(f: &Frame) -> usize {
    match f {
        Frame::Block(b) => b.data.len(),
        Frame::Oversize(_) => 0,
    }
}

fn now_us() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(0)
}
