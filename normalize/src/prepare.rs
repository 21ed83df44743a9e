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
//! One pass over 64-byte blocks turns byte classes into bit masks (quotes, backslashes,
//! digits, `.`/`e`/`E`), finds string interiors with simdjson's carry tricks and keeps the
//! `.`/`e`/`E` that follow a digit outside strings. Only those candidates are looked at
//! byte by byte; the output is written with one copy per rewritten number plus one for the
//! rest of the line. No `unsafe` and no explicit SIMD: the mask loops are written for the
//! auto-vectoriser.

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
    // `src[copied..]` has not been written to `dst` yet; `done` is the end of the last
    // number looked at (a number can hold several hits: `1.5e3`).
    let mut copied = 0;
    let mut done = 0;
    let mut scan = Scanner::default();
    let mut pad = [b' '; 64];
    for (bi, chunk) in src.chunks(64).enumerate() {
        let block: &[u8; 64] = match chunk.try_into() {
            Ok(b) => b,
            Err(_) => {
                pad[..chunk.len()].copy_from_slice(chunk);
                pad[chunk.len()..].fill(b' ');
                &pad
            }
        };
        let mut hits = scan.block(block);
        while hits != 0 {
            let p = bi * 64 + hits.trailing_zeros() as usize;
            hits &= hits - 1;
            // `true`/`false`, or a later `.`/`e` of a number already handled.
            if p < done || p == 0 || !src[p - 1].is_ascii_digit() {
                continue;
            }
            let mut start = p;
            while start > 0 && is_number_byte(src[start - 1]) {
                start -= 1;
            }
            let mut end = p + 1;
            while end < n && is_number_byte(src[end]) {
                end += 1;
            }
            done = end;
            // Not a JSON number (the line is broken): leave it for simd-json to reject.
            if !is_json_number(&src[start..end]) {
                continue;
            }
            dst.extend_from_slice(&src[copied..start]);
            dst.push(b'"');
            dst.extend_from_slice(MARK);
            dst.extend_from_slice(&src[start..end]);
            dst.push(b'"');
            copied = end;
        }
    }
    dst.extend_from_slice(&src[copied..]);
}

const fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn is_json_number(t: &[u8]) -> bool {
    let mut i = usize::from(t.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < t.len() && t[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - s
    };
    let int_start = i;
    match digits(&mut i) {
        0 => return false,
        k if k > 1 && t[int_start] == b'0' => return false,
        _ => {}
    }
    if i < t.len() && t[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if i < t.len() && (t[i] | 0x20) == b'e' {
        i += 1;
        if i < t.len() && (t[i] == b'+' || t[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == t.len()
}

/// Carries string and escape state across 64-byte blocks, in the manner of simdjson's
/// stage 1: byte classes become bit masks, escaped quotes are removed with carry
/// arithmetic over backslash runs, and a prefix XOR of the quotes marks string interiors.
#[derive(Default)]
struct Scanner {
    /// All ones when the previous block ended inside a string.
    in_string: u64,
    /// 1 when the previous block ended with an odd backslash run.
    odd_backslash: u64,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// 0x80 in every byte of `x` equal to `c`, 0 elsewhere (exact: no false positives).
#[inline(always)]
fn eq_bytes(x: u64, c: u8) -> u64 {
    let y = x ^ (LO * u64::from(c));
    !(((y & !HI).wrapping_add(!HI)) | y) & HI
}

/// The high bits of the eight bytes of `hi` gathered into the low eight bits.
#[inline(always)]
fn gather(hi: u64) -> u64 {
    ((hi >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Bit masks of one 64-byte block: quotes, backslashes, and `.`/`e`/`E`, eight bytes at a
/// time in plain integer arithmetic (SWAR). Explicit SSE2 would need `unsafe` (the
/// intrinsics are `#[target_feature]` functions) for a gain that does not matter next to
/// the parse.
#[inline]
fn classify(block: &[u8; 64]) -> (u64, u64, u64) {
    let (mut q, mut bs, mut m) = (0u64, 0u64, 0u64);
    for (k, w) in block.chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b);
        let shift = 8 * k;
        q |= gather(eq_bytes(x, b'"')) << shift;
        bs |= gather(eq_bytes(x, b'\\')) << shift;
        m |= gather(eq_bytes(x, b'.') | eq_bytes(x | (LO * 0x20), b'e')) << shift;
    }
    (q, bs, m)
}

fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

impl Scanner {
    /// Bits of `.`, `e` and `E` outside strings (candidates: every JSON number with a
    /// fraction or exponent has one, and so do `true` and `false`).
    #[inline]
    fn block(&mut self, block: &[u8; 64]) -> u64 {
        let (quote, backslash, mark) = classify(block);
        let escaped = self.escaped(backslash);
        let inside = prefix_xor(quote & !escaped) ^ self.in_string;
        self.in_string = 0u64.wrapping_sub(inside >> 63);
        mark & !inside
    }

    /// Bits of the characters escaped by an odd run of backslashes (simdjson's
    /// `find_odd_backslash_sequences`).
    fn escaped(&mut self, bs: u64) -> u64 {
        const EVEN: u64 = 0x5555_5555_5555_5555;
        const ODD: u64 = !EVEN;
        let starts = bs & !(bs << 1);
        let even_start_mask = EVEN ^ self.odd_backslash;
        let even_starts = starts & even_start_mask;
        let odd_starts = starts & !even_start_mask;
        let even_carries = bs.wrapping_add(even_starts);
        let (mut odd_carries, overflow) = bs.overflowing_add(odd_starts);
        odd_carries |= self.odd_backslash;
        self.odd_backslash = u64::from(overflow);
        let even_carry_ends = even_carries & !bs;
        let odd_carry_ends = odd_carries & !bs;
        (even_carry_ends & ODD) | (odd_carry_ends & EVEN)
    }
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

    #[test]
    fn escapes_across_block_boundaries_and_broken_numbers() {
        // Backslash runs and strings straddling the 64-byte blocks.
        for pad in 0..70 {
            let a = "x".repeat(pad);
            let line = format!(r#"{{"{a}":"\\\\\"1.5\\","k":[2.5,"{a}\"",0.25]}}"#);
            let out = prep(&line);
            let a_json: serde_json::Value = serde_json::from_str(&line).unwrap();
            let b_json: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(unmark(&b_json), a_json, "{line} -> {out}");
            assert_eq!(out.matches(DECIMAL_MARKER).count(), 2, "{line} -> {out}");
        }
        // Not JSON numbers: left alone, so simd-json still rejects the line.
        assert_eq!(prep("[1.2.3]"), "[1.2.3]");
        assert_eq!(prep("[01.5]"), "[01.5]");
        assert_eq!(prep("[1.]"), "[1.]");
        assert_eq!(prep("[1.5e]"), "[1.5e]");
        assert_eq!(prep("[true,1e+5]"), format!("[true,{}]", m("1e+5")));
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
                "a",
                "1.5",
                "\\\"",
                "\\\\",
                "\\n",
                "\\u00e9",
                "é",
                "𝄞",
                "-3e2",
                " ",
                "\\/",
                ":",
                "[",
                "{",
                ",",
                r#"\\\\"#,
                r#"\\\""#,
                r#"\\\\\\"#,
                "0.5:1e9",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
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
        for _ in 0..20000 {
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
