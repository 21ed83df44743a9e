//! Authorization audit events (placeholder; filled in below).

/// Writing an audit event failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink could not write.
    #[error("audit sink write failed")]
    Io(#[from] std::io::Error),
}
