//! Log setup: one style (lowercase message, structured fields), human on a terminal, JSON
//! lines with `--log-format json`. Logs go to stderr; stdout carries results (summaries).
//!
//! What may be logged is decided where events are written: ids, types, counts, file names,
//! URLs without query strings, error classes. Never resource content, names, identifiers,
//! tokens, assertions, secrets or signed query strings.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive (e.g. `info`,
/// `fhirhose=debug`); `RUST_LOG` wins when set.
pub fn init(format: LogFormat, level: &str) {
    // librdkafka reports every failed connection attempt as an error; fhirhose reports what
    // matters (unreachable brokers, failed deliveries) itself, so its chatter only shows at
    // debug and trace.
    let kafka = if matches!(level, "debug" | "trace") {
        level
    } else {
        "off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,librdkafka={kafka},rdkafka={kafka},fhirhose={level},fhirhose_ingest={level},fhirhose_sinks={level},fhirhose_normalize={level},fhirhose_sandbox={level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
