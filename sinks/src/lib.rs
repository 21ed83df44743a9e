//! fhirhose-sinks: where data lands.
//!
//! - [`raw`]: the raw store: bytes exactly as received, create-only, with sha256.
//! - [`parquet`]: Parquet table parts through `AsyncArrowWriter` over the object store.
//! - [`kafka`]: one event per resource, CloudEvents binary mode, idempotent producer.
//! - [`deadletter`]: malformed input, recorded with a reason and a pointer to the raw bytes.
//!
//! # Delivery guarantees
//! - Raw objects are written once (`PutMode::Create` or create-only copy). A retry that finds
//!   the object already there compares sha256: the same bytes are success, different bytes are
//!   an error ([`raw::RawError::Conflict`]). Raw is never overwritten.
//! - Parquet parts have deterministic names derived from the input's fingerprint, so a retried
//!   file task replaces its own earlier parts instead of adding rows: no duplicate rows.
//! - Kafka is at-least-once: the idempotent producer (`enable.idempotence=true`, `acks=all`)
//!   removes its own retry duplicates; a file task is only marked done after every delivery
//!   report came back Ok ([`kafka::DeliveryTracker`]). A task retried after a crash publishes
//!   its events again, with the same `ce_id` (derived from raw key and line), so consumers
//!   de-duplicate on `ce_id`.

pub mod deadletter;
pub mod kafka;
pub mod parquet;
pub mod raw;
pub mod upload;
