//! The `--metrics-addr` endpoint: `GET /metrics` in the Prometheus text format, for as long
//! as the command runs. Any other path is a 404. The listener is bound before the command
//! does any work, so a busy port is a usage error rather than a lost scrape.

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use tracing::{info, warn};

/// A running endpoint; stops when dropped.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(CONTENT_TYPE, fhirhose_metrics::TEXT_CONTENT_TYPE)],
        fhirhose_metrics::render(),
    )
}

impl MetricsServer {
    pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| {
                crate::cli::UsageError(format!("cannot listen on --metrics-addr {addr}: {e}"))
            })
            .context("metrics endpoint")?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/metrics", get(metrics));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        });
        info!(addr = %addr, "metrics endpoint listening on /metrics");
        Ok(Self { addr, task })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_the_text_format() {
        fhirhose_metrics::catalogue::EXPORT_KICKOFFS.inc(&["server-test"]);
        let s = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut c = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("content-type: text/plain; version=0.0.4"),
            "{body}"
        );
        assert!(
            body.contains("fhirhose_export_kickoffs_total{source=\"server-test\"} 1"),
            "{body}"
        );
        // A second bind on the same port is a usage error (exit code 2).
        let e = MetricsServer::bind(s.addr()).await.unwrap_err();
        assert_eq!(crate::cli::exit_code_for(&e), 2);
    }
}
