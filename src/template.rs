//! Templates and expressions: one shared minijinja environment with the
//! filters recipes need, strict undefined, the native-value rule, and a
//! static analysis that lists every variable path a template reads so the
//! validator can check it against the recipe.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use minijinja::machinery::{ast, parse, parse_expr, Span};
use minijinja::value::{Serde, Value};
use minijinja::{Environment, Error, ErrorKind, Expression, UndefinedBehavior};

/// The shared environment. Fuel bounds runaway loops in user templates.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(build_env);

/// The environment every recipe template is compiled in.
pub fn env() -> &'static Environment<'static> {
    &ENV
}

fn build_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(100_000));
    env.set_recursion_limit(100);
    env.add_filter("date", date_filter);
    env.add_filter("iso8601", |v: Value| date_filter(v, Some("iso".into())));
    env.add_filter("sendpulse_datetime", |v: Value| {
        date_filter(v, Some("sendpulse".into()))
    });
    env.add_filter("phone", phone_filter);
    env.add_filter("split", split_filter);
    env.add_filter("format", format_filter);
    env
}

/// minijinja's `format`, minus its panic: its key parser (`%(key)s`,
/// `{key}`) steps through bytes and slices inside a multi-byte character
/// (found by fuzzing; the format string may come from an event).
fn format_filter(
    state: &mut minijinja::State,
    format: &Value,
    args: minijinja::value::Rest<minijinja::value::ValueOrKwargs>,
) -> Result<Value, Error> {
    if let Some(s) = format.as_str() {
        if has_non_ascii_key(s) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "format: a key in `%(...)` or `{...}` must be ASCII",
            ));
        }
    }
    minijinja::filters::format(state, format, args)
}

/// Whether a `%(` or `{` is followed by a non-ASCII character before its
/// closing `)` or `}` (or the end).
fn has_non_ascii_key(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let close = match b[i] {
            b'%' if b.get(i + 1) == Some(&b'(') => b')',
            b'{' => b'}',
            _ => {
                i += 1;
                continue;
            }
        };
        let start = i + 1;
        let end = b[start..]
            .iter()
            .position(|c| *c == close)
            .map_or(b.len(), |p| start + p);
        if !b[start..end].is_ascii() {
            return true;
        }
        i = start;
    }
    false
}

/// Filters the recipe docs promise; a test keeps this list and the
/// environment in step.
pub const DOCUMENTED_FILTERS: &[&str] = &[
    "split",
    "first",
    "last",
    "trim",
    "lower",
    "upper",
    "title",
    "default",
    "replace",
    "join",
    "tojson",
    "length",
    "int",
    "float",
    "string",
    "round",
    "abs",
    "list",
    "map",
    "select",
    "reject",
    "unique",
    "sort",
    "min",
    "max",
    "sum",
    "batch",
    "items",
    "urlencode",
    "date",
    "iso8601",
    "sendpulse_datetime",
    "phone",
];

/// `split(sep=None)`: splits a string on `sep`, or on whitespace.
fn split_filter(s: String, sep: Option<String>) -> Vec<String> {
    match sep {
        Some(sep) if !sep.is_empty() => s.split(sep.as_str()).map(str::to_string).collect(),
        _ => s.split_whitespace().map(str::to_string).collect(),
    }
}

/// `date(format="iso")` formats a time given as ISO 8601 / RFC 3339, as
/// `YYYY-MM-DD[ HH:MM[:SS]]`, or as unix seconds (number or digit string).
/// Formats: `iso` (`2021-07-02T05:18:26.704Z`), `sendpulse`
/// (`2021-11-25 13:38`), `date` (`2021-11-25`), `unix`, or a strftime pattern.
fn date_filter(value: Value, format: Option<String>) -> Result<Value, Error> {
    let t = parse_time(&value).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("date: cannot read {value} as a date or time (expected ISO 8601, `YYYY-MM-DD HH:MM` or unix seconds)"),
        )
    })?;
    let out = match format.as_deref().unwrap_or("iso") {
        "iso" => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        "sendpulse" => t.format("%Y-%m-%d %H:%M").to_string(),
        "date" => t.format("%Y-%m-%d").to_string(),
        "unix" => return Ok(Value::from(t.timestamp())),
        pattern => {
            use std::fmt::Write;
            let mut s = String::new();
            write!(s, "{}", t.format(pattern)).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("date: invalid format `{pattern}`"),
                )
            })?;
            s
        }
    };
    Ok(Value::from(out))
}

/// Reads the time forms `date` accepts, as UTC.
pub fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    if let Some(n) = value.as_i64() {
        return Utc.timestamp_opt(n, 0).single();
    }
    let s = value.as_str()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Utc.timestamp_opt(s.parse().ok()?, 0).single();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// `phone(country=None)`: normalises a phone number to E.164 (`+15551234567`).
/// `00` becomes `+`; a number without `+` gets `country` (a calling code,
/// e.g. `1` or `44`, dropping a national trunk `0`), or is read as already
/// international when it has 11 or more digits.
fn phone_filter(value: Value, country: Option<Value>) -> Result<Value, Error> {
    let raw = value.to_string();
    normalize_phone(&raw, country.map(|c| c.to_string()).as_deref())
        .map(Value::from)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("phone: cannot normalise `{raw}` to E.164 (give the country calling code: `phone('1')`)"),
            )
        })
}

/// E.164 normalisation behind the `phone` filter.
pub fn normalize_phone(raw: &str, country: Option<&str>) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed
        .chars()
        .any(|c| !(c.is_ascii_digit() || " -().+/".contains(c)))
    {
        return None;
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let international = if trimmed.starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if let Some(cc) = country {
        let cc: String = cc.chars().filter(char::is_ascii_digit).collect();
        let national = digits.strip_prefix('0').unwrap_or(&digits);
        if digits.starts_with(&cc) && digits.len() > 10 {
            digits.clone()
        } else {
            format!("{cc}{national}")
        }
    } else if digits.len() >= 11 {
        digits
    } else {
        return None;
    };
    if (8..=15).contains(&international.len()) && !international.starts_with('0') {
        Some(format!("+{international}"))
    } else {
        None
    }
}

/// Checks only that a template parses (for catalog templates).
pub fn check_syntax(source: &str) -> Result<(), String> {
    parse(source, "<template>", Default::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A template or expression that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Char offset of the problem in the source.
    pub offset: usize,
    /// minijinja's message.
    pub message: String,
}

fn syntax_error(source: &str, e: &Error) -> SyntaxError {
    let offset = e
        .range()
        .map(|r| byte_to_char(source, r.start))
        .unwrap_or(0);
    SyntaxError {
        offset,
        message: e.detail().unwrap_or("syntax error").to_string(),
    }
}

fn byte_to_char(s: &str, byte: usize) -> usize {
    s.get(..byte.min(s.len()))
        .map(|p| p.chars().count())
        .unwrap_or(0)
}

/// One path a template reads, e.g. `steps.contact.output.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    /// Root variable and the constant attribute/key names after it; a
    /// dynamic subscript ends the path.
    pub path: Vec<String>,
    /// Char offset in the template source.
    pub offset: usize,
}

/// A filter, test or function the environment lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// `filter`, `test` or `function`.
    pub what: &'static str,
    /// Its name.
    pub name: String,
    /// Char offset in the template source.
    pub offset: usize,
}

/// What a template or expression reads and calls.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Variable paths read (locals excluded).
    pub refs: Vec<VarRef>,
    /// Unknown filters, tests and functions.
    pub unknown: Vec<Unknown>,
}

/// Whether a string contains template syntax at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Parses and analyses a template string.
pub fn analyze_template(source: &str) -> Result<Analysis, SyntaxError> {
    let stmt =
        parse(source, "<template>", Default::default()).map_err(|e| syntax_error(source, &e))?;
    let mut w = Walker::new(source);
    w.stmt(&stmt);
    w.finish()
}

/// Parses and analyses an expression (`if`, `when`, `for_each`).
pub fn analyze_expression(source: &str) -> Result<Analysis, SyntaxError> {
    let expr = parse_expr(source).map_err(|e| syntax_error(source, &e))?;
    let mut w = Walker::new(source);
    w.expr(&expr);
    w.finish()
}

/// The most a list or string may be repeated with `*`: minijinja's fuel
/// does not charge for repeating a list (`[0] * 99999999` then costs
/// seconds to format; found by fuzzing).
pub const MAX_REPEAT: u64 = 10_000;

/// Whether an expression makes a list or string (literal, or repeated).
fn is_sequence(e: &ast::Expr<'_>) -> bool {
    match e {
        ast::Expr::List(_) => true,
        ast::Expr::Const(c) => c.value.as_str().is_some() || c.value.len().is_some(),
        ast::Expr::BinOp(b) if matches!(b.op, ast::BinOpKind::Mul) => {
            is_sequence(&b.left) || is_sequence(&b.right)
        }
        _ => false,
    }
}

/// How many times a repetition repeats its list or string, when every
/// count is a constant; `None` otherwise.
fn repetitions(e: &ast::Expr<'_>) -> Option<u64> {
    match e {
        ast::Expr::BinOp(b) if matches!(b.op, ast::BinOpKind::Mul) => {
            let (seq, count) = if is_sequence(&b.left) {
                (&b.left, &b.right)
            } else {
                (&b.right, &b.left)
            };
            let n = match count {
                ast::Expr::Const(c) => i64::try_from(c.value.clone()).ok()?.max(0) as u64,
                _ => return None,
            };
            repetitions(seq)?.checked_mul(n)
        }
        _ => Some(1),
    }
}

struct Walker<'s> {
    source: &'s str,
    locals: Vec<String>,
    out: Analysis,
    errors: Vec<SyntaxError>,
}

impl<'s> Walker<'s> {
    fn new(source: &'s str) -> Self {
        Walker {
            source,
            locals: Vec::new(),
            out: Analysis::default(),
            errors: Vec::new(),
        }
    }

    fn finish(mut self) -> Result<Analysis, SyntaxError> {
        match self.errors.is_empty() {
            true => Ok(self.out),
            false => Err(self.errors.swap_remove(0)),
        }
    }

    fn offset(&self, span: Span) -> usize {
        byte_to_char(self.source, span.start_offset as usize)
    }

    fn stmts(&mut self, body: &[ast::Stmt<'_>]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &ast::Stmt<'_>) {
        match s {
            ast::Stmt::Template(t) => self.stmts(&t.children),
            ast::Stmt::EmitExpr(e) => self.expr(&e.expr),
            ast::Stmt::EmitRaw(_) => {}
            ast::Stmt::ForLoop(f) => {
                self.expr(&f.iter);
                let before = self.locals.len();
                self.bind(&f.target);
                self.locals.push("loop".into());
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
                self.stmts(&f.body);
                self.locals.truncate(before);
                self.stmts(&f.else_body);
            }
            ast::Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            ast::Stmt::WithBlock(w) => {
                let before = self.locals.len();
                for (target, value) in &w.assignments {
                    self.expr(value);
                    self.bind(target);
                }
                self.stmts(&w.body);
                self.locals.truncate(before);
            }
            ast::Stmt::Set(set) => {
                self.expr(&set.expr);
                self.bind(&set.target);
            }
            ast::Stmt::SetBlock(set) => {
                if let Some(f) = &set.filter {
                    self.expr(f);
                }
                self.stmts(&set.body);
                self.bind(&set.target);
            }
            ast::Stmt::AutoEscape(a) => self.stmts(&a.body),
            ast::Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.stmts(&f.body);
            }
            ast::Stmt::Do(d) => self.call(&d.call.expr, &d.call.args, d.call.span()),
            ast::Stmt::Continue(_) | ast::Stmt::Break(_) => {}
        }
    }

    fn bind(&mut self, target: &ast::Expr<'_>) {
        match target {
            ast::Expr::Var(v) => self.locals.push(v.id.to_string()),
            ast::Expr::List(l) => {
                for item in &l.items {
                    self.bind(item);
                }
            }
            ast::Expr::Tuple(t) => {
                for item in &t.items {
                    self.bind(item);
                }
            }
            _ => {}
        }
    }

    /// Flattens `a.b["c"].d` into a path; dynamic subscripts are walked
    /// separately and end the path.
    fn path(&mut self, e: &ast::Expr<'_>) -> Option<(Vec<String>, Span)> {
        match e {
            ast::Expr::Var(v) => Some((vec![v.id.to_string()], v.span())),
            ast::Expr::GetAttr(g) => {
                let (mut p, span) = self.path(&g.expr)?;
                p.push(g.name.to_string());
                Some((p, span))
            }
            ast::Expr::GetItem(g) => {
                let (mut p, span) = self.path(&g.expr)?;
                match &g.subscript_expr {
                    ast::Expr::Const(c) if c.value.as_str().is_some() => {
                        p.push(c.value.as_str().unwrap_or_default().to_string());
                        Some((p, span))
                    }
                    ast::Expr::Const(c) if c.value.as_i64().is_some() => {
                        p.push(c.value.as_i64().unwrap_or_default().to_string());
                        Some((p, span))
                    }
                    other => {
                        self.expr(other);
                        self.record(p, span);
                        None
                    }
                }
            }
            _ => None,
        }
    }

    fn record(&mut self, path: Vec<String>, span: Span) {
        if self.locals.iter().any(|l| *l == path[0]) {
            return;
        }
        let offset = self.offset(span);
        self.out.refs.push(VarRef { path, offset });
    }

    fn expr(&mut self, e: &ast::Expr<'_>) {
        match e {
            ast::Expr::Var(_) | ast::Expr::GetAttr(_) | ast::Expr::GetItem(_) => {
                if let Some((p, span)) = self.path(e) {
                    self.record(p, span);
                } else if let ast::Expr::GetAttr(g) = e {
                    self.expr(&g.expr);
                } else if let ast::Expr::GetItem(g) = e {
                    if !matches!(
                        g.expr,
                        ast::Expr::Var(_) | ast::Expr::GetAttr(_) | ast::Expr::GetItem(_)
                    ) {
                        self.expr(&g.expr);
                        self.expr(&g.subscript_expr);
                    }
                }
            }
            ast::Expr::Const(_) => {}
            ast::Expr::Slice(s) => {
                self.expr(&s.expr);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
            }
            ast::Expr::UnaryOp(u) => self.expr(&u.expr),
            ast::Expr::BinOp(b) => {
                if matches!(b.op, ast::BinOpKind::Mul)
                    && (is_sequence(&b.left) || is_sequence(&b.right))
                    && repetitions(e).is_none_or(|n| n > MAX_REPEAT)
                {
                    self.errors.push(SyntaxError {
                        offset: self.offset(b.span()),
                        message: format!(
                            "a list or string may be repeated with `*` at most {MAX_REPEAT} times, by a constant count"
                        ),
                    });
                }
                self.expr(&b.left);
                self.expr(&b.right);
            }
            ast::Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
            }
            ast::Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    self.expr(f);
                }
            }
            ast::Expr::Filter(f) => {
                if let Some(inner) = &f.expr {
                    self.expr(inner);
                }
                self.args(&f.args);
                if !filter_exists(f.name) {
                    let offset = self.name_offset(f.span(), f.name);
                    self.out.unknown.push(Unknown {
                        what: "filter",
                        name: f.name.to_string(),
                        offset,
                    });
                }
            }
            ast::Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
                if !test_exists(t.name) {
                    let offset = self.name_offset(t.span(), t.name);
                    self.out.unknown.push(Unknown {
                        what: "test",
                        name: t.name.to_string(),
                        offset,
                    });
                }
            }
            ast::Expr::Call(c) => self.call(&c.expr, &c.args, c.span()),
            ast::Expr::List(l) => {
                for i in &l.items {
                    self.expr(i);
                }
            }
            ast::Expr::Tuple(t) => {
                for i in &t.items {
                    self.expr(i);
                }
            }
            ast::Expr::Map(m) => {
                for (k, v) in m.keys.iter().zip(&m.values) {
                    self.expr(k);
                    self.expr(v);
                }
            }
        }
    }

    fn call(&mut self, callee: &ast::Expr<'_>, args: &[ast::CallArg<'_>], span: Span) {
        match callee {
            // A global function: `range(3)`, `dict(a=1)`.
            ast::Expr::Var(v) if !self.locals.iter().any(|l| l == v.id) => {
                if env().globals().all(|(name, _)| name != v.id) {
                    self.out.unknown.push(Unknown {
                        what: "function",
                        name: v.id.to_string(),
                        offset: self.offset(span),
                    });
                }
            }
            // Method calls (`event.email.lower()`) are not enabled: say so
            // at validation instead of failing at run time.
            ast::Expr::GetAttr(g) => {
                self.expr(&g.expr);
                let offset = self.name_offset(span, g.name);
                self.out.unknown.push(Unknown {
                    what: "method",
                    name: g.name.to_string(),
                    offset,
                });
            }
            other => self.expr(other),
        }
        self.args(args);
    }

    fn args(&mut self, args: &[ast::CallArg<'_>]) {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    /// The offset of a filter/test name inside its span (after the `|`/`is`).
    fn name_offset(&self, span: Span, name: &str) -> usize {
        let start = span.start_offset as usize;
        let end = (span.end_offset as usize).min(self.source.len());
        let text = self.source.get(start..end).unwrap_or("");
        let rel = text.rfind(name).unwrap_or(0);
        byte_to_char(self.source, start + rel)
    }
}

/// Whether the environment has a filter of that name.
pub fn filter_exists(name: &str) -> bool {
    static KNOWN: LazyLock<std::sync::Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    if KNOWN.lock().map(|k| k.contains(name)).unwrap_or(false) {
        return true;
    }
    let exists = !matches!(
        env().empty_state().apply_filter(name, &[Value::UNDEFINED]),
        Err(e) if e.kind() == ErrorKind::UnknownFilter
    );
    if exists {
        if let Ok(mut k) = KNOWN.lock() {
            k.insert(name.to_string());
        }
    }
    exists
}

/// Whether the environment has a test of that name.
pub fn test_exists(name: &str) -> bool {
    !matches!(
        env().empty_state().perform_test(name, &[Value::UNDEFINED]),
        Err(e) if e.kind() == ErrorKind::UnknownTest
    )
}

/// A compiled template string, ready to render many times.
///
/// Most mapping templates are literal text and `{{ expr }}`s, compiled
/// into expressions (the fast path); ones with `{% %}` blocks are rendered
/// as whole templates.
#[derive(Debug, Clone)]
pub enum Template {
    /// No template syntax: the string itself.
    Literal(Arc<str>),
    /// Exactly one `{{ expr }}`: renders to the expression's native value.
    Native(Arc<Expr>),
    /// Literal text and expressions, concatenated to a string.
    Parts(Arc<[Part]>),
    /// A template with statements, rendered whole.
    Full(Arc<str>),
}

/// A piece of a [`Template::Parts`].
#[derive(Debug)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// An expression rendered to text.
    Expr(Expr),
}

/// A compiled expression of a template, and the attribute path it reads
/// when it is nothing else (`event.email`): most mapping and key
/// expressions are such paths, and looking them up directly costs a tenth
/// of a run of minijinja's VM.
#[derive(Debug)]
pub struct Expr {
    compiled: Expression<'static, 'static>,
    path: Option<Box<[String]>>,
}

impl Expr {
    /// The value, or `None` when the path is missing somewhere or crosses
    /// something other than a map (the VM then gives the exact error).
    fn lookup(&self, ctx: &Value) -> Option<Value> {
        let (root, rest) = self.path.as_deref()?.split_first()?;
        let mut v = ctx.get_attr(root).ok()?;
        for name in rest {
            if v.kind() != minijinja::value::ValueKind::Map {
                return None;
            }
            v = v.get_attr(name).ok()?;
        }
        (!v.is_undefined()).then_some(v)
    }
}

/// `a.b.c` as `["a", "b", "c"]`; `None` for any other expression.
fn attr_path(e: &ast::Expr<'_>) -> Option<Vec<String>> {
    match e {
        ast::Expr::Var(v) => Some(vec![v.id.to_string()]),
        ast::Expr::GetAttr(g) => {
            let mut path = attr_path(&g.expr)?;
            path.push(g.name.to_string());
            Some(path)
        }
        _ => None,
    }
}

/// A template failed to render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

impl Template {
    /// Compiles a string (call after [`analyze_template`] succeeded).
    pub fn compile(source: &str) -> Result<Template, SyntaxError> {
        if !is_template(source) {
            return Ok(Template::Literal(source.into()));
        }
        let stmt = parse(source, "<template>", Default::default())
            .map_err(|e| syntax_error(source, &e))?;
        let ast::Stmt::Template(t) = &stmt else {
            return Ok(Template::Full(source.into()));
        };
        let mut parts = Vec::new();
        for child in &t.children {
            match child {
                ast::Stmt::EmitRaw(r) => parts.push(Part::Text(r.raw.to_string())),
                ast::Stmt::EmitExpr(e) => {
                    let span = e.span();
                    let text = source
                        .get(span.start_offset as usize..span.end_offset as usize)
                        .unwrap_or("");
                    let compiled = env()
                        .compile_expression_owned(strip_delimiters(text).to_string())
                        .map_err(|e| syntax_error(source, &e))?;
                    parts.push(Part::Expr(Expr {
                        compiled,
                        path: attr_path(&e.expr).map(Vec::into_boxed_slice),
                    }));
                }
                _ => return Ok(Template::Full(source.into())),
            }
        }
        if parts.len() == 1 {
            if let Some(Part::Expr(_)) = parts.first() {
                let Some(Part::Expr(e)) = parts.pop() else {
                    unreachable!()
                };
                return Ok(Template::Native(Arc::new(e)));
            }
        }
        Ok(Template::Parts(parts.into()))
    }

    /// Renders with a context; `Native` keeps the JSON type of its value.
    pub fn render(&self, ctx: &Value) -> Result<serde_json::Value, RenderError> {
        match self {
            Template::Literal(s) => Ok(serde_json::Value::String(s.to_string())),
            Template::Native(e) => {
                let v = eval_defined(e, ctx)?;
                serde_json::to_value(&v).map_err(|e| RenderError(e.to_string()))
            }
            Template::Parts(parts) => {
                let mut out = String::new();
                for p in parts.iter() {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => {
                            let v = eval_defined(e, ctx)?;
                            // Strings (most values) are copied as they are;
                            // `write!` costs ~1,000 instructions a value.
                            if let Some(s) = v.as_str() {
                                out.push_str(s);
                            } else if !v.is_none() {
                                use std::fmt::Write;
                                let _ = write!(out, "{v}");
                            }
                        }
                    }
                }
                Ok(serde_json::Value::String(out))
            }
            Template::Full(src) => env()
                .render_str(src, ctx.clone())
                .map(serde_json::Value::String)
                .map_err(|e| RenderError(describe(&e))),
        }
    }
}

/// `{{- expr +}}` -> `expr`.
fn strip_delimiters(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_prefix("{{").unwrap_or(t);
    let t = t.strip_suffix("}}").unwrap_or(t);
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let t = t.strip_suffix(['-', '+']).unwrap_or(t);
    t.trim()
}

fn eval_defined(e: &Expr, ctx: &Value) -> Result<Value, RenderError> {
    match e.lookup(ctx) {
        Some(v) => Ok(v),
        None => vm_defined(&e.compiled, ctx),
    }
}

/// Evaluates with minijinja's VM; undefined is an error.
fn vm_defined(e: &Expression<'static, 'static>, ctx: &Value) -> Result<Value, RenderError> {
    let v = e.eval(ctx.clone()).map_err(|e| RenderError(describe(&e)))?;
    if v.is_undefined() {
        return Err(RenderError(
            "the template reads a value that is not defined (use `| default(...)` or `is defined`)"
                .into(),
        ));
    }
    Ok(v)
}

fn describe(e: &Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// A compiled `if`/`when` expression.
#[derive(Debug, Clone)]
pub struct Condition(Arc<Expression<'static, 'static>>);

impl Condition {
    /// Compiles an expression.
    pub fn compile(source: &str) -> Result<Condition, SyntaxError> {
        env()
            .compile_expression_owned(source.to_string())
            .map(|e| Condition(Arc::new(e)))
            .map_err(|e| syntax_error(source, &e))
    }

    /// Evaluates to a boolean (Jinja truthiness; undefined is false).
    pub fn eval(&self, ctx: &Value) -> Result<bool, RenderError> {
        let v = self
            .0
            .eval(ctx.clone())
            .map_err(|e| RenderError(describe(&e)))?;
        Ok(!v.is_undefined() && v.is_true())
    }

    /// Evaluates to a value (for `for_each`).
    pub fn value(&self, ctx: &Value) -> Result<serde_json::Value, RenderError> {
        let v = vm_defined(&self.0, ctx)?;
        serde_json::to_value(&v).map_err(|e| RenderError(e.to_string()))
    }
}

/// Converts a JSON value into a template value.
pub fn to_value(json: &serde_json::Value) -> Value {
    Value::from(Serde(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeating_a_list_is_bounded_at_validation() {
        for bad in [
            "[0] * 55555511",
            "[0] * 9999 * 9999",
            "[1, 2] * event.n",
            "'ab' * event.n",
        ] {
            let e = analyze_expression(bad).unwrap_err();
            assert!(e.message.contains("at most 10000"), "{bad}: {}", e.message);
        }
        for ok in ["[0] * 3", "'-' * 40", "event.price * event.qty", "2 * 3"] {
            assert!(analyze_expression(ok).is_ok(), "{ok}");
        }
        assert!(analyze_template("{{ [0] * 99999999 ~ 1 }}").is_err());
    }

    #[test]
    fn format_with_a_non_ascii_key_is_an_error_not_a_panic() {
        let ctx = to_value(&serde_json::json!({"event": {"f": "%(é)s", "g": "{é"}}));
        for src in ["{{ event.f | format(1) }}", "{{ event.g | format(1) }}"] {
            let t = Template::compile(src).unwrap();
            let e = t.render(&ctx).unwrap_err();
            assert!(e.0.contains("must be ASCII"), "{}", e.0);
        }
        let t = Template::compile("{{ 'Привет %s' | format('мир') }}").unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "Привет мир");
    }
    use serde_json::json;

    fn render(src: &str, ctx: serde_json::Value) -> Result<serde_json::Value, RenderError> {
        Template::compile(src).unwrap().render(&to_value(&ctx))
    }

    /// The expression of a one-expression template.
    fn expr(src: &str) -> Arc<Expr> {
        match Template::compile(src).unwrap() {
            Template::Native(e) => e,
            other => panic!("not one expression: {other:?}"),
        }
    }

    #[test]
    fn attribute_paths_are_looked_up_directly_with_the_vms_result_and_errors() {
        let ctx = to_value(&json!({"event": {
            "s": "x", "n": 5, "f": 1.5, "b": true, "z": null, "l": [1, "a"],
            "o": {"k": {"deep": "v"}}}}));
        for src in [
            "{{ event.s }}",
            "{{ event.n }}",
            "{{ event.f }}",
            "{{ event.b }}",
            "{{ event.z }}",
            "{{ event.l }}",
            "{{ event.o }}",
            "{{ event.o.k.deep }}",
            "{{ event }}",
            // Missing on the way or at the end, or below a non-map: the VM's errors.
            "{{ event.missing }}",
            "{{ event.o.missing.deep }}",
            "{{ event.s.x }}",
            "{{ event.z.x }}",
            "{{ nothing.x }}",
        ] {
            let e = expr(src);
            assert!(e.path.is_some(), "{src} is a path");
            let direct = eval_defined(&e, &ctx).map(|v| v.to_string());
            let vm = vm_defined(&e.compiled, &ctx).map(|v| v.to_string());
            assert_eq!(direct, vm, "{src}");
        }
        assert!(
            expr("{{ event.n }}").lookup(&ctx).is_some(),
            "found without the VM"
        );
        for src in [
            "{{ event.s | upper }}",
            "{{ event['s'] }}",
            "{{ event.l[0] }}",
            "{{ 1 }}",
        ] {
            assert!(expr(src).path.is_none(), "{src} is not a plain path");
        }
        assert_eq!(
            render(
                "k:{{ event.n }}:{{ event.z }}:{{ event.s | upper }}",
                json!({"event": {"n": 5, "z": null, "s": "x"}})
            )
            .unwrap(),
            json!("k:5::X")
        );
    }

    #[test]
    fn single_expression_keeps_native_type() {
        let ctx = json!({"event": {"n": 5, "tags": ["a"], "o": {"k": true}}});
        assert_eq!(render("{{ event.n }}", ctx.clone()).unwrap(), json!(5));
        assert_eq!(
            render("{{ event.tags }}", ctx.clone()).unwrap(),
            json!(["a"])
        );
        assert_eq!(render(" {{ event.n }}", ctx.clone()).unwrap(), json!(" 5"));
        assert_eq!(render("n={{ event.n }}", ctx).unwrap(), json!("n=5"));
    }

    #[test]
    fn undefined_is_an_error_not_an_empty_string() {
        let e = render("x {{ event.missing }}", json!({"event": {}})).unwrap_err();
        assert!(e.0.contains("not defined"), "{e}");
        assert_eq!(
            render("{{ event.missing | default('d') }}", json!({"event": {}})).unwrap(),
            json!("d")
        );
    }

    #[test]
    fn documented_filters_exist() {
        for f in DOCUMENTED_FILTERS {
            assert!(filter_exists(f), "filter {f} missing");
        }
        assert!(!filter_exists("no_such_filter"));
    }

    #[test]
    fn name_filters_split_first_last() {
        let ctx = json!({"event": {"name": "Ada King Lovelace"}});
        assert_eq!(
            render("{{ event.name | split(' ') | first }}", ctx.clone()).unwrap(),
            json!("Ada")
        );
        assert_eq!(
            render("{{ event.name | split | last }}", ctx).unwrap(),
            json!("Lovelace")
        );
    }

    #[test]
    fn date_formats_iso_and_sendpulse() {
        let ctx = json!({"t": "1496827422", "s": "2021-11-25 13:38"});
        assert_eq!(
            render("{{ t | date }}", ctx.clone()).unwrap(),
            json!("2017-06-07T09:23:42.000Z")
        );
        assert_eq!(
            render("{{ t | date('sendpulse') }}", ctx.clone()).unwrap(),
            json!("2017-06-07 09:23")
        );
        assert_eq!(
            render("{{ s | iso8601 }}", ctx.clone()).unwrap(),
            json!("2021-11-25T13:38:00.000Z")
        );
        assert!(render("{{ 'soon' | date }}", ctx).is_err());
    }

    #[test]
    fn phone_normalises_to_e164() {
        assert_eq!(
            normalize_phone("+1 888-888-8888", None).as_deref(),
            Some("+18888888888")
        );
        assert_eq!(
            normalize_phone("0044 20 7946 0958", None).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize_phone("(555) 123-4567", Some("1")).as_deref(),
            Some("+15551234567")
        );
        assert_eq!(
            normalize_phone("020 7946 0958", Some("44")).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize_phone("79312351234", None).as_deref(),
            Some("+79312351234")
        );
        assert_eq!(normalize_phone("12345", None), None);
        assert_eq!(normalize_phone("call me", Some("1")), None);
    }

    #[test]
    fn analysis_lists_paths_and_unknown_filters() {
        let a =
            analyze_template("{{ steps.contact.output.id }} {{ event['e-mail'] | lowr }}").unwrap();
        let paths: Vec<String> = a.refs.iter().map(|r| r.path.join(".")).collect();
        assert_eq!(paths, ["steps.contact.output.id", "event.e-mail"]);
        assert_eq!(a.refs[0].offset, 3);
        assert_eq!(a.unknown[0].name, "lowr");
        assert_eq!(a.unknown[0].offset, 51);
    }

    #[test]
    fn analysis_skips_loop_locals() {
        let a = analyze_template("{% for t in event.tags %}{{ t }}{{ loop.index }}{% endfor %}")
            .unwrap();
        let paths: Vec<String> = a.refs.iter().map(|r| r.path.join(".")).collect();
        assert_eq!(paths, ["event.tags"]);
    }

    #[test]
    fn syntax_errors_carry_offsets() {
        let e = analyze_template("hello {{ event. }}").unwrap_err();
        assert!(e.offset >= 6, "{e:?}");
        assert!(analyze_expression("a ==").is_err());
    }

    #[test]
    fn conditions_are_booleans() {
        let c = Condition::compile("event.book_id == vars.book").unwrap();
        assert!(c
            .eval(&to_value(
                &json!({"event": {"book_id": 1}, "vars": {"book": 1}})
            ))
            .unwrap());
        assert!(!Condition::compile("event.nope")
            .unwrap()
            .eval(&to_value(&json!({"event": {}})))
            .unwrap());
    }
}
