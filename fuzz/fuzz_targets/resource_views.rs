//! Arbitrary resource JSON through decimal preparation, simd-json and the canonical views'
//! shapes (a representative Patient and Observation view): what every NDJSON line meets.
#![no_main]

use std::sync::OnceLock;

use fhirhose_normalize::{prepare_line, CompiledView};
use libfuzzer_sys::fuzz_target;

fn views() -> &'static [CompiledView] {
    static V: OnceLock<Vec<CompiledView>> = OnceLock::new();
    V.get_or_init(|| {
        [
            "patient.json",
            "observation.json",
            "observation_component.json",
        ]
        .iter()
        .filter_map(|n| {
            let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/views/");
            let bytes = std::fs::read(format!("{p}{n}")).ok()?;
            CompiledView::from_json_slice(&bytes).ok()
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut buf = Vec::new();
    prepare_line(data, &mut buf);
    let Ok(doc) = simd_json::to_borrowed_value(&mut buf) else {
        return;
    };
    for v in views() {
        let mut b = v.builder();
        let _ = b.append(&doc);
        let _ = b.finish_batch();
    }
});
