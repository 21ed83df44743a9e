//! FHIR Bulk Data export: kick-off, status, manifest, files, DELETE.
//!
//! ```text
//!  kick-off (GET/POST $export, Prefer: respond-async)
//!     │ 202 Content-Location: /fhir/bulkstatus/{job}        (400 without respond-async,
//!     ▼                                                      bad _outputFormat/_since/_type)
//!  in progress ── GET status ──► 202 X-Progress, Retry-After  (export_polls times and at
//!     │                                                        least export_min_duration)
//!     ▼
//!  complete ──── GET status ──► 200 manifest {transactionTime, request, requiresAccessToken,
//!     │                              output[{type,url,count}], deleted[...], error[...]}
//!     │          (export-error fault: 500 + OperationOutcome instead)
//!     │
//!  DELETE status ─► 202, then the job and its files are gone (404)
//! ```
//!
//! The selection is fixed at kick-off (a snapshot): `_type` (comma-joined or repeated),
//! `_since` (resources whose `meta.lastUpdated` >= `_since`), the export level (system,
//! Patient, Group [`crate::GROUP_ALL_PATIENTS`]), and the token's scopes. Without `_type`,
//! types the token may not read are silently left out; an explicit `_type` the token may
//! not read is a 403. `_typeFilter=Type?search` applies the search parameters the
//! sandbox's search supports (`_id`, `patient`, `category`, `_lastUpdated`; others are
//! ignored). `_elements` and `includeAssociatedData` are accepted and ignored. With
//! `_since`, the manifest's `deleted` file lists (as transaction Bundles of DELETE entries)
//! the selected types' resources deleted at or after `_since`
//! (`RunningSandbox::delete_resource`); the `deleted` fault adds synthetic ones.
//!
//! Files (`/files/{job}/{n}.ndjson`) are NDJSON, gzip-encoded when the client sends
//! `Accept-Encoding: gzip` and no `Range`. `Range: bytes=a-b`, `a-` and `-n` answer 206
//! with `Content-Range`; `If-Range` with a stale validator answers 200 with the whole
//! file; an unsatisfiable range is 416. `ETag` and `Last-Modified` are stable per file.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::faults::FaultSpec;
use crate::scopes;
use crate::server::{
    authenticate, http_date, lock, now_instant, outcome, parse_filters, random_hex, require,
    unix_now, visible, Filters, Req, Shared,
};
use crate::store::{parse_time_ms, Entry};
use crate::GROUP_ALL_PATIENTS;

/// Lifetime of the storage origin's signed URLs (S3's default pre-sign is 15 minutes).
const SIGNED_URL_LIFETIME_S: i64 = 900;
/// What the `bad-line` fault inserts: a resource cut off mid-object.
const MALFORMED_LINE: &[u8] = br#"{"resourceType":"Observation","id":"malformed","status":"#;
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

#[derive(Debug, Clone, Copy)]
pub(crate) enum Level<'a> {
    System,
    Patient,
    Group(&'a str),
}

#[derive(Debug)]
enum Content {
    Lines {
        lines: Vec<Bytes>,
        /// `\r\n` line endings (`crlf` fault).
        crlf: bool,
        /// A malformed JSON line in the middle (`bad-line` fault).
        bad_line: bool,
    },
    Inline(Bytes),
}

#[derive(Debug)]
enum FileKind {
    Output,
    Error,
    Deleted,
}

#[derive(Debug)]
struct ExportFile {
    kind: FileKind,
    ty: String,
    count: usize,
    content: Content,
}

#[derive(Debug)]
pub(crate) struct Job {
    client_id: Option<String>,
    request: String,
    transaction_time: String,
    last_modified: String,
    created: Instant,
    polls: u32,
    files: Vec<Arc<ExportFile>>,
    fail: bool,
    requires_token: bool,
    /// Bulk Data 4.0 manifest (`outcome` instead of `error`).
    v4: bool,
}

impl Job {
    fn is_done(&self, sh: &Shared) -> bool {
        self.polls > sh.cfg.export_polls && self.created.elapsed() >= sh.cfg.export_min_duration
    }
}

fn bad_request(msg: &str) -> Response {
    outcome(StatusCode::BAD_REQUEST, "invalid", msg)
}

/// Kick-off parameters from the query (GET) or a Parameters resource (POST).
fn kickoff_params(r: &Req) -> Result<Vec<(String, String)>, Response> {
    let mut params = r.query.clone();
    if r.method == "POST" && !r.body.is_empty() {
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| bad_request(&format!("POST body is not JSON: {e}")))?;
        if v["resourceType"] != "Parameters" {
            return Err(bad_request(
                "POST kick-off body must be a Parameters resource",
            ));
        }
        for p in v["parameter"].as_array().into_iter().flatten() {
            let Some(name) = p["name"].as_str() else {
                continue;
            };
            let value = p.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(k, v)| match k.as_str() {
                        "valueReference" => v["reference"].as_str().map(str::to_owned),
                        _ => v.as_str().map(str::to_owned),
                    })
            });
            if let Some(value) = value {
                params.push((name.to_owned(), value));
            }
        }
    }
    Ok(params)
}

pub(crate) fn kickoff(sh: &Shared, r: &Req, level: Level<'_>) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    if !r
        .header("prefer")
        .is_some_and(|p| p.contains("respond-async"))
    {
        return bad_request("bulk export requires the header Prefer: respond-async");
    }
    let params = match kickoff_params(r) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let spec: FaultSpec = lock(&sh.faults).spec.clone();
    if spec.bulk_v4 && r.method != "POST" {
        return outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "bulk export kick-off requires POST with a Parameters resource",
        );
    }
    if spec.single_job {
        let busy = lock(&sh.jobs)
            .values()
            .any(|j| j.client_id == grant.client_id && !j.is_done(sh));
        if busy {
            let mut resp = outcome(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "another export job of this client is still in progress",
            );
            let retry = spec.poll_retry_after.unwrap_or(sh.cfg.poll_retry_after);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            return resp;
        }
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Level::Group(id) = level {
        if id != GROUP_ALL_PATIENTS {
            return outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("Group/{id} not found"),
            );
        }
    }
    if let Some(f) = get("_outputFormat") {
        if !OUTPUT_FORMATS.contains(&f) {
            return bad_request(&format!(
                "unsupported _outputFormat {f}; use application/fhir+ndjson"
            ));
        }
    }
    let since = match get("_since") {
        Some(s) => match parse_time_ms(s) {
            Some(ms) => Some(ms),
            None => return bad_request(&format!("cannot parse _since `{s}`")),
        },
        None => None,
    };
    let type_params: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .map(|(_, v)| v.as_str())
        .collect();
    if spec.bulk_v4 && type_params.iter().any(|t| t.contains(',')) {
        return bad_request("comma-joined _type values are not supported; repeat the parameter");
    }
    if spec.reject_repeated_type && type_params.len() > 1 {
        return bad_request("repeated _type parameters are not supported; join types with commas");
    }
    let requested: Vec<&str> = type_params
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let patient_level = !matches!(level, Level::System);
    // The `patient` parameter (Bulk Data 2.0, POST) narrows a Patient/Group export.
    let only_patients: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "patient")
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().trim_start_matches("Patient/"))
        .filter(|v| !v.is_empty())
        .collect();
    if !patient_level && !only_patients.is_empty() {
        return bad_request("the patient parameter applies to Patient and Group exports only");
    }
    let type_filters = match parse_type_filters(&params) {
        Ok(f) => f,
        Err(msg) => return bad_request(&msg),
    };
    // One read guard for the whole selection (see `Shared::store`).
    let store = sh.store();
    let in_compartment = |ty: &str| {
        store
            .entries(ty)
            .first()
            .is_some_and(|e| e.patient.is_some())
    };

    let mut selected = Vec::new();
    if requested.is_empty() {
        for ty in store.types() {
            if patient_level && !in_compartment(ty) {
                continue;
            }
            if let Ok(access) = require(&grant, ty, scopes::R | scopes::S) {
                selected.push((ty.to_owned(), access));
            }
        }
        if selected.is_empty() {
            return outcome(
                StatusCode::FORBIDDEN,
                "forbidden",
                "missing scope: no granted scope permits reading any resource type (e.g. system/*.read)",
            );
        }
    } else {
        for ty in requested {
            if !store.has_type(ty) && !crate::generate::RESOURCE_TYPES.contains(&ty) {
                return bad_request(&format!("unsupported _type {ty}"));
            }
            match require(&grant, ty, scopes::R | scopes::S) {
                Ok(access) => selected.push((ty.to_owned(), access)),
                Err(resp) => return resp,
            }
        }
    }

    let per_file = spec.tiny_files.unwrap_or(sh.cfg.resources_per_file).max(1);
    let in_scope = |e: &Entry| {
        (!patient_level || e.patient.is_some())
            && (only_patients.is_empty()
                || e.patient
                    .as_deref()
                    .is_some_and(|p| only_patients.contains(&p)))
    };
    let mut files = Vec::new();
    let mut deleted_lines = Vec::new();
    for (ty, access) in &selected {
        // The snapshot: clones of the lines' `Bytes` (reference counts, not copies), so
        // later touches and deletes do not change this job's files.
        let lines: Vec<Bytes> = store
            .entries(ty)
            .iter()
            .filter(|e| {
                since.is_none_or(|s| e.last_updated_ms >= s)
                    && in_scope(e)
                    && visible(e, access, &grant)
                    && passes_type_filters(&type_filters, ty, e)
            })
            .map(|e| e.line.clone())
            .collect();
        for chunk in lines.chunks(per_file) {
            let bad_line = spec.bad_line && files.is_empty();
            files.push(ExportFile {
                kind: FileKind::Output,
                ty: ty.clone(),
                count: chunk.len(),
                content: Content::Lines {
                    lines: chunk.to_vec(),
                    crlf: spec.crlf,
                    bad_line,
                },
            });
        }
        // Resources deleted since `_since` (Bulk Data: only meaningful with `_since`).
        if let Some(s) = since {
            for e in store.entries(ty) {
                if e.deleted_ms.is_some_and(|d| d >= s) && in_scope(e) {
                    deleted_lines.push(delete_bundle(ty, &e.id));
                }
            }
        }
    }
    drop(store);
    if spec.error_file {
        let lines: Vec<String> = selected
            .iter()
            .take(2)
            .map(|(ty, _)| {
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
                    "diagnostics": format!("unable to export one {ty} resource (injected error)")}]})
                .to_string()
            })
            .collect();
        files.push(inline_file(FileKind::Error, "OperationOutcome", &lines));
    }
    if spec.deleted {
        for (ty, _) in selected.iter().take(2) {
            for _ in 0..2 {
                deleted_lines.push(delete_bundle(ty, &format!("deleted-{}", random_hex(8))));
            }
        }
    }
    if !deleted_lines.is_empty() {
        files.push(inline_file(FileKind::Deleted, "Bundle", &deleted_lines));
    }

    let id = random_hex(12);
    let request = match &r.raw_query {
        Some(q) => format!("{}{}?{q}", sh.origin, r.path),
        None => format!("{}{}", sh.origin, r.path),
    };
    lock(&sh.jobs).insert(
        id.clone(),
        Job {
            client_id: grant.client_id.clone(),
            request,
            transaction_time: now_instant(),
            last_modified: http_date(SystemTime::now()),
            created: Instant::now(),
            polls: 0,
            files: files.into_iter().map(Arc::new).collect(),
            fail: spec.export_error,
            requires_token: sh.cfg.require_access_token && sh.cfg.require_auth,
            v4: spec.bulk_v4,
        },
    );
    let mut resp = outcome(StatusCode::ACCEPTED, "informational", "export job accepted");
    if let Ok(v) = HeaderValue::from_str(&format!("{}/bulkstatus/{id}", sh.base_url)) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    resp
}

/// `_typeFilter=Type?search` values: a resource of `Type` is exported when it matches
/// any of that type's filters (types without filters are unaffected). Commas separate
/// filters only where the next piece starts a new `Type?`.
fn parse_type_filters(params: &[(String, String)]) -> Result<Vec<(String, Filters)>, String> {
    let mut raw: Vec<String> = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "_typeFilter") {
        for piece in v.split(',') {
            let starts_filter = piece
                .split_once('?')
                .is_some_and(|(t, _)| t.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
            match raw.last_mut() {
                Some(last) if !starts_filter => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => raw.push(piece.to_owned()),
            }
        }
    }
    raw.iter()
        .map(|f| {
            let (ty, query) = f
                .split_once('?')
                .ok_or_else(|| format!("_typeFilter `{f}` is not of the form Type?search"))?;
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            Ok((ty.to_owned(), parse_filters(ty, &pairs)?))
        })
        .collect()
}

fn passes_type_filters(filters: &[(String, Filters)], ty: &str, e: &crate::store::Entry) -> bool {
    let mut relevant = filters.iter().filter(|(t, _)| t == ty).peekable();
    relevant.peek().is_none() || relevant.any(|(_, f)| f.matches(e))
}

/// One line of a `deleted` file: a transaction Bundle with a single DELETE entry.
fn delete_bundle(ty: &str, id: &str) -> String {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("{ty}/{id}")}}
    ]})
    .to_string()
}

fn inline_file(kind: FileKind, ty: &str, lines: &[String]) -> ExportFile {
    let mut body = String::new();
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    ExportFile {
        kind,
        ty: ty.to_owned(),
        count: lines.len(),
        content: Content::Inline(Bytes::from(body)),
    }
}

fn owns(job: &Job, grant_client: Option<&String>) -> bool {
    match (&job.client_id, grant_client) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

pub(crate) fn status(sh: &Shared, r: &Req, id: &str) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let poll_retry_after = lock(&sh.faults)
        .spec
        .poll_retry_after
        .unwrap_or(sh.cfg.poll_retry_after);
    let mut jobs = lock(&sh.jobs);
    let Some(job) = jobs
        .get_mut(id)
        .filter(|j| owns(j, grant.client_id.as_ref()))
    else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such export job");
    };
    job.polls += 1;
    if !job.is_done(sh) {
        let pct = (job.polls * 100) / (sh.cfg.export_polls + 1);
        let mut resp = StatusCode::ACCEPTED.into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("{pct}% complete")) {
            h.insert("x-progress", v);
        }
        h.insert(header::RETRY_AFTER, HeaderValue::from(poll_retry_after));
        return resp;
    }
    if job.fail {
        return outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "export job failed (injected export-error)",
        );
    }
    let url = |i: usize| format!("{}/files/{id}/{i}.ndjson", sh.origin);
    let list = |kind: fn(&FileKind) -> bool| -> Vec<Value> {
        job.files
            .iter()
            .enumerate()
            .filter(|(_, f)| kind(&f.kind))
            .map(|(i, f)| json!({"type": f.ty, "url": url(i), "count": f.count}))
            .collect()
    };
    let mut manifest = json!({
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": job.requires_token,
        "output": list(|k| matches!(k, FileKind::Output)),
        "deleted": list(|k| matches!(k, FileKind::Deleted)),
    });
    let errors_key = if job.v4 { "outcome" } else { "error" };
    manifest[errors_key] = Value::Array(list(|k| matches!(k, FileKind::Error)));
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        manifest.to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&http_date(SystemTime::now() + Duration::from_secs(3600)))
    {
        resp.headers_mut().insert(header::EXPIRES, v);
    }
    resp
}

pub(crate) fn delete(sh: &Shared, r: &Req, id: &str) -> Response {
    let grant = match authenticate(sh, r) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    if lock(&sh.faults).spec.delete_404 {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            "DELETE of export jobs is not supported",
        );
    }
    let mut jobs = lock(&sh.jobs);
    if !jobs
        .get(id)
        .is_some_and(|j| owns(j, grant.client_id.as_ref()))
    {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such export job");
    }
    jobs.remove(id);
    outcome(StatusCode::ACCEPTED, "informational", "export job deleted")
}

fn signature(sh: &Shared, path: &str, expires: i64) -> String {
    let mut h = Sha256::new();
    h.update(sh.url_key.as_bytes());
    h.update(path.as_bytes());
    h.update(expires.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// `/files/{job}/{n}.ndjson` on the FHIR origin.
pub(crate) async fn fhir_download(sh: &Shared, r: &Req, rest: &str) -> Response {
    if r.method != "GET" && r.method != "HEAD" {
        return outcome(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "export files are read-only",
        );
    }
    let requires_token = {
        let jobs = lock(&sh.jobs);
        let job_id = rest.split('/').next().unwrap_or_default();
        match jobs.get(job_id) {
            Some(j) => j.requires_token,
            None => return outcome(StatusCode::NOT_FOUND, "not-found", "no such export file"),
        }
    };
    if requires_token {
        if let Err(resp) = authenticate(sh, r) {
            return resp;
        }
    }
    if lock(&sh.faults).spec.redirect_files {
        let expires = unix_now() + SIGNED_URL_LIFETIME_S;
        let path = format!("/files/{rest}");
        let sig = signature(sh, &path, expires);
        let location = format!("{}{path}?expires={expires}&sig={sig}", sh.storage_origin);
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    serve_file(sh, r, rest).await
}

/// `/files/{job}/{n}.ndjson?expires=..&sig=..` on the storage origin.
pub(crate) async fn storage_download(sh: &Shared, r: &Req) -> Response {
    if r.method != "GET" && r.method != "HEAD" {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if r.header("authorization").is_some() {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/xml")],
            "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; only the X-Amz-Algorithm \
             query parameter, Signature query string parameter or the Authorization header should be specified\
             </Message></Error>",
        )
            .into_response();
    }
    let Some(rest) = r.path.strip_prefix("/files/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let expires: i64 = r.param("expires").and_then(|e| e.parse().ok()).unwrap_or(0);
    let valid =
        r.param("sig") == Some(signature(sh, &r.path, expires).as_str()) && expires > unix_now();
    if !valid {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/xml")],
            "<Error><Code>AccessDenied</Code><Message>Request has expired or the signature does not match\
             </Message></Error>",
        )
            .into_response();
    }
    serve_file(sh, r, rest).await
}

enum RangeReq {
    Whole,
    Part(usize, usize),
    Unsatisfiable,
}

fn parse_range(h: &str, len: usize) -> RangeReq {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeReq::Whole;
    };
    if spec.contains(',') {
        return RangeReq::Whole; // multipart ranges: serve the whole file, which HTTP allows
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<usize>() {
            Ok(0) | Err(_) => RangeReq::Unsatisfiable,
            Ok(_) if len == 0 => RangeReq::Unsatisfiable,
            Ok(n) => RangeReq::Part(len - n.min(len), len - 1),
        };
    }
    let Ok(start) = a.parse::<usize>() else {
        return RangeReq::Whole;
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    let end = if b.is_empty() {
        len - 1
    } else {
        match b.parse::<usize>() {
            Ok(e) if e >= start => e.min(len - 1),
            _ => return RangeReq::Whole,
        }
    };
    RangeReq::Part(start, end)
}

async fn serve_file(sh: &Shared, r: &Req, rest: &str) -> Response {
    let not_found = || outcome(StatusCode::NOT_FOUND, "not-found", "no such export file");
    let Some((job_id, name)) = rest.split_once('/') else {
        return not_found();
    };
    let Some(index) = name
        .strip_suffix(".ndjson")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return not_found();
    };
    let (file, last_modified) = {
        let jobs = lock(&sh.jobs);
        let found = jobs.get(job_id).and_then(|j| {
            j.files
                .get(index)
                .map(|f| (f.clone(), j.last_modified.clone()))
        });
        match found {
            Some(found) => found,
            None => return not_found(),
        }
    };
    // Files are assembled from the job's snapshot on each request (outside the jobs lock):
    // the bytes never change, so ETag and ranges stay valid without caching the result.
    let content = match &file.content {
        Content::Inline(b) => b.clone(),
        Content::Lines {
            lines,
            crlf,
            bad_line,
        } => {
            let eol: &[u8] = if *crlf { b"\r\n" } else { b"\n" };
            let size: usize = lines.iter().map(|l| l.len() + eol.len()).sum();
            let mut out = Vec::with_capacity(size + MALFORMED_LINE.len() + eol.len());
            for (n, line) in lines.iter().enumerate() {
                if *bad_line && n == lines.len() / 2 {
                    out.extend_from_slice(MALFORMED_LINE);
                    out.extend_from_slice(eol);
                }
                out.extend_from_slice(line);
                out.extend_from_slice(eol);
            }
            Bytes::from(out)
        }
    };
    let etag = format!("\"{job_id}-{index}\"");
    let ignore_range = lock(&sh.faults).spec.ignore_range;
    let len = content.len();
    let mut range = match r.header("range") {
        Some(h) if !ignore_range => parse_range(h, len),
        _ => RangeReq::Whole,
    };
    if let Some(cond) = r.header("if-range") {
        if cond != etag && cond != last_modified {
            range = RangeReq::Whole;
        }
    }
    let base = |status: StatusCode| {
        let mut resp = status.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+ndjson"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        if let Ok(v) = HeaderValue::from_str(&last_modified) {
            h.insert(header::LAST_MODIFIED, v);
        }
        resp
    };
    match range {
        RangeReq::Unsatisfiable => {
            let mut resp = base(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp
        }
        RangeReq::Part(a, b) => {
            let mut resp = base(StatusCode::PARTIAL_CONTENT);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            *resp.body_mut() = Body::from(content.slice(a..=b));
            resp
        }
        RangeReq::Whole => {
            let gzip = r
                .header("accept-encoding")
                .is_some_and(|a| a.split(',').any(|e| e.trim().starts_with("gzip")));
            let mut resp = base(StatusCode::OK);
            resp.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            if gzip {
                let compressed = tokio::task::spawn_blocking(move || {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&content).and_then(|()| enc.finish())
                })
                .await;
                match compressed {
                    Ok(Ok(gz)) => {
                        resp.headers_mut()
                            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                        *resp.body_mut() = Body::from(gz);
                    }
                    _ => {
                        return outcome(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "exception",
                            "gzip failed",
                        )
                    }
                }
            } else {
                *resp.body_mut() = Body::from(content);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range("bytes=0-9", 100),
            RangeReq::Part(0, 9)
        ));
        assert!(matches!(
            parse_range("bytes=90-", 100),
            RangeReq::Part(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=-10", 100),
            RangeReq::Part(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=95-200", 100),
            RangeReq::Part(95, 99)
        ));
        assert!(matches!(
            parse_range("bytes=100-", 100),
            RangeReq::Unsatisfiable
        ));
        assert!(matches!(parse_range("bytes=0-1,5-6", 100), RangeReq::Whole));
        assert!(matches!(parse_range("items=0-1", 100), RangeReq::Whole));
    }
}
