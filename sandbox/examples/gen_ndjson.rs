//! Writes synthetic NDJSON files and reports throughput:
//! `cargo run -p fhirhose-sandbox --release --example gen_ndjson -- DIR PATIENTS [SEED]`.

use std::time::Instant;

use fhirhose_sandbox::generate::Generator;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "generated".to_owned());
    let patients: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(1000);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let start = Instant::now();
    let files = Generator::new(seed).write_ndjson_dir(dir.as_ref(), patients)?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let lines: u64 = files.iter().map(|f| f.lines).sum();
    for f in &files {
        println!(
            "{:>20} {:>10} lines {:>14} bytes",
            f.resource_type, f.lines, f.bytes
        );
    }
    println!(
        "{patients} patients: {lines} resources, {:.1} MB in {secs:.2}s ({:.0} MB/s, {:.0} resources/s)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        lines as f64 / secs
    );
    Ok(())
}
