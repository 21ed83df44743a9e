//! Status polling against a scripted server: computed backoff when the server gives no
//! hint, a transient OperationOutcome while polling, partial manifests chained by `link`,
//! and the deadline. Virtual time (`ManualClock`): no test sleeps for real.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use fhirhose_ingest::bulk::{BulkErrorKind, PollPolicy, Poller};
use fhirhose_ingest::http::{HttpConfig, ManualClock};
use http_support::{json, resp, serve};
use serde_json::json;

fn poller(clock: &ManualClock, deadline: Duration) -> Poller {
    let http = HttpConfig {
        use_system_proxy: false,
        max_attempts: 1,
        jitter_seed: Some(1),
        ..HttpConfig::default()
    }
    .build_with_clock(Arc::new(clock.clone()))
    .unwrap();
    Poller::new(
        http,
        PollPolicy {
            floor: Duration::from_secs(2),
            ceiling: Duration::from_secs(20),
            retry_after_cap: Duration::from_secs(60),
            deadline,
            jitter_seed: Some(9),
        },
    )
}

#[tokio::test]
async fn bulk_poll_backs_off_waits_out_transient_outcomes_and_merges_partial_manifests() {
    let srv = serve(|r, n| {
        if r.path == "/status/1" {
            match n {
                0..=4 => resp(202, &[("x-progress", "busy")], ""),
                5 => json(
                    503,
                    json!({"resourceType": "OperationOutcome",
                           "issue": [{"severity": "error", "code": "transient"}]}),
                ),
                _ => json(
                    200,
                    json!({"transactionTime": "2024-05-01T00:00:00Z", "requiresAccessToken": false,
                           "output": [{"type": "Patient", "url": "/f/1.ndjson", "count": 2}],
                           "link": [{"relation": "next", "url": "/status/1/page2"}]}),
                ),
            }
        } else {
            json(
                200,
                json!({"output": [{"type": "Observation", "url": "/f/2.ndjson"}],
                       "error": [{"type": "OperationOutcome", "url": "/f/3.ndjson"}]}),
            )
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let p = poller(&clock, Duration::from_secs(86_400));
    let (m, stats) = p
        .wait_for_manifest(&srv.url("status/1"), "job-1", Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(m.files.len(), 3);
    assert_eq!(m.transaction_time, "2024-05-01T00:00:00Z");
    assert_eq!(stats.polls, 7);
    assert_eq!(stats.waits_by_reason.get("backoff"), Some(&5));
    assert_eq!(stats.waits_by_reason.get("throttled"), Some(&1));
    assert_eq!(stats.last_progress.as_deref(), Some("busy"));
    // Backoff from the floor towards the ceiling, never below the floor or above it.
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 6);
    assert!(sleeps
        .iter()
        .all(|d| *d >= Duration::from_secs(2) && *d <= Duration::from_secs(20)));
    assert!(sleeps[4] > sleeps[0], "{sleeps:?}");
    assert_eq!(srv.count_path("/status/1/page2"), 1);
}

#[tokio::test]
async fn bulk_poll_gives_up_at_the_deadline_and_on_fatal_outcomes() {
    let srv = serve(|r, _| {
        if r.path == "/slow" {
            resp(202, &[("retry-after", "3600")], "")
        } else {
            json(
                400,
                json!({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "fatal", "code": "not-supported"}]}),
            )
        }
    })
    .await;
    let clock = ManualClock::starting_now();
    let p = poller(&clock, Duration::from_secs(3 * 86_400));
    let err = p
        .wait_for_manifest(&srv.url("slow"), "job-2", Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BulkErrorKind::Deadline);
    // Retry-After 3600 capped to 60 s: the job was polled about every minute.
    assert!(clock.sleeps().iter().all(|d| *d == Duration::from_secs(60)));
    assert_eq!(srv.count_path("/slow"), 11, "polls at 0, 60, ..., 600 s");
    let err = p
        .wait_for_manifest(&srv.url("bad"), "job-3", Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), BulkErrorKind::Server);
    assert!(err.to_string().contains("fatal:not-supported"), "{err}");
}
