//! fhirhose-ingest
pub mod auth;
pub mod http;
