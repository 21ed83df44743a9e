//! Bulk export lifecycle, file downloads, search paging and injected faults.

mod common;

use std::io::Read as _;

use common::*;
use fhirhose_sandbox::{RunningSandbox, SandboxConfig};
use serde_json::{json, Value};

async fn kickoff(sb: &RunningSandbox, tok: &str, query: &str) -> reqwest::Response {
    http()
        .get(format!("{}/$export{query}", sb.base_url()))
        .bearer_auth(tok)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap()
}

/// Polls until the manifest arrives; returns (number of 202s, manifest).
async fn poll(sb: &RunningSandbox, tok: &str, status_url: &str) -> (u32, Value) {
    let _ = sb;
    let mut waits = 0;
    loop {
        let r = http()
            .get(status_url)
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => {
                assert!(r.headers().contains_key("x-progress"));
                assert!(r.headers().contains_key("retry-after"));
                waits += 1;
                assert!(waits < 10, "export never completed");
            }
            200 => return (waits, r.json().await.unwrap()),
            other => panic!("unexpected status {other}"),
        }
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn export_happy_path() {
    let sb = start(SandboxConfig {
        patients: 6,
        export_polls: 2,
        poll_retry_after: 0,
        resources_per_file: 40,
        ..SandboxConfig::default()
    })
    .await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;

    let r = kickoff(
        &sb,
        &tok,
        "?_type=Patient,Observation&_outputFormat=application/fhir%2Bndjson",
    )
    .await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    assert!(status_url.starts_with(&sb.base_url()));

    let (waits, manifest) = poll(&sb, &tok, &status_url).await;
    assert_eq!(waits, 2);
    assert!(manifest["transactionTime"].is_string());
    assert!(manifest["request"].as_str().unwrap().contains("$export"));
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(manifest["error"], json!([]));
    let output = manifest["output"].as_array().unwrap();
    let patients: u64 = output
        .iter()
        .filter(|o| o["type"] == "Patient")
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    assert_eq!(patients, 6);
    let obs_files = output.iter().filter(|o| o["type"] == "Observation").count();
    assert!(obs_files > 1, "40 resources per file splits Observations");
    assert!(output
        .iter()
        .all(|o| o["type"] == "Patient" || o["type"] == "Observation"));

    // Download the first Observation file: gzip, then ranges.
    let file = output.iter().find(|o| o["type"] == "Observation").unwrap();
    let url = file["url"].as_str().unwrap();
    let plain = c.get(url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["content-type"], "application/fhir+ndjson");
    let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    let last_modified = plain.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = plain.bytes().await.unwrap();
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap());
    for l in &lines {
        let v: Value = serde_json::from_slice(l).unwrap();
        assert_eq!(v["resourceType"], "Observation");
    }

    let gz = c
        .get(url)
        .bearer_auth(&tok)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&gz.bytes().await.unwrap()), body);

    let part = c
        .get(url)
        .bearer_auth(&tok)
        .header("Range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-{}/{}", body.len() - 1, body.len())
    );
    assert_eq!(part.bytes().await.unwrap(), body.slice(10..));

    let same = c
        .get(url)
        .bearer_auth(&tok)
        .header("Range", "bytes=0-4")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 206);
    let by_date = c
        .get(url)
        .bearer_auth(&tok)
        .header("Range", "bytes=0-4")
        .header("If-Range", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(by_date.status(), 206);
    let stale = c
        .get(url)
        .bearer_auth(&tok)
        .header("Range", "bytes=0-4")
        .header("If-Range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    let beyond = c
        .get(url)
        .bearer_auth(&tok)
        .header("Range", format!("bytes={}-", body.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);

    // Files need the token when requiresAccessToken is true.
    assert_eq!(c.get(url).send().await.unwrap().status(), 401);

    // DELETE, then the job is gone.
    let del = c
        .delete(&status_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    assert_eq!(
        c.get(&status_url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(url).bearer_auth(&tok).send().await.unwrap().status(),
        404
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn kickoff_validation_post_parameters_and_levels() {
    let sb = sandbox("").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;

    let no_prefer = c
        .get(format!("{}/$export", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(no_prefer.status(), 400);
    assert_eq!(
        kickoff(&sb, &tok, "?_outputFormat=text/csv").await.status(),
        400
    );
    assert_eq!(
        kickoff(&sb, &tok, "?_since=last-tuesday").await.status(),
        400
    );

    // POST with a Parameters resource, repeated _type accepted by default.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Condition"},
        {"name": "_type", "valueString": "Immunization"},
        {"name": "_since", "valueInstant": "2019-01-01T00:00:00Z"},
        {"name": "_typeFilter", "valueString": "Condition?clinical-status=active"}
    ]});
    let r = c
        .post(format!("{}/Patient/$export", sb.base_url()))
        .bearer_auth(&tok)
        .header("Prefer", "respond-async")
        .json(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Condition") && types.contains(&"Immunization") && types.len() == 2,
        "{types:?}"
    );

    // Group export of all patients excludes non-compartment types like Practitioner.
    let r = c
        .get(format!(
            "{}/Group/{}/$export",
            sb.base_url(),
            fhirhose_sandbox::GROUP_ALL_PATIENTS
        ))
        .bearer_auth(&tok)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let types = manifest["output"].to_string();
    assert!(types.contains("\"Patient\"") && !types.contains("Practitioner"));
    let unknown = c
        .get(format!("{}/Group/nope/$export", sb.base_url()))
        .bearer_auth(&tok)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // _since in the future selects nothing.
    let r = kickoff(&sb, &tok, "?_since=2999-01-01T00:00:00Z").await;
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    assert_eq!(manifest["output"], json!([]));

    // Scope: a token for Observation only may not export Patient explicitly.
    let obs_only = token(&sb, "system/Observation.read").await;
    let r = kickoff(&sb, &obs_only, "?_type=Patient").await;
    assert_eq!(r.status(), 403);
    sb.shutdown().await;
}

#[tokio::test]
async fn vendor_quirks_and_manifest_faults() {
    let sb = sandbox(
        "reject-repeated-type,tiny-files=3,error-file,deleted,delete-404,poll-retry-after=3600,ignore-range",
    )
    .await;
    let tok = token(&sb, "system/*.read").await;
    assert_eq!(
        kickoff(&sb, &tok, "?_type=Patient&_type=Condition")
            .await
            .status(),
        400
    );
    let r = kickoff(&sb, &tok, "?_type=Patient,Condition").await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    let first = http()
        .get(&status_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["retry-after"], "3600");
    let (_, manifest) = poll(&sb, &tok, &status_url).await;
    let output = manifest["output"].as_array().unwrap();
    assert!(output.iter().all(|o| o["count"].as_u64().unwrap() <= 3));
    assert!(output.len() >= 2);

    let c = http();
    let err_url = manifest["error"][0]["url"].as_str().unwrap();
    let body = c
        .get(err_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in body.lines() {
        assert_eq!(
            serde_json::from_str::<Value>(line).unwrap()["resourceType"],
            "OperationOutcome"
        );
    }
    let del_url = manifest["deleted"][0]["url"].as_str().unwrap();
    let body = c
        .get(del_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(first["resourceType"], "Bundle");
    assert_eq!(first["entry"][0]["request"]["method"], "DELETE");

    // ignore-range: a Range request gets the whole file with 200.
    let out_url = output[0]["url"].as_str().unwrap();
    let ranged = c
        .get(out_url)
        .bearer_auth(&tok)
        .header("Range", "bytes=5-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 200);
    assert!(ranged.headers().get("content-range").is_none());
    assert!(ranged.text().await.unwrap().starts_with('{'));

    assert_eq!(
        c.delete(&status_url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn redirect_to_storage_origin_rejects_bearer() {
    let sb = sandbox("redirect-files").await;
    let tok = token(&sb, "system/*.read").await;
    let r = kickoff(&sb, &tok, "?_type=Patient").await;
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let c = http();
    let redirect = c.get(url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&sb.storage_origin()));
    assert!(location.contains("sig="));

    let with_bearer = c.get(&location).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(with_bearer.status(), 400);
    let without = c.get(&location).send().await.unwrap();
    assert_eq!(without.status(), 200);
    assert_eq!(without.text().await.unwrap().lines().count(), 5);
    let tampered = c
        .get(location.replace("sig=", "sig=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 403);

    let log = sb.request_log();
    let storage: Vec<_> = log.iter().filter(|e| e.origin == "storage").collect();
    assert_eq!(storage.len(), 3);
    assert!(storage[0].bearer_present && storage[0].status == 400);
    assert!(storage
        .iter()
        .all(|e| e.query.as_deref().unwrap().contains("sig=REDACTED")));
    assert!(!format!("{log:?}").contains(&tok));
    sb.shutdown().await;
}

#[tokio::test]
async fn injected_statuses_resets_and_truncation() {
    let sb = sandbox("429=first:1@fhir,retry-after=date,503=every:2@status,truncate=first:1@file,reset=first:1@file").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;

    let throttled = c
        .get(format!("{}/Patient", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    let ra = throttled.headers()["retry-after"].to_str().unwrap();
    assert!(ra.ends_with(" GMT"), "HTTP-date Retry-After, got {ra}");
    assert_eq!(
        c.get(format!("{}/Patient", sb.base_url()))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let r = kickoff(&sb, &tok, "?_type=Patient").await;
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    let s1 = c
        .get(&status_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .status();
    let s2 = c
        .get(&status_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!((s1.as_u16(), s2.as_u16()), (202, 503));
    let manifest: Value = c
        .get(&status_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = manifest["output"][0]["url"].as_str().unwrap();

    // First download: truncated (clean end, half the bytes) — reset is ruled out for the
    // same request because only one body fault applies.
    let truncated = c
        .get(url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // Second download: reset mid-body (the reset rule's first eligible request was the
    // first download too, so use a fresh spec).
    let full = c
        .get(url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(truncated.len(), full.len() / 2);

    sb.set_faults("reset=first:1@file".parse().unwrap());
    let reset = c.get(url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(reset.status(), 200);
    assert!(reset.bytes().await.is_err(), "body must fail mid-stream");
    let log = sb.request_log();
    assert!(log.iter().any(|e| e.fault.as_deref() == Some("truncate")));
    assert!(log.iter().any(|e| e.fault.as_deref() == Some("reset")));
    assert!(log.iter().any(|e| e.fault.as_deref() == Some("429")));
    sb.shutdown().await;
}

#[tokio::test]
async fn search_and_read_with_paging() {
    let sb = sandbox("").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;
    let pid = sb.patient_ids()[1].clone();

    let mut url = format!("{}/Observation?patient={pid}&_count=5", sb.base_url());
    let mut seen = 0;
    let mut total = None;
    for _ in 0..100 {
        let b: Value = c
            .get(&url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(b["type"], "searchset");
        total = b["total"].as_u64();
        for e in b["entry"].as_array().unwrap() {
            assert_eq!(
                e["resource"]["subject"]["reference"],
                format!("Patient/{pid}")
            );
            seen += 1;
        }
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(Some(seen), total);
    assert!(seen > 5, "several pages");

    let p: Value = c
        .get(format!("{}/Patient/{pid}", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["id"], pid.as_str());
    let missing = c
        .get(format!("{}/Patient/nope", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let recent: Value = c
        .get(format!(
            "{}/Condition?_lastUpdated=gt2999-01-01",
            sb.base_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recent["total"], 0);
    sb.shutdown().await;
}

#[tokio::test]
async fn slow_token_faults_export_error_and_open_files() {
    let sb = start(SandboxConfig {
        patients: 4,
        poll_retry_after: 0,
        require_access_token: false,
        faults: "slow=60ms@fhir,503=first:1@token".parse().unwrap(),
        ..SandboxConfig::default()
    })
    .await;
    let c = http();
    // The token endpoint answers 503 once, then works.
    assert_eq!(
        token_response(&sb, "ES384", "es-1", "system/*.read")
            .await
            .status(),
        503
    );
    let tok = token(&sb, "system/*.read").await;

    let t = std::time::Instant::now();
    assert_eq!(
        c.get(format!("{}/Patient", sb.base_url()))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(t.elapsed() >= std::time::Duration::from_millis(60));

    // requiresAccessToken=false: files download without a token; the patient parameter
    // narrows a Patient-level export.
    let pid = sb.patient_ids()[0].clone();
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Encounter"},
        {"name": "patient", "valueReference": {"reference": format!("Patient/{pid}")}}
    ]});
    let r = c
        .post(format!("{}/Patient/$export", sb.base_url()))
        .bearer_auth(&tok)
        .header("Prefer", "respond-async")
        .json(&params)
        .send()
        .await
        .unwrap();
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    assert_eq!(manifest["requiresAccessToken"], false);
    for o in manifest["output"].as_array().unwrap() {
        let body = c
            .get(o["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in body.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let owner = if v["resourceType"] == "Patient" {
                v["id"].as_str().unwrap().to_owned()
            } else {
                v["subject"]["reference"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Patient/")
                    .to_owned()
            };
            assert_eq!(owner, pid);
        }
    }

    // export-error: the job fails with an OperationOutcome.
    sb.set_faults("export-error".parse().unwrap());
    let r = kickoff(&sb, &tok, "").await;
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();
    let mut last = 0;
    for _ in 0..3 {
        last = c
            .get(&status_url)
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(last, 500);
    sb.shutdown().await;
}

#[tokio::test]
async fn bulk_v4_single_job_and_concurrency_quirks() {
    let sb = sandbox("bulk-v4,single-job,max-concurrent-files=1,slow=250ms@file").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;
    let post = |params: Value| {
        c.post(format!("{}/$export", sb.base_url()))
            .bearer_auth(&tok)
            .header("Prefer", "respond-async")
            .json(&params)
            .send()
    };
    // 4.0: GET kick-off is refused, comma-joined _type too.
    assert_eq!(kickoff(&sb, &tok, "?_type=Patient").await.status(), 405);
    let comma = json!({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient,Condition"}]});
    assert_eq!(post(comma).await.unwrap().status(), 400);
    let ok = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"}, {"name": "_type", "valueString": "Condition"}]});
    let r = post(ok.clone()).await.unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_owned();

    // single-job: a second kick-off while the first is in progress is throttled.
    let busy = post(ok.clone()).await.unwrap();
    assert_eq!(busy.status(), 429);
    assert!(busy.headers().contains_key("retry-after"));

    let (_, manifest) = poll(&sb, &tok, &status_url).await;
    assert!(manifest.get("outcome").is_some() && manifest.get("error").is_none());
    assert_eq!(
        post(ok).await.unwrap().status(),
        202,
        "free again once the first job is done"
    );

    // max-concurrent-files=1: of three simultaneous downloads, one succeeds.
    let url = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let get = || c.get(&url).bearer_auth(&tok).send();
    let (a, b, d) = tokio::join!(get(), get(), get());
    let mut statuses = [a, b, d].map(|r| r.unwrap().status().as_u16());
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429, 429]);
    assert_eq!(get().await.unwrap().status(), 200, "slots are released");

    // The all-patients Group is readable.
    let g: Value = c
        .get(format!(
            "{}/Group/{}",
            sb.base_url(),
            fhirhose_sandbox::GROUP_ALL_PATIENTS
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(g["quantity"], 5);
    sb.shutdown().await;
}

#[tokio::test]
async fn malformed_lines_and_crlf() {
    let sb = sandbox("bad-line,crlf").await;
    let tok = token(&sb, "system/*.read").await;
    let r = kickoff(&sb, &tok, "?_type=Observation").await;
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let file = &manifest["output"][0];
    let body = http()
        .get(file["url"].as_str().unwrap())
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.ends_with("\r\n"));
    let lines: Vec<&str> = body.split("\r\n").filter(|l| !l.is_empty()).collect();
    let bad = lines
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).is_err())
        .count();
    assert_eq!(bad, 1);
    assert_eq!(lines.len() as u64, file["count"].as_u64().unwrap() + 1);
    sb.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_time_to_next_token() {
    let sb = sandbox("rate-limit=2/m@fhir").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;
    let url = format!("{}/Patient?_count=1", sb.base_url());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if let Some(v) = r.headers().get("retry-after") {
            retry_after = v.to_str().unwrap().parse::<u64>().ok();
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(matches!(retry_after, Some(29..=30)), "{retry_after:?}");
    let log = sb.request_log();
    assert_eq!(log.last().unwrap().fault.as_deref(), Some("rate-limit"));
    sb.shutdown().await;
}

#[tokio::test]
async fn type_filter_narrows_the_export() {
    let sb = sandbox("").await;
    let tok = token(&sb, "system/*.read").await;
    let r = kickoff(
        &sb,
        &tok,
        "?_type=Observation,Patient&_typeFilter=Observation%3Fcategory%3Dlaboratory",
    )
    .await;
    assert_eq!(r.status(), 202);
    let (_, manifest) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let mut observations = 0;
    let mut patients = 0;
    for o in manifest["output"].as_array().unwrap() {
        let body = http()
            .get(o["url"].as_str().unwrap())
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in body.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v["resourceType"] == "Observation" {
                observations += 1;
                assert_eq!(v["category"][0]["coding"][0]["code"], "laboratory");
            } else {
                patients += 1;
            }
        }
    }
    assert!(observations > 0);
    assert_eq!(patients, 5, "types without a filter are unaffected");
    let bad = kickoff(&sb, &tok, "?_typeFilter=nonsense").await;
    assert_eq!(bad.status(), 400);
    sb.shutdown().await;
}

#[tokio::test]
async fn incremental_export_sees_updates_and_deletions() {
    let sb = sandbox("").await;
    let c = http();
    let tok = token(&sb, "system/*.read").await;
    let r = kickoff(&sb, &tok, "?_type=Condition,Patient").await;
    let (_, first) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let since = first["transactionTime"].as_str().unwrap().to_owned();
    let cond_url = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Condition")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = c
        .get(&cond_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let touched = sb.touch_resources("Condition", 3);
    assert_eq!(touched.len(), 3);
    let gone_patient = sb.patient_ids()[4].clone();
    assert!(sb.delete_resource("Patient", &gone_patient));
    assert!(!sb.delete_resource("Patient", "no-such-id"));

    // The first job's files are a snapshot.
    let after = c
        .get(&cond_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(before, after);

    let r = kickoff(
        &sb,
        &tok,
        &format!("?_type=Condition,Patient&_since={since}"),
    )
    .await;
    let (_, second) = poll(&sb, &tok, r.headers()["content-location"].to_str().unwrap()).await;
    let output = second["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{second}");
    assert_eq!(output[0]["type"], "Condition");
    assert_eq!(output[0]["count"], 3);
    let body = c
        .get(output[0]["url"].as_str().unwrap())
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in body.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(touched.contains(&v["id"].as_str().unwrap().to_owned()));
        assert!(v["meta"]["lastUpdated"].as_str().unwrap() >= since.as_str());
    }
    let deleted_url = second["deleted"][0]["url"].as_str().unwrap();
    let deleted = c
        .get(deleted_url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bundle: Value = serde_json::from_str(deleted.lines().next().unwrap()).unwrap();
    assert_eq!(
        bundle["entry"][0]["request"]["url"],
        format!("Patient/{gone_patient}")
    );

    let read = c
        .get(format!("{}/Patient/{gone_patient}", sb.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 410);
    assert_eq!(sb.patient_ids().len(), 4);
    sb.shutdown().await;
}
