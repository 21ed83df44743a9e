//! [`AuthConfig`]: how fhirhose authenticates to one FHIR server.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::http::Secret;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientAuthConfig {
    /// SMART Backend Services: a signed JWT assertion (RS384 or ES384).
    PrivateKeyJwt {
        /// PEM (PKCS#8, SEC1, PKCS#1), JWK or JWKS file with the private key.
        key_path: PathBuf,
        /// `kid` for the JWS header; default: the JWK's `kid` or the key thumbprint.
        #[serde(default)]
        kid: Option<String>,
        /// `jku` header (the URL of the client's public JWKS), if registered that way.
        #[serde(default, with = "super::serde_util::opt_url")]
        jku: Option<Url>,
    },
    /// Shared secret in an HTTP Basic header.
    ClientSecretBasic {
        /// The client secret.
        secret: Secret,
    },
    /// Shared secret in the form body.
    ClientSecretPost {
        /// The client secret.
        secret: Secret,
    },
    /// A public client (App Launch with PKCE only).
    Public,
}

/// Which OAuth flow obtains tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthFlow {
    /// App Launch when the client is public or a stored grant exists, else backend
    /// services.
    #[default]
    Auto,
    /// `client_credentials` (SMART Backend Services, or a confidential system client).
    BackendServices,
    /// Authorization code (via `fhirhose auth login`), then refresh tokens.
    AppLaunch,
}

/// Authorization settings for one FHIR server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The FHIR base URL (also the `aud` of App Launch requests).
    #[serde(with = "super::serde_util::url")]
    pub fhir_base: Url,
    /// OAuth client id.
    pub client_id: String,
    /// Requested scopes, space separated (`system/*.rs`, `patient/Observation.read ...`).
    #[serde(default)]
    pub scopes: String,
    /// Client authentication.
    pub client_auth: ClientAuthConfig,
    /// Which flow obtains tokens. Default `auto`.
    #[serde(default)]
    pub flow: AuthFlow,
    /// Token endpoint override; when set, discovery failures are tolerated.
    #[serde(default, with = "super::serde_util::opt_url")]
    pub token_endpoint: Option<Url>,
    /// Refresh this long before expiry. Default 60 s: covers clock skew and a slow
    /// token endpoint without refreshing needlessly often.
    #[serde(default = "default_refresh_margin", with = "secs")]
    pub refresh_margin: Duration,
    /// Lifetime of `private_key_jwt` assertions, at most 5 min (SMART). Default 4 min: a
    /// server checks `exp <= its now + 5 min`, so a full 5 min would be refused by any
    /// server whose clock is even a second behind ours; 4 min tolerates 60 s of skew.
    #[serde(default = "default_assertion_lifetime", with = "secs")]
    pub assertion_lifetime: Duration,
    /// Persist the refresh token here (mode 0600). Unset: never written to disk.
    #[serde(default)]
    pub refresh_token_path: Option<PathBuf>,
    /// App Launch: loopback port for `http://127.0.0.1:PORT/callback` (0: any free
    /// port; EHRs usually require the registered one).
    #[serde(default)]
    pub redirect_port: u16,
    /// App Launch: the `launch` value for an EHR launch; unset for a standalone launch.
    #[serde(default)]
    pub launch: Option<String>,
    /// App Launch: how long to wait for the browser redirect. Default 5 min.
    #[serde(default = "default_login_timeout", with = "secs")]
    pub login_timeout: Duration,
}

const fn default_refresh_margin() -> Duration {
    Duration::from_secs(60)
}
const fn default_assertion_lifetime() -> Duration {
    Duration::from_secs(240)
}
const fn default_login_timeout() -> Duration {
    Duration::from_secs(300)
}

impl AuthConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        fhir_base: Url,
        client_id: impl Into<String>,
        scopes: impl Into<String>,
        client_auth: ClientAuthConfig,
    ) -> Self {
        Self {
            fhir_base,
            client_id: client_id.into(),
            scopes: scopes.into(),
            client_auth,
            flow: AuthFlow::Auto,
            token_endpoint: None,
            refresh_margin: default_refresh_margin(),
            assertion_lifetime: default_assertion_lifetime(),
            refresh_token_path: None,
            redirect_port: 0,
            launch: None,
            login_timeout: default_login_timeout(),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let c: AuthConfig = serde_json::from_str(
            r#"{"fhir_base": "https://ehr.example/fhir", "client_id": "c",
                "scopes": "system/*.rs",
                "client_auth": {"type": "private_key_jwt", "key_path": "/k.pem"}}"#,
        )
        .unwrap();
        assert_eq!(c.refresh_margin, Duration::from_secs(60));
        assert!(matches!(
            c.client_auth,
            ClientAuthConfig::PrivateKeyJwt { .. }
        ));
        let dbg = format!(
            "{:?}",
            ClientAuthConfig::ClientSecretPost {
                secret: Secret::new("s3cr3t")
            }
        );
        assert!(!dbg.contains("s3cr3t"));
    }
}
