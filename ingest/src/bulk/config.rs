//! The export configuration file: several named sources (EHR organizations or tenants),
//! each with its FHIR URL, profile, credentials and lake prefix.
//!
//! ```toml
//! [sources.acme]
//! fhir_url = "https://ehr.acme.example/fhir/r4"
//! profile = "epic"                  # or a path to a profile TOML; omitted: detected
//! client_id = "fhirhose-acme"
//! key_file = "/etc/fhirhose/acme.pem" # private_key_jwt (RS384/ES384)
//! scopes = "system/*.rs"
//! lake_prefix = "acme"              # raw/<lake_prefix>/export/<job>/...
//!
//! [sources.beta]
//! fhir_url = "https://beta.example/fhir"
//! client_id = "fhirhose"
//! secret_env = "BETA_CLIENT_SECRET" # or secret_file = "/run/secrets/beta"
//! token_url = "https://beta.example/oauth/token"
//! lake = "s3://lake-beta/fhir"
//! ```
//!
//! Secrets never appear in the file itself: a key file, a secret file or the name of an
//! environment variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::BulkError;

/// One source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SourceConfig {
    /// FHIR base URL.
    pub fhir_url: Option<String>,
    /// Profile name or path.
    pub profile: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Private key file (`private_key_jwt`).
    pub key_file: Option<PathBuf>,
    /// Client secret file.
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    pub secret_env: Option<String>,
    /// Scopes (space separated).
    pub scopes: Option<String>,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Lake URL override.
    pub lake: Option<String>,
    /// Source name in lake keys and events (default: the source's name).
    pub lake_prefix: Option<String>,
    /// Default Group id for group-level exports.
    pub group: Option<String>,
    /// Default `_type` list.
    pub types: Vec<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ExportConfigFile {
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
}

impl ExportConfigFile {
    /// Parses the TOML text.
    pub fn parse(text: &str) -> Result<Self, BulkError> {
        toml::from_str(text).map_err(|e| BulkError::Request(format!("invalid config file: {e}")))
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, BulkError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BulkError::Request(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
    }

    /// The named source, or the only one when `name` is `None`.
    pub fn source(&self, name: Option<&str>) -> Result<(String, SourceConfig), BulkError> {
        match name {
            Some(n) => self
                .sources
                .get(n)
                .map(|s| (n.to_owned(), s.clone()))
                .ok_or_else(|| {
                    BulkError::Request(format!(
                        "no source `{n}` in the config file (known: {})",
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }),
            None if self.sources.len() == 1 => Ok(self
                .sources
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default()),
            None => Err(BulkError::Request(
                "the config file names several sources; pick one with --source".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_sources() {
        let c = ExportConfigFile::parse(
            r#"
[sources.acme]
fhir_url = "https://ehr.acme.example/fhir"
profile = "epic"
client_id = "c1"
key_file = "/k.pem"
lake_prefix = "acme"

[sources.beta]
fhir_url = "https://beta.example/fhir"
client_id = "c2"
secret_env = "BETA_SECRET"
types = ["Patient", "Observation"]
"#,
        )
        .unwrap();
        assert_eq!(c.sources.len(), 2);
        let (n, s) = c.source(Some("beta")).unwrap();
        assert_eq!(n, "beta");
        assert_eq!(s.types.len(), 2);
        assert!(c.source(None).is_err());
        assert!(c.source(Some("nope")).is_err());
        assert!(ExportConfigFile::parse("[sources.x]\nsecret = \"inline\"").is_err());
    }
}
