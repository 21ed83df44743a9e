//! ViewDefinition validation and compilation from arbitrary bytes; a view that compiles is
//! evaluated on fixed resources of several types.
#![no_main]

use fhirhose_normalize::{prepare_line, CompiledView};
use libfuzzer_sys::fuzz_target;

const RESOURCES: &[&[u8]] = &[
    br#"{"resourceType":"Patient","id":"p1","name":[{"given":["A"],"family":"C"}],"birthDate":"1970"}"#,
    br#"{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]},"valueQuantity":{"value":1.50,"unit":"mg"},"component":[{"valueString":"x"}]}"#,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(cv) = CompiledView::from_json_slice(data) {
        let _ = cv.schema();
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
});
