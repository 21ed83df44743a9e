//! fhirhose-sinks
