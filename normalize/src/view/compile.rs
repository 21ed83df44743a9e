//! ViewDefinition JSON → validated, compiled plan.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_schema::{DataType, Field, FieldRef, TimeUnit};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::{CompiledView, ViewError};
use crate::fhirpath::parse::{const_kind, EnvResolver};
use crate::fhirpath::{compile_expr, ConstVal, Expr, RootIndex};

fn assign_slots(plan: &mut SelectPlan, idx: &mut RootIndex) {
    match &mut plan.iter {
        Iteration::None => {}
        Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => idx.assign(e),
        Iteration::Repeat(es) => es.iter_mut().for_each(|e| idx.assign(e)),
    }
    for c in &mut plan.columns {
        idx.assign(&mut c.expr);
    }
    for s in plan.selects.iter_mut().chain(plan.union_all.iter_mut()) {
        assign_slots(s, idx);
    }
}

/// Arrow representation of a column; see the crate docs for the mapping table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColKind {
    Bool,
    Int,
    /// Utf8 holding a decimal's text.
    Dec,
    /// Utf8.
    Str,
    /// Timestamp(Microsecond, "UTC").
    Instant,
}

impl ColKind {
    pub(crate) fn from_fhir_type(t: Option<&str>) -> Self {
        match t {
            Some("boolean") => ColKind::Bool,
            Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => ColKind::Int,
            Some("decimal") => ColKind::Dec,
            Some("instant") => ColKind::Instant,
            _ => ColKind::Str,
        }
    }

    pub(crate) fn data_type(self) -> DataType {
        match self {
            ColKind::Bool => DataType::Boolean,
            ColKind::Int => DataType::Int64,
            ColKind::Dec | ColKind::Str => DataType::Utf8,
            ColKind::Instant => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ColumnPlan {
    pub(crate) name: String,
    pub(crate) expr: Expr,
    /// Location of the column's `path` in the view, for error messages.
    pub(crate) at: String,
    pub(crate) collection: bool,
    pub(crate) kind: ColKind,
    /// A singleton column whose path [`crate::fhirpath::eval::single_node`] can evaluate.
    pub(crate) simple: bool,
}

#[derive(Debug)]
pub(crate) enum Iteration {
    None,
    ForEach(Expr),
    ForEachOrNull(Expr),
    Repeat(Vec<Expr>),
}

#[derive(Debug)]
pub(crate) struct SelectPlan {
    pub(crate) iter: Iteration,
    pub(crate) at: String,
    pub(crate) columns: Vec<ColumnPlan>,
    pub(crate) selects: Vec<SelectPlan>,
    pub(crate) union_all: Vec<SelectPlan>,
    /// Output columns produced by this subtree.
    pub(crate) width: usize,
}

impl SelectPlan {
    /// Can this select produce no row at all (so that the rows it joins with vanish)?
    pub(crate) fn may_be_empty(&self) -> bool {
        match self.iter {
            Iteration::ForEach(_) | Iteration::Repeat(_) => true,
            // The null row of forEachOrNull always exists.
            Iteration::ForEachOrNull(_) => false,
            Iteration::None => {
                self.selects.iter().any(SelectPlan::may_be_empty)
                    || (!self.union_all.is_empty()
                        && self.union_all.iter().all(SelectPlan::may_be_empty))
            }
        }
    }
}

/// One output column's metadata, in output order.
#[derive(Debug, Clone)]
pub(crate) struct ColumnMeta {
    pub(crate) name: String,
    pub(crate) fhir_type: Option<String>,
    pub(crate) kind: ColKind,
    pub(crate) collection: bool,
}

struct Consts<'c>(&'c [(String, ConstVal)]);

impl EnvResolver for Consts<'_> {
    fn constant(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|(n, _)| n == name)
    }
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ViewError {
    ViewError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

fn is_sql_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

struct Compiler<'c> {
    consts: Consts<'c>,
}

impl Compiler<'_> {
    fn expr(&self, src: &str, at: &str) -> Result<Expr, ViewError> {
        compile_expr(src, &self.consts).map_err(|source| ViewError::Path {
            at: at.to_owned(),
            source,
        })
    }

    fn path_field(
        &self,
        obj: &Map<String, Json>,
        key: &str,
        at: &str,
    ) -> Result<Option<Expr>, ViewError> {
        match obj.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => self.expr(s, &format!("{at}.{key}")).map(Some),
            Some(_) => Err(invalid(format!("{at}.{key}"), "must be a FHIRPath string")),
        }
    }

    /// Compiles one `select` element; appends its output columns to `cols`.
    fn select(
        &self,
        v: &Json,
        at: &str,
        cols: &mut Vec<ColumnMeta>,
    ) -> Result<SelectPlan, ViewError> {
        let Json::Object(obj) = v else {
            return Err(invalid(at, "must be an object"));
        };
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "column"
                    | "select"
                    | "unionAll"
                    | "forEach"
                    | "forEachOrNull"
                    | "repeat"
                    | "id"
                    | "extension"
            ) {
                return Err(invalid(
                    format!("{at}.{k}"),
                    "is not a known select element",
                ));
            }
        }
        let for_each = self.path_field(obj, "forEach", at)?;
        let for_each_or_null = self.path_field(obj, "forEachOrNull", at)?;
        let repeat = match obj.get("repeat") {
            None => None,
            Some(Json::Array(paths)) if !paths.is_empty() => {
                let mut exprs = Vec::with_capacity(paths.len());
                for (i, p) in paths.iter().enumerate() {
                    let pat = format!("{at}.repeat[{i}]");
                    let Json::String(s) = p else {
                        return Err(invalid(pat, "must be a FHIRPath string"));
                    };
                    exprs.push(self.expr(s, &pat)?);
                }
                Some(exprs)
            }
            Some(_) => {
                return Err(invalid(
                    format!("{at}.repeat"),
                    "must be a non-empty array of FHIRPath strings",
                ))
            }
        };
        let iter = match (for_each, for_each_or_null, repeat) {
            (None, None, None) => Iteration::None,
            (Some(e), None, None) => Iteration::ForEach(e),
            (None, Some(e), None) => Iteration::ForEachOrNull(e),
            (None, None, Some(r)) => Iteration::Repeat(r),
            _ => {
                return Err(invalid(
                    at,
                    "forEach, forEachOrNull and repeat are mutually exclusive",
                ))
            }
        };

        let mut columns = Vec::new();
        match obj.get("column") {
            None => {}
            Some(Json::Array(cs)) => {
                for (i, c) in cs.iter().enumerate() {
                    let cat = format!("{at}.column[{i}]");
                    let (plan, meta) = self.column(c, &cat)?;
                    columns.push(plan);
                    cols.push(meta);
                }
            }
            Some(_) => return Err(invalid(format!("{at}.column"), "must be an array")),
        }
        let mut selects = Vec::new();
        match obj.get("select") {
            None => {}
            Some(Json::Array(ss)) => {
                for (i, s) in ss.iter().enumerate() {
                    selects.push(self.select(s, &format!("{at}.select[{i}]"), cols)?);
                }
            }
            Some(_) => return Err(invalid(format!("{at}.select"), "must be an array")),
        }
        let mut union_all = Vec::new();
        match obj.get("unionAll") {
            None => {}
            Some(Json::Array(us)) if !us.is_empty() => {
                let mut first: Option<Vec<ColumnMeta>> = None;
                for (i, u) in us.iter().enumerate() {
                    let uat = format!("{at}.unionAll[{i}]");
                    let mut branch_cols = Vec::new();
                    union_all.push(self.select(u, &uat, &mut branch_cols)?);
                    match &first {
                        None => first = Some(branch_cols),
                        Some(f) => {
                            let names = |c: &[ColumnMeta]| {
                                c.iter()
                                    .map(|m| m.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            };
                            if f.len() != branch_cols.len()
                                || f.iter().zip(&branch_cols).any(|(a, b)| a.name != b.name)
                            {
                                return Err(invalid(
                                    uat,
                                    format!(
                                        "columns ({}) do not match the first unionAll branch ({})",
                                        names(&branch_cols),
                                        names(f)
                                    ),
                                ));
                            }
                            if let Some((a, _)) = f
                                .iter()
                                .zip(&branch_cols)
                                .find(|(a, b)| a.kind != b.kind || a.collection != b.collection)
                            {
                                return Err(invalid(uat, format!("column `{}` has a different type than in the first unionAll branch", a.name)));
                            }
                        }
                    }
                }
                cols.extend(first.unwrap_or_default());
            }
            Some(_) => {
                return Err(invalid(
                    format!("{at}.unionAll"),
                    "must be a non-empty array",
                ))
            }
        }
        let width = columns.len()
            + selects.iter().map(|s| s.width).sum::<usize>()
            + union_all.first().map_or(0, |u| u.width);
        Ok(SelectPlan {
            iter,
            at: at.to_owned(),
            columns,
            selects,
            union_all,
            width,
        })
    }

    fn column(&self, v: &Json, at: &str) -> Result<(ColumnPlan, ColumnMeta), ViewError> {
        let Json::Object(obj) = v else {
            return Err(invalid(at, "must be an object"));
        };
        let name = match obj.get("name") {
            Some(Json::String(n)) if is_sql_name(n) => n.clone(),
            Some(Json::String(_)) => {
                return Err(invalid(
                    format!("{at}.name"),
                    "must start with a letter or '_' and hold only letters, digits and '_'",
                ))
            }
            Some(_) => return Err(invalid(format!("{at}.name"), "must be a string")),
            None => return Err(invalid(format!("{at}.name"), "is required")),
        };
        let path_at = format!("{at}.path");
        let expr = match obj.get("path") {
            Some(Json::String(p)) => self.expr(p, &path_at)?,
            Some(_) => return Err(invalid(path_at, "must be a FHIRPath string")),
            None => return Err(invalid(path_at, "is required")),
        };
        let fhir_type = match obj.get("type") {
            None => None,
            Some(Json::String(t)) => Some(t.clone()),
            Some(_) => return Err(invalid(format!("{at}.type"), "must be a string")),
        };
        let collection = match obj.get("collection") {
            None => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(invalid(format!("{at}.collection"), "must be a boolean")),
        };
        let kind = ColKind::from_fhir_type(fhir_type.as_deref());
        Ok((
            ColumnPlan {
                name: name.clone(),
                simple: !collection && crate::fhirpath::eval::is_simple_path(&expr),
                expr,
                at: path_at,
                collection,
                kind,
            },
            ColumnMeta {
                name,
                fhir_type,
                kind,
                collection,
            },
        ))
    }
}

fn constants(view: &Map<String, Json>) -> Result<Vec<(String, ConstVal)>, ViewError> {
    let mut out: Vec<(String, ConstVal)> = Vec::new();
    let Some(cs) = view.get("constant") else {
        return Ok(out);
    };
    let Json::Array(cs) = cs else {
        return Err(invalid("constant", "must be an array"));
    };
    for (i, c) in cs.iter().enumerate() {
        let at = format!("constant[{i}]");
        let Json::Object(obj) = c else {
            return Err(invalid(at, "must be an object"));
        };
        let Some(Json::String(name)) = obj.get("name") else {
            return Err(invalid(
                format!("{at}.name"),
                "is required and must be a string",
            ));
        };
        if !is_sql_name(name) {
            return Err(invalid(format!("{at}.name"), "must be a valid name"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(invalid(
                format!("{at}.name"),
                format!("constant `{name}` is defined twice"),
            ));
        }
        let mut value = None;
        for (k, v) in obj {
            if !k.starts_with("value") {
                continue;
            }
            let conv = const_kind(k)
                .ok_or_else(|| invalid(format!("{at}.{k}"), "is not a supported constant type"))?;
            if value.is_some() {
                return Err(invalid(at.clone(), "has more than one value[x]"));
            }
            value = Some(
                conv(v).ok_or_else(|| invalid(format!("{at}.{k}"), "has the wrong JSON type"))?,
            );
        }
        let value = value.ok_or_else(|| invalid(at.clone(), "has no value[x]"))?;
        out.push((name.clone(), value));
    }
    Ok(out)
}

pub(crate) fn compile(bytes: &[u8]) -> Result<CompiledView, ViewError> {
    let json: Json = serde_json::from_slice(bytes)?;
    let Json::Object(view) = &json else {
        return Err(invalid("$", "a ViewDefinition must be a JSON object"));
    };
    if let Some(rt) = view.get("resourceType") {
        if rt != "ViewDefinition" {
            return Err(invalid("resourceType", "must be \"ViewDefinition\""));
        }
    }
    let resource = match view.get("resource") {
        Some(Json::String(r)) if !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()) => {
            r.clone()
        }
        Some(_) => return Err(invalid("resource", "must be a FHIR resource type name")),
        None => return Err(invalid("resource", "is required")),
    };
    let name = match view.get("name") {
        Some(Json::String(n)) if is_sql_name(n) => n.clone(),
        Some(_) => {
            return Err(invalid(
                "name",
                "must start with a letter or '_' and hold only letters, digits and '_'",
            ))
        }
        None => resource.to_ascii_lowercase(),
    };
    let consts = constants(view)?;
    let compiler = Compiler {
        consts: Consts(&consts),
    };

    let mut wheres = Vec::new();
    match view.get("where") {
        None => {}
        Some(Json::Array(ws)) => {
            for (i, w) in ws.iter().enumerate() {
                let at = format!("where[{i}]");
                let Json::Object(wo) = w else {
                    return Err(invalid(at, "must be an object"));
                };
                let e = compiler
                    .path_field(wo, "path", &at)?
                    .ok_or_else(|| invalid(format!("{at}.path"), "is required"))?;
                wheres.push((e, format!("{at}.path")));
            }
        }
        Some(_) => return Err(invalid("where", "must be an array")),
    }

    let mut cols = Vec::new();
    let mut selects = Vec::new();
    match view.get("select") {
        Some(Json::Array(ss)) if !ss.is_empty() => {
            for (i, s) in ss.iter().enumerate() {
                selects.push(compiler.select(s, &format!("select[{i}]"), &mut cols)?);
            }
        }
        Some(_) => return Err(invalid("select", "must be a non-empty array")),
        None => return Err(invalid("select", "is required")),
    }
    let mut seen = HashSet::new();
    for c in &cols {
        if !seen.insert(c.name.as_str()) {
            return Err(invalid(
                "select",
                format!("column name `{}` is used more than once", c.name),
            ));
        }
    }
    let width = selects.iter().map(|s| s.width).sum();
    debug_assert_eq!(width, cols.len());
    let mut root_index = RootIndex::default();
    for (w, _) in &mut wheres {
        root_index.assign(w);
    }
    for s in &mut selects {
        assign_slots(s, &mut root_index);
    }
    root_index.seal();
    let root = SelectPlan {
        iter: Iteration::None,
        at: String::new(),
        columns: Vec::new(),
        selects,
        union_all: Vec::new(),
        width,
    };
    let fields: Vec<FieldRef> = cols
        .iter()
        .map(|c| {
            let dt = c.kind.data_type();
            let dt = if c.collection {
                DataType::List(Arc::new(Field::new("item", dt, true)))
            } else {
                dt
            };
            let mut f = Field::new(c.name.clone(), dt, true);
            if let Some(t) = &c.fhir_type {
                f = f.with_metadata([("fhir.type".to_owned(), t.clone())].into_iter().collect());
            }
            Arc::new(f)
        })
        .collect();
    let digest = Sha256::digest(bytes);
    Ok(CompiledView {
        name,
        resource,
        version: hex::encode(&digest[..8]),
        schema: Arc::new(arrow_schema::Schema::new(fields.clone())),
        fields,
        columns: cols,
        constants: consts.into_iter().map(|(_, v)| v).collect(),
        root_index,
        wheres,
        root,
    })
}
