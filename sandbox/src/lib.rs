//! fhirhose-sandbox
