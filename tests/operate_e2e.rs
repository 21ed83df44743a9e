//! Operating fhirhose, end to end through the binary against the in-process sandbox EHR
//! with a local lake: the `--metrics-addr` endpoint scraped while an export runs, the
//! metrics in `--summary-json`, plain progress lines when stderr is not a terminal, and
//! `fhirhose report` (JSON and HTML) for the finished job, checked against the state DB.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Setup;
use common::BIN;
use fhirhose_sandbox::SandboxConfig;

async fn setup(faults: &str, export_polls: u32) -> Setup {
    common::sandbox_with_client(
        SandboxConfig {
            patients: 4,
            faults: faults.parse().unwrap(),
            export_polls,
            resources_per_file: 40,
            ..SandboxConfig::default()
        },
        "fhirhose-ops",
    )
    .await
}

trait OpsArgs {
    fn args(&self, extra: &[&str]) -> Vec<String>;
}

impl OpsArgs for Setup {
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let summary = self.path("summary.json");
        let mut v = vec![
            "--profile",
            "generic",
            "--summary-json",
            summary.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        self.export_args("ops-sandbox", &v)
    }
}

impl Setup {
    fn json(&self, name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(name)).unwrap()).unwrap()
    }

    fn expected_total(&self) -> u64 {
        self.sb.resource_counts().values().map(|v| *v as u64).sum()
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) that the log formatter may add.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            let mut seq = String::new();
            for d in chars.by_ref() {
                seq.push(d);
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            if seq.ends_with('m') {
                continue;
            }
            out.push(c);
            out.push_str(&seq);
            continue;
        }
        out.push(c);
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics`: (content type, body), or `None` when nothing listens.
fn scrape(port: u16) -> Option<(String, String)> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    c.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let ct = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-type: ")
            .map(str::to_owned)
    })?;
    // axum answers with a fixed length here; tolerate chunked just in case.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((ct, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Parses the text exposition line by line: `# HELP`/`# TYPE` comments, and samples
/// `name{label="value",...} number`. Returns samples as (name, labels, value).
fn parse_exposition(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP fhirhose_") || c.starts_with("TYPE fhirhose_"),
                "bad comment: {line}"
            );
            if let Some(t) = c.strip_prefix("TYPE ") {
                let kind = t.split(' ').nth(1).unwrap();
                assert!(matches!(kind, "counter" | "histogram"), "{line}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut m = BTreeMap::new();
                // Values here never contain `",` (they are ids, types and reasons).
                for pair in body.split("\",") {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in: {line}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    m.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (n.to_owned(), m)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn sum(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// Sum of a counter family (or histogram counts) in the summary's metrics snapshot.
fn snap_total(summary: &serde_json::Value, name: &str, label: Option<(&str, &str)>) -> u64 {
    summary["metrics"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| label.is_none_or(|(k, v)| s["labels"][k] == v))
                .map(|s| s["value"].as_u64().or(s["count"].as_u64()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_summary_and_plain_progress_during_an_export() {
    // Three 202s with Retry-After 1 s keep the job queued for ~3 s; a 503 on a poll and
    // resets on files make retries.
    let s = setup(
        "503=first:1@status,reset=first:2@file,retry-after=1,tiny-files=9,seed=3",
        3,
    )
    .await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = s.args(&["--metrics-addr", &addr, "--progress-interval", "0.3"]);
    let cwd = s.dir.path().to_owned();
    let (scrapes, out) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(&cwd)
            .env("FHIRHOSE_LOG_LEVEL", "info")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut scrapes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            if let Some(s) = scrape(port) {
                scrapes.push(s);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        (scrapes, child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(0));

    // Scraped while running: the text format, every series labelled by source.
    assert!(
        scrapes.len() >= 3,
        "only {} scrapes succeeded",
        scrapes.len()
    );
    for (ct, _) in &scrapes {
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    }
    let last = parse_exposition(&scrapes.last().unwrap().1);
    for (_, body) in &scrapes {
        for (name, labels, _) in parse_exposition(body) {
            assert_eq!(
                labels.get("source").map(String::as_str),
                Some("ops-sandbox"),
                "{name} {labels:?}"
            );
        }
    }
    assert!(
        sum(
            &last,
            "fhirhose_token_requests_total",
            Some(("outcome", "success"))
        ) >= 1.0
    );
    assert_eq!(sum(&last, "fhirhose_export_kickoffs_total", None), 1.0);
    assert!(
        sum(
            &last,
            "fhirhose_export_polls_total",
            Some(("outcome", "in_progress"))
        ) >= 3.0
    );
    // Histogram series are cumulative and end with +Inf == _count.
    let inf = sum(
        &last,
        "fhirhose_export_poll_wait_seconds_bucket",
        Some(("le", "+Inf")),
    );
    assert_eq!(
        inf,
        sum(&last, "fhirhose_export_poll_wait_seconds_count", None)
    );
    assert!(inf >= 3.0);

    // The summary carries the final snapshot.
    let summary = s.json("summary.json");
    let report = s.json("report.json");
    let files = report["files_landed"].as_u64().unwrap();
    assert!(files >= 2);
    assert_eq!(
        snap_total(&summary, "fhirhose_resources_total", None),
        s.expected_total()
    );
    assert_eq!(
        snap_total(
            &summary,
            "fhirhose_resources_total",
            Some(("resource_type", "Patient"))
        ),
        4
    );
    assert_eq!(
        snap_total(
            &summary,
            "fhirhose_file_downloads_total",
            Some(("outcome", "success"))
        ),
        files
    );
    assert_eq!(
        snap_total(&summary, "fhirhose_files_total", Some(("outcome", "done"))),
        files
    );
    assert!(snap_total(&summary, "fhirhose_download_bytes_total", None) > 0);
    assert!(
        snap_total(
            &summary,
            "fhirhose_parquet_rows_total",
            Some(("table", "resources"))
        ) >= s.expected_total()
    );
    let retries = snap_total(&summary, "fhirhose_retries_total", None);
    assert!(retries >= 3, "503 on a poll and two resets: {retries}");
    assert_eq!(
        snap_total(
            &summary,
            "fhirhose_retries_total",
            Some(("layer", "download"))
        ),
        2
    );
    assert_eq!(
        snap_total(
            &summary,
            "fhirhose_export_jobs_total",
            Some(("state", "done"))
        ),
        1
    );
    assert_eq!(
        snap_total(&summary, "fhirhose_export_duration_seconds", None),
        1
    );
    for series in summary["metrics"].as_object().unwrap().values() {
        for s in series.as_array().unwrap() {
            assert_eq!(s["labels"]["source"], "ops-sandbox", "{s}");
        }
    }
    // The human summary lists the operational metrics.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("metrics:")
            && stdout.contains("fhirhose_token_requests_total{outcome=success} 1"),
        "{stdout}"
    );

    // stderr is not a terminal: `auto` progress gives periodic plain lines, with counts only.
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("export queued on the server") || l.contains("landing files"))
        .collect();
    assert!(
        progress
            .iter()
            .any(|l| l.contains("export queued on the server") && l.contains("polls=")),
        "{stderr}"
    );
    assert!(!stderr.contains('\r'), "no bar redraws off a terminal");
    assert!(!stderr.contains("\x1b[2K"));
    for l in &progress {
        assert!(!l.contains("http"), "no URLs on progress lines: {l}");
    }
    assert!(stderr.contains("metrics endpoint listening"));
    s.sb.shutdown().await;
}

fn run(cwd: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("FHIRHOSE_LOG_LEVEL", "warn")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    eprintln!(
        "fhirhose {:?} -> {:?}\n{}\n{}",
        &args[..1],
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_of_a_finished_export_matches_the_state_db() {
    let s = setup("reset=first:1@file,retry-after=1,tiny-files=9,seed=5", 2).await;
    let args = s.args(&["--progress", "off"]);
    let cwd = s.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&cwd, &a)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let job_report = s.json("report.json");
    let job_id = job_report["job_id"].as_str().unwrap().to_owned();

    let state = s.state();
    let (html, json) = (s.path("job.html"), s.path("job.json"));
    let out = run(
        s.dir.path(),
        &[
            "report",
            &job_id,
            "--state",
            state.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("export-job {job_id} (done)")),
        "{stdout}"
    );
    let r = s.json("job.json");

    // Counts equal the state DB's files of this job.
    let st = fhirhose_ingest::state::StateStore::open(&state).unwrap();
    let lake_url = st.runs(10).unwrap()[0].lake.clone();
    let files: Vec<_> = st
        .files(&lake_url)
        .unwrap()
        .into_iter()
        .filter(|f| f.raw_key.contains(&format!("/export/{job_id}/")))
        .collect();
    assert!(!files.is_empty());
    assert_eq!(r["counts"]["files"], files.len());
    assert_eq!(r["counts"]["files_done"], files.len());
    assert_eq!(
        r["counts"]["resources"],
        files.iter().map(|f| f.resources).sum::<u64>()
    );
    assert_eq!(
        r["counts"]["bytes"],
        files.iter().map(|f| f.bytes).sum::<u64>()
    );
    assert_eq!(r["files"].as_array().unwrap().len(), files.len());
    assert_eq!(r["state"], "done");
    assert_eq!(r["runs"].as_array().unwrap().len(), 1);
    assert_eq!(r["runs"][0]["manifest_files"], files.len());

    // The timeline: kick-off, polls with waits, a manifest, one download per file, a retry.
    let tl = r["timeline"].as_array().unwrap();
    let kinds = |k: &str| tl.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(kinds("kickoff"), 1);
    assert!(kinds("poll") >= 3, "two 202s and the 200");
    assert_eq!(kinds("manifest"), 1);
    assert_eq!(kinds("download-start"), files.len());
    assert_eq!(kinds("download-end"), files.len());
    assert!(kinds("retry") >= 1);
    assert_eq!(kinds("complete"), 1);
    assert_eq!(r["activity"]["polls"].as_u64(), Some(kinds("poll") as u64));
    assert_eq!(r["activity"]["retries_by_reason"]["reset"], 1);
    assert!(r["activity"]["waited_s"].as_f64().unwrap() >= 1.5);
    assert!(
        tl.iter().all(|e| !e.to_string().contains("http")),
        "no URLs in the timeline"
    );
    // Auth events come from the audit next to the state DB.
    assert!(r["auth_events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "grant" && e["outcome"] == "success"));

    // The HTML is self-contained and draws the timeline.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<svg class=\"timeline\""));
    assert_eq!(page.matches("class=\"download\"").count(), files.len());
    assert!(page.matches("class=\"poll\"").count() >= 3);
    assert!(page.contains("class=\"retry\""));
    assert!(!page.contains("<script"));
    assert!(!page.contains("<link"));
    assert!(!page.contains("https://"));

    // The run id gives the same job's timeline.
    let run_id = files[0].run_id.clone();
    let out = run(
        s.dir.path(),
        &[
            "report",
            &run_id,
            "--state",
            state.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let r2 = s.json("job.json");
    assert_eq!(r2["kind"], "run");
    assert_eq!(r2["counts"], r["counts"]);
    assert_eq!(r2["timeline"].as_array().unwrap().len(), tl.len());

    // An unknown id is a usage error.
    let out = run(
        s.dir.path(),
        &["report", "nope", "--state", state.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    s.sb.shutdown().await;
}
