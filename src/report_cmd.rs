//! `fhirhose report <JOB_OR_RUN_ID>`: what happened to an export job or a run, from the
//! state database (export jobs, their timeline events, runs, files), the run manifests in
//! the lake and the authorization audit (when one is found).
//!
//! ```text
//! fhirhose report 20250101T120000Z-1a2b3c4d --state .fhirhose/state.db --html job.html
//! ```
//!
//! Output: a text report on stdout, `--json FILE` for machines, `--html FILE` for people: one
//! self-contained page (inline CSS and SVG, no scripts, nothing fetched) with the counts,
//! timings and a timeline chart of kick-off, polls (with their waits), downloads (one bar
//! per file) and retries.
//!
//! PHI: the report carries ids, file names of the lake (`Patient.001.ndjson`), counts,
//! times, statuses and reason classes. Status URLs are shown without query strings; file
//! URLs are never stored; audit events are reduced to time, kind, outcome and error class.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use fhirhose_ingest::bulk::{JobEvent, JobRecord, JobStore, SqliteJobStore};
use fhirhose_ingest::http::redact_url;
use fhirhose_ingest::state::{FileRecord, RunRecord, StateStore};
use serde::Serialize;
use serde_json::Value;

use crate::cli::UsageError;

mod html;

/// `fhirhose report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// An export job id or a run id (`fhirhose status` lists both).
    pub id: String,
    /// State database.
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
    /// Write a self-contained HTML report (with the timeline chart) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `export-job` or `run`.
    pub kind: String,
    /// The job or run id asked for.
    pub id: String,
    /// Source.
    pub source: String,
    /// Final or current state (`done`, `partial`, `ok`, `running`...).
    pub state: String,
    /// The export job, when there is one.
    pub job: Option<JobSection>,
    /// Runs that landed the job's files (or the run asked for).
    pub runs: Vec<RunSection>,
    /// Files, in name order.
    pub files: Vec<FileSection>,
    /// Totals over `files`.
    pub counts: Counts,
    /// Timeline events, oldest first.
    pub timeline: Vec<JobEvent>,
    /// Polls, waits and retries derived from the timeline (and the job report).
    pub activity: Activity,
    /// Authorization events in the job's time window (from the audit, if found).
    pub auth_events: Vec<AuthEventBrief>,
    /// Where the audit was read from, if anywhere.
    pub auth_source: Option<String>,
}

/// The export job part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSection {
    /// Job id.
    pub job_id: String,
    /// State.
    pub state: String,
    /// Status URL without query.
    pub status_url: String,
    /// `_since`.
    pub since: Option<String>,
    /// `transactionTime`.
    pub transaction_time: Option<String>,
    /// Kick-off time.
    pub created_at: String,
    /// Last update.
    pub updated_at: String,
    /// What it waits for.
    pub waiting_for: Option<String>,
    /// Last error (one line).
    pub error: Option<String>,
    /// The audit event of the kick-off's token.
    pub auth_event_id: Option<String>,
    /// The job report written when it completed (JSON), if any.
    pub report: Option<Value>,
}

/// One run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSection {
    /// Run id.
    pub run_id: String,
    /// `ingest`, `export`, ...
    pub kind: String,
    /// Status.
    pub status: String,
    /// Start.
    pub started_at: String,
    /// End.
    pub finished_at: Option<String>,
    /// Wall time from the summary.
    pub wall_time_s: Option<f64>,
    /// Resources landed (summary).
    pub resources: Option<u64>,
    /// Dead letters (summary).
    pub dead_letters: Option<u64>,
    /// Whether the run manifest was found in the lake, and how many files it lists.
    pub manifest_files: Option<u64>,
}

/// One file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileSection {
    /// The lake name (last segment of the raw key).
    pub name: String,
    /// Raw key.
    pub raw_key: String,
    /// Status.
    pub status: String,
    /// Bytes.
    pub bytes: u64,
    /// Lines.
    pub lines: u64,
    /// Resources.
    pub resources: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// The run that last worked on it.
    pub run_id: String,
    /// Error, when failed.
    pub error: Option<String>,
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Files known.
    pub files: u64,
    /// Files done.
    pub files_done: u64,
    /// Files failed.
    pub files_failed: u64,
    /// Files still pending or running.
    pub files_pending: u64,
    /// Bytes.
    pub bytes: u64,
    /// Lines.
    pub lines: u64,
    /// Resources.
    pub resources: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// Polls, waits, retries and timings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    /// Status polls.
    pub polls: u64,
    /// Waits between polls by reason.
    pub waits_by_reason: BTreeMap<String, u64>,
    /// Seconds waited between polls.
    pub waited_s: f64,
    /// Retries by reason.
    pub retries_by_reason: BTreeMap<String, u64>,
    /// Downloads started / ended.
    pub downloads: u64,
    /// Downloads that failed.
    pub downloads_failed: u64,
    /// Seconds from kick-off to manifest.
    pub manifest_wait_s: Option<f64>,
    /// Seconds from the first download start to the last download end.
    pub download_s: Option<f64>,
    /// Seconds from the first to the last event.
    pub total_s: Option<f64>,
}

/// An authorization event, reduced to what is safe to show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthEventBrief {
    /// Event id.
    pub id: String,
    /// RFC 3339.
    pub time: String,
    /// grant, refresh, failure, unauthorized, revocation, scope_denied.
    pub kind: String,
    /// success, partial, failure, denied.
    pub outcome: String,
    /// Error class, if any.
    pub error_class: Option<String>,
}

fn name_of(raw_key: &str) -> String {
    raw_key.rsplit('/').next().unwrap_or(raw_key).to_owned()
}

fn file_section(f: &FileRecord) -> FileSection {
    FileSection {
        name: name_of(&f.raw_key),
        raw_key: f.raw_key.clone(),
        status: f.status.name().to_owned(),
        bytes: f.bytes,
        lines: f.lines,
        resources: f.resources,
        dead_letters: f.dead_letters,
        run_id: f.run_id.clone(),
        error: f.error.clone(),
    }
}

fn run_section(r: &RunRecord) -> RunSection {
    let summary: Option<Value> = r
        .summary
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    RunSection {
        run_id: r.run_id.clone(),
        kind: r.kind.clone(),
        status: r.status.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        wall_time_s: summary.as_ref().and_then(|s| s["wall_time_s"].as_f64()),
        resources: summary.as_ref().and_then(|s| s["resources"].as_u64()),
        dead_letters: summary.as_ref().and_then(|s| s["dead_letters"].as_u64()),
        manifest_files: None,
    }
}

fn counts(files: &[FileSection]) -> Counts {
    let mut c = Counts::default();
    for f in files {
        c.files += 1;
        match f.status.as_str() {
            "done" => c.files_done += 1,
            "failed" => c.files_failed += 1,
            _ => c.files_pending += 1,
        }
        c.bytes += f.bytes;
        c.lines += f.lines;
        c.resources += f.resources;
        c.dead_letters += f.dead_letters;
    }
    c
}

/// Polls, waits and retries from the timeline; the job report fills what the timeline lacks
/// (jobs recorded before timelines existed).
fn activity(events: &[JobEvent], job_report: Option<&Value>) -> Activity {
    let mut a = Activity::default();
    let mut kickoff = None;
    let mut manifest = None;
    let (mut first_dl, mut last_dl) = (None::<i64>, None::<i64>);
    for e in events {
        match e.kind.as_str() {
            "kickoff" | "reattach" => kickoff = kickoff.or(Some(e.at_ms)),
            "manifest" => manifest = Some(e.at_ms),
            "poll" => {
                a.polls += 1;
                if let (Some(r), Some(ms)) = (&e.reason, e.duration_ms) {
                    *a.waits_by_reason.entry(r.clone()).or_default() += 1;
                    a.waited_s += ms as f64 / 1000.0;
                }
            }
            "retry" => {
                *a.retries_by_reason
                    .entry(e.reason.clone().unwrap_or_else(|| "unknown".into()))
                    .or_default() += 1;
            }
            "download-start" => {
                a.downloads += 1;
                first_dl = Some(first_dl.map_or(e.at_ms, |f| f.min(e.at_ms)));
            }
            "download-end" => {
                if e.reason.as_deref() == Some("failure") {
                    a.downloads_failed += 1;
                }
                last_dl = Some(last_dl.map_or(e.at_ms, |l| l.max(e.at_ms)));
            }
            _ => {}
        }
    }
    if let (Some(k), Some(m)) = (kickoff, manifest) {
        a.manifest_wait_s = Some((m - k) as f64 / 1000.0);
    }
    if let (Some(f), Some(l)) = (first_dl, last_dl) {
        a.download_s = Some((l - f).max(0) as f64 / 1000.0);
    }
    if let (Some(f), Some(l)) = (events.first(), events.last()) {
        a.total_s = Some((l.at_ms - f.at_ms) as f64 / 1000.0);
    }
    if let Some(r) = job_report {
        if a.polls == 0 {
            a.polls = r["polls"].as_u64().unwrap_or(0);
            a.waited_s = r["waited_s"].as_f64().unwrap_or(0.0);
            if let Some(m) = r["waits_by_reason"].as_object() {
                a.waits_by_reason = m
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect();
            }
        }
        if a.retries_by_reason.is_empty() {
            if let Some(m) = r["retries_by_reason"].as_object() {
                a.retries_by_reason = m
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect();
            }
        }
        a.manifest_wait_s = a.manifest_wait_s.or(r["manifest_wait_s"].as_f64());
        a.download_s = a.download_s.or(r["download_s"].as_f64());
    }
    a
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Reduces an audit record (a JSON object from the audit log or a row of an audit table)
/// to the fields that are safe to show.
fn audit_brief(v: &Value) -> Option<AuthEventBrief> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(AuthEventBrief {
        id: s("id").or_else(|| s("event_id")).unwrap_or_default(),
        time: s("time").or_else(|| s("at"))?,
        kind: s("kind").unwrap_or_default(),
        outcome: s("outcome").unwrap_or_default(),
        error_class: s("error_class"),
    })
}

/// Authorization events between `from` and `to` (inclusive, with a minute of slack), from
/// an audit table in the state database when one exists, else from `auth-audit.jsonl` next
/// to it. Neither is required.
fn auth_events(
    state: &Path,
    from: Option<time::OffsetDateTime>,
    to: Option<time::OffsetDateTime>,
) -> (Vec<AuthEventBrief>, Option<String>) {
    let slack = time::Duration::minutes(1);
    let within = |b: &AuthEventBrief| {
        let Some(t) = parse_time(&b.time) else {
            return false;
        };
        from.is_none_or(|f| t >= f - slack) && to.is_none_or(|e| t <= e + slack)
    };
    if let Ok(Some((table, rows))) = audit_table_rows(state) {
        let v: Vec<_> = rows.iter().filter_map(audit_brief).filter(within).collect();
        return (v, Some(format!("table {table}")));
    }
    let path = state
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("auth-audit.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return (Vec::new(), None);
    };
    let v: Vec<_> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| audit_brief(&v))
        .filter(within)
        .collect();
    (v, Some(path.display().to_string()))
}

/// Rows of the audit table (`auth_events`, else the first table whose name contains
/// `audit`), as JSON objects (column → value).
fn audit_table_rows(state: &Path) -> rusqlite::Result<Option<(String, Vec<Value>)>> {
    let conn = rusqlite::Connection::open_with_flags(
        state,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND (name = 'auth_events' OR name LIKE '%audit%') \
             ORDER BY name = 'auth_events' DESC, name LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    let Some(table) = table else {
        return Ok(None);
    };
    let mut st = conn.prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "")))?;
    let cols: Vec<String> = st.column_names().iter().map(|c| (*c).to_owned()).collect();
    let rows = st.query_map([], |r| {
        let mut m = serde_json::Map::new();
        for (i, c) in cols.iter().enumerate() {
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) => {
                    Value::String(String::from_utf8_lossy(t).into_owned())
                }
                rusqlite::types::ValueRef::Integer(n) => Value::from(n),
                _ => Value::Null,
            };
            m.insert(c.clone(), v);
        }
        Ok(Value::Object(m))
    })?;
    Ok(Some((table, rows.collect::<Result<Vec<_>, _>>()?)))
}

/// Builds the report for a job or run id.
pub async fn build(state: &Path, id: &str) -> anyhow::Result<Report> {
    if !state.exists() {
        return Err(UsageError(format!("no state database at {}", state.display())).into());
    }
    let jobs = SqliteJobStore::open(state).context("cannot open the export job store")?;
    let st = StateStore::open(state).context("cannot open the state database")?;
    let all_runs = st.runs(100_000)?;
    let mut report = Report {
        id: id.to_owned(),
        ..Report::default()
    };
    let (runs, files): (Vec<RunRecord>, Vec<FileRecord>);
    let window;
    if let Some(job) = jobs.get(id)? {
        let marker = format!("/export/{id}/");
        let mut fs: Vec<FileRecord> = Vec::new();
        let mut lakes: Vec<&str> = all_runs.iter().map(|r| r.lake.as_str()).collect();
        lakes.sort_unstable();
        lakes.dedup();
        for lake in lakes {
            fs.extend(
                st.files(lake)?
                    .into_iter()
                    .filter(|f| f.raw_key.contains(&marker)),
            );
        }
        let run_ids: std::collections::HashSet<&str> =
            fs.iter().map(|f| f.run_id.as_str()).collect();
        runs = all_runs
            .iter()
            .filter(|r| run_ids.contains(r.run_id.as_str()))
            .cloned()
            .collect();
        files = fs;
        report.kind = "export-job".into();
        report.source = job.source.clone();
        report.state = job.state.as_str().to_owned();
        report.timeline = jobs.events(id)?;
        window = (parse_time(&job.created_at), parse_time(&job.updated_at));
        report.job = Some(job_section(&job));
    } else if let Some(run) = all_runs.iter().find(|r| r.run_id == id) {
        files = st
            .files(&run.lake)?
            .into_iter()
            .filter(|f| f.run_id == id)
            .collect();
        report.kind = "run".into();
        report.source = run.source.clone();
        report.state = run.status.clone();
        window = (
            parse_time(&run.started_at),
            run.finished_at.as_deref().and_then(parse_time),
        );
        // A run that landed an export job's files shows that job's timeline too.
        let job_id = files.iter().find_map(|f| {
            let (_, rest) = f.raw_key.split_once("/export/")?;
            rest.split('/').next().map(str::to_owned)
        });
        if let Some(j) = job_id.and_then(|j| jobs.get(&j).ok().flatten()) {
            report.timeline = jobs.events(&j.job_id)?;
            report.job = Some(job_section(&j));
        }
        runs = vec![run.clone()];
    } else {
        return Err(UsageError(format!(
            "no export job or run `{id}` in {} (see `fhirhose status`)",
            state.display()
        ))
        .into());
    }
    let mut run_sections: Vec<RunSection> = runs.iter().map(run_section).collect();
    for (rs, r) in run_sections.iter_mut().zip(&runs) {
        rs.manifest_files = read_manifest_files(&r.lake, &r.run_id).await;
    }
    run_sections.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    report.runs = run_sections;
    let mut fs: Vec<FileSection> = files.iter().map(file_section).collect();
    fs.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    report.counts = counts(&fs);
    report.files = fs;
    report.activity = activity(
        &report.timeline,
        report.job.as_ref().and_then(|j| j.report.as_ref()),
    );
    let (ev, src) = auth_events(state, window.0, window.1);
    report.auth_events = ev;
    report.auth_source = src;
    Ok(report)
}

fn job_section(j: &JobRecord) -> JobSection {
    JobSection {
        job_id: j.job_id.clone(),
        state: j.state.as_str().to_owned(),
        status_url: url::Url::parse(&j.status_url)
            .map(|u| redact_url(&u))
            .unwrap_or_default(),
        since: j.since.clone(),
        transaction_time: j.transaction_time.clone(),
        created_at: j.created_at.clone(),
        updated_at: j.updated_at.clone(),
        waiting_for: j.waiting_for.clone(),
        error: j.error.clone(),
        auth_event_id: j.auth_event_id.clone(),
        report: j
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
    }
}

/// The number of files in the run's manifest (`manifests/<run>.json` in its lake), if it
/// can be read.
async fn read_manifest_files(lake: &str, run_id: &str) -> Option<u64> {
    let lake = crate::lake::Lake::open(lake).ok()?;
    let key = object_store::path::Path::from(format!(
        "manifests/{}.json",
        crate::pipeline::key_segment(run_id)
    ));
    let bytes = lake.store.get(&key).await.ok()?.bytes().await.ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["files"].as_array().map(|a| a.len() as u64)
}

fn print(r: &Report) {
    println!("{} {} ({}) source={}", r.kind, r.id, r.state, r.source);
    if let Some(j) = &r.job {
        println!("  status url: {}", j.status_url);
        println!(
            "  kicked off {}  last update {}  since {}  transactionTime {}",
            j.created_at,
            j.updated_at,
            j.since.as_deref().unwrap_or("-"),
            j.transaction_time.as_deref().unwrap_or("-")
        );
        if let Some(w) = &j.waiting_for {
            println!("  waiting for: {w}");
        }
        if let Some(e) = &j.error {
            println!("  error: {e}");
        }
    }
    let c = &r.counts;
    println!(
        "  files: {} ({} done, {} failed, {} pending); {:.1} MB, {} lines, {} resources, {} dead letters",
        c.files,
        c.files_done,
        c.files_failed,
        c.files_pending,
        c.bytes as f64 / 1e6,
        c.lines,
        c.resources,
        c.dead_letters
    );
    let a = &r.activity;
    let fmt_s = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
    println!(
        "  polls: {} ({:.1} s waited{}); manifest after {}; downloads {} ({} failed) in {}; total {}",
        a.polls,
        a.waited_s,
        if a.waits_by_reason.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                a.waits_by_reason
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        fmt_s(a.manifest_wait_s),
        a.downloads,
        a.downloads_failed,
        fmt_s(a.download_s),
        fmt_s(a.total_s)
    );
    if !a.retries_by_reason.is_empty() {
        println!(
            "  retries: {}",
            a.retries_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for run in &r.runs {
        println!(
            "  run {} ({}, {}) started {} finished {}{}",
            run.run_id,
            run.kind,
            run.status,
            run.started_at,
            run.finished_at.as_deref().unwrap_or("-"),
            run.manifest_files
                .map(|n| format!("; manifest lists {n} files"))
                .unwrap_or_default()
        );
    }
    if !r.auth_events.is_empty() {
        println!("  auth events:");
        for e in &r.auth_events {
            println!(
                "    {} {:<13} {:<8} {}",
                e.time,
                e.kind,
                e.outcome,
                e.error_class.as_deref().unwrap_or("")
            );
        }
    }
    for f in r.files.iter().filter(|f| f.status == "failed") {
        println!("  FAILED {}: {}", f.name, f.error.as_deref().unwrap_or("-"));
    }
}

/// Runs `fhirhose report`.
pub async fn run(a: ReportArgs) -> anyhow::Result<u8> {
    let r = build(&a.state, &a.id).await?;
    print(&r);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.html {
        std::fs::write(p, html::render(&r))
            .with_context(|| format!("cannot write {}", p.display()))?;
        println!("  html report: {}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, at: i64, f: impl FnOnce(&mut JobEvent)) -> JobEvent {
        let mut e = JobEvent::now("j", kind);
        e.at_ms = at;
        f(&mut e);
        e
    }

    #[test]
    fn activity_comes_from_the_timeline() {
        let events = vec![
            ev("kickoff", 0, |_| {}),
            ev("poll", 100, |e| {
                e.reason = Some("retry-after".into());
                e.duration_ms = Some(1000);
            }),
            ev("poll", 1200, |e| {
                e.reason = Some("throttled".into());
                e.duration_ms = Some(500);
            }),
            ev("poll", 1800, |_| {}),
            ev("manifest", 1810, |_| {}),
            ev("download-start", 2000, |e| e.file = Some("a".into())),
            ev("retry", 2100, |e| e.reason = Some("reset".into())),
            ev("download-end", 3000, |e| e.reason = Some("success".into())),
            ev("download-start", 2050, |e| e.file = Some("b".into())),
            ev("download-end", 4000, |e| e.reason = Some("failure".into())),
        ];
        let a = activity(&events, None);
        assert_eq!(a.polls, 3);
        assert_eq!(a.waits_by_reason.get("retry-after"), Some(&1));
        assert!((a.waited_s - 1.5).abs() < 1e-9);
        assert_eq!(a.retries_by_reason.get("reset"), Some(&1));
        assert_eq!((a.downloads, a.downloads_failed), (2, 1));
        assert_eq!(a.manifest_wait_s, Some(1.81));
        assert_eq!(a.download_s, Some(2.0));
    }

    #[test]
    fn audit_records_are_reduced() {
        let v = serde_json::json!({
            "id": "e1", "time": "2025-01-01T00:00:00Z", "kind": "grant", "outcome": "success",
            "patient": "Patient/123", "fhir_user": "Practitioner/9", "granted_scopes": ["a"]
        });
        let b = audit_brief(&v).unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert!(
            json.contains("grant")
                && !json.contains("Patient/123")
                && !json.contains("Practitioner")
        );
    }
}
