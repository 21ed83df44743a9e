//! The authorization audit trail: `fhirhose audit` lists it, and runs that fetched from a
//! FHIR server link to it (lineage).
//!
//! ```text
//!  Parquet row (_run_id) ─► manifests/<run>.json {auth_event_id, export_job_id, audit_log}
//!                       ─► runs.auth_event_id / runs.job_id (state DB)
//!                       ─► auth_events (state DB) = audit/<source>/<run>.jsonl (lake)
//! ```
//!
//! Invariants:
//! - Audit events are written to the state database as they happen (before the grant is
//!   used); the lake copy `audit/<source>/<run_id>.jsonl` is written once at the end of
//!   the run, create-only, and holds every event recorded in the run.
//! - No record holds a token, assertion, secret, code or verifier.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fhirhose_ingest::auth::audit_time;
use fhirhose_ingest::state::{AuditFilter, AuditRecord, StateStore};
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::cli::UsageError;
use crate::export::Connection;
use crate::lake::Lake;
use crate::pipeline::{key_segment, RunLineage};

/// Output format of `fhirhose audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuditFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// A JSON array of records.
    Json,
}

/// `fhirhose audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Events of this export job (recorded in it, in its runs, or its kick-off grant).
    #[arg(long)]
    pub job: Option<String>,
    /// Events of this run.
    #[arg(long)]
    pub run: Option<String>,
    /// Events at or after this time: RFC 3339 (`2024-05-01T00:00:00Z`) or an age
    /// (`30m`, `12h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (the newest), 0 for all.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: AuditFormat,
    /// State database.
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
}

/// Parses `--since` into the stored time format.
pub fn parse_since(s: &str) -> Result<String, UsageError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(audit_time(t));
    }
    let bad = || {
        UsageError(format!(
            "--since takes an RFC 3339 time or an age like 30m, 12h, 7d; got `{s}`"
        ))
    };
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(audit_time(
        time::OffsetDateTime::now_utc() - time::Duration::seconds(secs),
    ))
}

/// Runs `fhirhose audit`.
pub fn run(a: AuditArgs) -> anyhow::Result<u8> {
    if !a.state.exists() {
        return Err(UsageError(format!("no state database at {}", a.state.display())).into());
    }
    let state = StateStore::open(&a.state)?;
    let filter = AuditFilter {
        run_id: a.run.clone(),
        job_id: a.job.clone(),
        since: a.since.as_deref().map(parse_since).transpose()?,
        limit: a.limit,
    };
    let events = state.auth_events(&filter)?;
    match a.format {
        AuditFormat::Json => println!("{}", serde_json::to_string_pretty(&events)?),
        AuditFormat::Table => print_table(&events),
    }
    Ok(0)
}

fn print_table(events: &[AuditRecord]) {
    println!(
        "{:<27} {:<36} {:<12} {:<8} {:<18} {:<16} {:<20} {:<24} {:<12} {:<27} SCOPES / ERROR",
        "TIME", "EVENT", "KIND", "OUTCOME", "GRANT", "CLIENT", "HOST", "RUN", "JOB", "EXPIRES"
    );
    let short = |s: &Option<String>, n: usize| {
        let s = s.as_deref().unwrap_or("-");
        if s.chars().count() > n {
            let cut: String = s.chars().take(n.saturating_sub(1)).collect();
            format!("{cut}…")
        } else {
            s.to_owned()
        }
    };
    for e in events {
        let tail = match (&e.error_class, e.granted_scopes.is_empty()) {
            (Some(err), _) => format!("error={err}"),
            (None, false) => e.granted_scopes.join(" "),
            (None, true) => e.detail.clone().unwrap_or_default(),
        };
        let missing = if e.missing_scopes.is_empty() {
            String::new()
        } else {
            format!(" (not granted: {})", e.missing_scopes.join(" "))
        };
        println!(
            "{:<27} {:<36} {:<12} {:<8} {:<18} {:<16} {:<20} {:<24} {:<12} {:<27} {tail}{missing}",
            e.time,
            e.event_id,
            e.kind,
            e.outcome,
            e.grant_type.as_deref().unwrap_or("-"),
            short(&Some(e.client_id.clone()), 16),
            short(&Some(e.endpoint_host.clone()), 20),
            short(&e.run_id, 24),
            short(&e.job_id, 12),
            e.expires_at.as_deref().unwrap_or("-"),
        );
    }
    if events.is_empty() {
        println!("(no authorization events)");
    }
}

/// The lake key of a run's audit log.
pub fn audit_key(source: &str, run_id: &str) -> String {
    format!(
        "audit/{}/{}.jsonl",
        key_segment(source),
        key_segment(run_id)
    )
}

/// The lineage of a run about to fetch: the grant in force now and the export job.
pub async fn lineage(
    conn: &Connection,
    source: &str,
    run_id: &str,
    job_id: Option<String>,
) -> RunLineage {
    let Some(auth) = &conn.auth else {
        return RunLineage {
            export_job_id: job_id,
            ..RunLineage::default()
        };
    };
    RunLineage {
        // A failure here surfaces (and is audited) when the run uses the token.
        auth_event_id: auth.token().await.ok().map(|t| t.event_id.to_string()),
        export_job_id: job_id,
        audit_log: conn.audit.as_ref().map(|_| audit_key(source, run_id)),
    }
}

/// After a run: records its lineage on the run row and writes the run's audit events to
/// the lake (create-only).
pub async fn finish_run(
    conn: &Connection,
    lake: &Lake,
    run_id: &str,
    lineage: &RunLineage,
) -> anyhow::Result<()> {
    let Some(audit) = &conn.audit else {
        return Ok(());
    };
    let state = audit.state();
    state.set_run_auth(
        run_id,
        lineage.auth_event_id.as_deref(),
        lineage.export_job_id.as_deref(),
    )?;
    let Some(key) = &lineage.audit_log else {
        return Ok(());
    };
    let events = state.auth_events(&AuditFilter {
        run_id: Some(run_id.to_owned()),
        ..AuditFilter::default()
    })?;
    let mut body = Vec::new();
    for e in &events {
        serde_json::to_writer(&mut body, e)?;
        body.push(b'\n');
    }
    lake.store
        .put_opts(
            &ObjectPath::from(key.as_str()),
            PutPayload::from(body),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot write the audit log {key} to the lake"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_ages() {
        assert_eq!(
            parse_since("2024-05-01T12:00:00Z").unwrap(),
            "2024-05-01T12:00:00.000000Z"
        );
        assert_eq!(
            parse_since("2024-05-01T14:00:00.5+02:00").unwrap(),
            "2024-05-01T12:00:00.500000Z"
        );
        let h = parse_since("2h").unwrap();
        let now = audit_time(time::OffsetDateTime::now_utc());
        assert!(h < now);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("5w").is_err());
        assert_eq!(
            audit_key("acme ehr", "20240101T000000Z-ab"),
            "audit/acme_ehr/20240101T000000Z-ab.jsonl"
        );
    }
}
