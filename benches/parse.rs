//! Framing + parse throughput on the developer corpus, one core: the ingest framer and
//! simd-json's tape parse (the pipeline's parse path) against serde_json (`Value` and
//! `IgnoredAny`) and simd-json's `BorrowedValue`, all on the same lines, all through the same
//! framer. `framing_only` is the framer alone. Throughput is input bytes.
//!
//! `cargo bench --bench parse` (the issue 8 target: tape ≥ 2× `serde_json::Value`).

#[path = "support/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fhirhose_ingest::framing::{Block, Frame, Framer, FramerConfig};

/// Frames `data` the way the pipeline does (256 KiB reads, default block size) and calls `f`
/// on every non-blank line.
fn for_each_line(data: &[u8], mut f: impl FnMut(&[u8])) {
    let mut framer = Framer::new(FramerConfig::default());
    let mut frames = Vec::new();
    let mut on_block = |b: &Block| {
        for (_, _, line) in b.lines() {
            if !line.is_empty() {
                f(line);
            }
        }
    };
    for chunk in data.chunks(256 * 1024) {
        framer.push(chunk, &mut frames);
        for fr in frames.drain(..) {
            if let Frame::Block(b) = fr {
                on_block(&b);
            }
        }
    }
    framer.finish(&mut frames);
    for fr in frames.drain(..) {
        if let Frame::Block(b) = fr {
            on_block(&b);
        }
    }
}

fn bench(c: &mut Criterion) {
    let data = corpus::concatenated();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));

    g.bench_function("framing_only", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for_each_line(&data, |l| n += l.len() as u64);
            black_box(n)
        })
    });

    g.bench_function("simd_json_tape", |b| {
        let mut scratch = Vec::with_capacity(64 * 1024);
        let mut buffers = simd_json::Buffers::default();
        let mut tape = simd_json::Tape::null();
        b.iter(|| {
            let mut nodes = 0usize;
            for_each_line(&data, |l| {
                scratch.clear();
                scratch.extend_from_slice(l);
                let mut t = std::mem::replace(&mut tape, simd_json::Tape::null()).reset();
                simd_json::fill_tape(&mut scratch, &mut buffers, &mut t).expect("valid JSON");
                nodes += t.0.len();
                tape = t.reset();
            });
            black_box(nodes)
        })
    });

    g.bench_function("simd_json_borrowed_value", |b| {
        let mut scratch = Vec::with_capacity(64 * 1024);
        let mut buffers = simd_json::Buffers::default();
        b.iter(|| {
            let mut n = 0usize;
            for_each_line(&data, |l| {
                scratch.clear();
                scratch.extend_from_slice(l);
                let v = simd_json::to_borrowed_value_with_buffers(&mut scratch, &mut buffers)
                    .expect("valid JSON");
                n += usize::from(matches!(v, simd_json::BorrowedValue::Object(_)));
            });
            black_box(n)
        })
    });

    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for_each_line(&data, |l| {
                let v: serde_json::Value = serde_json::from_slice(l).expect("valid JSON");
                n += usize::from(v.is_object());
            });
            black_box(n)
        })
    });

    g.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for_each_line(&data, |l| {
                let _: serde::de::IgnoredAny = serde_json::from_slice(l).expect("valid JSON");
                n += 1;
            });
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
