//! Command-line interface.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fhirhose_ingest::framing::{default_block_bytes, default_max_line_bytes, FramerConfig};
use fhirhose_ingest::source::{list_local, list_objects, InputFile};
use fhirhose_ingest::state::{RunRecord, StateStore};
use fhirhose_sinks::kafka::{KafkaConfig, Publisher};
use fhirhose_sinks::parquet::ParquetConfig;

use crate::lake::{input_spec, is_inside, InputSpec, Lake};
use crate::logging::LogFormat;
use crate::pipeline::{self, IngestConfig, RunSummary, ViewSet};

/// fhirhose: land FHIR data from EHRs as raw files, Parquet tables and Kafka events.
#[derive(Debug, Parser)]
#[command(name = "fhirhose", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FHIRHOSE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or an `EnvFilter` directive.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "FHIRHOSE_LOG_LEVEL"
    )]
    pub log_level: String,
    /// A TOML configuration file (see `fhirhose config example`); flags and `FHIRHOSE_*`
    /// variables win over it.
    #[arg(long, global = true, env = "FHIRHOSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest NDJSON files (local files or folders, file:// or s3:// URLs) into the lake and Kafka.
    Ingest(Box<IngestArgs>),
    /// Run the whole pipeline on built-in sample data, with no set-up.
    Demo(DemoArgs),
    /// Show runs and files from the state store.
    Status(StatusArgs),
    /// SQL-on-FHIR views: conformance suite, ad-hoc evaluation, the canonical list.
    Views(crate::views_cmd::ViewsArgs),
    /// Client keys for SMART Backend Services.
    Keys(crate::tools_cmd::KeysArgs),
    /// Run the local SMART + Bulk Data sandbox EHR until Ctrl-C.
    Sandbox(crate::tools_cmd::SandboxArgs),
    /// Bulk Data $export from a FHIR server into the lake (kick-off, poll, resumable downloads).
    Export(Box<crate::export::ExportArgs>),
    /// FHIR search paging (real-time, patient-level reads) into the lake.
    Fetch(Box<crate::fetch::FetchArgs>),
    /// Rebuild view tables from the raw store after a ViewDefinition changed (no EHR, no Kafka).
    Reprocess(Box<crate::reprocess::ReprocessArgs>),
    /// SMART App Launch login (PKCE), revocation, and a backend-services token check.
    Auth(crate::auth_cmd::AuthCmdArgs),
    /// List authorization audit events (grants, refreshes, failures, revocations, denials).
    Audit(crate::audit_cmd::AuditArgs),
    /// A job or run report (counts, timings, retries, waits, a timeline) from the state database.
    Report(crate::report_cmd::ReportArgs),
    /// The configuration file: `check` it, or print an `example`.
    Config(crate::config::ConfigArgs),
}

/// Options shared by commands that write a lake.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// The lake: a folder, file:// URL or s3://bucket/prefix (S3 settings from AWS_* variables).
    #[arg(long, env = "FHIRHOSE_LAKE", default_value = "./fhirhose-lake")]
    pub lake: String,
    /// Kafka bootstrap servers; without them, no events are published.
    #[arg(long, env = "FHIRHOSE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic prefix: events go to `<prefix>.<ResourceType>`.
    #[arg(long, env = "FHIRHOSE_TOPIC_PREFIX", default_value = "fhir")]
    pub topic_prefix: String,
    /// Kafka compression codec.
    #[arg(long, env = "FHIRHOSE_KAFKA_COMPRESSION", default_value = "zstd")]
    pub kafka_compression: String,
    /// Do not create missing topics (for clusters that auto-create them).
    #[arg(long, env = "FHIRHOSE_NO_CREATE_TOPICS")]
    pub no_create_topics: bool,
    /// Source name (tenant or EHR); part of raw keys and `ce_source`.
    #[arg(long, env = "FHIRHOSE_SOURCE", default_value = "local")]
    pub source: String,
    /// State database (SQLite).
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
    /// Write the run summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Longest accepted NDJSON line in bytes; longer lines are dead-lettered.
    #[arg(long, env = "FHIRHOSE_MAX_LINE_BYTES", default_value_t = default_max_line_bytes())]
    pub max_line_bytes: usize,
    /// Files processed at once.
    #[arg(long, env = "FHIRHOSE_FILE_CONCURRENCY", default_value_t = 2)]
    pub file_concurrency: usize,
    /// Parsing workers per file (default: the number of cores).
    #[arg(long, env = "FHIRHOSE_WORKERS")]
    pub workers: Option<usize>,
    /// Process files again even if an earlier run landed them.
    #[arg(long)]
    pub force: bool,
    /// Exit with code 5 when any line was dead-lettered.
    #[arg(long, env = "FHIRHOSE_STRICT")]
    pub strict: bool,
    /// A folder of ViewDefinitions (*.json) to run besides the canonical ones (a view with a
    /// canonical view's name replaces it).
    #[arg(long, env = "FHIRHOSE_VIEWS")]
    pub views: Option<PathBuf>,
    /// Raw objects up to this size are written with one create-only PUT; larger ones are
    /// uploaded in parts and moved into place with a create-only copy.
    #[arg(long, hide = true, default_value_t = fhirhose_sinks::raw::default_inline_limit())]
    pub raw_inline_bytes: usize,
    /// Do not run the canonical views (only `resources` and `--views` tables are written).
    #[arg(long, env = "FHIRHOSE_NO_CANONICAL_VIEWS")]
    pub no_canonical_views: bool,
    /// Metrics endpoint and progress display.
    #[command(flatten)]
    pub observe: crate::observe::ObserveArgs,
}

/// `fhirhose ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Input files, folders or URLs.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Write the view tables only, like a DuckDB conversion of files you keep elsewhere: no
    /// raw copy, no `resources` table, no Kafka events, no state (every file is processed).
    /// Dead letters are still written; `_raw_key` and dead letters point to the input file.
    #[arg(long)]
    pub views_only: bool,
    /// Output options.
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `fhirhose demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo's lake and state.
    #[arg(long, default_value = "./fhirhose-demo")]
    pub dir: PathBuf,
    /// Kafka brokers; by default an in-process mock cluster is used.
    #[arg(long, env = "FHIRHOSE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Synthetic patients in the sandbox EHR.
    #[arg(long, default_value_t = 50)]
    pub patients: usize,
    /// Metrics endpoint and progress display.
    #[command(flatten)]
    pub observe: crate::observe::ObserveArgs,
}

/// `fhirhose status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// State database.
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
    /// Runs to show.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// One export job: its files, progress and what it waits for.
    pub job: Option<String>,
}

/// A usage or configuration error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Maps an error to the documented exit code: 2 usage or configuration, 3 authorization,
/// 4 anything else (server or fatal). Commands return 0, 4 or 5 themselves.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    use fhirhose_ingest::auth::{AuthError, AuthErrorKind};
    use fhirhose_ingest::http::{HttpError, HttpErrorKind};
    let usage = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::config::ConfigError>().is_some()
            || c.downcast_ref::<AuthError>()
                .is_some_and(|a| a.kind() == AuthErrorKind::Config)
    };
    let auth = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<AuthError>().is_some()
            || c.downcast_ref::<HttpError>().is_some_and(|h| {
                matches!(h.kind(), HttpErrorKind::Auth | HttpErrorKind::Unauthorized)
            })
    };
    if e.chain().any(usage) {
        2
    } else if e.chain().any(auth) {
        3
    } else {
        4
    }
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = cli.config;
    match cli.command {
        Command::Ingest(a) => ingest(*a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Status(a) => status(a),
        Command::Views(a) => crate::views_cmd::run(a).await,
        Command::Keys(a) => crate::tools_cmd::keys(a),
        Command::Sandbox(a) => crate::tools_cmd::sandbox(a).await,
        Command::Export(mut a) => {
            a.auth.config = config;
            crate::export::run(*a).await
        }
        Command::Fetch(mut a) => {
            a.auth.config = config;
            crate::fetch::run(*a).await
        }
        Command::Reprocess(a) => crate::reprocess::run(*a).await,
        Command::Auth(a) => crate::auth_cmd::run(a).await,
        Command::Audit(a) => crate::audit_cmd::run(a),
        Command::Report(a) => crate::report_cmd::run(a).await,
        Command::Config(a) => crate::config::run(a, config.as_deref()),
    }
}

/// Lists the files named by the inputs.
pub async fn resolve_inputs(inputs: &[String], lake: &Lake) -> anyhow::Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for arg in inputs {
        match input_spec(arg).map_err(|e| UsageError(e.to_string()))? {
            InputSpec::Local(p) => {
                let listed = list_local(&p).map_err(|e| UsageError(e.to_string()))?;
                files.extend(listed.into_iter().filter(|f| {
                    match (&f.location, &lake.local_root) {
                        (fhirhose_ingest::source::Location::Local(fp), Some(root)) => {
                            !is_inside(fp, root)
                        }
                        _ => true,
                    }
                }));
            }
            InputSpec::Object {
                store,
                prefix,
                base,
            } => {
                files.extend(
                    list_objects(store, &prefix, &base)
                        .await
                        .with_context(|| format!("cannot list input {arg}"))?,
                );
            }
        }
    }
    // The same file named twice is ingested once.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.fingerprint.clone()));
    Ok(files)
}

/// Builds the ingest configuration shared by `ingest` and `demo`.
pub async fn build_config(
    out: &OutputArgs,
    kafka: Option<Arc<Publisher>>,
) -> anyhow::Result<IngestConfig> {
    build_config_with(out, kafka, false).await
}

/// [`build_config`], or for a views-only run (`fhirhose ingest --views-only`): an in-memory
/// state store (nothing is recorded, every file is processed) and no raw copy.
async fn build_config_with(
    out: &OutputArgs,
    kafka: Option<Arc<Publisher>>,
    views_only: bool,
) -> anyhow::Result<IngestConfig> {
    if out.max_line_bytes == 0 {
        return Err(UsageError("--max-line-bytes must be at least 1".into()).into());
    }
    let lake = Lake::open(&out.lake).map_err(|e| UsageError(format!("{e:#}")))?;
    lake.check_writable().await?;
    let state = if views_only {
        StateStore::in_memory()?
    } else {
        StateStore::open(&out.state)?
    };
    let workers = out
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    Ok(IngestConfig {
        lake,
        source: out.source.clone(),
        run_id: new_run_id(),
        kafka,
        state: Arc::new(state),
        framer: FramerConfig {
            max_line_bytes: out.max_line_bytes,
            block_bytes: default_block_bytes(),
        },
        parquet: ParquetConfig::default(),
        file_concurrency: out.file_concurrency.max(1),
        workers: workers.max(1),
        memory: Arc::new(pipeline::budget::MemoryBudget::for_workers(
            workers.max(1),
            default_block_bytes(),
        )),
        views: Arc::new(load_views(out)?),
        delivery_timeout: pipeline::default_delivery_timeout(),
        force: out.force || views_only,
        raw_inline_bytes: out.raw_inline_bytes,
        lineage: pipeline::RunLineage::default(),
        views_only,
    })
}

/// The views a run evaluates: canonical ones unless disabled, plus `--views`.
pub fn load_views(out: &OutputArgs) -> anyhow::Result<ViewSet> {
    let mut views = if out.no_canonical_views {
        ViewSet::empty()
    } else {
        ViewSet::canonical()?
    };
    if let Some(dir) = &out.views {
        views
            .add_dir(dir)
            .map_err(|e| UsageError(format!("{e:#}")))?;
    }
    Ok(views)
}

/// A sortable, unique run id: UTC time plus a random suffix.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", now.format(&fmt).unwrap_or_default(), &rand[..8])
}

/// Connects to Kafka when brokers are given.
pub async fn connect_kafka(out: &OutputArgs) -> anyhow::Result<Option<Arc<Publisher>>> {
    let Some(brokers) = out
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    else {
        return Ok(None);
    };
    let mut kc = KafkaConfig::new(brokers);
    kc.topic_prefix = out.topic_prefix.clone();
    kc.compression = out.kafka_compression.clone();
    kc.create_topics = !out.no_create_topics;
    Ok(Some(Arc::new(Publisher::connect(kc).await?)))
}

/// Runs an ingest and records it in the state store.
pub async fn run_and_record(
    cfg: IngestConfig,
    files: Vec<InputFile>,
    kind: &str,
) -> anyhow::Result<RunSummary> {
    let cfg = Arc::new(cfg);
    cfg.state.begin_run(&RunRecord {
        run_id: cfg.run_id.clone(),
        kind: kind.into(),
        source: cfg.source.clone(),
        lake: cfg.lake.url.clone(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        finished_at: None,
        status: "running".into(),
        summary: None,
    })?;
    crate::observe::progress::begin_landing(files.len() as u64, files.iter().map(|f| f.size).sum());
    let summary = pipeline::run_ingest(Arc::clone(&cfg), files).await;
    crate::tables::publish_ingest(&cfg.lake, &cfg.views, &summary).await?;
    let mut brief = summary.clone();
    brief.file_reports.clear();
    cfg.state.finish_run(
        &cfg.run_id,
        &summary.status,
        &serde_json::to_string(&brief)?,
    )?;
    if let Some(k) = &cfg.kafka {
        k.flush(Duration::from_secs(30)).await.ok();
    }
    Ok(summary)
}

async fn ingest(a: IngestArgs) -> anyhow::Result<u8> {
    let _observe = crate::observe::Session::start(&a.out.source, &a.out.observe).await?;
    if a.views_only {
        if a.out
            .kafka_brokers
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty())
        {
            return Err(UsageError(
                "--views-only publishes no events: drop --kafka-brokers (or unset FHIRHOSE_KAFKA_BROKERS)"
                    .into(),
            )
            .into());
        }
        if a.out.no_canonical_views && a.out.views.is_none() {
            return Err(UsageError(
                "--views-only with --no-canonical-views and no --views writes nothing".into(),
            )
            .into());
        }
    }
    let kafka = if a.views_only {
        None
    } else {
        connect_kafka(&a.out).await?
    };
    let cfg = build_config_with(&a.out, kafka, a.views_only).await?;
    let files = resolve_inputs(&a.inputs, &cfg.lake).await?;
    let summary = run_and_record(cfg, files, "ingest").await?;
    finish(&summary, a.out.summary_json.as_deref(), a.out.strict)
}

/// Prints the summary, writes `--summary-json`, and picks the exit code.
pub fn finish(
    summary: &RunSummary,
    json: Option<&std::path::Path>,
    strict: bool,
) -> anyhow::Result<u8> {
    print_summary(summary);
    if let Some(p) = json {
        let mut v = serde_json::to_value(summary)?;
        v["metrics"] = crate::observe::snapshot_json();
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write summary to {}", p.display()))?;
    }
    Ok(if summary.files_failed > 0 {
        4
    } else if strict && summary.dead_letters > 0 {
        5
    } else {
        0
    })
}

/// Human summary on stdout.
pub fn print_summary(s: &RunSummary) {
    println!("run {} ({}) into {}", s.run_id, s.status, s.lake);
    println!(
        "  files: {} given, {} landed, {} skipped (already landed), {} failed",
        s.files, s.files_done, s.files_skipped, s.files_failed
    );
    println!(
        "  read: {:.1} MB, {} lines, {} resources, {} dead letters in {:.2} s ({:.1} MB/s, {:.0} resources/s)",
        s.bytes as f64 / 1e6,
        s.lines,
        s.resources,
        s.dead_letters,
        s.wall_time_s,
        s.mb_per_s,
        s.resources_per_s
    );
    if !s.resources_by_type.is_empty() {
        println!("  resources by type:");
        for (t, n) in &s.resources_by_type {
            println!("    {t:<28} {n:>10}");
        }
    }
    if !s.dead_letters_by_reason.is_empty() {
        println!("  dead letters by reason:");
        for (t, n) in &s.dead_letters_by_reason {
            println!("    {t:<28} {n:>10}");
        }
    }
    if !s.parquet_rows_by_table.is_empty() {
        println!("  parquet rows by table:");
        for (t, n) in &s.parquet_rows_by_table {
            println!("    {t:<28} {n:>10}");
        }
    }
    if !s.deleted_by_type.is_empty() {
        println!("  deletions by type:");
        for (t, n) in &s.deleted_by_type {
            println!("    {t:<28} {n:>10}");
        }
    }
    if !s.outcomes_by_severity.is_empty() {
        println!("  server-reported issues (error files) by severity:");
        for (t, n) in &s.outcomes_by_severity {
            println!("    {t:<28} {n:>10}");
        }
    }
    if s.view_errors > 0 {
        println!(
            "  view errors: {} resources could not be evaluated by a view (landed everywhere else)",
            s.view_errors
        );
    }
    if s.events_published {
        println!("  events by topic:");
        for (t, n) in &s.events_by_topic {
            println!("    {t:<28} {n:>10}");
        }
    } else {
        println!("  events: none published (no Kafka brokers configured)");
    }
    let metrics = crate::observe::summary_lines();
    if !metrics.is_empty() {
        println!("  metrics:");
        for m in metrics {
            println!("    {m}");
        }
    }
    for f in s.file_reports.iter().filter(|f| f.status == "failed") {
        println!(
            "  FAILED {}: {}",
            f.input,
            fhirhose_ingest::http::redact_text(f.error.as_deref().unwrap_or("unknown error"))
        );
    }
}

fn status(a: StatusArgs) -> anyhow::Result<u8> {
    if !a.state.exists() {
        return Err(UsageError(format!("no state database at {}", a.state.display())).into());
    }
    if a.job.is_some() {
        return crate::export::list_jobs(&a.state, a.job.as_deref());
    }
    let state = StateStore::open(&a.state)?;
    println!("runs:");
    for r in state.runs(a.limit)? {
        println!(
            "{}  {:<8} {:<8} source={} lake={} started={} finished={}",
            r.run_id,
            r.kind,
            r.status,
            r.source,
            r.lake,
            r.started_at,
            r.finished_at.as_deref().unwrap_or("-")
        );
        for f in state
            .files(&r.lake)?
            .iter()
            .filter(|f| f.run_id == r.run_id)
        {
            println!(
                "    {:<7} {} ({} resources, {} dead letters){}",
                f.status.name(),
                f.input,
                f.resources,
                f.dead_letters,
                f.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    println!();
    println!("export jobs:");
    crate::export::list_jobs(&a.state, None)?;
    Ok(0)
}
