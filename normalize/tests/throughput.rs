//! Rough throughput probe: simd-json parse time vs view evaluation time over the corpus.
//! Ignored by default; run with
//! `cargo test --release -p fhirhose-normalize --test throughput -- --ignored --nocapture`.
//!
//! Environment knobs: `PER_VIEW=1` per-view timing; `ONLY=a,b` only those views;
//! `TYPE=Observation` only resources of that type; `LIMIT=n` about n resources (every
//! k-th line); `ROUNDS=n` passes (default 3); `SKIP_VIEWS=1` parse only. Wall-clock
//! numbers are noisy on shared machines; for comparisons run under
//! `valgrind --tool=callgrind` with `ROUNDS=1 LIMIT=3000` and
//! `--toggle-collect='*ViewGroup*append*'` (views), `'*BatchState::append'` (views with
//! `SEPARATE=1`), `'*Deserializer::from_slice_with_buffers*'` (tape build, three passes) or
//! `'*prepare_line*'` (two passes). `SEPARATE=1` uses one builder per view instead of a
//! `ViewGroup` per resource type. `PLAIN=1` skips
//! `prepare_line` in the view loop.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use fhirhose_normalize::{CompiledView, ViewGroup};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
#[ignore = "timing probe, run in release mode"]
fn parse_vs_view_cost() {
    let mut lines = Vec::new();
    let mut files: Vec<PathBuf> = fs::read_dir(repo().join("tests/data/corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    files.sort();
    for f in files {
        let r = BufReader::new(flate2::read::GzDecoder::new(fs::File::open(f).unwrap()));
        lines.extend(r.split(b'\n').map(Result::unwrap).filter(|l| !l.is_empty()));
    }
    let mut views: Vec<PathBuf> = fs::read_dir(repo().join("schemas/views"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    views.sort();
    // ONLY=a,b restricts the probe to the named views.
    let only: Option<Vec<String>> = std::env::var("ONLY")
        .ok()
        .map(|o| o.split(',').map(str::to_owned).collect());
    let views: Vec<Arc<CompiledView>> = views
        .iter()
        .map(|p| Arc::new(CompiledView::from_json_slice(&fs::read(p).unwrap()).unwrap()))
        .filter(|v| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == v.name()))
        })
        .collect();
    let mut builders: Vec<_> = views.iter().map(|v| v.builder()).collect();
    let mut by_type: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, v) in views.iter().enumerate() {
        by_type.entry(v.resource()).or_default().push(i);
    }
    let (mut parse, mut eval, mut copy) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut rows = 0;
    let mut per_view = vec![Duration::ZERO; views.len()];
    // PER_VIEW=1 times each view separately (adds clock overhead to the total).
    let per_view_timing = std::env::var_os("PER_VIEW").is_some();
    // SEPARATE=1 uses one builder per view instead of a `ViewGroup` per resource type.
    let grouped = std::env::var_os("SEPARATE").is_none() && !per_view_timing;
    let mut groups = ViewGroup::group_all(views.iter().cloned());
    let group_of: std::collections::HashMap<String, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.resource().to_owned(), i))
        .collect();
    // SKIP_VIEWS=1 parses only: compare instruction counts (`perf stat`) with and without
    // to get the view cost on a loaded machine.
    let skip_views = std::env::var_os("SKIP_VIEWS").is_some();
    let mut buf = Vec::new();
    // ROUNDS and LIMIT shrink the run for instruction counting under callgrind.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // TYPE=Observation keeps only lines of that resource type.
    if let Ok(t) = std::env::var("TYPE") {
        let needle = format!("\"resourceType\":\"{t}\"");
        lines.retain(|l| l.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
    if let Some(limit) = std::env::var("LIMIT")
        .ok()
        .and_then(|l| l.parse::<usize>().ok())
    {
        // Keep a mix of resource types: every n-th line.
        let step = (lines.len() / limit).max(1);
        lines = lines.into_iter().step_by(step).collect();
    }
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut buffers = simd_json::Buffers::default();
    // Baselines, each in its own loop: the tape parse (the ceiling), the
    // BorrowedValue parse the engine needs, and the same with `prepare_line`.
    let mut tape_t = Duration::ZERO;
    let mut prep_t = Duration::ZERO;
    for _ in 0..rounds {
        for l in &lines {
            buf.clear();
            buf.extend_from_slice(l);
            let t0 = Instant::now();
            let tape = simd_json::to_tape_with_buffers(&mut buf, &mut buffers).unwrap();
            std::hint::black_box(&tape);
            drop(tape);
            tape_t += t0.elapsed();
        }
        for l in &lines {
            buf.clear();
            let t0 = Instant::now();
            fhirhose_normalize::prepare_line(l, &mut buf);
            let v = simd_json::to_borrowed_value_with_buffers(&mut buf, &mut buffers).unwrap();
            std::hint::black_box(&v);
            drop(v);
            prep_t += t0.elapsed();
        }
    }
    // PLAIN=1 evaluates unprepared lines (f64 decimals).
    let prepare = std::env::var_os("PLAIN").is_none();
    for _ in 0..rounds {
        for l in &lines {
            buf.clear();
            let t0 = Instant::now();
            if prepare {
                fhirhose_normalize::prepare_line(l, &mut buf);
            } else {
                buf.extend_from_slice(l);
            }
            let tp = Instant::now();
            let v = simd_json::to_borrowed_value_with_buffers(&mut buf, &mut buffers).unwrap();
            let t1 = Instant::now();
            if skip_views {
                std::hint::black_box(&v);
            } else if per_view_timing {
                for (i, b) in builders.iter_mut().enumerate() {
                    let t = Instant::now();
                    rows += b.append(&v).unwrap();
                    per_view[i] += t.elapsed();
                }
            } else if grouped {
                let rt = match &v {
                    simd_json::BorrowedValue::Object(o) => match o.get("resourceType") {
                        Some(simd_json::BorrowedValue::String(s)) => s.as_ref(),
                        _ => "",
                    },
                    _ => "",
                };
                if let Some(&g) = group_of.get(rt) {
                    for r in groups[g].append(&v) {
                        rows += r.as_ref().unwrap();
                    }
                }
            } else {
                // Dispatch on the resource type, as the pipeline does.
                let rt = match &v {
                    simd_json::BorrowedValue::Object(o) => match o.get("resourceType") {
                        Some(simd_json::BorrowedValue::String(s)) => s.as_ref(),
                        _ => "",
                    },
                    _ => "",
                };
                for &i in by_type.get(rt).map_or(&[][..], Vec::as_slice) {
                    rows += builders[i].append(&v).unwrap();
                }
            }
            eval += t1.elapsed();
            parse += t1 - tp;
            copy += tp - t0;
        }
        for b in &mut builders {
            b.finish();
        }
        for g in &mut groups {
            for i in 0..g.views().len() {
                g.finish(i);
            }
        }
    }
    let mb = rounds as f64 * bytes as f64 / 1e6;
    let n = (rounds * lines.len()) as f64;
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / n;
    eprintln!(
        "{} resources x{rounds}, {mb:.1} MB, {rows} rows\n  tape parse      {:>7.0} ns/resource ({:.0} MB/s)\n  borrowed parse  {:>7.0} ns/resource ({:.0} MB/s)\n  prepare+parse   {:>7.0} ns/resource\n  {} views        {:>7.0} ns/resource (views / borrowed parse {:.2})\n  line copy       {:>7.0} ns/resource\n  copy+parse+views = {:.0}% of the tape ceiling (Parquet not included)",
        lines.len(),
        ns(tape_t),
        mb / tape_t.as_secs_f64(),
        ns(parse),
        mb / parse.as_secs_f64(),
        ns(prep_t),
        views.len(),
        ns(eval),
        eval.as_secs_f64() / parse.as_secs_f64(),
        ns(copy),
        100.0 * tape_t.as_secs_f64() / (copy + parse + eval).as_secs_f64(),
    );
    for (v, t) in views.iter().zip(&per_view).filter(|_| per_view_timing) {
        eprintln!("  {:<28} {:>8.1} ns/resource", v.name(), ns(*t));
    }
}
