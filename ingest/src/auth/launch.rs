//! SMART App Launch (standalone and EHR launch): authorization code + PKCE S256 through
//! a loopback redirect listener (`http://127.0.0.1:PORT/callback`) that validates
//! `state`.
//!
//! ```text
//!  begin_login ── discover ── PKCE + state ── bind 127.0.0.1:PORT ── authorize URL
//!  finish ── wait for GET /callback?code&state (wrong state → 400, keep waiting)
//!         ── POST token: authorization_code + code_verifier ── audit Grant ── Grant
//! ```

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use url::Url;

use super::audit::{AuditSink, AuthEventKind};
use super::authorizer::{resolve_endpoints, Authorizer, ClientAuth};
use super::config::AuthConfig;
use super::discovery::SmartConfiguration;
use super::error::AuthError;
use super::pkce::{random_state, Pkce};
use super::token::Token;
use crate::http::{redact_url, HttpClient, Secret};

/// The result of a completed login.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Grant {
    /// The token, with refresh token and launch context.
    pub token: Arc<Token>,
    /// Requested scopes the server did not grant.
    pub missing_scopes: Vec<String>,
    /// The discovered endpoints.
    pub endpoints: SmartConfiguration,
    /// The token endpoint used.
    pub token_endpoint: Url,
}

/// A login waiting for the browser redirect.
#[derive(Debug)]
pub struct PendingLogin {
    authorize_url: Url,
    redirect_uri: Url,
    state: String,
    pkce: Pkce,
    listener: TcpListener,
    cfg: AuthConfig,
    http: HttpClient,
    endpoints: SmartConfiguration,
    token_url: Url,
}

/// Prepares a login: discovery, PKCE, `state`, the loopback listener and the authorize
/// URL (with `aud` = FHIR base, and `launch` for an EHR launch).
pub async fn begin_login(http: &HttpClient, cfg: &AuthConfig) -> Result<PendingLogin, AuthError> {
    let (endpoints, token_url) = resolve_endpoints(http, cfg).await?;
    let authorize =
        endpoints
            .authorization_endpoint
            .clone()
            .ok_or_else(|| AuthError::Discovery {
                url: redact_url(&cfg.fhir_base),
                reason: "no authorization_endpoint advertised".into(),
            })?;
    if !endpoints.code_challenge_methods_supported.is_empty()
        && !endpoints
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    {
        return Err(AuthError::Config {
            reason: "the server does not support PKCE S256".into(),
        });
    }
    let listener = TcpListener::bind(("127.0.0.1", cfg.redirect_port))
        .await
        .map_err(|source| AuthError::Io {
            path: format!("127.0.0.1:{}", cfg.redirect_port).into(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| AuthError::Io {
            path: "loopback listener".into(),
            source,
        })?
        .port();
    let redirect_uri = Url::parse(&format!("http://127.0.0.1:{port}/callback")).map_err(|e| {
        AuthError::Config {
            reason: format!("bad redirect URI: {e}"),
        }
    })?;
    let mut rng = rand::rng();
    let pkce = Pkce::generate(&mut rng);
    let state = random_state(&mut rng);
    let mut url = authorize;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("scope", &cfg.scopes)
            .append_pair("state", &state)
            .append_pair("aud", cfg.fhir_base.as_str())
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(launch) = &cfg.launch {
            q.append_pair("launch", launch);
        }
    }
    debug!(authorize = %redact_url(&url), redirect_uri = %redirect_uri, "login prepared");
    Ok(PendingLogin {
        authorize_url: url,
        redirect_uri,
        state,
        pkce,
        listener,
        cfg: cfg.clone(),
        http: http.clone(),
        endpoints,
        token_url,
    })
}

impl PendingLogin {
    /// The URL to open in a browser. It carries `state` and the PKCE challenge (not
    /// secrets), but print it only to the user, not to logs.
    pub fn authorize_url(&self) -> &Url {
        &self.authorize_url
    }

    /// The loopback redirect URI.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Waits for the redirect (up to `login_timeout`), exchanges the code, audits the
    /// grant and (when configured) stores the refresh token.
    pub async fn finish(self, audit: Arc<dyn AuditSink>) -> Result<Grant, AuthError> {
        let code = tokio::time::timeout(self.cfg.login_timeout, self.wait_for_code())
            .await
            .map_err(|_| AuthError::Callback {
                reason: "timed out waiting for the authorization redirect".into(),
            })??;
        let client_auth = ClientAuth::load(&self.cfg.client_auth)?;
        let auth = Authorizer::assemble(
            &self.cfg,
            &self.http,
            audit,
            self.endpoints.clone(),
            self.token_url.clone(),
            client_auth,
            super::authorizer::Mode::RefreshToken,
        );
        let form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.expose().to_owned()),
            ("redirect_uri", self.redirect_uri.to_string()),
            ("code_verifier", self.pkce.verifier.expose().to_owned()),
        ];
        let resp = auth.token_call("token", form, AuthEventKind::Grant).await?;
        let token = auth.accept(resp, AuthEventKind::Grant, None)?;
        let missing = auth.requested_scopes().missing_from(&token.granted);
        info!(client_id = %self.cfg.client_id, event_id = %token.event_id, "login complete");
        Ok(Grant {
            token: Arc::new(token),
            missing_scopes: missing,
            endpoints: self.endpoints,
            token_endpoint: self.token_url,
        })
    }

    async fn wait_for_code(&self) -> Result<Secret, AuthError> {
        loop {
            let (mut sock, _) = self
                .listener
                .accept()
                .await
                .map_err(|source| AuthError::Io {
                    path: "loopback listener".into(),
                    source,
                })?;
            let mut buf = Vec::with_capacity(2048);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let target = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("");
            let parsed = Url::parse("http://127.0.0.1").and_then(|b| b.join(target));
            let (status, body, outcome) = match parsed {
                Ok(u) if u.path() == "/callback" => self.judge(&u),
                _ => ("404 Not Found", "Not found.", None),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    /// Decides on one callback: `None` keeps waiting (wrong or missing `state`).
    fn judge(
        &self,
        u: &Url,
    ) -> (
        &'static str,
        &'static str,
        Option<Result<Secret, AuthError>>,
    ) {
        let get = |k: &str| {
            u.query_pairs()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        if get("state").as_deref() != Some(self.state.as_str()) {
            warn!("authorization callback with a wrong or missing state ignored");
            return ("400 Bad Request", "State mismatch.", None);
        }
        if let Some(err) = get("error") {
            // The error code is an OAuth token like `access_denied`; keep only safe chars.
            let code: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return (
                "200 OK",
                "Authorization failed. You can close this window.",
                Some(Err(AuthError::Callback {
                    reason: format!("the server returned error {code}"),
                })),
            );
        }
        match get("code") {
            Some(code) if !code.is_empty() => (
                "200 OK",
                "Authorized. You can close this window.",
                Some(Ok(Secret::new(code))),
            ),
            _ => (
                "400 Bad Request",
                "Missing code.",
                Some(Err(AuthError::Callback {
                    reason: "the redirect carried no code".into(),
                })),
            ),
        }
    }
}

/// `fhirhose auth login`: prints the authorize URL to stderr, waits for the redirect
/// and returns the grant.
pub async fn login(
    http: &HttpClient,
    cfg: &AuthConfig,
    audit: Arc<dyn AuditSink>,
) -> Result<Grant, AuthError> {
    let pending = begin_login(http, cfg).await?;
    eprintln!(
        "Open this URL in a browser to authorize fhirhose:\n\n  {}\n\nWaiting for the redirect to {} ...",
        pending.authorize_url(),
        pending.redirect_uri()
    );
    pending.finish(audit).await
}

/// Reads an OAuth error body (`{"error": ...}`), if it is one.
pub fn oauth_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_owned)
}
