//! Operating a run: the Prometheus endpoint (`--metrics-addr`), progress display
//! (`--progress`), and the glue that turns pipeline outcomes into metrics.
//!
//! A command calls [`Session::start`] once, after its source is known: it names the
//! default `source` label (one process, one source), binds the metrics endpoint and starts
//! the progress ticker; dropping the session stops both. The registry itself lives in the
//! `fhirhose-metrics` crate so that the transport, the bulk client and the Kafka producer
//! record into the same families (see `fhirhose_metrics::catalogue`).
//!
//! Nothing here prints or serves PHI: metrics and progress carry counts, sizes, rates,
//! types, reasons and the numeric part of `X-Progress` only.

pub mod progress;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::pipeline::FileReport;

/// Operating options shared by `ingest`, `export`, `fetch` and `demo`.
#[derive(Debug, Args, Clone, Default)]
pub struct ObserveArgs {
    /// Serve Prometheus metrics on this address (GET /metrics) while the command runs,
    /// e.g. 127.0.0.1:9464.
    #[arg(long, env = "FHIRHOSE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Progress display on stderr: `auto` (bars on a terminal, periodic log lines
    /// otherwise), `bar`, `plain` or `off`.
    #[arg(long, env = "FHIRHOSE_PROGRESS", value_enum, default_value_t = progress::Mode::Auto)]
    pub progress: progress::Mode,
    /// Seconds between plain progress lines (when stderr is not a terminal).
    #[arg(long, env = "FHIRHOSE_PROGRESS_INTERVAL", default_value_t = 10.0)]
    pub progress_interval: f64,
}

impl ObserveArgs {
    /// The arguments that reproduce these options (for commands that run others).
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = vec![
            "--progress".to_owned(),
            self.progress.as_str().to_owned(),
            "--progress-interval".to_owned(),
            self.progress_interval.to_string(),
        ];
        if let Some(a) = self.metrics_addr {
            v.push("--metrics-addr".into());
            v.push(a.to_string());
        }
        v
    }
}

/// A running command's metrics endpoint and progress display; both stop when dropped.
#[derive(Debug)]
pub struct Session {
    server: Option<server::MetricsServer>,
    _progress: progress::Ticker,
}

impl Session {
    /// Sets the default `source` label, binds the metrics endpoint and starts progress.
    pub async fn start(source: &str, args: &ObserveArgs) -> anyhow::Result<Self> {
        fhirhose_metrics::set_default_source(source);
        let server = match args.metrics_addr {
            Some(addr) => Some(server::MetricsServer::bind(addr).await?),
            None => None,
        };
        let interval = if args.progress_interval.is_finite() && args.progress_interval > 0.0 {
            Duration::from_secs_f64(args.progress_interval)
        } else {
            return Err(
                crate::cli::UsageError("--progress-interval must be positive".into()).into(),
            );
        };
        Ok(Self {
            server,
            _progress: progress::Ticker::start(args.progress, interval),
        })
    }

    /// The bound metrics address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(server::MetricsServer::addr)
    }
}

/// Records a finished file task in the metrics and the progress display; returns it.
pub fn file_finished(source: &str, r: FileReport) -> FileReport {
    use fhirhose_metrics::catalogue::{
        DEAD_LETTERS, FILES, INGESTED_BYTES, PARQUET_ROWS, RESOURCES,
    };
    let outcome = match r.status.as_str() {
        "done" => "done",
        "skipped" => "skipped",
        _ => "failed",
    };
    FILES.inc(&[source, outcome]);
    progress::file_finished(outcome == "failed");
    if outcome == "done" {
        INGESTED_BYTES.add(&[source], r.bytes);
        for (t, n) in &r.resources_by_type {
            RESOURCES.add(&[source, t], *n);
        }
        for (reason, n) in &r.dead_letters_by_reason {
            DEAD_LETTERS.add(&[source, reason], *n);
        }
        for (table, n) in &r.parquet_rows_by_table {
            PARQUET_ROWS.add(&[source, table], *n);
        }
    }
    r
}

/// The metrics snapshot as JSON (for `--summary-json`).
pub fn snapshot_json() -> serde_json::Value {
    serde_json::to_value(fhirhose_metrics::snapshot()).unwrap_or_default()
}

/// Families whose numbers the human summary already shows elsewhere.
const SHOWN_ELSEWHERE: &[&str] = &[
    "fhirhose_resources_total",
    "fhirhose_parquet_rows_total",
    "fhirhose_dead_letters_total",
    "fhirhose_files_total",
    "fhirhose_ingested_bytes_total",
    "fhirhose_download_bytes_total",
];

/// The operational metrics as lines for the human summary (`name{labels} value`, the
/// `source` label left out; histograms as count and sum).
pub fn summary_lines() -> Vec<String> {
    let mut out = Vec::new();
    for (name, series) in fhirhose_metrics::snapshot() {
        if SHOWN_ELSEWHERE.contains(&name.as_str()) {
            continue;
        }
        for s in series {
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "source")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let l = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let v = match (s.value, s.count, s.sum) {
                (Some(v), _, _) => v.to_string(),
                (None, Some(c), Some(sum)) => format!("{c} (sum {sum:.3} s)"),
                _ => continue,
            };
            out.push(format!("{name}{l} {v}"));
        }
    }
    out
}
