//! Bulk Data completion manifests from arbitrary bytes.
#![no_main]

use fhirhose_ingest::bulk::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = url::Url::parse("https://ehr.example/fhir/bulkstatus/1").unwrap();
    if let Ok(m) = Manifest::parse(data, &status) {
        let _ = m.token_policy();
        for f in &m.files {
            assert!(
                matches!(f.url.scheme(), "http" | "https"),
                "file URLs are http(s)"
            );
        }
    }
});
