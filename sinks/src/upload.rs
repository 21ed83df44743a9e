//! Multipart uploads whose part buffers are a process-wide budget.
//!
//! S3 needs parts of at least 5 MiB ([`UPLOAD_PART_BYTES`]), so each part of an upload is a
//! 5 MiB buffer while it is sent. Parquet parts are uploaded when they close, and a run closes
//! many at once (every table of a file at its end, tables rolling over to new parts
//! mid-file); each upload used to own its buffers (`object_store`'s `BufWriter`: one part
//! filling and one in flight), so their memory grew with the number of tables closing at once.
//! Here an upload's bytes are already in a [`Spool`] (memory up to 1 MiB, then an unlinked
//! temporary file), and each part is read back from it only when the upload holds one of
//! [`PART_SLOTS`] process-wide slots, released when the part's request has completed.
//!
//! Invariants: at most [`PART_SLOTS`] part buffers of spooled uploads exist in the process at
//! once, whatever the number of uploads; an upload has at most one part in flight, sent in
//! order; a slot is never awaited while the same upload holds another one, and a slot is held
//! only while a part is read and sent (never while waiting for input), so uploads cannot
//! deadlock on slots.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::parquet::Spool;

/// Upload part size: S3's minimum part size.
pub const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;

/// Part buffers in the process at once: one being sent while the next is read, or two
/// uploads each sending one.
pub const PART_SLOTS: usize = 2;

fn slots() -> Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    Arc::clone(SLOTS.get_or_init(|| Arc::new(Semaphore::new(PART_SLOTS))))
}

/// Waits for a part buffer slot.
pub(crate) async fn part_slot() -> OwnedSemaphorePermit {
    slots()
        .acquire_owned()
        .await
        .expect("the part slot semaphore is never closed")
}

/// Reads `len` bytes at `offset` of a spool. Blocking (a positional read of a temporary file,
/// normally from the page cache).
pub(crate) fn read_spool_at(spool: &mut Spool, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    match spool.file_mut()? {
        Some(file) => file.read_exact_at(&mut buf, offset)?,
        None => {
            let start = usize::try_from(offset).map_err(std::io::Error::other)?;
            let mem = spool.mem();
            let end = start
                .checked_add(len)
                .filter(|e| *e <= mem.len())
                .ok_or_else(|| std::io::Error::other("read past the end of the spool"))?;
            buf.copy_from_slice(&mem[start..end]);
        }
    }
    Ok(Bytes::from(buf))
}

/// A multipart upload fed with parts read from a spool, one part in flight.
pub(crate) struct SpooledUpload {
    upload: Box<dyn MultipartUpload>,
    in_flight: Option<JoinHandle<object_store::Result<()>>>,
    /// Spool bytes already handed to parts.
    sent: u64,
}

impl SpooledUpload {
    /// Starts a multipart upload to `path`.
    pub(crate) async fn start(
        store: &Arc<dyn ObjectStore>,
        path: &Path,
    ) -> object_store::Result<Self> {
        Ok(Self {
            upload: store.put_multipart(path).await?,
            in_flight: None,
            sent: 0,
        })
    }

    /// Spool bytes handed to parts so far.
    #[cfg(test)]
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    async fn wait(&mut self) -> object_store::Result<()> {
        match self.in_flight.take() {
            Some(task) => task.await.map_err(|e| object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            })?,
            None => Ok(()),
        }
    }

    /// Sends the next `len` spool bytes as a part, once the previous part is done and a slot
    /// is free; returns while the part is in flight.
    pub(crate) async fn send(&mut self, spool: &mut Spool, len: usize) -> object_store::Result<()> {
        self.wait().await?;
        let slot = part_slot().await;
        let part =
            read_spool_at(spool, self.sent, len).map_err(|e| object_store::Error::Generic {
                store: "spool",
                source: Box::new(e),
            })?;
        self.sent += len as u64;
        let request = self.upload.put_part(PutPayload::from(part));
        self.in_flight = Some(tokio::spawn(async move {
            let res = request.await;
            drop(slot);
            res
        }));
        Ok(())
    }

    /// Sends every spool byte not sent yet (in parts of at most [`UPLOAD_PART_BYTES`]) and
    /// completes the upload.
    pub(crate) async fn complete(mut self, spool: &mut Spool) -> object_store::Result<()> {
        loop {
            let left = spool.len() - self.sent;
            if left == 0 {
                break;
            }
            let len =
                usize::try_from(left.min(UPLOAD_PART_BYTES as u64)).unwrap_or(UPLOAD_PART_BYTES);
            if let Err(e) = self.send(spool, len).await {
                self.abort().await;
                return Err(e);
            }
        }
        if let Err(e) = self.wait().await {
            self.abort().await;
            return Err(e);
        }
        self.upload.complete().await.map(|_| ())
    }

    /// Abandons the upload (best effort).
    pub(crate) async fn abort(mut self) {
        let _ = self.wait().await;
        let _ = self.upload.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::io::Write;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_spooled_upload_sends_full_parts_in_order_then_the_rest() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("t/obj");
        let data = pattern(2 * UPLOAD_PART_BYTES + 12_345);
        let mut spool = Spool::default();
        let mut up = SpooledUpload::start(&store, &path).await.unwrap();
        // Written in odd chunks; a full part is sent as soon as the spool holds one.
        for chunk in data.chunks(700_001) {
            spool.write_all(chunk).unwrap();
            while spool.len() - up.sent() >= UPLOAD_PART_BYTES as u64 {
                up.send(&mut spool, UPLOAD_PART_BYTES).await.unwrap();
            }
        }
        assert_eq!(up.sent(), 2 * UPLOAD_PART_BYTES as u64);
        up.complete(&mut spool).await.unwrap();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got[..] == data[..], "parts were stored in order");
        // Every slot is free again once the upload is complete.
        assert_eq!(slots().available_permits(), PART_SLOTS);
    }

    #[tokio::test]
    async fn part_slots_are_bounded_and_come_back() {
        let held: Vec<_> = futures::future::join_all((0..PART_SLOTS).map(|_| part_slot())).await;
        let next = tokio::spawn(part_slot());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!next.is_finished(), "no slot beyond PART_SLOTS");
        drop(held);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("a slot comes back")
            .unwrap();
        drop(slot);
    }
}
