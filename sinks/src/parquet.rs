//! Parquet table parts.
//!
//! One [`TableWriter`] writes one Parquet object. Encoding (Arrow → pages → zstd) is CPU work,
//! so it never runs on the caller's task or on the async reactor: each writer owns a small
//! task that receives batches over a bounded channel and encodes them with the synchronous
//! `ArrowWriter` on the blocking pool. Writers of different tables therefore encode in
//! parallel, while the caller only queues batches.
//!
//! Encoded row groups go to a [`Spool`]: memory while the part is small, then an unlinked
//! temporary file (in `TMPDIR`; it disappears with the process, even on a crash). The object
//! is uploaded from the spool when the writer is closed, small parts in one PUT and large ones
//! as a multipart upload of [`UPLOAD_PART_BYTES`] parts, through the process-wide part buffers
//! of [`crate::upload`].
//! Streaming every open table straight to the store instead holds an S3-sized part buffer
//! (5 MiB, the protocol's minimum) plus parts in flight for *each* open table, a cost that
//! grows with the number of tables a file feeds. (Measured on 1 GB of input, the change did
//! not lower peak RSS noticeably, 132 MB before and 133–136 MB after: the row groups in
//! progress dominate; it removes the per-table upload buffers as a term of the bound.)
//!
//! Invariants:
//! - a writer's rows go to parts of at most [`ParquetConfig::part_rows`] rows, cut at exact
//!   row counts, so the same rows always give the same parts (keys from [`part_key`]); a part
//!   becomes visible only once it is complete, so readers never see half a Parquet file; a
//!   writer dropped or failed before [`TableWriter::close`] uploads nothing more (parts it
//!   completed stay, and a retry of the same rows rewrites them identically);
//! - the memory of a writer does not grow with its rows: parquet-rs keeps each row group's
//!   metadata until the footer, and a part holds a bounded number of row groups;
//! - memory per open table is bounded by the row group in progress (cut by buffered bytes as
//!   well as rows), [`SPILL_BYTES`] of spool and at most [`QUEUED_BATCHES`] queued batches,
//!   whatever the width of the rows or the size of the input; upload buffers exist only
//!   while a part is being closed;
//! - batches are encoded in the order they were written.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use object_store::{path::Path, ObjectStore, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::upload::{SpooledUpload, UPLOAD_PART_BYTES};

/// Rows per row group at most (parquet-rs' own default is 1 Mi rows; a smaller cap keeps the
/// per-table buffer small when many tables are open at once).
pub const fn default_max_row_group_rows() -> usize {
    128 * 1024
}

/// Buffered bytes that force a row group out. 8 MiB of encoded pages (tens of thousands of
/// rows) still makes row groups big enough for efficient scans, and keeps the memory of the
/// up to ~10 tables a file task has open at once well under the pipeline's 256 MB budget.
pub const fn default_row_group_bytes() -> usize {
    8 * 1024 * 1024
}

/// Spooled bytes a part keeps in memory; beyond this it moves to a temporary file. Most
/// parts of small tables never reach it.
pub const SPILL_BYTES: usize = 1024 * 1024;

/// Batches queued per writer before [`TableWriter::write`] waits for the encoder (one more is
/// being encoded). One: the sinks hand a block's rows to many tables at once, so a deeper
/// queue only holds more blocks' worth of rows (a `resources` batch is a block's JSON).
pub const QUEUED_BATCHES: usize = 1;

/// Values per parquet-rs mini-batch; see [`ParquetConfig`]'s properties.
const WRITE_BATCH_ROWS: usize = 256;

/// zstd level 3: zstd's own default, a good ratio at several hundred MB/s per core.
pub const fn default_zstd_level() -> i32 {
    3
}

/// Rows per Parquet object at most; a writer given more rolls over to the next part
/// ([`part_key`]). A Parquet writer keeps the metadata of every row group it wrote (chunk
/// statistics, column and offset indexes) until the footer is written, so one object per
/// table per input file made memory grow with the file: ~6 KB per row group, 30 MB at the
/// peak of a 10 GB run whose Observation file is 6.3 GB. Parts are cut at exact row counts,
/// so the same input always gives the same parts with the same rows.
pub const fn default_part_rows() -> u64 {
    1_000_000
}

/// The key of part `index` of the object `key`: `key` itself for the first part, then
/// `<stem>.p<index>.parquet` (`Observation-1a2b.parquet`, `Observation-1a2b.p1.parquet`, …).
pub fn part_key(key: &Path, index: usize) -> Path {
    if index == 0 {
        return key.clone();
    }
    let k = key.as_ref();
    let stem = k.strip_suffix(".parquet").unwrap_or(k);
    Path::from(format!("{stem}.p{index}.parquet"))
}

/// The column holding each resource's JSON (the `resources` table). Every value is distinct,
/// so it is written without a dictionary: a dictionary would intern (copy and hash) up to
/// 1 MiB of JSON per column chunk only to fall back to plain encoding.
pub const RESOURCE_JSON_COLUMN: &str = "resource";

/// Parquet writer settings.
#[derive(Debug, Clone, Copy)]
pub struct ParquetConfig {
    /// See [`default_max_row_group_rows`].
    pub max_row_group_rows: usize,
    /// See [`default_row_group_bytes`].
    pub row_group_bytes: usize,
    /// See [`default_zstd_level`].
    pub zstd_level: i32,
    /// See [`default_part_rows`].
    pub part_rows: u64,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            max_row_group_rows: default_max_row_group_rows(),
            row_group_bytes: default_row_group_bytes(),
            zstd_level: default_zstd_level(),
            part_rows: default_part_rows(),
        }
    }
}

impl ParquetConfig {
    fn properties(&self) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.zstd_level).unwrap_or_default(),
            ))
            .set_max_row_group_size(self.max_row_group_rows)
            .set_column_dictionary_enabled(ColumnPath::from(RESOURCE_JSON_COLUMN), false)
            // Min/max of whole JSON documents prune nothing and cost a comparison per row.
            .set_column_statistics_enabled(
                ColumnPath::from(RESOURCE_JSON_COLUMN),
                EnabledStatistics::None,
            )
            // The raw store keeps each resource's exact bytes; this copy, there for queries,
            // is compressed at level 1, zstd's fastest regular level (not measured apart from
            // the other changes of its commit; see benches/pipeline/RESULTS.md, Run 6).
            .set_column_compression(
                ColumnPath::from(RESOURCE_JSON_COLUMN),
                Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
            )
            .set_created_by(concat!("fhirhose ", env!("CARGO_PKG_VERSION")).to_string())
            // Pages are cut by size only between mini-batches of this many values; with
            // parquet-rs' 1024, a page of the `resource` column (1–2 KB per value) grew to
            // ~2.5 MB, in a buffer doubled to 4 MiB, before its 1 MiB limit was checked.
            .set_write_batch_size(WRITE_BATCH_ROWS)
            .build()
    }
}

/// Errors of the Parquet writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetError {
    /// Encoding or upload failed.
    #[error("parquet object {key} could not be written: {source}")]
    Write {
        /// Object key.
        key: String,
        /// Cause.
        source: parquet::errors::ParquetError,
    },
}

enum Cmd {
    Write(RecordBatch),
    Flush,
}

/// Writes one Parquet object; see the module docs.
pub struct TableWriter {
    key: Path,
    part_rows: u64,
    tx: Option<mpsc::Sender<Cmd>>,
    task: Option<JoinHandle<Result<(), ParquetError>>>,
    in_progress: Arc<AtomicUsize>,
    rows: u64,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("key", &self.key.as_ref())
            .field("rows", &self.rows)
            .finish()
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        // Not closed: stop the encoder, which aborts the upload (nothing becomes visible).
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn write_err(key: &Path, source: parquet::errors::ParquetError) -> ParquetError {
    ParquetError::Write {
        key: key.to_string(),
        source,
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

/// Where a part's encoded bytes wait until it is closed; see the module docs.
#[derive(Debug, Default)]
pub struct Spool {
    mem: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    len: u64,
}

impl Spool {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes moved to a temporary file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The temporary file, with everything written so far flushed to it; `None` while the
    /// bytes are in memory.
    pub(crate) fn file_mut(&mut self) -> std::io::Result<Option<&std::fs::File>> {
        match &mut self.file {
            Some(w) => {
                w.flush()?;
                Ok(Some(w.get_ref()))
            }
            None => Ok(None),
        }
    }

    /// The bytes held in memory (all of them until the spool spills to a file).
    pub(crate) fn mem(&self) -> &[u8] {
        &self.mem
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None if self.mem.len() + buf.len() > SPILL_BYTES => {
                let mut file = std::io::BufWriter::with_capacity(256 * 1024, tempfile::tempfile()?);
                file.write_all(&self.mem)?;
                file.write_all(buf)?;
                self.mem = Vec::new();
                self.file = Some(file);
            }
            None => self.mem.extend_from_slice(buf),
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Uploads a closed part from its spool: one PUT when it fits in one upload part, else a
/// multipart upload. Either way the bytes in memory are the process-wide part buffers of
/// [`crate::upload`], read back from the spool one part at a time.
async fn upload(
    store: Arc<dyn ObjectStore>,
    key: Path,
    mut spool: Spool,
) -> Result<(), parquet::errors::ParquetError> {
    if spool.len() <= UPLOAD_PART_BYTES as u64 {
        let _slot = crate::upload::part_slot().await;
        let len = usize::try_from(spool.len()).map_err(external)?;
        let bytes = crate::upload::read_spool_at(&mut spool, 0, len).map_err(external)?;
        drop(spool);
        store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(external)?;
        return Ok(());
    }
    let up = SpooledUpload::start(&store, &key).await.map_err(external)?;
    up.complete(&mut spool).await.map_err(external)
}

/// The encoder task: batches in, encoded row groups out to the spool; each part uploaded when
/// it is full (exactly `part_rows` rows) and the last one when the sender is gone.
async fn encode(
    store: Arc<dyn ObjectStore>,
    key: Path,
    props: WriterProperties,
    schema: SchemaRef,
    mut rx: mpsc::Receiver<Cmd>,
    limits: (usize, u64),
    in_progress: Arc<AtomicUsize>,
) -> Result<(), ParquetError> {
    let (row_group_bytes, part_rows) = (limits.0, limits.1.max(1));
    let mut part = 0usize;
    let result = async {
        let new_writer =
            || ArrowWriter::try_new(Spool::default(), Arc::clone(&schema), Some(props.clone()));
        let mut writer = new_writer()?;
        let mut rows_in_part = 0u64;
        while let Some(cmd) = rx.recv().await {
            let mut pending = Some(cmd);
            while let Some(cmd) = pending.take() {
                let cmd = match cmd {
                    Cmd::Write(batch) => {
                        if rows_in_part == part_rows {
                            // The part is full: store it and start the next one.
                            let spool = tokio::task::spawn_blocking(move || writer.into_inner())
                                .await
                                .map_err(external)??;
                            in_progress.store(0, Ordering::Relaxed);
                            upload(Arc::clone(&store), part_key(&key, part), spool).await?;
                            part += 1;
                            rows_in_part = 0;
                            writer = new_writer()?;
                        }
                        let room = usize::try_from(part_rows - rows_in_part).unwrap_or(usize::MAX);
                        if batch.num_rows() > room {
                            let rest = batch.slice(room, batch.num_rows() - room);
                            pending = Some(Cmd::Write(rest));
                            rows_in_part += room as u64;
                            Cmd::Write(batch.slice(0, room))
                        } else {
                            rows_in_part += batch.num_rows() as u64;
                            Cmd::Write(batch)
                        }
                    }
                    Cmd::Flush => Cmd::Flush,
                };
                let (w, res) = tokio::task::spawn_blocking(move || {
                    let res = match cmd {
                        Cmd::Write(batch) => writer.write(&batch).and_then(|()| {
                            if writer.in_progress_size() >= row_group_bytes {
                                writer.flush()
                            } else {
                                Ok(())
                            }
                        }),
                        Cmd::Flush => writer.flush(),
                    };
                    (writer, res)
                })
                .await
                .map_err(external)?;
                writer = w;
                in_progress.store(writer.memory_size(), Ordering::Relaxed);
                res?;
            }
        }
        // The sender is gone: close the last part (footer), then store it.
        let spool = tokio::task::spawn_blocking(move || writer.into_inner())
            .await
            .map_err(external)??;
        in_progress.store(0, Ordering::Relaxed);
        upload(store, part_key(&key, part), spool).await
    }
    .await;
    result.map_err(|e| write_err(&part_key(&key, part), e))
}

impl TableWriter {
    /// Opens a writer for `key` with `schema`. Must be called within a Tokio runtime.
    pub fn create(
        store: Arc<dyn ObjectStore>,
        key: Path,
        schema: SchemaRef,
        cfg: &ParquetConfig,
    ) -> Result<Self, ParquetError> {
        let props = cfg.properties();
        // Fail here, not in the task, on a schema Parquet cannot hold.
        ArrowWriter::try_new(std::io::sink(), Arc::clone(&schema), Some(props.clone()))
            .map_err(|source| write_err(&key, source))?;
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let in_progress = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(encode(
            store,
            key.clone(),
            props,
            schema,
            rx,
            (cfg.row_group_bytes, cfg.part_rows),
            Arc::clone(&in_progress),
        ));
        Ok(Self {
            key,
            part_rows: cfg.part_rows.max(1),
            tx: Some(tx),
            task: Some(task),
            in_progress,
            rows: 0,
        })
    }

    /// The encoder's error, once its task has ended.
    async fn failure(&mut self) -> ParquetError {
        self.tx = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => {
                    write_err(&self.key, external(std::io::Error::other("writer closed")))
                }
                Err(join) => write_err(&self.key, external(join)),
            },
            None => write_err(
                &self.key,
                external(std::io::Error::other("writer failed earlier")),
            ),
        }
    }

    async fn send(&mut self, cmd: Cmd) -> Result<(), ParquetError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(cmd).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// Queues a batch for encoding; waits only while [`QUEUED_BATCHES`] are already queued.
    /// Row groups are cut when the buffer passes the byte limit.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.send(Cmd::Write(batch.clone())).await
    }

    /// Memory held by the row group in progress, as of the last encoded batch: parquet-rs'
    /// `memory_size`, the encoded pages plus what is still unencoded (dictionary keys and
    /// values). Budgets are enforced on this, not on the anticipated encoded size, which
    /// leaves out the dictionary state and undercounts memory several times over.
    pub fn buffered_bytes(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Cuts the row group in progress (no-op when empty), releasing its buffers.
    pub async fn flush(&mut self) -> Result<(), ParquetError> {
        // Reset now so a caller enforcing a budget does not ask twice for the same bytes.
        self.in_progress.store(0, Ordering::Relaxed);
        self.send(Cmd::Flush).await
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The key of the first part (see [`part_key`]).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The keys of every part the rows written so far fill: one per started
    /// [`ParquetConfig::part_rows`] rows, at least one.
    pub fn part_keys(&self) -> Vec<Path> {
        self.parts().into_iter().map(|(k, _)| k).collect()
    }

    /// Every part's key with its row count (as [`Self::part_keys`]).
    pub fn parts(&self) -> Vec<(Path, u64)> {
        let parts = self.rows.div_ceil(self.part_rows).max(1);
        (0..parts)
            .map(|i| {
                let rows = self
                    .rows
                    .saturating_sub(i * self.part_rows)
                    .min(self.part_rows);
                (part_key(&self.key, i as usize), rows)
            })
            .collect()
    }

    /// Encodes what is queued, writes the footer and completes the last part; returns the
    /// row count of all parts. A part is visible once it is complete (the last one only once
    /// this returns `Ok`); every part of the same rows has the same key and content.
    pub async fn close(mut self) -> Result<u64, ParquetError> {
        self.tx = None;
        let task = self.task.take();
        match task {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(self.rows),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(write_err(&self.key, external(join))),
            },
            None => Err(write_err(
                &self.key,
                external(std::io::Error::other("writer failed earlier")),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// The vendored encoders reuse the dictionary key of a value equal to the one before it
    /// and skip it in min/max (vendor/README.md): runs, alternations, nulls, `-0.0` after
    /// `0.0` and distinct values must all read back exactly, with exact statistics.
    #[tokio::test]
    async fn runs_of_equal_values_round_trip_with_exact_statistics() {
        use arrow_array::{Array, Float64Array};
        use parquet::file::statistics::Statistics;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
        ]));
        let s: Vec<Option<String>> = (0..3000)
            .map(|i| match i % 300 {
                0..=99 => Some("raw/local/ingest/0123456789abcdef/Observation.ndjson".into()),
                100..=149 => None,
                150..=199 => Some(if i % 2 == 0 { "b" } else { "bb" }.into()),
                _ => Some(format!("v{}", i / 7)),
            })
            .collect();
        let n: Vec<Option<i64>> = (0..3000)
            .map(|i| (i % 11 != 0).then_some(i / 100 - 5))
            .collect();
        let f: Vec<Option<f64>> = (0..3000)
            .map(|i| Some(if i % 4 < 2 { 0.0 } else { -0.0 }))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(s.clone())),
                Arc::new(Int64Array::from(n.clone())),
                Arc::new(Float64Array::from(f.clone())),
            ],
        )
        .unwrap();
        let key = Path::from("t/runs.parquet");
        let mut w =
            TableWriter::create(Arc::clone(&store), key.clone(), schema, &Default::default())
                .unwrap();
        w.write(&batch).await.unwrap();
        w.close().await.unwrap();
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let rg = reader.metadata().row_group(0).clone();
        let (mut gs, mut gn, mut gf) = (Vec::new(), Vec::new(), Vec::new());
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let c = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            gs.extend(c.iter().map(|v| v.map(str::to_string)));
            let c = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            gn.extend(c.iter());
            let c = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
            gf.extend((0..c.len()).map(|i| c.value(i).to_bits()));
        }
        assert_eq!(gs, s);
        assert_eq!(gn, n);
        let want: Vec<u64> = f.iter().map(|v| v.unwrap().to_bits()).collect();
        assert_eq!(gf, want, "-0.0 keeps its sign");
        let present = s.iter().flatten();
        match rg.column(0).statistics().unwrap() {
            Statistics::ByteArray(st) => {
                assert_eq!(
                    st.min_opt().unwrap().as_utf8().unwrap(),
                    present.clone().min().unwrap()
                );
                assert_eq!(
                    st.max_opt().unwrap().as_utf8().unwrap(),
                    present.max().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        match rg.column(1).statistics().unwrap() {
            Statistics::Int64(st) => {
                assert_eq!(
                    *st.min_opt().unwrap(),
                    n.iter().flatten().min().copied().unwrap()
                );
                assert_eq!(
                    *st.max_opt().unwrap(),
                    n.iter().flatten().max().copied().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_readable_zstd_parquet_with_small_row_groups() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let cfg = ParquetConfig {
            row_group_bytes: 1,
            ..Default::default()
        };
        let mut w = TableWriter::create(
            Arc::clone(&store),
            Path::from("t/a.parquet"),
            Arc::clone(&schema),
            &cfg,
        )
        .unwrap();
        for i in 0..3 {
            let b = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(vec![format!("x{i}"), format!("y{i}")])),
                    Arc::new(Int64Array::from(vec![Some(i), None])),
                ],
            )
            .unwrap();
            w.write(&b).await.unwrap();
        }
        assert_eq!(w.close().await.unwrap(), 6);
        let bytes = store
            .get(&Path::from("t/a.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 3);
        let col = reader.metadata().row_group(0).column(0);
        // The level is not stored in the file; the codec is.
        assert!(matches!(col.compression(), Compression::ZSTD(_)));
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 6);
    }

    /// The resource JSON column has no dictionary (every value is distinct); other string
    /// columns keep theirs. `buffered_bytes` reports the row group's memory after a write and
    /// nothing after a flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_json_is_plain_encoded_and_buffered_bytes_track_the_row_group() {
        use parquet::basic::Encoding;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![
            Field::new("resource_type", DataType::Utf8, false),
            Field::new(RESOURCE_JSON_COLUMN, DataType::Utf8, false),
        ]));
        let key = Path::from("t/resources.parquet");
        let mut w = TableWriter::create(
            Arc::clone(&store),
            key.clone(),
            Arc::clone(&schema),
            &ParquetConfig::default(),
        )
        .unwrap();
        let json: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"resourceType":"Patient","id":"p{i}"}}"#))
            .collect();
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["Patient"; 2000])),
                Arc::new(StringArray::from(json.clone())),
            ],
        )
        .unwrap();
        w.write(&b).await.unwrap();
        // The encoder reports after each batch; wait for it.
        let mut waited = 0;
        while w.buffered_bytes() == 0 && waited < 500 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        assert!(w.buffered_bytes() > 0);
        w.flush().await.unwrap();
        assert_eq!(w.buffered_bytes(), 0);
        w.write(&b).await.unwrap();
        assert_eq!(w.close().await.unwrap(), 4000);

        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let md = reader.metadata().clone();
        assert_eq!(md.num_row_groups(), 2);
        for rg in md.row_groups() {
            let dict = |c: usize| {
                rg.column(c)
                    .encodings()
                    .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY))
            };
            assert!(dict(0), "resource_type should be dictionary-encoded");
            assert!(
                !dict(1),
                "the resource JSON should not be dictionary-encoded"
            );
        }
        let mut got = Vec::new();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let col = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            got.extend(col.iter().map(|v| v.unwrap().to_string()));
        }
        assert_eq!(got.len(), 4000);
        assert_eq!(got[..2000], json[..]);
        assert_eq!(got[2000..], json[..]);
    }

    /// Rows beyond `part_rows` roll over to the next part at the exact row, batches split
    /// across parts; every part is a complete file and `parts` names them with their rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_rolls_over_to_new_parts_at_exact_row_counts() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let cfg = ParquetConfig {
            part_rows: 1000,
            row_group_bytes: 1,
            ..Default::default()
        };
        let key = Path::from("t/Observation-ab.parquet");
        let mut w = TableWriter::create(Arc::clone(&store), key.clone(), Arc::clone(&schema), &cfg)
            .unwrap();
        for b in 0..5i64 {
            let vals: Vec<i64> = (b * 700..(b + 1) * 700).collect();
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vals))])
                    .unwrap();
            w.write(&batch).await.unwrap();
        }
        let parts = w.parts();
        assert_eq!(
            parts
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>(),
            vec![
                ("t/Observation-ab.parquet".to_string(), 1000),
                ("t/Observation-ab.p1.parquet".to_string(), 1000),
                ("t/Observation-ab.p2.parquet".to_string(), 1000),
                ("t/Observation-ab.p3.parquet".to_string(), 500),
            ]
        );
        assert_eq!(w.close().await.unwrap(), 3500);
        let mut next = 0i64;
        for (k, rows) in parts {
            let bytes = store.get(&k).await.unwrap().bytes().await.unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            let mut got = 0u64;
            for b in reader.build().unwrap() {
                let b = b.unwrap();
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for v in col.values() {
                    assert_eq!(*v, next, "rows in order across parts");
                    next += 1;
                    got += 1;
                }
            }
            assert_eq!(got, rows, "{k}");
        }
        assert_eq!(next, 3500);
        let listed = futures::StreamExt::count(store.list(Some(&Path::from("t")))).await;
        assert_eq!(listed, 4, "no other objects");
    }

    #[test]
    fn part_keys_keep_the_first_part_at_the_plain_key() {
        let k = Path::from("tables/x/v1/Obs.01-abc.parquet");
        assert_eq!(part_key(&k, 0), k);
        assert_eq!(
            part_key(&k, 12).as_ref(),
            "tables/x/v1/Obs.01-abc.p12.parquet"
        );
    }

    #[tokio::test]
    async fn a_writer_dropped_before_close_leaves_no_object() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let mut w = TableWriter::create(
            Arc::clone(&store),
            Path::from("t/dropped.parquet"),
            Arc::clone(&schema),
            &ParquetConfig::default(),
        )
        .unwrap();
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(vec!["a", "b"]))],
        )
        .unwrap();
        w.write(&b).await.unwrap();
        w.flush().await.unwrap();
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(store.head(&Path::from("t/dropped.parquet")).await.is_err());
    }

    /// A part larger than the spill limit and than one upload part goes through the temporary
    /// file and a multipart upload, and comes back byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_part_spills_to_disk_and_uploads_in_parts() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let cfg = ParquetConfig {
            row_group_bytes: 512 * 1024,
            ..Default::default()
        };
        let key = Path::from("t/big.parquet");
        let mut w = TableWriter::create(Arc::clone(&store), key.clone(), Arc::clone(&schema), &cfg)
            .unwrap();
        // Incompressible values: xorshift bytes, hex-free, so zstd cannot shrink them much.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut expected = Vec::new();
        for _ in 0..48 {
            let vals: Vec<String> = (0..1024)
                .map(|_| {
                    (0..160)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            char::from(b'!' + (x % 90) as u8)
                        })
                        .collect()
                })
                .collect();
            expected.extend(vals.iter().cloned());
            let b =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vals))])
                    .unwrap();
            w.write(&b).await.unwrap();
        }
        assert_eq!(w.close().await.unwrap(), 48 * 1024);
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert!(
            bytes.len() > UPLOAD_PART_BYTES,
            "{} bytes is not a multipart object",
            bytes.len()
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert!(reader.metadata().num_row_groups() > 1);
        let mut got = Vec::new();
        for b in reader.build().unwrap() {
            let b = b.unwrap();
            let col = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            got.extend(col.iter().map(|v| v.unwrap().to_string()));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn the_spool_moves_to_a_file_past_its_limit_and_reads_back_at_any_offset() {
        let mut s = Spool::default();
        s.write_all(&[1u8; 1000]).unwrap();
        assert!(!s.spilled());
        let mem = crate::upload::read_spool_at(&mut s, 990, 10).unwrap();
        assert_eq!(&mem[..], &[1u8; 10]);
        assert!(crate::upload::read_spool_at(&mut s, 995, 10).is_err());
        s.write_all(&vec![2u8; SPILL_BYTES]).unwrap();
        assert!(s.spilled());
        assert_eq!(s.len(), (SPILL_BYTES + 1000) as u64);
        // Reads see everything written so far (the file's buffer is flushed first), and a
        // read does not move the write position.
        let across = crate::upload::read_spool_at(&mut s, 996, 8).unwrap();
        assert_eq!(&across[..], &[1, 1, 1, 1, 2, 2, 2, 2]);
        s.write_all(&[3u8; 5]).unwrap();
        let len = usize::try_from(s.len()).unwrap();
        let all = crate::upload::read_spool_at(&mut s, 0, len).unwrap();
        assert_eq!(all.len(), SPILL_BYTES + 1005);
        assert!(all[..1000].iter().all(|&b| b == 1));
        assert!(all[1000..SPILL_BYTES + 1000].iter().all(|&b| b == 2));
        assert_eq!(&all[SPILL_BYTES + 1000..], &[3u8; 5]);
        assert!(crate::upload::read_spool_at(&mut s, 1, len).is_err());
    }
}
