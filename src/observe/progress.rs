//! Progress on stderr: a redrawn status line on a terminal, periodic `progress` log lines
//! otherwise.
//!
//! ```text
//!  export queued   ⠹ export queued on the server: 42% · 3 polls · next poll in 10s · 0:35
//!  landing files   [=========>          ] 12/40 files · 34.2 MB · 120512 resources (8301/s) · ETA 0:42
//! ```
//!
//! The pipeline and the export feed process-wide counters (atomics: cheap on hot paths);
//! a [`Ticker`] task renders them. On a terminal the line is redrawn every
//! [`BAR_REDRAW`]; log events first clear it (see [`log_writer`]) so a log line never
//! lands in the middle of a bar. Off a terminal, one `info` event with structured fields
//! (target `fhirhose::progress`) every `--progress-interval` seconds.
//!
//! PHI: the only server text shown is the numeric figure of `X-Progress`
//! ([`fhirhose_ingest::bulk::progress_figure`]); everything else is a count, size or rate.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::info;

/// How often the terminal line is redrawn.
pub const BAR_REDRAW: Duration = Duration::from_millis(250);

/// Progress display mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always the redrawn bar.
    Bar,
    /// Always plain periodic log lines.
    Plain,
    /// Nothing.
    Off,
}

impl Mode {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bar => "bar",
            Self::Plain => "plain",
            Self::Off => "off",
        }
    }
}

#[derive(Debug)]
struct Queued {
    figure: Option<String>,
    polls: u64,
    next_poll: Duration,
    since: Instant,
}

#[derive(Debug)]
struct Landing {
    files_total: u64,
    bytes_total: u64,
    since: Instant,
}

/// What the run is doing.
#[derive(Debug, Default)]
enum Phase {
    #[default]
    Starting,
    Queued(Queued),
    Landing(Landing),
}

struct State {
    phase: Mutex<Phase>,
    bytes: AtomicU64,
    resources: AtomicU64,
    files_done: AtomicU64,
    files_failed: AtomicU64,
    /// A bar is on screen (the next log line must clear it first).
    drawn: AtomicBool,
}

static STATE: State = State {
    phase: Mutex::new(Phase::Starting),
    bytes: AtomicU64::new(0),
    resources: AtomicU64::new(0),
    files_done: AtomicU64::new(0),
    files_failed: AtomicU64::new(0),
    drawn: AtomicBool::new(false),
};

fn phase() -> std::sync::MutexGuard<'static, Phase> {
    STATE.phase.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes read from an input (pipeline reader).
pub fn add_bytes(n: u64) {
    STATE.bytes.fetch_add(n, Ordering::Relaxed);
}

/// Resources landed (pipeline consumer, per block).
pub fn add_resources(n: u64) {
    STATE.resources.fetch_add(n, Ordering::Relaxed);
}

/// A file task ended.
pub fn file_finished(failed: bool) {
    STATE.files_done.fetch_add(1, Ordering::Relaxed);
    if failed {
        STATE.files_failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Files start landing: `files` in all, `bytes` of them when sizes are known (0 when not).
pub fn begin_landing(files: u64, bytes: u64) {
    STATE.bytes.store(0, Ordering::Relaxed);
    STATE.resources.store(0, Ordering::Relaxed);
    STATE.files_done.store(0, Ordering::Relaxed);
    STATE.files_failed.store(0, Ordering::Relaxed);
    *phase() = Phase::Landing(Landing {
        files_total: files,
        bytes_total: bytes,
        since: Instant::now(),
    });
}

/// The export is queued on the server: a 202 with `X-Progress` text (only its figure is
/// kept) and the wait before the next poll.
pub fn queued(x_progress: Option<&str>, next_poll: Duration) {
    let figure = x_progress.and_then(fhirhose_ingest::bulk::progress_figure);
    let mut p = phase();
    match &mut *p {
        Phase::Queued(q) => {
            q.figure = figure.or(q.figure.take());
            q.polls += 1;
            q.next_poll = next_poll;
        }
        _ => {
            *p = Phase::Queued(Queued {
                figure,
                polls: 1,
                next_poll,
                since: Instant::now(),
            })
        }
    }
}

/// A `ProgressObserver` for `ExportOptions::on_progress` that feeds [`queued`].
pub fn export_observer() -> fhirhose_ingest::bulk::ProgressObserver {
    fhirhose_ingest::bulk::ProgressObserver(std::sync::Arc::new(|p: Option<&str>, w: Duration| {
        queued(p, w)
    }))
}

/// `m:ss` or `h:mm:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A snapshot of the landing counters.
#[derive(Debug, Clone, PartialEq)]
struct LandingView {
    files_done: u64,
    files_failed: u64,
    files_total: u64,
    bytes: u64,
    bytes_total: u64,
    resources: u64,
    elapsed: Duration,
}

impl LandingView {
    fn resources_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.resources as f64 / s
        } else {
            0.0
        }
    }

    /// Done fraction: by bytes when sizes are known, else by files.
    fn fraction(&self) -> Option<f64> {
        if self.bytes_total > 0 {
            Some((self.bytes as f64 / self.bytes_total as f64).min(1.0))
        } else if self.files_total > 0 {
            Some((self.files_done as f64 / self.files_total as f64).min(1.0))
        } else {
            None
        }
    }

    fn eta(&self) -> Option<Duration> {
        let f = self.fraction()?;
        if f <= 0.0 || f >= 1.0 {
            return None;
        }
        Some(self.elapsed.mul_f64((1.0 - f) / f))
    }
}

fn landing_view(l: &Landing) -> LandingView {
    LandingView {
        files_done: STATE.files_done.load(Ordering::Relaxed),
        files_failed: STATE.files_failed.load(Ordering::Relaxed),
        files_total: l.files_total,
        bytes: STATE.bytes.load(Ordering::Relaxed),
        bytes_total: l.bytes_total,
        resources: STATE.resources.load(Ordering::Relaxed),
        elapsed: l.since.elapsed(),
    }
}

const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

fn bar_line(v: &LandingView, width: usize) -> String {
    let bar = match v.fraction() {
        Some(f) => {
            let filled = ((f * width as f64) as usize).min(width);
            let mut b = "=".repeat(filled);
            if filled < width {
                b.push('>');
                b.push_str(&" ".repeat(width - filled - 1));
            }
            format!("[{b}] ")
        }
        None => String::new(),
    };
    let failed = if v.files_failed > 0 {
        format!(" ({} failed)", v.files_failed)
    } else {
        String::new()
    };
    let size = if v.bytes_total > 0 {
        format!(
            "{:.1}/{:.1} MB",
            v.bytes as f64 / 1e6,
            v.bytes_total as f64 / 1e6
        )
    } else {
        format!("{:.1} MB", v.bytes as f64 / 1e6)
    };
    let eta = v
        .eta()
        .map(|e| format!(" · ETA {}", clock(e)))
        .unwrap_or_default();
    format!(
        "{bar}{}/{} files{failed} · {size} · {} resources ({:.0}/s){eta}",
        v.files_done,
        v.files_total,
        v.resources,
        v.resources_per_s()
    )
}

fn queued_line(q: &Queued, tick: usize) -> String {
    format!(
        "{} export queued on the server{} · {} polls · next poll in {} · {}",
        SPINNER[tick % SPINNER.len()],
        q.figure
            .as_deref()
            .map(|f| format!(": {f}"))
            .unwrap_or_default(),
        q.polls,
        clock(q.next_poll),
        clock(q.since.elapsed())
    )
}

fn draw(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r\x1b[2K{line}");
    let _ = e.flush();
    STATE.drawn.store(true, Ordering::Relaxed);
}

fn clear() {
    if STATE.drawn.swap(false, Ordering::Relaxed) {
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K");
        let _ = e.flush();
    }
}

fn plain_line() {
    let p = phase();
    match &*p {
        Phase::Starting => {}
        Phase::Queued(q) => info!(
            target: "fhirhose::progress",
            phase = "queued",
            progress = q.figure.as_deref().unwrap_or("-"),
            polls = q.polls,
            next_poll_s = q.next_poll.as_secs(),
            elapsed_s = q.since.elapsed().as_secs(),
            "export queued on the server"
        ),
        Phase::Landing(l) => {
            let v = landing_view(l);
            info!(
                target: "fhirhose::progress",
                phase = "landing",
                files_done = v.files_done,
                files_failed = v.files_failed,
                files_total = v.files_total,
                bytes = v.bytes,
                resources = v.resources,
                resources_per_s = v.resources_per_s().round() as u64,
                eta_s = v.eta().map(|e| e.as_secs()),
                elapsed_s = v.elapsed.as_secs(),
                "landing files"
            );
        }
    }
}

/// Renders progress until dropped.
#[derive(Debug)]
pub struct Ticker {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: bool,
}

impl Ticker {
    /// Starts rendering in `mode`; plain lines every `interval`.
    pub fn start(mode: Mode, interval: Duration) -> Self {
        let bar = match mode {
            Mode::Off => {
                return Self {
                    task: None,
                    bar: false,
                }
            }
            Mode::Bar => true,
            Mode::Plain => false,
            Mode::Auto => std::io::stderr().is_terminal(),
        };
        let task = tokio::spawn(async move {
            let period = if bar { BAR_REDRAW } else { interval };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0usize;
            loop {
                tick.tick().await;
                n += 1;
                if bar {
                    let line = match &*phase() {
                        Phase::Starting => None,
                        Phase::Queued(q) => Some(queued_line(q, n)),
                        Phase::Landing(l) => Some(bar_line(&landing_view(l), 24)),
                    };
                    if let Some(line) = line {
                        draw(&line);
                    }
                } else {
                    plain_line();
                }
            }
        });
        Self {
            task: Some(task),
            bar,
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if self.bar {
            clear();
        }
    }
}

/// Writes log lines to stderr, first clearing a progress bar that is on screen (use as
/// the `tracing_subscriber` writer: `.with_writer(progress::log_writer)`).
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        clear();
        std::io::stderr().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        clear();
        std::io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A [`LogWriter`] (a `MakeWriter` for `tracing_subscriber`).
pub fn log_writer() -> LogWriter {
    LogWriter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(files_done: u64, bytes: u64, bytes_total: u64, secs: u64) -> LandingView {
        LandingView {
            files_done,
            files_failed: 0,
            files_total: 4,
            bytes,
            bytes_total,
            resources: 1000,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn bar_shows_counts_rates_and_eta() {
        let v = view(1, 25_000_000, 100_000_000, 10);
        let line = bar_line(&v, 10);
        assert_eq!(
            line,
            "[==>       ] 1/4 files · 25.0/100.0 MB · 1000 resources (100/s) · ETA 0:30"
        );
        // Without sizes (exports), progress and ETA go by files.
        let v = view(2, 5_000_000, 0, 20);
        assert_eq!(v.eta(), Some(Duration::from_secs(20)));
        assert!(bar_line(&v, 10).starts_with("[=====>    ] 2/4 files · 5.0 MB"));
        assert_eq!(view(4, 1, 0, 5).eta(), None);
    }

    #[test]
    fn queued_line_shows_only_the_figure_of_x_progress() {
        let q = Queued {
            figure: fhirhose_ingest::bulk::progress_figure("Patient Jane Doe: 40% done"),
            polls: 3,
            next_poll: Duration::from_secs(75),
            since: Instant::now(),
        };
        let line = queued_line(&q, 0);
        assert!(
            line.contains("export queued on the server: 40% · 3 polls · next poll in 1:15"),
            "{line}"
        );
        assert!(!line.contains("Jane"), "{line}");
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
    }
}
