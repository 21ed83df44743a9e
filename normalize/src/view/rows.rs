//! Row generation: `forEach` / `forEachOrNull` / `repeat` iteration, cross-joined nested
//! selects and `unionAll`, column values converted to their output type.
//!
//! A select produces a *fragment*: `rows` rows of `width` cells, stored flat. The cells of
//! a select are its columns, then each nested select's cells, then the `unionAll` cells,
//! which is exactly the order of the view's output fields. A select of plain columns writes
//! its row straight into its parent's fragment; otherwise the parts that can be empty are
//! evaluated first and the cartesian product is written directly into the parent.

use std::borrow::Cow;
use std::cell::RefCell;

use simd_json::BorrowedValue as Value;

use super::compile::{ColKind, ColumnPlan, Iteration, SelectPlan};
use super::{CompiledView, EvalError};
use crate::fhirpath::eval::{
    eval, is_simple_path, prim, relabel, single_node, split_reference, to_strict_bool, Buf, Env,
    FpError, Item, Prim,
};
use crate::fhirpath::temporal;
use crate::fhirpath::{Expr, Func, Literal};
use crate::prepare::{marked_decimal, write_json};

/// Deepest `repeat` recursion followed before the resource is rejected.
const MAX_REPEAT_DEPTH: usize = 64;

/// Most rows (and most `repeat` nodes) one resource may produce. Cross joins of nested
/// `forEach`es grow multiplicatively; a hostile or broken resource is rejected with an
/// error instead of exhausting memory. 100,000 rows is far above any real resource.
pub(crate) const MAX_ROWS_PER_RESOURCE: usize = 100_000;

/// One output value, already in its column's representation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    /// Microseconds since the epoch, UTC.
    Ts(i64),
    List(Vec<Cell<'a>>),
}

#[derive(Debug)]
pub(crate) struct Frag<'a> {
    pub(crate) width: usize,
    pub(crate) rows: usize,
    pub(crate) cells: Vec<Cell<'a>>,
}

thread_local! {
    /// Recycled cell vectors for intermediate fragments (nested selects, unions).
    static CELL_POOL: RefCell<Vec<Vec<Cell<'static>>>> = const { RefCell::new(Vec::new()) };
}

fn take_cells<'a>() -> Vec<Cell<'a>> {
    relabel(CELL_POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default())
}

fn give_cells(v: Vec<Cell<'_>>) {
    if v.capacity() == 0 || v.capacity() > 1024 {
        return;
    }
    let v: Vec<Cell<'static>> = relabel(v);
    CELL_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 32 {
            p.push(v);
        }
    });
}

impl<'a> Frag<'a> {
    pub(crate) fn new(width: usize) -> Self {
        Frag {
            width,
            rows: 0,
            cells: take_cells(),
        }
    }

    fn push_nulls(&mut self) {
        self.rows += 1;
        self.cells
            .extend(std::iter::repeat_n(Cell::Null, self.width));
    }
}

fn expr_err(at: &str, e: FpError) -> EvalError {
    EvalError::Expression {
        at: at.to_owned(),
        reason: e.0,
    }
}

/// Evaluates the whole view on one resource of the right type; `None` when filtered out.
///
/// `cells` is an empty buffer to build the rows in (recycled by the caller).
pub(crate) fn eval_view<'a>(
    view: &'a CompiledView,
    resource: &'a Value<'a>,
    root_slots: &'a [Option<&'a Value<'a>>],
    cells: Vec<Cell<'a>>,
) -> Result<Option<Frag<'a>>, EvalError> {
    let env = Env {
        root: resource,
        root_slots,
        consts: &view.constants,
        row_index: 0,
    };
    let this = [Item::node(resource)];
    let mut tmp = Buf::take();
    for (w, at) in &view.wheres {
        tmp.clear();
        eval(w, &env, &this, &mut tmp).map_err(|e| expr_err(at, e))?;
        match to_strict_bool(&tmp) {
            Ok(Some(true)) => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(EvalError::WhereNotBoolean { at: at.clone() }),
        }
    }
    let mut out = Frag {
        width: view.root.width,
        rows: 0,
        cells,
    };
    body(&view.root, &env, &this, &mut out)?;
    Ok(Some(out))
}

fn select<'a>(
    plan: &'a SelectPlan,
    env: &Env<'a>,
    item: &[Item<'a>],
    out: &mut Frag<'a>,
) -> Result<(), EvalError> {
    match &plan.iter {
        Iteration::None => body(plan, env, item, out),
        Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => {
            let mut nodes = Buf::take();
            eval(e, env, item, &mut nodes).map_err(|err| expr_err(&plan.at, err))?;
            if nodes.is_empty() && matches!(plan.iter, Iteration::ForEachOrNull(_)) {
                // The null row: the body sees an empty focus (so `%rowIndex` is 0 and
                // paths are null); when that yields no row at all, one row of nulls.
                let env = Env {
                    row_index: 0,
                    ..*env
                };
                let before = out.rows;
                body(plan, &env, &[], out)?;
                if out.rows == before {
                    out.push_nulls();
                }
                return Ok(());
            }
            iterate(plan, env, &nodes, out)
        }
        Iteration::Repeat(paths) => {
            let mut nodes = Buf::take();
            repeat(paths, env, item, 0, &plan.at, &mut nodes)?;
            iterate(plan, env, &nodes, out)
        }
    }
}

fn iterate<'a>(
    plan: &'a SelectPlan,
    env: &Env<'a>,
    nodes: &[Item<'a>],
    out: &mut Frag<'a>,
) -> Result<(), EvalError> {
    if out.rows.saturating_add(nodes.len()) > MAX_ROWS_PER_RESOURCE {
        return Err(EvalError::TooManyRows {
            limit: MAX_ROWS_PER_RESOURCE,
        });
    }
    for (i, n) in nodes.iter().enumerate() {
        let env = Env {
            row_index: i64::try_from(i).unwrap_or(i64::MAX),
            ..*env
        };
        body(plan, &env, std::slice::from_ref(n), out)?;
    }
    Ok(())
}

fn repeat<'a>(
    paths: &'a [crate::fhirpath::Expr],
    env: &Env<'a>,
    item: &[Item<'a>],
    depth: usize,
    at: &str,
    out: &mut Vec<Item<'a>>,
) -> Result<(), EvalError> {
    if depth > MAX_REPEAT_DEPTH {
        return Err(EvalError::RepeatTooDeep {
            at: at.to_owned(),
            limit: MAX_REPEAT_DEPTH,
        });
    }
    let mut children = Buf::take();
    for p in paths {
        children.clear();
        eval(p, env, item, &mut children).map_err(|e| expr_err(at, e))?;
        for c in children.iter() {
            if out.len() >= MAX_ROWS_PER_RESOURCE {
                return Err(EvalError::TooManyRows {
                    limit: MAX_ROWS_PER_RESOURCE,
                });
            }
            out.push(c.clone());
            repeat(paths, env, std::slice::from_ref(c), depth + 1, at, out)?;
        }
    }
    Ok(())
}

fn body<'a>(
    plan: &'a SelectPlan,
    env: &Env<'a>,
    item: &[Item<'a>],
    out: &mut Frag<'a>,
) -> Result<(), EvalError> {
    // Fast paths: a select of plain columns writes its one row straight into `out`, and
    // a lone nested select needs no cross product.
    if plan.selects.is_empty() && plan.union_all.is_empty() {
        let mut tmp = Buf::take();
        for c in &plan.columns {
            out.cells.push(eval_column(c, env, item, &mut tmp)?);
        }
        out.rows += 1;
        return Ok(());
    }
    if plan.columns.is_empty() && plan.union_all.is_empty() && plan.selects.len() == 1 {
        return select(&plan.selects[0], env, item, out);
    }
    // Parts that can come out empty (iterations) are evaluated first: when one yields no
    // row, nothing else of this select needs evaluating. The cross product below still
    // follows the declared order.
    let n = plan.selects.len() + usize::from(!plan.union_all.is_empty());
    let mut small: [Option<Frag<'a>>; 4] = [const { None }; 4];
    let mut big: Vec<Option<Frag<'a>>> = Vec::new();
    let parts: &mut [Option<Frag<'a>>] = if n <= small.len() {
        &mut small[..n]
    } else {
        big.resize_with(n, || None);
        &mut big
    };
    for pass in [true, false] {
        for (i, s) in plan.selects.iter().enumerate() {
            if s.may_be_empty() != pass {
                continue;
            }
            let mut f = Frag::new(s.width);
            select(s, env, item, &mut f)?;
            if f.rows == 0 {
                give_cells(f.cells);
                return Ok(());
            }
            parts[i] = Some(f);
        }
        if let Some(first) = plan.union_all.first() {
            if plan.union_all.iter().all(SelectPlan::may_be_empty) == pass {
                let mut f = Frag::new(first.width);
                for u in &plan.union_all {
                    select(u, env, item, &mut f)?;
                }
                if f.rows == 0 {
                    give_cells(f.cells);
                    return Ok(());
                }
                parts[n - 1] = Some(f);
            }
        }
    }
    let mut cols = take_cells();
    if !plan.columns.is_empty() {
        let mut tmp = Buf::take();
        for c in &plan.columns {
            cols.push(eval_column(c, env, item, &mut tmp)?);
        }
    }
    product_into(out, &cols, parts)?;
    give_cells(cols);
    for f in parts.iter_mut().filter_map(Option::take) {
        give_cells(f.cells);
    }
    Ok(())
}

/// Appends the cartesian product `cols × parts[0] × parts[1] × ...` to `out`, rows of
/// earlier parts outermost, without intermediate fragments.
fn product_into<'a>(
    out: &mut Frag<'a>,
    cols: &[Cell<'a>],
    parts: &[Option<Frag<'a>>],
) -> Result<(), EvalError> {
    let mut small = [0usize; 4];
    let mut big = Vec::new();
    let idx: &mut [usize] = if parts.len() <= small.len() {
        &mut small[..parts.len()]
    } else {
        big.resize(parts.len(), 0);
        &mut big
    };
    let parts_ref = |k: usize| parts[k].as_ref();
    let mut total: usize = 1;
    for k in 0..parts.len() {
        total = total
            .checked_mul(parts_ref(k).map_or(1, |p| p.rows))
            .filter(|t| out.rows.saturating_add(*t) <= MAX_ROWS_PER_RESOURCE)
            .ok_or(EvalError::TooManyRows {
                limit: MAX_ROWS_PER_RESOURCE,
            })?;
    }
    let width: usize = cols.len()
        + (0..parts.len())
            .map(|k| parts_ref(k).map_or(0, |p| p.width))
            .sum::<usize>();
    out.cells.reserve(total * width);
    for _ in 0..total {
        out.cells.extend_from_slice(cols);
        for (k, &i) in idx.iter().enumerate() {
            if let Some(p) = parts_ref(k) {
                out.cells
                    .extend_from_slice(&p.cells[i * p.width..(i + 1) * p.width]);
            }
        }
        // Advance the odometer, last part fastest.
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < parts_ref(k).map_or(1, |p| p.rows) {
                break;
            }
            idx[k] = 0;
        }
    }
    out.rows += total;
    Ok(())
}

/// One column's cell for the input `item`; `tmp` is scratch.
#[inline]
fn eval_column<'a>(
    c: &'a ColumnPlan,
    env: &Env<'a>,
    item: &[Item<'a>],
    tmp: &mut Vec<Item<'a>>,
) -> Result<Cell<'a>, EvalError> {
    if c.simple {
        if let [Item::Node { v, ext: None, .. }] = item {
            if let Some(found) = single_node(&c.expr, env, v) {
                return match found {
                    None => Ok(Cell::Null),
                    // The most common cell: a string into a string column.
                    Some(Value::String(s)) if c.kind == ColKind::Str => {
                        let s: &'a str = s;
                        Ok(Cell::Str(Cow::Borrowed(marked_decimal(s).unwrap_or(s))))
                    }
                    Some(v) => {
                        to_cell(c.kind, &Item::node(v)).map_err(|found| EvalError::ColumnType {
                            column: c.name.clone(),
                            kind: c.kind.describe(),
                            found,
                        })
                    }
                };
            }
        }
    }
    // Other shapes common in the canonical views; each yields one cell, so never for a
    // `collection: true` column, which always becomes a list.
    let shape = if c.collection { None } else { Some(c.kind) };
    match (&c.expr, shape) {
        (Expr::Literal(Literal::Str(s, _)), Some(ColKind::Str)) => {
            return Ok(Cell::Str(Cow::Borrowed(s)));
        }
        (Expr::RowIndex, Some(ColKind::Int)) => return Ok(Cell::Int(env.row_index)),
        (Expr::Call(base, Func::GetResourceKey), Some(ColKind::Str))
            if matches!(**base, Expr::This) =>
        {
            if let [Item::Node {
                v: Value::Object(o),
                ..
            }] = item
            {
                return Ok(match o.get("id") {
                    Some(Value::String(s)) if marked_decimal(s).is_none() => {
                        let s: &'a str = s;
                        Cell::Str(Cow::Borrowed(s))
                    }
                    _ => Cell::Null,
                });
            }
        }
        (Expr::Call(base, Func::GetReferenceKey(ty)), Some(ColKind::Str))
            if is_simple_path(base) =>
        {
            if let [Item::Node { v, ext: None, .. }] = item {
                if let Some(found) = single_node(base, env, v) {
                    let key = match found {
                        Some(Value::Object(o)) => match o.get("reference") {
                            Some(Value::String(r)) if marked_decimal(r).is_none() => {
                                let r: &'a str = r;
                                let (rt, key) = split_reference(r);
                                ty.as_deref().is_none_or(|t| Some(t) == rt).then_some(key)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    return Ok(key.map_or(Cell::Null, |k| Cell::Str(Cow::Borrowed(k))));
                }
            }
        }
        _ => {}
    }
    tmp.clear();
    eval(&c.expr, env, item, tmp).map_err(|e| expr_err(&c.at, e))?;
    column_cell(c, tmp)
}

fn column_cell<'a>(c: &ColumnPlan, items: &[Item<'a>]) -> Result<Cell<'a>, EvalError> {
    let conv = |it: &Item<'a>| {
        to_cell(c.kind, it).map_err(|found| EvalError::ColumnType {
            column: c.name.clone(),
            kind: c.kind.describe(),
            found,
        })
    };
    if c.collection {
        return items
            .iter()
            .map(conv)
            .collect::<Result<Vec<_>, _>>()
            .map(Cell::List);
    }
    match items {
        [] => Ok(Cell::Null),
        [one] => conv(one),
        _ => Err(EvalError::NotSingleton {
            column: c.name.clone(),
            count: items.len(),
        }),
    }
}

impl ColKind {
    pub(crate) const fn describe(self) -> &'static str {
        match self {
            ColKind::Bool => "boolean",
            ColKind::Int => "integer",
            ColKind::Dec => "decimal",
            ColKind::Str => "string",
            ColKind::Instant => "instant",
        }
    }
}

/// Text of an item for string-like columns: scalars as in FHIRPath's own text conversion,
/// objects and arrays as compact JSON.
fn text<'a>(it: &Item<'a>) -> Option<Cow<'a, str>> {
    match it {
        Item::Node {
            v: v @ (Value::Object(_) | Value::Array(_)),
            ..
        } => {
            let mut s = String::new();
            write_json(v, &mut s);
            Some(Cow::Owned(s))
        }
        _ => crate::fhirpath::eval::to_text(it),
    }
}

/// Converts one item to a cell of `kind`; the error names what was found instead.
fn to_cell<'a>(kind: ColKind, it: &Item<'a>) -> Result<Cell<'a>, &'static str> {
    let p = prim(it);
    if matches!(p, Prim::Null) {
        return Ok(Cell::Null);
    }
    match kind {
        ColKind::Bool => match p {
            Prim::Bool(b) => Ok(Cell::Bool(b)),
            _ => Err(found(p)),
        },
        ColKind::Int => match p {
            Prim::Int(i) => Ok(Cell::Int(i)),
            Prim::Dec(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Ok(Cell::Int(d as i64)),
            _ => Err(found(p)),
        },
        ColKind::Dec => match p {
            Prim::Int(_) | Prim::Dec(_) => text(it).map(Cell::Str).ok_or("null"),
            Prim::Str(s) if s.parse::<f64>().is_ok() => text(it).map(Cell::Str).ok_or("null"),
            _ => Err(found(p)),
        },
        ColKind::Str => text(it).map(Cell::Str).ok_or("null"),
        ColKind::Instant => match p {
            Prim::Str(s) => temporal::parse_instant_micros(s)
                .map(Cell::Ts)
                .ok_or("malformed instant"),
            _ => Err(found(p)),
        },
    }
}

const fn found(p: Prim<'_>) -> &'static str {
    match p {
        Prim::Bool(_) => "boolean",
        Prim::Int(_) => "integer",
        Prim::Dec(_) => "decimal",
        Prim::Str(_) => "string",
        Prim::Complex => "complex",
        Prim::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;
    use crate::fhirpath::eval::relabel;

    /// Every column of the canonical views gives the same cell (or error) through
    /// `eval_column`'s fast paths as through the general evaluator, on a corpus sample.
    #[test]
    fn simple_path_fast_path_matches_the_general_evaluator() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut views = Vec::new();
        for e in std::fs::read_dir(repo.join("schemas/views")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                views.push(CompiledView::from_json_slice(&std::fs::read(p).unwrap()).unwrap());
            }
        }
        let mut lines = Vec::new();
        for e in std::fs::read_dir(repo.join("tests/data/corpus")).unwrap() {
            let p = e.unwrap().path();
            if !p.to_string_lossy().ends_with(".ndjson.gz") {
                continue;
            }
            let r = std::io::BufReader::new(flate2::read::GzDecoder::new(
                std::fs::File::open(p).unwrap(),
            ));
            lines.extend(r.split(b'\n').map(Result::unwrap).take(150));
        }
        let mut checked = 0;
        for l in &lines {
            let mut buf = Vec::new();
            crate::prepare_line(l, &mut buf);
            let v = simd_json::to_borrowed_value(&mut buf).unwrap();
            for view in views.iter().filter(|view| view.applies_to(&v)) {
                let mut slots = relabel(Vec::<Option<&Value<'_>>>::new());
                view.root_index.fill(&v, &mut slots);
                let env = Env {
                    root: &v,
                    root_slots: &slots,
                    consts: &view.constants,
                    row_index: 0,
                };
                check_select(
                    &view.root,
                    &env,
                    &[Item::node(&v)],
                    view.name(),
                    &mut checked,
                );
            }
        }
        assert!(checked > 20_000, "{checked}");
    }

    /// Compares every column of `plan` (and of its nested selects, following `forEach`
    /// and `forEachOrNull` into each node) between `eval_column` and the general path.
    fn check_select<'a>(
        plan: &'a SelectPlan,
        env: &Env<'a>,
        input: &[Item<'a>],
        view: &str,
        checked: &mut usize,
    ) {
        let nodes: Vec<Item<'a>> = match &plan.iter {
            Iteration::None => input.to_vec(),
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => {
                let mut out = Vec::new();
                eval(e, env, input, &mut out).unwrap();
                out
            }
            Iteration::Repeat(_) => return,
        };
        let groups: Vec<Vec<Item<'a>>> = match plan.iter {
            Iteration::None => vec![nodes],
            _ => nodes.into_iter().map(|n| vec![n]).collect(),
        };
        for item in &groups {
            for c in &plan.columns {
                let mut tmp = Vec::new();
                let fast = eval_column(c, env, item, &mut tmp).map_err(|e| e.to_string());
                let mut tmp = Vec::new();
                let slow = eval(&c.expr, env, item, &mut tmp)
                    .map_err(|e| expr_err(&c.at, e))
                    .and_then(|()| column_cell(c, &tmp))
                    .map_err(|e| e.to_string());
                assert_eq!(fast, slow, "{view} {}", c.name);
                *checked += 1;
            }
            for s in plan.selects.iter().chain(&plan.union_all) {
                check_select(s, env, item, view, checked);
            }
        }
    }
}
