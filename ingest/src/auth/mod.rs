//! SMART on FHIR authorization.

mod audit;
mod error;

pub use audit::AuditError;
pub use error::{AuthError, AuthErrorKind, ScopeDenied};
