//! HTTP transport behaviour against scripted local servers. Waits go through a
//! `ManualClock`, so no test sleeps to prove a backoff.

mod http_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirhose_ingest::auth::{AuthError, ScopeDenied};
use fhirhose_ingest::http::{
    BearerSource, Clock, HttpClient, HttpConfig, HttpErrorKind, Interaction, ManualClock, Request,
    RequestDescr, RequestGuard, Secret, TokenPolicy,
};
use futures::future::BoxFuture;
use http_support::{capture_logs, resp, serve};
use reqwest::Method;
use time::macros::format_description;

fn client(clock: &ManualClock, max_attempts: u32) -> HttpClient {
    HttpConfig {
        max_attempts,
        jitter_seed: Some(3),
        use_system_proxy: false,
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap()
}

/// Hands out `t1`, then `t2`, ... on each invalidation.
#[derive(Default)]
struct FakeBearer {
    version: AtomicUsize,
    invalidations: AtomicUsize,
}

impl BearerSource for FakeBearer {
    fn bearer(&self) -> BoxFuture<'_, Result<Secret, AuthError>> {
        let v = self.version.load(Ordering::SeqCst) + 1;
        Box::pin(async move { Ok(Secret::new(format!("t{v}"))) })
    }
    fn invalidate(&self, _rejected: &Secret) -> BoxFuture<'_, Result<Secret, AuthError>> {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        let v = self.version.fetch_add(1, Ordering::SeqCst) + 2;
        Box::pin(async move { Ok(Secret::new(format!("t{v}"))) })
    }
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let srv = serve(|_, n| {
        if n < 2 {
            resp(503, &[("retry-after", "7")], "busy")
        } else {
            resp(200, &[], "ok")
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let r = client(&clock, 5)
        .get(srv.url("fhir/Patient"))
        .await
        .unwrap();
    assert_eq!(r.attempts(), 3);
    assert_eq!(r.bytes().await.unwrap(), "ok");
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(7); 2]);
}

#[tokio::test]
async fn retry_after_http_date_and_429_halves_concurrency() {
    let clock = ManualClock::starting_now();
    let when = clock.now_utc() + Duration::from_secs(30);
    let date = when
        .format(format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    let srv = serve(move |_, n| {
        if n == 0 {
            resp(429, &[("retry-after", &date)], "slow down")
        } else {
            resp(200, &[], "ok")
        }
    })
    .await;
    let c = client(&clock, 5);
    let before = c.concurrency_limit(&srv.base);
    let (logs, _guard) = capture_logs();
    let r = c.get(srv.url("fhir/Observation?code=x")).await.unwrap();
    assert_eq!(r.status(), 200);
    // Retry-After (30 s; sub-second truncation of the date allowed) beats backoff.
    let sleeps = clock.sleeps();
    let total: Duration = sleeps.iter().sum();
    assert!(
        total > Duration::from_secs(28) && total <= Duration::from_secs(30),
        "{sleeps:?}"
    );
    assert_eq!(c.concurrency_limit(&srv.base), (before / 2).max(1));
    let out = logs.contents();
    assert!(out.contains("retrying request"), "{out}");
    assert!(out.contains("reason=\"throttled\""), "{out}");
    assert!(out.contains("status=429"), "{out}");
    assert!(!out.contains("code=x"), "query strings are redacted: {out}");
}

#[tokio::test]
async fn success_exposes_retry_after_for_polling() {
    let srv = serve(|_, _| resp(202, &[("retry-after", "120"), ("x-progress", "50%")], "")).await;
    let clock = ManualClock::starting_now();
    let r = client(&clock, 3)
        .get(srv.url("fhir/bulkstatus/1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.retry_after(), Some(Duration::from_secs(120)));
    assert!(clock.sleeps().is_empty(), "202 is success, not a retry");
}

#[tokio::test]
async fn retry_after_is_capped() {
    let srv = serve(|_, n| {
        if n == 0 {
            resp(503, &[("retry-after", "86400")], "")
        } else {
            resp(200, &[], "")
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let c = HttpConfig {
        retry_after_cap: Duration::from_secs(90),
        max_elapsed: Duration::from_secs(3600),
        use_system_proxy: false,
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap();
    c.get(srv.url("x")).await.unwrap();
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(90)]);
}

#[tokio::test]
async fn server_errors_are_retried_then_exhausted() {
    let srv = serve(|_, _| resp(500, &[], "boom")).await;
    let clock = ManualClock::starting_now();
    let err = client(&clock, 3)
        .get(srv.url("x?secret=1"))
        .await
        .unwrap_err();
    assert_eq!(srv.count(), 3);
    assert_eq!(err.kind(), HttpErrorKind::Transient);
    assert_eq!(err.status(), Some(500));
    assert!(matches!(
        err,
        fhirhose_ingest::http::HttpError::Exhausted { attempts: 3, .. }
    ));
    assert_eq!(clock.sleeps().len(), 2);
    // Full jitter: each wait within base * 2^(n-1).
    for (i, w) in clock.sleeps().iter().enumerate() {
        assert!(*w <= Duration::from_millis(500 << i), "{i}: {w:?}");
    }
    let msg = err.to_string();
    assert!(!msg.contains("secret"), "{msg}");
    assert_eq!(err.body().unwrap(), "boom");
}

#[tokio::test]
async fn elapsed_time_bounds_retries() {
    let srv = serve(|_, _| resp(503, &[("retry-after", "100")], "")).await;
    let clock = ManualClock::starting_now();
    let c = HttpConfig {
        max_attempts: 100,
        max_elapsed: Duration::from_secs(250),
        use_system_proxy: false,
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap();
    let err = c.get(srv.url("x")).await.unwrap_err();
    assert_eq!(
        srv.count(),
        3,
        "0 s, 100 s, 200 s; a 4th would end at 300 s"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn not_found_is_fatal_and_not_retried() {
    let srv = serve(|_, _| resp(404, &[], "{\"resourceType\":\"OperationOutcome\"}")).await;
    let clock = ManualClock::starting_now();
    let err = client(&clock, 5)
        .get(srv.url("fhir/Patient/1"))
        .await
        .unwrap_err();
    assert_eq!(srv.count(), 1);
    assert_eq!(err.kind(), HttpErrorKind::Fatal);
    assert!(!err.is_retryable());
    assert!(clock.sleeps().is_empty());
    assert!(
        !err.to_string().contains("OperationOutcome"),
        "no body in Display"
    );
}

#[tokio::test]
async fn forbidden_is_not_retried() {
    let srv = serve(|_, _| resp(403, &[], "")).await;
    let clock = ManualClock::starting_now();
    let err = client(&clock, 5).get(srv.url("x")).await.unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Forbidden);
    assert_eq!(srv.count(), 1);
}

#[tokio::test]
async fn unauthorized_refreshes_once_and_replays_once() {
    let srv = serve(|r, _| {
        if r.header("authorization").as_deref() == Some("Bearer t2") {
            resp(200, &[], "ok")
        } else {
            resp(401, &[], "")
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let bearer = Arc::new(FakeBearer::default());
    let c = client(&clock, 1).with_bearer(srv.base.clone(), bearer.clone());
    let r = c.get(srv.url("fhir/Patient/1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: Vec<_> = srv
        .hits()
        .iter()
        .map(|h| h.header("authorization"))
        .collect();
    assert_eq!(
        seen,
        vec![Some("Bearer t1".to_owned()), Some("Bearer t2".to_owned())]
    );
    assert_eq!(bearer.invalidations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unauthorized_twice_fails_after_one_refresh() {
    let srv = serve(|_, _| resp(401, &[], "")).await;
    let clock = ManualClock::starting_now();
    let bearer = Arc::new(FakeBearer::default());
    let c = client(&clock, 5).with_bearer(srv.base.clone(), bearer.clone());
    let err = c.get(srv.url("fhir/Patient/1")).await.unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Unauthorized);
    assert_eq!(srv.count(), 2);
    assert_eq!(bearer.invalidations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cross_origin_redirect_drops_authorization() {
    let files = serve(|_, _| resp(200, &[], "ndjson")).await;
    let target = files.url("bucket/file.ndjson?X-Amz-Signature=abc");
    let t2 = target.clone();
    let fhir = serve(move |r, _| {
        if r.path == "/fhir/same" {
            resp(302, &[("location", "/fhir/moved")], "")
        } else if r.path == "/fhir/file" {
            resp(307, &[("location", t2.as_str())], "")
        } else {
            resp(200, &[], "here")
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let c = client(&clock, 1).with_bearer(fhir.url("fhir/"), Arc::new(FakeBearer::default()));

    // Same-origin redirect keeps the token.
    c.get(fhir.url("fhir/same")).await.unwrap();
    let hits = fhir.hits();
    assert_eq!(hits[1].path, "/fhir/moved");
    assert_eq!(
        hits[1].header("authorization").as_deref(),
        Some("Bearer t1")
    );

    // Cross-origin redirect drops it, even with requiresAccessToken.
    let r = c
        .send(Request::get(fhir.url("fhir/file")).token(TokenPolicy::Required))
        .await
        .unwrap();
    assert_eq!(r.url().path(), "/bucket/file.ndjson");
    assert_eq!(r.bytes().await.unwrap(), "ndjson");
    assert_eq!(
        fhir.hits()[2].header("authorization").as_deref(),
        Some("Bearer t1")
    );
    let f = files.hits();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].header("authorization"), None);
    assert_eq!(f[0].query.as_deref(), Some("X-Amz-Signature=abc"));
}

#[tokio::test]
async fn token_goes_to_file_urls_only_when_required() {
    let files = serve(|_, _| resp(200, &[], "x")).await;
    let fhir = serve(|_, _| resp(200, &[], "x")).await;
    let clock = ManualClock::starting_now();
    let c = client(&clock, 1).with_bearer(fhir.url("fhir/"), Arc::new(FakeBearer::default()));
    c.get(files.url("a.ndjson")).await.unwrap();
    c.send(Request::get(files.url("b.ndjson")).token(TokenPolicy::Required))
        .await
        .unwrap();
    c.send(Request::get(fhir.url("fhir/Patient/1")).token(TokenPolicy::Never))
        .await
        .unwrap();
    let f = files.hits();
    assert_eq!(
        f[0].header("authorization"),
        None,
        "other origin, not required"
    );
    assert_eq!(f[1].header("authorization").as_deref(), Some("Bearer t1"));
    assert_eq!(fhir.hits()[0].header("authorization"), None);
}

#[tokio::test]
async fn request_id_is_sent_and_stable_across_retries() {
    let srv = serve(|_, n| {
        if n == 0 {
            resp(502, &[], "")
        } else {
            resp(200, &[], "")
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let r = client(&clock, 3).get(srv.url("x")).await.unwrap();
    let ids: Vec<_> = srv
        .hits()
        .iter()
        .map(|h| h.header("x-request-id").expect("x-request-id sent"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
    let id = uuid::Uuid::parse_str(&ids[0]).unwrap();
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(r.request_id(), ids[0]);
}

struct DenyObservation;

impl RequestGuard for DenyObservation {
    fn check(&self, req: &RequestDescr<'_>) -> Result<(), ScopeDenied> {
        match req.interaction {
            Interaction::Search {
                resource_type: Some(t),
                ..
            } if t == "Observation" => Err(ScopeDenied::new(
                "system/Observation.rs",
                "search Observation",
            )),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn guard_refuses_before_sending() {
    let srv = serve(|_, _| resp(200, &[], "")).await;
    let clock = ManualClock::starting_now();
    let c = client(&clock, 3)
        .with_bearer(srv.url("fhir/"), Arc::new(FakeBearer::default()))
        .with_guard(Arc::new(DenyObservation));
    let err = c
        .get(srv.url("fhir/Observation?patient=123"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::ScopeDenied);
    assert_eq!(err.scope_denied().unwrap().missing, "system/Observation.rs");
    assert_eq!(srv.count(), 0, "nothing reached the server");
    c.get(srv.url("fhir/Patient?name=x")).await.unwrap();
    assert_eq!(srv.count(), 1);
}

#[tokio::test]
async fn timeouts_replay_only_idempotent_requests() {
    let srv = serve(|_, _| resp(200, &[], "")).await;
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = url::Url::parse(&format!("http://{}/", silent.local_addr().unwrap())).unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = silent.accept().await.unwrap();
            h2.lock().unwrap().push(s);
        }
    });
    let clock = ManualClock::starting_now();
    let c = HttpConfig {
        max_attempts: 2,
        response_timeout: Duration::from_millis(150),
        use_system_proxy: false,
        jitter_seed: Some(1),
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap();
    let err = c
        .send(Request::new(Method::POST, silent_url.join("$export").unwrap()).body("{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Timeout);
    assert!(!matches!(
        err,
        fhirhose_ingest::http::HttpError::Exhausted { .. }
    ));
    assert!(
        clock.sleeps().is_empty(),
        "POST not replayed after a timeout"
    );
    let err = c.get(silent_url.join("status").unwrap()).await.unwrap_err();
    assert!(matches!(
        err,
        fhirhose_ingest::http::HttpError::Exhausted { attempts: 2, .. }
    ));
    drop(srv);
}
