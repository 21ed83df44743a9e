//! Per-file Kafka ack watermarks: how much of a file a resumed attempt may skip publishing.
//!
//! Every block of a file gets its own [`DeliveryTracker`]. Blocks are consumed in line order
//! and all of a block's events are handed to librdkafka before the next block starts, so once
//! a block's tracker has settled every send without a failure, every event of the lines up to
//! the block's last line is acknowledged by the broker (acks arrive out of order across
//! partitions; the watermark only moves over a prefix of blocks that are all settled). That
//! line, the *ack watermark*, is checkpointed in the state store at most every
//! [`CHECKPOINT_INTERVAL`] (plus whenever the file fails), tagged with the sink's identity.
//!
//! # What a resumed file skips, and why nothing is lost or duplicated in the lake
//!
//! A resumed attempt at the same file (same fingerprint, same lake, same sink) skips only the
//! *Kafka publishing* of events (upserts, deletes, dead-letter events) whose line is `<=` the
//! checkpointed watermark. Everything else is redone for the whole file, deterministically:
//! the raw object is re-read and verified by sha256 (create-only), every Parquet part and the
//! dead-letter object are rewritten whole at the same keys (a part is replaced, never
//! appended to), so the lake holds each row exactly once whatever the number of attempts.
//!
//! What can be published twice after a crash is bounded: events sent after the last
//! checkpoint, i.e. those acknowledged within the last [`CHECKPOINT_INTERVAL`] plus those
//! still in flight (librdkafka's queue) when the process died. Every such duplicate carries
//! the same deterministic `ce_id` (a hash of raw key and line), so consumers de-duplicate by
//! `ce_id` (README, "Delivery guarantees"). The idempotent producer already removes the
//! producer's own retry duplicates within one process.
//!
//! A watermark is only written when a publisher is configured (a run without Kafka sends
//! nothing, and must never let a later run with Kafka skip anything), and `file_done` drops it
//! in the same transaction that marks the file landed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirhose_sinks::kafka::{DeliveryTracker, PublishError};

/// How often, at most, a file's watermark is written to the state store.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// The ack watermark of one file attempt.
#[derive(Debug)]
pub(crate) struct AckWatermark {
    /// Lines `<=` this were acknowledged by an earlier attempt: not published again.
    resume_through: u64,
    /// Blocks sent, oldest first, not yet known to be fully acknowledged.
    pending: VecDeque<(u64, Arc<DeliveryTracker>)>,
    /// The tracker of the block being consumed.
    current: Arc<DeliveryTracker>,
    acked_through: u64,
    checkpointed: u64,
    last_checkpoint: Instant,
    interval: Duration,
}

impl AckWatermark {
    /// A watermark for a file whose earlier attempts acknowledged lines `..=resume_through`.
    pub(crate) fn new(resume_through: u64, interval: Duration) -> Self {
        Self {
            resume_through,
            pending: VecDeque::new(),
            current: DeliveryTracker::new(),
            acked_through: resume_through,
            checkpointed: resume_through,
            last_checkpoint: Instant::now(),
            interval,
        }
    }

    /// Whether the event of `line` was acknowledged by an earlier attempt.
    pub(crate) fn skips(&self, line: u64) -> bool {
        line <= self.resume_through
    }

    /// The tracker for sends of the block being consumed.
    pub(crate) fn tracker(&self) -> &Arc<DeliveryTracker> {
        &self.current
    }

    /// Every event of the lines `..=last_line` has been handed to the producer.
    /// Settled blocks are dropped here as well as in [`Self::due`], so the queue holds only
    /// the blocks still in flight even when nothing checkpoints (a run without Kafka sends
    /// nothing, and its blocks would otherwise pile up for the length of the file).
    pub(crate) fn block_sent(&mut self, last_line: u64) {
        let t = std::mem::replace(&mut self.current, DeliveryTracker::new());
        self.pending.push_back((last_line, t));
        self.advance();
    }

    /// Moves the watermark over the settled prefix of blocks; stops at a failed delivery.
    pub(crate) fn advance(&mut self) -> u64 {
        while let Some((line, t)) = self.pending.front() {
            if t.failed() > 0 || t.acked() < t.sent() {
                break;
            }
            self.acked_through = self.acked_through.max(*line);
            self.pending.pop_front();
        }
        self.acked_through
    }

    /// The watermark to checkpoint now, if it moved and the interval passed (or `force`).
    pub(crate) fn due(&mut self, force: bool) -> Option<u64> {
        let w = self.advance();
        if w > self.checkpointed && (force || self.last_checkpoint.elapsed() >= self.interval) {
            self.checkpointed = w;
            self.last_checkpoint = Instant::now();
            Some(w)
        } else {
            None
        }
    }

    /// Waits until every sent event is settled (one deadline for all); errors on any failure.
    /// Returns the number acknowledged.
    pub(crate) async fn wait_all(&mut self, timeout: Duration) -> Result<u64, PublishError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acked = 0;
        for (_, t) in &self.pending {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            acked += t.wait(left).await?;
        }
        self.advance();
        Ok(acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blocks_move_the_watermark_and_resumed_lines_are_skipped() {
        let mut w = AckWatermark::new(10, Duration::ZERO);
        assert!(w.skips(10) && !w.skips(11));
        assert_eq!(w.due(false), None, "nothing new beyond the resumed line");
        w.block_sent(25);
        w.block_sent(40);
        assert_eq!(w.advance(), 40);
        assert_eq!(w.due(false), Some(40));
        assert_eq!(w.due(false), None);
    }

    #[test]
    fn settled_blocks_do_not_pile_up_without_checkpoints() {
        let mut w = AckWatermark::new(0, Duration::from_secs(3600));
        for line in 1..=10_000 {
            w.block_sent(line);
        }
        assert!(w.pending.is_empty(), "{} blocks kept", w.pending.len());
        assert_eq!(w.acked_through, 10_000);
    }

    #[test]
    fn interval_throttles_checkpoints_unless_forced() {
        let mut w = AckWatermark::new(0, Duration::from_secs(3600));
        w.block_sent(5);
        assert_eq!(w.due(false), None);
        assert_eq!(w.due(true), Some(5));
    }
}
