//! fhirhose-ingest: everything that brings FHIR data in.
//!
//! - [`framing`]: bounded NDJSON line framing.
//! - [`source`]: local and object-store input files, with decompression.
//! - [`state`]: the SQLite state store (runs, file tasks).
//!
//! This crate knows nothing of sinks or normalization; the `fhirhose` binary joins them.

pub mod auth;
pub mod bulk;
pub mod framing;
pub mod http;
pub mod search;
pub mod source;
pub mod state;
