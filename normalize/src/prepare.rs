//! Exact decimals through simd-json: [`prepare_line`] rewrites JSON decimals into marked
//! strings before parsing, so the engine sees the source text (`1.50`) instead of an `f64`.
//!
//! simd-json parses every JSON number with a fraction or exponent to `f64`, which loses the
//! precision FHIR requires to keep (`1.50` is not `1.5`). Instead of a second parser, the
//! copy of each NDJSON line into the parse buffer (which the pipeline makes anyway, since
//! simd-json parses in place) rewrites such numbers outside strings into JSON strings
//! starting with [`DECIMAL_MARKER`]:
//!
//! ```text
//! {"value":1.50,"n":3,"s":"1.5"}  →  {"value":"\u{FDD0}1.50","n":3,"s":"1.5"}
//! ```
//!
//! The marker is written raw (UTF-8 `EF B7 90`), so simd-json borrows the string without
//! unescaping. Integers are left alone (simd-json keeps them exact as `i64`/`u64`), and so
//! is everything inside strings.
//!
//! # Contract
//!
//! - When `src` is valid JSON, the output is valid JSON and parses to the same tree except
//!   that every number with a fraction or exponent is a string `"\u{FDD0}<number text>"`.
//!   When `src` is not valid JSON the output is not valid either (simd-json still rejects
//!   it), though the error message may differ.
//! - The engine treats a marked string as a `decimal` everywhere (comparison, arithmetic,
//!   type tests, boundaries, `toString`, columns, JSON rendering of complex values); it is
//!   never a FHIR string. Unprepared trees (plain `f64` numbers) keep working: both forms
//!   are decimals.
//!
//! # Why U+FDD0, and the residual risk
//!
//! U+FDD0 is a Unicode *noncharacter*, reserved for exactly this kind of process-internal
//! use and not meant to appear in interchanged text. A raw control character (e.g. `\x01`)
//! would be smaller but simd-json rejects unescaped control characters inside strings, and
//! its escaped form (`\u0001`) would force simd-json to copy the string. The residual risk:
//! a source string that *begins* with U+FDD0 (raw or escaped as `\uFDD0`) and continues with
//! a JSON number text would be read as that decimal. A string that merely contains U+FDD0,
//! or starts with it followed by anything other than a number, stays a string.
//!
//! # Cost
//!
//! String contents are skipped with `memchr` (searching `"` and `\`); only the short
//! segments between strings (`":`, `,"`, numbers, `true`) are looked at byte by byte. The
//! output is written with one copy per rewritten number plus one for the rest of the line.

use memchr::{memchr, memchr2};
use simd_json::BorrowedValue;

/// The code point that starts a prepared decimal string (see the module docs).
pub const DECIMAL_MARKER: char = '\u{FDD0}';

/// UTF-8 of [`DECIMAL_MARKER`].
const MARK: &[u8] = "\u{FDD0}".as_bytes();

/// Appends one NDJSON line (without its newline) to `dst`, rewriting every JSON number that
/// has a fraction or an exponent and lies outside strings into a marked string
/// (`1.50` → `"\u{FDD0}1.50"`). Use it instead of `dst.extend_from_slice(src)` when filling
/// the buffer simd-json will parse; `dst` is not cleared.
///
/// ```
/// use fhirhose_normalize::{prepare_line, decimal_text};
/// let mut buf = Vec::new();
/// prepare_line(br#"{"valueDecimal":1.50,"count":2}"#, &mut buf);
/// let v = simd_json::to_borrowed_value(&mut buf).unwrap();
/// let simd_json::BorrowedValue::Object(o) = &v else { unreachable!() };
/// assert_eq!(decimal_text(&o["valueDecimal"]), Some("1.50"));
/// assert_eq!(decimal_text(&o["count"]), None); // integers are untouched
/// ```
pub fn prepare_line(src: &[u8], dst: &mut Vec<u8>) {
    let n = src.len();
    dst.reserve(n + 16);
    // `src[copied..]` has not been written to `dst` yet.
    let mut copied = 0;
    let mut i = 0;
    while i < n {
        // Outside a string: up to the next quote.
        let seg_end = memchr(b'"', &src[i..]).map_or(n, |p| i + p);
        let mut j = i;
        while j < seg_end {
            let b = src[j];
            if !(b.is_ascii_digit() || b == b'-') {
                j += 1;
                continue;
            }
            // A number (keywords and structure contain no digits or `-`).
            let start = j;
            let mut decimal = false;
            j += 1;
            while j < seg_end {
                match src[j] {
                    b'0'..=b'9' | b'-' | b'+' => {}
                    b'.' | b'e' | b'E' => decimal = true,
                    _ => break,
                }
                j += 1;
            }
            if decimal {
                dst.extend_from_slice(&src[copied..start]);
                dst.push(b'"');
                dst.extend_from_slice(MARK);
                dst.extend_from_slice(&src[start..j]);
                dst.push(b'"');
                copied = j;
            }
        }
        if seg_end >= n {
            break;
        }
        // Inside a string: skip to its closing quote, stepping over escapes.
        let mut k = seg_end + 1;
        loop {
            match memchr2(b'"', b'\\', &src[k.min(n)..]) {
                None => {
                    k = n;
                    break;
                }
                Some(p) if src[k + p] == b'\\' => k += p + 2,
                Some(p) => {
                    k += p + 1;
                    break;
                }
            }
        }
        i = k;
    }
    dst.extend_from_slice(&src[copied.min(n)..]);
}

/// The source text of a prepared decimal string (`"\u{FDD0}1.50"` → `"1.50"`), or `None`
/// for any other string. The remainder must look like a JSON number (a digit or `-` first).
#[inline]
pub fn marked_decimal(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() > MARK.len() && b[0] == MARK[0] && b[1] == MARK[1] && b[2] == MARK[2] {
        let rest = &s[MARK.len()..];
        if rest.as_bytes()[0].is_ascii_digit() || rest.as_bytes()[0] == b'-' {
            return Some(rest);
        }
    }
    None
}

/// The exact source text of a decimal node prepared by [`prepare_line`], or `None` for any
/// other node (including unprepared `f64` numbers). For consumers that read the parsed tree
/// outside the view engine.
pub fn decimal_text<'v>(v: &'v BorrowedValue<'_>) -> Option<&'v str> {
    match v {
        BorrowedValue::String(s) => marked_decimal(s),
        _ => None,
    }
}

/// Writes `v` as compact JSON, with prepared decimals as bare numbers in their source text
/// and unprepared `f64` numbers in their shortest round-trip text.
pub(crate) fn write_json(v: &BorrowedValue<'_>, out: &mut String) {
    use simd_json::StaticNode;
    match v {
        BorrowedValue::Static(StaticNode::Null) => out.push_str("null"),
        BorrowedValue::Static(StaticNode::Bool(b)) => {
            out.push_str(if *b { "true" } else { "false" })
        }
        BorrowedValue::Static(StaticNode::I64(i)) => out.push_str(&i.to_string()),
        BorrowedValue::Static(StaticNode::U64(u)) => out.push_str(&u.to_string()),
        BorrowedValue::Static(StaticNode::F64(f)) => {
            if f.is_finite() {
                out.push_str(&crate::fhirpath::temporal::float_text(*f));
            } else {
                out.push_str("null");
            }
        }
        BorrowedValue::String(s) => match marked_decimal(s) {
            Some(t) => out.push_str(t),
            None => write_str(s, out),
        },
        BorrowedValue::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        BorrowedValue::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::StaticNode;

    fn prep(s: &str) -> String {
        let mut out = Vec::new();
        prepare_line(s.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn m(t: &str) -> String {
        format!("\"{DECIMAL_MARKER}{t}\"")
    }

    #[test]
    fn decimals_become_marked_strings_with_their_source_text() {
        assert_eq!(prep(r#"{"v":1.50}"#), format!(r#"{{"v":{}}}"#, m("1.50")));
        assert_eq!(prep("1e3"), m("1e3"));
        assert_eq!(
            prep("[-0.0,2E-7,3]"),
            format!("[{},{},3]", m("-0.0"), m("2E-7"))
        );
        assert_eq!(
            prep(r#"{"a":12,"b":-4,"c":true}"#),
            r#"{"a":12,"b":-4,"c":true}"#
        );
        let mut buf = Vec::new();
        prepare_line(br#"{"v":1.50}"#, &mut buf);
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        let BorrowedValue::Object(o) = &v else {
            panic!("not an object")
        };
        assert_eq!(decimal_text(&o["v"]), Some("1.50"));
    }

    #[test]
    fn strings_are_untouched() {
        for s in [
            r#"{"s":"1.50","t":"a\"1.5\"b","u":"\\","w":2.5}"#,
            r#"{"k\"1.5":"x\\\"2.5","n":[[1.0,[2.25]],{"x":[0.1]}]}"#,
            r#"{"name":"Zoë 1.5 ✓ 𝄞","v":0.001}"#,
            r#"{"1.5":1.5}"#,
        ] {
            let out = prep(s);
            let a: serde_json::Value = serde_json::from_str(s).unwrap();
            let b: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(unmark(&b), a, "{s} -> {out}");
        }
        assert_eq!(
            prep(r#"{"t":"a\"1.5\"b","w":2.5}"#),
            format!(r#"{{"t":"a\"1.5\"b","w":{}}}"#, m("2.5"))
        );
        assert_eq!(prep(r#"{"1.5":"x"}"#), r#"{"1.5":"x"}"#);
    }

    /// Undoes the marking on a serde value, turning marked strings back into numbers.
    fn unmark(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            J::String(s) => match marked_decimal(s) {
                Some(t) => serde_json::from_str(t).unwrap(),
                None => v.clone(),
            },
            J::Array(a) => J::Array(a.iter().map(unmark).collect()),
            J::Object(o) => J::Object(o.iter().map(|(k, x)| (k.clone(), unmark(x))).collect()),
            _ => v.clone(),
        }
    }

    #[test]
    fn raw_control_characters_are_rejected_by_simd_json() {
        // Why the marker is a noncharacter and not `\x01`.
        let mut buf = b"{\"s\":\"\x011.5\"}".to_vec();
        assert!(simd_json::to_borrowed_value(&mut buf).is_err());
    }

    #[test]
    fn marker_is_recognised_only_before_a_number() {
        assert_eq!(marked_decimal("\u{FDD0}1.5"), Some("1.5"));
        assert_eq!(marked_decimal("\u{FDD0}-2e3"), Some("-2e3"));
        assert_eq!(marked_decimal("\u{FDD0}abc"), None);
        assert_eq!(marked_decimal("\u{FDD0}"), None);
        assert_eq!(marked_decimal("x\u{FDD0}1.5"), None);
        assert_eq!(marked_decimal("1.5"), None);
    }

    #[test]
    fn json_rendering_emits_bare_numbers() {
        let mut buf = Vec::new();
        prepare_line(
            br#"{"value":1.50,"unit":"mg \"x\"","n":[1,2.0],"f":false}"#,
            &mut buf,
        );
        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
        let mut s = String::new();
        write_json(&v, &mut s);
        assert_eq!(
            s,
            r#"{"value":1.50,"unit":"mg \"x\"","n":[1,2.0],"f":false}"#
        );
        let mut s = String::new();
        write_json(&BorrowedValue::Static(StaticNode::F64(0.5)), &mut s);
        assert_eq!(s, "0.5");
        let mut s = String::new();
        write_json(&BorrowedValue::String("a\u{1}\n".into()), &mut s);
        assert_eq!(s, r#""a\u0001\n""#);
    }

    /// A small deterministic generator of JSON documents (no extra dependency).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn number(&mut self) -> String {
            let mut s = String::new();
            if self.pick(3) == 0 {
                s.push('-');
            }
            s.push_str(&self.pick(1000).to_string());
            if self.pick(2) == 0 {
                s.push('.');
                s.push_str(&format!(
                    "{:0w$}",
                    self.pick(1000),
                    w = 1 + self.pick(3) as usize
                ));
            }
            if self.pick(5) == 0 {
                s.push(['e', 'E'][self.pick(2) as usize]);
                s.push_str(["", "+", "-"][self.pick(3) as usize]);
                s.push_str(&self.pick(30).to_string());
            }
            s
        }
        fn string(&mut self) -> String {
            const PARTS: &[&str] = &[
                "a", "1.5", "\\\"", "\\\\", "\\n", "\\u00e9", "é", "𝄞", "-3e2", " ", "\\/", ":",
                "[", "{", ",",
            ];
            let mut s = String::from("\"");
            for _ in 0..self.pick(5) {
                s.push_str(PARTS[self.pick(PARTS.len() as u64) as usize]);
            }
            s.push('"');
            s
        }
        fn value(&mut self, depth: u32) -> String {
            let ws = |g: &mut Gen| if g.pick(4) == 0 { " " } else { "" };
            match self.pick(if depth > 3 { 4 } else { 6 }) {
                0 => self.number(),
                1 => self.string(),
                2 => ["true", "false", "null"][self.pick(3) as usize].to_owned(),
                3 => self.number(),
                4 => {
                    let items: Vec<String> =
                        (0..self.pick(4)).map(|_| self.value(depth + 1)).collect();
                    format!("[{}{}]", ws(self), items.join(&format!(",{}", ws(self))))
                }
                _ => {
                    // Keys are numbered: duplicate keys would make the comparison ambiguous.
                    let items: Vec<String> = (0..self.pick(4))
                        .map(|i| {
                            let key = format!("\"{i}{}", &self.string()[1..]);
                            format!("{key}{}:{}{}", ws(self), ws(self), self.value(depth + 1))
                        })
                        .collect();
                    format!("{{{}}}", items.join(","))
                }
            }
        }
    }

    #[test]
    fn prepared_output_parses_whenever_the_input_parses() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let doc = g.value(0);
            let mut input = doc.clone().into_bytes();
            let Ok(want) = simd_json::to_owned_value(&mut input) else {
                continue;
            };
            let out = prep(&doc);
            let mut buf = out.clone().into_bytes();
            let got = simd_json::to_borrowed_value(&mut buf)
                .unwrap_or_else(|e| panic!("{doc} -> {out}: {e}"));
            let mut rendered = String::new();
            write_json(&got, &mut rendered);
            let mut back = rendered.clone().into_bytes();
            let back = simd_json::to_owned_value(&mut back).unwrap();
            assert_eq!(back, want, "{doc} -> {rendered}");
        }
    }
}
