//! The raw store writer.
//!
//! Bytes are streamed in as they are read (after decompression) and hashed on the way.
//! Small objects (up to [`default_inline_limit`]) are buffered and written with a single
//! `PutMode::Create`. Larger ones are uploaded in parts to a staging key and then moved into
//! place with `copy_if_not_exists`, which is atomic on the local file system (hard link) and on
//! S3 (a multipart copy completed with `If-None-Match`). Where a store cannot do a create-only
//! copy, the writer checks that the key is absent before a plain copy and says so in a warning.
//!
//! Invariant: an object at a raw key is never replaced. If it already exists, the writer
//! compares sha256 digests; equal bytes mean an earlier attempt already landed it (success),
//! different bytes are a [`RawError::Conflict`].

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::{path::Path, ObjectStore, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Objects up to this size are written with one create-only PUT from memory (8 MiB: larger than
/// most Bulk Data files of small resource types, small enough to keep memory flat).
pub const fn default_inline_limit() -> usize {
    8 * 1024 * 1024
}

/// Parts of a raw object uploaded at once: one part in flight while the next fills.
///
/// Raw bytes are not spooled to a temporary file the way Parquet parts are (which would let
/// their part buffers share the process-wide slots of [`crate::upload`]): measured on the 1 GB
/// benchmark corpus, spooling took ~8 MB off peak RSS (79 → 71 MB) but added 2.5–3 s of
/// system time (writing and reading back every input byte), ~20% of the run.
const UPLOAD_CONCURRENCY: usize = 1;

/// Errors of the raw writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// The store failed.
    #[error("raw object {key} could not be written: {source}")]
    Store {
        /// Raw key.
        key: String,
        /// Cause.
        source: object_store::Error,
    },
    /// Upload I/O failed.
    #[error("raw object {key} could not be uploaded: {source}")]
    Io {
        /// Raw key.
        key: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An object with different content already exists at the key.
    #[error("raw object {key} already exists with different content (sha256 {existing}, new {new}); raw objects are never overwritten")]
    Conflict {
        /// Raw key.
        key: String,
        /// Existing digest.
        existing: String,
        /// New digest.
        new: String,
    },
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawObject {
    /// Key in the lake.
    pub key: String,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Byte count.
    pub bytes: u64,
    /// The object was already there with the same content.
    pub already_present: bool,
}

/// Streams one raw object into the store. See the module docs.
pub struct RawWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    inline_limit: usize,
    buf: Vec<u8>,
    staging: Option<(Path, BufWriter)>,
    hasher: Sha256,
    bytes: u64,
}

impl std::fmt::Debug for RawWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWriter")
            .field("key", &self.key.as_ref())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl RawWriter {
    /// A writer for `key`.
    pub fn new(store: Arc<dyn ObjectStore>, key: Path) -> Self {
        Self::with_inline_limit(store, key, default_inline_limit())
    }

    /// A writer with a custom inline limit (tests use a tiny one to exercise staging).
    pub fn with_inline_limit(store: Arc<dyn ObjectStore>, key: Path, inline_limit: usize) -> Self {
        Self {
            store,
            key,
            inline_limit,
            buf: Vec::new(),
            staging: None,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn io_err(&self, source: std::io::Error) -> RawError {
        RawError::Io {
            key: self.key.to_string(),
            source,
        }
    }

    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), RawError> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        if self.staging.is_none() && self.buf.len() + chunk.len() <= self.inline_limit {
            self.buf.extend_from_slice(chunk);
            return Ok(());
        }
        if self.staging.is_none() {
            let staging = Path::from(format!(
                "raw/_staging/{}.part",
                uuid::Uuid::new_v4().simple()
            ));
            let w = BufWriter::with_capacity(
                Arc::clone(&self.store),
                staging.clone(),
                crate::upload::UPLOAD_PART_BYTES,
            )
            .with_max_concurrency(UPLOAD_CONCURRENCY);
            self.staging = Some((staging, w));
            // Handed over, not copied: a copy held the inline buffer twice, 16 MiB per file at
            // the moment it spilled (heaptrack, two large files at once: raw and upload buffers
            // 26 → 19 MB at the peak).
            let buffered = bytes::Bytes::from(std::mem::take(&mut self.buf));
            let (_, w) = self.staging.as_mut().expect("just set");
            if let Err(source) = w.put(buffered).await {
                return Err(RawError::Store {
                    key: self.key.to_string(),
                    source,
                });
            }
        }
        let (_, w) = self.staging.as_mut().expect("staging present");
        if let Err(e) = w.write_all(chunk).await {
            return Err(self.io_err(e));
        }
        Ok(())
    }

    /// Completes the object. On error, nothing is left at the raw key.
    pub async fn finish(mut self) -> Result<RawObject, RawError> {
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let key_s = self.key.to_string();
        let store_err = |source| RawError::Store {
            key: key_s.clone(),
            source,
        };
        let created = match self.staging.take() {
            None => {
                let payload = PutPayload::from(Bytes::from(std::mem::take(&mut self.buf)));
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match self.store.put_opts(&self.key, payload, opts).await {
                    Ok(_) => true,
                    Err(object_store::Error::AlreadyExists { .. }) => false,
                    Err(e) => return Err(store_err(e)),
                }
            }
            Some((staging, mut w)) => {
                if let Err(e) = w.shutdown().await {
                    let _ = self.store.delete(&staging).await;
                    return Err(self.io_err(e));
                }
                let res = self.store.copy_if_not_exists(&staging, &self.key).await;
                let created = match res {
                    Ok(()) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(
                        object_store::Error::NotSupported { .. }
                        | object_store::Error::NotImplemented,
                    ) => match self.store.head(&self.key).await {
                        Ok(_) => Ok(false),
                        Err(object_store::Error::NotFound { .. }) => {
                            tracing::warn!(
                                key = %self.key,
                                "object store has no create-only copy; checked the key is absent before copying"
                            );
                            self.store
                                .copy(&staging, &self.key)
                                .await
                                .map(|()| true)
                                .map_err(store_err)
                        }
                        Err(e) => Err(store_err(e)),
                    },
                    Err(e) => Err(store_err(e)),
                };
                let _ = self.store.delete(&staging).await;
                created?
            }
        };
        if !created {
            let existing = self.digest_of_existing().await?;
            if existing != sha {
                return Err(RawError::Conflict {
                    key: self.key.to_string(),
                    existing,
                    new: sha,
                });
            }
        }
        Ok(RawObject {
            key: self.key.to_string(),
            sha256: sha,
            bytes: self.bytes,
            already_present: !created,
        })
    }

    /// Abandons the object: removes the staging upload, leaves the raw key untouched.
    pub async fn abort(mut self) {
        if let Some((staging, mut w)) = self.staging.take() {
            let _ = w.abort().await;
            let _ = self.store.delete(&staging).await;
        }
    }

    async fn digest_of_existing(&self) -> Result<String, RawError> {
        let store_err = |source| RawError::Store {
            key: self.key.to_string(),
            source,
        };
        let mut stream = self
            .store
            .get(&self.key)
            .await
            .map_err(store_err)?
            .into_stream();
        let mut h = Sha256::new();
        while let Some(chunk) = stream.try_next().await.map_err(store_err)? {
            h.update(&chunk);
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn write_all(
        store: &Arc<dyn ObjectStore>,
        key: &str,
        data: &[u8],
        limit: usize,
    ) -> Result<RawObject, RawError> {
        let mut w = RawWriter::with_inline_limit(Arc::clone(store), Path::from(key), limit);
        for c in data.chunks(3) {
            w.write(c).await?;
        }
        w.finish().await
    }

    async fn stored(store: &Arc<dyn ObjectStore>, key: &str) -> bytes::Bytes {
        let got = store.get(&Path::from(key)).await.unwrap();
        got.bytes().await.unwrap()
    }

    /// Objects left under the staging prefix.
    async fn staging_left(store: &Arc<dyn ObjectStore>) -> usize {
        let left: Vec<_> = store
            .list(Some(&Path::from("raw/_staging")))
            .try_collect()
            .await
            .unwrap();
        left.len()
    }

    #[tokio::test]
    async fn create_only_with_idempotent_retry_and_conflict_detection() {
        for limit in [1024, 4] {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let a = write_all(&store, "raw/a", b"hello\nworld\n", limit)
                .await
                .unwrap();
            assert!(!a.already_present);
            assert_eq!(a.bytes, 12);
            assert_eq!(a.sha256, hex::encode(Sha256::digest(b"hello\nworld\n")));
            let got = stored(&store, "raw/a").await;
            assert_eq!(&got[..], b"hello\nworld\n");
            // Same bytes again: success, nothing rewritten.
            let again = write_all(&store, "raw/a", b"hello\nworld\n", limit)
                .await
                .unwrap();
            assert!(again.already_present);
            // Different bytes: refused, original kept.
            let err = write_all(&store, "raw/a", b"other", limit)
                .await
                .unwrap_err();
            assert!(matches!(err, RawError::Conflict { .. }), "{err}");
            let got = stored(&store, "raw/a").await;
            assert_eq!(&got[..], b"hello\nworld\n");
            // No staging leftovers.
            assert_eq!(staging_left(&store).await, 0);
        }
    }

    /// An object over the inline limit goes up in parts while it is written, then moves
    /// into place; its bytes and digest are exact and no staging object is left.
    #[tokio::test]
    async fn a_large_object_is_uploaded_in_parts_while_written() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..2 * crate::upload::UPLOAD_PART_BYTES + 300_000)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut w = RawWriter::new(Arc::clone(&store), Path::from("raw/big"));
        for c in data.chunks(256 * 1024) {
            w.write(c).await.unwrap();
        }
        let o = w.finish().await.unwrap();
        assert!(!o.already_present);
        assert_eq!(o.bytes, data.len() as u64);
        assert_eq!(o.sha256, hex::encode(Sha256::digest(&data)));
        let got = stored(&store, "raw/big").await;
        assert!(got[..] == data[..]);
        assert_eq!(staging_left(&store).await, 0);
    }
}
