//! The HTML form of a [`Report`]: one self-contained page — inline CSS, inline SVG, no
//! scripts, no fonts or images fetched — so it can be mailed or attached to a ticket.
//!
//! The timeline has one lane for the server (kick-off, polls, the waits between them,
//! the manifest, the end) and one lane per file (its download as a bar, retries as
//! markers). Hovering a mark shows its details (SVG `<title>`). Every text that comes from
//! the state database is escaped.

use std::fmt::Write as _;

use fhirhose_ingest::bulk::JobEvent;

use super::Report;

/// Most file lanes drawn; the rest are summarised in a note.
const MAX_FILE_LANES: usize = 200;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn dur(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 1.0 {
        format!("{ms:.0}ms")
    } else if s < 90.0 {
        format!("{s:.1}s")
    } else if s < 5400.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s / 60.0) % 60.0) as u64)
    }
}

/// A "nice" tick step (1, 2, 5 × 10^n ms) giving about `n` ticks over `span` ms.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn wait_color(reason: &str) -> &'static str {
    match reason {
        "retry-after" => "#9ec5fe",
        "backoff" => "#c5b3e6",
        _ => "#f8c291",
    }
}

struct Lane<'a> {
    label: String,
    events: Vec<&'a JobEvent>,
}

/// The timeline chart as an inline `<svg>` (empty string when there are no events).
pub(crate) fn timeline_svg(events: &[JobEvent]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let t0 = events.iter().map(|e| e.at_ms).min().unwrap_or(0);
    let t1 = events
        .iter()
        .map(|e| e.at_ms + e.duration_ms.map_or(0, |d| i64::try_from(d).unwrap_or(0)))
        .max()
        .unwrap_or(t0)
        .max(t0 + 1000);
    let span = (t1 - t0) as f64;
    let mut server = Lane {
        label: "server".into(),
        events: Vec::new(),
    };
    let mut files: Vec<Lane<'_>> = Vec::new();
    for e in events {
        match &e.file {
            Some(f) => match files.iter_mut().find(|l| &l.label == f) {
                Some(l) => l.events.push(e),
                None => files.push(Lane {
                    label: f.clone(),
                    events: vec![e],
                }),
            },
            None => server.events.push(e),
        }
    }
    let hidden = files.len().saturating_sub(MAX_FILE_LANES);
    files.truncate(MAX_FILE_LANES);

    let (width, left, right, top, lane_h) = (1100.0, 190.0, 20.0, 34.0, 22.0);
    let plot_w = width - left - right;
    let x = |ms: i64| left + (ms - t0) as f64 / span * plot_w;
    let lanes = 1 + files.len();
    let height = top + lanes as f64 * lane_h + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="job timeline">"#
    );
    // Axis and grid.
    let step = tick_step(span, 8.0);
    let mut t = 0.0;
    while t <= span + 0.5 {
        let px = left + t / span * plot_w;
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#e5e7eb"/><text x="{px:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"##,
            top - 6.0,
            top + lanes as f64 * lane_h,
            top - 12.0,
            esc(&dur(t))
        );
        t += step;
    }
    let lane_y = |i: usize| top + i as f64 * lane_h;
    for (i, lane) in std::iter::once(&server).chain(files.iter()).enumerate() {
        let y = lane_y(i);
        if i % 2 == 0 {
            let _ = write!(
                s,
                r##"<rect x="{left}" y="{y}" width="{plot_w}" height="{lane_h}" fill="#f9fafb"/>"##
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="lane" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + lane_h * 0.68,
            esc(&lane.label)
        );
    }
    // Server lane: waits (behind), then marks.
    let y = lane_y(0);
    let mid = y + lane_h / 2.0;
    for e in &server.events {
        if e.kind == "poll" {
            if let (Some(ms), Some(r)) = (e.duration_ms, e.reason.as_deref()) {
                let x0 = x(e.at_ms);
                let w = (ms as f64 / span * plot_w).max(1.0);
                let _ = write!(
                    s,
                    r#"<rect class="wait" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>wait {} ({})</title></rect>"#,
                    y + 5.0,
                    lane_h - 10.0,
                    wait_color(r),
                    esc(&dur(ms as f64)),
                    esc(r)
                );
            }
        }
    }
    for e in &server.events {
        let cx = x(e.at_ms);
        let at = dur((e.at_ms - t0) as f64);
        let status = e.status.map(|s| format!(" HTTP {s}")).unwrap_or_default();
        let detail = e
            .detail
            .as_deref()
            .map(|d| format!(" · {d}"))
            .unwrap_or_default();
        let title = esc(&format!("{} at +{at}{status}{detail}", e.kind));
        let _ = match e.kind.as_str() {
            "poll" => write!(
                s,
                r##"<circle class="poll" cx="{cx:.1}" cy="{mid:.1}" r="4" fill="{}" stroke="#1f2937" stroke-width="0.8"><title>{title}</title></circle>"##,
                if e.status == Some(202) || e.status == Some(200) {
                    "#3b82f6"
                } else {
                    "#f97316"
                }
            ),
            "kickoff" | "reattach" => write!(
                s,
                r##"<path class="kickoff" d="M{cx:.1} {:.1} l6 6 l-6 6 l-6 -6 z" fill="#111827"><title>{title}</title></path>"##,
                mid - 6.0
            ),
            "manifest" => write!(
                s,
                r##"<rect class="manifest" x="{:.1}" y="{:.1}" width="8" height="12" fill="#10b981"><title>{title}</title></rect>"##,
                cx - 4.0,
                mid - 6.0
            ),
            "complete" | "failed" => write!(
                s,
                r##"<path class="end" d="M{cx:.1} {:.1} l0 14" stroke="{}" stroke-width="3"><title>{title}</title></path>"##,
                mid - 7.0,
                if e.kind == "complete" && e.reason.as_deref() == Some("done") {
                    "#059669"
                } else {
                    "#dc2626"
                }
            ),
            _ => write!(
                s,
                r##"<circle cx="{cx:.1}" cy="{mid:.1}" r="3" fill="#6b7280"><title>{title}</title></circle>"##
            ),
        };
    }
    // File lanes: download bars, then retries on top.
    for (i, lane) in files.iter().enumerate() {
        let y = lane_y(i + 1);
        let mid = y + lane_h / 2.0;
        let start = lane
            .events
            .iter()
            .find(|e| e.kind == "download-start")
            .map(|e| e.at_ms);
        let end = lane.events.iter().rev().find(|e| e.kind == "download-end");
        if let Some(st) = start {
            let en = end.map_or(t1, |e| e.at_ms);
            let ok = end.is_some_and(|e| e.reason.as_deref() == Some("success"));
            let bytes = end.and_then(|e| e.bytes).unwrap_or(0);
            let title = esc(&format!(
                "{}: {} from +{} in {}, {:.2} MB",
                lane.label,
                end.map_or("unfinished", |e| e.reason.as_deref().unwrap_or("ended")),
                dur((st - t0) as f64),
                dur((en - st) as f64),
                bytes as f64 / 1e6
            ));
            let _ = write!(
                s,
                r#"<rect class="download" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="2" fill="{}"><title>{title}</title></rect>"#,
                x(st),
                y + 4.0,
                (x(en) - x(st)).max(2.0),
                lane_h - 8.0,
                if ok {
                    "#34d399"
                } else if end.is_some() {
                    "#f87171"
                } else {
                    "#d1d5db"
                }
            );
        }
        for e in lane.events.iter().filter(|e| e.kind == "retry") {
            let cx = x(e.at_ms);
            let title = esc(&format!(
                "retry at +{}: {}{}{}",
                dur((e.at_ms - t0) as f64),
                e.reason.as_deref().unwrap_or("-"),
                e.duration_ms
                    .map(|d| format!(", wait {}", dur(d as f64)))
                    .unwrap_or_default(),
                e.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
            let _ = write!(
                s,
                r##"<path class="retry" d="M{cx:.1} {:.1} l5 9 l-10 0 z" fill="#f59e0b" stroke="#92400e" stroke-width="0.8"><title>{title}</title></path>"##,
                mid - 5.0
            );
        }
    }
    let ly = top + lanes as f64 * lane_h + 22.0;
    let legend: [(&str, &str); 7] = [
        ("#111827", "kick-off"),
        ("#3b82f6", "poll"),
        ("#9ec5fe", "wait (Retry-After)"),
        ("#c5b3e6", "wait (backoff)"),
        ("#f8c291", "wait (throttled)"),
        ("#34d399", "download"),
        ("#f59e0b", "retry"),
    ];
    let mut lx = left;
    for (color, label) in legend {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{ly}" class="legend">{label}</text>"#,
            ly - 10.0,
            lx + 16.0
        );
        lx += 28.0 + label.len() as f64 * 6.5;
    }
    s.push_str("</svg>");
    if hidden > 0 {
        let _ = write!(
            s,
            r#"<p class="note">{hidden} more files are not drawn.</p>"#
        );
    }
    s
}

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;margin:24px 32px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.sub{color:#4b5563;margin:0 0 16px}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;vertical-align:middle}
.state.ok,.state.done{background:#d1fae5;color:#065f46}.state.partial,.state.running,.state.downloading,.state.in-progress{background:#fef3c7;color:#92400e}
.state.failed,.state.needs-reauthorization{background:#fee2e2;color:#991b1b}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#6b7280;font-size:12px}
table{border-collapse:collapse;font-size:13px}th,td{text-align:left;padding:4px 10px;border-bottom:1px solid #f3f4f6}
th{color:#374151;background:#f9fafb}td.n{text-align:right;font-variant-numeric:tabular-nums}
.timeline text.tick{font-size:10px;fill:#6b7280}.timeline text.lane{font-size:11px;fill:#374151}.timeline text.legend{font-size:11px;fill:#374151}
.note{color:#6b7280;font-size:12px}.err{color:#991b1b}
"#;

fn card(out: &mut String, k: &str, v: &str) {
    let _ = write!(
        out,
        r#"<div class="card"><div class="v">{}</div><div class="k">{}</div></div>"#,
        esc(v),
        esc(k)
    );
}

fn secs(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |s| dur(s * 1000.0))
}

/// The whole page.
pub(crate) fn render(r: &Report) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let title = format!("fhirhose {} {}", r.kind, r.id);
    let _ = write!(
        o,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{}</title><style>{CSS}</style></head><body>"#,
        esc(&title)
    );
    let _ = write!(
        o,
        r#"<h1>{} <span class="state {}">{}</span></h1><p class="sub">{} · source <b>{}</b></p>"#,
        esc(&title),
        esc(&r.state),
        esc(&r.state),
        esc(&r.kind),
        esc(&r.source)
    );
    o.push_str(r#"<div class="cards">"#);
    let c = &r.counts;
    let a = &r.activity;
    card(
        &mut o,
        "files landed",
        &format!("{}/{}", c.files_done, c.files),
    );
    card(&mut o, "files failed", &c.files_failed.to_string());
    card(&mut o, "resources", &c.resources.to_string());
    card(&mut o, "dead letters", &c.dead_letters.to_string());
    card(&mut o, "MB", &format!("{:.1}", c.bytes as f64 / 1e6));
    card(&mut o, "status polls", &a.polls.to_string());
    card(&mut o, "waited between polls", &secs(Some(a.waited_s)));
    card(
        &mut o,
        "retries",
        &a.retries_by_reason.values().sum::<u64>().to_string(),
    );
    card(&mut o, "kick-off → manifest", &secs(a.manifest_wait_s));
    card(&mut o, "downloads", &secs(a.download_s));
    card(&mut o, "total", &secs(a.total_s));
    o.push_str("</div>");

    o.push_str("<h2>Timeline</h2>");
    let svg = timeline_svg(&r.timeline);
    if svg.is_empty() {
        o.push_str(r#"<p class="note">No timeline events were recorded for this job or run.</p>"#);
    } else {
        o.push_str(&svg);
    }

    if let Some(j) = &r.job {
        o.push_str("<h2>Export job</h2><table>");
        let rows: [(&str, Option<&str>); 8] = [
            ("job id", Some(j.job_id.as_str())),
            ("state", Some(j.state.as_str())),
            ("status URL", Some(j.status_url.as_str())),
            ("kicked off", Some(j.created_at.as_str())),
            ("last update", Some(j.updated_at.as_str())),
            ("_since", j.since.as_deref()),
            ("transactionTime", j.transaction_time.as_deref()),
            ("waiting for", j.waiting_for.as_deref()),
        ];
        for (k, v) in rows {
            let _ = write!(
                o,
                "<tr><th>{}</th><td>{}</td></tr>",
                esc(k),
                esc(v.unwrap_or("-"))
            );
        }
        if let Some(e) = &j.error {
            let _ = write!(
                o,
                r#"<tr><th>error</th><td class="err">{}</td></tr>"#,
                esc(e)
            );
        }
        o.push_str("</table>");
    }

    if !a.waits_by_reason.is_empty() || !a.retries_by_reason.is_empty() {
        o.push_str(
            "<h2>Waits and retries</h2><table><tr><th>kind</th><th>reason</th><th>count</th></tr>",
        );
        for (k, v) in &a.waits_by_reason {
            let _ = write!(
                o,
                r#"<tr><td>poll wait</td><td>{}</td><td class="n">{v}</td></tr>"#,
                esc(k)
            );
        }
        for (k, v) in &a.retries_by_reason {
            let _ = write!(
                o,
                r#"<tr><td>retry</td><td>{}</td><td class="n">{v}</td></tr>"#,
                esc(k)
            );
        }
        o.push_str("</table>");
    }

    o.push_str("<h2>Files</h2>");
    if r.files.is_empty() {
        o.push_str(r#"<p class="note">No files recorded.</p>"#);
    } else {
        o.push_str(r#"<table><tr><th>file</th><th>status</th><th>bytes</th><th>lines</th><th>resources</th><th>dead letters</th><th>run</th></tr>"#);
        for f in &r.files {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td><span class="state {}">{}</span></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
                esc(&f.name),
                esc(&f.status),
                esc(&f.status),
                f.bytes,
                f.lines,
                f.resources,
                f.dead_letters,
                esc(&f.run_id)
            );
            if let Some(e) = &f.error {
                let _ = write!(
                    o,
                    r#"<tr><td></td><td colspan="6" class="err">{}</td></tr>"#,
                    esc(e)
                );
            }
        }
        o.push_str("</table>");
    }

    if !r.runs.is_empty() {
        o.push_str(r#"<h2>Runs</h2><table><tr><th>run</th><th>kind</th><th>status</th><th>started</th><th>finished</th><th>wall time</th><th>resources</th><th>manifest files</th></tr>"#);
        for run in &r.runs {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td>{}</td><td><span class="state {}">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                esc(&run.run_id),
                esc(&run.kind),
                esc(&run.status),
                esc(&run.status),
                esc(&run.started_at),
                esc(run.finished_at.as_deref().unwrap_or("-")),
                secs(run.wall_time_s),
                run.resources.map_or_else(|| "-".into(), |n| n.to_string()),
                run.manifest_files
                    .map_or_else(|| "-".into(), |n| n.to_string()),
            );
        }
        o.push_str("</table>");
    }

    o.push_str("<h2>Authorization events</h2>");
    if r.auth_events.is_empty() {
        let _ = write!(
            o,
            r#"<p class="note">None recorded{}.</p>"#,
            r.auth_source
                .as_deref()
                .map(|s| format!(" in {}", esc(s)))
                .unwrap_or_else(|| " (no audit found)".into())
        );
    } else {
        o.push_str(r#"<table><tr><th>time</th><th>kind</th><th>outcome</th><th>error class</th><th>event id</th></tr>"#);
        for e in &r.auth_events {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.time),
                esc(&e.kind),
                esc(&e.outcome),
                esc(e.error_class.as_deref().unwrap_or("")),
                esc(&e.id)
            );
        }
        o.push_str("</table>");
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let _ = write!(
        o,
        r#"<p class="note">Generated by fhirhose {} at {}.</p></body></html>"#,
        env!("CARGO_PKG_VERSION"),
        esc(&now)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_draws_polls_waits_downloads_and_retries() {
        let mk = |kind: &str, at: i64, f: &dyn Fn(&mut JobEvent)| {
            let mut e = JobEvent::now("j", kind);
            e.at_ms = at;
            f(&mut e);
            e
        };
        let events = vec![
            mk("kickoff", 1_000, &|e| e.status = Some(202)),
            mk("poll", 1_100, &|e| {
                e.status = Some(202);
                e.reason = Some("retry-after".into());
                e.duration_ms = Some(2_000);
            }),
            mk("poll", 3_200, &|e| e.status = Some(200)),
            mk("manifest", 3_300, &|_| {}),
            mk("download-start", 3_400, &|e| {
                e.file = Some("Patient.001.ndjson".into())
            }),
            mk("retry", 3_600, &|e| {
                e.file = Some("Patient.001.ndjson".into());
                e.reason = Some("reset".into());
            }),
            mk("download-end", 4_000, &|e| {
                e.file = Some("Patient.001.ndjson".into());
                e.reason = Some("success".into());
                e.bytes = Some(1234);
            }),
            mk("complete", 4_100, &|e| e.reason = Some("done".into())),
        ];
        let svg = timeline_svg(&events);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches(r#"class="poll""#).count(), 2);
        assert_eq!(svg.matches(r#"class="wait""#).count(), 1);
        assert_eq!(svg.matches(r#"class="download""#).count(), 1);
        assert_eq!(svg.matches(r#"class="retry""#).count(), 1);
        assert!(svg.contains("Patient.001.ndjson"));
        assert!(svg.contains("#34d399"), "a successful download is green");
        assert!(timeline_svg(&[]).is_empty());
    }

    #[test]
    fn text_is_escaped_and_nothing_external_is_loaded() {
        let r = Report {
            kind: "run".into(),
            id: "<script>alert(1)</script>".into(),
            state: "ok".into(),
            ..Report::default()
        };
        let page = render(&r);
        assert!(!page.contains("<script"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(
            !page.contains("http://")
                || page.matches("http://").count()
                    == page.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(!page.contains("https://"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10_000.0, 8.0), 2_000.0);
        assert_eq!(tick_step(3_600_000.0, 8.0), 500_000.0);
        assert_eq!(dur(90_500.0), "1m30s");
    }
}
