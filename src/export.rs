//! `fhirhose export`: a Bulk Data `$export` from a FHIR server into the lake (and Kafka).
//!
//! ```text
//! fhirhose export --fhir-url https://ehr.example/fhir --client-id fhirhose \
//!     --key-file keys/private_key.pem --group 42 --type Patient,Observation --since auto
//! fhirhose export --config fhirhose.toml --source acme --resume
//! ```
//!
//! Settings come from the command line, or from a TOML file naming several sources
//! (`--config FILE --source NAME`; see `fhirhose_ingest::bulk::config`); the command line
//! wins. Secrets are read from a file (`--key-file`, `--secret-file`) or an environment
//! variable named by `--secret-env`, never taken from the command line itself.
//!
//! Exit codes: 0 done; 2 usage, configuration, or a live job of the same request held by
//! another process; 3 authorization (the job is kept as `needs-reauthorization`: log in
//! again and `--resume`); 4 server failure or files that failed (the job is `partial`:
//! `--resume` fetches the rest); 5 dead letters with `--strict`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgGroup, Args};
use fhirhose_ingest::auth::{
    AuditScope, AuditSink, AuthConfig, AuthErrorKind, AuthFlow, Authorizer, ClientAuthConfig,
    SqliteAuditSink,
};
use fhirhose_ingest::bulk::config::SourceConfig;
use fhirhose_ingest::bulk::{
    BulkErrorKind, ExportLevel, ExportOptions, ExportRequest, Exporter, FileOutcome, JobReport,
    JobStore, Profile, Since, SqliteJobStore,
};
use fhirhose_ingest::http::{redact_url, HttpClient, HttpConfig, Secret};
use tracing::{info, warn};
use url::Url;

use crate::cli::{build_config, connect_kafka, finish, run_and_record, OutputArgs, UsageError};

/// How fhirhose authenticates to the FHIR server (shared by `export` and `fetch`).
#[derive(Debug, Args, Clone, Default)]
pub struct AuthArgs {
    /// FHIR base URL.
    #[arg(long, env = "FHIRHOSE_FHIR_URL")]
    pub fhir_url: Option<String>,
    /// The configuration file (the global `--config`); its `[sources]` tables name EHRs,
    /// `--source` picks one.
    #[arg(skip)]
    pub config: Option<PathBuf>,
    /// OAuth client id; without one, requests carry no token.
    #[arg(long, env = "FHIRHOSE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Private key (PEM, JWK or JWKS) for SMART Backend Services (`private_key_jwt`).
    #[arg(long, env = "FHIRHOSE_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// A file holding the client secret (`client_secret_basic`).
    #[arg(long, env = "FHIRHOSE_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the client secret.
    #[arg(long, env = "FHIRHOSE_SECRET_ENV")]
    pub secret_env: Option<String>,
    /// Scopes to request.
    #[arg(long, env = "FHIRHOSE_SCOPES")]
    pub scopes: Option<String>,
    /// Token endpoint (default: SMART discovery).
    #[arg(long, env = "FHIRHOSE_TOKEN_URL")]
    pub token_url: Option<String>,
    /// Vendor profile: a built-in name (generic, epic, oracle-cerner, athenahealth, hapi,
    /// smart-reference) or a TOML file; default: detected from the CapabilityStatement.
    #[arg(long, env = "FHIRHOSE_PROFILE")]
    pub profile: Option<String>,
    /// How to obtain tokens: `backend-services` (key or secret), `app-launch` (the
    /// refresh token of `fhirhose auth login`), or `auto` (app-launch when no key or
    /// secret is given and a stored login exists).
    #[arg(long = "auth", value_enum, env = "FHIRHOSE_AUTH", default_value_t)]
    pub auth_method: crate::auth_cmd::AuthMethod,
    /// App Launch: the login file (default `<state dir>/credentials/<client id>.json`).
    #[arg(long, env = "FHIRHOSE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// `fhirhose export`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("level").args(["group", "patient_level", "system"])))]
pub struct ExportArgs {
    /// Server and authorization.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Group-level export of this Group id.
    #[arg(long)]
    pub group: Option<String>,
    /// Patient-level export (`Patient/$export`).
    #[arg(long)]
    pub patient_level: bool,
    /// System-level export (`$export`, the default).
    #[arg(long)]
    pub system: bool,
    /// Resource types (`_type`); default: what the grant allows.
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// `_since`: an instant, or `auto` for the last successful export of the same request.
    #[arg(long, env = "FHIRHOSE_SINCE")]
    pub since: Option<String>,
    /// `_typeFilter` (repeatable), e.g. `Observation?category=laboratory`.
    #[arg(long)]
    pub type_filter: Vec<String>,
    /// `_elements`, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub elements: Vec<String>,
    /// `patient` reference (repeatable; needs a POST kick-off profile).
    #[arg(long)]
    pub patient: Vec<String>,
    /// `includeAssociatedData` (repeatable).
    #[arg(long)]
    pub include_associated_data: Vec<String>,
    /// `organizeOutputBy`.
    #[arg(long)]
    pub organize_output_by: Option<String>,
    /// `_outputFormat`.
    #[arg(long)]
    pub output_format: Option<String>,
    /// Any other kick-off parameter, `name=value` (repeatable).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Require an unfinished job of the same request and re-attach to it.
    #[arg(long)]
    pub resume: bool,
    /// Give up on a job after this many days (default: the profile's).
    #[arg(long, env = "FHIRHOSE_DEADLINE_DAYS")]
    pub deadline_days: Option<f64>,
    /// Write the job report as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// List export jobs from the state database (or show one job with `--job`) and exit.
    #[arg(long)]
    pub list_jobs: bool,
    /// With `--list-jobs`: the job to show.
    #[arg(long)]
    pub job: Option<String>,
    /// Output options. `--force` also kicks off a new job when one of the same request is
    /// unfinished; `--source` names the config file's source and the lake prefix.
    #[command(flatten)]
    pub out: OutputArgs,
}

/// A server connection resolved from arguments and the config file.
#[derive(Debug)]
pub struct Connection {
    /// FHIR base URL.
    pub base: Url,
    /// The transport with tokens and scope checks (plain when no client id is given).
    pub http: HttpClient,
    /// The authorizer, when authenticating.
    pub auth: Option<Authorizer>,
    /// The profile in use.
    pub profile: Profile,
    /// The config file's source settings.
    pub source: SourceConfig,
    /// The audit table the authorizer records into (when authenticating).
    pub audit: Option<Arc<SqliteAuditSink>>,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Usage or configuration.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Authorization failed; `reauth` when a person must log in again.
    #[error("authorization failed: {message}")]
    Auth {
        /// One line.
        message: String,
        /// The grant is gone.
        reauth: bool,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn usage(msg: impl Into<String>) -> ConnectError {
    ConnectError::Usage(UsageError(msg.into()))
}

/// Applies `--config`/`--source` to the output and auth arguments (the command line wins).
pub fn apply_config(
    auth: &mut AuthArgs,
    out: &mut OutputArgs,
) -> Result<SourceConfig, ConnectError> {
    let Some(path) = &auth.config else {
        return Ok(SourceConfig::default());
    };
    let file = crate::config::load_sources(path)?;
    if file.sources.is_empty() {
        // A configuration file without `[sources]`: its other keys already arrived as
        // FHIRHOSE_* variables.
        return Ok(SourceConfig::default());
    }
    let wanted =
        (out.source != "local" || file.sources.contains_key("local")).then(|| out.source.clone());
    let (name, s) = file
        .source(wanted.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base_dir.join(p)
        }
    };
    auth.fhir_url = auth.fhir_url.take().or_else(|| s.fhir_url.clone());
    auth.client_id = auth.client_id.take().or_else(|| s.client_id.clone());
    auth.key_file = auth
        .key_file
        .take()
        .or_else(|| s.key_file.as_ref().map(rel));
    auth.secret_file = auth
        .secret_file
        .take()
        .or_else(|| s.secret_file.as_ref().map(rel));
    auth.secret_env = auth.secret_env.take().or_else(|| s.secret_env.clone());
    auth.scopes = auth.scopes.take().or_else(|| s.scopes.clone());
    auth.token_url = auth.token_url.take().or_else(|| s.token_url.clone());
    auth.profile = auth.profile.take().or_else(|| s.profile.clone());
    out.source = s.lake_prefix.clone().unwrap_or(name);
    if let Some(lake) = &s.lake {
        out.lake = lake.clone();
    }
    Ok(s)
}

fn client_auth(a: &AuthArgs) -> Result<ClientAuthConfig, ConnectError> {
    let given = [
        a.key_file.is_some(),
        a.secret_file.is_some(),
        a.secret_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err(usage(
            "give one of --key-file, --secret-file and --secret-env",
        ));
    }
    if let Some(k) = &a.key_file {
        return Ok(ClientAuthConfig::PrivateKeyJwt {
            key_path: k.clone(),
            kid: None,
            jku: None,
        });
    }
    let secret = if let Some(f) = &a.secret_file {
        std::fs::read_to_string(f)
            .map_err(|e| usage(format!("cannot read the secret file {}: {e}", f.display())))?
            .trim()
            .to_owned()
    } else if let Some(var) = &a.secret_env {
        std::env::var(var).map_err(|_| {
            usage(format!(
                "the environment variable {var} (--secret-env) is not set"
            ))
        })?
    } else {
        return Err(usage(
            "a client id needs credentials: --key-file, --secret-file or --secret-env",
        ));
    };
    Ok(ClientAuthConfig::ClientSecretBasic {
        secret: Secret::new(secret),
    })
}

/// A stored App Launch login to continue, when `--auth` (or `auto`) asks for one.
fn stored_login(
    a: &AuthArgs,
    state_path: &Path,
) -> Result<Option<(PathBuf, crate::auth_cmd::StoredLogin)>, ConnectError> {
    use crate::auth_cmd::{credentials_path, AuthMethod, StoredLogin};
    let Some(client_id) = &a.client_id else {
        return match a.auth_method {
            AuthMethod::AppLaunch => Err(usage("--auth app-launch needs --client-id")),
            _ => Ok(None),
        };
    };
    let path = a
        .token_file
        .clone()
        .unwrap_or_else(|| credentials_path(state_path, client_id));
    let wanted = match a.auth_method {
        AuthMethod::BackendServices => false,
        AuthMethod::AppLaunch => true,
        AuthMethod::Auto => !has_client_credentials(a) && path.exists(),
    };
    if !wanted {
        return Ok(None);
    }
    if !path.exists() {
        return Err(ConnectError::Auth {
            message: format!(
                "no stored login at {}; run `fhirhose auth login` first",
                path.display()
            ),
            reauth: true,
        });
    }
    let stored = StoredLogin::read(&path).map_err(ConnectError::Other)?;
    if stored.client_id != *client_id {
        return Err(usage(format!(
            "{} holds a login of another client",
            path.display()
        )));
    }
    Ok(Some((path, stored)))
}

fn has_client_credentials(a: &AuthArgs) -> bool {
    a.key_file.is_some() || a.secret_file.is_some() || a.secret_env.is_some()
}

/// Resolves the profile, builds the transport and (with a client id) the authorizer,
/// whose audit events go to the state database tagged with `scope`.
pub async fn connect(
    a: &AuthArgs,
    state_path: &Path,
    default_scopes: &str,
    source: SourceConfig,
    scope: AuditScope,
) -> Result<Connection, ConnectError> {
    let login = stored_login(a, state_path)?;
    let url = match (&a.fhir_url, &login) {
        (Some(u), _) => u.clone(),
        (None, Some((_, l))) => l.fhir_base.to_string(),
        (None, None) => return Err(usage("--fhir-url (or a config file source) is required")),
    };
    // Kept as given: it is also the `aud` of App Launch requests.
    let base = Url::parse(&url).map_err(|e| usage(format!("--fhir-url is not a URL: {e}")))?;
    if let Some((path, l)) = &login {
        // A grant is bound to its server: never send its tokens anywhere else.
        if l.fhir_base.as_str().trim_end_matches('/') != base.as_str().trim_end_matches('/') {
            return Err(usage(format!(
                "the login in {} is for another FHIR server",
                path.display()
            )));
        }
    }
    let plain = HttpConfig::default()
        .build()
        .context("cannot build the HTTP client")?;
    let profile = match &a.profile {
        Some(p) => Profile::resolve(p).map_err(|e| usage(e.to_string()))?,
        None => detect_profile(&plain, &base).await,
    };
    let mut hc = HttpConfig::default();
    profile.apply_to(&mut hc);
    let http = hc.build().context("cannot build the HTTP client")?;
    let Some(client_id) = &a.client_id else {
        info!(profile = %profile.name, "no client id: requests carry no token");
        return Ok(Connection {
            base,
            http,
            auth: None,
            profile,
            source,
            audit: None,
        });
    };
    let mut cfg = match &login {
        Some((path, l)) => {
            let client = if has_client_credentials(a) {
                client_auth(a)?
            } else {
                ClientAuthConfig::Public
            };
            let mut cfg = AuthConfig::new(
                base.clone(),
                client_id.clone(),
                a.scopes.clone().unwrap_or_else(|| l.scopes.clone()),
                client,
            );
            cfg.flow = AuthFlow::AppLaunch;
            cfg.refresh_token_path = Some(path.clone());
            cfg.token_endpoint = Some(l.token_endpoint.clone());
            cfg
        }
        None => {
            let mut cfg = AuthConfig::new(
                base.clone(),
                client_id.clone(),
                a.scopes
                    .clone()
                    .unwrap_or_else(|| default_scopes.to_owned()),
                client_auth(a)?,
            );
            cfg.flow = AuthFlow::BackendServices;
            cfg
        }
    };
    if let Some(t) = &a.token_url {
        cfg.token_endpoint =
            Some(Url::parse(t).map_err(|e| usage(format!("--token-url is not a URL: {e}")))?);
    }
    let audit = crate::auth_cmd::open_audit(state_path, scope)?;
    let sink: Arc<dyn AuditSink> = audit.clone();
    let auth = Authorizer::build(&cfg, &http, sink)
        .await
        .map_err(|e| auth_error(&e))?;
    // Obtain the first token now: a bad key or client fails here, before any job exists.
    auth.token().await.map_err(|e| auth_error(&e))?;
    let missing = auth.missing_scopes();
    if !missing.is_empty() {
        warn!(missing = %missing.join(" "), "the server granted fewer scopes than requested");
    }
    Ok(Connection {
        base,
        http: auth.authorized_client(),
        auth: Some(auth),
        profile,
        source,
        audit: Some(audit),
    })
}

fn auth_error(e: &fhirhose_ingest::auth::AuthError) -> ConnectError {
    let mut message = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cur = c.source();
    }
    match e.kind() {
        AuthErrorKind::Config => usage(message),
        k => ConnectError::Auth {
            message,
            reauth: k == AuthErrorKind::NeedsReauthorization,
        },
    }
}

async fn detect_profile(http: &HttpClient, base: &Url) -> Profile {
    let mut url = base.clone();
    match url.path_segments_mut() {
        Ok(mut segs) => {
            segs.pop_if_empty().push("metadata");
        }
        Err(()) => return Profile::generic(),
    }
    let cs = match http.get(url.clone()).await {
        Ok(r) => r.json::<serde_json::Value>().await.ok(),
        Err(e) => {
            warn!(error = %e, url = %redact_url(&url), "cannot read the CapabilityStatement; using the generic profile");
            None
        }
    };
    let p = cs.as_ref().map_or_else(Profile::generic, Profile::detect);
    info!(profile = %p.name, "vendor profile detected");
    p
}

/// Maps a connection failure to an exit code (printing it), or passes it on.
pub fn connect_failure(e: ConnectError) -> anyhow::Result<u8> {
    match e {
        ConnectError::Usage(u) => Err(u.into()),
        ConnectError::Auth { message, reauth } => {
            crate::logging::eprint_redacted(&format!("error: {message}"));
            if reauth {
                eprintln!("the grant is gone: authorize again (`fhirhose auth login`), then run with --resume");
            }
            Ok(3)
        }
        ConnectError::Other(e) => Err(e),
    }
}

fn build_request(a: &ExportArgs, source: &SourceConfig) -> Result<ExportRequest, UsageError> {
    let mut r = ExportRequest::system();
    r.level = if let Some(g) = a.group.clone().or_else(|| {
        (!a.patient_level && !a.system)
            .then(|| source.group.clone())
            .flatten()
    }) {
        ExportLevel::Group(g)
    } else if a.patient_level {
        ExportLevel::Patient
    } else {
        ExportLevel::System
    };
    r.types = if a.types.is_empty() {
        source.types.clone()
    } else {
        a.types.clone()
    };
    r.types.retain(|t| !t.trim().is_empty());
    r.since = a
        .since
        .as_deref()
        .map(Since::parse)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    r.type_filters = a.type_filter.clone();
    r.elements = a.elements.clone();
    r.patients = a.patient.clone();
    r.include_associated_data = a.include_associated_data.clone();
    r.organize_output_by = a.organize_output_by.clone();
    r.output_format = a.output_format.clone();
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--param needs name=value, got `{p}`")))?;
        r.custom.push((k.to_owned(), v.to_owned()));
    }
    Ok(r)
}

/// Runs `fhirhose export`.
pub async fn run(mut a: ExportArgs) -> anyhow::Result<u8> {
    if a.list_jobs {
        return list_jobs(&a.out.state, a.job.as_deref());
    }
    let source = match apply_config(&mut a.auth, &mut a.out) {
        Ok(s) => s,
        Err(e) => return connect_failure(e),
    };
    let request = build_request(&a, &source)?;
    let _observe = crate::observe::Session::start(&a.out.source, &a.out.observe).await?;
    // Known before the first token request, so every audit event names its run.
    let run_id = crate::cli::new_run_id();
    let scope = AuditScope {
        source: Some(a.out.source.clone()),
        run_id: Some(run_id.clone()),
        job_id: None,
    };
    let conn = match connect(&a.auth, &a.out.state, "system/*.read", source, scope).await {
        Ok(c) => c,
        Err(e) => return connect_failure(e),
    };
    let store: Arc<dyn JobStore> =
        Arc::new(SqliteJobStore::open(&a.out.state).context("cannot open the export job store")?);
    let exporter = Exporter::new(conn.http.clone(), store, conn.auth.clone());
    let mut opts = ExportOptions::new(
        a.out.source.clone(),
        conn.base.clone(),
        request,
        conn.profile.clone(),
    )
    .force(a.out.force)
    .resume(a.resume);
    opts.on_progress = Some(crate::observe::progress::export_observer());
    if let Some(d) = a.deadline_days {
        if !(d.is_finite() && d > 0.0) {
            return Err(UsageError("--deadline-days must be positive".into()).into());
        }
        opts.poll.deadline = Duration::from_secs_f64(d * 86_400.0);
    }
    let ready = match exporter.prepare(&opts).await {
        Ok(r) => r,
        Err(e) => {
            return match e.kind() {
                BulkErrorKind::NeedsReauthorization => {
                    crate::logging::eprint_redacted(&format!("error: {}", chain(&e)));
                    eprintln!("the export job is kept as needs-reauthorization: authorize again, then run with --resume");
                    Ok(3)
                }
                BulkErrorKind::Config | BulkErrorKind::JobLive => Err(UsageError(chain(&e)).into()),
                _ => Err(anyhow::Error::new(e).context("the export failed")),
            }
        }
    };
    let _beat = ready.job.heartbeat();
    let job_id = ready.job.id();
    if let Some(audit) = &conn.audit {
        audit.set_job(job_id.clone());
    }
    let kafka = connect_kafka(&a.out).await?;
    let mut cfg = build_config(&a.out, kafka).await?;
    cfg.run_id = run_id.clone();
    cfg.lineage = crate::audit_cmd::lineage(&conn, &a.out.source, &run_id, Some(job_id)).await;
    let lineage = cfg.lineage.clone();
    let lake = cfg.lake.clone();
    // The profile bounds parallel downloads from the server.
    cfg.file_concurrency = conn.profile.download.concurrency.max(1) as usize;
    let started = Instant::now();
    let summary = run_and_record(cfg, ready.files.clone(), "export").await?;
    let download_s = started.elapsed().as_secs_f64();
    let outcomes: Vec<FileOutcome> = ready
        .files
        .iter()
        .enumerate()
        .map(|(i, _)| match summary.file_reports.get(i) {
            Some(r) if r.status == "done" => FileOutcome::durable(r.lines, false),
            Some(r) if r.status == "skipped" => FileOutcome::durable(r.lines, true),
            Some(r) => FileOutcome::failed(r.error.clone().unwrap_or_else(|| r.status.clone())),
            None => FileOutcome::failed("not run"),
        })
        .collect();
    let report = exporter
        .complete(&ready, &outcomes, &opts, download_s)
        .await
        .context("cannot record the export job")?;
    crate::audit_cmd::finish_run(&conn, &lake, &run_id, &lineage).await?;
    let code = finish(&summary, a.out.summary_json.as_deref(), a.out.strict)?;
    print_report(&report);
    if let Some(p) = &a.report_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write the job report to {}", p.display()))?;
    }
    Ok(match report.state.as_str() {
        "needs-reauthorization" => 3,
        "partial" => 4,
        _ => code,
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = c.source();
    }
    msg
}

/// The job report on stdout.
pub fn print_report(r: &JobReport) {
    println!(
        "export job {} ({}){}",
        r.job_id,
        r.state,
        if r.reattached { ", re-attached" } else { "" }
    );
    println!("  status url: {}", r.status_url);
    println!(
        "  since: {}  transactionTime: {}",
        r.since.as_deref().unwrap_or("-"),
        r.transaction_time
    );
    println!(
        "  files: {} landed, {} already landed, {} failed; {} deleted files, {} error files",
        r.files_landed, r.files_skipped, r.files_failed, r.deleted_files, r.error_files
    );
    println!(
        "  {:.1} MB downloaded; {} polls, {:.0} s waited ({}); manifest after {:.1} s, files in {:.1} s",
        r.bytes as f64 / 1e6,
        r.polls,
        r.waited_s,
        r.waits_by_reason
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.manifest_wait_s,
        r.download_s
    );
    if !r.output.is_empty() {
        println!(
            "  {:<28} {:>6} {:>10} {:>10}",
            "type", "files", "manifest", "lines"
        );
        for (t, c) in &r.output {
            println!(
                "  {t:<28} {:>6} {:>10} {:>10}",
                c.files, c.manifest_count, c.lines
            );
        }
    }
    if !r.retries_by_reason.is_empty() {
        println!(
            "  download retries: {}",
            r.retries_by_reason
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for m in &r.count_mismatches {
        println!("  COUNT MISMATCH {m}");
    }
    for f in &r.failures {
        println!("  FAILED {}", fhirhose_ingest::http::redact_text(f));
    }
    if !r.status_deleted && r.state == "done" {
        println!("  note: the status URL could not be deleted on the server");
    }
}

/// `--list-jobs`: export jobs, their state, progress and what each waits for.
pub fn list_jobs(state: &Path, job: Option<&str>) -> anyhow::Result<u8> {
    if !state.exists() {
        return Err(UsageError(format!("no state database at {}", state.display())).into());
    }
    let store = SqliteJobStore::open(state).context("cannot open the export job store")?;
    let jobs = match job {
        Some(id) => store
            .get(id)?
            .map(|j| vec![j])
            .ok_or_else(|| UsageError(format!("no export job {id}")))?,
        None => store.list(20)?,
    };
    for j in jobs {
        let status = Url::parse(&j.status_url)
            .map(|u| redact_url(&u))
            .unwrap_or_default();
        println!(
            "{}  {:<21} source={} created={} since={} transactionTime={}",
            j.job_id,
            j.state.as_str(),
            j.source,
            j.created_at,
            j.since.as_deref().unwrap_or("-"),
            j.transaction_time.as_deref().unwrap_or("-"),
        );
        println!("    status url: {status}");
        if let Some(p) = &j.progress {
            println!("    progress: {p}");
        }
        if let Some(w) = &j.waiting_for {
            println!("    waiting for: {w}");
        }
        if let Some(e) = &j.error {
            println!("    error: {}", fhirhose_ingest::http::redact_text(e));
        }
        if job.is_some() {
            if let Some(r) = &j.report {
                println!("    report: {r}");
            }
        }
    }
    Ok(0)
}
