//! Input files: local NDJSON files and folders, and objects in an object store.
//!
//! An [`InputFile`] is self-describing (where to read it, how to decompress it) and carries a
//! *fingerprint* computed from its identity and metadata (canonical location, size, and
//! modification time or ETag) without reading its content. The pipeline derives raw keys and
//! Parquet names from the fingerprint, so re-ingesting an unchanged file addresses the same
//! objects, and the state store recognises it as already done.
//!
//! Decompression: `.gz` files (by name, or by the gzip magic bytes) are decoded as
//! multi-member gzip; everything downstream sees the decompressed bytes, which is what the raw
//! store keeps.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_compression::tokio::bufread::GzipDecoder;
use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, ObjectStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Buffer size for reading inputs: large reads keep syscalls and task wake-ups rare.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Errors while finding or opening inputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A local path that does not exist or cannot be read.
    #[error("input {path} cannot be read: {source}")]
    Local {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder or prefix with no NDJSON files in it.
    #[error("input {0} contains no .ndjson or .ndjson.gz files")]
    Empty(String),
    /// A remote stream could not be opened.
    #[error("input {location} cannot be opened: {message}")]
    Remote {
        /// Location without query string.
        location: String,
        /// What went wrong (no secrets).
        message: String,
    },
    /// An object store failure.
    #[error("input {location} cannot be read from the object store: {source}")]
    Store {
        /// Object location (never a signed URL).
        location: String,
        /// The store's error.
        source: object_store::Error,
    },
}

/// Opens a byte stream for inputs that are neither local files nor store objects (for
/// example a Bulk Data file download, which resumes with HTTP Range inside the stream).
pub trait StreamOpener: Send + Sync + std::fmt::Debug {
    /// Opens the (possibly compressed) byte stream.
    fn open(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Pin<Box<dyn AsyncRead + Send>>, SourceError>>;
    /// Display location (a URL without query string).
    fn display(&self) -> String;
}

/// What a file holds, which decides how its lines are landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileKind {
    /// FHIR resources, one per line.
    #[default]
    Resources,
    /// Bulk Data `deleted` entries: Bundles whose entries carry `request.method` DELETE.
    Deleted,
    /// Bulk Data `error` file: OperationOutcome resources.
    Error,
}

/// Where an input file's bytes come from.
#[derive(Debug, Clone)]
pub enum Location {
    /// Any other stream.
    Stream(Arc<dyn StreamOpener>),
    /// A local file.
    Local(PathBuf),
    /// An object in a store; `url` is the user-facing URL (`s3://bucket/key`).
    Object {
        /// The store holding it.
        store: Arc<dyn ObjectStore>,
        /// Path within the store.
        path: ObjectPath,
        /// Display URL, without credentials.
        url: String,
    },
}

/// One NDJSON input file.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Where to read it.
    pub location: Location,
    /// File name without directories, e.g. `Observation.01.ndjson.gz`.
    pub name: String,
    /// Size on disk (compressed, if compressed).
    pub size: u64,
    /// Whether the content is gzip-compressed (by name; the magic bytes are checked on open too).
    pub gzip: bool,
    /// Hex sha256 of identity + metadata (see the module docs).
    pub fingerprint: String,
    /// What the file holds.
    pub kind: FileKind,
    /// Folder under `raw/<source>/` for this file (e.g. `export/<job>`); `None` for ad-hoc
    /// ingests, which use `ingest/<fingerprint prefix>`.
    pub group: Option<String>,
}

impl InputFile {
    /// The user-facing location (a path or a URL without query string).
    pub fn display(&self) -> String {
        match &self.location {
            Location::Local(p) => p.display().to_string(),
            Location::Object { url, .. } => url.clone(),
            Location::Stream(s) => s.display(),
        }
    }

    /// The name with compression and NDJSON suffixes removed (`Observation.01`).
    pub fn stem(&self) -> &str {
        let mut n = self.name.as_str();
        for suffix in [".gz", ".ndjson", ".jsonl", ".json"] {
            if let Some(s) = n.strip_suffix(suffix) {
                n = s;
            }
        }
        n
    }

    /// The resource type suggested by the file name (`Observation.01.ndjson` → `Observation`),
    /// following the Bulk Data convention; `None` when the name does not start with one.
    pub fn type_hint(&self) -> Option<&str> {
        let head = self.stem().split(['.', '-', '_']).next()?;
        let mut chars = head.chars();
        let first = chars.next()?;
        (first.is_ascii_uppercase() && chars.all(|c| c.is_ascii_alphanumeric())).then_some(head)
    }

    /// Opens the file as a decompressed byte stream.
    pub async fn open(&self) -> Result<Pin<Box<dyn AsyncRead + Send>>, SourceError> {
        let raw: Pin<Box<dyn AsyncRead + Send>> = match &self.location {
            Location::Local(p) => {
                let f = tokio::fs::File::open(p)
                    .await
                    .map_err(|source| SourceError::Local {
                        path: p.display().to_string(),
                        source,
                    })?;
                Box::pin(f)
            }
            Location::Object { store, path, url } => {
                let res = store.get(path).await.map_err(|source| SourceError::Store {
                    location: url.clone(),
                    source,
                })?;
                let stream = res.into_stream().map_err(std::io::Error::other);
                Box::pin(tokio_util::io::StreamReader::new(stream))
            }
            Location::Stream(s) => s.open().await?,
        };
        let mut buffered = BufReader::with_capacity(READ_BUFFER_BYTES, raw);
        let head = buffered
            .fill_buf()
            .await
            .map_err(|source| SourceError::Local {
                path: self.display(),
                source,
            })?;
        let is_gzip = head.starts_with(&[0x1f, 0x8b]);
        if is_gzip || (self.gzip && head.is_empty()) {
            let mut dec = GzipDecoder::new(buffered);
            dec.multiple_members(true);
            Ok(Box::pin(dec))
        } else {
            Ok(Box::pin(buffered))
        }
    }
}

fn is_ndjson_name(name: &str) -> bool {
    let n = name.strip_suffix(".gz").unwrap_or(name);
    n.ends_with(".ndjson") || n.ends_with(".jsonl")
}

fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Lists local inputs: a file is taken as is (whatever its name); a folder is walked
/// recursively for `.ndjson`, `.jsonl` and their `.gz` forms, in path order.
pub fn list_local(path: &Path) -> Result<Vec<InputFile>, SourceError> {
    let err = |source| SourceError::Local {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(local_file(path, &meta).map_err(err)?);
    } else {
        let mut stack = vec![path.to_path_buf()];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(err)? {
                let entry = entry.map_err(err)?;
                let p = entry.path();
                let ft = entry.file_type().map_err(err)?;
                if ft.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_ndjson_name)
                {
                    files.push(p);
                }
            }
        }
        files.sort();
        for p in files {
            let m = std::fs::metadata(&p).map_err(err)?;
            out.push(local_file(&p, &m).map_err(err)?);
        }
        if out.is_empty() {
            return Err(SourceError::Empty(path.display().to_string()));
        }
    }
    Ok(out)
}

fn local_file(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<InputFile> {
    let canon = std::fs::canonicalize(path)?;
    let name = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let fp = fingerprint(&[
        b"file",
        canon.as_os_str().as_encoded_bytes(),
        &meta.len().to_le_bytes(),
        &mtime.to_le_bytes(),
    ]);
    Ok(InputFile {
        gzip: name.ends_with(".gz"),
        name,
        size: meta.len(),
        fingerprint: fp,
        location: Location::Local(canon),
        kind: FileKind::Resources,
        group: None,
    })
}

/// Lists objects under `prefix` in `store` (or the single object at `prefix`). `url_base` is
/// the display form of the store root, e.g. `s3://bucket`.
pub async fn list_objects(
    store: Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    url_base: &str,
) -> Result<Vec<InputFile>, SourceError> {
    let display = |p: &ObjectPath| format!("{}/{}", url_base.trim_end_matches('/'), p);
    // A single object?
    if !prefix.as_ref().is_empty() {
        if let Ok(meta) = store.head(prefix).await {
            return Ok(vec![object_file(&store, &meta, &display(&meta.location))]);
        }
    }
    let metas: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|source| SourceError::Store {
            location: display(prefix),
            source,
        })?;
    let mut out: Vec<InputFile> = metas
        .iter()
        .filter(|m| m.location.filename().is_some_and(is_ndjson_name))
        .map(|m| object_file(&store, m, &display(&m.location)))
        .collect();
    out.sort_by_key(InputFile::display);
    if out.is_empty() {
        return Err(SourceError::Empty(display(prefix)));
    }
    Ok(out)
}

fn object_file(
    store: &Arc<dyn ObjectStore>,
    meta: &object_store::ObjectMeta,
    url: &str,
) -> InputFile {
    let name = meta.location.filename().unwrap_or_default().to_string();
    let fp = fingerprint(&[
        b"object",
        url.as_bytes(),
        &meta.size.to_le_bytes(),
        meta.e_tag.as_deref().unwrap_or("").as_bytes(),
        meta.last_modified.to_rfc3339().as_bytes(),
    ]);
    InputFile {
        gzip: name.ends_with(".gz"),
        name,
        size: meta.size,
        fingerprint: fp,
        location: Location::Object {
            store: Arc::clone(store),
            path: meta.location.clone(),
            url: url.to_string(),
        },
        kind: FileKind::Resources,
        group: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn stems_and_type_hints() {
        let f = |name: &str| InputFile {
            location: Location::Local(PathBuf::from(name)),
            name: name.into(),
            size: 0,
            gzip: false,
            fingerprint: String::new(),
            kind: FileKind::Resources,
            group: None,
        };
        assert_eq!(f("Observation.01.ndjson.gz").stem(), "Observation.01");
        assert_eq!(
            f("Observation.01.ndjson.gz").type_hint(),
            Some("Observation")
        );
        assert_eq!(f("1.Patient.ndjson").type_hint(), None);
        assert_eq!(f("patients.ndjson").type_hint(), None);
        assert_eq!(f("Patient-2.ndjson").type_hint(), Some("Patient"));
    }

    #[tokio::test]
    async fn lists_folders_and_decompresses_gzip() {
        let dir = std::env::temp_dir().join(format!("fhirhose-src-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.ndjson"), b"{}\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"{\"x\":1}\n").unwrap();
        std::fs::write(dir.join("sub/b.ndjson.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        let files = list_local(&dir).unwrap();
        assert_eq!(files.len(), 2);
        let mut s = String::new();
        files[1]
            .open()
            .await
            .unwrap()
            .read_to_string(&mut s)
            .await
            .unwrap();
        assert_eq!(s, "{\"x\":1}\n");
        // Same file, same fingerprint; a change in content size changes it.
        let again = list_local(&dir).unwrap();
        assert_eq!(files[0].fingerprint, again[0].fingerprint);
        std::fs::write(dir.join("a.ndjson"), b"{}\n{}\n").unwrap();
        let changed = list_local(&dir).unwrap();
        assert_ne!(files[0].fingerprint, changed[0].fingerprint);
        assert!(matches!(
            list_local(&dir.join("missing")),
            Err(SourceError::Local { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
