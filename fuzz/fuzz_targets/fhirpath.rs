//! The FHIRPath parser and evaluator, through the only public door: a ViewDefinition column
//! whose `path` is the fuzzed expression (and a `where` clause with it). A compiled view is
//! evaluated on a few fixed resources; errors are fine, panics and hangs are not.
#![no_main]

use fhirhose_normalize::{prepare_line, CompiledView};
use libfuzzer_sys::fuzz_target;

const RESOURCES: &[&[u8]] = &[
    br#"{"resourceType":"Patient","id":"p1","active":true,"name":[{"given":["A","B"],"family":"C"}],"birthDate":"1970-01-01","multipleBirthInteger":2,"extension":[{"url":"http://x","valueDecimal":1.50}]}"#,
    br#"{"resourceType":"Patient","id":"p2","meta":{"lastUpdated":"2020-01-01T00:00:00Z"},"link":[{"other":{"reference":"Patient/p1"}}]}"#,
];

fuzz_target!(|data: &[u8]| {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    let view = serde_json::json!({
        "resourceType": "ViewDefinition",
        "name": "fuzz",
        "resource": "Patient",
        "status": "active",
        "select": [{"column": [{"name": "c", "path": expr, "collection": true}]}],
    });
    let filtered = serde_json::json!({
        "resourceType": "ViewDefinition",
        "name": "fuzz",
        "resource": "Patient",
        "status": "active",
        "where": [{"path": expr}],
        "select": [{"column": [{"name": "id", "path": "id"}]}],
    });
    for v in [view, filtered] {
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(cv) = CompiledView::from_json_slice(&bytes) {
            let mut b = cv.builder();
            let mut buf = Vec::new();
            for r in RESOURCES {
                buf.clear();
                prepare_line(r, &mut buf);
                let doc = simd_json::to_borrowed_value(&mut buf).unwrap();
                let _ = b.append(&doc);
            }
            let _ = b.finish_batch();
        }
    }
});
