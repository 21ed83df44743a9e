//! CPU work on one block of lines: validate, parse with simd-json, extract the resource's
//! identity, append rows to the tables, and list the events to publish.
//!
//! Runs on the blocking pool, never on the async reactor. Each line is copied once into a
//! per-thread scratch buffer (simd-json parses in place and would otherwise destroy the bytes
//! that the raw store, the `resource` column and the Kafka value need); the buffer and
//! simd-json's own buffers are reused across lines. Results keep line order, and the caller
//! puts blocks back in order, so the outputs of a file are deterministic.

use std::cell::RefCell;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use fhirhose_ingest::framing::{Block, Oversize};
use fhirhose_ingest::source::FileKind;
use fhirhose_sinks::deadletter::{DeadLetter, Reason};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::resource_types::resource_type;

use super::views::{ViewOutputs, ViewSet};

/// Deepest JSON nesting accepted. FHIR resources nest a handful of levels (contained
/// resources and extensions on extensions reach perhaps 15); 128 leaves room and stops
/// hostile input before it costs much.
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Everything a worker needs to know about the file it works on.
#[derive(Debug)]
pub(crate) struct FileCtx {
    pub kind: FileKind,
    pub raw_key: Arc<str>,
    pub run_id: Arc<str>,
    pub ingested_at_us: i64,
    pub max_line_bytes: usize,
    pub views: Arc<ViewSet>,
    /// Build the `resources` table's rows (off for views-only runs and reprocess).
    pub resources_table: bool,
    /// Events will be published: keep each resource's id and `meta.lastUpdated` for them.
    pub events: bool,
}

/// One resource that landed, pointing into the block's bytes; `id` and `last_updated` are
/// filled only when events are published ([`FileCtx::events`]).
#[derive(Debug)]
pub(crate) struct EventRec {
    pub line: u64,
    pub start: usize,
    pub len: usize,
    pub resource_type: &'static str,
    pub id: String,
    pub last_updated: Option<String>,
}

/// A deletion from a Bulk Data `deleted` file.
#[derive(Debug)]
pub(crate) struct DeleteRec {
    pub line: u64,
    pub entry: usize,
    pub resource_type: String,
    pub id: String,
}

/// A dead letter and, when the bytes are at hand, where they are in the block.
#[derive(Debug)]
pub(crate) struct DeadRec {
    pub letter: DeadLetter,
    pub span: Option<(usize, usize)>,
}

/// What a block produced.
#[derive(Debug, Default)]
pub(crate) struct BlockOut {
    pub data: Bytes,
    pub lines: u64,
    pub blank: u64,
    pub resources: Option<RecordBatch>,
    pub views: ViewOutputs,
    pub events: Vec<EventRec>,
    pub dead: Vec<DeadRec>,
    pub deletes: Vec<DeleteRec>,
    pub deletions: Option<RecordBatch>,
    /// OperationOutcome issues of an `error` file, by severity.
    pub outcomes: Vec<(String, u64)>,
    /// Resources a view could not evaluate (they land everywhere else).
    pub view_errors: u64,
}

/// Schema of the `resources` table.
pub fn resources_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("version_id", DataType::Utf8, true),
        Field::new("last_updated", ts.clone(), true),
        Field::new("resource", DataType::Utf8, false),
        Field::new("_raw_key", DataType::Utf8, false),
        Field::new("_line", DataType::Int64, false),
        Field::new("_run_id", DataType::Utf8, false),
        Field::new("_ingested_at", ts, false),
    ]))
}

/// Schema of the `deletions` table (from Bulk Data `deleted` files).
pub(crate) fn deletions_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("_raw_key", DataType::Utf8, false),
        Field::new("_line", DataType::Int64, false),
        Field::new("_run_id", DataType::Utf8, false),
        Field::new("_ingested_at", ts, false),
    ]))
}

/// Version of the `resources` table layout (its folder under `tables/resources/`).
pub(crate) const RESOURCES_VERSION: &str = "v1";

struct ResourcesBuilder {
    resource_type: StringBuilder,
    id: StringBuilder,
    version_id: StringBuilder,
    last_updated: TimestampMicrosecondBuilder,
    resource: StringBuilder,
    raw_key: StringBuilder,
    line: Int64Builder,
    run_id: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
}

impl ResourcesBuilder {
    fn new(rows: usize, bytes: usize) -> Self {
        Self {
            resource_type: StringBuilder::with_capacity(rows, rows * 12),
            id: StringBuilder::with_capacity(rows, rows * 36),
            version_id: StringBuilder::with_capacity(rows, rows * 2),
            last_updated: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            resource: StringBuilder::with_capacity(rows, bytes),
            raw_key: StringBuilder::with_capacity(rows, rows * 48),
            line: Int64Builder::with_capacity(rows),
            run_id: StringBuilder::with_capacity(rows, rows * 32),
            ingested_at: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
        }
    }

    fn finish(mut self) -> Option<RecordBatch> {
        if self.id.is_empty() {
            return None;
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.resource_type.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.version_id.finish()),
            Arc::new(self.last_updated.finish()),
            Arc::new(self.resource.finish()),
            Arc::new(self.raw_key.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.run_id.finish()),
            Arc::new(self.ingested_at.finish()),
        ];
        Some(RecordBatch::try_new(resources_schema(), cols).expect("columns match the schema"))
    }
}

thread_local! {
    static SCRATCH: RefCell<(Vec<u8>, simd_json::Buffers)> =
        RefCell::new((Vec::with_capacity(64 * 1024), simd_json::Buffers::default()));
}

/// Parses an instant (`meta.lastUpdated`) to microseconds since the epoch.
pub fn parse_instant_us(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Deterministic CloudEvents id of the resource at `line` of `raw_key`.
pub(crate) fn ce_id(raw_key: &str, line: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(raw_key.as_bytes());
    h.update(b"\n");
    h.update(line.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

fn json_depth_exceeds(line: &[u8], max: usize) -> bool {
    // Fast path: a line with at most `max` opening brackets cannot nest deeper than `max`.
    // The count is a branch-free loop the compiler vectorises, and almost every FHIR line
    // takes this path; only lines with many brackets pay for the exact scan below.
    let opens: usize = line
        .iter()
        .map(|&b| usize::from(b == b'{') + usize::from(b == b'['))
        .sum();
    opens > max && json_depth_exceeds_exact(line, max)
}

fn json_depth_exceeds_exact(line: &[u8], max: usize) -> bool {
    // Tracks strings (and escapes in them), so brackets inside strings do not nest. On
    // invalid JSON the count may be off, which does not matter: the parser rejects it.
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for &b in line {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Processes one oversize frame: a dead letter, nothing else.
pub(crate) fn process_oversize(ctx: &FileCtx, o: &Oversize) -> BlockOut {
    BlockOut {
        lines: 1,
        dead: vec![DeadRec {
            letter: DeadLetter {
                reason: Reason::Oversize,
                detail: format!(
                    "line of {} bytes exceeds the limit of {} bytes",
                    o.len, ctx.max_line_bytes
                ),
                raw_key: ctx.raw_key.to_string(),
                line: o.line,
                offset: o.offset,
                length: o.len,
            },
            span: None,
        }],
        ..Default::default()
    }
}

/// Processes one block.
pub(crate) fn process_block(ctx: &FileCtx, block: Block) -> BlockOut {
    let data = block.data.clone();
    let approx_rows = data.len() / 700 + 1;
    let mut rb = ctx
        .resources_table
        .then(|| ResourcesBuilder::new(approx_rows, data.len()));
    let mut views = ctx.views.builders();
    let mut out = BlockOut {
        data: data.clone(),
        ..Default::default()
    };
    let base = data.as_ptr() as usize;
    let has_views = !ctx.views.is_empty();
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (scratch, buffers) = &mut *guard;
        for (line_no, offset, line) in block.lines() {
            out.lines += 1;
            let start = line.as_ptr() as usize - base;
            let dead = |reason: Reason, detail: String| DeadRec {
                letter: DeadLetter {
                    reason,
                    detail,
                    raw_key: ctx.raw_key.to_string(),
                    line: line_no,
                    offset,
                    length: line.len() as u64,
                },
                span: Some((start, line.len())),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                out.blank += 1;
                continue;
            }
            if line.len() > ctx.max_line_bytes {
                out.dead.push(DeadRec {
                    span: None,
                    ..dead(
                        Reason::Oversize,
                        format!(
                            "line of {} bytes exceeds the limit of {} bytes",
                            line.len(),
                            ctx.max_line_bytes
                        ),
                    )
                });
                continue;
            }
            let text = match std::str::from_utf8(line) {
                Ok(t) => t,
                Err(e) => {
                    out.dead.push(dead(
                        Reason::InvalidUtf8,
                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    ));
                    continue;
                }
            };
            if json_depth_exceeds(line, MAX_JSON_DEPTH) {
                out.dead.push(dead(
                    Reason::TooDeep,
                    format!("JSON nests deeper than {MAX_JSON_DEPTH} levels"),
                ));
                continue;
            }
            scratch.clear();
            if has_views {
                // Decimals become marked strings so views keep their exact text (1.50 stays
                // 1.50); the resource's own bytes (raw, `resource`, Kafka) are untouched.
                fhirhose_normalize::prepare_line(line, scratch);
            } else {
                scratch.extend_from_slice(line);
            }
            let value = match simd_json::to_borrowed_value_with_buffers(scratch, buffers) {
                Ok(v) => v,
                Err(e) => {
                    // The unterminated tail is the line that ends where the block ends.
                    // (`+ 1` allows for a stripped trailing `\r`.)
                    let truncated = block.unterminated_tail && start + line.len() + 1 >= data.len();
                    let (reason, what) = if truncated {
                        (
                            Reason::Truncated,
                            "last line ends without a newline and is not valid JSON",
                        )
                    } else {
                        (Reason::InvalidJson, "not valid JSON")
                    };
                    out.dead.push(dead(
                        reason,
                        format!("{what}: {:?} at byte {}", e.error(), e.index()),
                    ));
                    continue;
                }
            };
            let Some(obj) = value.as_object() else {
                out.dead.push(dead(
                    Reason::NotAnObject,
                    "JSON value is not an object".into(),
                ));
                continue;
            };
            match ctx.kind {
                FileKind::Resources => {}
                FileKind::Deleted => {
                    match deleted_entries(&value) {
                        Some(entries) if !entries.is_empty() => {
                            for (entry, (t, id)) in entries.into_iter().enumerate() {
                                out.deletes.push(DeleteRec {
                                    line: line_no,
                                    entry,
                                    resource_type: t.to_string(),
                                    id: id.to_string(),
                                });
                            }
                        }
                        _ => out.dead.push(dead(
                            Reason::MissingResourceType,
                            "deleted-file line is not a Bundle with DELETE entries".into(),
                        )),
                    }
                    continue;
                }
                FileKind::Error => {
                    let issues = value
                        .get("issue")
                        .and_then(|i| i.as_array())
                        .map(|a| a.as_slice())
                        .unwrap_or(&[]);
                    for issue in issues {
                        let sev = issue.get_str("severity").unwrap_or("unknown");
                        match out.outcomes.iter_mut().find(|(s, _)| s == sev) {
                            Some((_, n)) => *n += 1,
                            None => out.outcomes.push((sev.to_string(), 1)),
                        }
                    }
                    continue;
                }
            }
            let Some(rtype) = obj
                .get("resourceType")
                .and_then(|v| v.as_str())
                .and_then(resource_type)
            else {
                out.dead.push(dead(
                    Reason::MissingResourceType,
                    "no valid resourceType".into(),
                ));
                continue;
            };
            let Some(id) = obj
                .get("id")
                .and_then(|v| v.as_str())
                .filter(|s| is_fhir_id(s))
            else {
                out.dead.push(dead(Reason::MissingId, "no valid id".into()));
                continue;
            };
            let meta = obj.get("meta");
            let version_id = meta.and_then(|m| m.get_str("versionId"));
            let last_updated = meta.and_then(|m| m.get_str("lastUpdated"));
            if let Some(rb) = rb.as_mut() {
                rb.resource_type.append_value(rtype);
                rb.id.append_value(id);
                rb.version_id.append_option(version_id);
                rb.last_updated
                    .append_option(last_updated.and_then(parse_instant_us));
                rb.resource.append_value(text);
                rb.raw_key.append_value(&*ctx.raw_key);
                rb.line.append_value(line_no as i64);
                rb.run_id.append_value(&*ctx.run_id);
                rb.ingested_at.append_value(ctx.ingested_at_us);
            }
            views.append(rtype, &value, &ctx.raw_key, line_no);
            out.events.push(EventRec {
                line: line_no,
                start,
                len: line.len(),
                resource_type: rtype,
                id: if ctx.events {
                    id.to_string()
                } else {
                    String::new()
                },
                last_updated: last_updated.filter(|_| ctx.events).map(str::to_string),
            });
            drop::<BorrowedValue<'_>>(value);
        }
    });
    out.resources = rb.and_then(ResourcesBuilder::finish);
    out.view_errors = views.errors;
    out.views = views.finish(&ctx.run_id, ctx.ingested_at_us);
    if !out.deletes.is_empty() {
        let n = out.deletes.len();
        let mut t = StringBuilder::with_capacity(n, n * 12);
        let mut id = StringBuilder::with_capacity(n, n * 36);
        let mut rk = StringBuilder::with_capacity(n, n * 48);
        let mut ln = Int64Builder::with_capacity(n);
        let mut run = StringBuilder::with_capacity(n, n * 32);
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        for d in &out.deletes {
            t.append_value(&d.resource_type);
            id.append_value(&d.id);
            rk.append_value(&*ctx.raw_key);
            ln.append_value(d.line as i64);
            run.append_value(&*ctx.run_id);
            at.append_value(ctx.ingested_at_us);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(id.finish()),
            Arc::new(rk.finish()),
            Arc::new(ln.finish()),
            Arc::new(run.finish()),
            Arc::new(at.finish()),
        ];
        out.deletions =
            Some(RecordBatch::try_new(deletions_schema(), cols).expect("columns match the schema"));
    }
    out
}

/// The `(type, id)` of every DELETE entry of a Bulk Data `deleted` line (a Bundle whose
/// entries carry `request: {method: DELETE, url: "Type/id"}`).
fn deleted_entries<'v>(value: &'v BorrowedValue<'_>) -> Option<Vec<(&'v str, &'v str)>> {
    if value.get_str("resourceType") != Some("Bundle") {
        return None;
    }
    let entries = value.get("entry")?.as_array()?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let req = e.get("request")?;
        if !req.get_str("method")?.eq_ignore_ascii_case("DELETE") {
            continue;
        }
        let url = req.get_str("url")?;
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let mut parts = path.rsplit('/');
        let id = parts.next()?;
        let t = parts.next()?;
        if resource_type(t).is_some() && is_fhir_id(id) {
            out.push((t, id));
        }
    }
    Some(out)
}

/// `resourceType`: an uppercase letter then letters and digits.
/// FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::Array;

    fn ctx() -> FileCtx {
        FileCtx {
            kind: FileKind::Resources,
            raw_key: "raw/x".into(),
            run_id: "run".into(),
            ingested_at_us: 0,
            max_line_bytes: 200,
            views: Arc::new(ViewSet::empty()),
            resources_table: true,
            events: true,
        }
    }

    #[test]
    fn classifies_every_bad_line_and_keeps_good_ones() {
        let mut data = Vec::new();
        data.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"p1\",\"meta\":{\"versionId\":\"3\",\"lastUpdated\":\"2020-01-02T03:04:05.678+00:00\"}}\n");
        data.extend_from_slice(b"{not json\n");
        data.extend_from_slice(b"{\"resourceType\":\"Patient\"}\n");
        data.extend_from_slice(b"\n");
        data.extend_from_slice(b"[1,2]\n");
        data.extend_from_slice(b"{\"id\":\"x\"}\n");
        data.extend_from_slice(b"{\"resourceType\":\"Patient\",\"id\":\"\xff\"}\n");
        data.extend_from_slice(&[b'{'; 150]);
        data.extend_from_slice(b"\n");
        data.extend_from_slice(b"{\"resourceType\":\"Observation\",\"id\":\"o1\"}\n");
        data.extend_from_slice(&[b' '; 201]);
        data.extend_from_slice(b"x\n");
        data.extend_from_slice(b"{\"resourceType\":\"Obs");
        let block = Block {
            data: Bytes::from(data),
            first_line: 1,
            offset: 0,
            unterminated_tail: true,
        };
        let out = process_block(&ctx(), block);
        let reasons: Vec<_> = out
            .dead
            .iter()
            .map(|d| (d.letter.line, d.letter.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (2, Reason::InvalidJson),
                (3, Reason::MissingId),
                (5, Reason::NotAnObject),
                (6, Reason::MissingResourceType),
                (7, Reason::InvalidUtf8),
                (8, Reason::TooDeep),
                (10, Reason::Oversize),
                (11, Reason::Truncated),
            ]
        );
        assert_eq!(out.lines, 11);
        assert_eq!(out.blank, 1);
        let rb = out.resources.unwrap();
        assert_eq!(rb.num_rows(), 2);
        let ids = rb.column(1).as_string::<i32>();
        assert_eq!(ids.value(0), "p1");
        assert_eq!(ids.value(1), "o1");
        let lu = rb
            .column(3)
            .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
        assert_eq!(lu.value(0), 1_577_934_245_678_000);
        assert!(lu.is_null(1));
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.events[1].line, 9);
        let e = &out.events[0];
        assert_eq!(&out.data[e.start..e.start + e.len], &out.data[..e.len]);
        assert_eq!(ce_id("raw/x", 1), ce_id("raw/x", 1));
        assert_ne!(ce_id("raw/x", 1), ce_id("raw/x", 2));
        // The dead letter keeps a pointer, and the bytes are still intact (not parsed in place).
        let d = &out.dead[0];
        let (s, l) = d.span.unwrap();
        assert_eq!(&out.data[s..s + l], b"{not json");
        assert_eq!(d.letter.offset, s as u64);
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    fn ctx(kind: FileKind) -> FileCtx {
        FileCtx {
            kind,
            raw_key: "raw/d".into(),
            run_id: "run".into(),
            ingested_at_us: 0,
            max_line_bytes: 10_000,
            views: Arc::new(ViewSet::empty()),
            resources_table: true,
            events: true,
        }
    }

    #[test]
    fn deleted_files_become_deletions_not_resources() {
        let data = b"{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"request\":{\"method\":\"DELETE\",\"url\":\"Patient/p1\"}},{\"request\":{\"method\":\"DELETE\",\"url\":\"Observation/o9\"}}]}\n{\"resourceType\":\"Patient\",\"id\":\"x\"}\n";
        let out = process_block(
            &ctx(FileKind::Deleted),
            Block {
                data: Bytes::from_static(data),
                first_line: 1,
                offset: 0,
                unterminated_tail: false,
            },
        );
        let d: Vec<_> = out
            .deletes
            .iter()
            .map(|d| (d.resource_type.as_str(), d.id.as_str(), d.line))
            .collect();
        assert_eq!(d, vec![("Patient", "p1", 1), ("Observation", "o9", 1)]);
        assert!(out.resources.is_none());
        assert!(out.events.is_empty());
        assert_eq!(out.deletions.unwrap().num_rows(), 2);
        assert_eq!(
            out.dead.len(),
            1,
            "a non-Bundle line in a deleted file is a dead letter"
        );
    }

    #[test]
    fn error_files_are_counted_by_severity() {
        let data = b"{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"processing\"},{\"severity\":\"warning\",\"code\":\"x\"}]}\n{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\"}]}\n";
        let out = process_block(
            &ctx(FileKind::Error),
            Block {
                data: Bytes::from_static(data),
                first_line: 1,
                offset: 0,
                unterminated_tail: false,
            },
        );
        let mut o = out.outcomes.clone();
        o.sort();
        assert_eq!(
            o,
            vec![("error".to_string(), 2), ("warning".to_string(), 1)]
        );
        assert!(out.resources.is_none());
    }

    #[test]
    fn depth_guard_counts_nesting_not_brackets() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_depth_exceeds(
            deep(MAX_JSON_DEPTH).as_bytes(),
            MAX_JSON_DEPTH
        ));
        assert!(json_depth_exceeds(
            deep(MAX_JSON_DEPTH + 1).as_bytes(),
            MAX_JSON_DEPTH
        ));
        // Many brackets, shallow: takes the exact scan and passes.
        let wide = format!("{{\"a\":[{}{{}}]}}", "{},".repeat(3 * MAX_JSON_DEPTH));
        assert!(!json_depth_exceeds(wide.as_bytes(), MAX_JSON_DEPTH));
        // Brackets inside strings (escaped quotes included) do not nest: the fast path's
        // count is only an upper bound, and the exact scan decides.
        let mut in_string = String::from("{\"s\":\"\\\"");
        in_string.push_str(&"{".repeat(MAX_JSON_DEPTH + 1));
        in_string.push_str("\"}");
        assert!(!json_depth_exceeds(in_string.as_bytes(), MAX_JSON_DEPTH));
        let deep_after_string = format!("{{\"s\":\"]]\",\"a\":{}", deep(MAX_JSON_DEPTH));
        assert!(json_depth_exceeds(
            deep_after_string.as_bytes(),
            MAX_JSON_DEPTH
        ));
    }
}
