//! Parquet writing throughput: `fhirhose_sinks::parquet::TableWriter` (zstd, the pipeline's
//! row-group and upload settings) writing the `resources` table for the developer corpus
//! into an in-memory object store, so the number is encoding + compression, not the disk.
//!
//! The batches have the `resources` table's schema (kept in step with
//! `src/pipeline/block.rs::resources_schema`) and the pipeline's batch grain (one batch per
//! 1 MiB block of input). Reported twice: as input MB/s (`bytes`) and rows/s (`rows`).
//!
//! `cargo bench --bench parquet_write`

#[path = "support/corpus.rs"]
mod corpus;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fhirhose::pipeline::{parse_instant_us, resources_schema};
use fhirhose_sinks::parquet::{ParquetConfig, TableWriter};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

/// One batch per ~1 MiB of input lines; returns (batches, input bytes, rows).
fn batches() -> (Vec<RecordBatch>, u64, u64) {
    let schema = resources_schema();
    let mut out = Vec::new();
    let (mut bytes, mut rows) = (0u64, 0u64);
    for file in corpus::load() {
        let raw_key = format!(
            "raw/bench/ingest/0000/{}",
            file.name.trim_end_matches(".gz")
        );
        for chunk in file
            .data
            .split(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(1300)
        {
            let n = chunk.len();
            let mut rt = StringBuilder::new();
            let mut id = StringBuilder::new();
            let mut vid = StringBuilder::new();
            let mut lu = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            let mut res = StringBuilder::new();
            let mut rk = StringBuilder::new();
            let mut line = Int64Builder::with_capacity(n);
            let mut run = StringBuilder::new();
            let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            for (i, l) in chunk.iter().enumerate() {
                if l.is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(l).expect("corpus JSON");
                rt.append_value(v["resourceType"].as_str().unwrap_or_default());
                id.append_value(v["id"].as_str().unwrap_or_default());
                vid.append_option(v["meta"]["versionId"].as_str());
                lu.append_option(v["meta"]["lastUpdated"].as_str().and_then(parse_instant_us));
                res.append_value(std::str::from_utf8(l).expect("UTF-8"));
                rk.append_value(&raw_key);
                line.append_value(i as i64 + 1);
                run.append_value("01JBENCHRUN0000000000000000");
                at.append_value(1_760_000_000_000_000);
                bytes += l.len() as u64 + 1;
                rows += 1;
            }
            let cols: Vec<ArrayRef> = vec![
                Arc::new(rt.finish()),
                Arc::new(id.finish()),
                Arc::new(vid.finish()),
                Arc::new(lu.finish()),
                Arc::new(res.finish()),
                Arc::new(rk.finish()),
                Arc::new(line.finish()),
                Arc::new(run.finish()),
                Arc::new(at.finish()),
            ];
            out.push(RecordBatch::try_new(Arc::clone(&schema), cols).expect("schema"));
        }
    }
    (out, bytes, rows)
}

fn write_all(rt: &tokio::runtime::Runtime, batches: &[RecordBatch]) -> u64 {
    rt.block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut w = TableWriter::create(
            store,
            Path::from("tables/resources/v1/bench.parquet"),
            resources_schema(),
            &ParquetConfig::default(),
        )
        .expect("writer");
        for b in batches {
            w.write(b).await.expect("write");
        }
        w.close().await.expect("close")
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (batches, bytes, rows) = batches();
    assert_eq!(write_all(&rt, &batches), rows);

    let mut g = c.benchmark_group("parquet_write_resources");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("bytes", |b| b.iter(|| write_all(&rt, &batches)));
    g.throughput(Throughput::Elements(rows));
    g.bench_function("rows", |b| b.iter(|| write_all(&rt, &batches)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
