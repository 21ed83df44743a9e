//! `fhirhose views …`: the SQL-on-FHIR conformance runner and ad-hoc view evaluation.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::RecordBatch;
use clap::{Args, Subcommand, ValueEnum};
use fhirhose_normalize::{conformance, CompiledView};
use tokio::io::AsyncBufReadExt;

use crate::cli::UsageError;

/// `fhirhose views`.
#[derive(Debug, Args)]
pub struct ViewsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ViewsCommand,
}

/// Subcommands of `views`.
#[derive(Debug, Subcommand)]
pub enum ViewsCommand {
    /// Run every SQL-on-FHIR test file in DIR and write the official test report.
    Conformance {
        /// Folder of test files (`*.json`).
        dir: PathBuf,
        /// Where to write the report JSON.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Evaluate one ViewDefinition over NDJSON files.
    Run {
        /// The ViewDefinition (JSON).
        view: PathBuf,
        /// NDJSON inputs (`.ndjson` or `.ndjson.gz`).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Ndjson)]
        format: Format,
        /// Output file (default: stdout; required for parquet).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the canonical views with their versions.
    List,
}

/// Output formats of `views run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per row.
    Ndjson,
    /// Comma-separated, with a header (lists and objects as JSON text).
    Csv,
    /// Parquet (zstd).
    Parquet,
}

/// Runs `views`.
pub async fn run(a: ViewsArgs) -> anyhow::Result<u8> {
    match a.command {
        ViewsCommand::Conformance { dir, report } => {
            if !dir.is_dir() {
                return Err(UsageError(format!("{} is not a folder", dir.display())).into());
            }
            let r = conformance::run_dir(&dir)?;
            for f in &r.files {
                let passed = f.tests.iter().filter(|t| t.passed).count();
                println!(
                    "{:<28} {:>3} passed {:>3} failed",
                    f.file,
                    passed,
                    f.tests.len() - passed
                );
                for t in f.tests.iter().filter(|t| !t.passed) {
                    println!("    FAIL {}: {}", t.name, t.reason.as_deref().unwrap_or(""));
                }
            }
            println!("conformance: {}/{} tests passed", r.passed(), r.total());
            if let Some(p) = report {
                std::fs::write(&p, serde_json::to_vec_pretty(&r.to_official_json())?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            Ok(if r.passed() == r.total() { 0 } else { 4 })
        }
        ViewsCommand::Run {
            view,
            inputs,
            format,
            out,
        } => run_view(view, inputs, format, out).await,
        ViewsCommand::List => {
            let set = crate::pipeline::ViewSet::canonical()?;
            for (name, version) in set.names() {
                println!("{name:<28} {version}");
            }
            Ok(0)
        }
    }
}

async fn run_view(
    view: PathBuf,
    inputs: Vec<PathBuf>,
    format: Format,
    out: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&view)
        .map_err(|e| UsageError(format!("view {} cannot be read: {e}", view.display())))?;
    let view = Arc::new(
        CompiledView::from_json_slice(&bytes)
            .map_err(|e| UsageError(format!("view {} is invalid: {e}", view.display())))?,
    );
    let mut builder = view.builder();
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut bad = 0u64;
    for input in &inputs {
        for file in
            fhirhose_ingest::source::list_local(input).map_err(|e| UsageError(e.to_string()))?
        {
            let reader = tokio::io::BufReader::new(file.open().await?);
            let mut lines = reader.lines();
            while let Some(line) = lines.next_line().await? {
                if line.trim().is_empty() {
                    continue;
                }
                let mut buf = line.into_bytes();
                match simd_json::to_borrowed_value(&mut buf) {
                    Ok(v) => {
                        if builder.append(&v).is_err() {
                            bad += 1;
                        }
                    }
                    Err(_) => bad += 1,
                }
                if builder.len() >= 64 * 1024 {
                    batches.push(builder.finish_batch()?);
                }
            }
        }
    }
    batches.push(builder.finish_batch()?);
    if bad > 0 {
        eprintln!("warning: {bad} lines could not be parsed or evaluated and were skipped");
    }
    match format {
        Format::Parquet => {
            let path = out.ok_or_else(|| UsageError("--format parquet needs --out FILE".into()))?;
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(file, view.schema(), Some(props))?;
            for b in &batches {
                w.write(b)?;
            }
            w.close()?;
        }
        Format::Ndjson | Format::Csv => {
            let mut sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let names: Vec<String> = view.fields().iter().map(|f| f.name().clone()).collect();
            if format == Format::Csv {
                writeln!(
                    sink,
                    "{}",
                    names
                        .iter()
                        .map(|n| csv_field(n))
                        .collect::<Vec<_>>()
                        .join(",")
                )?;
            }
            for b in &batches {
                for row in conformance::json_rows(&view, b.columns()) {
                    if format == Format::Ndjson {
                        serde_json::to_writer(&mut sink, &row)?;
                        writeln!(sink)?;
                    } else {
                        let cells: Vec<String> = names
                            .iter()
                            .map(|n| match row.get(n) {
                                None | Some(serde_json::Value::Null) => String::new(),
                                Some(serde_json::Value::String(s)) => csv_field(s),
                                Some(v) => csv_field(&v.to_string()),
                            })
                            .collect();
                        writeln!(sink, "{}", cells.join(","))?;
                    }
                }
            }
            sink.flush()?;
        }
    }
    Ok(0)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
