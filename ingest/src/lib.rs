//! fhirhose-ingest
