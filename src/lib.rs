//! fhirhose: SMART on FHIR + Bulk Data ingestion.
//!
//! The binary's library half: CLI definitions, configuration, the pipeline that joins
//! `fhirhose-ingest` (inputs, state) to `fhirhose-sinks` (raw, Parquet, Kafka) and
//! `fhirhose-normalize` (views), and the run summary. See `DESIGN.md` for the architecture.

pub mod audit_cmd;
pub mod auth_cmd;
pub mod cli;
pub mod config;
pub mod demo;
pub mod export;
pub mod fetch;
pub mod lake;
pub mod logging;
pub mod observe;
pub mod pipeline;
pub mod report_cmd;
pub mod reprocess;
pub mod tables;
pub mod tools_cmd;
pub mod views_cmd;
