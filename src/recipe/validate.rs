//! Validation: a parsed [`Recipe`] plus the catalog (and optionally the
//! connections) becomes a [`ValidRecipe`] — operations resolved, templates
//! and expressions compiled, references checked — or diagnostics.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use super::{FallbackPath, Mapping, OnError, ParsedFile, Recipe, Spanned, Step};
use crate::catalog::{Catalog, InputDef, OpKind, OpRef, ValueType};
use crate::connections::Connections;
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::duration::parse_duration;
use crate::template::{self, Analysis, Condition, SyntaxError, Template};
use crate::yaml::{LineIndex, Node, NodeKind, Pos};

/// A recipe that passed validation: the only form the engine runs.
#[derive(Debug, Clone)]
pub struct ValidRecipe {
    /// Recipe name.
    pub name: String,
    /// Source file.
    pub file: String,
    /// Content hash of the file: the version a run records.
    pub version: String,
    /// Description.
    pub description: String,
    /// `vars` as a JSON object.
    pub vars: Value,
    /// The trigger.
    pub trigger: ValidTrigger,
    /// The steps.
    pub steps: Vec<ValidStep>,
}

/// What starts runs of a valid recipe.
#[derive(Debug, Clone)]
pub enum TriggerKind {
    /// A connector webhook event.
    Webhook(OpRef),
    /// A poll of a list operation.
    Poll {
        /// The poll trigger operation.
        op: OpRef,
        /// Interval.
        every: Duration,
    },
    /// A fixed interval.
    Every(Duration),
    /// A cron schedule.
    Cron {
        /// Parsed expression.
        cron: Box<croner::Cron>,
        /// The expression as written.
        expr: String,
        /// The zone it is read in (UTC unless `timezone` says otherwise).
        zone: crate::zone::Zone,
    },
}

/// A valid trigger.
#[derive(Debug, Clone)]
pub struct ValidTrigger {
    /// What kind.
    pub kind: TriggerKind,
    /// Connection name, when resolved.
    pub connection: Option<String>,
    /// Filter.
    pub condition: Option<Condition>,
    /// Poll inputs.
    pub with: Option<Compiled>,
}

/// A valid step.
#[derive(Debug, Clone)]
pub struct ValidStep {
    /// Step id.
    pub id: String,
    /// The resolved action.
    pub op: OpRef,
    /// Connection name, when resolved.
    pub connection: Option<String>,
    /// Skip condition.
    pub condition: Option<Condition>,
    /// Compiled input mapping (a map, possibly empty).
    pub with: Compiled,
    /// Retry policy; `None` uses the connector default.
    pub retry: Option<RetryPolicy>,
    /// Fallback paths.
    pub fallback: Vec<ValidFallback>,
    /// What a final failure does.
    pub on_error: OnError,
    /// Fan-out list expression.
    pub for_each: Option<Condition>,
    /// Items per call.
    pub batch_size: Option<u32>,
}

/// A valid fallback path.
#[derive(Debug, Clone)]
pub struct ValidFallback {
    /// Guard over `error`.
    pub when: Option<Condition>,
    /// Its steps.
    pub steps: Vec<ValidStep>,
}

/// Retry settings with defaults applied (the connector runtime's type).
pub use crate::connectors::retry::RetryPolicy;

/// A compiled template tree: what `with:` becomes.
#[derive(Debug, Clone)]
pub enum Compiled {
    /// A literal value (no templates inside).
    Literal(Value),
    /// A template string.
    Template(Template),
    /// A list of compiled values.
    List(Vec<Compiled>),
    /// A mapping of compiled values, in source order.
    Map(Vec<(String, Compiled)>),
}

/// The fields of `steps.<id>` a template may read.
pub const STEP_FIELDS: &[&str] = &["output", "status", "error", "attempts", "duration_ms"];
/// The fields of `error`.
pub const ERROR_FIELDS: &[&str] = &["kind", "status", "message", "body"];
/// The fields of `run`.
pub const RUN_FIELDS: &[&str] = &["id", "recipe", "started_at"];
/// Root variables of the context.
pub const ROOTS: &[&str] = &["event", "vars", "steps", "error", "item", "run"];

/// Every diagnostic code `validate` can report for a recipe file; the
/// corpus test requires a case for each, and `docs/recipes.md` lists them.
pub const CODES: &[&str] = &[
    "yaml-syntax",
    "duplicate-key",
    "unknown-key",
    "wrong-type",
    "missing-key",
    "unquoted-template",
    "empty-steps",
    "unknown-operation",
    "not-a-trigger",
    "not-an-action",
    "invalid-trigger",
    "unknown-connection",
    "connection-wrong-connector",
    "missing-connection",
    "ambiguous-connection",
    "template-syntax",
    "expression-syntax",
    "unknown-filter",
    "unknown-test",
    "unknown-function",
    "unknown-variable",
    "unknown-var",
    "unknown-event-field",
    "unknown-step",
    "step-not-before",
    "unknown-step-field",
    "error-outside-fallback",
    "item-outside-for-each",
    "missing-input",
    "unknown-input",
    "connection-input",
    "input-type-mismatch",
    "batch-size-without-for-each",
    "batch-not-supported",
    "invalid-batch-size",
    "duplicate-step-id",
    "duplicate-recipe",
    "invalid-duration",
    "invalid-cron",
    "invalid-timezone",
    "retry-out-of-range",
    "unused-var",
];

const MAX_ATTEMPTS: u32 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How strict validation is about things a command does not use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateOptions {
    /// The trigger's connection is not used (`fire` is handed the event),
    /// so a missing or unknown one is a warning instead of an error.
    pub trigger_connection_unused: bool,
}

/// Validates one parsed file. Diagnostics go to `diags`; a recipe is
/// returned only when this file produced no errors.
pub fn validate(
    parsed: &ParsedFile,
    catalog: &Catalog,
    connections: Option<&Connections>,
    diags: &mut Vec<Diagnostic>,
) -> Option<ValidRecipe> {
    validate_with(
        parsed,
        catalog,
        connections,
        ValidateOptions::default(),
        diags,
    )
}

/// [`validate`] with options.
pub fn validate_with(
    parsed: &ParsedFile,
    catalog: &Catalog,
    connections: Option<&Connections>,
    options: ValidateOptions,
    diags: &mut Vec<Diagnostic>,
) -> Option<ValidRecipe> {
    let recipe = parsed.recipe.as_ref()?;
    let root = parsed.root.as_ref()?;
    let complete = parsed.complete;
    let before = diags
        .iter()
        .filter(|d| d.severity == crate::diagnostic::Severity::Error)
        .count();
    let mut v = Validator {
        file: &parsed.file,
        index: &parsed.index,
        root,
        catalog,
        connections,
        recipe,
        diags,
        used_vars: HashSet::new(),
        payload: None,
        all_steps: parsed.broken_step_ids.clone(),
        fallback_of: Vec::new(),
        had_syntax_error: false,
        options,
    };
    let out = v.recipe();
    let errors = v
        .diags
        .iter()
        .filter(|d| d.severity == crate::diagnostic::Severity::Error)
        .count();
    if errors > before || !complete {
        None
    } else {
        out
    }
}

/// What a template may see at one place in the recipe.
#[derive(Clone, Default)]
struct Scope {
    /// Steps that have run before this point.
    before: Vec<String>,
    in_fallback: bool,
    in_for_each: bool,
    /// `steps` and `run` exist (false in `trigger.if`).
    in_run: bool,
}

struct Validator<'a> {
    file: &'a str,
    index: &'a LineIndex,
    root: &'a Node,
    catalog: &'a Catalog,
    connections: Option<&'a Connections>,
    recipe: &'a Recipe,
    diags: &'a mut Vec<Diagnostic>,
    used_vars: HashSet<String>,
    /// Declared payload fields of the trigger, when it declares any.
    payload: Option<Vec<String>>,
    /// Every step id in the recipe, for "unknown" vs "not before".
    all_steps: Vec<String>,
    /// Fallback step id -> the step whose fallback it is in.
    fallback_of: Vec<(String, String)>,
    /// A template failed to parse, so var usage is not fully known.
    had_syntax_error: bool,
    options: ValidateOptions,
}

impl Validator<'_> {
    fn error(&mut self, pos: Pos, code: &'static str, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(self.file, pos, code, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn recipe(&mut self) -> Option<ValidRecipe> {
        let r = self.recipe;
        collect_ids(&r.steps, &mut self.all_steps);
        collect_fallback_parents(&r.steps, &mut self.fallback_of);
        self.check_duplicate_ids();
        let trigger = self.trigger();
        let mut scope = Scope {
            in_run: true,
            ..Scope::default()
        };
        let mut steps = Vec::new();
        let mut ok = true;
        for s in &r.steps {
            match self.step(s, &scope) {
                Some(vs) => steps.push(vs),
                None => ok = false,
            }
            scope.before.push(s.id.value.clone());
        }
        for (name, v) in &r.vars {
            if !self.had_syntax_error && !self.used_vars.contains(name) {
                let d = Diagnostic::warning(
                    self.file,
                    v.pos,
                    "unused-var",
                    format!("var `{name}` is never used"),
                );
                self.diags.push(d);
            }
        }
        let vars = Value::Object(
            r.vars
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        );
        Some(ValidRecipe {
            name: r.recipe.value.clone(),
            file: self.file.to_string(),
            version: version_of(&self.index.text()),
            description: r
                .description
                .as_ref()
                .map(|d| d.value.clone())
                .unwrap_or_default(),
            vars,
            trigger: trigger?,
            steps: if ok { steps } else { return None },
        })
    }

    fn check_duplicate_ids(&mut self) {
        let mut seen: Vec<(String, Pos)> = Vec::new();
        let mut all = Vec::new();
        collect_spanned_ids(&self.recipe.steps, &mut all);
        for id in all {
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id.value) {
                let msg = format!(
                    "step id `{}` is already used at line {}",
                    id.value, first.line
                );
                self.error(id.pos, "duplicate-step-id", msg);
            } else {
                seen.push((id.value.clone(), id.pos));
            }
        }
    }

    fn trigger(&mut self) -> Option<ValidTrigger> {
        let t = &self.recipe.trigger;
        let mut ok = true;
        let every = match &t.every {
            Some(e) => match parse_duration(&e.value) {
                Ok(d) if d < Duration::from_secs(1) => {
                    self.error(
                        e.pos,
                        "invalid-duration",
                        format!("`every: {}` is shorter than the 1s minimum", e.value),
                    );
                    ok = false;
                    None
                }
                Ok(d) => Some(d),
                Err(err) => {
                    self.error(e.pos, "invalid-duration", err.to_string());
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let cron = match &t.cron {
            Some(c) => match c.value.parse::<croner::Cron>() {
                Ok(cron) => Some(cron),
                Err(e) => {
                    self.error(
                        c.pos,
                        "invalid-cron",
                        format!("invalid cron expression `{}`: {e}", c.value),
                    );
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let zone = match &t.timezone {
            Some(tz) => match crate::zone::Zone::parse(&tz.value) {
                Ok(z) => z,
                Err(e) => {
                    let suggestion = match &e {
                        crate::zone::ZoneError::Unknown {
                            suggestion: Some(s),
                            ..
                        } => Some(format!("did you mean '{s}'?")),
                        _ => None,
                    };
                    self.error(tz.pos, "invalid-timezone", e.to_string())
                        .suggestion = suggestion;
                    ok = false;
                    crate::zone::Zone::utc()
                }
            },
            None => crate::zone::Zone::utc(),
        };
        if t.timezone.is_some() && t.cron.is_none() {
            let pos = t.timezone.as_ref().map(|z| z.pos).unwrap_or(t.pos);
            self.error(pos, "invalid-trigger", "`timezone` applies to `cron` only");
            ok = false;
        }
        // Resolve first (the filter's `event` fields depend on it), then
        // check the filter even when the rest of the trigger is broken.
        let op = t.on.as_ref().and_then(|on| self.resolve(on, true));
        self.payload = match (&op, &t.on) {
            (Some(op), _) => {
                (!op.def().payload.is_empty()).then(|| op.def().payload.keys().cloned().collect())
            }
            (None, None) => Some(vec!["scheduled_at".to_string()]),
            (None, Some(_)) => None,
        };
        let condition = t
            .condition
            .as_ref()
            .and_then(|c| self.condition(c, &Scope::default()));
        if t.condition.is_some() && condition.is_none() {
            ok = false;
        }
        let mut connection = None;
        let kind = match (&t.on, op) {
            (Some(_), None) => return None,
            (Some(on), Some(op)) => {
                if let Some(c) = &t.cron {
                    let msg = format!(
                        "`cron` makes a schedule, but `{}` is a {}; remove `cron`",
                        on.value,
                        if op.def().kind == OpKind::Poll {
                            "poll (it uses `every`)"
                        } else {
                            "webhook event"
                        }
                    );
                    self.error(c.pos, "invalid-trigger", msg);
                    ok = false;
                }
                let first = self.diags.len();
                connection = self.connection(&op, t.connection.as_ref(), t.pos);
                if self.options.trigger_connection_unused {
                    for d in &mut self.diags[first..] {
                        d.severity = crate::diagnostic::Severity::Warning;
                        d.message.push_str(" (not needed here: the event is given)");
                    }
                }
                match op.def().kind {
                    OpKind::Webhook => {
                        if let Some(e) = &t.every {
                            self.error(e.pos, "invalid-trigger", format!("`{}` is a webhook event; `every` only applies to polls and schedules", on.value));
                            ok = false;
                        }
                        TriggerKind::Webhook(op)
                    }
                    OpKind::Poll => match every {
                        Some(every) => TriggerKind::Poll { op, every },
                        None => {
                            if t.every.is_none() {
                                self.error(
                                    on.pos,
                                    "missing-key",
                                    format!(
                                        "poll trigger `{}` needs `every` (e.g. `every: 5m`)",
                                        on.value
                                    ),
                                );
                            }
                            return None;
                        }
                    },
                    OpKind::Action => unreachable!("resolve(trigger) rejects actions"),
                }
            }
            (None, _) => {
                if let Some(c) = &t.connection {
                    self.error(
                        c.pos,
                        "invalid-trigger",
                        "a schedule has no connection; remove `connection`",
                    );
                    ok = false;
                }
                match (every, cron) {
                    (Some(_), Some(_)) => {
                        self.error(
                            t.pos,
                            "invalid-trigger",
                            "a schedule has either `every` or `cron`, not both",
                        );
                        return None;
                    }
                    (Some(d), None) => TriggerKind::Every(d),
                    (None, Some(c)) => TriggerKind::Cron {
                        cron: Box::new(c),
                        expr: t.cron.as_ref().map(|c| c.value.clone()).unwrap_or_default(),
                        zone,
                    },
                    (None, None) => return None,
                }
            }
        };
        let with = match (&t.with, &kind) {
            (Some(m), TriggerKind::Poll { op, .. }) => {
                let list = op
                    .def()
                    .poll
                    .as_ref()
                    .and_then(|p| op.connector().operations.get(&p.operation))
                    .map(|l| l.get());
                let mut bad = false;
                for (k, _) in m.0.as_map().unwrap_or(&[]) {
                    let name = k.key_string();
                    if let Some(list) = list.filter(|l| !l.inputs.contains_key(&name)) {
                        let sugg = did_you_mean(&name, list.inputs.keys().map(String::as_str));
                        let msg = format!("the list call of `{}` has no input `{name}`", op.id());
                        self.error(k.span.start, "unknown-input", msg).suggestion = sugg;
                        bad = true;
                    }
                }
                let compiled = self.mapping(m, &Scope::default())?;
                if bad {
                    return None;
                }
                Some(compiled)
            }
            (Some(m), _) => {
                self.error(
                    m.0.span.start,
                    "invalid-trigger",
                    "`with` on a trigger only applies to polls",
                );
                return None;
            }
            (None, _) => None,
        };
        ok.then_some(ValidTrigger {
            kind,
            connection,
            condition,
            with,
        })
    }

    /// Resolves an operation id, reporting unknown ids and the wrong kind.
    fn resolve(&mut self, id: &Spanned<String>, want_trigger: bool) -> Option<OpRef> {
        match self.catalog.op(&id.value) {
            Some(op) if op.is_trigger() == want_trigger => Some(op),
            Some(_) if want_trigger => {
                self.error(
                    id.pos,
                    "not-a-trigger",
                    format!(
                        "`{}` is an action; a trigger needs a webhook event or poll operation",
                        id.value
                    ),
                );
                None
            }
            Some(_) => {
                self.error(
                    id.pos,
                    "not-an-action",
                    format!("`{}` is a trigger; a step needs an action", id.value),
                );
                None
            }
            None => {
                let candidates: Vec<String> = self
                    .catalog
                    .operations()
                    .filter(|o| o.is_trigger() == want_trigger)
                    .map(|o| o.id().to_string())
                    .collect();
                let sugg = did_you_mean(&id.value, candidates.iter().map(String::as_str));
                self.error(
                    id.pos,
                    "unknown-operation",
                    format!("no operation '{}' in the catalog", id.value),
                )
                .suggestion = sugg;
                None
            }
        }
    }

    /// Resolves and checks the connection of an operation.
    fn connection(
        &mut self,
        op: &OpRef,
        given: Option<&Spanned<String>>,
        at: Pos,
    ) -> Option<String> {
        let connector = op.connector().connector.clone();
        if op.connector().builtin && op.connector().connection.is_empty() {
            if let Some(g) = given {
                let msg = format!(
                    "`{}` runs inside the engine and takes no connection; remove `connection`",
                    op.id()
                );
                self.error(g.pos, "connection-wrong-connector", msg);
            }
            return None;
        }
        // Built-in actions (`http.request`) work without a connection.
        if op.connector().builtin && !op.is_trigger() && given.is_none() {
            return None;
        }
        // Without a connections file the name as written stands (tests
        // give each named connection placeholder values).
        let Some(conns) = self.connections else {
            return given.map(|g| g.value.clone());
        };
        match given {
            Some(g) => match conns.get(&g.value) {
                Some(c) if c.connector == connector => Some(g.value.clone()),
                Some(c) => {
                    let msg = format!("connection `{}` is for connector `{}`, but `{}` needs a `{connector}` connection", g.value, c.connector, op.id());
                    self.error(g.pos, "connection-wrong-connector", msg);
                    None
                }
                None => {
                    let names: Vec<&str> = conns.by_name.keys().map(String::as_str).collect();
                    let sugg = did_you_mean(&g.value, names);
                    self.error(
                        g.pos,
                        "unknown-connection",
                        format!("no connection `{}` in the connections file", g.value),
                    )
                    .suggestion = sugg;
                    None
                }
            },
            None => {
                let mut fitting = conns.of_connector(&connector);
                match (fitting.next(), fitting.next()) {
                    (Some(c), None) => Some(c.name.clone()),
                    (None, _) if op.connector().builtin => None,
                    (None, _) => {
                        self.error(at, "missing-connection", format!("`{}` needs a `{connector}` connection and the connections file has none", op.id()));
                        None
                    }
                    (Some(_), Some(_)) => {
                        let names: Vec<String> = conns
                            .of_connector(&connector)
                            .map(|c| c.name.clone())
                            .collect();
                        self.error(at, "ambiguous-connection", format!("several `{connector}` connections exist ({}); name one with `connection:`", names.join(", ")));
                        None
                    }
                }
            }
        }
    }

    fn step(&mut self, s: &Step, scope: &Scope) -> Option<ValidStep> {
        let mut ok = true;
        let op = self.resolve(&s.action, false);
        let connection = op
            .as_ref()
            .and_then(|op| self.connection(op, s.connection.as_ref(), s.pos));
        let condition = match &s.condition {
            Some(c) => {
                let r = self.condition(c, scope);
                ok &= r.is_some();
                r
            }
            None => None,
        };
        let for_each = match &s.for_each {
            Some(c) => {
                let r = self.condition(c, scope);
                ok &= r.is_some();
                r
            }
            None => None,
        };
        let item_scope = Scope {
            in_for_each: s.for_each.is_some(),
            ..scope.clone()
        };
        let with = match &s.with {
            Some(m) => self.mapping(m, &item_scope),
            None => Some(Compiled::Map(Vec::new())),
        };
        ok &= with.is_some();
        if let Some(op) = &op {
            ok &= self.check_inputs(op, s);
        }
        if let Some(b) = &s.batch_size {
            if s.for_each.is_none() {
                self.error(
                    b.pos,
                    "batch-size-without-for-each",
                    "`batch_size` groups `for_each` items; add `for_each`",
                );
                ok = false;
            }
            if b.value == 0 {
                self.error(
                    b.pos,
                    "invalid-batch-size",
                    "`batch_size` must be at least 1",
                );
                ok = false;
            }
            if let Some(op) = &op {
                if op.def().batch_input.is_none() {
                    self.error(
                        b.pos,
                        "batch-not-supported",
                        format!("`{}` takes no list input, so it cannot be batched", op.id()),
                    );
                    ok = false;
                }
            }
        }
        let retry = s.retry.as_ref().and_then(|r| self.retry(r, op.as_ref()));
        if s.retry.is_some() && retry.is_none() {
            ok = false;
        }
        let mut fallback = Vec::new();
        for path in &s.fallback {
            match self.fallback(&s.id.value, path, scope) {
                Some(f) => fallback.push(f),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(ValidStep {
            id: s.id.value.clone(),
            op: op?,
            connection,
            condition,
            with: with?,
            retry,
            fallback,
            on_error: s
                .on_error
                .as_ref()
                .map(|o| o.value)
                .unwrap_or(OnError::Fail),
            for_each,
            batch_size: s.batch_size.as_ref().map(|b| b.value),
        })
    }

    fn fallback(
        &mut self,
        failed: &str,
        path: &FallbackPath,
        scope: &Scope,
    ) -> Option<ValidFallback> {
        let mut inner = Scope {
            in_fallback: true,
            ..scope.clone()
        };
        // Inside its fallback, the failed step's record (status, error) exists.
        inner.before.push(failed.to_string());
        let mut ok = true;
        let when = match &path.when {
            Some(w) => {
                let c = self.condition(w, &inner);
                ok &= c.is_some();
                c
            }
            None => None,
        };
        let mut steps = Vec::new();
        for s in &path.steps {
            match self.step(s, &inner) {
                Some(v) => steps.push(v),
                None => ok = false,
            }
            inner.before.push(s.id.value.clone());
        }
        ok.then_some(ValidFallback { when, steps })
    }

    fn retry(&mut self, r: &super::Retry, op: Option<&OpRef>) -> Option<RetryPolicy> {
        let defaults = op.and_then(|o| o.connector().retry.clone());
        let mut ok = true;
        let attempts = match &r.attempts {
            Some(a) if a.value == 0 || a.value > MAX_ATTEMPTS => {
                self.error(
                    a.pos,
                    "retry-out-of-range",
                    format!(
                        "`attempts` must be between 1 and {MAX_ATTEMPTS}, found {}",
                        a.value
                    ),
                );
                ok = false;
                1
            }
            Some(a) => a.value,
            None => defaults.as_ref().map(|d| d.attempts).unwrap_or(3),
        };
        let mut dur = |v: &Option<Spanned<String>>, default: Duration, this: &mut Self| match v {
            Some(s) => match parse_duration(&s.value) {
                Ok(d) if d > MAX_BACKOFF => {
                    this.error(
                        s.pos,
                        "retry-out-of-range",
                        format!("backoff `{}` is over the 1h maximum", s.value),
                    );
                    ok = false;
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    this.error(s.pos, "invalid-duration", e.to_string());
                    ok = false;
                    default
                }
            },
            None => default,
        };
        let backoff_default = defaults
            .as_ref()
            .and_then(|d| parse_duration(&d.backoff).ok())
            .unwrap_or(Duration::from_secs(1));
        let max_default = defaults
            .as_ref()
            .and_then(|d| parse_duration(&d.max_backoff).ok())
            .unwrap_or(Duration::from_secs(60));
        let backoff = dur(&r.backoff, backoff_default, self);
        let max_backoff = dur(&r.max_backoff, max_default.max(backoff), self);
        if backoff > max_backoff {
            let pos = r.backoff.as_ref().map(|b| b.pos).unwrap_or(r.pos);
            self.error(
                pos,
                "retry-out-of-range",
                "`backoff` is longer than `max_backoff`",
            );
            ok = false;
        }
        ok.then_some(RetryPolicy {
            attempts,
            backoff,
            max_backoff,
        })
    }

    /// Checks `with` against the operation's inputs.
    fn check_inputs(&mut self, op: &OpRef, s: &Step) -> bool {
        let mut ok = true;
        let def = op.def();
        if s.with.as_ref().is_some_and(|m| m.0.is_unquoted_template()) {
            // Already reported as `unquoted-template`; its inputs are unknown.
            return false;
        }
        let entries: &[(Node, Node)] = s.with.as_ref().and_then(|m| m.0.as_map()).unwrap_or(&[]);
        for (k, v) in entries {
            let name = k.key_string();
            let Some(input) = def.inputs.get(&name) else {
                let sugg = did_you_mean(&name, def.inputs.keys().map(String::as_str));
                self.error(
                    k.span.start,
                    "unknown-input",
                    format!("`{}` has no input `{name}`", op.id()),
                )
                .suggestion = sugg;
                ok = false;
                continue;
            };
            if let Some(field) = &input.from_connection {
                let msg = format!(
                    "`{name}` is filled from the connection's `{field}`; remove it from the recipe"
                );
                self.error(k.span.start, "connection-input", msg);
                ok = false;
                continue;
            }
            ok &= self.check_type(
                op,
                &name,
                input,
                v,
                s.batch_size.is_some() && def.batch_input.as_deref() == Some(&name),
            );
        }
        for (name, input) in &def.inputs {
            let mapped = entries.iter().any(|(k, _)| k.key_string() == *name);
            if input.required
                && !mapped
                && input.from_connection.is_none()
                && input.default.is_none()
            {
                let pos = s
                    .with
                    .as_ref()
                    .map(|m| m.0.span.start)
                    .unwrap_or(s.action.pos);
                self.error(
                    pos,
                    "missing-input",
                    format!("`{}` requires input `{name}`, which is not mapped", op.id()),
                );
                ok = false;
            }
        }
        ok
    }

    /// A literal (or a string template) of the wrong type for a typed input.
    fn check_type(
        &mut self,
        op: &OpRef,
        name: &str,
        input: &InputDef,
        v: &Node,
        batched: bool,
    ) -> bool {
        if input.ty == ValueType::Any || batched || v.is_unquoted_template() {
            return true;
        }
        let actual = match &v.kind {
            NodeKind::Str(s) if template::is_template(s) => match Template::compile(s) {
                Ok(Template::Native(_)) | Err(_) => return true,
                _ => Value::String(String::new()),
            },
            NodeKind::Null if input.nullable || !input.required => return true,
            _ if contains_template(v) => return true,
            _ => v.to_json(),
        };
        let fits =
            input.ty.accepts(&actual) || (input.ty == ValueType::Number && actual.is_number());
        if !fits {
            let msg = format!(
                "input `{name}` of `{}` takes {}, found {}",
                op.id(),
                input.ty.as_str(),
                v.type_name()
            );
            self.error(v.span.start, "input-type-mismatch", msg);
            return false;
        }
        if let Some(allowed) = &input.allowed {
            if !contains_template(v) && !allowed.contains(&actual) {
                let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                let msg = format!(
                    "input `{name}` of `{}` takes one of {}, found {}",
                    op.id(),
                    list.join(", "),
                    actual
                );
                self.error(v.span.start, "input-type-mismatch", msg);
                return false;
            }
        }
        true
    }

    /// Compiles a `with:` tree, checking every template in it.
    fn mapping(&mut self, m: &Mapping, scope: &Scope) -> Option<Compiled> {
        self.compile_node(&m.0, scope)
    }

    fn compile_node(&mut self, node: &Node, scope: &Scope) -> Option<Compiled> {
        match &node.kind {
            NodeKind::Str(s) if template::is_template(s) => {
                let analysis = template::analyze_template(s);
                let analysis = self.syntax(node, analysis, "template-syntax")?;
                let ok = self.check_analysis(node, &analysis, scope);
                let t = Template::compile(s).ok()?;
                ok.then_some(Compiled::Template(t))
            }
            NodeKind::Map(_) if node.is_unquoted_template() => {
                self.diags.push(
                    Diagnostic::error(
                        self.file,
                        node.span.start,
                        "unquoted-template",
                        "YAML reads an unquoted `{{ ... }}` as a mapping",
                    )
                    .suggest(Some("quote the template: \"{{ ... }}\"".into())),
                );
                None
            }
            NodeKind::Map(entries) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (k, v) in entries {
                    match self.compile_node(v, scope) {
                        Some(c) => out.push((k.key_string(), c)),
                        None => ok = false,
                    }
                }
                ok.then(|| simplify(Compiled::Map(out)))
            }
            NodeKind::Seq(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for v in items {
                    match self.compile_node(v, scope) {
                        Some(c) => out.push(c),
                        None => ok = false,
                    }
                }
                ok.then(|| simplify(Compiled::List(out)))
            }
            _ => Some(Compiled::Literal(node.to_json())),
        }
    }

    fn syntax(
        &mut self,
        node: &Node,
        r: Result<Analysis, SyntaxError>,
        code: &'static str,
    ) -> Option<Analysis> {
        match r {
            Ok(a) => Some(a),
            Err(e) => {
                self.had_syntax_error = true;
                let pos = self.index.pos_in_scalar(node, e.offset);
                let what = if code == "template-syntax" {
                    "template"
                } else {
                    "expression"
                };
                self.error(pos, code, format!("{what} syntax error: {}", e.message));
                None
            }
        }
    }

    /// Compiles an `if`/`when`/`for_each` expression and checks it.
    fn condition(&mut self, c: &Spanned<String>, scope: &Scope) -> Option<Condition> {
        let node = find_scalar(self.root, c.pos)?;
        if template::is_template(&c.value) {
            let msg = "expressions are written without `{{ }}`".to_string();
            let offset = c.value.find("{{").unwrap_or(0);
            let pos = self.index.pos_in_scalar(node, offset);
            self.error(pos, "expression-syntax", msg).suggestion = Some(format!(
                "write `{}`",
                c.value.replace("{{", "").replace("}}", "").trim()
            ));
            return None;
        }
        let analysis = self.syntax(
            node,
            template::analyze_expression(&c.value),
            "expression-syntax",
        )?;
        if !self.check_analysis(node, &analysis, scope) {
            return None;
        }
        Condition::compile(&c.value).ok()
    }

    /// Checks every variable path and filter a template uses.
    fn check_analysis(&mut self, node: &Node, a: &Analysis, scope: &Scope) -> bool {
        let mut ok = true;
        for u in &a.unknown {
            let pos = self.index.pos_in_scalar(node, u.offset);
            let (code, candidates): (&'static str, Vec<&str>) = match u.what {
                "filter" => ("unknown-filter", template::DOCUMENTED_FILTERS.to_vec()),
                "test" => (
                    "unknown-test",
                    vec![
                        "defined",
                        "undefined",
                        "none",
                        "number",
                        "string",
                        "mapping",
                        "sequence",
                        "in",
                        "eq",
                    ],
                ),
                _ => (
                    "unknown-function",
                    template::env().globals().map(|(n, _)| n).collect(),
                ),
            };
            if u.what == "method" {
                let msg = format!(
                    "method calls such as `.{}()` are not available in templates",
                    u.name
                );
                let hint = "use a filter instead, e.g. `x | lower`, `m[key] | default(...)`";
                self.error(pos, code, msg).suggestion = Some(hint.into());
            } else {
                let sugg = did_you_mean(&u.name, candidates);
                self.error(pos, code, format!("unknown {} `{}`", u.what, u.name))
                    .suggestion = sugg;
            }
            ok = false;
        }
        for r in &a.refs {
            let pos = self.index.pos_in_scalar(node, r.offset);
            ok &= self.check_ref(&r.path, pos, scope);
        }
        ok
    }

    fn check_ref(&mut self, path: &[String], pos: Pos, scope: &Scope) -> bool {
        let root = path[0].as_str();
        let second = path.get(1).map(String::as_str);
        match root {
            "event" => {
                if let (Some(payload), Some(field)) = (&self.payload, second) {
                    if !payload.iter().any(|p| p == field) {
                        let on = self
                            .recipe
                            .trigger
                            .on
                            .as_ref()
                            .map(|o| o.value.clone())
                            .unwrap_or_default();
                        let sugg = did_you_mean(field, payload.iter().map(String::as_str));
                        self.error(
                            pos,
                            "unknown-event-field",
                            format!("events of `{on}` have no field `{field}`"),
                        )
                        .suggestion = sugg;
                        return false;
                    }
                }
                true
            }
            "vars" => match second {
                Some(name) if !self.recipe.vars.contains_key(name) => {
                    let sugg = did_you_mean(name, self.recipe.vars.keys().map(String::as_str));
                    self.error(pos, "unknown-var", format!("no var `{name}` in `vars`"))
                        .suggestion = sugg;
                    false
                }
                Some(name) => {
                    self.used_vars.insert(name.to_string());
                    true
                }
                None => {
                    self.used_vars.extend(self.recipe.vars.keys().cloned());
                    true
                }
            },
            "steps" if !scope.in_run => {
                self.error(
                    pos,
                    "unknown-variable",
                    "`steps` is not available in the trigger: no step has run yet",
                );
                false
            }
            "steps" => {
                let Some(id) = second else { return true };
                if !scope.before.iter().any(|s| s == id) {
                    if let Some((_, parent)) = self.fallback_of.iter().find(|(f, _)| f == id) {
                        let msg = format!("step `{id}` runs only inside the fallback of step `{parent}`; read `steps.{parent}.output`, which the fallback's last step fills");
                        self.error(pos, "step-not-before", msg);
                    } else if self.all_steps.iter().any(|s| s == id) {
                        let msg = format!("step `{id}` does not run before this point, so `steps.{id}` is not available here");
                        self.error(pos, "step-not-before", msg);
                    } else {
                        let sugg = did_you_mean(id, self.all_steps.iter().map(String::as_str));
                        self.error(
                            pos,
                            "unknown-step",
                            format!("no step `{id}` in this recipe"),
                        )
                        .suggestion = sugg;
                    }
                    return false;
                }
                if let Some(field) = path.get(2) {
                    if !STEP_FIELDS.contains(&field.as_str()) {
                        let sugg = did_you_mean(field, STEP_FIELDS.iter().copied());
                        self.error(
                            pos,
                            "unknown-step-field",
                            format!(
                                "`steps.{id}` has no field `{field}` (it has {})",
                                STEP_FIELDS.join(", ")
                            ),
                        )
                        .suggestion = sugg;
                        return false;
                    }
                }
                true
            }
            "error" if !scope.in_fallback => {
                self.error(
                    pos,
                    "error-outside-fallback",
                    "`error` exists only inside a fallback path (its `when` and steps)",
                );
                false
            }
            "error" => match second {
                Some(f) if !ERROR_FIELDS.contains(&f) => {
                    let sugg = did_you_mean(f, ERROR_FIELDS.iter().copied());
                    self.error(
                        pos,
                        "unknown-variable",
                        format!(
                            "`error` has no field `{f}` (it has {})",
                            ERROR_FIELDS.join(", ")
                        ),
                    )
                    .suggestion = sugg;
                    false
                }
                _ => true,
            },
            "item" if !scope.in_for_each => {
                self.error(
                    pos,
                    "item-outside-for-each",
                    "`item` exists only in the `with` of a step with `for_each`",
                );
                false
            }
            "item" => true,
            "run" if !scope.in_run => {
                self.error(
                    pos,
                    "unknown-variable",
                    "`run` is not available in the trigger",
                );
                false
            }
            "run" => match second {
                Some(f) if !RUN_FIELDS.contains(&f) => {
                    let sugg = did_you_mean(f, RUN_FIELDS.iter().copied());
                    self.error(
                        pos,
                        "unknown-variable",
                        format!(
                            "`run` has no field `{f}` (it has {})",
                            RUN_FIELDS.join(", ")
                        ),
                    )
                    .suggestion = sugg;
                    false
                }
                _ => true,
            },
            other => {
                let sugg = did_you_mean(other, ROOTS.iter().copied());
                self.error(
                    pos,
                    "unknown-variable",
                    format!(
                        "unknown variable `{other}`; templates see {}",
                        ROOTS.join(", ")
                    ),
                )
                .suggestion = sugg;
                false
            }
        }
    }
}

/// Collapses a list or map without templates into one literal.
fn simplify(c: Compiled) -> Compiled {
    fn literal(c: &Compiled) -> Option<Value> {
        match c {
            Compiled::Literal(v) => Some(v.clone()),
            Compiled::Template(_) => None,
            Compiled::List(items) => items
                .iter()
                .map(literal)
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
            Compiled::Map(entries) => entries
                .iter()
                .map(|(k, v)| literal(v).map(|v| (k.clone(), v)))
                .collect::<Option<serde_json::Map<_, _>>>()
                .map(Value::Object),
        }
    }
    match literal(&c) {
        Some(v) => Compiled::Literal(v),
        None => c,
    }
}

fn contains_template(n: &Node) -> bool {
    match &n.kind {
        NodeKind::Str(s) => template::is_template(s),
        NodeKind::Seq(items) => items.iter().any(contains_template),
        NodeKind::Map(m) => m.iter().any(|(_, v)| contains_template(v)),
        _ => false,
    }
}

fn collect_ids(steps: &[Step], out: &mut Vec<String>) {
    for s in steps {
        out.push(s.id.value.clone());
        for f in &s.fallback {
            collect_ids(&f.steps, out);
        }
    }
}

fn collect_fallback_parents(steps: &[Step], out: &mut Vec<(String, String)>) {
    for s in steps {
        for f in &s.fallback {
            let mut inner = Vec::new();
            collect_ids(&f.steps, &mut inner);
            out.extend(inner.into_iter().map(|id| (id, s.id.value.clone())));
            collect_fallback_parents(&f.steps, out);
        }
    }
}

fn collect_spanned_ids<'a>(steps: &'a [Step], out: &mut Vec<&'a Spanned<String>>) {
    for s in steps {
        out.push(&s.id);
        for f in &s.fallback {
            collect_spanned_ids(&f.steps, out);
        }
    }
}

/// The scalar node starting at `pos` (expressions keep only their position).
fn find_scalar(node: &Node, pos: Pos) -> Option<&Node> {
    if node.span.start == pos && !matches!(node.kind, NodeKind::Map(_) | NodeKind::Seq(_)) {
        return Some(node);
    }
    match &node.kind {
        NodeKind::Map(m) => m.iter().find_map(|(_, v)| find_scalar(v, pos)),
        NodeKind::Seq(items) => items.iter().find_map(|v| find_scalar(v, pos)),
        _ => None,
    }
}

/// The version of a recipe: the first 12 hex digits of the SHA-256 of its
/// file, stable across processes and machines.
pub fn version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
