//! fhirhose-normalize
