//! SMART Backend Services: `client_credentials` with a `private_key_jwt` assertion.

use std::time::Duration;

use time::OffsetDateTime;
use url::Url;

use super::error::AuthError;
use super::jwt::client_assertion;
use super::keys::SigningKey;

/// `client_assertion_type` for JWT bearer client authentication (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Form fields authenticating the client with a fresh signed assertion.
pub(crate) fn assertion_fields(
    key: &SigningKey,
    client_id: &str,
    token_url: &Url,
    jku: Option<&Url>,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<[(&'static str, String); 2], AuthError> {
    let jwt = client_assertion(key, client_id, token_url, jku, now, lifetime)?;
    Ok([
        (
            "client_assertion_type",
            JWT_BEARER_ASSERTION_TYPE.to_owned(),
        ),
        ("client_assertion", jwt.expose().to_owned()),
    ])
}
