//! Parquet table parts.
//!
//! One [`TableWriter`] writes one Parquet object through `AsyncArrowWriter` over
//! `object_store::buffered::BufWriter` (STYLE.md #7): small files go up in one PUT, large ones
//! as a multipart upload, and the object becomes visible only when complete, so readers never
//! see half a file. Row groups are cut by buffered bytes as well as rows, which bounds memory
//! per open table whatever the width of the rows.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use object_store::buffered::BufWriter;
use object_store::{path::Path, ObjectStore};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

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

/// Upload buffer per open object: S3's minimum part size. object_store's 10 MiB default with
/// 8 parts in flight would let a dozen open tables hold hundreds of MB.
pub(crate) const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts of one object uploaded at once.
pub(crate) const UPLOAD_CONCURRENCY: usize = 2;

/// zstd level 3: zstd's own default, a good ratio at several hundred MB/s per core.
pub const fn default_zstd_level() -> i32 {
    3
}

/// Parquet writer settings.
#[derive(Debug, Clone, Copy)]
pub struct ParquetConfig {
    /// See [`default_max_row_group_rows`].
    pub max_row_group_rows: usize,
    /// See [`default_row_group_bytes`].
    pub row_group_bytes: usize,
    /// See [`default_zstd_level`].
    pub zstd_level: i32,
}

impl Default for ParquetConfig {
    fn default() -> Self {
        Self {
            max_row_group_rows: default_max_row_group_rows(),
            row_group_bytes: default_row_group_bytes(),
            zstd_level: default_zstd_level(),
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
            .set_created_by(concat!("fhirhose ", env!("CARGO_PKG_VERSION")).to_string())
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

/// Writes one Parquet object.
pub struct TableWriter {
    key: Path,
    writer: AsyncArrowWriter<BufWriter>,
    row_group_bytes: usize,
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

impl TableWriter {
    /// Opens a writer for `key` with `schema`.
    pub fn create(
        store: Arc<dyn ObjectStore>,
        key: Path,
        schema: SchemaRef,
        cfg: &ParquetConfig,
    ) -> Result<Self, ParquetError> {
        let sink = BufWriter::with_capacity(store, key.clone(), UPLOAD_PART_BYTES)
            .with_max_concurrency(UPLOAD_CONCURRENCY);
        let writer =
            AsyncArrowWriter::try_new(sink, schema, Some(cfg.properties())).map_err(|source| {
                ParquetError::Write {
                    key: key.to_string(),
                    source,
                }
            })?;
        Ok(Self {
            key,
            writer,
            row_group_bytes: cfg.row_group_bytes,
            rows: 0,
        })
    }

    fn err(&self, source: parquet::errors::ParquetError) -> ParquetError {
        ParquetError::Write {
            key: self.key.to_string(),
            source,
        }
    }

    /// Appends a batch; cuts a row group when the buffer passes the byte limit.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        if let Err(e) = self.writer.write(batch).await {
            return Err(self.err(e));
        }
        if self.writer.in_progress_size() >= self.row_group_bytes {
            if let Err(e) = self.writer.flush().await {
                return Err(self.err(e));
            }
        }
        Ok(())
    }

    /// Bytes buffered for the row group in progress.
    pub fn in_progress_size(&self) -> usize {
        self.writer.in_progress_size()
    }

    /// Cuts the row group in progress (no-op when empty), releasing its buffers.
    pub async fn flush(&mut self) -> Result<(), ParquetError> {
        if self.writer.in_progress_rows() == 0 {
            return Ok(());
        }
        if let Err(e) = self.writer.flush().await {
            return Err(self.err(e));
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The object key.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Completes the object; returns its row count.
    pub async fn close(self) -> Result<u64, ParquetError> {
        let key = self.key.to_string();
        let rows = self.rows;
        self.writer
            .close()
            .await
            .map_err(|source| ParquetError::Write { key, source })?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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
}
