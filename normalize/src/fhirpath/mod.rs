//! The FHIRPath subset used by SQL-on-FHIR v2 views, evaluated directly over
//! [`simd_json::BorrowedValue`] trees.
//!
//! Expressions are parsed and compiled once per view, when the view is compiled;
//! evaluation borrows strings and nodes from the resource and never round-trips through
//! `serde_json::Value`.
//!
//! # Supported subset
//!
//! | area | supported |
//! |---|---|
//! | navigation | `a.b.c`, `Patient.name` (leading resource type), choice types (`value.ofType(Quantity)` reads `valueQuantity`; a bare `value` finds whichever `value<Type>` is present, for the R4 choice elements listed in `CHOICE_NAMES`), `$this`, indexers `x[n]` |
//! | literals | `true`/`false`, `'string'` (with escapes), integers, decimals, `@2020-01-01`, `@2020-01-01T10:00`, `@T10:00`, `{}` |
//! | environment | `%constant` (view constants), `%rowIndex`, `%resource`/`%rootResource`/`%context`, `%sct`, `%loinc`, `%ucum` |
//! | boolean logic | `and`, `or`, `xor`, `implies`, `not()` with three-valued (empty = unknown) semantics |
//! | comparison | `=`, `!=`, `~`, `!~`, `<`, `<=`, `>`, `>=` |
//! | arithmetic | `+`, `-`, `*`, `/`, `div`, `mod`, unary `-`; string `+` and `&` |
//! | collections | `\|`, `in`, `contains` |
//! | functions | `where`, `select`, `all`, `exists([criteria])`, `empty`, `first`, `last`, `single`, `count`, `distinct`, `allTrue`, `anyTrue`, `not`, `hasValue`, `toString`, `iif`, `startsWith`, `endsWith`, `contains`, `tail`, `skip`, `take`, `length`, `upper`, `lower`, `substring`, `replace`, `indexOf`, `toInteger`, `toDecimal`, `trace`, `ofType`, `is`, `as` (function and operator), `extension(url)`, `join([sep])`, `lowBoundary()`, `highBoundary()`, `getResourceKey()`, `getReferenceKey([type])` |
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
//! # Comparison semantics and known gaps
//!
//! - Numbers compare by value (integers exactly, decimals as `f64`); strings lexically.
//! - Dates, dateTimes and times compare as FHIRPath specifies (time zones normalised,
//!   seconds and milliseconds one precision, an unknown result is empty when the
//!   precisions differ) when at least one side is *typed* temporal: a `@` literal, a
//!   date/time constant, a `value[x]` found under a Date/DateTime/Instant/Time suffix, or a
//!   boundary. Two untyped JSON strings (`birthDate = deceased.ofType(string)`) compare as
//!   strings, since without a model the engine cannot know they are dates.
//! - Equality on collections is pairwise and ordered; `~` ignores case and whitespace for
//!   strings only.
//! - Decimals read from lines prepared with [`crate::prepare_line`] keep their source
//!   text (`toString()`, `toDecimal()`, columns, boundaries: `1.50.lowBoundary()` is
//!   `1.495`) and compare and compute as `f64`; a prepared decimal is never a string
//!   (`is string` is false). Unprepared decimals have whatever precision survives
//!   simd-json's `f64` parse; their boundaries use the digits of the shortest round-trip
//!   text, with at least one fractional digit (`1.0` → `0.95`/`1.05`).
//! - Equality of complex values compares the JSON trees, so a prepared `1.50` inside a
//!   Quantity is not equal to `1.5` in another.
//!
//! # Evaluation strategy
//!
//! Navigation chains (`a.b.ofType(T).first()[0].where(...)`) are flattened at compile time
//! into a step list evaluated in place at the tail of the output collection, with
//! `name.ofType(T)` fused into a direct lookup of the `nameT` key. Temporary collections
//! come from a per-thread pool of recycled vectors, so steady-state evaluation allocates
//! only for computed strings. View columns whose chain has only field, fused choice and
//! `first()` steps are evaluated without collections at all (`eval::single_node`), and
//! fall back to the general evaluator whenever it must decide (a bare choice name that is
//! absent, a type filter, several results).
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
    Tail,
    Skip(Box<Expr>),
    Take(Box<Expr>),
    Length,
    Upper,
    Lower,
    Substring(Box<Expr>, Option<Box<Expr>>),
    Replace(Box<Expr>, Box<Expr>),
    IndexOf(Box<Expr>),
    ToInteger,
    ToDecimal,
    /// `trace(name)`: returns its input unchanged (nothing is logged: no PHI in logs).
    Trace,
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
    /// A navigation chain flattened at compile time (see [`Step`]).
    Path {
        start: Box<Expr>,
        steps: Vec<Step>,
    },
}

/// One step of a flattened navigation chain. Chains such as
/// `value.ofType(Quantity).value` or `name.where(use = 'official').first().family` are
/// evaluated iteratively with two scratch buffers instead of one recursion level and one
/// temporary collection per step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// `.name` (see [`Expr::Member`]).
    Field {
        name: String,
        type_prefix: bool,
        under: Option<String>,
        /// `name` is an R4 choice element ([`eval::is_choice_name`]): a miss scans for
        /// `name<Type>` keys.
        choice: bool,
        /// Slot of `name` in the view's root index ([`RootIndex`]).
        slot: Option<u16>,
    },
    /// `.name.ofType(T)` fused: looks up `nameT` directly (the choice-type key, e.g.
    /// `valueQuantity`), falling back to `name` filtered by type. Saves the scan over the
    /// object's keys that resolving a bare choice name needs.
    Choice {
        name: String,
        key: String,
        ty: String,
        /// Root-index slots of `key` and of `name`.
        key_slot: Option<u16>,
        name_slot: Option<u16>,
    },
    OfType(String),
    First,
    /// `[n]` with a literal `n`.
    Index(usize),
    Where(Box<Expr>),
}

/// Parses and compiles one expression.
pub(crate) fn compile_expr(src: &str, env: &dyn parse::EnvResolver) -> Result<Expr, ParseError> {
    let mut e = parse::parse(src, env)?;
    mark_primitive_ext(&mut e);
    Ok(optimize(e))
}

fn is_chain(e: &Expr) -> bool {
    match e {
        Expr::Member { .. } => true,
        Expr::Call(_, f) => matches!(f, Func::First | Func::OfType(_) | Func::Where(_)),
        Expr::Indexer(_, i) => matches!(**i, Expr::Literal(Literal::Int(n)) if n >= 0),
        _ => false,
    }
}

/// Flattens a navigation chain into `steps`; returns the chain's start expression.
fn flatten(e: Expr, steps: &mut Vec<Step>) -> Expr {
    if !is_chain(&e) {
        return optimize_children(e);
    }
    match e {
        Expr::Member {
            base,
            name,
            type_prefix,
            under,
        } => {
            let start = flatten(*base, steps);
            steps.push(Step::Field {
                choice: eval::is_choice_name(&name),
                name,
                type_prefix,
                under,
                slot: None,
            });
            start
        }
        Expr::Call(base, Func::First) => {
            let start = flatten(*base, steps);
            steps.push(Step::First);
            start
        }
        Expr::Call(base, Func::OfType(t)) => {
            let start = flatten(*base, steps);
            let fused = match steps.last() {
                Some(Step::Field {
                    name,
                    type_prefix: false,
                    under: None,
                    ..
                }) => {
                    let mut cap = t.chars();
                    let key = cap
                        .next()
                        .map(|c| format!("{name}{}{}", c.to_ascii_uppercase(), cap.as_str()));
                    key.map(|key| Step::Choice {
                        name: name.clone(),
                        key,
                        ty: t.clone(),
                        key_slot: None,
                        name_slot: None,
                    })
                }
                _ => None,
            };
            match fused {
                Some(step) => {
                    steps.pop();
                    steps.push(step);
                }
                None => steps.push(Step::OfType(t)),
            }
            start
        }
        Expr::Call(base, Func::Where(c)) => {
            let start = flatten(*base, steps);
            steps.push(Step::Where(Box::new(optimize(*c))));
            start
        }
        Expr::Indexer(base, i) => {
            let n = match *i {
                Expr::Literal(Literal::Int(n)) => usize::try_from(n).unwrap_or(usize::MAX),
                _ => usize::MAX,
            };
            let start = flatten(*base, steps);
            steps.push(Step::Index(n));
            start
        }
        other => optimize_children(other),
    }
}

/// Rewrites navigation chains into [`Expr::Path`] throughout the tree.
fn optimize(e: Expr) -> Expr {
    if is_chain(&e) {
        let mut steps = Vec::new();
        let start = flatten(e, &mut steps);
        return Expr::Path {
            start: Box::new(start),
            steps,
        };
    }
    optimize_children(e)
}

fn optimize_children(e: Expr) -> Expr {
    let b = |x: Box<Expr>| Box::new(optimize(*x));
    let ob = |x: Option<Box<Expr>>| x.map(|x| Box::new(optimize(*x)));
    match e {
        Expr::Call(base, f) => {
            let f = match f {
                Func::Where(a) => Func::Where(b(a)),
                Func::Select(a) => Func::Select(b(a)),
                Func::All(a) => Func::All(b(a)),
                Func::Exists(a) => Func::Exists(ob(a)),
                Func::Extension(a) => Func::Extension(b(a)),
                Func::Join(a) => Func::Join(ob(a)),
                Func::Iif(c, t, f) => Func::Iif(b(c), b(t), ob(f)),
                Func::StartsWith(a) => Func::StartsWith(b(a)),
                Func::EndsWith(a) => Func::EndsWith(b(a)),
                Func::ContainsStr(a) => Func::ContainsStr(b(a)),
                Func::Skip(a) => Func::Skip(b(a)),
                Func::Take(a) => Func::Take(b(a)),
                Func::IndexOf(a) => Func::IndexOf(b(a)),
                Func::Substring(a, l) => Func::Substring(b(a), ob(l)),
                Func::Replace(a, r) => Func::Replace(b(a), b(r)),
                other => other,
            };
            Expr::Call(b(base), f)
        }
        Expr::Member {
            base,
            name,
            type_prefix,
            under,
        } => Expr::Member {
            base: b(base),
            name,
            type_prefix,
            under,
        },
        Expr::Indexer(x, i) => Expr::Indexer(b(x), b(i)),
        Expr::Neg(x) => Expr::Neg(b(x)),
        Expr::Binary(op, l, r) => Expr::Binary(op, b(l), b(r)),
        Expr::TypeOp(op, x, t) => Expr::TypeOp(op, b(x), t),
        other => other,
    }
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
                | Func::ContainsStr(a)
                | Func::Skip(a)
                | Func::Take(a)
                | Func::IndexOf(a) => mark_primitive_ext(a),
                Func::Substring(a, l) => {
                    mark_primitive_ext(a);
                    if let Some(l) = l {
                        mark_primitive_ext(l);
                    }
                }
                Func::Replace(a, r) => {
                    mark_primitive_ext(a);
                    mark_primitive_ext(r);
                }
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
        // Runs before paths are flattened.
        Expr::Path { .. } => {}
        Expr::Empty
        | Expr::Literal(_)
        | Expr::This
        | Expr::Root
        | Expr::RowIndex
        | Expr::Const(_) => {}
    }
}

/// The keys a view reads from resource roots, hashed once per view. Per resource the root
/// object's keys are looked up here once ([`RootIndex::fill`]); every later step that
/// reads the root then finds its value, or its absence, in a slot instead of scanning the
/// object again. The root is where wide views read most (the canonical Observation view reads
/// about 30 root keys, most of them absent choice alternatives).
#[derive(Debug, Default)]
pub(crate) struct RootIndex {
    names: Vec<String>,
    /// Open addressing over `names` ([`key_hash`], linear probing); `u16::MAX` is empty.
    table: Vec<u16>,
}

const EMPTY_SLOT: u16 = u16::MAX;

/// Hash of a key from its length and three of its bytes: root keys are short and differ
/// there (`valueQuantity`, `valueString`, `effectiveDateTime`), and the lookup runs for
/// every root key of every resource, so hashing every byte cost more than the probe.
/// Collisions only cost a probe step (keys are compared in full).
fn key_hash(s: &[u8]) -> u64 {
    let n = s.len();
    let (first, mid, last) = match n {
        0 => (0, 0, 0),
        _ => (s[0], s[n / 2], s[n - 1]),
    };
    let x = (n as u64) | u64::from(first) << 16 | u64::from(mid) << 24 | u64::from(last) << 32;
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24
}

impl RootIndex {
    /// Assigns slots to every root-capable step of `e`.
    pub(crate) fn assign(&mut self, e: &mut Expr) {
        match e {
            Expr::Path { start, steps } => {
                self.assign(start);
                for step in steps {
                    match step {
                        Step::Field {
                            name,
                            type_prefix: false,
                            under: None,
                            slot,
                            ..
                        } => *slot = self.slot(name),
                        Step::Choice {
                            name,
                            key,
                            key_slot,
                            name_slot,
                            ..
                        } => {
                            *key_slot = self.slot(key);
                            *name_slot = self.slot(name);
                        }
                        Step::Where(c) => self.assign(c),
                        _ => {}
                    }
                }
            }
            Expr::Member { base, .. } | Expr::Neg(base) | Expr::TypeOp(_, base, _) => {
                self.assign(base)
            }
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
                self.assign(a);
                self.assign(b);
            }
            Expr::Call(base, f) => {
                self.assign(base);
                match f {
                    Func::Where(a)
                    | Func::Select(a)
                    | Func::All(a)
                    | Func::Extension(a)
                    | Func::StartsWith(a)
                    | Func::EndsWith(a)
                    | Func::ContainsStr(a)
                    | Func::Skip(a)
                    | Func::Take(a)
                    | Func::IndexOf(a)
                    | Func::Exists(Some(a))
                    | Func::Join(Some(a)) => self.assign(a),
                    Func::Substring(a, l) => {
                        self.assign(a);
                        if let Some(l) = l {
                            self.assign(l);
                        }
                    }
                    Func::Replace(a, r) => {
                        self.assign(a);
                        self.assign(r);
                    }
                    Func::Iif(c, t, f) => {
                        self.assign(c);
                        self.assign(t);
                        if let Some(f) = f {
                            self.assign(f);
                        }
                    }
                    _ => {}
                }
            }
            Expr::Empty
            | Expr::Literal(_)
            | Expr::This
            | Expr::Root
            | Expr::RowIndex
            | Expr::Const(_) => {}
        }
    }

    /// The root keys, by slot.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn slot(&mut self, name: &str) -> Option<u16> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return u16::try_from(i).ok();
        }
        // Keep the table at most half full and the slot ids below EMPTY_SLOT.
        if self.names.len() >= 4096 {
            return None;
        }
        self.names.push(name.to_owned());
        u16::try_from(self.names.len() - 1).ok()
    }

    /// Builds the hash table once all slots are assigned.
    pub(crate) fn seal(&mut self) {
        let size = (self.names.len() * 2).next_power_of_two().max(8);
        self.table = vec![EMPTY_SLOT; size];
        for (i, n) in self.names.iter().enumerate() {
            let mut h = key_hash(n.as_bytes()) as usize & (size - 1);
            while self.table[h] != EMPTY_SLOT {
                h = (h + 1) & (size - 1);
            }
            self.table[h] = u16::try_from(i).unwrap_or(EMPTY_SLOT);
        }
    }

    fn find(&self, key: &str) -> Option<usize> {
        let size = self.table.len();
        if size == 0 {
            return None;
        }
        let mut h = key_hash(key.as_bytes()) as usize & (size - 1);
        loop {
            let id = self.table[h];
            if id == EMPTY_SLOT {
                return None;
            }
            if self.names[usize::from(id)] == key {
                return Some(usize::from(id));
            }
            h = (h + 1) & (size - 1);
        }
    }

    /// Fills `slots` (cleared, one per assigned name) from the root object.
    pub(crate) fn fill<'a>(
        &self,
        root: &'a simd_json::BorrowedValue<'a>,
        slots: &mut Vec<Option<&'a simd_json::BorrowedValue<'a>>>,
    ) {
        slots.clear();
        slots.resize(self.names.len(), None);
        if self.names.is_empty() {
            return;
        }
        if let simd_json::BorrowedValue::Object(map) = root {
            for (k, v) in map.iter() {
                if let Some(i) = self.find(k) {
                    slots[i] = Some(v);
                }
            }
        }
    }
}
