//! SMART discovery: `<base>/.well-known/smart-configuration`, falling back to the
//! CapabilityStatement's `oauth-uris` extension (`<base>/metadata`). Missing fields are
//! tolerated; only the token endpoint is required later, by the flows that need it.

use reqwest::header::{HeaderValue, ACCEPT};
use serde_json::Value;
use tracing::debug;
use url::Url;

use super::error::AuthError;
use crate::http::{redact_url, HttpClient, Interaction, Request, TokenPolicy};

const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The parts of a SMART configuration fhirhose uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SmartConfiguration {
    /// `issuer` (when the server publishes one).
    pub issuer: Option<String>,
    /// `token_endpoint`.
    pub token_endpoint: Option<Url>,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<Url>,
    /// `revocation_endpoint`.
    pub revocation_endpoint: Option<Url>,
    /// `introspection_endpoint`.
    pub introspection_endpoint: Option<Url>,
    /// `jwks_uri`.
    pub jwks_uri: Option<Url>,
    /// `scopes_supported`.
    pub scopes_supported: Vec<String>,
    /// `grant_types_supported`.
    pub grant_types_supported: Vec<String>,
    /// `code_challenge_methods_supported`.
    pub code_challenge_methods_supported: Vec<String>,
    /// `token_endpoint_auth_methods_supported`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// `token_endpoint_auth_signing_alg_values_supported`.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// `capabilities`.
    pub capabilities: Vec<String>,
}

impl SmartConfiguration {
    /// Reads a `.well-known/smart-configuration` document, ignoring unparsable fields.
    pub fn from_json(v: &Value) -> Self {
        let url = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .and_then(|s| Url::parse(s).ok())
        };
        let list = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            issuer: v.get("issuer").and_then(Value::as_str).map(str::to_owned),
            token_endpoint: url("token_endpoint"),
            authorization_endpoint: url("authorization_endpoint"),
            revocation_endpoint: url("revocation_endpoint"),
            introspection_endpoint: url("introspection_endpoint"),
            jwks_uri: url("jwks_uri"),
            scopes_supported: list("scopes_supported"),
            grant_types_supported: list("grant_types_supported"),
            code_challenge_methods_supported: list("code_challenge_methods_supported"),
            token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported"),
            token_endpoint_auth_signing_alg_values_supported: list(
                "token_endpoint_auth_signing_alg_values_supported",
            ),
            capabilities: list("capabilities"),
        }
    }

    /// Reads the `oauth-uris` extension of a CapabilityStatement.
    pub fn from_capability_statement(v: &Value) -> Option<Self> {
        let rests = v.get("rest")?.as_array()?;
        for rest in rests {
            let exts = rest
                .get("security")
                .and_then(|s| s.get("extension"))
                .and_then(Value::as_array);
            for ext in exts.into_iter().flatten() {
                if ext.get("url").and_then(Value::as_str) != Some(OAUTH_URIS) {
                    continue;
                }
                let mut out = Self::default();
                for sub in ext
                    .get("extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let uri = sub
                        .get("valueUri")
                        .or_else(|| sub.get("valueUrl"))
                        .and_then(Value::as_str)
                        .and_then(|s| Url::parse(s).ok());
                    match sub.get("url").and_then(Value::as_str) {
                        Some("token") => out.token_endpoint = uri,
                        Some("authorize") => out.authorization_endpoint = uri,
                        Some("revoke") => out.revocation_endpoint = uri,
                        Some("introspect") => out.introspection_endpoint = uri,
                        _ => {}
                    }
                }
                return Some(out);
            }
        }
        None
    }

    /// Whether `method` appears in `token_endpoint_auth_methods_supported` (an empty
    /// list means "not advertised": assume yes).
    pub fn supports_auth_method(&self, method: &str) -> bool {
        self.token_endpoint_auth_methods_supported.is_empty()
            || self
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == method)
    }
}

/// `base` with a trailing slash, so `join` appends.
pub(crate) fn dir_url(base: &Url) -> Url {
    let mut b = base.clone();
    if !b.path().ends_with('/') {
        let p = format!("{}/", b.path());
        b.set_path(&p);
    }
    b.set_query(None);
    b.set_fragment(None);
    b
}

/// Discovers SMART endpoints for the FHIR server at `base`.
pub async fn discover(http: &HttpClient, base: &Url) -> Result<SmartConfiguration, AuthError> {
    let dir = dir_url(base);
    let get = |path: &str| {
        let url = dir.join(path);
        async move {
            let url = url.ok()?;
            let req = Request::get(url)
                .header(ACCEPT, HeaderValue::from_static("application/json"))
                .token(TokenPolicy::Never)
                .interaction(Interaction::Other);
            let resp = http.send(req).await.ok()?;
            resp.json::<Value>().await.ok()
        }
    };
    if let Some(v) = get(".well-known/smart-configuration").await {
        let cfg = SmartConfiguration::from_json(&v);
        if cfg.token_endpoint.is_some() || cfg.authorization_endpoint.is_some() {
            debug!(base = %redact_url(base), "smart configuration discovered");
            return Ok(cfg);
        }
    }
    if let Some(v) = get("metadata").await {
        if let Some(cfg) = SmartConfiguration::from_capability_statement(&v) {
            debug!(base = %redact_url(base), "oauth endpoints discovered from the capability statement");
            return Ok(cfg);
        }
    }
    Err(AuthError::Discovery {
        url: redact_url(base),
        reason: "neither .well-known/smart-configuration nor metadata advertises OAuth endpoints"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerant_parsing() {
        let c = SmartConfiguration::from_json(&json!({
            "token_endpoint": "https://auth.example/token",
            "scopes_supported": ["system/*.read", 5],
            "revocation_endpoint": "not a url",
        }));
        assert_eq!(
            c.token_endpoint.as_ref().unwrap().as_str(),
            "https://auth.example/token"
        );
        assert_eq!(c.scopes_supported, vec!["system/*.read".to_owned()]);
        assert!(c.revocation_endpoint.is_none());
        assert!(c.supports_auth_method("private_key_jwt"));
    }

    #[test]
    fn capability_statement_fallback() {
        let cs = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": {"extension": [{
        "url": OAUTH_URIS,
        "extension": [
            {"url": "token", "valueUri": "https://auth.example/token"},
            {"url": "authorize", "valueUri": "https://auth.example/authorize"},
            {"url": "revoke", "valueUri": "https://auth.example/revoke"}
        ]}]}}]});
        let c = SmartConfiguration::from_capability_statement(&cs).unwrap();
        assert_eq!(c.authorization_endpoint.unwrap().path(), "/authorize");
        assert_eq!(c.revocation_endpoint.unwrap().path(), "/revoke");
        assert!(SmartConfiguration::from_capability_statement(&json!({"rest": []})).is_none());
    }

    #[test]
    fn dir_url_appends_slash() {
        let u = Url::parse("https://ehr.example/fhir/r4?x=1").unwrap();
        assert_eq!(dir_url(&u).as_str(), "https://ehr.example/fhir/r4/");
    }
}
