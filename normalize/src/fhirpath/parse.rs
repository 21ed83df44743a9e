//! Lexer and recursive-descent parser for the FHIRPath subset.
//!
//! The parser never panics: every malformed input ends in a [`ParseError`] carrying the
//! byte offset. Nesting is bounded by [`MAX_DEPTH`] so hostile input cannot overflow the
//! stack.

use std::fmt;

use super::{BinOp, ConstVal, Expr, Func, Literal, StrKind, TypeOp};

/// Deepest parenthesis / function-argument nesting accepted. View expressions rarely
/// nest beyond 5; the bound keeps parser and evaluator recursion well inside a 2 MiB
/// thread stack even in debug builds.
pub(crate) const MAX_DEPTH: usize = 40;

/// Most operator and postfix nodes accepted in one expression.
pub(crate) const MAX_NODES: usize = 512;

/// A FHIRPath expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression where the problem was found.
    pub offset: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Backtick-delimited identifier: never a keyword.
    Quoted(String),
    Str(String),
    Num(String),
    /// `@...` date, dateTime or time literal, without the `@`.
    Temporal(String),
    /// `%name` or `%'name'`.
    Env(String),
    /// `$this`, `$index`, `$total`.
    Dollar(String),
    Punct(&'static str),
    Eof,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

const PUNCTS: [&str; 21] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", ",", "+", "-", "*", "/", "&", "|", "=", "~",
    "<", ">", "{",
];

impl<'s> Lexer<'s> {
    fn err(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            offset,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) -> Result<(), ParseError> {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if self.src[self.pos..].starts_with("//") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if self.src[self.pos..].starts_with("/*") {
                match self.src[self.pos + 2..].find("*/") {
                    Some(end) => self.pos += 2 + end + 2,
                    None => return Err(self.err(self.pos, "unterminated comment")),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn next(&mut self) -> Result<(usize, Tok), ParseError> {
        self.skip_ws()?;
        let start = self.pos;
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Ok((start, Tok::Eof));
        };
        if c == '\'' {
            let s = self.quoted('\'')?;
            return Ok((start, Tok::Str(s)));
        }
        if c == '`' {
            let s = self.quoted('`')?;
            return Ok((start, Tok::Quoted(s)));
        }
        if c.is_ascii_digit() {
            let b = rest.as_bytes();
            let mut i = 0;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            self.pos += i;
            return Ok((start, Tok::Num(rest[..i].to_owned())));
        }
        if c == '@' {
            let body = &rest[1..];
            let len = body
                .find(|ch: char| {
                    !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | ':' | '.' | '+'))
                })
                .unwrap_or(body.len());
            if len == 0 {
                return Err(self.err(start, "expected a date, dateTime or time after '@'"));
            }
            self.pos += 1 + len;
            return Ok((start, Tok::Temporal(body[..len].to_owned())));
        }
        if c == '%' {
            self.pos += 1;
            let rest = &self.src[self.pos..];
            if rest.starts_with('\'') {
                let s = self.quoted('\'')?;
                return Ok((start, Tok::Env(s)));
            }
            if rest.starts_with('`') {
                let s = self.quoted('`')?;
                return Ok((start, Tok::Env(s)));
            }
            let name = self.ident_chars();
            if name.is_empty() {
                return Err(self.err(start, "expected a name after '%'"));
            }
            return Ok((start, Tok::Env(name)));
        }
        if c == '$' {
            self.pos += 1;
            let name = self.ident_chars();
            return Ok((start, Tok::Dollar(name)));
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let name = self.ident_chars();
            return Ok((start, Tok::Ident(name)));
        }
        for p in PUNCTS {
            if rest.starts_with(p) {
                self.pos += p.len();
                if p == "{" {
                    self.skip_ws()?;
                    if self.src[self.pos..].starts_with('}') {
                        self.pos += 1;
                        return Ok((start, Tok::Punct("{}")));
                    }
                    return Err(self.err(start, "expected '}' after '{'"));
                }
                return Ok((start, Tok::Punct(p)));
            }
        }
        Err(self.err(start, format!("unexpected character {c:?}")))
    }

    fn ident_chars(&mut self) -> String {
        let b = self.src.as_bytes();
        let start = self.pos;
        while self.pos < b.len() && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'_') {
            self.pos += 1;
        }
        self.src[start..self.pos].to_owned()
    }

    /// Reads a quoted string starting at `self.pos` (on the opening quote), handling the
    /// FHIRPath escapes.
    fn quoted(&mut self, q: char) -> Result<String, ParseError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.src[self.pos + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch == q {
                self.pos += 1 + i + 1;
                return Ok(out);
            }
            if ch == '\\' {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let mut code = 0u32;
                        for _ in 0..4 {
                            let Some((_, h)) = chars.next() else {
                                return Err(self.err(start, "truncated \\u escape"));
                            };
                            let Some(d) = h.to_digit(16) else {
                                return Err(self.err(start, "invalid \\u escape"));
                            };
                            code = code * 16 + d;
                        }
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                }
            } else {
                out.push(ch);
            }
        }
        Err(self.err(start, "unterminated string"))
    }
}

/// Resolves `%name` references while parsing.
pub(crate) trait EnvResolver {
    /// Index of the named view constant, if defined.
    fn constant(&self, name: &str) -> Option<usize>;
}

pub(crate) struct Parser<'s, 'r> {
    lexer: Lexer<'s>,
    tok: Tok,
    tok_pos: usize,
    depth: usize,
    nodes: usize,
    env: &'r dyn EnvResolver,
}

/// Parses `src` into an expression tree, resolving `%constants` through `env`.
pub(crate) fn parse(src: &str, env: &dyn EnvResolver) -> Result<Expr, ParseError> {
    let mut lexer = Lexer { src, pos: 0 };
    let (tok_pos, tok) = lexer.next()?;
    let mut p = Parser {
        lexer,
        tok,
        tok_pos,
        depth: 0,
        nodes: 0,
        env,
    };
    if p.tok == Tok::Eof {
        return Err(p.err("empty expression"));
    }
    let e = p.expression()?;
    if p.tok != Tok::Eof {
        return Err(p.err(format!("unexpected {}", describe(&p.tok))));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) | Tok::Quoted(s) => format!("identifier `{s}`"),
        Tok::Str(_) => "string literal".to_owned(),
        Tok::Num(n) => format!("number {n}"),
        Tok::Temporal(t) => format!("@{t}"),
        Tok::Env(e) => format!("%{e}"),
        Tok::Dollar(d) => format!("${d}"),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Eof => "end of expression".to_owned(),
    }
}

impl Parser<'_, '_> {
    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.tok_pos,
            message: message.into(),
        }
    }

    fn bump(&mut self) -> Result<Tok, ParseError> {
        let (pos, tok) = self.lexer.next()?;
        self.tok_pos = pos;
        Ok(std::mem::replace(&mut self.tok, tok))
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(&self.tok, Tok::Punct(q) if *q == p)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok, Tok::Ident(s) if s == kw)
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), ParseError> {
        if self.is_punct(p) {
            self.bump()?;
            Ok(())
        } else {
            Err(self.err(format!("expected '{p}', found {}", describe(&self.tok))))
        }
    }

    /// Counts operator and postfix nodes: chains like `a.b.c...` or `1+1+1...` build deep
    /// trees without nesting, and evaluation recurses over the tree.
    fn node(&mut self) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.err("expression is too long"));
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("expression is nested too deeply"));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let r = self.implies();
        self.depth -= 1;
        r
    }

    fn implies(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.or()?;
        while self.is_kw("implies") {
            self.bump()?;
            self.node()?;
            let r = self.or()?;
            l = Expr::Binary(BinOp::Implies, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.and()?;
        loop {
            let op = if self.is_kw("or") {
                BinOp::Or
            } else if self.is_kw("xor") {
                BinOp::Xor
            } else {
                return Ok(l);
            };
            self.bump()?;
            self.node()?;
            let r = self.and()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.membership()?;
        while self.is_kw("and") {
            self.bump()?;
            self.node()?;
            let r = self.membership()?;
            l = Expr::Binary(BinOp::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn membership(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.equality()?;
        loop {
            let op = if self.is_kw("in") {
                BinOp::In
            } else if self.is_kw("contains") {
                BinOp::Contains
            } else {
                return Ok(l);
            };
            self.bump()?;
            self.node()?;
            let r = self.equality()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn equality(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.inequality()?;
        loop {
            let op = match &self.tok {
                Tok::Punct("=") => BinOp::Eq,
                Tok::Punct("!=") => BinOp::Ne,
                Tok::Punct("~") => BinOp::Equiv,
                Tok::Punct("!~") => BinOp::NotEquiv,
                _ => return Ok(l),
            };
            self.bump()?;
            self.node()?;
            let r = self.inequality()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn inequality(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.union()?;
        loop {
            let op = match &self.tok {
                Tok::Punct("<") => BinOp::Lt,
                Tok::Punct("<=") => BinOp::Le,
                Tok::Punct(">") => BinOp::Gt,
                Tok::Punct(">=") => BinOp::Ge,
                _ => return Ok(l),
            };
            self.bump()?;
            self.node()?;
            let r = self.union()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.type_expr()?;
        while self.is_punct("|") {
            self.bump()?;
            self.node()?;
            let r = self.type_expr()?;
            l = Expr::Binary(BinOp::Union, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn type_expr(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.additive()?;
        loop {
            let op = if self.is_kw("is") {
                TypeOp::Is
            } else if self.is_kw("as") {
                TypeOp::As
            } else {
                return Ok(l);
            };
            self.bump()?;
            self.node()?;
            let ty = self.type_specifier()?;
            l = Expr::TypeOp(op, Box::new(l), ty);
        }
    }

    /// `Name` or `Namespace.Name`; returns the last part.
    fn type_specifier(&mut self) -> Result<String, ParseError> {
        let mut name = match self.bump()? {
            Tok::Ident(s) | Tok::Quoted(s) => s,
            other => {
                return Err(self.err(format!("expected a type name, found {}", describe(&other))))
            }
        };
        while self.is_punct(".") {
            self.bump()?;
            name = match self.bump()? {
                Tok::Ident(s) | Tok::Quoted(s) => s,
                other => {
                    return Err(
                        self.err(format!("expected a type name, found {}", describe(&other)))
                    )
                }
            };
        }
        Ok(name)
    }

    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match &self.tok {
                Tok::Punct("+") => BinOp::Add,
                Tok::Punct("-") => BinOp::Sub,
                Tok::Punct("&") => BinOp::Concat,
                _ => return Ok(l),
            };
            self.bump()?;
            self.node()?;
            let r = self.multiplicative()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.unary()?;
        loop {
            let op = match &self.tok {
                Tok::Punct("*") => BinOp::Mul,
                Tok::Punct("/") => BinOp::Div,
                Tok::Ident(s) if s == "div" => BinOp::IntDiv,
                Tok::Ident(s) if s == "mod" => BinOp::Mod,
                _ => return Ok(l),
            };
            self.bump()?;
            self.node()?;
            let r = self.unary()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.is_punct("-") || self.is_punct("+") {
            let neg = self.is_punct("-");
            self.bump()?;
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            let e = e?;
            return Ok(if neg { Expr::Neg(Box::new(e)) } else { e });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.term()?;
        loop {
            if self.is_punct(".") {
                self.bump()?;
                self.node()?;
                e = self.invocation(Some(e))?;
            } else if self.is_punct("[") {
                self.bump()?;
                self.node()?;
                let idx = self.expression()?;
                self.expect_punct("]")?;
                e = Expr::Indexer(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        match self.tok.clone() {
            Tok::Punct("(") => {
                self.bump()?;
                let e = self.expression()?;
                self.expect_punct(")")?;
                Ok(e)
            }
            Tok::Punct("{}") => {
                self.bump()?;
                Ok(Expr::Empty)
            }
            Tok::Str(s) => {
                self.bump()?;
                Ok(Expr::Literal(Literal::Str(s, StrKind::String)))
            }
            Tok::Num(n) => {
                self.bump()?;
                let lit = if n.contains('.') {
                    Literal::Dec(n.parse().map_err(|_| self.err("invalid number"))?)
                } else {
                    match n.parse::<i64>() {
                        Ok(i) => Literal::Int(i),
                        Err(_) => Literal::Dec(n.parse().map_err(|_| self.err("invalid number"))?),
                    }
                };
                // A quantity literal (`4 'mg'`, `2 days`) is outside the subset.
                if matches!(self.tok, Tok::Str(_)) {
                    return Err(self.err("quantity literals are not supported"));
                }
                Ok(Expr::Literal(lit))
            }
            Tok::Temporal(t) => {
                self.bump()?;
                let (kind, text) = if let Some(time) = t.strip_prefix('T') {
                    (StrKind::Time, time.to_owned())
                } else if t.contains('T') {
                    (StrKind::DateTime, t.trim_end_matches('T').to_owned())
                } else {
                    (StrKind::Date, t)
                };
                Ok(Expr::Literal(Literal::Str(text, kind)))
            }
            Tok::Env(name) => {
                let at = self.tok_pos;
                self.bump()?;
                match name.as_str() {
                    "rowIndex" => Ok(Expr::RowIndex),
                    "resource" | "rootResource" | "context" => Ok(Expr::Root),
                    "sct" => Ok(Expr::Literal(Literal::Str(
                        "http://snomed.info/sct".into(),
                        StrKind::String,
                    ))),
                    "loinc" => Ok(Expr::Literal(Literal::Str(
                        "http://loinc.org".into(),
                        StrKind::String,
                    ))),
                    "ucum" => Ok(Expr::Literal(Literal::Str(
                        "http://unitsofmeasure.org".into(),
                        StrKind::String,
                    ))),
                    _ => match self.env.constant(&name) {
                        Some(i) => Ok(Expr::Const(i)),
                        None => Err(ParseError {
                            offset: at,
                            message: format!("undefined constant %{name}"),
                        }),
                    },
                }
            }
            Tok::Dollar(name) => {
                self.bump()?;
                match name.as_str() {
                    "this" => Ok(Expr::This),
                    other => Err(self.err(format!("unsupported variable ${other}"))),
                }
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.bump()?;
                Ok(Expr::Literal(Literal::Bool(s == "true")))
            }
            Tok::Ident(_) | Tok::Quoted(_) => self.invocation(None),
            other => Err(self.err(format!("unexpected {}", describe(&other)))),
        }
    }

    /// An identifier or function call, applied to `focus` (or to the input context).
    fn invocation(&mut self, focus: Option<Expr>) -> Result<Expr, ParseError> {
        let (name, quoted) = match self.bump()? {
            Tok::Ident(s) => (s, false),
            Tok::Quoted(s) => (s, true),
            Tok::Dollar(d) if d == "this" => return Ok(focus.unwrap_or(Expr::This)),
            other => {
                return Err(self.err(format!(
                    "expected a name after '.', found {}",
                    describe(&other)
                )))
            }
        };
        let at_root = focus.is_none();
        let base = Box::new(focus.unwrap_or(Expr::This));
        if !quoted && self.is_punct("(") {
            self.bump()?;
            let mut args = Vec::new();
            if !self.is_punct(")") {
                loop {
                    args.push(self.arg()?);
                    if self.is_punct(",") {
                        self.bump()?;
                        continue;
                    }
                    break;
                }
            }
            self.expect_punct(")")?;
            let func = self.function(&name, args)?;
            return Ok(Expr::Call(base, func));
        }
        // `Patient.name`: a leading capitalised name may be the resource type.
        let type_prefix = at_root && name.starts_with(|c: char| c.is_ascii_uppercase());
        Ok(Expr::Member {
            base,
            name,
            type_prefix,
            under: None,
        })
    }

    fn arg(&mut self) -> Result<Expr, ParseError> {
        self.expression()
    }

    fn function(&self, name: &str, args: Vec<Expr>) -> Result<Func, ParseError> {
        let n = args.len();
        let arity = |lo: usize, hi: usize| -> Result<(), ParseError> {
            if n < lo || n > hi {
                Err(self.err(format!("{name}() takes {lo}..={hi} arguments, got {n}")))
            } else {
                Ok(())
            }
        };
        let mut args = args.into_iter();
        let f = match name {
            "where" => {
                arity(1, 1)?;
                Func::Where(req(&mut args))
            }
            "select" => {
                arity(1, 1)?;
                Func::Select(req(&mut args))
            }
            "all" => {
                arity(1, 1)?;
                Func::All(req(&mut args))
            }
            "exists" => {
                arity(0, 1)?;
                Func::Exists(args.next().map(Box::new))
            }
            "empty" => {
                arity(0, 0)?;
                Func::Empty
            }
            "first" => {
                arity(0, 0)?;
                Func::First
            }
            "last" => {
                arity(0, 0)?;
                Func::Last
            }
            "single" => {
                arity(0, 0)?;
                Func::Single
            }
            "count" => {
                arity(0, 0)?;
                Func::Count
            }
            "not" => {
                arity(0, 0)?;
                Func::Not
            }
            "hasValue" => {
                arity(0, 0)?;
                Func::HasValue
            }
            "toString" => {
                arity(0, 0)?;
                Func::ToString
            }
            "distinct" => {
                arity(0, 0)?;
                Func::Distinct
            }
            "allTrue" => {
                arity(0, 0)?;
                Func::AllTrue
            }
            "anyTrue" => {
                arity(0, 0)?;
                Func::AnyTrue
            }
            "ofType" | "is" | "as" => {
                arity(1, 1)?;
                let ty = type_arg(args.next().map(Box::new).map(|b| *b))
                    .ok_or_else(|| self.err(format!("{name}() needs a type name")))?;
                match name {
                    "ofType" => Func::OfType(ty),
                    "is" => Func::Is(ty),
                    _ => Func::As(ty),
                }
            }
            "extension" => {
                arity(1, 1)?;
                Func::Extension(req(&mut args))
            }
            "join" => {
                arity(0, 1)?;
                Func::Join(args.next().map(Box::new))
            }
            "lowBoundary" => {
                arity(0, 1)?;
                Func::LowBoundary
            }
            "highBoundary" => {
                arity(0, 1)?;
                Func::HighBoundary
            }
            "getResourceKey" => {
                arity(0, 0)?;
                Func::GetResourceKey
            }
            "getReferenceKey" => {
                arity(0, 1)?;
                match args.next().map(Box::new) {
                    None => Func::GetReferenceKey(None),
                    Some(a) => {
                        Func::GetReferenceKey(Some(type_arg(Some(*a)).ok_or_else(|| {
                            self.err("getReferenceKey() takes a resource type name")
                        })?))
                    }
                }
            }
            "iif" => {
                arity(2, 3)?;
                let c = req(&mut args);
                let t = req(&mut args);
                Func::Iif(c, t, args.next().map(Box::new))
            }
            "startsWith" | "endsWith" | "contains" | "matches" => {
                arity(1, 1)?;
                let a = req(&mut args);
                match name {
                    "startsWith" => Func::StartsWith(a),
                    "endsWith" => Func::EndsWith(a),
                    "contains" => Func::ContainsStr(a),
                    _ => return Err(self.err("matches() is not supported")),
                }
            }
            "tail" | "length" | "upper" | "lower" | "toInteger" | "toDecimal" => {
                arity(0, 0)?;
                match name {
                    "tail" => Func::Tail,
                    "length" => Func::Length,
                    "upper" => Func::Upper,
                    "lower" => Func::Lower,
                    "toInteger" => Func::ToInteger,
                    _ => Func::ToDecimal,
                }
            }
            "trace" => {
                arity(1, 2)?;
                Func::Trace
            }
            "skip" | "take" | "indexOf" => {
                arity(1, 1)?;
                let a = req(&mut args);
                match name {
                    "skip" => Func::Skip(a),
                    "take" => Func::Take(a),
                    _ => Func::IndexOf(a),
                }
            }
            "substring" => {
                arity(1, 2)?;
                let a = req(&mut args);
                Func::Substring(a, args.next().map(Box::new))
            }
            "replace" => {
                arity(2, 2)?;
                let a = req(&mut args);
                Func::Replace(a, req(&mut args))
            }
            other => return Err(self.err(format!("unsupported function {other}()"))),
        };
        Ok(f)
    }
}

/// Extracts a type name from a parsed argument (`Patient`, `FHIR.Patient`, `` `Patient` ``).
fn type_arg(e: Option<Expr>) -> Option<String> {
    match e? {
        Expr::Member { base, name, .. } => match *base {
            Expr::This => Some(name),
            Expr::Member { base: inner, .. } if matches!(*inner, Expr::This) => Some(name),
            _ => None,
        },
        Expr::Literal(Literal::Str(s, StrKind::String)) => {
            Some(s.rsplit('.').next().unwrap_or(&s).to_owned())
        }
        _ => None,
    }
}

fn req(args: &mut std::vec::IntoIter<Expr>) -> Box<Expr> {
    Box::new(args.next().unwrap_or(Expr::Empty))
}

/// Parses the `value[x]` of a view constant into a typed value.
pub(crate) fn const_kind(key: &str) -> Option<fn(&serde_json::Value) -> Option<ConstVal>> {
    fn s(kind: StrKind) -> impl Fn(&serde_json::Value) -> Option<ConstVal> {
        move |v| v.as_str().map(|s| ConstVal::Str(s.to_owned(), kind))
    }
    let f: fn(&serde_json::Value) -> Option<ConstVal> = match key {
        "valueBoolean" => |v| v.as_bool().map(ConstVal::Bool),
        "valueInteger" | "valuePositiveInt" | "valueUnsignedInt" | "valueInteger64" => {
            |v| v.as_i64().map(ConstVal::Int)
        }
        "valueDecimal" => |v| v.as_f64().map(ConstVal::Dec),
        "valueDate" => |v| s(StrKind::Date)(v),
        "valueDateTime" | "valueInstant" => |v| s(StrKind::DateTime)(v),
        "valueTime" => |v| s(StrKind::Time)(v),
        "valueBase64Binary" | "valueCanonical" | "valueCode" | "valueId" | "valueMarkdown"
        | "valueOid" | "valueString" | "valueUri" | "valueUrl" | "valueUuid" => {
            |v| s(StrKind::String)(v)
        }
        _ => return None,
    };
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoEnv;
    impl EnvResolver for NoEnv {
        fn constant(&self, name: &str) -> Option<usize> {
            (name == "c").then_some(0)
        }
    }

    #[test]
    fn parses_suite_expressions() {
        for src in [
            "name.where(use = 'official').family",
            "extension('http://x').extension('y').value.ofType(Coding).code.first()",
            "value.ofType(Range).high.value / value.ofType(Range).low.value",
            "(gender = 'male').not()",
            "name[%c].family",
            "generalPractitioner.getReferenceKey(Practitioner)[1].exists()",
            "$this",
            "a implies b xor c",
            "@2020-01-01T10:00:00Z",
            "{}",
        ] {
            parse(src, &NoEnv).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for src in [
            "@@",
            "",
            "name.",
            "name[",
            "(",
            "'abc",
            "name.where(",
            "%nope",
            "a..b",
            "1 'mg'",
            "`x",
            "/*",
            "\\",
            "name.foo(",
            ")",
            "x y",
            "%",
            "$",
            "ofType()",
            "@",
            "é",
            "name[0",
        ] {
            assert!(parse(src, &NoEnv).is_err(), "{src:?} should fail");
        }
        let deep = "(".repeat(10_000);
        assert!(parse(&deep, &NoEnv).is_err());
        let deep_neg = "-".repeat(10_000) + "1";
        assert!(parse(&deep_neg, &NoEnv).is_err());
        let long_chain = "a".to_owned() + &".b".repeat(10_000);
        assert!(parse(&long_chain, &NoEnv).is_err());
        let long_sum = "1".to_owned() + &"+1".repeat(10_000);
        assert!(parse(&long_sum, &NoEnv).is_err());
    }

    /// Token soup and random bytes: the parser must return, never panic.
    #[test]
    fn random_inputs_never_panic() {
        const PIECES: &[&str] = &[
            "name",
            ".",
            "where(",
            ")",
            "(",
            "[",
            "]",
            "0",
            "1.5",
            "'x'",
            "'",
            "`a`",
            "%c",
            "%",
            "$this",
            "$",
            "and",
            "or",
            "=",
            "!=",
            "<=",
            "+",
            "-",
            "*",
            "/",
            "&",
            "|",
            "ofType(",
            "Quantity",
            "first()",
            "exists(",
            ",",
            "@2020-01",
            "@T12:00",
            "@",
            "{}",
            "{",
            "}",
            "join(",
            "extension(",
            "getReferenceKey(",
            "is",
            "as",
            "div",
            "mod",
            "implies",
            " ",
            "\\",
            "/*",
            "*/",
            "//",
            "\\u12",
            "é",
            "\u{0}",
            "\\u00e9",
            "\\",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let n = (next() % 12) as usize;
            let mut src = String::new();
            for _ in 0..n {
                src.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let _ = parse(&src, &NoEnv);
            let bytes: Vec<u8> = (0..(next() % 16)).map(|_| (next() % 128) as u8).collect();
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse(s, &NoEnv);
            }
        }
    }
}
