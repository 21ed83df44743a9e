//! The NDJSON framer: arbitrary bytes pushed in arbitrary chunks. Checks the framer's
//! invariants: every byte is in exactly one block or oversize span, offsets and line numbers
//! are contiguous, and no block line is longer than the limit unless it arrived whole.
#![no_main]

use fhirhose_ingest::framing::{Frame, Framer, FramerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first bytes choose the limits and the chunking; the rest is the stream.
    let max_line_bytes = 1 + data[0] as usize % 64;
    let block_bytes = 1 + data[1] as usize % 128;
    let chunk = 1 + data[2] as usize % 97;
    let stream = &data[3..];
    let mut framer = Framer::new(FramerConfig {
        max_line_bytes,
        block_bytes,
    });
    let mut frames = Vec::new();
    for c in stream.chunks(chunk) {
        framer.push(c, &mut frames);
    }
    framer.finish(&mut frames);
    let mut offset = 0u64;
    let mut line = 1u64;
    for f in &frames {
        match f {
            Frame::Block(b) => {
                assert_eq!(b.offset, offset, "block offset");
                assert_eq!(b.first_line, line, "block first line");
                assert_eq!(
                    &stream[offset as usize..offset as usize + b.data.len()],
                    &b.data[..],
                    "block bytes are the stream's"
                );
                for (n, off, l) in b.lines() {
                    assert_eq!(n, line);
                    assert!(off >= offset);
                    let _ = l;
                    line += 1;
                }
                offset += b.data.len() as u64;
            }
            Frame::Oversize(o) => {
                assert_eq!(o.offset, offset, "oversize offset");
                assert_eq!(o.line, line, "oversize line");
                // The line runs to the next newline (or the end); its length excludes the
                // newline, CRLF included, and is over the limit.
                let rest = &stream[offset as usize..];
                let (span, content) = match rest.iter().position(|b| *b == b'\n') {
                    Some(nl) => {
                        assert!(!o.unterminated);
                        let c = if nl > 0 && rest[nl - 1] == b'\r' {
                            nl - 1
                        } else {
                            nl
                        };
                        (nl + 1, c)
                    }
                    None => {
                        assert!(o.unterminated);
                        (rest.len(), rest.len())
                    }
                };
                assert_eq!(o.len as usize, content, "oversize length");
                assert!(
                    content > max_line_bytes,
                    "only lines over the limit are oversize"
                );
                offset += span as u64;
                line += 1;
            }
        }
    }
    assert_eq!(offset, stream.len() as u64, "every byte framed once");
});
