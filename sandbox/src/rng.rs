//! A tiny seeded RNG (SplitMix64) and calendar helpers.
//!
//! We use our own generator rather than `rand`'s so that "same seed → same bytes" holds
//! across `rand` releases: the synthetic data and the fault schedule are part of test
//! fixtures and benchmarks, and must not change when a dependency is bumped.

/// SplitMix64: fast, statistically fine for synthetic data, and trivially reproducible.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for a sub-stream (e.g. one patient) that does not depend on how many
    /// values other sub-streams consumed.
    pub(crate) fn derive(seed: u64, tag: u64, index: u64) -> Self {
        let mut r = Self(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a = r.next_u64();
        let mut r = Self(a ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant for synthetic data.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// (year, month, day) from days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` for days since the epoch.
pub(crate) fn fmt_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// FHIR `instant` (`YYYY-MM-DDThh:mm:ss.sssZ`) for milliseconds since the epoch.
pub(crate) fn fmt_instant_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// FHIR `dateTime` with seconds precision and a `Z` offset.
pub(crate) fn fmt_datetime(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_matches_known_dates() {
        assert_eq!(fmt_date(0), "1970-01-01");
        assert_eq!(fmt_date(19_723), "2024-01-01");
        assert_eq!(
            fmt_instant_ms(1_709_164_800_123),
            "2024-02-29T00:00:00.123Z"
        );
        assert_eq!(fmt_datetime(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn derived_streams_are_stable() {
        let a = SplitMix64::derive(7, 1, 3).next_u64();
        let b = SplitMix64::derive(7, 1, 3).next_u64();
        let c = SplitMix64::derive(7, 1, 4).next_u64();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
