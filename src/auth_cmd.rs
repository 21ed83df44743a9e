//! `fhirhose auth login | revoke | check`: SMART App Launch logins whose refresh token
//! `export` and `fetch` use later, their revocation, and a one-shot backend-services
//! token check.
//!
//! ```text
//! fhirhose auth login --fhir-url https://ehr.example/fhir --client-id my-app --redirect-port 8765
//! fhirhose fetch Observation --client-id my-app --auth app-launch --patient 123
//! fhirhose auth revoke --client-id my-app
//! fhirhose auth check --fhir-url https://ehr.example/fhir --client-id fhirhose --key-file k.pem
//! ```
//!
//! Invariants:
//! - The only credential written to disk is the refresh token, in the login file
//!   (default `<state dir>/credentials/<client id>.json`, folder 0700, file 0600,
//!   replaced atomically). Access tokens live in memory only.
//! - Nothing printed or logged contains a token, code, PKCE verifier, assertion or client
//!   secret. The authorize URL is printed: it carries `state` and the PKCE *challenge*,
//!   which are not secrets.
//! - Every grant, refresh, failure and revocation is an audit event in the state
//!   database (`fhirhose audit`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use fhirhose_ingest::auth::{
    begin_login, remaining, AuditScope, AuditSink, AuthConfig, AuthErrorKind, AuthFlow, Authorizer,
    ClientAuthConfig, SqliteAuditSink,
};
use fhirhose_ingest::http::{redact_url, HttpConfig, Secret};
use serde::Deserialize;
use url::Url;

use crate::cli::UsageError;
use crate::export::{apply_config, connect, connect_failure, AuthArgs};

/// How `export` and `fetch` obtain tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuthMethod {
    /// `app-launch` when no key or secret is given and a stored login exists, else
    /// `backend-services`.
    #[default]
    Auto,
    /// SMART Backend Services (`client_credentials` with `--key-file`, or a client secret).
    BackendServices,
    /// The refresh token stored by `fhirhose auth login`.
    AppLaunch,
}

/// Scopes `auth login` asks for by default: a standalone patient launch with a refresh
/// token and read access to the patient's compartment.
pub const DEFAULT_LOGIN_SCOPES: &str =
    "launch/patient openid fhirUser offline_access patient/*.read";

/// Default login file: `<folder of the state database>/credentials/<client id>.json`.
pub fn credentials_path(state: &Path, client_id: &str) -> PathBuf {
    let name: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    };
    state
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("credentials")
        .join(format!("{name}.json"))
}

/// The non-secret part of a login file (the refresh token is left unread here).
#[derive(Debug, Clone)]
pub struct StoredLogin {
    /// OAuth client id.
    pub client_id: String,
    /// FHIR base URL the grant is for.
    pub fhir_base: Url,
    /// Token endpoint.
    pub token_endpoint: Url,
    /// Granted scopes.
    pub scopes: String,
}

#[derive(Deserialize)]
struct StoredLoginFile {
    client_id: String,
    fhir_base: String,
    token_endpoint: String,
    scopes: String,
}

impl StoredLogin {
    /// Reads a login file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the login file {}", path.display()))?;
        let bad = |why: &str| {
            UsageError(format!(
                "{} is not a fhirhose login file ({why})",
                path.display()
            ))
        };
        let f: StoredLoginFile =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.classify_name()))?;
        Ok(Self {
            client_id: f.client_id,
            fhir_base: Url::parse(&f.fhir_base).map_err(|_| bad("bad fhir_base"))?,
            token_endpoint: Url::parse(&f.token_endpoint).map_err(|_| bad("bad token_endpoint"))?,
            scopes: f.scopes,
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    // The message of a serde error can quote file content; name only its class.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing or wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Creates the folder of a login file with mode 0700.
pub fn ensure_private_dir(file: &Path) -> anyhow::Result<()> {
    let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Opens the state database's audit table for this command.
pub fn open_audit(state: &Path, scope: AuditScope) -> anyhow::Result<Arc<SqliteAuditSink>> {
    Ok(Arc::new(SqliteAuditSink::open(state, scope).with_context(
        || format!("cannot open the audit table in {}", state.display()),
    )?))
}

/// Reads a client secret from a file or a named environment variable.
pub fn read_secret(file: Option<&Path>, env: Option<&str>) -> Result<Option<Secret>, UsageError> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .map_err(|e| UsageError(format!("cannot read the secret file {}: {e}", f.display())))?;
        return Ok(Some(Secret::new(s.trim().to_owned())));
    }
    if let Some(var) = env {
        let s = std::env::var(var).map_err(|_| {
            UsageError(format!(
                "the environment variable {var} (--secret-env) is not set"
            ))
        })?;
        return Ok(Some(Secret::new(s)));
    }
    Ok(None)
}

/// `fhirhose auth`.
#[derive(Debug, Args)]
pub struct AuthCmdArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuthCommand,
}

/// Subcommands of `auth`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// SMART App Launch with PKCE: print the authorize URL, wait for the redirect on the
    /// loopback listener, exchange the code and store the refresh token (mode 0600).
    Login(LoginArgs),
    /// Revoke a stored login at the server's revocation endpoint and delete it.
    Revoke(RevokeArgs),
    /// One token request for the configured client: prints granted scopes and expiry
    /// (never the token).
    Check(Box<CheckArgs>),
}

/// `fhirhose auth login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// FHIR base URL (also the `aud` of the authorize request).
    #[arg(long, env = "FHIRHOSE_FHIR_URL")]
    pub fhir_url: String,
    /// OAuth client id (a public client registered with the loopback redirect URI).
    #[arg(long, env = "FHIRHOSE_CLIENT_ID")]
    pub client_id: String,
    /// Scopes to request (repeatable, or space separated).
    #[arg(long = "scope", alias = "scopes")]
    pub scope: Vec<String>,
    /// Loopback port of `http://127.0.0.1:PORT/callback` (must match the registered
    /// redirect URI; 0 picks a free port).
    #[arg(long, default_value_t = 0)]
    pub redirect_port: u16,
    /// Only print the authorize URL; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// EHR launch: the `launch` value the EHR passed (omit for a standalone launch).
    #[arg(long)]
    pub launch: Option<String>,
    /// Where to store the refresh token (default `<state dir>/credentials/<client>.json`).
    #[arg(long, env = "FHIRHOSE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The client secret, for a confidential App Launch client.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Token endpoint (default: SMART discovery).
    #[arg(long)]
    pub token_url: Option<String>,
    /// Seconds to wait for the browser redirect.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Where the audit events go.
    #[command(flatten)]
    pub audit: AuditDbArgs,
}

/// A client secret, read from a file or an environment variable (never a flag value).
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// A file holding the client secret, for a confidential client.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the client secret.
    #[arg(long)]
    pub secret_env: Option<String>,
}

/// The state database that holds the audit trail, and the source recorded with events.
#[derive(Debug, Args)]
pub struct AuditDbArgs {
    /// State database (the audit trail).
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
    /// Source name recorded with the audit events.
    #[arg(long, env = "FHIRHOSE_SOURCE", default_value = "local")]
    pub source: Option<String>,
}

impl SecretArgs {
    /// `client_secret_basic` when a secret was given, else a public client.
    fn client_auth(&self) -> anyhow::Result<ClientAuthConfig> {
        Ok(
            match read_secret(self.secret_file.as_deref(), self.secret_env.as_deref())? {
                Some(secret) => ClientAuthConfig::ClientSecretBasic { secret },
                None => ClientAuthConfig::Public,
            },
        )
    }
}

impl AuditDbArgs {
    /// The audit sink in the state database, scoped to the source.
    fn open(&self) -> anyhow::Result<Arc<SqliteAuditSink>> {
        open_audit(
            &self.state,
            AuditScope {
                source: self.source.clone(),
                ..AuditScope::default()
            },
        )
    }
}

/// `fhirhose auth revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The login file (default `<state dir>/credentials/<client>.json`).
    #[arg(long, env = "FHIRHOSE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// OAuth client id (picks the default login file).
    #[arg(long, env = "FHIRHOSE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The client secret, for a confidential client.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Where the audit events go.
    #[command(flatten)]
    pub audit: AuditDbArgs,
}

/// `fhirhose auth check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Server and authorization.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// State database (the audit trail).
    #[arg(long, env = "FHIRHOSE_STATE", default_value = ".fhirhose/state.db")]
    pub state: PathBuf,
    /// Source name (and the config file's source to use).
    #[arg(long, env = "FHIRHOSE_SOURCE", default_value = "local")]
    pub source: String,
}

/// Runs `fhirhose auth`.
pub async fn run(a: AuthCmdArgs) -> anyhow::Result<u8> {
    match a.command {
        AuthCommand::Login(l) => login(l).await,
        AuthCommand::Revoke(r) => revoke(r).await,
        AuthCommand::Check(c) => check(*c).await,
    }
}

fn auth_failure(e: &fhirhose_ingest::auth::AuthError) -> anyhow::Result<u8> {
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    if e.kind() == AuthErrorKind::Config {
        return Err(UsageError(msg).into());
    }
    eprintln!("error: {msg}");
    Ok(3)
}

fn open_browser(url: &Url) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(could not start a browser; open the URL yourself)");
    }
}

fn parse_url(flag: &str, v: &str) -> Result<Url, UsageError> {
    Url::parse(v).map_err(|e| UsageError(format!("{flag} is not a URL: {e}")))
}

async fn login(a: LoginArgs) -> anyhow::Result<u8> {
    let base = parse_url("--fhir-url", &a.fhir_url)?;
    let scopes = if a.scope.is_empty() {
        DEFAULT_LOGIN_SCOPES.to_owned()
    } else {
        a.scope.join(" ")
    };
    let client_auth = a.secret.client_auth()?;
    let token_file = a
        .token_file
        .clone()
        .unwrap_or_else(|| credentials_path(&a.audit.state, &a.client_id));
    ensure_private_dir(&token_file)?;
    let mut cfg = AuthConfig::new(base, a.client_id.clone(), scopes, client_auth);
    cfg.flow = AuthFlow::AppLaunch;
    cfg.redirect_port = a.redirect_port;
    cfg.launch = a.launch.clone();
    cfg.login_timeout = Duration::from_secs(a.timeout_secs.max(1));
    cfg.refresh_token_path = Some(token_file.clone());
    if let Some(t) = &a.token_url {
        cfg.token_endpoint = Some(parse_url("--token-url", t)?);
    }
    let audit = a.audit.open()?;
    let http = HttpConfig::default()
        .build()
        .context("cannot build the HTTP client")?;
    let pending = match begin_login(&http, &cfg).await {
        Ok(p) => p,
        Err(e) => return auth_failure(&e),
    };
    eprintln!(
        "Open this URL in a browser to authorize fhirhose:\n\n{}\n\nWaiting for the redirect to {} ...",
        pending.authorize_url(),
        pending.redirect_uri()
    );
    if !a.no_browser {
        open_browser(pending.authorize_url());
    }
    let sink: Arc<dyn AuditSink> = audit;
    let grant = match pending.finish(sink).await {
        Ok(g) => g,
        Err(e) => return auth_failure(&e),
    };
    let t = &grant.token;
    println!(
        "logged in: client {} at {}",
        a.client_id,
        redact_url(&cfg.fhir_base)
    );
    println!("  granted scopes: {}", t.granted);
    if !grant.missing_scopes.is_empty() {
        println!(
            "  NOT granted (requested): {}",
            grant.missing_scopes.join(" ")
        );
    }
    let ctx: Vec<&str> = [
        ("patient", t.context.patient.is_some()),
        ("encounter", t.context.encounter.is_some()),
        ("fhirUser", t.context.fhir_user.is_some()),
    ]
    .iter()
    .filter(|(_, present)| *present)
    .map(|(k, _)| *k)
    .collect();
    println!(
        "  launch context: {}",
        if ctx.is_empty() {
            "none".to_owned()
        } else {
            ctx.join(", ")
        }
    );
    if let Some(left) = remaining(t, time::OffsetDateTime::now_utc()) {
        println!("  access token expires in {} s", left.as_secs());
    }
    println!("  audit event: {}", t.event_id);
    if t.refresh.is_none() {
        // A file from an earlier login belongs to an older grant.
        let _ = std::fs::remove_file(&token_file);
        eprintln!(
            "error: the server issued no refresh token (ask for offline_access); nothing was stored"
        );
        return Ok(3);
    }
    println!(
        "  refresh token stored in {} (mode 0600); use it with `--auth app-launch --client-id {}`",
        token_file.display(),
        a.client_id
    );
    Ok(0)
}

async fn revoke(a: RevokeArgs) -> anyhow::Result<u8> {
    let token_file = match (&a.token_file, &a.client_id) {
        (Some(f), _) => f.clone(),
        (None, Some(c)) => credentials_path(&a.audit.state, c),
        (None, None) => {
            return Err(UsageError("give --token-file or --client-id".into()).into());
        }
    };
    if !token_file.exists() {
        return Err(UsageError(format!("no stored login at {}", token_file.display())).into());
    }
    let stored = StoredLogin::read(&token_file)?;
    if let Some(c) = &a.client_id {
        if *c != stored.client_id {
            return Err(UsageError(format!(
                "{} holds a login of another client",
                token_file.display()
            ))
            .into());
        }
    }
    let client_auth = a.secret.client_auth()?;
    let mut cfg = AuthConfig::new(
        stored.fhir_base.clone(),
        stored.client_id.clone(),
        stored.scopes.clone(),
        client_auth,
    );
    cfg.flow = AuthFlow::AppLaunch;
    cfg.token_endpoint = Some(stored.token_endpoint.clone());
    cfg.refresh_token_path = Some(token_file.clone());
    let audit = a.audit.open()?;
    let http = HttpConfig::default()
        .build()
        .context("cannot build the HTTP client")?;
    let auth = match Authorizer::build(&cfg, &http, audit).await {
        Ok(a) => a,
        Err(e) => return auth_failure(&e),
    };
    let endpoint = auth.endpoints().revocation_endpoint.clone();
    if let Err(e) = auth.revoke().await {
        return auth_failure(&e);
    }
    match endpoint {
        Some(ep) => println!(
            "revoked the login of client {} at {}; deleted {}",
            stored.client_id,
            redact_url(&ep),
            token_file.display()
        ),
        None => println!(
            "the server advertises no revocation endpoint; deleted {} (the grant may stay valid at the server until it expires)",
            token_file.display()
        ),
    }
    Ok(0)
}

async fn check(mut a: CheckArgs) -> anyhow::Result<u8> {
    // Only `--source` and `--state` matter here; the rest keeps its defaults.
    #[derive(clap::Parser)]
    struct OutArgv {
        #[command(flatten)]
        out: crate::cli::OutputArgs,
    }
    let state = a.state.to_string_lossy().into_owned();
    let mut out = <OutArgv as clap::Parser>::try_parse_from([
        "fhirhose",
        "--source",
        a.source.as_str(),
        "--state",
        state.as_str(),
    ])
    .context("auth check arguments")?
    .out;
    let source = match apply_config(&mut a.auth, &mut out) {
        Ok(s) => s,
        Err(e) => return connect_failure(e),
    };
    if a.auth.client_id.is_none() {
        return Err(UsageError("--client-id is required".into()).into());
    }
    let scope = AuditScope {
        source: Some(out.source.clone()),
        ..AuditScope::default()
    };
    let conn = match connect(&a.auth, &out.state, "system/*.read", source, scope).await {
        Ok(c) => c,
        Err(e) => return connect_failure(e),
    };
    let Some(auth) = conn.auth else {
        return Err(UsageError("--client-id is required".into()).into());
    };
    let token = match auth.token().await {
        Ok(t) => t,
        Err(e) => return auth_failure(&e),
    };
    println!(
        "token granted to client {} by {}",
        a.auth.client_id.as_deref().unwrap_or_default(),
        redact_url(auth.token_endpoint())
    );
    println!("  requested scopes: {}", auth.requested_scopes());
    println!("  granted scopes:   {}", token.granted);
    let missing = auth.missing_scopes();
    if !missing.is_empty() {
        println!("  NOT granted:      {}", missing.join(" "));
    }
    match (
        token.expires_at,
        remaining(&token, time::OffsetDateTime::now_utc()),
    ) {
        (Some(at), Some(left)) => println!(
            "  expires at {} (in {} s)",
            fhirhose_ingest::auth::audit_time(at),
            left.as_secs()
        ),
        _ => println!("  expiry: not stated by the server"),
    }
    println!("  audit event: {}", token.event_id);
    Ok(0)
}
