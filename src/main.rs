//! The `fhirhose` command. Exit codes: 0 ok; 2 usage or configuration; 3 authorization;
//! 4 server or fatal error (including files that failed); 5 dead letters with `--strict`.

use std::process::ExitCode;

use clap::Parser;

/// Caps glibc malloc's memory retention before any thread starts.
///
/// Measured on a 1 GB ingest (release, all canonical views): glibc's default dynamic mmap
/// threshold grows to 32 MiB after the pipeline frees its first large buffers, so every later
/// block, batch and upload buffer comes from the heap arenas, and one arena per thread keeps
/// the freed memory fragmented: peak RSS 250 MB for 1 GB against 53 MB for 10 MB. A fixed
/// 256 KiB threshold (large buffers are mmapped and returned to the OS on free) and two
/// arenas bring the 1 GB peak to about 136 MB. The price is about 15% of throughput
/// (16.1 s against 13.5 s with an 8 MiB threshold, which peaks at 206 MB): parquet-rs builds
/// a new zstd stream encoder for every page, and its buffers are now fresh pages each time.
/// We choose flat memory. `MALLOC_MMAP_THRESHOLD_` / `MALLOC_ARENA_MAX` in the environment
/// still take precedence, for those who prefer the other side of the trade.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
    const ARENA_MAX: libc::c_int = 2;
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: `mallopt` only sets allocator parameters; it is called at the start of
        // `main`, before the runtime or any other thread exists.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Threads of the runtime's blocking pool: twice the cores, at least 4. All of the pipeline's
/// CPU work (parsing blocks, encoding Parquet) runs there, and none of it waits for another
/// blocking task, so a pool this size keeps every core busy. Tokio's default (512) let a run
/// grow a thread per Parquet writer being encoded (26 seen on the 1 GB benchmark corpus), each
/// with its own allocator cache: on 63 MB and 250 MB inputs, 2 cores, 4 threads took 8–11%
/// less CPU time and 5–6 MB less peak RSS.
fn max_blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}

fn main() -> ExitCode {
    tune_malloc();
    // The configuration file becomes FHIRHOSE_* variables before clap reads them, so a
    // flag beats the environment, which beats the file.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = fhirhose::config::preload(&args) {
        fhirhose::logging::eprint_redacted(&format!(
            "error: config file {} is invalid ({} error{}; `fhirhose config check` explains):",
            e.path.display(),
            e.issues.len(),
            if e.issues.len() == 1 { "" } else { "s" }
        ));
        // Issues quote values only in redacted form (see `config::Issue`).
        for i in &e.issues {
            eprintln!("  {i}");
        }
        return ExitCode::from(2);
    }
    let cli = fhirhose::cli::Cli::parse_from(args);
    fhirhose::logging::init(cli.log_format, &cli.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(max_blocking_threads())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match rt.block_on(fhirhose::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            fhirhose::logging::eprint_redacted(&format!("error: {msg}"));
            ExitCode::from(fhirhose::cli::exit_code_for(&e))
        }
    }
}
