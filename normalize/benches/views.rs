//! View evaluation throughput over the developer corpus (`tests/data/corpus`, 22.7 MB,
//! 28,695 resources) with the 25 canonical views of `schemas/views/`.
//!
//! Groups:
//! - `all_views_bytes` / `all_views_resources`: the normalize step as the pipeline runs it per
//!   line: `prepare_line` (exact decimals), simd-json parse with reused buffers, then every
//!   view of the line's resource type (one builder per view, batches cut every
//!   [`BATCH_ROWS`] rows). MB/s and resources/s of the same work.
//! - `all_views_eval_only`: the same views over trees parsed beforehand (evaluation and Arrow
//!   building alone).
//! - `per_view`: the `observation` and `patient` views alone over pre-parsed resources of
//!   their type.
//!
//! Run: `cargo bench -p fhirhose-normalize --bench views -- --warm-up-time 1 --measurement-time 5`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use fhirhose_normalize::{prepare_line, CompiledView, ViewBatchBuilder};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// Rows a builder collects before its batch is finished (about the pipeline's block size).
const BATCH_ROWS: usize = 8192;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every corpus line, decompressed, in file order.
fn corpus_lines() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join("tests/data/corpus"))
        .expect("corpus folder")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        let r = BufReader::new(flate2::read::GzDecoder::new(
            fs::File::open(f).expect("corpus file"),
        ));
        lines.extend(
            r.split(b'\n')
                .map(|l| l.expect("corpus line"))
                .filter(|l| !l.is_empty()),
        );
    }
    lines
}

fn canonical_views() -> Vec<CompiledView> {
    let mut paths: Vec<PathBuf> = fs::read_dir(repo().join("schemas/views"))
        .expect("views folder")
        .map(|e| e.expect("views entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| CompiledView::from_json_slice(&fs::read(p).expect("view")).expect("valid view"))
        .collect()
}

/// One builder per view, indexed by resource type, as the pipeline holds them.
struct Builders<'v> {
    builders: Vec<ViewBatchBuilder<'v>>,
    by_type: HashMap<&'v str, Vec<usize>>,
    rows: usize,
}

impl<'v> Builders<'v> {
    fn new(views: &'v [CompiledView]) -> Self {
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            by_type.entry(v.resource()).or_default().push(i);
        }
        Self {
            builders: views.iter().map(CompiledView::builder).collect(),
            by_type,
            rows: 0,
        }
    }

    fn append(&mut self, value: &BorrowedValue<'_>) {
        let Some(t) = value.get_str("resourceType") else {
            return;
        };
        if let Some(idxs) = self.by_type.get(t) {
            for &i in idxs {
                let b = &mut self.builders[i];
                if let Ok(n) = b.append(value) {
                    self.rows += n;
                }
                if b.len() >= BATCH_ROWS {
                    std::hint::black_box(b.finish());
                }
            }
        }
    }

    fn finish(mut self) -> usize {
        for b in &mut self.builders {
            std::hint::black_box(b.finish());
        }
        self.rows
    }
}

fn parse_all(lines: &[Vec<u8>]) -> Vec<Vec<u8>> {
    lines
        .iter()
        .map(|l| {
            let mut p = Vec::with_capacity(l.len() + 16);
            prepare_line(l, &mut p);
            p
        })
        .collect()
}

fn bench_views(c: &mut Criterion) {
    let lines = corpus_lines();
    let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    let views = canonical_views();
    assert_eq!(views.len(), 25, "the canonical views");

    // Parse + evaluate, as the pipeline does per line.
    let run = |lines: &[Vec<u8>]| {
        let mut b = Builders::new(&views);
        let mut scratch = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        for l in lines {
            scratch.clear();
            prepare_line(l, &mut scratch);
            let v = simd_json::to_borrowed_value_with_buffers(&mut scratch, &mut buffers)
                .expect("corpus lines are JSON");
            b.append(&v);
        }
        b.finish()
    };
    let rows = run(&lines);
    eprintln!(
        "corpus: {} resources, {:.1} MB, {} view rows from {} views",
        lines.len(),
        bytes as f64 / 1e6,
        rows,
        views.len()
    );

    for (name, tp) in [
        ("all_views_bytes", Throughput::Bytes(bytes)),
        (
            "all_views_resources",
            Throughput::Elements(lines.len() as u64),
        ),
    ] {
        let mut g = c.benchmark_group(name);
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
        g.throughput(tp);
        g.bench_function("parse_and_evaluate", |bch| bch.iter(|| run(&lines)));
        g.finish();
    }

    // Evaluation alone over trees parsed beforehand.
    let mut prepared = parse_all(&lines);
    let values: Vec<BorrowedValue<'_>> = prepared
        .iter_mut()
        .map(|p| simd_json::to_borrowed_value(p).expect("corpus lines are JSON"))
        .collect();
    {
        let mut g = c.benchmark_group("all_views_eval_only");
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
        g.throughput(Throughput::Elements(values.len() as u64));
        g.bench_function("evaluate", |bch| {
            bch.iter(|| {
                let mut b = Builders::new(&views);
                for v in &values {
                    b.append(v);
                }
                b.finish()
            })
        });
        g.finish();
    }

    let mut g = c.benchmark_group("per_view");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    for name in ["observation", "patient"] {
        let view = views
            .iter()
            .find(|v| v.name() == name)
            .expect("canonical view");
        let of_type: Vec<&BorrowedValue<'_>> = values
            .iter()
            .filter(|v| v.get_str("resourceType") == Some(view.resource()))
            .collect();
        let type_bytes: u64 = lines
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.get_str("resourceType") == Some(view.resource()))
            .map(|(l, _)| l.len() as u64 + 1)
            .sum();
        g.throughput(Throughput::Elements(of_type.len() as u64));
        g.bench_with_input(BenchmarkId::new("resources", name), &of_type, |bch, vs| {
            bch.iter(|| {
                let mut b = view.builder();
                for v in vs {
                    let _ = b.append(v);
                    if b.len() >= BATCH_ROWS {
                        std::hint::black_box(b.finish());
                    }
                }
                std::hint::black_box(b.finish())
            })
        });
        g.throughput(Throughput::Bytes(type_bytes));
        g.bench_with_input(BenchmarkId::new("bytes", name), &of_type, |bch, vs| {
            bch.iter(|| {
                let mut b = view.builder();
                for v in vs {
                    let _ = b.append(v);
                    if b.len() >= BATCH_ROWS {
                        std::hint::black_box(b.finish());
                    }
                }
                std::hint::black_box(b.finish())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_views);
criterion_main!(benches);
