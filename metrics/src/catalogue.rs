//! Every metric fhirhose exposes, in exposition order. The README's "Operating fhirhose"
//! section lists the same names with their meaning and suggested alerts.
//!
//! Label values (first label always `source`):
//! * `outcome`: `success`, `partial` (fewer scopes granted than requested), `failure` for
//!   tokens; `success`/`failure` for downloads; `done`/`skipped`/`failed` for files.
//! * `reason` on retries: the class — `transport`, `auth`, `throttled`, `server`, `timeout`.
//! * `status`: the HTTP status that caused a retry, or `none` (transport failures).
//! * `layer`: `request` (the transport's retry loop) or `download` (resumed file bodies).

use crate::Family;

/// Buckets for whole export jobs: seconds to a day.
const EXPORT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];
/// Buckets for waits between status polls (profiles cap Retry-After at minutes to hours).
const WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Buckets for Kafka delivery (librdkafka `linger.ms` is 5 ms by default here).
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Token endpoint calls by outcome.
pub static TOKEN_REQUESTS: Family = Family::counter(
    "fhirhose_token_requests_total",
    "Token endpoint calls (grants and refreshes) by outcome: success, partial (fewer scopes granted than requested), failure.",
    &["source", "outcome"],
);
/// Requests refused locally because the grant does not cover them.
pub static SCOPE_DENIALS: Family = Family::counter(
    "fhirhose_scope_denials_total",
    "Requests refused before sending because the granted scopes do not cover them, by missing scope.",
    &["source", "scope"],
);
/// Export jobs kicked off.
pub static EXPORT_KICKOFFS: Family = Family::counter(
    "fhirhose_export_kickoffs_total",
    "Bulk Data $export kick-offs accepted by the server.",
    &["source"],
);
/// Export jobs re-attached (resumed from the checkpoint in the state database).
pub static EXPORT_JOBS_RESUMED: Family = Family::counter(
    "fhirhose_export_jobs_resumed_total",
    "Export jobs resumed from a checkpoint (re-attached to an earlier kick-off) instead of kicking off again.",
    &["source"],
);
/// Export jobs finished, by final state.
pub static EXPORT_JOBS: Family = Family::counter(
    "fhirhose_export_jobs_total",
    "Export jobs that ended, by final state (done, partial, failed, needs-reauthorization).",
    &["source", "state"],
);
/// Kick-off to manifest.
pub static EXPORT_SERVER_SECONDS: Family = Family::histogram(
    "fhirhose_export_server_seconds",
    "Seconds from kick-off until the server's manifest was ready.",
    &["source"],
    EXPORT_BUCKETS,
);
/// Kick-off to every file durable.
pub static EXPORT_DURATION_SECONDS: Family = Family::histogram(
    "fhirhose_export_duration_seconds",
    "Seconds from kick-off until the export job ended (every file landed, or partial), by final state.",
    &["source", "state"],
    EXPORT_BUCKETS,
);
/// Status polls by answer.
pub static EXPORT_POLLS: Family = Family::counter(
    "fhirhose_export_polls_total",
    "Export status polls by answer: in_progress (202), complete (200), throttled (429/5xx worth waiting).",
    &["source", "outcome"],
);
/// Waits between polls.
pub static EXPORT_POLL_WAIT_SECONDS: Family = Family::histogram(
    "fhirhose_export_poll_wait_seconds",
    "Waits between export status polls by reason (retry-after, backoff, throttled); _sum is the time spent waiting.",
    &["source", "reason"],
    WAIT_BUCKETS,
);
/// Retries.
pub static RETRIES: Family = Family::counter(
    "fhirhose_retries_total",
    "Retried requests and resumed downloads by layer (request, download), reason class (transport, auth, throttled, server, timeout) and HTTP status (none for transport failures).",
    &["source", "layer", "reason", "status"],
);
/// Retries exhausted.
pub static RETRIES_EXHAUSTED: Family = Family::counter(
    "fhirhose_retries_exhausted_total",
    "Requests and downloads that gave up after their last allowed attempt, by layer and reason class.",
    &["source", "layer", "reason"],
);
/// File downloads.
pub static FILE_DOWNLOADS: Family = Family::counter(
    "fhirhose_file_downloads_total",
    "Bulk Data output file downloads by resource type and outcome (success, failure).",
    &["source", "resource_type", "outcome"],
);
/// Bytes downloaded.
pub static DOWNLOAD_BYTES: Family = Family::counter(
    "fhirhose_download_bytes_total",
    "Bytes of Bulk Data output files received (after transfer decoding), by resource type.",
    &["source", "resource_type"],
);
/// Files through the pipeline.
pub static FILES: Family = Family::counter(
    "fhirhose_files_total",
    "Input files through the pipeline by outcome: done, skipped (already landed, checkpoint), failed.",
    &["source", "outcome"],
);
/// Bytes landed raw.
pub static INGESTED_BYTES: Family = Family::counter(
    "fhirhose_ingested_bytes_total",
    "Raw bytes (decompressed) of input files landed in the lake.",
    &["source"],
);
/// Resources landed.
pub static RESOURCES: Family = Family::counter(
    "fhirhose_resources_total",
    "Resources landed (raw, Parquet, events) by resource type.",
    &["source", "resource_type"],
);
/// Dead letters.
pub static DEAD_LETTERS: Family = Family::counter(
    "fhirhose_dead_letters_total",
    "Lines dead-lettered by reason (invalid JSON, oversize, not a resource...).",
    &["source", "reason"],
);
/// Parquet rows.
pub static PARQUET_ROWS: Family = Family::counter(
    "fhirhose_parquet_rows_total",
    "Rows written to Parquet tables, by table.",
    &["source", "table"],
);
/// Kafka delivery latency.
pub static KAFKA_DELIVERY_SECONDS: Family = Family::histogram(
    "fhirhose_kafka_delivery_seconds",
    "Seconds from handing an event to the producer until the broker acknowledged it (includes queueing and batching).",
    &["source"],
    DELIVERY_BUCKETS,
);
/// Kafka delivery failures.
pub static KAFKA_DELIVERY_FAILURES: Family = Family::counter(
    "fhirhose_kafka_delivery_failures_total",
    "Events whose delivery failed, by librdkafka error code.",
    &["source", "error"],
);

/// Every family, in exposition order.
pub static ALL: &[&Family] = &[
    &TOKEN_REQUESTS,
    &SCOPE_DENIALS,
    &EXPORT_KICKOFFS,
    &EXPORT_JOBS_RESUMED,
    &EXPORT_JOBS,
    &EXPORT_SERVER_SECONDS,
    &EXPORT_DURATION_SECONDS,
    &EXPORT_POLLS,
    &EXPORT_POLL_WAIT_SECONDS,
    &RETRIES,
    &RETRIES_EXHAUSTED,
    &FILE_DOWNLOADS,
    &DOWNLOAD_BYTES,
    &FILES,
    &INGESTED_BYTES,
    &RESOURCES,
    &DEAD_LETTERS,
    &PARQUET_ROWS,
    &KAFKA_DELIVERY_SECONDS,
    &KAFKA_DELIVERY_FAILURES,
];
