//! Tokens, launch context and the context-bound token cache.
//!
//! A cache entry is keyed by (client id, token endpoint, launch context
//! (patient, encounter, user), scope set): a token obtained for one patient or user is
//! never handed out for another's requests. Each entry holds an async mutex, so all
//! concurrent callers that find the token about to expire wait on the *same* refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::scopes::ScopeSet;
use crate::http::Secret;

/// SMART launch context returned with a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LaunchContext {
    /// `patient`.
    pub patient: Option<String>,
    /// `encounter`.
    pub encounter: Option<String>,
    /// `fhirUser` (from the id_token, or the token response).
    pub fhir_user: Option<String>,
    /// `need_patient_banner`.
    pub need_patient_banner: Option<bool>,
    /// `smart_style_url`.
    pub smart_style_url: Option<String>,
    /// `intent`.
    pub intent: Option<String>,
    /// `tenant`.
    pub tenant: Option<String>,
    /// `fhirContext` and any other context parameters, as sent.
    pub extra: Map<String, Value>,
}

impl LaunchContext {
    /// A context naming only a patient (handy for [`super::Authorizer::bearer_for`]).
    pub fn for_patient(patient: impl Into<String>) -> Self {
        Self {
            patient: Some(patient.into()),
            ..Self::default()
        }
    }

    /// The identity part used in cache keys.
    fn identity(&self) -> (Option<String>, Option<String>, Option<String>) {
        (
            self.patient.clone(),
            self.encounter.clone(),
            self.fhir_user.clone(),
        )
    }
}

/// An access token with what it is good for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Token {
    /// The access token.
    pub access: Secret,
    /// When it expires (`None` when the server did not say).
    pub expires_at: Option<OffsetDateTime>,
    /// The refresh token, if any.
    pub refresh: Option<Secret>,
    /// Scopes granted (the requested ones when the response omitted `scope`).
    pub granted: ScopeSet,
    /// Launch context.
    pub context: LaunchContext,
    /// The audit event that recorded this grant or refresh.
    pub event_id: Uuid,
}

impl Token {
    /// Whether the token should be refreshed now, `margin` before expiry.
    pub fn needs_refresh(&self, now: OffsetDateTime, margin: Duration) -> bool {
        self.expires_at.is_some_and(|exp| now + margin >= exp)
    }
}

/// A parsed token-endpoint response (before binding to an audit event).
#[derive(Debug, Clone)]
pub(crate) struct TokenResponse {
    pub(crate) access: Secret,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) refresh: Option<Secret>,
    pub(crate) scope: Option<String>,
    pub(crate) context: LaunchContext,
}

impl TokenResponse {
    pub(crate) fn parse(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("the response is not a JSON object")?;
        let access = obj
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("access_token is missing")?;
        match obj.get("token_type").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err("token_type is not Bearer".into()),
            None => return Err("token_type is missing".into()),
        }
        let expires_in = obj.get("expires_in").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Duration::from_secs)
        });
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let fhir_user =
            s("fhirUser").or_else(|| s("id_token").as_deref().and_then(id_token_fhir_user));
        let mut extra = Map::new();
        for (k, v) in obj {
            if !matches!(
                k.as_str(),
                "access_token"
                    | "token_type"
                    | "expires_in"
                    | "scope"
                    | "refresh_token"
                    | "id_token"
                    | "patient"
                    | "encounter"
                    | "fhirUser"
                    | "need_patient_banner"
                    | "smart_style_url"
                    | "intent"
                    | "tenant"
            ) {
                extra.insert(k.clone(), v.clone());
            }
        }
        Ok(Self {
            access: Secret::new(access),
            expires_in,
            refresh: s("refresh_token").map(Secret::new),
            scope: s("scope"),
            context: LaunchContext {
                patient: s("patient"),
                encounter: s("encounter"),
                fhir_user,
                need_patient_banner: obj.get("need_patient_banner").and_then(Value::as_bool),
                smart_style_url: s("smart_style_url"),
                intent: s("intent"),
                tenant: s("tenant"),
                extra,
            },
        })
    }
}

/// `fhirUser` from an id_token's payload. The id_token is not verified here: the value
/// is used only to label the launch context (cache key, audit), never to authorize.
fn id_token_fhir_user(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    v.get("fhirUser").and_then(Value::as_str).map(str::to_owned)
}

/// Identifies one grant: a token is used only for requests under the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    client_id: String,
    token_endpoint: String,
    context: (Option<String>, Option<String>, Option<String>),
    scopes: String,
}

impl CacheKey {
    /// The key for a client, endpoint, launch context and scope set.
    pub fn new(
        client_id: &str,
        token_endpoint: &url::Url,
        ctx: &LaunchContext,
        scopes: &ScopeSet,
    ) -> Self {
        Self {
            client_id: client_id.to_owned(),
            token_endpoint: token_endpoint.as_str().to_owned(),
            context: ctx.identity(),
            scopes: scopes.to_string(),
        }
    }
}

/// One cache slot; the async mutex makes refreshes single-flight.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<Arc<Token>>>>;

/// Tokens by [`CacheKey`].
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<CacheKey, Slot>>,
}

impl TokenCache {
    /// The slot for `key`, created empty if absent.
    pub(crate) fn slot(&self, key: &CacheKey) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The slot for `key` only if it exists.
    pub(crate) fn existing(&self, key: &CacheKey) -> Option<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Every slot.
    pub(crate) fn all(&self) -> Vec<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Drops every slot.
    pub(crate) fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_launch_context() {
        let idt = format!(
            "x.{}.y",
            URL_SAFE_NO_PAD.encode(json!({"fhirUser": "Practitioner/9"}).to_string())
        );
        let r = TokenResponse::parse(&json!({
            "access_token": "a", "token_type": "bearer", "expires_in": 300,
            "scope": "patient/*.rs", "refresh_token": "r", "patient": "p1",
            "encounter": "e1", "need_patient_banner": true, "id_token": idt,
            "fhirContext": [{"reference": "Appointment/1"}]
        }))
        .unwrap();
        assert_eq!(r.expires_in, Some(Duration::from_secs(300)));
        assert_eq!(r.context.patient.as_deref(), Some("p1"));
        assert_eq!(r.context.fhir_user.as_deref(), Some("Practitioner/9"));
        assert_eq!(r.context.need_patient_banner, Some(true));
        assert!(r.context.extra.contains_key("fhirContext"));
        assert!(TokenResponse::parse(&json!({"access_token": "a", "token_type": "mac"})).is_err());
        assert!(TokenResponse::parse(&json!({"token_type": "Bearer"})).is_err());
    }

    #[test]
    fn keys_separate_contexts() {
        let u = url::Url::parse("https://a/token").unwrap();
        let s = ScopeSet::parse("patient/*.rs");
        let a = CacheKey::new("c", &u, &LaunchContext::for_patient("1"), &s);
        let b = CacheKey::new("c", &u, &LaunchContext::for_patient("2"), &s);
        assert_ne!(a, b);
        let cache = TokenCache::default();
        cache.slot(&a);
        assert!(cache.existing(&b).is_none());
        assert!(cache.existing(&a).is_some());
    }
}
