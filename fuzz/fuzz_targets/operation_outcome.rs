//! OperationOutcome summaries (what a failed status poll or kick-off reports) from
//! arbitrary JSON: never a panic, never diagnostics text in the summary.
#![no_main]

use fhirhose_ingest::bulk::poll::outcome_summary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let s = outcome_summary(&v);
    if let Some(issues) = v["issue"].as_array() {
        for i in issues {
            if let Some(d) = i["diagnostics"].as_str() {
                if d.len() > 8 && !d.contains(':') && !d.contains(',') {
                    let sev = i["severity"].as_str().unwrap_or("");
                    let code = i["code"].as_str().unwrap_or("");
                    if !sev.contains(d) && !code.contains(d) {
                        assert!(!s.contains(d), "diagnostics leaked into the summary");
                    }
                }
            }
        }
    }
});
