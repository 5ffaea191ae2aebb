//! Running one case: the event split as the engine splits it, each event
//! through the real interpreter and connector runtime over canned answers,
//! then every expectation checked into a list of mismatches.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::canned::{scalar_text, Canned, LinkWrite, Recorded, TestStore};
use super::file::{ExpectedRequest, LoadedTest, Outcome, ReadyCase};
use super::matcher::{exact, line_diff, pretty, project, short, subset, Difference};
use crate::catalog::Catalog;
use crate::connections::ResolvedConnection;
use crate::connectors::Runtime;
use crate::interpreter::{self, NoCheckpoints, RunRequest, RunStatus, StepRecord, StepStatus};
use crate::recipe::validate::{TriggerKind, ValidRecipe, ValidStep};
use crate::template::{self, Template};

/// One way a case did not go as expected.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Stable kind (`missing_request`, `request_differs`, ...).
    pub kind: &'static str,
    /// What differs, on one line.
    pub message: String,
    /// The expected value, where a diff helps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    /// The actual value (cut to the expected keys for subset matches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
}

impl Mismatch {
    fn new(kind: &'static str, message: String) -> Mismatch {
        Mismatch {
            kind,
            message,
            expected: None,
            actual: None,
        }
    }

    fn with(mut self, expected: Value, actual: Value) -> Mismatch {
        self.expected = Some(expected);
        self.actual = Some(actual);
        self
    }

    /// The expected-vs-actual diff, when the mismatch has values.
    pub fn diff(&self, colour: bool) -> Option<String> {
        match (&self.expected, &self.actual) {
            (Some(e), Some(a)) => Some(line_diff(&pretty(e), &pretty(a), colour)),
            _ => None,
        }
    }
}

/// What happened in one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Case name.
    pub case: String,
    /// Index in the file's `cases`.
    #[serde(skip)]
    pub index: usize,
    /// Empty when the case passed.
    pub mismatches: Vec<Mismatch>,
    /// The requests sent, every attempt.
    pub requests: Vec<Recorded>,
    /// How the runs ended.
    pub outcome: &'static str,
    /// Whether `expect.requests` was given and matched (for `--update`).
    #[serde(skip)]
    pub requests_match: bool,
}

/// The runtime of one test file, reused by its cases.
pub struct FileRunner {
    recipe: ValidRecipe,
    runtime: Runtime,
    canned: Arc<Canned>,
    store: Arc<TestStore>,
}

impl FileRunner {
    /// A runner for a loaded test file whose recipe is valid.
    pub fn new(t: &LoadedTest, catalog: &Catalog) -> Option<FileRunner> {
        let recipe = t.recipe.clone()?;
        let conns = test_connections(&recipe, t, catalog);
        let canned = Arc::new(Canned::default());
        let store = Arc::new(TestStore::default());
        let runtime = Runtime::new(catalog.clone(), conns, store.clone(), store.clone())
            .with_transport(canned.clone());
        Some(FileRunner {
            recipe,
            runtime,
            canned,
            store,
        })
    }

    /// Runs a case and checks its expectations.
    pub async fn run_case(&self, c: &ReadyCase) -> CaseResult {
        self.canned.reset(&c.responses);
        let seed: Vec<(String, String, Value)> = c
            .case
            .store
            .iter()
            .map(|l| {
                (
                    l.namespace.clone().unwrap_or_else(|| "links".into()),
                    scalar_text(&l.key),
                    l.value.clone(),
                )
            })
            .collect();
        self.store.reset(&seed);
        let overridden;
        let recipe = if c.case.vars.is_empty() {
            &self.recipe
        } else {
            let mut r = self.recipe.clone();
            if let Value::Object(m) = &mut r.vars {
                m.extend(c.case.vars.clone());
            } else {
                r.vars = Value::Object(c.case.vars.clone());
            }
            overridden = r;
            &overridden
        };
        let mut mismatches = Vec::new();
        let events = match events_of(&self.runtime.catalog(), recipe, c) {
            Ok(e) => e,
            Err(msg) => {
                mismatches.push(Mismatch::new("event", msg));
                Vec::new()
            }
        };
        let mut steps: Vec<StepRecord> = Vec::new();
        let mut statuses = Vec::new();
        let mut failure: Option<(Option<String>, Option<crate::connectors::StepError>)> = None;
        for (n, ev) in events.iter().enumerate() {
            let run_id = format!("test-{}-{n}", c.index);
            let report = interpreter::run(
                RunRequest {
                    recipe,
                    event: ev,
                    run_id: &run_id,
                    started_at: c.now,
                    resume: &[],
                },
                &self.runtime,
                &NoCheckpoints,
            )
            .await;
            if report.status == RunStatus::Failed && failure.is_none() {
                failure = Some((report.failed_step.clone(), report.error.clone()));
            }
            statuses.push(report.status);
            steps.extend(report.steps);
        }
        let outcome = if statuses.contains(&RunStatus::Failed) {
            Outcome::Failed
        } else if statuses.contains(&RunStatus::Completed) {
            Outcome::Completed
        } else {
            Outcome::Skipped
        };
        let requests = self.canned.log();
        let writes = self.store.writes();
        let ctx = expectation_context(recipe, events.first(), c, &steps);
        for msg in self.canned.unanswered() {
            mismatches.push(Mismatch::new("unanswered_call", msg));
        }
        let e = &c.case.expect;
        let mut requests_match = false;
        if let Some(expected) = &e.requests {
            let before = mismatches.len();
            check_requests(expected, &requests, &ctx, &mut mismatches);
            requests_match = mismatches.len() == before;
        }
        if let Some(want) = e.outcome {
            if want != outcome {
                let why = match &failure {
                    Some((step, Some(err))) => format!(
                        " (step {}: {}: {})",
                        step.as_deref().unwrap_or("?"),
                        err.kind.as_str(),
                        err.message
                    ),
                    _ => String::new(),
                };
                mismatches.push(Mismatch::new(
                    "outcome",
                    format!(
                        "outcome: expected {}, got {}{why}",
                        want.as_str(),
                        outcome.as_str()
                    ),
                ));
            }
        }
        if let (Some(want), Some((_, Some(err)))) = (e.error, &failure) {
            if want != err.kind {
                mismatches.push(Mismatch::new(
                    "error_kind",
                    format!(
                        "error: expected {}, got {}: {}",
                        want.as_str(),
                        err.kind.as_str(),
                        err.message
                    ),
                ));
            }
        }
        if let (Some(want), Some((got, _))) = (&e.failed_step, &failure) {
            if Some(want) != got.as_ref() {
                mismatches.push(Mismatch::new(
                    "failed_step",
                    format!(
                        "failed step: expected {want}, got {}",
                        got.as_deref().unwrap_or("none")
                    ),
                ));
            }
        }
        let record = |id: &str| steps.iter().rev().find(|s| s.id == id);
        for id in &e.skipped {
            let got = record(id)
                .map(|r| r.status.as_str())
                .unwrap_or("not reached");
            if record(id).is_none_or(|r| r.status != StepStatus::Skipped) {
                mismatches.push(Mismatch::new(
                    "not_skipped",
                    format!("step {id}: expected skipped, got {got}"),
                ));
            }
        }
        for (id, want) in &e.outputs {
            let want = match render(want, &ctx) {
                Ok(v) => v,
                Err(m) => {
                    mismatches.push(Mismatch::new("template", format!("outputs.{id}: {m}")));
                    continue;
                }
            };
            let Some(r) = record(id) else {
                mismatches.push(Mismatch::new(
                    "output_differs",
                    format!("outputs.{id}: the step did not run"),
                ));
                continue;
            };
            if let Some(d) = subset(&want, &r.output) {
                mismatches.push(
                    Mismatch::new("output_differs", format!("outputs.{id} {}", describe(&d)))
                        .with(want.clone(), project(&want, &r.output)),
                );
            }
        }
        if let Some(links) = &e.links {
            check_links(links, &writes, &ctx, &mut mismatches);
        }
        for (op, n) in self.canned.unused(&c.responses) {
            mismatches.push(Mismatch::new(
                "unused_response",
                format!("canned response for {op} #{n} was never used"),
            ));
        }
        CaseResult {
            case: c.case.name.clone(),
            index: c.index,
            mismatches,
            requests,
            outcome: outcome.as_str(),
            requests_match,
        }
    }
}

/// `at /x: what` (or just `what` at the root).
fn describe(d: &Difference) -> String {
    if d.path.is_empty() {
        format!("differs: {}", d.what)
    } else {
        format!("differs at {}: {}", d.path, d.what)
    }
}

/// The connections a test run has: every one the recipe names, and one per
/// connector it uses unnamed; every declared field `test-FIELD`, then the
/// file's overrides.
fn test_connections(
    recipe: &ValidRecipe,
    t: &LoadedTest,
    catalog: &Catalog,
) -> Vec<ResolvedConnection> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    let mut add = |name: Option<&String>, connector: &str, builtin: bool| {
        let name = match name {
            Some(n) => n.clone(),
            None if builtin => return,
            None => {
                if wanted.iter().any(|(_, c)| c == connector) {
                    return;
                }
                format!("{connector}-test")
            }
        };
        if !wanted.iter().any(|(n, _)| *n == name) {
            wanted.push((name, connector.to_string()));
        }
    };
    fn walk(steps: &[ValidStep], f: &mut dyn FnMut(Option<&String>, &str, bool)) {
        for s in steps {
            f(
                s.connection.as_ref(),
                &s.op.connector().connector,
                s.op.connector().builtin,
            );
            for p in &s.fallback {
                walk(&p.steps, f);
            }
        }
    }
    // Named connections first, so unnamed steps of the same connector use them.
    let mut named = Vec::new();
    fn named_walk(steps: &[ValidStep], out: &mut Vec<(String, String)>) {
        for s in steps {
            if let Some(n) = &s.connection {
                out.push((n.clone(), s.op.connector().connector.clone()));
            }
            for p in &s.fallback {
                named_walk(&p.steps, out);
            }
        }
    }
    named_walk(&recipe.steps, &mut named);
    if let (Some(n), TriggerKind::Webhook(op) | TriggerKind::Poll { op, .. }) =
        (&recipe.trigger.connection, &recipe.trigger.kind)
    {
        named.push((n.clone(), op.connector().connector.clone()));
    }
    for (n, c) in &named {
        add(Some(n), c, false);
    }
    walk(&recipe.steps, &mut add);
    wanted
        .into_iter()
        .filter_map(|(name, connector)| {
            let def = catalog.connector(&connector)?;
            let overrides = t.connections.get(&name);
            let mut fields: Vec<(String, String, bool)> = def
                .connection
                .iter()
                .map(|(f, spec)| (f.clone(), format!("test-{f}"), spec.secret))
                .collect();
            if let Some(o) = overrides {
                for (k, v) in o {
                    let v = scalar_text(v);
                    match fields.iter_mut().find(|(f, _, _)| f == k) {
                        Some(slot) => slot.1 = v,
                        None => fields.push((k.clone(), v, false)),
                    }
                }
            }
            let refs: Vec<(&str, &str, bool)> = fields
                .iter()
                .map(|(k, v, s)| (k.as_str(), v.as_str(), *s))
                .collect();
            Some(ResolvedConnection::from_values(&name, &connector, &refs))
        })
        .collect()
}

/// The events a case's payload becomes, as the engine would make them.
fn events_of(catalog: &Catalog, recipe: &ValidRecipe, c: &ReadyCase) -> Result<Vec<Value>, String> {
    crate::engine::triggers::fixture_events(
        catalog,
        &recipe.trigger.kind,
        c.event.clone(),
        crate::engine::triggers::Shape::Delivery,
        c.now,
    )
    .map_err(|e| e.to_string())
}

/// What templates in expectations see.
fn expectation_context(
    recipe: &ValidRecipe,
    event: Option<&Value>,
    c: &ReadyCase,
    steps: &[StepRecord],
) -> minijinja::Value {
    let now = c.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut s = Map::new();
    for r in steps {
        s.insert(
            r.id.clone(),
            serde_json::json!({"output": r.output, "status": r.status.as_str()}),
        );
    }
    template::to_value(&serde_json::json!({
        "event": event.cloned().unwrap_or(Value::Null),
        "vars": recipe.vars,
        "now": now,
        "run": {
            "started_at": c.now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "recipe": recipe.name,
        },
        "steps": s,
    }))
}

/// Renders every template string inside an expected value.
fn render(v: &Value, ctx: &minijinja::Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if crate::template::is_template(s) => Template::compile(s)
            .map_err(|e| format!("template {s:?} does not compile: {}", e.message))?
            .render(ctx)
            .map_err(|e| format!("template {s:?} does not render: {e}"))?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Query values are sent as text: expected scalars compare as text.
fn query_text(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Array(a) => {
                            Value::Array(a.iter().map(|x| Value::String(scalar_text(x))).collect())
                        }
                        other => Value::String(scalar_text(&other)),
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

fn check_requests(
    expected: &[ExpectedRequest],
    actual: &[Recorded],
    ctx: &minijinja::Value,
    out: &mut Vec<Mismatch>,
) {
    let e_ops: Vec<&str> = expected.iter().map(|r| r.operation.as_str()).collect();
    let a_ops: Vec<&str> = actual.iter().map(|r| r.operation.as_str()).collect();
    let common = expected.len().min(actual.len());
    for i in 0..common {
        let n = i + 1;
        if e_ops[i] != a_ops[i] {
            let mut e_sorted = e_ops.clone();
            let mut a_sorted = a_ops.clone();
            e_sorted.sort_unstable();
            a_sorted.sort_unstable();
            let m = if e_sorted == a_sorted {
                Mismatch::new(
                    "wrong_order",
                    format!(
                        "request #{n}: expected {}, got {} (the same requests were sent in another order)",
                        e_ops[i], a_ops[i]
                    ),
                )
            } else if actual.len() > expected.len() && a_ops[i + 1..].starts_with(&e_ops[i..]) {
                Mismatch::new(
                    "extra_request",
                    format!("request #{n} ({}) was sent but not expected", a_ops[i]),
                )
            } else if expected.len() > actual.len() && e_ops[i + 1..].starts_with(&a_ops[i..]) {
                Mismatch::new(
                    "missing_request",
                    format!(
                        "request #{n} ({}) was expected but not sent; {} came next",
                        e_ops[i], a_ops[i]
                    ),
                )
            } else {
                Mismatch::new(
                    "request_differs",
                    format!(
                        "request #{n}: expected operation {}, got {}",
                        e_ops[i], a_ops[i]
                    ),
                )
            };
            out.push(m.with(
                Value::Array(e_ops.iter().map(|s| Value::from(*s)).collect()),
                Value::Array(a_ops.iter().map(|s| Value::from(*s)).collect()),
            ));
            // Past a misalignment, position-by-position comparison says nothing.
            return;
        }
        if let Some(m) = check_request(n, &expected[i], &actual[i], ctx) {
            out.push(m);
        }
    }
    for (i, e) in expected.iter().enumerate().skip(common) {
        out.push(Mismatch::new(
            "missing_request",
            format!(
                "request #{} ({}) was expected but not sent (only {} request{} sent)",
                i + 1,
                e.operation,
                actual.len(),
                if actual.len() == 1 { " was" } else { "s were" }
            ),
        ));
    }
    for (i, a) in actual.iter().enumerate().skip(common) {
        let body = a
            .body
            .as_ref()
            .map(|b| format!(" {}", short(b)))
            .unwrap_or_default();
        out.push(Mismatch::new(
            "extra_request",
            format!(
                "request #{} ({}) was sent but not expected: {} {}{body}",
                i + 1,
                a.operation,
                a.method,
                a.url
            ),
        ));
    }
}

fn check_request(
    n: usize,
    e: &ExpectedRequest,
    a: &Recorded,
    ctx: &minijinja::Value,
) -> Option<Mismatch> {
    let head = format!("request #{n} ({})", a.operation);
    let rendered = |v: &Value| render(v, ctx);
    if let Some(m) = &e.method {
        if !m.eq_ignore_ascii_case(&a.method) {
            return Some(Mismatch::new(
                "request_differs",
                format!("{head}: method: expected {m}, got {}", a.method),
            ));
        }
    }
    if let Some(p) = &e.path {
        let p = match rendered(&Value::String(p.clone())) {
            Ok(v) => scalar_text(&v),
            Err(m) => return Some(Mismatch::new("template", format!("{head}: path: {m}"))),
        };
        if !a.url.contains(&p) {
            return Some(Mismatch::new(
                "request_differs",
                format!("{head}: URL {} does not contain {p:?}", a.url),
            ));
        }
    }
    let body = a.body.clone().unwrap_or(Value::Null);
    for (want, exact_match) in [(&e.body, false), (&e.body_exact, true)] {
        let Some(want) = want else { continue };
        let want = match rendered(want) {
            Ok(v) => v,
            Err(m) => return Some(Mismatch::new("template", format!("{head}: body: {m}"))),
        };
        let d = if exact_match {
            exact(&want, &body)
        } else {
            subset(&want, &body)
        };
        if let Some(d) = d {
            let shown = if exact_match {
                body.clone()
            } else {
                project(&want, &body)
            };
            return Some(
                Mismatch::new("request_differs", format!("{head}: body {}", describe(&d)))
                    .with(want, shown),
            );
        }
    }
    let query = Value::Object(a.query.clone());
    for (want, exact_match) in [(&e.query, false), (&e.query_exact, true)] {
        let Some(want) = want else { continue };
        let want = match rendered(&Value::Object(want.clone())) {
            Ok(v) => query_text(v),
            Err(m) => return Some(Mismatch::new("template", format!("{head}: query: {m}"))),
        };
        let d = if exact_match {
            exact(&want, &query)
        } else {
            subset(&want, &query)
        };
        if let Some(d) = d {
            let shown = if exact_match {
                query.clone()
            } else {
                project(&want, &query)
            };
            return Some(
                Mismatch::new("request_differs", format!("{head}: query {}", describe(&d)))
                    .with(want, shown),
            );
        }
    }
    None
}

fn check_links(
    links: &[super::file::ExpectedLink],
    writes: &[LinkWrite],
    ctx: &minijinja::Value,
    out: &mut Vec<Mismatch>,
) {
    for l in links {
        let ns = l.namespace.clone().unwrap_or_else(|| "links".into());
        let key = match render(&l.key, ctx) {
            Ok(k) => scalar_text(&k),
            Err(m) => {
                out.push(Mismatch::new("template", format!("links: key: {m}")));
                continue;
            }
        };
        let want = match l.value.as_ref().map(|v| render(v, ctx)).transpose() {
            Ok(v) => v,
            Err(m) => {
                out.push(Mismatch::new("template", format!("links: value: {m}")));
                continue;
            }
        };
        let deleted = l.deleted.unwrap_or(false);
        let same_key: Vec<&LinkWrite> = writes
            .iter()
            .filter(|w| w.namespace == ns && w.key == key && w.deleted == deleted)
            .collect();
        let found = same_key
            .iter()
            .any(|w| want.as_ref().is_none_or(|v| subset(v, &w.value).is_none()));
        if found {
            continue;
        }
        let what = if deleted { "deleted" } else { "written" };
        match (same_key.last(), &want) {
            (Some(w), Some(v)) => {
                let d = subset(v, &w.value).expect("not found means a difference");
                out.push(
                    Mismatch::new(
                        "missing_link",
                        format!(
                            "link {ns}/{key} was written with another value: {}",
                            describe(&d)
                        ),
                    )
                    .with(v.clone(), project(v, &w.value)),
                );
            }
            _ => {
                let all: Vec<String> = writes
                    .iter()
                    .map(|w| {
                        if w.deleted {
                            format!("delete {}/{}", w.namespace, w.key)
                        } else {
                            format!("{}/{} = {}", w.namespace, w.key, short(&w.value))
                        }
                    })
                    .collect();
                out.push(Mismatch::new(
                    "missing_link",
                    format!(
                        "link {ns}/{key} was not {what} (the run wrote: {})",
                        if all.is_empty() {
                            "nothing".into()
                        } else {
                            all.join(", ")
                        }
                    ),
                ));
            }
        }
    }
}
