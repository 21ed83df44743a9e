//! fhirhose: SMART on FHIR + Bulk Data ingestion.
//!
//! The binary's library half: CLI definitions, configuration, the pipeline that joins
//! `fhirhose-ingest` (inputs, state) to `fhirhose-sinks` (raw, Parquet, Kafka) and
//! `fhirhose-normalize` (views), and the run summary. See `DESIGN.md` for the architecture.

pub mod cli;
pub mod demo;
pub mod export;
pub mod fetch;
pub mod lake;
pub mod logging;
pub mod pipeline;
pub mod tools_cmd;
pub mod views_cmd;
