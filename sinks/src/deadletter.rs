//! Dead letters: input that cannot be landed, kept with a reason and a pointer to its raw bytes.
//!
//! A dead letter never carries the offending content itself (it may hold PHI): it names the
//! raw object, the 1-based line, the byte offset and the length, so the bytes can be read back
//! from the raw store, which keeps everything as received. Dead letters are written as NDJSON
//! objects under `deadletter/` and published to the `<prefix>.deadletter` topic.

use std::sync::Arc;

use object_store::buffered::BufWriter;
use object_store::{path::Path, ObjectStore};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// Why a line was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Not valid JSON.
    InvalidJson,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Longer than the line limit.
    Oversize,
    /// JSON, but not an object.
    NotAnObject,
    /// No `resourceType` string.
    MissingResourceType,
    /// No `id` string.
    MissingId,
    /// The last line of the file ended without a newline and is not valid JSON.
    Truncated,
    /// Nested deeper than the parser's limit.
    TooDeep,
}

impl Reason {
    /// The snake_case name used in reports, headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Oversize => "oversize",
            Self::NotAnObject => "not_an_object",
            Self::MissingResourceType => "missing_resource_type",
            Self::MissingId => "missing_id",
            Self::Truncated => "truncated",
            Self::TooDeep => "too_deep",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Why.
    pub reason: Reason,
    /// A content-free detail (an error class and position).
    pub detail: String,
    /// Raw object holding the bytes.
    pub raw_key: String,
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line in the raw object.
    pub offset: u64,
    /// Line length in bytes (without newline).
    pub length: u64,
}

/// Errors writing dead letters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// Upload failed.
    #[error("dead-letter object {key} could not be written: {source}")]
    Io {
        /// Object key.
        key: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Streams dead letters of one file task into one NDJSON object, created on the first one.
pub struct DeadLetterWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    writer: Option<BufWriter>,
    count: u64,
    line: Vec<u8>,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("key", &self.key.as_ref())
            .field("count", &self.count)
            .finish()
    }
}

impl DeadLetterWriter {
    /// A writer for `key`.
    pub fn new(store: Arc<dyn ObjectStore>, key: Path) -> Self {
        Self {
            store,
            key,
            writer: None,
            count: 0,
            line: Vec::with_capacity(256),
        }
    }

    /// Dead letters written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The object key.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Appends one dead letter.
    pub async fn write(&mut self, dl: &DeadLetter) -> Result<(), DeadLetterError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, dl).expect("serializing a plain struct cannot fail");
        self.line.push(b'\n');
        let w = self.writer.get_or_insert_with(|| {
            BufWriter::with_capacity(Arc::clone(&self.store), self.key.clone(), 1024 * 1024)
        });
        w.write_all(&self.line)
            .await
            .map_err(|source| DeadLetterError::Io {
                key: self.key.to_string(),
                source,
            })?;
        self.count += 1;
        Ok(())
    }

    /// Completes the object (if any dead letter was written).
    pub async fn finish(mut self) -> Result<u64, DeadLetterError> {
        if let Some(mut w) = self.writer.take() {
            w.shutdown().await.map_err(|source| DeadLetterError::Io {
                key: self.key.to_string(),
                source,
            })?;
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn writes_ndjson_only_when_needed() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let w = DeadLetterWriter::new(Arc::clone(&store), Path::from("dl/a.ndjson"));
        assert_eq!(w.finish().await.unwrap(), 0);
        assert!(store.head(&Path::from("dl/a.ndjson")).await.is_err());

        let mut w = DeadLetterWriter::new(Arc::clone(&store), Path::from("dl/a.ndjson"));
        let dl = DeadLetter {
            reason: Reason::MissingId,
            detail: "no id".into(),
            raw_key: "raw/x".into(),
            line: 3,
            offset: 10,
            length: 5,
        };
        w.write(&dl).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 1);
        let got = store
            .get(&Path::from("dl/a.ndjson"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["reason"], "missing_id");
        assert_eq!(v["line"], 3);
    }
}
