//! The developer corpus (`tests/data/corpus/*.ndjson.gz`, 28,695 Synthea resources, 22.7 MB
//! uncompressed), decompressed once for the benches.

use std::io::Read;
use std::path::PathBuf;

/// One decompressed corpus file.
pub(crate) struct CorpusFile {
    /// File name, e.g. `Observation.01.ndjson.gz` (not every bench reads it).
    #[allow(dead_code)]
    pub(crate) name: String,
    /// The NDJSON bytes.
    pub(crate) data: Vec<u8>,
}

/// Every corpus file, in name order.
pub(crate) fn load() -> Vec<CorpusFile> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).expect("corpus file"))
                .read_to_end(&mut data)
                .expect("gzip");
            CorpusFile {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                data,
            }
        })
        .collect()
}

/// All files concatenated (each ends with a newline).
#[allow(dead_code)]
pub(crate) fn concatenated() -> Vec<u8> {
    let mut all = Vec::new();
    for f in load() {
        all.extend_from_slice(&f.data);
        if !all.ends_with(b"\n") {
            all.push(b'\n');
        }
    }
    all
}
