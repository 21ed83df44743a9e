//! The configuration file: one TOML file (`--config FILE` or `FHIRHOSE_CONFIG`), every key
//! of which is also a `FHIRHOSE_*` environment variable and a flag.
//!
//! ```toml
//! [log]
//! level = "info"
//! [lake]
//! url = "s3://lake/fhir"
//! [kafka]
//! brokers = "kafka-1:9092,kafka-2:9092"
//! [auth]
//! fhir_url = "https://ehr.example/fhir"
//! client_id = "fhirhose"
//! key_file = "keys/private_key.pem"
//! [sources.acme]              # several EHRs/tenants, picked with --source (see export)
//! fhir_url = "https://acme.example/fhir"
//! ```
//!
//! Invariants:
//! * **One schema.** [`KEYS`] lists every key with its environment variable, flag, type,
//!   default and meaning; validation, the env mapping, `config check`, `config example`
//!   and the README table all come from it, and a test checks it against the clap
//!   definitions (env names, flag names, defaults).
//! * **Precedence: flag > environment > file > default.** [`preload`] runs before clap
//!   parses: it validates the file and sets the `FHIRHOSE_*` variable of each key that the
//!   environment does not already set, so clap sees file values as environment values and
//!   flags still win. `[sources.NAME]` tables (per-EHR settings, `fhirhose_ingest::bulk::config`)
//!   come last: they fill only what flags, environment and `[auth]` left unset.
//! * **Secrets never live in the file.** A key that would hold a client secret, private key,
//!   token, assertion or password inline is an error naming the key and the `*_file` key or
//!   variable to use instead. Paths in the file are relative to the file's folder.
//! * **Errors name their key path** (`kafka.compression: ...`), never echo a value that may
//!   be secret, and TOML syntax errors give a line and column without quoting the line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use fhirhose_ingest::bulk::config::ExportConfigFile;
use fhirhose_ingest::bulk::profile::BUILTIN_PROFILES;
use fhirhose_ingest::bulk::Since;
use fhirhose_ingest::http::{redact_text, redact_url};
use toml::{Table, Value};

use crate::cli::UsageError;

/// The variable naming the configuration file.
pub const CONFIG_ENV: &str = "FHIRHOSE_CONFIG";

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Str,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A log level or an `EnvFilter` directive.
    Level,
    /// An `http(s)://` URL.
    Url,
    /// A folder, `file://` or `s3://` URL (relative folders: from the file's folder).
    Lake,
    /// A path (relative: from the file's folder); need not exist.
    Path,
    /// A file that must exist (relative: from the file's folder).
    File,
    /// A folder that must exist (relative: from the file's folder).
    Dir,
    /// The name of an environment variable.
    EnvName,
    /// An integer of at least 1.
    Count,
    /// A positive number.
    Positive,
    /// `true` or `false`.
    Bool,
    /// `true` or `false`, set as the opposite on a `--no-...` flag.
    NegatedBool,
    /// `auto` or an instant.
    Since,
    /// A built-in vendor profile name or a profile TOML file.
    Profile,
    /// A list of strings (set as a comma-separated value).
    List,
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Self::Str => "a string".into(),
            Self::Enum(v) => format!("one of {}", v.join(", ")),
            Self::Level => "a level (error, warn, info, debug, trace) or a filter directive".into(),
            Self::Url => "an http(s) URL".into(),
            Self::Lake => "a folder, file:// or s3:// URL".into(),
            Self::Path => "a path".into(),
            Self::File => "the path of an existing file".into(),
            Self::Dir => "the path of an existing folder".into(),
            Self::EnvName => "an environment variable name".into(),
            Self::Count => "an integer of at least 1".into(),
            Self::Positive => "a positive number".into(),
            Self::Bool | Self::NegatedBool => "true or false".into(),
            Self::Since => "`auto` or an instant (2024-01-01T00:00:00Z)".into(),
            Self::Profile => format!(
                "a profile name ({}) or a profile .toml file",
                BUILTIN_PROFILES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::List => "a list of strings".into(),
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `section.name`.
    pub path: &'static str,
    /// The environment variable (also read by clap).
    pub env: &'static str,
    /// The flag.
    pub flag: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// The default, as clap shows it (`None`: unset).
    pub default: Option<&'static str>,
    /// What it means.
    pub doc: &'static str,
}

const fn key(
    path: &'static str,
    env: &'static str,
    flag: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    doc: &'static str,
) -> Key {
    Key {
        path,
        env,
        flag,
        kind,
        default,
        doc,
    }
}

/// Kafka codecs librdkafka accepts.
const COMPRESSION: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

/// Every key of the file, by section. The source of truth for the env mapping.
pub const KEYS: &[Key] = &[
    key(
        "log.level",
        "FHIRHOSE_LOG_LEVEL",
        "--log-level",
        Kind::Level,
        Some("info"),
        "log level or EnvFilter directive (RUST_LOG wins when set)",
    ),
    key(
        "log.format",
        "FHIRHOSE_LOG_FORMAT",
        "--log-format",
        Kind::Enum(&["human", "json"]),
        Some("human"),
        "log format on stderr: human lines or one JSON object per line",
    ),
    key(
        "observe.metrics_addr",
        "FHIRHOSE_METRICS_ADDR",
        "--metrics-addr",
        Kind::Str,
        None,
        "serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while a command runs",
    ),
    key(
        "observe.progress",
        "FHIRHOSE_PROGRESS",
        "--progress",
        Kind::Enum(&["auto", "bar", "plain", "off"]),
        Some("auto"),
        "progress: a bar on a terminal, periodic log lines otherwise (auto), or forced",
    ),
    key(
        "observe.progress_interval",
        "FHIRHOSE_PROGRESS_INTERVAL",
        "--progress-interval",
        Kind::Positive,
        Some("10"),
        "seconds between plain progress lines",
    ),
    key(
        "lake.url",
        "FHIRHOSE_LAKE",
        "--lake",
        Kind::Lake,
        Some("./fhirhose-lake"),
        "the lake: a folder, file:// or s3://bucket/prefix (S3 settings from AWS_* variables)",
    ),
    key(
        "lake.state",
        "FHIRHOSE_STATE",
        "--state",
        Kind::Path,
        Some(".fhirhose/state.db"),
        "state database (SQLite): runs, files, export jobs",
    ),
    key(
        "lake.source",
        "FHIRHOSE_SOURCE",
        "--source",
        Kind::Str,
        Some("local"),
        "source name (tenant or EHR): part of raw keys and ce_source; picks [sources.NAME]",
    ),
    key(
        "kafka.brokers",
        "FHIRHOSE_KAFKA_BROKERS",
        "--kafka-brokers",
        Kind::Str,
        None,
        "bootstrap servers; without them no events are published",
    ),
    key(
        "kafka.topic_prefix",
        "FHIRHOSE_TOPIC_PREFIX",
        "--topic-prefix",
        Kind::Str,
        Some("fhir"),
        "events go to <prefix>.<ResourceType>",
    ),
    key(
        "kafka.compression",
        "FHIRHOSE_KAFKA_COMPRESSION",
        "--kafka-compression",
        Kind::Enum(COMPRESSION),
        Some("zstd"),
        "Kafka compression codec",
    ),
    key(
        "kafka.create_topics",
        "FHIRHOSE_NO_CREATE_TOPICS",
        "--no-create-topics",
        Kind::NegatedBool,
        Some("true"),
        "create missing topics (false for clusters that auto-create them)",
    ),
    key(
        "ingest.max_line_bytes",
        "FHIRHOSE_MAX_LINE_BYTES",
        "--max-line-bytes",
        Kind::Count,
        Some("67108864"),
        "longest accepted NDJSON line; longer lines are dead-lettered",
    ),
    key(
        "ingest.file_concurrency",
        "FHIRHOSE_FILE_CONCURRENCY",
        "--file-concurrency",
        Kind::Count,
        Some("2"),
        "files processed at once",
    ),
    key(
        "ingest.workers",
        "FHIRHOSE_WORKERS",
        "--workers",
        Kind::Count,
        None,
        "parsing workers per file (default: the number of cores)",
    ),
    key(
        "ingest.strict",
        "FHIRHOSE_STRICT",
        "--strict",
        Kind::Bool,
        Some("false"),
        "exit with code 5 when any line was dead-lettered",
    ),
    key(
        "views.dir",
        "FHIRHOSE_VIEWS",
        "--views",
        Kind::Dir,
        None,
        "a folder of ViewDefinitions (*.json) run besides the canonical ones",
    ),
    key(
        "views.canonical",
        "FHIRHOSE_NO_CANONICAL_VIEWS",
        "--no-canonical-views",
        Kind::NegatedBool,
        Some("true"),
        "run the canonical views",
    ),
    key(
        "auth.fhir_url",
        "FHIRHOSE_FHIR_URL",
        "--fhir-url",
        Kind::Url,
        None,
        "FHIR base URL of the EHR",
    ),
    key(
        "auth.client_id",
        "FHIRHOSE_CLIENT_ID",
        "--client-id",
        Kind::Str,
        None,
        "OAuth client id; without one, requests carry no token",
    ),
    key(
        "auth.key_file",
        "FHIRHOSE_KEY_FILE",
        "--key-file",
        Kind::File,
        None,
        "private key (PEM, JWK or JWKS) for SMART Backend Services (private_key_jwt)",
    ),
    key(
        "auth.secret_file",
        "FHIRHOSE_SECRET_FILE",
        "--secret-file",
        Kind::File,
        None,
        "a file holding the client secret (client_secret_basic)",
    ),
    key(
        "auth.secret_env",
        "FHIRHOSE_SECRET_ENV",
        "--secret-env",
        Kind::EnvName,
        None,
        "the name of an environment variable holding the client secret",
    ),
    key(
        "auth.scopes",
        "FHIRHOSE_SCOPES",
        "--scopes",
        Kind::Str,
        None,
        "scopes to request (default: system/*.read)",
    ),
    key(
        "auth.token_url",
        "FHIRHOSE_TOKEN_URL",
        "--token-url",
        Kind::Url,
        None,
        "token endpoint (default: SMART discovery)",
    ),
    key(
        "auth.profile",
        "FHIRHOSE_PROFILE",
        "--profile",
        Kind::Profile,
        None,
        "vendor profile (default: detected from the CapabilityStatement)",
    ),
    key(
        "export.since",
        "FHIRHOSE_SINCE",
        "--since",
        Kind::Since,
        None,
        "_since of exports: an instant, or auto for the last successful export",
    ),
    key(
        "export.deadline_days",
        "FHIRHOSE_DEADLINE_DAYS",
        "--deadline-days",
        Kind::Positive,
        None,
        "give up on an export job after this many days (default: the profile's)",
    ),
];

/// Keys of a `[sources.NAME]` table (`fhirhose_ingest::bulk::config::SourceConfig`).
pub const SOURCE_KEYS: &[(&str, Kind, &str)] = &[
    ("fhir_url", Kind::Url, "FHIR base URL"),
    ("profile", Kind::Profile, "vendor profile name or file"),
    ("client_id", Kind::Str, "OAuth client id"),
    ("key_file", Kind::File, "private key file (private_key_jwt)"),
    (
        "secret_file",
        Kind::File,
        "client secret file (client_secret_basic)",
    ),
    (
        "secret_env",
        Kind::EnvName,
        "environment variable holding the client secret",
    ),
    ("scopes", Kind::Str, "scopes to request"),
    ("token_url", Kind::Url, "token endpoint"),
    ("lake", Kind::Lake, "lake of this source"),
    (
        "lake_prefix",
        Kind::Str,
        "source name in lake keys and events (default: the table's name)",
    ),
    (
        "group",
        Kind::Str,
        "default Group id for group-level exports",
    ),
    ("types", Kind::List, "default _type list"),
];

/// Keys that would hold a secret inline, and what to use instead.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("client_secret", "secret_file (or secret_env)"),
    ("secret", "secret_file (or secret_env)"),
    ("password", "secret_file (or secret_env)"),
    ("private_key", "key_file"),
    ("key", "key_file"),
    ("jwk", "key_file"),
    (
        "token",
        "key_file or secret_file: fhirhose obtains tokens itself",
    ),
    (
        "access_token",
        "key_file or secret_file: fhirhose obtains tokens itself",
    ),
    (
        "refresh_token",
        "key_file or secret_file: fhirhose obtains tokens itself",
    ),
    (
        "id_token",
        "key_file or secret_file: fhirhose obtains tokens itself",
    ),
    ("assertion", "key_file: fhirhose signs its own assertions"),
    (
        "client_assertion",
        "key_file: fhirhose signs its own assertions",
    ),
];

/// One problem with a configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `section.key` (or the section, or `(file)`).
    pub path: String,
    /// What is wrong and what to do, one sentence; never the value of a secret.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn issue(path: impl Into<String>, message: impl Into<String>) -> Issue {
    Issue {
        path: path.into(),
        message: message.into(),
    }
}

/// A configuration file that failed validation (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {}", path.display(), issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Every problem found.
    pub issues: Vec<Issue>,
}

/// A parsed configuration file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its folder: relative paths start here.
    pub dir: PathBuf,
    /// The TOML.
    pub table: Table,
}

impl ConfigFile {
    /// Reads and parses a file (syntax only; see [`ConfigFile::validate`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |m: String| ConfigError {
            path: path.to_owned(),
            issues: vec![issue("(file)", m)],
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        Self::parse(path, &text).map_err(|i| ConfigError {
            path: path.to_owned(),
            issues: vec![i],
        })
    }

    /// Parses TOML text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Issue> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            // The line and column, never the line itself: it may hold a secret.
            let at = e.span().map_or_else(String::new, |s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {col}")
            });
            issue("(file)", format!("invalid TOML{at}: {}", e.message()))
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Ok(Self {
            path: path.to_owned(),
            dir,
            table,
        })
    }

    /// Every problem with the file, checked against [`KEYS`], [`SOURCE_KEYS`] and the
    /// environment (for conflicts between the two).
    pub fn validate(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        for (section, v) in &self.table {
            if section == "sources" {
                let Some(t) = v.as_table() else {
                    out.push(issue(
                        "sources",
                        format!("expected tables [sources.NAME], found {}", v.type_str()),
                    ));
                    continue;
                };
                for (name, s) in t {
                    let p = format!("sources.{name}");
                    match s.as_table() {
                        Some(s) => self.validate_source(&p, s, &mut out),
                        None => out.push(issue(
                            p,
                            format!("expected a table, found {}", s.type_str()),
                        )),
                    }
                }
                continue;
            }
            if !sections().contains(&section.as_str()) {
                if v.is_table() {
                    out.push(issue(
                        section.clone(),
                        format!(
                            "unknown section{}",
                            suggest(section, &sections_and_sources())
                        ),
                    ));
                } else {
                    out.push(issue(section.clone(), unknown_top_key(section)));
                }
                continue;
            }
            let Some(t) = v.as_table() else {
                out.push(issue(
                    section.clone(),
                    format!("expected a table [{section}], found {}", v.type_str()),
                ));
                continue;
            };
            for (k, val) in t {
                let path = format!("{section}.{k}");
                if let Some(msg) = inline_secret(k) {
                    out.push(issue(path, msg));
                    continue;
                }
                match KEYS.iter().find(|key| key.path == path) {
                    Some(key) => {
                        if let Err(m) = self.check_value(key.kind, val) {
                            out.push(issue(path, m));
                        }
                    }
                    None => out.push(issue(
                        path.clone(),
                        format!("unknown key{}", suggest_key(section, k)),
                    )),
                }
            }
        }
        self.conflicts(&mut out);
        out
    }

    fn validate_source(&self, p: &str, s: &Table, out: &mut Vec<Issue>) {
        for (k, val) in s {
            let path = format!("{p}.{k}");
            if let Some(msg) = inline_secret(k) {
                out.push(issue(path, msg));
                continue;
            }
            match SOURCE_KEYS.iter().find(|(n, _, _)| *n == k.as_str()) {
                Some((_, kind, _)) => {
                    if let Err(m) = self.check_value(*kind, val) {
                        out.push(issue(path, m));
                    }
                }
                None => {
                    let names: Vec<&str> = SOURCE_KEYS.iter().map(|(n, _, _)| *n).collect();
                    out.push(issue(path, format!("unknown key{}", suggest(k, &names))));
                }
            }
        }
        let creds: Vec<&str> = ["key_file", "secret_file", "secret_env"]
            .into_iter()
            .filter(|k| s.contains_key(*k))
            .collect();
        if creds.len() > 1 {
            out.push(issue(
                p,
                format!("conflicting credentials: give one of {}", creds.join(", ")),
            ));
        }
    }

    /// Conflicts between keys of the file, and between the file and the environment.
    fn conflicts(&self, out: &mut Vec<Issue>) {
        let creds = ["auth.key_file", "auth.secret_file", "auth.secret_env"];
        let in_file: Vec<&str> = creds
            .iter()
            .copied()
            .filter(|p| self.get(p).is_some())
            .collect();
        if in_file.len() > 1 {
            out.push(issue(
                "auth",
                format!(
                    "conflicting credentials: give one of {}",
                    in_file.join(", ")
                ),
            ));
        }
        // The environment wins key by key, so a credential kind set there and another one in
        // the file would both reach the command.
        let env_set: Vec<&Key> = creds
            .iter()
            .filter_map(|p| KEYS.iter().find(|k| k.path == *p))
            .filter(|k| std::env::var_os(k.env).is_some())
            .collect();
        for f in &in_file {
            for k in &env_set {
                if k.path != *f {
                    out.push(issue(*f, format!("conflicts with {} set in the environment (a {} credential); give only one", k.env, k.path)));
                }
            }
        }
        let has_client = self.get("auth.client_id").is_some();
        let has_cred = !in_file.is_empty() || !env_set.is_empty();
        let has_sources = self
            .table
            .get("sources")
            .and_then(Value::as_table)
            .is_some_and(|t| !t.is_empty());
        if has_client && !has_cred && !has_sources {
            out.push(issue("auth.client_id", "a client id needs credentials: set auth.key_file, auth.secret_file or auth.secret_env"));
        }
    }

    /// The value at `section.key`.
    pub fn get(&self, path: &str) -> Option<&Value> {
        let (s, k) = path.split_once('.')?;
        self.table.get(s)?.as_table()?.get(k)
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    fn check_value(&self, kind: Kind, v: &Value) -> Result<(), String> {
        let wrong = |want: &str| format!("expected {want}, found {}", article(v.type_str()));
        match kind {
            Kind::Count => match v.as_integer() {
                Some(n) if n >= 1 => Ok(()),
                Some(n) => Err(format!("must be at least 1, found {n}")),
                None => Err(wrong("an integer")),
            },
            Kind::Positive => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                Some(x) if x.is_finite() && x > 0.0 => Ok(()),
                Some(x) => Err(format!("must be positive, found {x}")),
                None => Err(wrong("a number")),
            },
            Kind::Bool | Kind::NegatedBool => v
                .as_bool()
                .map(|_| ())
                .ok_or_else(|| wrong("true or false")),
            Kind::List => match v.as_array() {
                Some(a) if a.iter().all(Value::is_str) => Ok(()),
                Some(_) => Err("expected a list of strings, found a list with other values".into()),
                None => Err(wrong("a list of strings")),
            },
            _ => {
                let s = v.as_str().ok_or_else(|| wrong("a string"))?;
                self.check_str(kind, s)
            }
        }
    }

    fn check_str(&self, kind: Kind, s: &str) -> Result<(), String> {
        match kind {
            Kind::Enum(allowed) => {
                if allowed.contains(&s) {
                    Ok(())
                } else {
                    Err(format!("`{}` is not one of {}{}", short(s), allowed.join(", "), suggest(s, allowed)))
                }
            }
            Kind::Level => tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| ())
                .map_err(|_| format!("`{}` is not a log level (error, warn, info, debug, trace) or a filter directive", short(s))),
            Kind::Url => match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                    if u.query().is_some() || !u.username().is_empty() || u.password().is_some() {
                        Err("the URL must not carry a query string or credentials".into())
                    } else {
                        Ok(())
                    }
                }
                Ok(u) => Err(format!("expected an http(s) URL, found a {}: URL", u.scheme())),
                Err(e) => Err(format!("not a URL: {e}")),
            },
            Kind::Lake => {
                if s.starts_with("s3://") || s.starts_with("s3a://") {
                    let rest = s.split_once("://").map_or("", |(_, r)| r);
                    if rest.split('/').next().unwrap_or("").is_empty() {
                        return Err("an s3:// lake needs a bucket (s3://bucket/prefix)".into());
                    }
                    Ok(())
                } else if s.contains("://") && !s.starts_with("file://") {
                    Err(format!("`{}` is not supported: use a folder, file:// or s3://", redact_text(s)))
                } else if s.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(())
                }
            }
            Kind::File | Kind::Dir => {
                let p = self.resolve(s);
                match std::fs::metadata(&p) {
                    Ok(m) if kind == Kind::File && !m.is_file() => Err(format!("{} is not a file", p.display())),
                    Ok(m) if kind == Kind::Dir && !m.is_dir() => Err(format!("{} is not a folder", p.display())),
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{} cannot be read: {e}", p.display())),
                }
            }
            Kind::EnvName => {
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !s.as_bytes()[0].is_ascii_digit() {
                    Ok(())
                } else {
                    Err("expected the name of an environment variable (letters, digits, _), not the secret itself".into())
                }
            }
            Kind::Since => {
                if s == "auto" {
                    return Ok(());
                }
                Since::parse(s).map(|_| ()).map_err(|e| format!("not `auto` or an instant: {e}"))
            }
            Kind::Profile => {
                if BUILTIN_PROFILES.iter().any(|(n, _)| *n == s) {
                    return Ok(());
                }
                let names: Vec<&str> = BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect();
                if s.ends_with(".toml") {
                    let p = self.resolve(s);
                    return if p.is_file() {
                        Ok(())
                    } else {
                        Err(format!("profile file {} does not exist", p.display()))
                    };
                }
                Err(format!("`{}` is not a built-in profile ({}) or a .toml file{}", short(s), names.join(", "), suggest(s, &names)))
            }
            Kind::Str => Ok(()),
            Kind::Path => {
                if s.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(())
                }
            }
            Kind::Count | Kind::Positive | Kind::Bool | Kind::NegatedBool | Kind::List => Ok(()),
        }
    }

    /// The environment value of each key the file sets (paths resolved from the file's
    /// folder), in [`KEYS`] order. Assumes [`ConfigFile::validate`] found nothing.
    pub fn env_values(&self) -> Vec<(&'static Key, String)> {
        let mut out = Vec::new();
        for k in KEYS {
            let Some(v) = self.get(k.path) else { continue };
            let s = match (k.kind, v) {
                (Kind::NegatedBool, Value::Boolean(b)) => (!b).to_string(),
                (Kind::File | Kind::Dir | Kind::Path, Value::String(s)) => {
                    self.resolve(s).display().to_string()
                }
                (Kind::Lake, Value::String(s)) if !s.contains("://") => {
                    self.resolve(s).display().to_string()
                }
                (Kind::Profile, Value::String(s)) if s.ends_with(".toml") => {
                    self.resolve(s).display().to_string()
                }
                (Kind::List, Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                (_, Value::String(s)) => s.clone(),
                (_, Value::Integer(i)) => i.to_string(),
                (_, Value::Float(f)) => f.to_string(),
                (_, Value::Boolean(b)) => b.to_string(),
                (_, other) => other.to_string(),
            };
            out.push((k, s));
        }
        out
    }

    /// The `[sources.NAME]` tables, as the export command reads them.
    pub fn sources(&self) -> Result<ExportConfigFile, String> {
        let mut t = Table::new();
        if let Some(s) = self.table.get("sources") {
            t.insert("sources".into(), s.clone());
        }
        Value::Table(t)
            .try_into::<ExportConfigFile>()
            .map_err(|e| e.message().to_owned())
    }
}

fn sections() -> Vec<&'static str> {
    let mut v: Vec<&str> = KEYS
        .iter()
        .filter_map(|k| k.path.split_once('.').map(|(s, _)| s))
        .collect();
    v.dedup();
    v
}

fn sections_and_sources() -> Vec<&'static str> {
    let mut v = sections();
    v.push("sources");
    v
}

/// A top-level `name = value`: keys live in sections.
fn unknown_top_key(name: &str) -> String {
    if let Some(msg) = inline_secret(name) {
        return msg;
    }
    let hits: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.path.split_once('.').is_some_and(|(_, n)| n == name))
        .map(|k| k.path)
        .collect();
    match hits.first() {
        Some(p) => format!("keys live in sections: did you mean `{p}`?"),
        None => {
            let all: Vec<&str> = KEYS.iter().map(|k| k.path).collect();
            format!("unknown key (keys live in sections [log], [lake], [kafka], [ingest], [views], [auth], [export], [sources.NAME]){}", suggest(name, &all))
        }
    }
}

fn inline_secret(name: &str) -> Option<String> {
    let l = name.to_ascii_lowercase();
    SECRET_KEYS.iter().find(|(k, _)| *k == l).map(|(_, instead)| {
        format!("secrets are not allowed in the config file (the value is not shown); use {instead}, or the matching FHIRHOSE_* environment variable")
    })
}

/// `did you mean` for a key of a known section: a close name in the section, or the same
/// name in another section.
fn suggest_key(section: &str, k: &str) -> String {
    let in_section: Vec<&str> = KEYS
        .iter()
        .filter_map(|key| {
            key.path
                .split_once('.')
                .filter(|(s, _)| *s == section)
                .map(|(_, n)| n)
        })
        .collect();
    let s = suggest(k, &in_section);
    if !s.is_empty() {
        return s;
    }
    match KEYS
        .iter()
        .find(|key| key.path.split_once('.').is_some_and(|(_, n)| n == k))
    {
        Some(key) => format!("; did you mean `{}`?", key.path),
        None => {
            let all: Vec<&str> = KEYS.iter().map(|k| k.path).collect();
            suggest(&format!("{section}.{k}"), &all)
        }
    }
}

/// `; did you mean `x`?` for the closest candidate within a small edit distance.
fn suggest(word: &str, candidates: &[&str]) -> String {
    let w = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&w, c), *c))
        .filter(|(d, c)| *d <= 2usize.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn article(t: &str) -> String {
    match t {
        "integer" | "array" => format!("an {t}"),
        _ => format!("a {t}"),
    }
}

/// A value quoted in an error: short, and scrubbed of anything credential-like.
fn short(s: &str) -> String {
    let s: String = s.chars().take(60).collect();
    redact_text(&s).into_owned()
}

/// The configuration file named by `--config FILE` / `--config=FILE` in `args` (before a
/// `--`), or by `FHIRHOSE_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the command line is `fhirhose [..] config ...` (which reads the file itself).
fn is_config_command(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-') && !is_flag_value(args, a))
        .is_some_and(|a| a == "config")
}

fn is_flag_value(args: &[OsString], v: &str) -> bool {
    // Values of the global flags that take one.
    args.windows(2).any(|w| {
        matches!(
            w[0].to_string_lossy().as_ref(),
            "--log-level" | "--log-format" | "--config"
        ) && w[1].to_string_lossy() == v
    })
}

/// Applies the configuration file (if any) to the environment before clap parses: checks
/// it, then sets the `FHIRHOSE_*` variable of every key it holds that the environment does
/// not already set. Returns the keys applied. Must run before any other thread starts.
pub fn preload(args: &[OsString]) -> Result<Vec<&'static str>, ConfigError> {
    if is_config_command(args) {
        return Ok(Vec::new());
    }
    let Some(path) = config_path(args) else {
        return Ok(Vec::new());
    };
    let file = ConfigFile::load(&path)?;
    let issues = file.validate();
    if !issues.is_empty() {
        return Err(ConfigError { path, issues });
    }
    let mut applied = Vec::new();
    for (k, v) in file.env_values() {
        if std::env::var_os(k.env).is_none() {
            std::env::set_var(k.env, v);
            applied.push(k.path);
        }
    }
    Ok(applied)
}

/// The `[sources]` of a configuration file, for `export` and `fetch`.
pub fn load_sources(path: &Path) -> Result<ExportConfigFile, UsageError> {
    let file = ConfigFile::load(path).map_err(|e| UsageError(e.to_string()))?;
    file.sources()
        .map_err(|e| UsageError(format!("config file {}: sources: {e}", path.display())))
}

/// `fhirhose config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// Subcommands of `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the file named by --config (or FHIRHOSE_CONFIG) and show the effective
    /// configuration; exit 2 when anything is wrong.
    Check,
    /// Print a documented example configuration file.
    Example,
}

/// Runs `fhirhose config`.
pub fn run(a: ConfigArgs, config: Option<&Path>) -> anyhow::Result<u8> {
    match a.command {
        ConfigCommand::Example => {
            print!("{}", example());
            Ok(0)
        }
        ConfigCommand::Check => {
            let Some(path) = config else {
                return Err(UsageError(format!(
                    "config check needs a file: --config FILE or {CONFIG_ENV}"
                ))
                .into());
            };
            let file = match ConfigFile::load(path) {
                Ok(f) => f,
                Err(e) => return Ok(report_issues(path, &e.issues)),
            };
            let issues = file.validate();
            if !issues.is_empty() {
                return Ok(report_issues(path, &issues));
            }
            print!("{}", summary(&file));
            Ok(0)
        }
    }
}

fn report_issues(path: &Path, issues: &[Issue]) -> u8 {
    eprintln!(
        "config file {}: {} error{}",
        path.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    // Not passed through `redact_text`: issues quote values only through `short` (already
    // redacted), and the guard would mistake `auth.client_secret: ...` for a credential.
    for i in issues {
        eprintln!("  {i}");
    }
    2
}

/// Where an effective value comes from.
fn origin(k: &Key, file: &ConfigFile) -> (String, &'static str) {
    if let Some(v) = std::env::var_os(k.env) {
        return (v.to_string_lossy().into_owned(), "env");
    }
    if let Some((_, v)) = file
        .env_values()
        .into_iter()
        .find(|(x, _)| x.path == k.path)
    {
        return (v, "file");
    }
    // Values here are as the variable holds them; a `--no-...` variable holds the negation
    // of the key's default.
    let d = k.default.unwrap_or("-");
    let d = match (k.kind, d) {
        (Kind::NegatedBool, "true") => "false",
        (Kind::NegatedBool, "false") => "true",
        _ => d,
    };
    (d.to_owned(), "default")
}

/// Shows a value of the effective configuration: URLs without query or userinfo,
/// secret-env names with whether they are set; never a secret.
fn show(k: &Key, v: &str) -> String {
    let shown = match k.kind {
        Kind::Url => url::Url::parse(v).map_or_else(|_| v.to_owned(), |u| redact_url(&u)),
        Kind::EnvName => format!(
            "{v} ({})",
            if std::env::var_os(v).is_some() {
                "set"
            } else {
                "NOT SET"
            }
        ),
        Kind::NegatedBool => match v {
            "true" => "false".into(),
            "false" => "true".into(),
            other => other.into(),
        },
        _ => v.to_owned(),
    };
    redact_text(&shown).into_owned()
}

/// The effective configuration (file and environment; flags not considered), secrets
/// masked.
pub fn summary(file: &ConfigFile) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "config file {}: ok", file.path.display());
    let _ = writeln!(s, "effective configuration (flags would still win):");
    for k in KEYS {
        let (v, from) = origin(k, file);
        let _ = writeln!(s, "  {:<24} {:<40} ({from})", k.path, show(k, &v));
    }
    if let Ok(src) = file.sources() {
        for (name, c) in &src.sources {
            let cred = match (&c.key_file, &c.secret_file, &c.secret_env) {
                (Some(p), _, _) => format!(
                    "key_file {}",
                    file.resolve(&p.display().to_string()).display()
                ),
                (_, Some(p), _) => format!(
                    "secret_file {}",
                    file.resolve(&p.display().to_string()).display()
                ),
                (_, _, Some(v)) => format!(
                    "secret_env {v} ({})",
                    if std::env::var_os(v).is_some() {
                        "set"
                    } else {
                        "NOT SET"
                    }
                ),
                _ => "no credentials".into(),
            };
            let url = c
                .fhir_url
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok())
                .map_or_else(|| "-".into(), |u| redact_url(&u));
            let line = format!(
                "  sources.{name}: {url}, client {}, {cred}",
                c.client_id.as_deref().unwrap_or("-")
            );
            let _ = writeln!(s, "{}", redact_text(&line));
        }
    }
    s
}

/// A documented example file: every key, with its variable, flag and default.
pub fn example() -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "# fhirhose configuration (fhirhose --config FILE, or FHIRHOSE_CONFIG=FILE).\n\
         # Precedence: flag > FHIRHOSE_* environment variable > this file > default.\n\
         # Relative paths are relative to this file's folder. Secrets never go here: name a\n\
         # file (key_file, secret_file) or an environment variable (secret_env).\n\
         # Check it with: fhirhose config check --config FILE\n",
    );
    let mut section = "";
    for k in KEYS {
        let (sec, name) = k.path.split_once('.').unwrap_or(("", k.path));
        if sec != section {
            let _ = writeln!(s, "\n[{sec}]");
            section = sec;
        }
        let _ = writeln!(
            s,
            "# {} ({}, {}; {})",
            k.doc,
            k.env,
            k.flag,
            k.kind.describe()
        );
        let value = example_value(k);
        match (k.default, value) {
            (_, Some(v)) => {
                let _ = writeln!(s, "{name} = {v}");
            }
            (Some(d), None) => {
                let _ = writeln!(s, "# {name} = {}", toml_literal(k.kind, d));
            }
            (None, None) => {
                let _ = writeln!(s, "# {name} = ...");
            }
        }
    }
    s.push_str(
        "\n# Several EHRs or tenants: `--source NAME` (or lake.source) picks one; flags,\n\
         # environment and [auth] win over the table's values.\n\
         # [sources.acme]\n\
         # fhir_url = \"https://ehr.acme.example/fhir/r4\"\n\
         # profile = \"epic\"\n\
         # client_id = \"fhirhose-acme\"\n\
         # key_file = \"keys/acme.pem\"\n\
         # scopes = \"system/*.rs\"\n\
         # lake_prefix = \"acme\"\n\
         # group = \"all-patients\"\n\
         # types = [\"Patient\", \"Observation\"]\n",
    );
    s
}

/// Values the example sets (the rest stay commented out at their defaults).
fn example_value(k: &Key) -> Option<String> {
    let v = match k.path {
        "log.level" => "\"info\"",
        "log.format" => "\"json\"",
        "lake.url" => "\"./fhirhose-lake\"",
        "lake.source" => "\"ehr1\"",
        "kafka.compression" => "\"zstd\"",
        "auth.fhir_url" => "\"https://ehr.example/fhir\"",
        "auth.scopes" => "\"system/*.rs\"",
        "export.since" => "\"auto\"",
        _ => return None,
    };
    Some(v.to_owned())
}

fn toml_literal(kind: Kind, d: &str) -> String {
    match kind {
        Kind::Count | Kind::Positive | Kind::Bool | Kind::NegatedBool => d.to_owned(),
        _ => format!("\"{d}\""),
    }
}

/// Keys by environment variable (for tests and docs).
pub fn keys_by_env() -> BTreeMap<&'static str, &'static Key> {
    KEYS.iter().map(|k| (k.env, k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(text: &str) -> ConfigFile {
        ConfigFile::parse(Path::new("/nonexistent/fhirhose.toml"), text).unwrap()
    }

    fn issues(text: &str) -> Vec<String> {
        parse(text)
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Every key's variable is read by a clap argument with the same flag and default.
    #[test]
    fn keys_match_the_command_line() {
        let cmd = crate::cli::Cli::command();
        let mut args: Vec<clap::Arg> = cmd.get_arguments().cloned().collect();
        let mut stack: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();
        while let Some(c) = stack.pop() {
            args.extend(c.get_arguments().cloned());
            stack.extend(c.get_subcommands().cloned());
        }
        for k in KEYS {
            let found: Vec<&clap::Arg> = args
                .iter()
                .filter(|a| {
                    a.get_env()
                        .is_some_and(|e| e == std::ffi::OsStr::new(k.env))
                })
                .collect();
            assert!(!found.is_empty(), "no argument reads {}", k.env);
            for a in found {
                assert_eq!(format!("--{}", a.get_long().unwrap()), k.flag, "{}", k.path);
                let default: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                match (k.kind, k.default) {
                    (Kind::NegatedBool | Kind::Bool, _) => {
                        assert!(
                            matches!(a.get_action(), clap::ArgAction::SetTrue),
                            "{}",
                            k.path
                        )
                    }
                    (_, Some(d)) => assert_eq!(default, vec![d.to_owned()], "{}", k.path),
                    (_, None) => assert!(default.is_empty(), "{}: {default:?}", k.path),
                }
            }
        }
    }

    #[test]
    fn env_values_resolve_paths_and_negations() {
        let f = parse(
            "[lake]\nurl = \"lake\"\nstate = \"/abs/state.db\"\n[kafka]\ncreate_topics = false\n[ingest]\nworkers = 3\nstrict = true\n[export]\ndeadline_days = 1.5\n",
        );
        assert!(f.validate().is_empty(), "{:?}", f.validate());
        let env: BTreeMap<&str, String> = f
            .env_values()
            .into_iter()
            .map(|(k, v)| (k.env, v))
            .collect();
        assert_eq!(env["FHIRHOSE_LAKE"], "/nonexistent/lake");
        assert_eq!(env["FHIRHOSE_STATE"], "/abs/state.db");
        assert_eq!(env["FHIRHOSE_NO_CREATE_TOPICS"], "true");
        assert_eq!(env["FHIRHOSE_WORKERS"], "3");
        assert_eq!(env["FHIRHOSE_STRICT"], "true");
        assert_eq!(env["FHIRHOSE_DEADLINE_DAYS"], "1.5");
    }

    #[test]
    fn errors_name_the_key_path_and_explain() {
        let got = issues(
            r#"
[kafka]
broker = "k:9092"
compression = "zstdd"
[lake]
brokers = "x"
[ingest]
workers = "four"
file_concurrency = 0
[auth]
fhir_url = "ftp://ehr.example/fhir"
token_url = "not a url"
key_file = "missing.pem"
secret_env = "my secret value"
client_secret = "hunter2-sekrit"
[export]
since = "yesterday"
[logs]
level = "info"
[sources.acme]
fhir_url = "https://acme.example/fhir"
clientid = "x"
private_key = "-----BEGIN PRIVATE KEY-----"
"#,
        );
        let want = [
            "kafka.broker: unknown key; did you mean `brokers`?",
            "kafka.compression: `zstdd` is not one of none, gzip, snappy, lz4, zstd; did you mean `zstd`?",
            "lake.brokers: unknown key; did you mean `kafka.brokers`?",
            "ingest.workers: expected an integer, found a string",
            "ingest.file_concurrency: must be at least 1, found 0",
            "auth.fhir_url: expected an http(s) URL, found a ftp: URL",
            "auth.token_url: not a URL",
            "auth.key_file: /nonexistent/missing.pem cannot be read",
            "auth.secret_env: expected the name of an environment variable",
            "auth.client_secret: secrets are not allowed in the config file",
            "export.since: not `auto` or an instant",
            "logs: unknown section; did you mean `log`?",
            "sources.acme.clientid: unknown key; did you mean `client_id`?",
            "sources.acme.private_key: secrets are not allowed in the config file (the value is not shown); use key_file",
            "auth: conflicting credentials: give one of auth.key_file, auth.secret_env",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing `{w}` in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        let all = got.join("\n");
        assert!(!all.contains("hunter2"), "a secret value was echoed");
        assert!(!all.contains("BEGIN PRIVATE"), "a secret value was echoed");
    }

    #[test]
    fn syntax_errors_give_a_position_not_the_line() {
        let e = ConfigFile::parse(
            Path::new("x.toml"),
            "[auth]\nclient_id = \"a\"\nclient_secret = \"hunter2\n",
        )
        .unwrap_err();
        assert!(e.message.contains("line 3"), "{e}");
        assert!(!e.message.contains("hunter2"), "{e}");
    }

    #[test]
    fn example_is_valid_and_documents_every_key() {
        let text = example();
        let f = parse(&text);
        assert_eq!(f.validate(), vec![], "{text}");
        for k in KEYS {
            let name = k.path.split_once('.').unwrap().1;
            assert!(text.contains(&format!("{name} = ")), "{} missing", k.path);
            assert!(text.contains(k.env), "{} missing", k.env);
        }
        // Uncommenting every line still gives a file with only these two kinds of issue:
        // placeholders and files that do not exist here.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| (r.contains(" = ") && !r.contains("...")) || r.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let f = parse(&uncommented);
        for i in f.validate() {
            assert!(i.message.contains("cannot be read"), "{i}");
        }
    }

    #[test]
    fn sources_are_read_with_other_sections() {
        let f = parse("[lake]\nurl = \"x\"\n[sources.a]\nfhir_url = \"https://a.example/fhir\"\ntypes = [\"Patient\"]\n");
        let s = f.sources().unwrap();
        assert_eq!(s.sources["a"].types, vec!["Patient".to_owned()]);
    }

    #[test]
    fn config_path_from_args() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&a(&["fhirhose", "ingest", "--config", "c.toml", "x"])),
            Some("c.toml".into())
        );
        assert_eq!(
            config_path(&a(&["fhirhose", "--config=c.toml", "ingest"])),
            Some("c.toml".into())
        );
        assert!(is_config_command(&a(&[
            "fhirhose",
            "--log-level",
            "debug",
            "config",
            "check"
        ])));
        assert!(!is_config_command(&a(&["fhirhose", "ingest", "config"])));
        assert_eq!(edit_distance("brokers", "broker"), 1);
    }
}
