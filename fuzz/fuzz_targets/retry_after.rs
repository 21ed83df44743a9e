//! `Retry-After` values: delta-seconds, HTTP-dates, epoch times where delta-seconds belong,
//! garbage. Never a panic. Digit strings below 10^9 are delays taken as given; longer ones are
//! Unix times (seconds, or milliseconds from 10^12) turned into the time left, which is never
//! more than the distance from `now` to that instant; HTTP-dates in the past are zero.
#![no_main]

use fhirhose_ingest::http::parse_retry_after;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    let Some(d) = parse_retry_after(s, now) else {
        return;
    };
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return;
    }
    let n = t.parse::<u64>().unwrap_or(u64::MAX);
    if n < 1_000_000_000 {
        assert_eq!(d.as_secs(), n, "a delay is taken as given");
    } else {
        let target_ms = if n >= 1_000_000_000_000 {
            u128::from(n)
        } else {
            u128::from(n) * 1000
        };
        let now_ms = NOW as u128 * 1000;
        assert_eq!(
            d.as_millis(),
            target_ms.saturating_sub(now_ms),
            "an epoch time becomes the time left"
        );
    }
});
