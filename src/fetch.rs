//! `fhirhose fetch`: FHIR search paging into the lake, for real-time, patient-level reads.
//!
//! ```text
//! fhirhose fetch Observation --fhir-url https://ehr.example/fhir --client-id app \
//!     --key-file keys/private_key.pem --patient 123 --param category=laboratory
//! ```
//!
//! The search follows the Bundle's `next` links over the same transport as exports
//! (scope checks before sending, retries, Retry-After, rate limits) and its resources go
//! through the same pipeline (raw, Parquet, Kafka), one raw object per fetch under
//! `raw/<source>/fetch/<run>/`.

use clap::Args;
use fhirhose_ingest::search::{SearchOpener, SearchRequest};

use crate::cli::{build_config, connect_kafka, finish, run_and_record, OutputArgs, UsageError};
use crate::export::{apply_config, connect, connect_failure, AuthArgs};

/// `fhirhose fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The resource type to search.
    pub resource_type: String,
    /// Only this patient's resources (`patient=`; `_id=` for Patient).
    #[arg(long)]
    pub patient: Option<String>,
    /// A search parameter, `name=value` (repeatable).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Only resources updated at or after this instant (`_lastUpdated=ge…`).
    #[arg(long)]
    pub since: Option<String>,
    /// Server and authorization.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Output options.
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Runs `fhirhose fetch`.
pub async fn run(mut a: FetchArgs) -> anyhow::Result<u8> {
    let source = match apply_config(&mut a.auth, &mut a.out) {
        Ok(s) => s,
        Err(e) => return connect_failure(e),
    };
    let _observe = crate::observe::Session::start(&a.out.source, &a.out.observe).await?;
    let mut req = SearchRequest::new(a.resource_type.clone());
    req.patient = a.patient.clone();
    if let Some(s) = &a.since {
        if s == "auto" {
            return Err(UsageError(
                "fetch takes an instant for --since (auto is for exports)".into(),
            )
            .into());
        }
        req.since = Some(s.clone());
    }
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--param needs name=value, got `{p}`")))?;
        req.params.push((k.to_owned(), v.to_owned()));
    }
    let scopes = if a.patient.is_some() {
        format!("system/{}.read", a.resource_type)
    } else {
        "system/*.read".to_owned()
    };
    let run_id = crate::cli::new_run_id();
    let scope = fhirhose_ingest::auth::AuditScope {
        source: Some(a.out.source.clone()),
        run_id: Some(run_id.clone()),
        job_id: None,
    };
    let conn = match connect(&a.auth, &a.out.state, &scopes, source, scope).await {
        Ok(c) => c,
        Err(e) => return connect_failure(e),
    };
    let opener = SearchOpener::new(conn.http.clone(), &conn.base, &req)
        .map_err(|e| UsageError(e.to_string()))?;
    let kafka = connect_kafka(&a.out).await?;
    let mut cfg = build_config(&a.out, kafka).await?;
    cfg.run_id = run_id.clone();
    cfg.lineage = crate::audit_cmd::lineage(&conn, &a.out.source, &run_id, None).await;
    let lineage = cfg.lineage.clone();
    let lake = cfg.lake.clone();
    let file = opener.input_file(&cfg.run_id);
    let summary = run_and_record(cfg, vec![file], "fetch").await?;
    crate::audit_cmd::finish_run(&conn, &lake, &run_id, &lineage).await?;
    finish(&summary, a.out.summary_json.as_deref(), a.out.strict)
}
