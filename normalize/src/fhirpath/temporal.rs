//! Date, time and decimal helpers: `lowBoundary()` / `highBoundary()` and instant parsing.
//!
//! Boundaries follow FHIRPath: a partial value is widened to the earliest (lowest) or
//! latest (highest) value it could stand for, at millisecond precision. A dateTime with no
//! time zone takes the widest offsets, `+14:00` for the low boundary and `-12:00` for the
//! high one.

/// Splits a decimal lexical form into (mantissa, scale): `-1.25` → (-125, 2).
fn parse_decimal(text: &str) -> Option<(i128, u32)> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if int.len() + frac.len() > 30 {
        return None;
    }
    let mut m: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        m = m * 10 + i128::from(b - b'0');
    }
    let scale = u32::try_from(frac.len()).ok()?;
    Some((if neg { -m } else { m }, scale))
}

fn format_decimal(m: i128, scale: u32) -> String {
    let neg = m < 0;
    let digits = m.unsigned_abs().to_string();
    let scale = scale as usize;
    let mut out = String::with_capacity(digits.len() + 3);
    if neg {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        for _ in 0..scale - digits.len() {
            out.push('0');
        }
        out.push_str(&digits);
    }
    out
}

/// Boundary of a decimal given in lexical form: half a unit of the last digit below or above.
pub(crate) fn decimal_boundary(text: &str, high: bool) -> Option<String> {
    let (m, scale) = parse_decimal(text)?;
    let m10 = m.checked_mul(10)?;
    let b = if high { m10 + 5 } else { m10 - 5 };
    Some(format_decimal(b, scale + 1))
}

/// Shortest text of a float that reads back to the same value, with at least one
/// fractional digit (`1.0`, not `1`): a JSON fraction is a FHIR decimal.
pub(crate) fn float_text(f: f64) -> String {
    if let Some(s) = short_float_text(f) {
        return s;
    }
    let mut s = format!("{f}");
    if f.is_finite() && !s.contains('.') && !s.contains('e') {
        s.push_str(".0");
    }
    s
}

/// Fast path of [`float_text`] for the common case of a few decimal places (`134.8`,
/// `0.95`): finds the fewest decimals `k <= 6` with `m / 10^k == f` exactly, which is the
/// shortest text that reads back to `f`, and writes it without the float formatter.
fn short_float_text(f: f64) -> Option<String> {
    const POW: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    if !f.is_finite() || f == 0.0 || f.abs() >= 1e15 {
        return None;
    }
    for (k, p) in POW.iter().enumerate().skip(1) {
        let m = (f * p).round();
        // Below 2^52 the spacing of doubles near `f` is finer than 10^-k, so at most one
        // k-decimal number reads back to `f`: the one found here is the shortest form.
        if m.abs() >= 4.0e15 {
            return None;
        }
        if m / p == f {
            #[allow(clippy::cast_possible_truncation)]
            let m = m as i64;
            let digits = m.unsigned_abs().to_string();
            let mut out = String::with_capacity(digits.len() + 3);
            if m < 0 {
                out.push('-');
            }
            if digits.len() > k {
                out.push_str(&digits[..digits.len() - k]);
                out.push('.');
                out.push_str(&digits[digits.len() - k..]);
            } else {
                out.push_str("0.");
                out.extend(std::iter::repeat_n('0', k - digits.len()));
                out.push_str(&digits);
            }
            // `1.50` would not be shortest: k is minimal, so the last digit is not 0,
            // except for whole numbers, which stop at `k = 1` (`2.0`).
            return Some(out);
        }
    }
    None
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Parsed `YYYY[-MM[-DD]]`.
struct DateParts {
    year: i64,
    month: Option<u32>,
    day: Option<u32>,
}

fn parse_date(s: &str) -> Option<DateParts> {
    let mut it = s.split('-');
    let y = it.next()?;
    if y.len() != 4 || !all_digits(y) {
        return None;
    }
    let year = y.parse().ok()?;
    let month = match it.next() {
        None => None,
        Some(m) if m.len() == 2 && all_digits(m) => {
            Some(m.parse().ok().filter(|m| (1..=12).contains(m))?)
        }
        Some(_) => return None,
    };
    let day = match it.next() {
        None => None,
        Some(d) if d.len() == 2 && all_digits(d) && month.is_some() => Some(
            d.parse()
                .ok()
                .filter(|d: &u32| *d >= 1 && *d <= days_in_month(year, month.unwrap_or(1)))?,
        ),
        Some(_) => return None,
    };
    if it.next().is_some() {
        return None;
    }
    Some(DateParts { year, month, day })
}

fn date_bound(d: &DateParts, high: bool) -> String {
    let month = d.month.unwrap_or(if high { 12 } else { 1 });
    let day = d.day.unwrap_or(if high {
        days_in_month(d.year, month)
    } else {
        1
    });
    format!("{:04}-{:02}-{:02}", d.year, month, day)
}

/// Parsed `hh[:mm[:ss[.fff]]]`.
struct TimeParts<'s> {
    hour: &'s str,
    minute: Option<&'s str>,
    second: Option<&'s str>,
    frac: Option<&'s str>,
}

fn parse_time(s: &str) -> Option<TimeParts<'_>> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) if all_digits(f) => (a, Some(f)),
        Some(_) => return None,
        None => (s, None),
    };
    let mut it = hms.split(':');
    let hour = it.next().filter(|h| h.len() == 2 && all_digits(h))?;
    let minute = match it.next() {
        Some(m) if m.len() == 2 && all_digits(m) => Some(m),
        Some(_) => return None,
        None => None,
    };
    let second = match it.next() {
        Some(x) if x.len() == 2 && all_digits(x) && minute.is_some() => Some(x),
        Some(_) => return None,
        None => None,
    };
    if it.next().is_some() || (frac.is_some() && second.is_none()) {
        return None;
    }
    Some(TimeParts {
        hour,
        minute,
        second,
        frac,
    })
}

fn time_bound(t: &TimeParts<'_>, high: bool) -> String {
    let fill = |v: Option<&str>, hi: &'static str| -> String {
        v.map_or_else(
            || if high { hi.to_owned() } else { "00".to_owned() },
            str::to_owned,
        )
    };
    let frac = match t.frac {
        Some(f) if f.len() >= 3 => f.to_owned(),
        Some(f) => {
            let pad = if high { '9' } else { '0' };
            let mut s = f.to_owned();
            while s.len() < 3 {
                s.push(pad);
            }
            s
        }
        None => if high { "999" } else { "000" }.to_owned(),
    };
    format!(
        "{}:{}:{}.{}",
        t.hour,
        fill(t.minute, "59"),
        fill(t.second, "59"),
        frac
    )
}

/// Boundary of a date (`1970-06` → `1970-06-01` / `1970-06-30`).
pub(crate) fn date_boundary(s: &str, high: bool) -> Option<String> {
    parse_date(s).map(|d| date_bound(&d, high))
}

/// Boundary of a time (`12:34` → `12:34:00.000` / `12:34:59.999`).
pub(crate) fn time_boundary(s: &str, high: bool) -> Option<String> {
    parse_time(s).map(|t| time_bound(&t, high))
}

fn split_tz(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_suffix('Z') {
        return (rest, Some("Z"));
    }
    if s.len() > 6 && s.is_char_boundary(s.len() - 6) {
        let (a, b) = s.split_at(s.len() - 6);
        if (b.starts_with('+') || b.starts_with('-')) && b.as_bytes().get(3) == Some(&b':') {
            return (a, Some(b));
        }
    }
    (s, None)
}

/// Boundary of a dateTime, always with a time part and an offset.
pub(crate) fn datetime_boundary(s: &str, high: bool) -> Option<String> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let d = parse_date(date)?;
    let (time, tz) = match time {
        Some(t) => {
            let (t, tz) = split_tz(t);
            (Some(parse_time(t)?), tz)
        }
        None => (None, None),
    };
    let date = date_bound(&d, high);
    let time = match &time {
        Some(t) => time_bound(t, high),
        None => if high { "23:59:59.999" } else { "00:00:00.000" }.to_owned(),
    };
    let tz = tz.unwrap_or(if high { "-12:00" } else { "+14:00" });
    Some(format!("{date}T{time}{tz}"))
}

/// Looks like a date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`).
pub(crate) fn is_date(s: &str) -> bool {
    parse_date(s).is_some()
}

/// Looks like a time (`hh:mm[:ss[.f]]`).
pub(crate) fn is_time(s: &str) -> bool {
    s.contains(':') && !s.contains('T') && parse_time(s).is_some()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a FHIR `instant` (`YYYY-MM-DDThh:mm:ss[.f+](Z|±hh:mm)`) to microseconds since
/// the Unix epoch, UTC. Digits past the microsecond are truncated. Byte-level and
/// allocation-free: it runs for every instant column of every row.
pub(crate) fn parse_instant_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let day = u32::try_from(day)
        .ok()
        .filter(|d| *d >= 1 && *d <= days_in_month(year, month))?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 14 || m > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// A date, dateTime or time split into components, for precision-aware comparison.
#[derive(Debug, Clone, Copy)]
struct Moment {
    /// year, month, day, hour, minute, second, millisecond (unset parts are 0).
    parts: [i64; 7],
    /// How many of `parts` were given (1 = year only, 7 = milliseconds).
    precision: usize,
    /// Offset from UTC in minutes, when a time zone was given.
    offset: Option<i64>,
    /// A time of day without a date (`T10:00`, `10:00`).
    time_only: bool,
}

fn parse_moment(s: &str) -> Option<Moment> {
    let mut parts = [0i64; 7];
    let (date, time, time_only) = if s.contains('T') {
        let (d, t) = s.split_once('T')?;
        (Some(d), Some(t), d.is_empty())
    } else if s.contains(':') {
        (None, Some(s), true)
    } else {
        (Some(s), None, false)
    };
    let mut precision = 0;
    if let Some(d) = date.filter(|d| !d.is_empty()) {
        let dp = parse_date(d)?;
        parts[0] = dp.year;
        precision = 1;
        if let Some(m) = dp.month {
            parts[1] = i64::from(m);
            precision = 2;
        }
        if let Some(day) = dp.day {
            parts[2] = i64::from(day);
            precision = 3;
        }
    }
    let mut offset = None;
    if let Some(t) = time.filter(|t| !t.is_empty()) {
        if !time_only && precision < 3 {
            return None;
        }
        let (t, tz) = split_tz(t);
        let tp = parse_time(t)?;
        parts[3] = tp.hour.parse().ok()?;
        precision = 4;
        if let Some(m) = tp.minute {
            parts[4] = m.parse().ok()?;
            precision = 5;
        }
        if let Some(sec) = tp.second {
            parts[5] = sec.parse().ok()?;
            precision = 6;
        }
        if let Some(f) = tp.frac {
            let ms: String = f.chars().chain("000".chars()).take(3).collect();
            parts[6] = ms.parse().ok()?;
            precision = 7;
        }
        offset = match tz {
            None => None,
            Some("Z") => Some(0),
            Some(o) => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let h: i64 = o.get(1..3)?.parse().ok()?;
                let m: i64 = o.get(4..6)?.parse().ok()?;
                Some(sign * (h * 60 + m))
            }
        };
    }
    (precision > 0).then_some(Moment {
        parts,
        precision,
        offset,
        time_only,
    })
}

impl Moment {
    /// Shifts a value with a date and at least minutes to UTC.
    fn to_utc(mut self) -> Self {
        let Some(off) = self.offset else { return self };
        if self.time_only || self.precision < 5 || off == 0 {
            return self;
        }
        let days = days_from_civil(
            self.parts[0],
            u32::try_from(self.parts[1]).unwrap_or(1),
            u32::try_from(self.parts[2]).unwrap_or(1),
        );
        let minutes = days * 1440 + self.parts[3] * 60 + self.parts[4] - off;
        let (days, rem) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
        let (y, m, d) = civil_from_days(days);
        self.parts[0] = y;
        self.parts[1] = i64::from(m);
        self.parts[2] = i64::from(d);
        self.parts[3] = rem / 60;
        self.parts[4] = rem % 60;
        self.offset = Some(0);
        self
    }
}

/// Inverse of [`days_from_civil`].
const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// FHIRPath comparison of two date/dateTime/time texts: `None` when either is not one,
/// `Some(None)` when the answer is unknown (different precisions that agree as far as both
/// go, or a time zone on one side only), otherwise the ordering. Seconds and milliseconds
/// count as one precision, as FHIRPath specifies.
pub(crate) fn temporal_cmp(a: &str, b: &str) -> Option<Option<std::cmp::Ordering>> {
    let (x, y) = (parse_moment(a)?, parse_moment(b)?);
    if x.time_only != y.time_only {
        return None;
    }
    let norm = |p: usize| if p == 7 { 6 } else { p };
    let common = norm(x.precision).min(norm(y.precision));
    let (x, y) = match (x.offset, y.offset) {
        (Some(_), Some(_)) => (x.to_utc(), y.to_utc()),
        (None, None) => (x, y),
        // One side zoned, the other not: comparable only down to the day.
        _ if common <= 3 => (x, y),
        _ => return Some(None),
    };
    let start = if x.time_only { 3 } else { 0 };
    for i in start..common {
        match x.parts[i].cmp(&y.parts[i]) {
            std::cmp::Ordering::Equal => {}
            o => return Some(Some(o)),
        }
    }
    if norm(x.precision) != norm(y.precision) {
        return Some(None);
    }
    Some(Some(x.parts[6].cmp(&y.parts[6])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_boundaries() {
        assert_eq!(decimal_boundary("1.0", false).as_deref(), Some("0.95"));
        assert_eq!(decimal_boundary("1.0", true).as_deref(), Some("1.05"));
        assert_eq!(decimal_boundary("-1.0", false).as_deref(), Some("-1.05"));
        assert_eq!(decimal_boundary("2", true).as_deref(), Some("2.5"));
        assert_eq!(decimal_boundary("0.001", false).as_deref(), Some("0.0005"));
        assert_eq!(float_text(1.0), "1.0");
        assert_eq!(float_text(1.5), "1.5");
        assert_eq!(float_text(-0.0), "-0.0");
        assert_eq!(float_text(0.001), "0.001");
        assert_eq!(float_text(-134.8), "-134.8");
        // The fast path agrees with the float formatter wherever it applies.
        let mut state: u64 = 7;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut samples: Vec<f64> = vec![
            0.1,
            0.2,
            0.3,
            0.95,
            1.05,
            42.0,
            134.8,
            1e14 + 0.5,
            0.000_001,
            123_456.789_012,
        ];
        for _ in 0..20_000 {
            let scale = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e9][(next() % 8) as usize];
            let m = (next() % 2_000_000_000) as f64 - 1e9;
            samples.push(m / scale);
            samples.push(f64::from_bits(next()));
        }
        for f in samples {
            if let Some(fast) = short_float_text(f) {
                let mut slow = format!("{f}");
                if !slow.contains('.') {
                    slow.push_str(".0");
                }
                assert_eq!(fast, slow, "{f:e}");
            }
        }
    }

    #[test]
    fn temporal_boundaries() {
        assert_eq!(
            date_boundary("1970-06", false).as_deref(),
            Some("1970-06-01")
        );
        assert_eq!(
            date_boundary("1970-06", true).as_deref(),
            Some("1970-06-30")
        );
        assert_eq!(
            date_boundary("2000-02", true).as_deref(),
            Some("2000-02-29")
        );
        assert_eq!(date_boundary("1970", true).as_deref(), Some("1970-12-31"));
        assert_eq!(
            datetime_boundary("2010-10-10", false).as_deref(),
            Some("2010-10-10T00:00:00.000+14:00")
        );
        assert_eq!(
            datetime_boundary("2010-10-10", true).as_deref(),
            Some("2010-10-10T23:59:59.999-12:00")
        );
        assert_eq!(
            datetime_boundary("2010-10-10T10:30Z", true).as_deref(),
            Some("2010-10-10T10:30:59.999Z")
        );
        assert_eq!(
            time_boundary("12:34:00", false).as_deref(),
            Some("12:34:00.000")
        );
        assert_eq!(
            time_boundary("12:34:00", true).as_deref(),
            Some("12:34:00.999")
        );
        assert!(date_boundary("1970-13", true).is_none());
        assert!(datetime_boundary("nonsense", true).is_none());
    }

    #[test]
    fn temporal_comparison() {
        use std::cmp::Ordering::*;
        assert_eq!(temporal_cmp("2020-01-01", "2020-01-01"), Some(Some(Equal)));
        assert_eq!(
            temporal_cmp("2020-01-02", "2020-01-01"),
            Some(Some(Greater))
        );
        assert_eq!(
            temporal_cmp("2020-01", "2020-01-15"),
            Some(None),
            "different precision"
        );
        assert_eq!(temporal_cmp("2019", "2020-01-15"), Some(Some(Less)));
        assert_eq!(
            temporal_cmp("2020-01-01T10:00:00+01:00", "2020-01-01T09:00:00Z"),
            Some(Some(Equal)),
            "time zones normalised"
        );
        assert_eq!(
            temporal_cmp("2020-01-01T00:30:00+01:00", "2019-12-31T23:30:00Z"),
            Some(Some(Equal)),
            "across a day boundary"
        );
        assert_eq!(
            temporal_cmp("2020-01-01T10:00:00", "2020-01-01T10:00:00Z"),
            Some(None)
        );
        assert_eq!(
            temporal_cmp("2020-01-01T10:00:00.5Z", "2020-01-01T10:00:00.500Z"),
            Some(Some(Equal))
        );
        assert_eq!(
            temporal_cmp("2020-01-01T10:00:00Z", "2020-01-01T10:00:00.000Z"),
            Some(Some(Equal))
        );
        assert_eq!(temporal_cmp("18:12:00", "18:32:00"), Some(Some(Less)));
        assert_eq!(temporal_cmp("abc", "2020"), None);
        assert_eq!(temporal_cmp("18:12", "2020-01-01"), None);
        for d in [-800_000_i64, -1, 0, 1, 18_000, 2_932_896] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
    }

    #[test]
    fn instants() {
        assert_eq!(parse_instant_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_instant_micros("1970-01-01T01:00:00.5+01:00"),
            Some(500_000)
        );
        assert_eq!(
            parse_instant_micros("2015-02-07T13:28:17.239+02:00"),
            Some(1_423_308_497_239_000)
        );
        assert_eq!(parse_instant_micros("2015-02-07"), None);
        assert_eq!(parse_instant_micros("2015-02-07T13:28:17"), None);
        assert_eq!(parse_instant_micros("2015-02-07T13:28:1é+00:00"), None);
        assert_eq!(
            parse_instant_micros("2015-02-07T13:28:17.1234567Z"),
            Some(1_423_315_697_123_456)
        );
        assert_eq!(parse_instant_micros("2015-02-07T13:28:17.Z"), None);
        assert_eq!(parse_instant_micros("2015-02-30T13:28:17Z"), None);
        assert_eq!(parse_instant_micros("2015-02-07T13:28:17+02:00x"), None);
        assert_eq!(datetime_boundary("2015-02-07T1é:00", false), None);
    }
}
