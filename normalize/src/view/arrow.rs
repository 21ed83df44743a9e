//! Arrow column builders fed straight from evaluated cells.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef};

use super::compile::{ColKind, ColumnMeta};
use super::rows::Cell;

#[derive(Debug)]
pub(crate) enum ColBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Str(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
    ListBool(ListBuilder<BooleanBuilder>),
    ListInt(ListBuilder<Int64Builder>),
    ListStr(ListBuilder<StringBuilder>),
    ListTs(ListBuilder<TimestampMicrosecondBuilder>),
}

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

impl ColBuilder {
    pub(crate) fn new(meta: &ColumnMeta) -> Self {
        match (meta.kind, meta.collection) {
            (ColKind::Bool, false) => ColBuilder::Bool(BooleanBuilder::new()),
            (ColKind::Int, false) => ColBuilder::Int(Int64Builder::new()),
            (ColKind::Str | ColKind::Dec, false) => ColBuilder::Str(StringBuilder::new()),
            (ColKind::Instant, false) => ColBuilder::Ts(ts()),
            (ColKind::Bool, true) => ColBuilder::ListBool(ListBuilder::new(BooleanBuilder::new())),
            (ColKind::Int, true) => ColBuilder::ListInt(ListBuilder::new(Int64Builder::new())),
            (ColKind::Str | ColKind::Dec, true) => {
                ColBuilder::ListStr(ListBuilder::new(StringBuilder::new()))
            }
            (ColKind::Instant, true) => ColBuilder::ListTs(ListBuilder::new(ts())),
        }
    }

    /// Appends one cell. Cells were converted to this column's kind during evaluation, so a
    /// mismatch here is a bug; it is written as null rather than panicking.
    pub(crate) fn append(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (ColBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColBuilder::Bool(b), _) => b.append_null(),
            (ColBuilder::Int(b), Cell::Int(v)) => b.append_value(v),
            (ColBuilder::Int(b), _) => b.append_null(),
            (ColBuilder::Str(b), Cell::Str(v)) => b.append_value(&v),
            (ColBuilder::Str(b), _) => b.append_null(),
            (ColBuilder::Ts(b), Cell::Ts(v)) => b.append_value(v),
            (ColBuilder::Ts(b), _) => b.append_null(),
            (ColBuilder::ListBool(b), Cell::List(items)) => {
                for i in items {
                    match i {
                        Cell::Bool(v) => b.values().append_value(v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListInt(b), Cell::List(items)) => {
                for i in items {
                    match i {
                        Cell::Int(v) => b.values().append_value(v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListStr(b), Cell::List(items)) => {
                for i in items {
                    match i {
                        Cell::Str(v) => b.values().append_value(v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListTs(b), Cell::List(items)) => {
                for i in items {
                    match i {
                        Cell::Ts(v) => b.values().append_value(v),
                        _ => b.values().append_null(),
                    }
                }
                b.append(true);
            }
            (ColBuilder::ListBool(b), _) => b.append_null(),
            (ColBuilder::ListInt(b), _) => b.append_null(),
            (ColBuilder::ListStr(b), _) => b.append_null(),
            (ColBuilder::ListTs(b), _) => b.append_null(),
        }
    }

    /// Finishes the column and resets the builder, pre-sized for a batch like this one
    /// (Arrow's `finish` drops the buffers, and regrowing them by doubling every batch
    /// copies each batch about twice more).
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Bool(b) => {
                let a = b.finish();
                *b = BooleanBuilder::with_capacity(a.len());
                Arc::new(a)
            }
            ColBuilder::Int(b) => {
                let a = b.finish();
                *b = Int64Builder::with_capacity(a.len());
                Arc::new(a)
            }
            ColBuilder::Str(b) => {
                let a = b.finish();
                *b = StringBuilder::with_capacity(a.len(), a.value_data().len());
                Arc::new(a)
            }
            ColBuilder::Ts(b) => {
                let a = b.finish();
                *b = TimestampMicrosecondBuilder::with_capacity(a.len()).with_timezone("UTC");
                Arc::new(a)
            }
            ColBuilder::ListBool(b) => Arc::new(b.finish()),
            ColBuilder::ListInt(b) => Arc::new(b.finish()),
            ColBuilder::ListStr(b) => Arc::new(b.finish()),
            ColBuilder::ListTs(b) => Arc::new(b.finish()),
        }
    }
}
