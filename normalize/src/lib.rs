//! fhirhose-normalize: SQL-on-FHIR v2 ViewDefinitions → Arrow arrays.
//!
//! The pipeline parses each NDJSON line with simd-json, then hands the borrowed tree to
//! one builder per view:
//!
//! ```
//! use std::sync::Arc;
//! use fhirhose_normalize::CompiledView;
//!
//! let view = Arc::new(CompiledView::from_json_slice(br#"{
//!   "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
//!   "select": [
//!     {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]},
//!     {"forEach": "name", "column": [
//!       {"name": "family", "path": "family", "type": "string"},
//!       {"name": "given", "path": "given", "type": "string", "collection": true}]}
//!   ]
//! }"#)?);
//! let mut builder = view.owned_builder();
//! let mut line = br#"{"resourceType":"Patient","id":"p1","name":[{"family":"Ng","given":["A","B"]},{"family":"Ho"}]}"#.to_vec();
//! let resource = simd_json::to_borrowed_value(&mut line)?;
//! assert_eq!(builder.append(&resource)?, 2);
//! let batch = builder.finish_batch()?;
//! assert_eq!(batch.num_rows(), 2);
//! assert_eq!(batch.schema().field(2).name(), "given");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Exact decimals
//!
//! simd-json parses JSON fractions to `f64`. To keep FHIR's decimal precision, copy each
//! line into the parse buffer with [`prepare_line`] instead of `extend_from_slice`: it
//! rewrites numbers with a fraction or exponent (outside strings) into strings marked with
//! [`DECIMAL_MARKER`] (U+FDD0), which the engine treats as decimals everywhere and writes
//! in their source text. Unprepared trees still work, with `f64` precision. Anything else
//! that reads a prepared tree should use [`decimal_text`] for such nodes. See the
//! `prepare` module docs (on [`prepare_line`]) for the contract and the residual risk.
//!
//! # Public API
//!
//! - [`prepare_line`]`(src: &[u8], dst: &mut Vec<u8>)` (appends the prepared line),
//!   [`marked_decimal`]`(&str) -> Option<&str>`, [`decimal_text`]`(&BorrowedValue) ->
//!   Option<&str>`, [`DECIMAL_MARKER`].
//! - [`CompiledView::from_json_slice`]`(&[u8]) -> Result<CompiledView, ViewError>`: parse,
//!   validate, compile. Errors name the offending element (`select[1].column[0].path: ...`).
//! - [`CompiledView::name`] (table name), [`CompiledView::resource`],
//!   [`CompiledView::version`] (first 16 hex digits of the SHA-256 of the JSON bytes),
//!   [`CompiledView::fields`] / [`CompiledView::schema`].
//! - [`CompiledView::builder`] → [`ViewBatchBuilder`] (borrows the view) or
//!   [`CompiledView::owned_builder`] on an `Arc<CompiledView>` → [`OwnedViewBatchBuilder`].
//!   Both have `append(&BorrowedValue) -> Result<usize, EvalError>`, `len()`,
//!   `finish() -> Vec<ArrayRef>` (resets) and `finish_batch() -> Result<RecordBatch, _>`.
//! - [`ViewGroup`]: every view of one resource type evaluated together (one type check and
//!   one pass over the root keys per resource for all of them). `ViewGroup::new(Vec<Arc<
//!   CompiledView>>) -> Result<ViewGroup, ViewError>` (all of one type),
//!   `ViewGroup::group_all(impl IntoIterator<Item = Arc<CompiledView>>) -> Vec<ViewGroup>`,
//!   `resource()`, `views()`, `append(&BorrowedValue) -> &[Result<usize, EvalError>]` (one
//!   result per view, errors kept per view), `len(i)`, `is_empty()`, `finish(i) ->
//!   Vec<ArrayRef>`, `finish_batch(i)`.
//! - [`conformance::run_dir`] / [`conformance::run_file`] run the official test suite
//!   (`run_dir_prepared` / `run_file_prepared`: the same through [`prepare_line`]);
//!   [`conformance::Report::to_official_json`] writes the official report format.
//!
//! # Invariants
//!
//! - Compile once, evaluate many: every expression is parsed when the view is compiled;
//!   evaluation never parses and never converts to `serde_json::Value`. Strings are
//!   borrowed from the resource until they are copied into the Arrow buffers.
//! - The FHIRPath parser never panics; it returns [`ParseError`] with a byte offset and
//!   bounds nesting and length so hostile expressions cannot exhaust the stack.
//! - `append` is all-or-nothing per resource. Resources of another type, or filtered out
//!   by the view's `where`, append nothing and return `Ok(0)`.
//! - Limits, each an error rather than a crash: FHIRPath nesting 40 levels and 512 operator
//!   or path steps per expression (parse time); `repeat` 64 levels deep; 100,000 rows or
//!   `repeat` nodes per resource ([`EvalError::TooManyRows`]).
//! - Output is deterministic: rows come out in resource order, then in the order the
//!   view's selects generate them (columns, nested selects, then `unionAll` branches).
//!
//! # Column type mapping
//!
//! | column `type` | Arrow type | notes |
//! |---|---|---|
//! | `boolean` | `Boolean` | |
//! | `integer`, `positiveInt`, `unsignedInt`, `integer64` | `Int64` | one integer type for all: no overflow cases to reason about, and Parquet encodes small values compactly anyway |
//! | `decimal` | `Utf8` | the decimal's exact source text when the line went through [`prepare_line`] (`1.50` stays `1.50`, `1e3` stays `1e3`, `-0.0` stays `-0.0`). Unprepared input (simd-json's `f64`) gets the shortest form that reads back to the same double, with at least one fractional digit for JSON fractions (`1.50` becomes `1.5`). A JSON integer `120` stays `120`; a JSON string holding a number is kept verbatim; computed values (`a + b`) use the shortest round-trip text. Never rounded through a fixed scale. |
//! | `instant` | `Timestamp(Microsecond, "UTC")` | converted from the offset given; a malformed instant is an [`EvalError`] |
//! | `date`, `dateTime`, `time` | `Utf8` | the lexical value, unchanged: partial dates (`2020`, `2020-05`) are legal FHIR and are kept exactly |
//! | every other type (`string`, `code`, `id`, `uri`, `url`, `canonical`, `oid`, `uuid`, `markdown`, `base64Binary`, ...) | `Utf8` | numbers and booleans are rendered as text (prepared decimals in their source text); complex values as compact JSON, with decimals as bare numbers in their source text |
//! | no `type` | `Utf8` | as above: the only type every value can be written to without loss |
//! | any, with `collection: true` | `List<item type>` | the list field is named `item`; an empty result is an empty list, not null |
//!
//! Every field is nullable; the declared FHIR type is kept in the field's metadata under
//! `fhir.type`.
//!
//! See [`fhirpath`] for the supported FHIRPath subset.
//!
//! # Conformance
//!
//! The engine passes every test of the SQL-on-FHIR v2 suite vendored under
//! `tests/data/sql-on-fhir-v2/upstream-sql-on-fhir.js/` (144 tests in `tests/` and the 7
//! of `newer-indexed/`, shareable and experimental), checked by
//! `normalize/tests/conformance.rs` through [`conformance::run_dir`], which evaluates via
//! the Arrow builders, and again through [`conformance::run_dir_prepared`], which passes
//! every resource through [`prepare_line`] first.
//!
//! # Canonical views (`schemas/views/`)
//!
//! Conventions every canonical view follows:
//! - `url`, `name` (the table name, equal to the file name), `status: active`,
//!   `fhirVersion: ["4.0.1"]`, and a `type` on every column;
//! - the first column is `id` = `getResourceKey()`; references are keys too
//!   (`patient_id` = `subject.getReferenceKey(Patient)`), so tables join on
//!   `x.patient_id = patient.id`;
//! - one row per resource for the main views (`patient`, `encounter`, `observation`, ...),
//!   one row per repeating element for child views (`patient_name`, `patient_address`,
//!   `observation_component`, ...), with a `<element>_index` column from `%rowIndex`;
//! - a CodeableConcept is flattened in the main view to its **first** coding
//!   (`<element>_system`, `_code`, `_display`) plus `_text`. Every coding is kept in the
//!   resource's `<resource>_coding` view: one row per Coding of the flattened
//!   CodeableConcepts, with `resource_type`, `element` (the FHIRPath it came from, e.g.
//!   `value.ofType(CodeableConcept)`), `element_index`, `coding_index`, `system`, `code`,
//!   `display`. A view cannot union across resource types, so there is one coding view per
//!   resource type; all share one schema and can be `UNION ALL`-ed into a single table.
//!
//! # Performance
//!
//! `normalize/tests/throughput.rs` (ignored; run in release, see its docs for the
//! `ONLY`, `TYPE`, `LIMIT`, `SEPARATE`, `PLAIN` and `SKIP_VIEWS` knobs) compares the
//! simd-json tape parse, the `BorrowedValue` parse, [`prepare_line`] and view evaluation
//! over the developer corpus (`tests/data/corpus`, 28,695 resources, 790 bytes each on
//! average). Wall-clock numbers on the shared 2-core machine swing by 2×, so the numbers
//! below are instructions (callgrind, release, `ROUNDS=1 LIMIT=3000`: 3,189 resources),
//! per resource of the view's type, before and after the November 2026 pass:
//!
//! | view | before | after |
//! |---|---:|---:|
//! | `patient` (22 columns) | 57.6k | 40.0k |
//! | `encounter` | 19.3k | 12.2k |
//! | `condition` | 18.2k | 9.3k |
//! | `observation` (33 columns) | 24.7k | 15.7k |
//! | `observation_coding` (several rows each) | 25.4k | 18.4k |
//! | `observation_component` | 4.7k | 3.4k |
//! | `medication_request` | 20.5k | 14.9k |
//! | `procedure` | 16.1k | 9.5k |
//! | `immunization` | 14.7k | 8.8k |
//! | `diagnostic_report` | 25.7k | 13.1k |
//! | all 25 views, per resource of any type | 45.8k | 29.8k |
//!
//! Baselines on the same sample, per resource: tape parse (stage 1 + 2) 9.2k;
//! `BorrowedValue` parse 18.2k (the tape plus 9.0k to build the tree; freeing the tree
//! costs more on top); [`prepare_line`] 5.6k.
//!
//! Where the time goes: per column one evaluation and one Arrow append. Singleton columns
//! whose path is a chain of fields, fused `name.ofType(T)` steps and `first()` (most
//! columns) are evaluated by a walker that builds no collections; string literals,
//! `%rowIndex`, `getResourceKey()` and `getReferenceKey()` of such a chain become cells
//! directly; everything else goes through the general evaluator. Root keys come from one index pass per resource per view, or per
//! resource type with a [`ViewGroup`].
//!
//! What is left: the `BorrowedValue` tree alone costs twice the tape parse, so views
//! evaluated on a `BorrowedValue` cannot reach 35% of the tape ceiling whatever the
//! evaluator does. The next step is evaluating the compiled paths on simd-json's tape
//! (`to_tape_with_buffers`), which the simple-path walker is shaped for.

pub mod conformance;
pub mod fhirpath;
mod prepare;
mod view;

pub use fhirpath::ParseError;
pub use prepare::{decimal_text, marked_decimal, prepare_line, DECIMAL_MARKER};
pub use view::{
    CompiledView, EvalError, OwnedViewBatchBuilder, ViewBatchBuilder, ViewError, ViewGroup,
};
