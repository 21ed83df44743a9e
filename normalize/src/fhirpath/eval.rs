//! Evaluation of compiled expressions over borrowed JSON.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;

use simd_json::{BorrowedValue as Value, StaticNode};

use super::temporal;
use super::{BinOp, ConstVal, Expr, Func, Literal, Step, StrKind, TypeOp};
use crate::prepare::marked_decimal;

/// An evaluation failure inside an expression. Messages carry no resource content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FpError(pub(crate) &'static str);

pub(crate) type FpResult<T> = Result<T, FpError>;

thread_local! {
    /// Recycled scratch vectors: evaluation needs a few temporary collections per
    /// expression and allocating them per resource dominated the profile.
    static POOL: RefCell<Vec<Vec<Item<'static>>>> = const { RefCell::new(Vec::new()) };
}

/// Most scratch vectors kept per thread.
const POOL_MAX: usize = 64;

/// Re-types an empty vector to another lifetime, keeping its allocation (in-place
/// `collect` reuses the buffer when the element layout is the same).
pub(crate) fn relabel<'x, 'y, T: 'x, U: 'y>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector was cleared"))
        .collect()
}

/// A pooled scratch collection, returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct Buf<'a>(Vec<Item<'a>>);

impl<'a> Buf<'a> {
    pub(crate) fn take() -> Self {
        let v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        Buf(relabel(v))
    }
}

impl Drop for Buf<'_> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // Oversized buffers are freed rather than pooled, bounding per-thread memory.
        if v.capacity() == 0 || v.capacity() > 1024 {
            return;
        }
        let v: Vec<Item<'static>> = relabel(v);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(v);
            }
        });
    }
}

impl<'a> std::ops::Deref for Buf<'a> {
    type Target = Vec<Item<'a>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Buf<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Placeholder node for a primitive that has only a `_name` extension part.
static NULL: Value<'static> = Value::Static(StaticNode::Null);

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub(crate) enum Item<'a> {
    /// A node of the resource.
    Node {
        v: &'a Value<'a>,
        /// Choice-type suffix the node was found under (`Quantity` for `valueQuantity`).
        ty: Option<&'a str>,
        /// The `_name` sibling of a primitive (extensions and id).
        ext: Option<&'a Value<'a>>,
    },
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'a, str>, StrKind),
}

impl<'a> Item<'a> {
    pub(crate) const fn node(v: &'a Value<'a>) -> Self {
        Item::Node {
            v,
            ty: None,
            ext: None,
        }
    }
}

/// Evaluation environment shared by every expression of one row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) root: &'a Value<'a>,
    /// The root's values by [`super::RootIndex`] slot (empty when unused).
    pub(crate) root_slots: &'a [Option<&'a Value<'a>>],
    pub(crate) consts: &'a [ConstVal],
    pub(crate) row_index: i64,
}

/// Primitive view of an item used by comparisons and conversions.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prim<'x> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(&'x str),
    Complex,
    Null,
}

pub(crate) fn prim<'x>(it: &'x Item<'_>) -> Prim<'x> {
    match it {
        Item::Node { v, .. } => match v {
            Value::Static(StaticNode::Bool(b)) => Prim::Bool(*b),
            Value::Static(StaticNode::I64(i)) => Prim::Int(*i),
            Value::Static(StaticNode::U64(u)) => match i64::try_from(*u) {
                Ok(i) => Prim::Int(i),
                Err(_) => Prim::Dec(*u as f64),
            },
            Value::Static(StaticNode::F64(f)) => Prim::Dec(*f),
            Value::Static(StaticNode::Null) => Prim::Null,
            Value::String(s) => match marked_decimal(s) {
                Some(t) => Prim::Dec(t.parse().unwrap_or(f64::NAN)),
                None => Prim::Str(s),
            },
            _ => Prim::Complex,
        },
        Item::Bool(b) => Prim::Bool(*b),
        Item::Int(i) => Prim::Int(*i),
        Item::Dec(d) => Prim::Dec(*d),
        Item::Str(s, _) => Prim::Str(s),
    }
}

const FHIR_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Integer64",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "CodeableReference",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "RatioRange",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

/// Pushes the items `obj.name` names (expanding arrays, resolving choice types).
/// FHIR R4 elements whose name ends in `[x]` (choice types), by base name. Only these are
/// resolved through a type suffix when navigated bare (`value` → `valueQuantity`);
/// `name.ofType(T)` looks up `nameT` directly and needs no entry here.
const CHOICE_NAMES: &[&str] = &[
    "abatement",
    "additive",
    "age",
    "allowed",
    "amount",
    "answer",
    "asNeeded",
    "author",
    "born",
    "bounds",
    "chargeItem",
    "characteristic",
    "code",
    "collected",
    "content",
    "created",
    "deceased",
    "defaultValue",
    "definingSubstance",
    "definition",
    "detail",
    "diagnosis",
    "dose",
    "doseNumber",
    "due",
    "effective",
    "entity",
    "event",
    "fastingStatus",
    "fixed",
    "identified",
    "indication",
    "item",
    "legallyBinding",
    "location",
    "maxValue",
    "medication",
    "minValue",
    "minimumVolume",
    "module",
    "multipleBirth",
    "occurred",
    "occurrence",
    "offset",
    "onset",
    "participantEffective",
    "pattern",
    "performed",
    "probability",
    "procedure",
    "product",
    "quantity",
    "rate",
    "reported",
    "scheduled",
    "serviced",
    "seriesDoses",
    "source",
    "start",
    "statusReason",
    "studyEffective",
    "subject",
    "substance",
    "target",
    "time",
    "timing",
    "topic",
    "used",
    "value",
    "when",
];

/// Is `name` the base name of an R4 choice element?
pub(crate) fn is_choice_name(name: &str) -> bool {
    CHOICE_NAMES.contains(&name)
}

fn navigate<'a>(
    obj: &'a Value<'a>,
    name: &str,
    under: Option<&str>,
    choice: bool,
    out: &mut Vec<Item<'a>>,
) {
    let Value::Object(map) = obj else { return };
    if let Some(v) = map.get(name) {
        let ext = under.and_then(|u| map.get(u));
        push_value(v, None, ext, out);
        return;
    }
    if let Some(u) = under {
        // A primitive with only its extension part present.
        if let Some(ext) = map.get(u) {
            push_value(&NULL, None, Some(ext), out);
            return;
        }
    }
    if !choice {
        return;
    }
    // Choice type: `value` finds `valueQuantity`. Misses are common (optional fields), so
    // cheap byte checks come before any string comparison.
    let nb = name.as_bytes();
    let Some(&first) = nb.first() else { return };
    for (k, v) in map.iter() {
        let k: &'a str = k;
        let kb = k.as_bytes();
        if kb.len() > nb.len()
            && kb[0] == first
            && kb[nb.len()].is_ascii_uppercase()
            && &kb[..nb.len()] == nb
        {
            let suffix = &k[name.len()..];
            if FHIR_TYPES.contains(&suffix) {
                push_value(v, Some(suffix), None, out);
                return;
            }
        }
    }
}

fn push_value<'a>(
    v: &'a Value<'a>,
    ty: Option<&'a str>,
    ext: Option<&'a Value<'a>>,
    out: &mut Vec<Item<'a>>,
) {
    match v {
        Value::Array(items) => {
            let exts = match ext {
                Some(Value::Array(e)) => Some(e),
                _ => None,
            };
            for (i, x) in items.iter().enumerate() {
                if matches!(x, Value::Static(StaticNode::Null))
                    && exts.and_then(|e| e.get(i)).is_none()
                {
                    continue;
                }
                let ext = exts
                    .and_then(|e| e.get(i))
                    .filter(|e| !matches!(e, Value::Static(StaticNode::Null)));
                out.push(Item::Node { v: x, ty, ext });
            }
        }
        Value::Static(StaticNode::Null) if ext.is_none() => {}
        _ => out.push(Item::Node { v, ty, ext }),
    }
}

/// Singleton evaluation to a boolean: `None` for empty.
pub(crate) fn to_bool(items: &[Item<'_>]) -> FpResult<Option<bool>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(match prim(one) {
            Prim::Bool(b) => b,
            _ => true,
        })),
        _ => Err(FpError("expected a single value in a boolean context")),
    }
}

/// Like [`to_bool`] but rejects non-boolean values (view `where` clauses).
pub(crate) fn to_strict_bool(items: &[Item<'_>]) -> FpResult<Option<bool>> {
    match items {
        [] => Ok(None),
        [one] => match prim(one) {
            Prim::Bool(b) => Ok(Some(b)),
            _ => Err(FpError("expected a boolean")),
        },
        _ => Err(FpError("expected a single boolean")),
    }
}

fn single<'x, 'a>(items: &'x [Item<'a>]) -> FpResult<Option<&'x Item<'a>>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(FpError("expected a single value")),
    }
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dec(d) => d,
        }
    }
}

fn num(p: Prim<'_>) -> Option<Num> {
    match p {
        Prim::Int(i) => Some(Num::Int(i)),
        Prim::Dec(d) => Some(Num::Dec(d)),
        _ => None,
    }
}

/// Is `it` a date/dateTime/time by type (literal, constant, choice suffix or boundary)?
fn is_temporal(it: &Item<'_>) -> bool {
    match it {
        Item::Str(_, k) => *k != StrKind::String,
        Item::Node { ty: Some(t), .. } => matches!(*t, "Date" | "DateTime" | "Instant" | "Time"),
        _ => false,
    }
}

/// Precision-aware comparison when either side is typed as a date/dateTime/time: `None` when
/// not temporal, `Some(None)` when unknown.
fn temporal(a: &Item<'_>, b: &Item<'_>) -> Option<Option<Ordering>> {
    if !(is_temporal(a) || is_temporal(b)) {
        return None;
    }
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => temporal::temporal_cmp(x, y),
        _ => None,
    }
}

/// `=` on two items: `None` when unknown (temporal values of different precision).
fn items_eq3(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match temporal(a, b) {
        Some(o) => o.map(|o| o == Ordering::Equal),
        None => Some(items_eq(a, b)),
    }
}

fn items_eq(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (prim(a), prim(b)) {
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Str(x), Prim::Str(y)) => x == y,
        (Prim::Int(x), Prim::Int(y)) => x == y,
        (x, y) => match (num(x), num(y)) {
            (Some(x), Some(y)) => x.f() == y.f(),
            _ => match (a, b) {
                (Item::Node { v: x, .. }, Item::Node { v: y, .. }) => {
                    matches!(prim(a), Prim::Complex) && x == y
                }
                _ => false,
            },
        },
    }
}

fn items_equiv(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => items_eq(a, b),
    }
}

fn compare(a: &Item<'_>, b: &Item<'_>) -> Option<Ordering> {
    if let Some(o) = temporal(a, b) {
        return o;
    }
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        (x, y) => match (num(x), num(y)) {
            (Some(Num::Int(x)), Some(Num::Int(y))) => Some(x.cmp(&y)),
            (Some(x), Some(y)) => x.f().partial_cmp(&y.f()),
            _ => None,
        },
    }
}

/// Does `it` have the named type? See the module docs for the model-free rules.
pub(crate) fn is_type(it: &Item<'_>, t: &str) -> bool {
    // `t` is a bare type name: the parser keeps only the last part of `FHIR.Quantity`.
    let same = |a: &str| {
        let (mut x, mut y) = (a.chars(), t.chars());
        match (x.next(), y.next()) {
            (Some(a0), Some(b0)) => a0.eq_ignore_ascii_case(&b0) && x.as_str() == y.as_str(),
            _ => false,
        }
    };
    const STRINGISH: &[&str] = &[
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "date",
        "dateTime",
        "instant",
        "time",
        "xhtml",
    ];
    match it {
        Item::Node { ty: Some(ty), .. } => same(ty),
        Item::Node { v, .. } => match v {
            Value::Static(StaticNode::Bool(_)) => t == "boolean" || t == "Boolean",
            Value::Static(StaticNode::I64(_) | StaticNode::U64(_)) => {
                matches!(
                    t,
                    "integer" | "positiveInt" | "unsignedInt" | "integer64" | "Integer" | "decimal"
                )
            }
            Value::Static(StaticNode::F64(_)) => t == "decimal" || t == "Decimal",
            Value::String(s) if marked_decimal(s).is_some() => t == "decimal" || t == "Decimal",
            Value::String(_) => STRINGISH.contains(&t) || t == "String",
            Value::Object(o) => match o.get("resourceType").and_then(|r| r.as_str_opt()) {
                Some(rt) => rt == t || t == "Resource" || t == "DomainResource",
                None => t.starts_with(|c: char| c.is_ascii_uppercase()),
            },
            _ => false,
        },
        Item::Bool(_) => t == "boolean" || t == "Boolean",
        Item::Int(_) => t == "integer" || t == "Integer",
        Item::Dec(_) => t == "decimal" || t == "Decimal",
        Item::Str(_, k) => match k {
            StrKind::String => t == "string" || t == "String",
            StrKind::Date => t == "date" || t == "Date",
            StrKind::DateTime => t == "dateTime" || t == "DateTime",
            StrKind::Time => t == "time" || t == "Time",
        },
    }
}

trait AsStrOpt {
    fn as_str_opt(&self) -> Option<&str>;
}

impl AsStrOpt for Value<'_> {
    fn as_str_opt(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

fn object_of<'a>(it: &Item<'a>) -> Option<&'a simd_json::borrowed::Object<'a>> {
    match it {
        Item::Node {
            v: Value::Object(o),
            ..
        } => Some(o),
        _ => None,
    }
}

fn const_item(c: &ConstVal) -> Item<'_> {
    match c {
        ConstVal::Bool(b) => Item::Bool(*b),
        ConstVal::Int(i) => Item::Int(*i),
        ConstVal::Dec(d) => Item::Dec(*d),
        ConstVal::Str(s, k) => Item::Str(Cow::Borrowed(s), *k),
    }
}

pub(crate) fn to_text<'a>(it: &Item<'a>) -> Option<Cow<'a, str>> {
    match it {
        Item::Str(s, _) => Some(s.clone()),
        Item::Node {
            v: Value::String(s),
            ..
        } => {
            let s: &'a str = s;
            Some(Cow::Borrowed(marked_decimal(s).unwrap_or(s)))
        }
        Item::Node {
            v: Value::Static(StaticNode::Bool(b)),
            ..
        }
        | Item::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Item::Node {
            v: Value::Static(StaticNode::I64(i)),
            ..
        }
        | Item::Int(i) => Some(Cow::Owned(i.to_string())),
        Item::Node {
            v: Value::Static(StaticNode::U64(u)),
            ..
        } => Some(Cow::Owned(u.to_string())),
        Item::Node {
            v: Value::Static(StaticNode::F64(f)),
            ..
        }
        | Item::Dec(f) => Some(Cow::Owned(temporal::float_text(*f))),
        _ => None,
    }
}

/// The source text of a node prepared by [`crate::prepare_line`] (`"\u{FDD0}1.50"`).
pub(crate) fn node_decimal_text<'a>(it: &Item<'a>) -> Option<&'a str> {
    match it {
        Item::Node {
            v: Value::String(s),
            ..
        } => {
            let s: &'a str = s;
            marked_decimal(s)
        }
        _ => None,
    }
}

fn boundary<'a>(it: &Item<'a>, high: bool) -> Option<Item<'a>> {
    enum K {
        Date,
        DateTime,
        Time,
        Dec,
    }
    let tagged = match it {
        Item::Node { ty: Some(t), .. } => match *t {
            "Date" => Some(K::Date),
            "DateTime" | "Instant" => Some(K::DateTime),
            "Time" => Some(K::Time),
            "Decimal" | "Integer" => Some(K::Dec),
            _ => None,
        },
        Item::Str(_, StrKind::Date) => Some(K::Date),
        Item::Str(_, StrKind::DateTime) => Some(K::DateTime),
        Item::Str(_, StrKind::Time) => Some(K::Time),
        _ => None,
    };
    let p = prim(it);
    let kind = match (tagged, p) {
        (Some(k), _) => k,
        (None, Prim::Int(_) | Prim::Dec(_)) => K::Dec,
        (None, Prim::Str(s)) if s.contains('T') => K::DateTime,
        (None, Prim::Str(s)) if temporal::is_date(s) => K::Date,
        (None, Prim::Str(s)) if temporal::is_time(s) => K::Time,
        _ => return None,
    };
    match kind {
        K::Dec => {
            let text = match p {
                Prim::Int(i) => i.to_string(),
                Prim::Dec(_) if node_decimal_text(it).is_some() => {
                    node_decimal_text(it).unwrap_or_default().to_owned()
                }
                Prim::Dec(d) => temporal::float_text(d),
                Prim::Str(s) => s.to_owned(),
                _ => return None,
            };
            let b = temporal::decimal_boundary(&text, high)?;
            b.parse().ok().map(Item::Dec)
        }
        K::Date => {
            let Prim::Str(s) = p else { return None };
            temporal::date_boundary(s, high).map(|b| Item::Str(Cow::Owned(b), StrKind::Date))
        }
        K::DateTime => {
            let Prim::Str(s) = p else { return None };
            temporal::datetime_boundary(s, high)
                .map(|b| Item::Str(Cow::Owned(b), StrKind::DateTime))
        }
        K::Time => {
            let Prim::Str(s) = p else { return None };
            temporal::time_boundary(s, high).map(|b| Item::Str(Cow::Owned(b), StrKind::Time))
        }
    }
}

/// `Type/id` → (`Type`, `id`) following the reference implementation: the key is the
/// last path segment, the type the one before it; any `/_history/...` is dropped.
pub(crate) fn split_reference(r: &str) -> (Option<&str>, &str) {
    const HISTORY: &[u8] = b"/_history";
    let b = r.as_bytes();
    // `_` is rare in references, so one memchr settles most of them.
    let mut end = b.len();
    let mut from = 0;
    while let Some(p) = memchr::memchr(b'_', &b[from..]) {
        let i = from + p;
        if i > 0 && b[i - 1] == b'/' && b[i - 1..].starts_with(HISTORY) {
            end = i - 1;
            break;
        }
        from = i + 1;
    }
    let Some(slash) = memchr::memrchr(b'/', &b[..end]) else {
        return (None, &r[..end]);
    };
    let key = &r[slash + 1..end];
    let type_start = memchr::memrchr(b'/', &b[..slash]).map_or(0, |p| p + 1);
    (Some(&r[type_start..slash]), key)
}

/// Root slot lookup: `Some(value or absence)` when `v` is the root and the key has a slot.
#[inline]
fn root_slot<'a>(env: &Env<'a>, v: &Value<'_>, slot: Option<u16>) -> Option<Option<&'a Value<'a>>> {
    let slot = usize::from(slot?);
    if !std::ptr::eq(v, env.root) {
        return None;
    }
    env.root_slots.get(slot).copied()
}

#[allow(clippy::too_many_arguments)]
fn member_step<'a>(
    env: &Env<'a>,
    it: &Item<'a>,
    name: &str,
    type_prefix: bool,
    under: Option<&str>,
    choice: bool,
    slot: Option<u16>,
    out: &mut Vec<Item<'a>>,
) {
    let Item::Node { v, ext, .. } = it else {
        return;
    };
    if let Some(found) = root_slot(env, v, slot) {
        match found {
            Some(x) => push_value(x, None, None, out),
            // Absent at the root: only a bare choice name needs the key scan.
            None if choice => navigate(v, name, None, true, out),
            None => {}
        }
        return;
    }
    if type_prefix {
        if let Value::Object(o) = v {
            if o.get("resourceType").and_then(|r| r.as_str_opt()) == Some(name) {
                out.push(it.clone());
                return;
            }
        }
    }
    match (v, ext) {
        (Value::Object(_), _) => navigate(v, name, under, choice, out),
        (_, Some(x)) => navigate(x, name, under, choice, out),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn choice_step<'a>(
    env: &Env<'a>,
    it: &Item<'a>,
    name: &str,
    key: &'a str,
    ty: &str,
    key_slot: Option<u16>,
    name_slot: Option<u16>,
    out: &mut Vec<Item<'a>>,
) {
    let Item::Node {
        v: obj @ Value::Object(map),
        ..
    } = it
    else {
        return;
    };
    if let Some(found) = root_slot(env, obj, key_slot) {
        if let Some(v) = found {
            push_value(v, key.get(name.len()..), None, out);
            return;
        }
        if let Some(None) = root_slot(env, obj, name_slot) {
            return;
        }
    }
    if let Some(v) = map.get(key) {
        // The tag is the key's suffix (`DateTime`), as `navigate` gives for choice keys.
        push_value(v, key.get(name.len()..), None, out);
        return;
    }
    if let Some(v) = map.get(name) {
        let start = out.len();
        push_value(v, None, None, out);
        let mut i = start;
        while i < out.len() {
            if is_type(&out[i], ty) {
                i += 1;
            } else {
                out.remove(i);
            }
        }
    }
}

/// Applies a navigation step to every item of `src`; `false` for steps that are not
/// navigation.
fn nav_step<'a>(env: &Env<'a>, step: &'a Step, src: &[Item<'a>], dst: &mut Vec<Item<'a>>) -> bool {
    match step {
        Step::Field {
            name,
            type_prefix,
            under,
            choice,
            slot,
        } => {
            for it in src {
                member_step(
                    env,
                    it,
                    name,
                    *type_prefix,
                    under.as_deref(),
                    *choice,
                    *slot,
                    dst,
                );
            }
            true
        }
        Step::Choice {
            name,
            key,
            ty,
            key_slot,
            name_slot,
        } => {
            for it in src {
                choice_step(env, it, name, key, ty, *key_slot, *name_slot, dst);
            }
            true
        }
        _ => false,
    }
}

/// Evaluates a flattened chain in place at the tail of `out` (no scratch buffers).
fn eval_path<'a>(
    start: &'a Expr,
    steps: &'a [Step],
    env: &Env<'a>,
    this: &[Item<'a>],
    out: &mut Vec<Item<'a>>,
) -> FpResult<()> {
    let base = out.len();
    let mut rest = steps;
    if matches!(start, Expr::This) {
        // Navigate straight from the input without copying it.
        match steps.first() {
            Some(first) if nav_step(env, first, this, out) => rest = &steps[1..],
            _ => out.extend_from_slice(this),
        }
    } else {
        eval(start, env, this, out)?;
    }
    for step in rest {
        let end = out.len();
        if end == base {
            return Ok(());
        }
        match step {
            Step::Field {
                name,
                type_prefix,
                under,
                choice,
                slot,
            } => {
                let under = under.as_deref();
                if end - base == 1 {
                    // The common single-item case: no clone and no drain.
                    if let Some(it) = out.pop() {
                        member_step(env, &it, name, *type_prefix, under, *choice, *slot, out);
                    }
                    continue;
                }
                for i in base..end {
                    let it = out[i].clone();
                    member_step(env, &it, name, *type_prefix, under, *choice, *slot, out);
                }
                out.drain(base..end);
            }
            Step::Choice {
                name,
                key,
                ty,
                key_slot,
                name_slot,
            } => {
                if end - base == 1 {
                    if let Some(it) = out.pop() {
                        choice_step(env, &it, name, key, ty, *key_slot, *name_slot, out);
                    }
                    continue;
                }
                for i in base..end {
                    let it = out[i].clone();
                    choice_step(env, &it, name, key, ty, *key_slot, *name_slot, out);
                }
                out.drain(base..end);
            }
            Step::OfType(t) => {
                let mut w = base;
                for r in base..end {
                    if is_type(&out[r], t) {
                        out.swap(w, r);
                        w += 1;
                    }
                }
                out.truncate(w);
            }
            Step::First => out.truncate(base + 1),
            Step::Index(n) => {
                if *n < end - base {
                    out.swap(base, base + n);
                    out.truncate(base + 1);
                } else {
                    out.truncate(base);
                }
            }
            Step::Where(c) => {
                let mut tmp = Buf::take();
                let mut w = base;
                for r in base..end {
                    tmp.clear();
                    eval(c, env, std::slice::from_ref(&out[r]), &mut tmp)?;
                    if to_bool(&tmp)? == Some(true) {
                        out.swap(w, r);
                        w += 1;
                    }
                }
                out.truncate(w);
            }
        }
    }
    Ok(())
}

/// Can [`single_node`] evaluate `e`? A chain from the input of plain field steps (no
/// resource-type prefix, no primitive-extension sibling), fused `name.ofType(T)` steps and
/// `first()`: the shape of most view columns.
pub(crate) fn is_simple_path(e: &Expr) -> bool {
    match e {
        Expr::Path { start, steps } => {
            matches!(**start, Expr::This)
                && !steps.is_empty()
                && steps.iter().all(|s| match s {
                    Step::Field {
                        type_prefix, under, ..
                    } => !*type_prefix && under.is_none(),
                    Step::Choice { .. } | Step::First => true,
                    _ => false,
                })
        }
        _ => false,
    }
}

/// Outcome of one branch of [`single_node`]'s walk.
enum Walk {
    Continue,
    /// A `first()` took its item: stop the steps before it.
    Stop,
    /// Needs the general evaluator (a choice-type scan, a type filter, or several results).
    Bail,
}

/// Evaluates a simple path ([`is_simple_path`]) from one node without building
/// collections: `Some(None)` for an empty result, `Some(Some(node))` for exactly one node,
/// `None` when the general evaluator must decide (including for several results, so that
/// it reports the error). Results are those of [`eval`] on the same path.
pub(crate) fn single_node<'a>(
    e: &'a Expr,
    env: &Env<'a>,
    this: &'a Value<'a>,
) -> Option<Option<&'a Value<'a>>> {
    let Expr::Path { steps, .. } = e else {
        return None;
    };
    let mut found = None;
    let mut n = 0;
    match walk(env, this, steps, &mut found, &mut n) {
        Walk::Bail => None,
        Walk::Continue | Walk::Stop => Some(found),
    }
}

fn walk<'a>(
    env: &Env<'a>,
    v: &'a Value<'a>,
    steps: &'a [Step],
    found: &mut Option<&'a Value<'a>>,
    n: &mut usize,
) -> Walk {
    let Some((step, rest)) = steps.split_first() else {
        if *n > 0 {
            return Walk::Bail;
        }
        *found = Some(v);
        *n = 1;
        return Walk::Continue;
    };
    match step {
        Step::First => match walk(env, v, rest, found, n) {
            Walk::Bail => Walk::Bail,
            _ => Walk::Stop,
        },
        Step::Field {
            name, choice, slot, ..
        } => {
            let x = match root_slot(env, v, *slot) {
                Some(x) => x,
                None => match v {
                    Value::Object(m) => m.get(name.as_str()),
                    _ => return Walk::Continue,
                },
            };
            match x {
                Some(x) => each(env, x, rest, found, n),
                // A bare choice name that is absent: `navigate` scans for `name<Type>`.
                None if *choice => Walk::Bail,
                None => Walk::Continue,
            }
        }
        Step::Choice {
            name,
            key,
            key_slot,
            name_slot,
            ..
        } => {
            let Value::Object(m) = v else {
                return Walk::Continue;
            };
            let x = match root_slot(env, v, *key_slot) {
                Some(Some(x)) => Some(x),
                Some(None) if matches!(root_slot(env, v, *name_slot), Some(None)) => {
                    return Walk::Continue;
                }
                _ => m.get(key.as_str()),
            };
            match x {
                Some(x) => each(env, x, rest, found, n),
                // `name` present without the typed key: filtered by type in `choice_step`.
                None if m.contains_key(name.as_str()) => Walk::Bail,
                None => Walk::Continue,
            }
        }
        _ => Walk::Bail,
    }
}

/// [`walk`] over the items a value stands for (array elements, nulls skipped), as
/// [`push_value`] expands them.
fn each<'a>(
    env: &Env<'a>,
    x: &'a Value<'a>,
    rest: &'a [Step],
    found: &mut Option<&'a Value<'a>>,
    n: &mut usize,
) -> Walk {
    match x {
        Value::Array(items) => {
            for e in items.iter() {
                if matches!(e, Value::Static(StaticNode::Null)) {
                    continue;
                }
                match walk(env, e, rest, found, n) {
                    Walk::Continue => {}
                    other => return other,
                }
            }
            Walk::Continue
        }
        Value::Static(StaticNode::Null) => Walk::Continue,
        _ => walk(env, x, rest, found, n),
    }
}

/// Evaluates `e` with input collection `this`, appending results to `out`.
pub(crate) fn eval<'a>(
    e: &'a Expr,
    env: &Env<'a>,
    this: &[Item<'a>],
    out: &mut Vec<Item<'a>>,
) -> FpResult<()> {
    match e {
        Expr::Empty => {}
        Expr::Literal(l) => out.push(match l {
            Literal::Bool(b) => Item::Bool(*b),
            Literal::Int(i) => Item::Int(*i),
            Literal::Dec(d) => Item::Dec(*d),
            Literal::Str(s, k) => Item::Str(Cow::Borrowed(s), *k),
        }),
        Expr::This => out.extend_from_slice(this),
        Expr::Root => out.push(Item::node(env.root)),
        Expr::RowIndex => out.push(Item::Int(env.row_index)),
        Expr::Const(i) => {
            let c = env.consts.get(*i).ok_or(FpError("undefined constant"))?;
            out.push(const_item(c));
        }
        Expr::Member {
            base,
            name,
            type_prefix,
            under,
        } => {
            let under = under.as_deref();
            let step = |it: &Item<'a>, out: &mut Vec<Item<'a>>| {
                member_step(
                    env,
                    it,
                    name,
                    *type_prefix,
                    under,
                    is_choice_name(name),
                    None,
                    out,
                )
            };
            if matches!(**base, Expr::This) {
                for it in this {
                    step(it, out);
                }
            } else {
                let mut tmp = Buf::take();
                eval(base, env, this, &mut tmp)?;
                for it in tmp.iter() {
                    step(it, out);
                }
            }
        }
        Expr::Indexer(base, idx) => {
            let mut tmp = Buf::take();
            eval(base, env, this, &mut tmp)?;
            let mut ix = Buf::take();
            eval(idx, env, this, &mut ix)?;
            let Some(i) = single(&ix)? else { return Ok(()) };
            let Prim::Int(i) = prim(i) else {
                return Err(FpError("index must be an integer"));
            };
            if let Ok(i) = usize::try_from(i) {
                if let Some(it) = tmp.get(i) {
                    out.push(it.clone());
                }
            }
        }
        Expr::Neg(a) => {
            let mut tmp = Buf::take();
            eval(a, env, this, &mut tmp)?;
            if let Some(it) = single(&tmp)? {
                match prim(it) {
                    Prim::Int(i) => out.push(Item::Int(
                        i.checked_neg().ok_or(FpError("integer overflow"))?,
                    )),
                    Prim::Dec(d) => out.push(Item::Dec(-d)),
                    _ => return Err(FpError("unary minus needs a number")),
                }
            }
        }
        Expr::TypeOp(op, a, t) => {
            let mut tmp = Buf::take();
            eval(a, env, this, &mut tmp)?;
            match op {
                TypeOp::Is => {
                    if let Some(it) = single(&tmp)? {
                        out.push(Item::Bool(is_type(it, t)));
                    }
                }
                TypeOp::As => out.extend(tmp.drain(..).filter(|it| is_type(it, t))),
            }
        }
        Expr::Binary(op, l, r) => binary(*op, l, r, env, this, out)?,
        Expr::Path { start, steps } => eval_path(start, steps, env, this, out)?,
        Expr::Call(base, f) => {
            let mut input = Buf::take();
            eval(base, env, this, &mut input)?;
            call(f, &mut input, env, this, out)?;
        }
    }
    Ok(())
}

fn eval_vec<'a>(e: &'a Expr, env: &Env<'a>, this: &[Item<'a>]) -> FpResult<Buf<'a>> {
    let mut v = Buf::take();
    eval(e, env, this, &mut v)?;
    Ok(v)
}

fn string_arg<'a>(e: &'a Expr, env: &Env<'a>, this: &[Item<'a>]) -> FpResult<Option<Cow<'a, str>>> {
    let v = eval_vec(e, env, this)?;
    match single(&v)? {
        None => Ok(None),
        Some(it) => to_text(it)
            .map(Some)
            .ok_or(FpError("expected a string argument")),
    }
}

fn int_arg<'a>(e: &'a Expr, env: &Env<'a>, this: &[Item<'a>]) -> FpResult<Option<i64>> {
    let v = eval_vec(e, env, this)?;
    match single(&v)?.map(prim) {
        None => Ok(None),
        Some(Prim::Int(i)) => Ok(Some(i)),
        Some(_) => Err(FpError("expected an integer argument")),
    }
}

fn call<'a>(
    f: &'a Func,
    input: &mut Vec<Item<'a>>,
    env: &Env<'a>,
    this: &[Item<'a>],
    out: &mut Vec<Item<'a>>,
) -> FpResult<()> {
    match f {
        Func::Where(c) => {
            let mut tmp = Buf::take();
            for it in input.drain(..) {
                tmp.clear();
                eval(c, env, std::slice::from_ref(&it), &mut tmp)?;
                if to_bool(&tmp)? == Some(true) {
                    out.push(it);
                }
            }
        }
        Func::Select(p) => {
            for it in input.iter() {
                eval(p, env, std::slice::from_ref(it), out)?;
            }
        }
        Func::All(c) => {
            let mut all = true;
            let mut tmp = Buf::take();
            for it in input.iter() {
                tmp.clear();
                eval(c, env, std::slice::from_ref(it), &mut tmp)?;
                if to_bool(&tmp)? != Some(true) {
                    all = false;
                    break;
                }
            }
            out.push(Item::Bool(all));
        }
        Func::Exists(None) => out.push(Item::Bool(!input.is_empty())),
        Func::Exists(Some(c)) => {
            let mut any = false;
            let mut tmp = Buf::take();
            for it in input.iter() {
                tmp.clear();
                eval(c, env, std::slice::from_ref(it), &mut tmp)?;
                if to_bool(&tmp)? == Some(true) {
                    any = true;
                    break;
                }
            }
            out.push(Item::Bool(any));
        }
        Func::Empty => out.push(Item::Bool(input.is_empty())),
        Func::First => out.extend(input.drain(..).next()),
        Func::Last => out.extend(input.pop()),
        Func::Single => {
            if input.len() > 1 {
                return Err(FpError("single() on a collection of several items"));
            }
            out.append(input);
        }
        Func::Count => out.push(Item::Int(i64::try_from(input.len()).unwrap_or(i64::MAX))),
        Func::Not => {
            if let Some(b) = to_bool(input)? {
                out.push(Item::Bool(!b));
            }
        }
        Func::HasValue => {
            let has = matches!(
                single(input).ok().flatten().map(prim),
                Some(Prim::Bool(_) | Prim::Int(_) | Prim::Dec(_) | Prim::Str(_))
            );
            out.push(Item::Bool(has));
        }
        Func::ToString => {
            if let Some(it) = single(input)? {
                if let Some(s) = to_text(it) {
                    out.push(Item::Str(s, StrKind::String));
                }
            }
        }
        Func::Distinct => {
            let mut seen: Vec<Item<'a>> = Vec::with_capacity(input.len());
            for it in input.drain(..) {
                if !seen.iter().any(|s| items_eq(s, &it)) {
                    seen.push(it);
                }
            }
            out.extend(seen);
        }
        Func::AllTrue => {
            let all = input.iter().all(|it| matches!(prim(it), Prim::Bool(true)));
            out.push(Item::Bool(all));
        }
        Func::AnyTrue => {
            let any = input.iter().any(|it| matches!(prim(it), Prim::Bool(true)));
            out.push(Item::Bool(any));
        }
        Func::OfType(t) | Func::As(t) => out.extend(input.drain(..).filter(|it| is_type(it, t))),
        Func::Is(t) => {
            if let Some(it) = single(input)? {
                out.push(Item::Bool(is_type(it, t)));
            }
        }
        Func::Extension(url) => {
            let Some(url) = string_arg(url, env, this)? else {
                return Ok(());
            };
            for it in input.iter() {
                let holder = match it {
                    Item::Node {
                        v: v @ Value::Object(_),
                        ..
                    } => Some(*v),
                    Item::Node { ext: Some(x), .. } => Some(*x),
                    _ => None,
                };
                let Some(Value::Object(o)) = holder else {
                    continue;
                };
                let Some(Value::Array(exts)) = o.get("extension") else {
                    continue;
                };
                for x in exts.iter() {
                    if let Value::Object(xo) = x {
                        if xo.get("url").and_then(|u| u.as_str_opt()) == Some(&*url) {
                            out.push(Item::node(x));
                        }
                    }
                }
            }
        }
        Func::Join(sep) => {
            let sep = match sep {
                Some(s) => string_arg(s, env, this)?.unwrap_or(Cow::Borrowed("")),
                None => Cow::Borrowed(""),
            };
            if input.is_empty() {
                return Ok(());
            }
            let mut s = String::new();
            for (i, it) in input.iter().enumerate() {
                if i > 0 {
                    s.push_str(&sep);
                }
                s.push_str(&to_text(it).ok_or(FpError("join() needs string items"))?);
            }
            out.push(Item::Str(Cow::Owned(s), StrKind::String));
        }
        Func::LowBoundary | Func::HighBoundary => {
            let high = matches!(f, Func::HighBoundary);
            for it in input.iter() {
                out.extend(boundary(it, high));
            }
        }
        Func::GetResourceKey => {
            for it in input.iter() {
                if let Some(id) = object_of(it).and_then(|o| o.get("id")) {
                    // A prepared decimal is a number, not an id.
                    if matches!(id, Value::String(s) if marked_decimal(s).is_none()) {
                        out.push(Item::node(id));
                    }
                }
            }
        }
        Func::GetReferenceKey(ty) => {
            for it in input.iter() {
                let Some(Value::String(r)) = object_of(it).and_then(|o| o.get("reference")) else {
                    continue;
                };
                let r: &'a str = r;
                if marked_decimal(r).is_some() {
                    continue;
                }
                let (rt, key) = split_reference(r);
                if ty.as_deref().is_none_or(|t| Some(t) == rt) {
                    out.push(Item::Str(Cow::Borrowed(key), StrKind::String));
                }
            }
        }
        Func::Iif(c, t, e) => {
            let cond = eval_vec(c, env, input)?;
            if to_bool(&cond)? == Some(true) {
                eval(t, env, input, out)?;
            } else if let Some(e) = e {
                eval(e, env, input, out)?;
            }
        }
        Func::Tail => out.extend(input.drain(..).skip(1)),
        Func::Skip(n) | Func::Take(n) => {
            let n = int_arg(n, env, this)?.unwrap_or(0);
            let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
            if matches!(f, Func::Skip(_)) {
                out.extend(input.drain(..).skip(n));
            } else {
                out.extend(input.drain(..).take(n));
            }
        }
        Func::Trace => out.append(input),
        Func::Length | Func::Upper | Func::Lower | Func::ToInteger | Func::ToDecimal => {
            let Some(it) = single(input)? else {
                return Ok(());
            };
            let p = prim(it);
            match f {
                Func::Length => {
                    let Prim::Str(s) = p else {
                        return Err(FpError("length() needs a string"));
                    };
                    out.push(Item::Int(
                        i64::try_from(s.chars().count()).unwrap_or(i64::MAX),
                    ));
                }
                Func::Upper | Func::Lower => {
                    let Prim::Str(s) = p else {
                        return Err(FpError("upper()/lower() need a string"));
                    };
                    let t = if matches!(f, Func::Upper) {
                        s.to_uppercase()
                    } else {
                        s.to_lowercase()
                    };
                    out.push(Item::Str(Cow::Owned(t), StrKind::String));
                }
                Func::ToInteger => match p {
                    Prim::Int(i) => out.push(Item::Int(i)),
                    Prim::Bool(b) => out.push(Item::Int(i64::from(b))),
                    Prim::Str(s) => out.extend(s.parse::<i64>().ok().map(Item::Int)),
                    _ => {}
                },
                _ => match p {
                    Prim::Int(i) => out.push(Item::Dec(i as f64)),
                    // A prepared decimal keeps its source text.
                    Prim::Dec(_) if node_decimal_text(it).is_some() => out.push(it.clone()),
                    Prim::Dec(d) => out.push(Item::Dec(d)),
                    Prim::Bool(b) => out.push(Item::Dec(if b { 1.0 } else { 0.0 })),
                    Prim::Str(s) => out.extend(
                        s.parse::<f64>()
                            .ok()
                            .filter(|d| d.is_finite() && !s.contains(['e', 'E', 'i', 'n', 'N']))
                            .map(Item::Dec),
                    ),
                    _ => {}
                },
            }
        }
        Func::Substring(start, len) => {
            let Some(it) = single(input)? else {
                return Ok(());
            };
            let Prim::Str(s) = prim(it) else {
                return Err(FpError("substring() needs a string"));
            };
            let Some(start) = int_arg(start, env, this)? else {
                return Ok(());
            };
            let len = match len {
                Some(l) => int_arg(l, env, this)?,
                None => None,
            };
            let count = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
            if start < 0 || start >= count {
                return Ok(());
            }
            let start = usize::try_from(start).unwrap_or(0);
            let sub: String = match len {
                Some(l) => s
                    .chars()
                    .skip(start)
                    .take(usize::try_from(l.max(0)).unwrap_or(0))
                    .collect(),
                None => s.chars().skip(start).collect(),
            };
            out.push(Item::Str(Cow::Owned(sub), StrKind::String));
        }
        Func::Replace(pat, with) => {
            let Some(it) = single(input)? else {
                return Ok(());
            };
            let Prim::Str(s) = prim(it) else {
                return Err(FpError("replace() needs a string"));
            };
            let (Some(pat), Some(with)) =
                (string_arg(pat, env, this)?, string_arg(with, env, this)?)
            else {
                return Ok(());
            };
            let r = if pat.is_empty() {
                // FHIRPath: an empty pattern surrounds every character.
                let mut r = String::with_capacity(s.len() * (with.len() + 1) + with.len());
                r.push_str(&with);
                for c in s.chars() {
                    r.push(c);
                    r.push_str(&with);
                }
                r
            } else {
                s.replace(&*pat, &with)
            };
            out.push(Item::Str(Cow::Owned(r), StrKind::String));
        }
        Func::IndexOf(sub) => {
            let Some(it) = single(input)? else {
                return Ok(());
            };
            let Prim::Str(s) = prim(it) else {
                return Err(FpError("indexOf() needs a string"));
            };
            let Some(sub) = string_arg(sub, env, this)? else {
                return Ok(());
            };
            let idx = s.find(&*sub).map_or(-1, |b| {
                i64::try_from(s[..b].chars().count()).unwrap_or(i64::MAX)
            });
            out.push(Item::Int(idx));
        }
        Func::StartsWith(a) | Func::EndsWith(a) | Func::ContainsStr(a) => {
            let Some(it) = single(input)? else {
                return Ok(());
            };
            let Some(s) = to_text(it) else {
                return Err(FpError("string function on a non-string"));
            };
            let Some(arg) = string_arg(a, env, this)? else {
                return Ok(());
            };
            let r = match f {
                Func::StartsWith(_) => s.starts_with(&*arg),
                Func::EndsWith(_) => s.ends_with(&*arg),
                _ => s.contains(&*arg),
            };
            out.push(Item::Bool(r));
        }
    }
    Ok(())
}

fn binary<'a>(
    op: BinOp,
    l: &'a Expr,
    r: &'a Expr,
    env: &Env<'a>,
    this: &[Item<'a>],
    out: &mut Vec<Item<'a>>,
) -> FpResult<()> {
    let mut lv = eval_vec(l, env, this)?;
    // Short-circuit the boolean operators when the left side decides.
    if matches!(op, BinOp::And | BinOp::Or | BinOp::Implies) {
        let a = to_bool(&lv)?;
        match (op, a) {
            (BinOp::And, Some(false)) => {
                out.push(Item::Bool(false));
                return Ok(());
            }
            (BinOp::Or, Some(true)) => {
                out.push(Item::Bool(true));
                return Ok(());
            }
            (BinOp::Implies, Some(false)) => {
                out.push(Item::Bool(true));
                return Ok(());
            }
            _ => {}
        }
        let b = to_bool(&eval_vec(r, env, this)?)?;
        let res = match op {
            BinOp::And => match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            BinOp::Or => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            _ => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            },
        };
        out.extend(res.map(Item::Bool));
        return Ok(());
    }
    let mut rv = eval_vec(r, env, this)?;
    match op {
        BinOp::Xor => {
            if let (Some(a), Some(b)) = (to_bool(&lv)?, to_bool(&rv)?) {
                out.push(Item::Bool(a != b));
            }
        }
        BinOp::Eq | BinOp::Ne => {
            if lv.is_empty() || rv.is_empty() {
                return Ok(());
            }
            let mut eq = Some(lv.len() == rv.len());
            if eq == Some(true) {
                for (a, b) in lv.iter().zip(rv.iter()) {
                    match items_eq3(a, b) {
                        Some(true) => {}
                        other => {
                            eq = other;
                            if other == Some(false) {
                                break;
                            }
                        }
                    }
                }
            }
            // Unknown (temporal values of different precision) is an empty result.
            if let Some(eq) = eq {
                out.push(Item::Bool(if op == BinOp::Eq { eq } else { !eq }));
            }
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            let eq =
                lv.len() == rv.len() && lv.iter().zip(rv.iter()).all(|(a, b)| items_equiv(a, b));
            out.push(Item::Bool(if op == BinOp::Equiv { eq } else { !eq }));
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(a), Some(b)) = (single(&lv)?, single(&rv)?) else {
                return Ok(());
            };
            if let Some(o) = compare(a, b) {
                out.push(Item::Bool(match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Le => o != Ordering::Greater,
                    BinOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }));
            }
        }
        BinOp::Union => {
            for it in lv.drain(..).chain(rv.drain(..)) {
                if !out.iter().any(|o| items_eq(o, &it)) {
                    out.push(it);
                }
            }
        }
        BinOp::In | BinOp::Contains => {
            let (needle, hay) = if op == BinOp::In {
                (&lv, &rv)
            } else {
                (&rv, &lv)
            };
            if let Some(n) = single(needle)? {
                out.push(Item::Bool(hay.iter().any(|h| items_eq(h, n))));
            }
        }
        BinOp::Concat => {
            let a = single(&lv)?.map(to_text).unwrap_or(Some(Cow::Borrowed("")));
            let b = single(&rv)?.map(to_text).unwrap_or(Some(Cow::Borrowed("")));
            let (Some(a), Some(b)) = (a, b) else {
                return Err(FpError("& needs strings"));
            };
            out.push(Item::Str(Cow::Owned(format!("{a}{b}")), StrKind::String));
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => {
            let (Some(a), Some(b)) = (single(&lv)?, single(&rv)?) else {
                return Ok(());
            };
            if op == BinOp::Add {
                if let (Prim::Str(x), Prim::Str(y)) = (prim(a), prim(b)) {
                    out.push(Item::Str(Cow::Owned(format!("{x}{y}")), StrKind::String));
                    return Ok(());
                }
            }
            let (Some(x), Some(y)) = (num(prim(a)), num(prim(b))) else {
                return Err(FpError("arithmetic needs numbers"));
            };
            out.extend(arith(op, x, y)?);
        }
        BinOp::And | BinOp::Or | BinOp::Implies => {}
    }
    Ok(())
}

fn arith(op: BinOp, x: Num, y: Num) -> FpResult<Option<Item<'static>>> {
    const OVERFLOW: FpError = FpError("integer overflow");
    if let (Num::Int(a), Num::Int(b)) = (x, y) {
        return Ok(match op {
            BinOp::Add => Some(Item::Int(a.checked_add(b).ok_or(OVERFLOW)?)),
            BinOp::Sub => Some(Item::Int(a.checked_sub(b).ok_or(OVERFLOW)?)),
            BinOp::Mul => Some(Item::Int(a.checked_mul(b).ok_or(OVERFLOW)?)),
            BinOp::Div => (b != 0).then(|| Item::Dec(a as f64 / b as f64)),
            BinOp::IntDiv => a.checked_div(b).map(Item::Int),
            _ => a.checked_rem(b).map(Item::Int),
        });
    }
    let (a, b) = (x.f(), y.f());
    Ok(match op {
        BinOp::Add => Some(Item::Dec(a + b)),
        BinOp::Sub => Some(Item::Dec(a - b)),
        BinOp::Mul => Some(Item::Dec(a * b)),
        BinOp::Div => (b != 0.0).then(|| Item::Dec(a / b)),
        BinOp::IntDiv => (b != 0.0).then(|| Item::Int((a / b).trunc() as i64)),
        _ => (b != 0.0).then(|| Item::Dec(a % b)),
    })
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn reference_keys() {
        assert_eq!(split_reference("Patient/p1"), (Some("Patient"), "p1"));
        assert_eq!(
            split_reference("Patient/p1/_history/2"),
            (Some("Patient"), "p1")
        );
        assert_eq!(
            split_reference("https://x.org/r4/Patient/p_2/_history/3"),
            (Some("Patient"), "p_2")
        );
        assert_eq!(split_reference("urn:uuid:ab_c"), (None, "urn:uuid:ab_c"));
        assert_eq!(split_reference("a_/_history"), (None, "a_"));
        assert_eq!(split_reference("_history"), (None, "_history"));
        assert_eq!(split_reference(""), (None, ""));
    }
}
