//! The parse ceiling of the pipeline benchmark (`benches/pipeline/run.sh`): the ingest framer
//! plus simd-json's tape parse alone, over every core, with nothing else of the pipeline.
//!
//! ```sh
//! cargo run --release --example parse_ceiling -- [--parser tape|borrowed|serde-value|serde-ignored] [--workers N] PATH...
//! ```
//!
//! PATHs are `.ndjson`/`.ndjson.gz` files or folders (searched recursively). One reader thread
//! decompresses and frames each file with [`fhirhose_ingest::framing::Framer`] (the pipeline's
//! framer and block size) and hands blocks to `N` workers (default: all cores) through a
//! bounded queue, so parsing runs in parallel across and within files. Each worker copies
//! every line into a reused scratch buffer (as the pipeline must, since simd-json parses in
//! place) and parses it with the chosen parser. `--parser serde-value` / `serde-ignored` run
//! `serde_json::from_slice::<Value>` / `<IgnoredAny>` on the same lines, for the simd/serde
//! ratio. Prints one JSON line: bytes, lines, parse errors, seconds.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use fhirhose_ingest::framing::{Block, Frame, Framer, FramerConfig};

#[path = "support/ndjson_files.rs"]
mod ndjson_files;
use ndjson_files::collect;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Parser {
    Tape,
    Borrowed,
    SerdeValue,
    SerdeIgnored,
}

fn open(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let f = std::fs::File::open(path)?;
    if path.to_string_lossy().ends_with(".gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(256 * 1024, f),
        )))
    } else {
        Ok(Box::new(f))
    }
}

fn parse_block(block: &Block, parser: Parser, st: &mut WorkerState) -> (u64, u64) {
    let (mut lines, mut errors) = (0u64, 0u64);
    for (_, _, line) in block.lines() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        let ok = match parser {
            Parser::Tape => {
                st.scratch.clear();
                st.scratch.extend_from_slice(line);
                let mut tape = std::mem::replace(&mut st.tape, simd_json::Tape::null()).reset();
                let ok = simd_json::fill_tape(&mut st.scratch, &mut st.buffers, &mut tape).is_ok();
                st.tape = tape.reset();
                ok
            }
            Parser::Borrowed => {
                st.scratch.clear();
                st.scratch.extend_from_slice(line);
                simd_json::to_borrowed_value_with_buffers(&mut st.scratch, &mut st.buffers).is_ok()
            }
            Parser::SerdeValue => serde_json::from_slice::<serde_json::Value>(line).is_ok(),
            Parser::SerdeIgnored => serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok(),
        };
        if !ok {
            errors += 1;
        }
    }
    (lines, errors)
}

struct WorkerState {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: simd_json::Tape<'static>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut parser = Parser::Tape;
    let mut workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--parser" => {
                parser = match args.next().as_deref() {
                    Some("tape") => Parser::Tape,
                    Some("borrowed") => Parser::Borrowed,
                    Some("serde-value") => Parser::SerdeValue,
                    Some("serde-ignored") => Parser::SerdeIgnored,
                    other => return Err(format!("unknown parser {other:?}").into()),
                }
            }
            "--workers" => workers = args.next().ok_or("--workers N")?.parse()?,
            _ => collect(Path::new(&a), &mut paths)?,
        }
    }
    if paths.is_empty() {
        return Err("no .ndjson or .ndjson.gz input".into());
    }

    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Block>(workers * 2);
    let rx = Arc::new(Mutex::new(rx));
    let lines = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, lines, errors) = (Arc::clone(&rx), Arc::clone(&lines), Arc::clone(&errors));
            std::thread::spawn(move || {
                let mut st = WorkerState {
                    scratch: Vec::with_capacity(64 * 1024),
                    buffers: simd_json::Buffers::default(),
                    tape: simd_json::Tape::null(),
                };
                loop {
                    let block = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(b) => b,
                        Err(_) => return,
                    };
                    let (l, e) = parse_block(&block, parser, &mut st);
                    lines.fetch_add(l, Ordering::Relaxed);
                    errors.fetch_add(e, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut bytes = 0u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut frames = Vec::new();
    for path in &paths {
        let mut r = open(path)?;
        let mut framer = Framer::new(FramerConfig::default());
        loop {
            let n = r.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            framer.push(&chunk[..n], &mut frames);
            for f in frames.drain(..) {
                if let Frame::Block(b) = f {
                    tx.send(b)?;
                }
            }
        }
        framer.finish(&mut frames);
        for f in frames.drain(..) {
            if let Frame::Block(b) = f {
                tx.send(b)?;
            }
        }
    }
    drop(tx);
    for h in handles {
        h.join().map_err(|_| "worker panicked")?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"parser\":\"{parser:?}\",\"workers\":{workers},\"files\":{},\"bytes\":{bytes},\"lines\":{},\"errors\":{},\"secs\":{secs:.3},\"mb_per_s\":{:.1}}}",
        paths.len(),
        lines.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
