//! Compiled SQL-on-FHIR v2 ViewDefinitions and their Arrow batch builders.
//!
//! Invariants:
//! - A [`CompiledView`] is immutable after [`CompiledView::from_json_slice`]; every
//!   FHIRPath expression in it was parsed once and every structural rule checked there.
//! - [`ViewBatchBuilder::append`] is all-or-nothing per resource: rows are evaluated and
//!   converted first and only appended when the whole resource succeeded, so an
//!   [`EvalError`] never leaves a partial resource in the batch.
//! - Arrays from [`ViewBatchBuilder::finish`] follow [`CompiledView::fields`] exactly
//!   (order, data type, nullability).

pub(crate) mod arrow;
pub(crate) mod compile;
pub(crate) mod group;
pub(crate) mod rows;

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, FieldRef, SchemaRef};
use simd_json::BorrowedValue;

use crate::fhirpath::eval::relabel;
use crate::fhirpath::{ConstVal, Expr, ParseError, RootIndex};
use arrow::ColBuilder;
use compile::{ColumnMeta, SelectPlan};
pub use group::ViewGroup;

/// A ViewDefinition was rejected. `at` names the offending element, e.g.
/// `select[1].column[0].path`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The bytes are not JSON.
    #[error("the view is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A structural rule of the ViewDefinition was broken.
    #[error("{at}: {reason}")]
    Invalid {
        /// Location in the view.
        at: String,
        /// What is wrong there.
        reason: String,
    },
    /// A FHIRPath expression does not parse or uses something outside the subset.
    #[error("{at}: invalid FHIRPath: {source}")]
    Path {
        /// Location in the view.
        at: String,
        /// The parser's complaint.
        #[source]
        source: ParseError,
    },
}

/// Evaluating a view on one resource failed. Messages never include resource content.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A column without `collection: true` produced several values.
    #[error("column `{column}` produced {count} values but is not declared `collection: true`")]
    NotSingleton {
        /// Column name.
        column: String,
        /// Number of values produced.
        count: usize,
    },
    /// A value could not be represented in its column's declared type.
    #[error("column `{column}` is declared {kind} but the path produced a {found} value")]
    ColumnType {
        /// Column name.
        column: String,
        /// Declared kind.
        kind: &'static str,
        /// What was found instead.
        found: &'static str,
    },
    /// A view-level `where` expression produced something other than a boolean.
    #[error("{at} did not evaluate to a boolean")]
    WhereNotBoolean {
        /// Location in the view.
        at: String,
    },
    /// A FHIRPath expression failed at run time (e.g. a comparison of several values).
    #[error("{at}: {reason}")]
    Expression {
        /// Location in the view.
        at: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// The resource would produce more rows than one resource may.
    #[error("the resource produces more than {limit} rows")]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
    /// `repeat` went deeper than the supported limit.
    #[error("{at}: repeat nesting exceeds {limit} levels")]
    RepeatTooDeep {
        /// Location in the view.
        at: String,
        /// The limit.
        limit: usize,
    },
}

/// A validated, compiled ViewDefinition. `Send + Sync`; share it through an [`Arc`].
#[derive(Debug)]
pub struct CompiledView {
    name: String,
    resource: String,
    version: String,
    fields: Vec<FieldRef>,
    schema: SchemaRef,
    pub(crate) columns: Vec<ColumnMeta>,
    pub(crate) constants: Vec<ConstVal>,
    pub(crate) root_index: RootIndex,
    pub(crate) wheres: Vec<(Expr, String)>,
    pub(crate) root: SelectPlan,
}

impl CompiledView {
    /// Parses, validates and compiles a ViewDefinition from its JSON bytes.
    ///
    /// ```
    /// use fhirhose_normalize::CompiledView;
    /// let view = CompiledView::from_json_slice(br#"{
    ///   "resourceType": "ViewDefinition", "name": "patient_min", "resource": "Patient",
    ///   "select": [{"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]}]
    /// }"#).unwrap();
    /// let mut json = br#"{"resourceType":"Patient","id":"p1"}"#.to_vec();
    /// let resource = simd_json::to_borrowed_value(&mut json).unwrap();
    /// let mut builder = view.builder();
    /// assert_eq!(builder.append(&resource).unwrap(), 1);
    /// let columns = builder.finish();
    /// assert_eq!(columns[0].len(), 1);
    /// ```
    pub fn from_json_slice(bytes: &[u8]) -> Result<CompiledView, ViewError> {
        compile::compile(bytes)
    }

    /// The view's `name` (or the lower-cased resource type when absent): the table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The resource type the view applies to.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// First 16 hex digits of the SHA-256 of the view's JSON bytes as given.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Output columns, in order. Every field is nullable; declared FHIR types are kept in
    /// the field metadata under `fhir.type`.
    pub fn fields(&self) -> &[FieldRef] {
        &self.fields
    }

    /// The output schema (the same fields).
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// A batch builder borrowing this view.
    pub fn builder(&self) -> ViewBatchBuilder<'_> {
        ViewBatchBuilder {
            view: self,
            state: BatchState::new(self),
        }
    }

    /// A batch builder owning a handle to this view (for long-lived workers).
    pub fn owned_builder(self: &Arc<Self>) -> OwnedViewBatchBuilder {
        OwnedViewBatchBuilder {
            state: BatchState::new(self),
            view: Arc::clone(self),
        }
    }

    fn applies_to(&self, resource: &BorrowedValue<'_>) -> bool {
        match resource {
            BorrowedValue::Object(o) => {
                matches!(o.get("resourceType"), Some(BorrowedValue::String(rt)) if rt == &self.resource)
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
struct BatchState {
    cols: Vec<ColBuilder>,
    rows: usize,
    /// Row buffer kept between resources (always empty here; see `relabel`).
    spare: Vec<rows::Cell<'static>>,
    /// Root slot buffer kept between resources (always empty here).
    spare_slots: Vec<Option<&'static BorrowedValue<'static>>>,
}

impl BatchState {
    fn new(view: &CompiledView) -> Self {
        BatchState {
            cols: view.columns.iter().map(ColBuilder::new).collect(),
            rows: 0,
            spare: Vec::new(),
            spare_slots: Vec::new(),
        }
    }

    fn append(
        &mut self,
        view: &CompiledView,
        resource: &BorrowedValue<'_>,
    ) -> Result<usize, EvalError> {
        if !view.applies_to(resource) {
            return Ok(0);
        }
        let mut slots = relabel(std::mem::take(&mut self.spare_slots));
        view.root_index.fill(resource, &mut slots);
        let result = self.append_with_slots(view, resource, &slots);
        self.spare_slots = relabel(slots);
        result
    }

    /// [`append`](Self::append) for a resource already known to be of the view's type,
    /// with its root slots filled.
    fn append_with_slots<'a>(
        &mut self,
        view: &'a CompiledView,
        resource: &'a BorrowedValue<'a>,
        slots: &'a [Option<&'a BorrowedValue<'a>>],
    ) -> Result<usize, EvalError> {
        let cells = relabel(std::mem::take(&mut self.spare));
        let result = rows::eval_view(view, resource, slots, cells);
        let frag = match result {
            Ok(Some(frag)) => frag,
            Ok(None) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut cells = frag.cells;
        if frag.width > 0 {
            // Cells are moved into the builders, so the buffer is left empty without a
            // second pass to drop them.
            let mut it = cells.drain(..);
            'rows: loop {
                for b in &mut self.cols {
                    let Some(c) = it.next() else { break 'rows };
                    b.append(c);
                }
            }
        }
        self.rows += frag.rows;
        let n = frag.rows;
        self.spare = relabel(cells);
        Ok(n)
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.cols.iter_mut().map(ColBuilder::finish).collect()
    }
}

/// Accumulates a view's rows for many resources into Arrow arrays.
#[derive(Debug)]
pub struct ViewBatchBuilder<'v> {
    view: &'v CompiledView,
    state: BatchState,
}

impl ViewBatchBuilder<'_> {
    /// Evaluates the view on one resource and appends its rows; returns the number of rows
    /// appended (0 when the resource type does not match or `where` filters it out). On
    /// error nothing is appended.
    pub fn append(&mut self, resource: &BorrowedValue<'_>) -> Result<usize, EvalError> {
        self.state.append(self.view, resource)
    }

    /// Rows buffered since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.state.rows
    }

    /// No rows buffered.
    pub fn is_empty(&self) -> bool {
        self.state.rows == 0
    }

    /// Columns in [`CompiledView::fields`] order; resets the builder.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.state.finish()
    }

    /// [`finish`](Self::finish) as a `RecordBatch` with [`CompiledView::schema`].
    pub fn finish_batch(&mut self) -> Result<RecordBatch, ArrowError> {
        let cols = self.state.finish();
        RecordBatch::try_new(self.view.schema(), cols)
    }
}

/// [`ViewBatchBuilder`] holding an `Arc<CompiledView>` instead of a borrow.
#[derive(Debug)]
pub struct OwnedViewBatchBuilder {
    view: Arc<CompiledView>,
    state: BatchState,
}

impl OwnedViewBatchBuilder {
    /// See [`ViewBatchBuilder::append`].
    pub fn append(&mut self, resource: &BorrowedValue<'_>) -> Result<usize, EvalError> {
        self.state.append(&self.view, resource)
    }

    /// Rows buffered since the last finish.
    pub fn len(&self) -> usize {
        self.state.rows
    }

    /// No rows buffered.
    pub fn is_empty(&self) -> bool {
        self.state.rows == 0
    }

    /// See [`ViewBatchBuilder::finish`].
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.state.finish()
    }

    /// See [`ViewBatchBuilder::finish_batch`].
    pub fn finish_batch(&mut self) -> Result<RecordBatch, ArrowError> {
        let cols = self.state.finish();
        RecordBatch::try_new(self.view.schema(), cols)
    }

    /// The view this builder evaluates.
    pub fn view(&self) -> &Arc<CompiledView> {
        &self.view
    }
}
