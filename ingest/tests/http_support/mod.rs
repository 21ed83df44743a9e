//! Test helpers shared by `http_*` and `auth_*` tests: a scripted axum server on
//! 127.0.0.1:0 that records every request, and a log capture.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use url::Url;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Response + Send + Sync;

#[derive(Clone)]
struct St {
    hits: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Handler>,
}

/// A running test server.
#[derive(Clone)]
pub struct TestServer {
    pub base: Url,
    pub hits: Arc<Mutex<Vec<Recorded>>>,
}

impl TestServer {
    pub fn hits(&self) -> Vec<Recorded> {
        self.hits.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }
}

async fn handle(
    axum::extract::State(st): axum::extract::State<St>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let n = {
        let mut hits = st.hits.lock().unwrap();
        hits.push(rec.clone());
        hits.len() - 1
    };
    (st.handler)(&rec, n)
}

/// Starts a server whose responses come from `handler(request, hit_index)`.
pub async fn serve<F>(handler: F) -> TestServer
where
    F: Fn(&Recorded, usize) -> Response + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let st = St {
        hits: hits.clone(),
        handler: Arc::new(handler),
    };
    let app = axum::Router::new().fallback(handle).with_state(st);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer {
        base: Url::parse(&format!("http://{addr}/")).unwrap(),
        hits,
    }
}

/// Builds a response.
pub fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(axum::body::Body::from(body.into())).unwrap()
}

pub fn json(status: u16, v: serde_json::Value) -> Response {
    resp(
        status,
        &[("content-type", "application/json")],
        v.to_string(),
    )
}

/// A `MakeWriter` collecting formatted log output.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs (for this thread) a trace-level subscriber writing into the returned buffer.
pub fn capture_logs() -> (LogBuf, tracing::subscriber::DefaultGuard) {
    let buf = LogBuf::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(sub);
    // Other test threads without a subscriber may have cached "never" interest for our
    // callsites; make them ask again.
    tracing::callsite::rebuild_interest_cache();
    (buf, guard)
}
