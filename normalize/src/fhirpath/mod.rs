//! The FHIRPath subset used by SQL-on-FHIR v2 views, evaluated directly over
//! [`simd_json::BorrowedValue`] trees.
//!
//! Expressions are parsed and compiled once per view ([`parse::parse`] plus
//! [`compile_expr`]); evaluation borrows strings and nodes from the resource and never
//! round-trips through `serde_json::Value`.
//!
//! # Supported subset
//!
//! | area | supported |
//! |---|---|
//! | navigation | `a.b.c`, `Patient.name` (leading resource type), choice types (`value` finds `valueQuantity`, `valueString`, ...), `$this`, indexers `x[n]` |
//! | literals | `true`/`false`, `'string'` (with escapes), integers, decimals, `@2020-01-01`, `@2020-01-01T10:00`, `@T10:00`, `{}` |
//! | environment | `%constant` (view constants), `%rowIndex`, `%resource`/`%rootResource`/`%context`, `%sct`, `%loinc`, `%ucum` |
//! | boolean logic | `and`, `or`, `xor`, `implies`, `not()` with three-valued (empty = unknown) semantics |
//! | comparison | `=`, `!=`, `~`, `!~`, `<`, `<=`, `>`, `>=` |
//! | arithmetic | `+`, `-`, `*`, `/`, `div`, `mod`, unary `-`; string `+` and `&` |
//! | collections | `\|`, `in`, `contains` |
//! | functions | `where`, `select`, `all`, `exists([criteria])`, `empty`, `first`, `last`, `single`, `count`, `distinct`, `allTrue`, `anyTrue`, `not`, `hasValue`, `toString`, `iif`, `startsWith`, `endsWith`, `contains`, `ofType`, `is`, `as` (function and operator), `extension(url)`, `join([sep])`, `lowBoundary()`, `highBoundary()`, `getResourceKey()`, `getReferenceKey([type])` |
//!
//! Not supported (rejected at compile time): quantity literals, `$index`, `$total`,
//! `matches`, `aggregate`, `resolve`, and other functions not listed.
//!
//! # Type information without a model
//!
//! The engine carries no FHIR structure definitions. Types are known from the choice-type
//! suffix a value was found under (`valueQuantity` is a `Quantity`), from literals and
//! constants, and otherwise from the JSON shape: JSON booleans are `boolean`, JSON
//! integers `integer`, JSON fractions `decimal`, JSON strings match any string-based
//! primitive (`string`, `code`, `id`, `uri`, `date`, ...), objects with `resourceType`
//! match that resource type and other objects match any capitalised complex type name.
//!
//! # Primitive extensions
//!
//! `birthDate.extension(url)` and `birthDate.id` read FHIR's JSON split representation
//! (`_birthDate`). The sibling `_name` element is only looked up when the compiled
//! expression needs it, so ordinary navigation pays nothing for it.
//!
//! # Keys
//!
//! `getResourceKey()` is the resource `id`. `getReferenceKey([Type])` is the last path
//! segment of `Reference.reference` (after dropping any `/_history/...`), optionally kept
//! only when the segment before it equals `Type`; references without a literal
//! `reference` give no key. So `getResourceKey() = subject.getReferenceKey(Patient)`
//! joins a resource to the patient it references.

pub(crate) mod eval;
pub(crate) mod parse;
pub(crate) mod temporal;

pub use parse::ParseError;

/// Kind of a string-valued literal, constant or computed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrKind {
    String,
    Date,
    DateTime,
    Time,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String, StrKind),
}

/// A view constant's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConstVal {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String, StrKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Le,
    Gt,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
    IntDiv,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeOp {
    Is,
    As,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Func {
    Where(Box<Expr>),
    Select(Box<Expr>),
    All(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    First,
    Last,
    Single,
    Count,
    Not,
    HasValue,
    ToString,
    Distinct,
    AllTrue,
    AnyTrue,
    OfType(String),
    Is(String),
    As(String),
    Extension(Box<Expr>),
    Join(Option<Box<Expr>>),
    LowBoundary,
    HighBoundary,
    GetResourceKey,
    GetReferenceKey(Option<String>),
    Iif(Box<Expr>, Box<Expr>, Option<Box<Expr>>),
    StartsWith(Box<Expr>),
    EndsWith(Box<Expr>),
    ContainsStr(Box<Expr>),
}

/// A compiled FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    /// The input collection (`$this` at the top of an expression or inside a lambda).
    This,
    /// `%resource`
    Root,
    /// `%rowIndex`
    RowIndex,
    /// A view constant, by index.
    Const(usize),
    Member {
        base: Box<Expr>,
        name: String,
        /// The name is the first step of the expression and may be a resource type.
        type_prefix: bool,
        /// `_name`, set when a later step reads primitive extensions or ids.
        under: Option<String>,
    },
    Call(Box<Expr>, Func),
    Indexer(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    TypeOp(TypeOp, Box<Expr>, String),
}

/// Parses and compiles one expression.
pub(crate) fn compile_expr(src: &str, env: &dyn parse::EnvResolver) -> Result<Expr, ParseError> {
    let mut e = parse::parse(src, env)?;
    mark_primitive_ext(&mut e);
    Ok(e)
}

/// Marks the members whose primitive-extension sibling (`_name`) is read by the next step.
fn mark_primitive_ext(e: &mut Expr) {
    fn mark(base: &mut Expr) {
        if let Expr::Member { name, under, .. } = base {
            *under = Some(format!("_{name}"));
        }
    }
    match e {
        Expr::Member { base, name, .. } => {
            if name == "extension" || name == "id" {
                mark(base);
            }
            mark_primitive_ext(base);
        }
        Expr::Call(base, f) => {
            if matches!(f, Func::Extension(_) | Func::HasValue) {
                mark(base);
            }
            mark_primitive_ext(base);
            match f {
                Func::Where(a)
                | Func::Select(a)
                | Func::All(a)
                | Func::Extension(a)
                | Func::StartsWith(a)
                | Func::EndsWith(a)
                | Func::ContainsStr(a) => mark_primitive_ext(a),
                Func::Exists(Some(a)) | Func::Join(Some(a)) => mark_primitive_ext(a),
                Func::Iif(c, t, f) => {
                    mark_primitive_ext(c);
                    mark_primitive_ext(t);
                    if let Some(f) = f {
                        mark_primitive_ext(f);
                    }
                }
                _ => {}
            }
        }
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
            mark_primitive_ext(a);
            mark_primitive_ext(b);
        }
        Expr::Neg(a) | Expr::TypeOp(_, a, _) => mark_primitive_ext(a),
        Expr::Empty
        | Expr::Literal(_)
        | Expr::This
        | Expr::Root
        | Expr::RowIndex
        | Expr::Const(_) => {}
    }
}
