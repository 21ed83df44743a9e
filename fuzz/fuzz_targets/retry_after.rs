//! `Retry-After` values: delta-seconds, HTTP-dates, garbage. Never a panic; a date in the
//! past is zero; delta-seconds are taken as given.
#![no_main]

use fhirhose_ingest::http::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    if let Some(d) = parse_retry_after(s, now) {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(d.as_secs(), t.parse::<u64>().unwrap_or(u64::MAX));
        }
    }
});
