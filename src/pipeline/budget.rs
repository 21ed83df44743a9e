//! The run's memory budget, shared by every file task of an ingest run.
//!
//! A file task's working memory is its blocks in flight (framed, parsed, turned into Arrow
//! rows, waiting for the sinks) and the Parquet row groups its tables are building. Both used
//! to be bounded *per file*, so a run holding two large files at once (`--file-concurrency 2`)
//! held twice what a run of one medium-sized file held, and peak RSS grew with the input
//! until every concurrent file was large enough to fill its own bounds (measured: 44 MB for
//! 10 MB of input, 103 MB for 1 GB). Here both bounds belong to the run:
//!
//! - **Blocks in flight**: a block takes [`BlockPermit`]s for its bytes before the reader
//!   hands it on and gives them back once the file's sinks have taken its rows. At most
//!   [`MemoryBudget::block_bytes`] of input (plus one block per reader waiting for permits)
//!   is between framing and the sinks across all files, whatever their number or size. A
//!   block larger than the whole budget (a line up to `--max-line-bytes`) takes all of it.
//! - **Parquet row groups**: each file reports the memory its open tables hold
//!   ([`ParquetShare`]); when the run's total passes [`MemoryBudget::parquet_bytes`], the file
//!   that reports cuts its own largest row groups while the run is over and the file holds at
//!   least an equal share (the budget divided by the files holding row groups). A file under
//!   its share leaves the cutting to the larger ones, so the idle row groups of a slow file
//!   (a remote input arriving slowly) do not force a fast file's into tiny ones. A file only
//!   stays above its share if the run fitted when it last reported, so the run holds at most
//!   about twice the budget, whatever the number of files.
//!
//! Invariants: permits are only ever waited for by a file's reader, never by its consumer or
//! by an encoder, so a file whose blocks hold permits always makes progress and returns them
//! (no deadlock across files); a file's Parquet share is withdrawn when its sinks are dropped,
//! whether the file landed or failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permit granularity: one permit per KiB of block bytes.
const PERMIT_BYTES: usize = 1024;

/// Memory shared by all file tasks of a run. See the module docs.
#[derive(Debug)]
pub struct MemoryBudget {
    blocks: Arc<Semaphore>,
    block_permits: u32,
    parquet_bytes: usize,
    parquet_used: AtomicUsize,
    /// Files holding a [`ParquetShare`].
    parquet_files: AtomicUsize,
}

/// A block's share of [`MemoryBudget::block_bytes`], returned when dropped.
#[derive(Debug)]
pub struct BlockPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl MemoryBudget {
    /// A budget of `block_bytes` of blocks in flight and `parquet_bytes` of Parquet row
    /// groups in progress, across the run.
    pub fn new(block_bytes: usize, parquet_bytes: usize) -> Self {
        let block_permits = u32::try_from(block_bytes.div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            blocks: Arc::new(Semaphore::new(block_permits as usize)),
            block_permits,
            parquet_bytes,
            parquet_used: AtomicUsize::new(0),
            parquet_files: AtomicUsize::new(0),
        }
    }

    /// The default budget for `workers` parsing workers and blocks of `block_bytes`: enough
    /// blocks to keep every worker busy with one more queued for each, one being framed and one
    /// waiting at the sinks ([`default_block_budget`]), and [`default_parquet_budget`].
    pub fn for_workers(workers: usize, block_bytes: usize) -> Self {
        Self::new(
            default_block_budget(workers, block_bytes),
            default_parquet_budget(),
        )
    }

    /// Bytes of blocks in flight across the run.
    pub fn block_bytes(&self) -> usize {
        self.block_permits as usize * PERMIT_BYTES
    }

    /// Bytes of Parquet row groups in progress across the run.
    pub fn parquet_bytes(&self) -> usize {
        self.parquet_bytes
    }

    /// Waits until `len` bytes of blocks fit in the budget (all of it for a block larger
    /// than the budget).
    pub async fn acquire_block(&self, len: usize) -> BlockPermit {
        let n = u32::try_from(len.div_ceil(PERMIT_BYTES))
            .unwrap_or(u32::MAX)
            .clamp(1, self.block_permits);
        let permit = Arc::clone(&self.blocks)
            .acquire_many_owned(n)
            .await
            .expect("the block semaphore is never closed");
        BlockPermit(permit)
    }

    /// Parquet memory reported by all files.
    pub fn parquet_used(&self) -> usize {
        self.parquet_used.load(Ordering::Relaxed)
    }
}

/// Blocks in flight across a run for `workers` workers: `2 × workers + 2` blocks.
pub const fn default_block_budget(workers: usize, block_bytes: usize) -> usize {
    (2 * workers + 2) * block_bytes
}

/// Memory of Parquet row groups in progress across a run, as parquet-rs counts it
/// (`memory_size`: encoded pages and dictionaries) before the file that passes it cuts its
/// largest row groups. parquet-rs' count leaves out buffer slack, buffered dictionary-encoded
/// pages and per-column state: heaptrack found the writers' real memory about three times
/// this. With 3 MiB across the run (it was 8 MiB per file), the writers of two large files
/// landed at once held about 14 MB at the peak.
pub const fn default_parquet_budget() -> usize {
    3 * 1024 * 1024
}

/// One file's part of the run's Parquet memory.
#[derive(Debug)]
pub struct ParquetShare {
    budget: Arc<MemoryBudget>,
    reported: usize,
}

impl ParquetShare {
    /// A file's share, initially empty.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        budget.parquet_files.fetch_add(1, Ordering::Relaxed);
        Self {
            budget,
            reported: 0,
        }
    }

    /// Records that this file's tables now hold `bytes`, and says whether the file should cut
    /// its largest row group: the run is over its budget and the file holds at least an equal
    /// share of it (see the module docs).
    pub fn report(&mut self, bytes: usize) -> bool {
        let used = &self.budget.parquet_used;
        let total = if bytes >= self.reported {
            used.fetch_add(bytes - self.reported, Ordering::Relaxed) + (bytes - self.reported)
        } else {
            used.fetch_sub(self.reported - bytes, Ordering::Relaxed) - (self.reported - bytes)
        };
        self.reported = bytes;
        let files = self.budget.parquet_files.load(Ordering::Relaxed).max(1);
        total > self.budget.parquet_bytes && bytes >= self.budget.parquet_bytes / files
    }
}

impl Drop for ParquetShare {
    fn drop(&mut self) {
        self.budget
            .parquet_used
            .fetch_sub(self.reported, Ordering::Relaxed);
        self.budget.parquet_files.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn blocks_wait_for_the_budget_and_a_huge_block_takes_all_of_it() {
        let b = Arc::new(MemoryBudget::new(4 * 1024, 1));
        assert_eq!(b.block_bytes(), 4096);
        let first = b.acquire_block(3000).await; // 3 permits
        let second = b.acquire_block(1).await; // 1 permit: the budget is full
        let b2 = Arc::clone(&b);
        let waiting = tokio::spawn(async move { b2.acquire_block(10 << 20).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a block over the budget waits for all of it"
        );
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one permit is still held");
        drop(second);
        let huge = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("granted once the budget is free")
            .unwrap();
        let b3 = Arc::clone(&b);
        let small = tokio::spawn(async move { b3.acquire_block(1).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !small.is_finished(),
            "the huge block holds the whole budget"
        );
        drop(huge);
        tokio::time::timeout(Duration::from_secs(5), small)
            .await
            .expect("granted")
            .unwrap();
    }

    #[test]
    fn parquet_shares_add_up_and_only_files_at_their_share_cut_when_the_run_is_over() {
        let b = Arc::new(MemoryBudget::new(1024, 100));
        let mut a = ParquetShare::new(Arc::clone(&b));
        let mut c = ParquetShare::new(Arc::clone(&b));
        assert!(!a.report(60));
        assert!(!c.report(30));
        assert_eq!(b.parquet_used(), 90);
        // File c passes the run's budget but holds less than half of it (two files): file a,
        // the larger one, is the one to cut, when it next reports.
        assert!(!c.report(45));
        assert_eq!(b.parquet_used(), 105);
        assert!(a.report(60), "over, and at least an equal share");
        // File a cut a row group: the run fits again, nobody cuts.
        assert!(!a.report(10));
        assert!(!c.report(45));
        // File c grows to its share and past the budget: c cuts.
        assert!(c.report(95));
        assert_eq!(b.parquet_used(), 105);
        drop(c);
        assert_eq!(b.parquet_used(), 10);
        // Alone, a file's share is the whole budget.
        assert!(!a.report(100));
        assert!(a.report(101));
        drop(a);
        assert_eq!(b.parquet_used(), 0);
        assert_eq!(b.parquet_files.load(Ordering::Relaxed), 0);
    }
}
