//! Log setup: one style (lowercase message, structured fields), human on a terminal, JSON
//! lines with `--log-format json`. Logs go to stderr; stdout carries results (summaries).
//!
//! What may be logged is decided where events are written: ids, types, counts, file names,
//! URLs without query strings, error classes. Never resource content, names, identifiers,
//! tokens, assertions, secrets or signed query strings.
//!
//! Behind the call sites sits a redaction guard: every formatted event, in both formats and
//! at every level, passes through [`redact_text`] before it reaches stderr (query strings,
//! credential-named fields, `Bearer` values, JWTs, PEM blocks, long opaque strings and
//! embedded FHIR resources are scrubbed), and so does the binary's final error message
//! ([`eprint_redacted`]). The guard is a safety net, not a licence: it cannot recognise a
//! patient's name, so nothing that formats resource content may reach a log or an error.

use std::io::{self, Write};

use fhirhose_ingest::http::redact_text;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive (e.g. `info`,
/// `fhirhose=debug`); `RUST_LOG` wins when set.
pub fn init(format: LogFormat, level: &str) {
    // librdkafka reports every failed connection attempt as an error; fhirhose reports what
    // matters (unreachable brokers, failed deliveries) itself, so its chatter only shows at
    // debug and trace.
    let kafka = if matches!(level, "debug" | "trace") {
        level
    } else {
        "off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,librdkafka={kafka},rdkafka={kafka},fhirhose={level},fhirhose_ingest={level},fhirhose_sinks={level},fhirhose_normalize={level},fhirhose_sandbox={level}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    // Colours only on a terminal: escape codes in files and pipes get in the way of
    // readers and of the redaction guard alike.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = match format {
        LogFormat::Human => builder.with_target(false).with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Prints one line to stderr after redaction (the binary's error messages).
pub fn eprint_redacted(line: &str) {
    eprintln!("{}", redact_text(line));
}

/// A [`MakeWriter`] handing out one [`EventBuffer`] per event, writing to stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = EventBuffer<crate::observe::progress::LogWriter>;

    fn make_writer(&'a self) -> Self::Writer {
        // Through the progress writer, which first clears a progress bar on screen.
        EventBuffer::new(crate::observe::progress::log_writer())
    }
}

/// Collects one formatted event and writes it, redacted, when dropped. The formatter
/// writes an event in several pieces, so redaction must see the whole line at once.
#[derive(Debug)]
pub struct EventBuffer<W: Write> {
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> EventBuffer<W> {
    /// A buffer that flushes into `out`.
    pub fn new(out: W) -> Self {
        Self {
            buf: Vec::with_capacity(256),
            out,
        }
    }
}

impl<W: Write> Write for EventBuffer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for EventBuffer<W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        if text.contains('\x1b') {
            // Colour codes split `name=value` apart, so redaction looks at the plain text;
            // when it changes anything, the plain redacted line is written instead.
            let plain = strip_ansi(&text);
            let redacted = redact_text(&plain);
            let out = match redacted {
                std::borrow::Cow::Borrowed(_) => text.as_ref(),
                std::borrow::Cow::Owned(ref r) => r.as_str(),
            };
            let _ = self.out.write_all(out.as_bytes());
        } else {
            let _ = self.out.write_all(redact_text(&text).as_bytes());
        }
        let _ = self.out.flush();
    }
}

/// Removes ANSI escape sequences (`ESC [ ... final`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Shared {
        type Writer = EventBuffer<Shared>;
        fn make_writer(&'a self) -> Self::Writer {
            EventBuffer::new(self.clone())
        }
    }

    fn capture(json: bool, ansi: bool, f: impl FnOnce()) -> String {
        let out = Shared::default();
        let b = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(ansi)
            .with_writer(out.clone());
        if json {
            tracing::subscriber::with_default(b.json().flatten_event(true).finish(), f);
        } else {
            tracing::subscriber::with_default(b.finish(), f);
        }
        let v = out.0.lock().unwrap().clone();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn events_are_redacted_in_both_formats() {
        let emit = || {
            tracing::trace!(
                url = "https://store.example/f.ndjson?sig=SIGVALUE&se=2030",
                access_token = "sbx-at-TOKENVALUE",
                "fetched with Bearer BEARERVALUE"
            );
            tracing::warn!(
                error = "bad {\"resourceType\":\"Patient\",\"name\":\"NAMEVALUE\"}",
                "failed"
            );
        };
        for (json, ansi) in [(false, false), (false, true), (true, false)] {
            let out = capture(json, ansi, emit);
            for leak in ["SIGVALUE", "TOKENVALUE", "BEARERVALUE", "NAMEVALUE"] {
                assert!(!out.contains(leak), "{leak} in {out}");
            }
            assert!(
                out.contains("https://store.example/f.ndjson?[redacted]"),
                "{out}"
            );
            if ansi {
                assert!(
                    !out.contains('\x1b'),
                    "a redacted line keeps no colour codes"
                );
            }
            if json {
                for line in out.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("{e}: {line}"));
                }
            }
        }
    }

    #[test]
    fn colour_survives_when_nothing_is_redacted() {
        let out = capture(false, true, || {
            tracing::info!(file = "a.ndjson", "file landed")
        });
        assert!(out.contains('\x1b'), "{out}");
        assert_eq!(strip_ansi("\x1b[2mx\x1b[0m=\x1b[3my"), "x=y");
    }
}
