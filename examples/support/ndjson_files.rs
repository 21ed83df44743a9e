//! The input-file walk shared by the benchmark examples (`parse_ceiling`, `bare_producer`).

use std::path::{Path, PathBuf};

/// Appends every `.ndjson`/`.ndjson.gz` file at or under `path` to `out`, folders searched
/// recursively in name order (the order `fhirhose ingest` reads them in).
pub(crate) fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, out)?;
        }
    } else {
        let name = path.to_string_lossy();
        if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
            out.push(path.to_path_buf());
        }
    }
    Ok(())
}
