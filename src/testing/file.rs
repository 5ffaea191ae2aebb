//! Recipe test files (`NAME.test.yaml`): the typed model (which also
//! generates `schemas/recipe-test.schema.json`), reading it from the spanned
//! YAML tree with `file:line:col` diagnostics, and the checks against the
//! recipe under test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::catalog::{Catalog, ErrorKind};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::recipe::load::load_paths;
use crate::recipe::validate::{ValidRecipe, ValidStep};
use crate::template::Template;
use crate::yaml::{self, Node, NodeKind, Pos};

/// Diagnostic codes only test files produce (the structural ones are
/// shared with recipes); the validation corpus has a case for each.
pub const CODES: &[&str] = &[
    "test-recipe-missing",
    "test-recipe-invalid",
    "duplicate-case",
    "response-not-callable",
    "invalid-response",
    "event-file",
    "invalid-time",
    "invalid-expectation",
];

/// The clock of a case that sets no `now`.
pub const DEFAULT_NOW: &str = "2026-01-01T00:00:00Z";

/// A recipe test file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "patchbay recipe test")]
pub struct TestFile {
    /// The recipe file, relative to this file; default `NAME.yaml` for `NAME.test.yaml`.
    pub recipe: Option<String>,
    /// Field values of the test connections, per connection name (default `test-FIELD`).
    #[serde(default)]
    #[schemars(with = "Option<IndexMap<String, IndexMap<String, Scalar>>>")]
    pub connections: IndexMap<String, IndexMap<String, Value>>,
    /// The cases.
    #[schemars(length(min = 1))]
    pub cases: Vec<Case>,
}

/// A string, number or boolean (used as its text).
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Scalar {
    /// Text.
    Str(String),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
}

/// One answer or a sequence of answers.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum OneOrMany {
    /// One answer, for one call (it is not repeated).
    One(Response),
    /// Consumed in order, one per attempt; the last is not repeated.
    Many(Vec<Response>),
}

/// One test case.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique name within the file.
    pub name: String,
    /// The trigger payload: a webhook's raw delivery, a poll's page of records, or a schedule's event.
    #[serde(default, deserialize_with = "present")]
    pub event: Option<Value>,
    /// Instead of `event`: a JSON or YAML file, relative to the test file.
    pub event_file: Option<String>,
    /// Overrides of recipe `vars`.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// The run's clock, RFC 3339.
    pub now: Option<String>,
    /// Links present before the run.
    #[serde(default)]
    pub store: Vec<Link>,
    /// Canned answers per operation id: one answer or a list consumed in order.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, OneOrMany>")]
    pub responses: IndexMap<String, Value>,
    /// What must have happened.
    #[serde(default)]
    pub expect: Expect,
}

/// A link in the store.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Namespace; default `links`.
    pub namespace: Option<String>,
    /// A string or number (numbers are stored as their text).
    #[schemars(with = "Scalar")]
    pub key: Value,
    /// Any JSON value.
    pub value: Value,
}

/// A canned answer.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// HTTP status; default 200.
    pub status: Option<u16>,
    /// Body: JSON, or a string sent as it is.
    pub body: Option<Value>,
    /// Response headers (`Retry-After`).
    #[serde(default)]
    #[schemars(with = "IndexMap<String, Scalar>")]
    pub headers: IndexMap<String, Value>,
    /// A transport failure instead of an answer.
    pub error: Option<TransportFailure>,
}

/// A canned transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransportFailure {
    /// The request timed out (kind `timeout`).
    Timeout,
    /// The connection was reset (kind `network`).
    Reset,
}

/// How a case's runs must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every run completed.
    Completed,
    /// A run failed.
    Failed,
    /// Nothing ran (`trigger.if` false, or no event for this recipe).
    Skipped,
}

impl Outcome {
    /// The name in test files.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Expectations of a case; what is left out is not checked.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The requests sent, in order, every attempt.
    pub requests: Option<Vec<ExpectedRequest>>,
    /// How the run ended.
    pub outcome: Option<Outcome>,
    /// With `outcome: failed`, the error kind.
    pub error: Option<ErrorKind>,
    /// With `outcome: failed`, the step that failed the run.
    pub failed_step: Option<String>,
    /// Steps that must have been skipped.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Step outputs per step id (subset match).
    #[serde(default)]
    pub outputs: IndexMap<String, Value>,
    /// Links the run wrote to `store` (each must be among the writes).
    pub links: Option<Vec<ExpectedLink>>,
}

/// One expected request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    /// Operation id.
    pub operation: String,
    /// HTTP method.
    pub method: Option<String>,
    /// A substring of the URL (without the query).
    pub path: Option<String>,
    /// Subset match of the JSON body.
    #[serde(default, deserialize_with = "present")]
    pub body: Option<Value>,
    /// Exact match of the JSON body (`null`: no body).
    #[serde(default, deserialize_with = "present")]
    pub body_exact: Option<Value>,
    /// Subset match of the query parameters.
    #[schemars(with = "Option<IndexMap<String, Scalar>>")]
    pub query: Option<Map<String, Value>>,
    /// Exact match of the query parameters.
    #[schemars(with = "Option<IndexMap<String, Scalar>>")]
    pub query_exact: Option<Map<String, Value>>,
}

/// An expected store write.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedLink {
    /// Namespace; default `links`.
    pub namespace: Option<String>,
    /// The key.
    #[schemars(with = "Scalar")]
    pub key: Value,
    /// Subset match of the value written.
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
    /// `true`: the key was deleted.
    pub deleted: Option<bool>,
}

/// `Some(null)` for an explicit `null`, `None` when the key is absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The top level as read before each case (so every case reports its own
/// problems).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    recipe: Option<String>,
    #[serde(default)]
    connections: IndexMap<String, IndexMap<String, Value>>,
    cases: Vec<Value>,
}

/// A case ready to run.
#[derive(Debug, Clone)]
pub struct ReadyCase {
    /// The case as written.
    pub case: Case,
    /// The trigger payload (from `event` or `event_file`), if any.
    pub event: Option<Value>,
    /// The clock.
    pub now: DateTime<Utc>,
    /// Canned answers per operation.
    pub responses: IndexMap<String, Vec<Response>>,
    /// Index in the file's `cases`.
    pub index: usize,
}

/// A test file read and checked.
#[derive(Debug)]
pub struct LoadedTest {
    /// The test file as given.
    pub file: String,
    /// Its text (for `--update`).
    pub text: String,
    /// The YAML tree (for `--update`).
    pub root: Option<Node>,
    /// The recipe under test, when it is valid.
    pub recipe: Option<ValidRecipe>,
    /// Connection value overrides.
    pub connections: IndexMap<String, IndexMap<String, Value>>,
    /// Cases without errors.
    pub cases: Vec<ReadyCase>,
    /// Problems (of the test file, and of its recipe when `with_recipe_diags`).
    pub diagnostics: Vec<Diagnostic>,
}

/// Whether a path names a test file.
pub fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".test.yaml") || name.ends_with(".test.yml")) && !name.starts_with('.')
}

/// Expands files and folders into test files, sorted; a recipe file
/// stands for its `NAME.test.yaml` when there is one.
pub fn collect_test_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            crate::recipe::load::walk(p, is_test_file, &mut out)?;
        } else if is_test_file(p) {
            out.push(p.clone());
        } else if let Some(t) = test_file_of(p) {
            out.push(t);
        }
    }
    // A file met twice (a folder and a file in it) runs once, in first-seen order.
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// `NAME.test.yaml` next to a recipe `NAME.yaml`, if it exists.
fn test_file_of(recipe: &Path) -> Option<PathBuf> {
    let name = recipe.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))?;
    ["test.yaml", "test.yml"]
        .iter()
        .map(|ext| recipe.with_file_name(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

/// The recipe file a test file names, or its default.
fn recipe_path(test_file: &Path, named: Option<&str>) -> PathBuf {
    let dir = test_file.parent().unwrap_or(Path::new(""));
    if let Some(n) = named {
        return dir.join(n);
    }
    let name = test_file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name
        .strip_suffix(".test.yaml")
        .or_else(|| name.strip_suffix(".test.yml"))
        .unwrap_or(name);
    let yaml = dir.join(format!("{stem}.yaml"));
    if yaml.exists() {
        return yaml;
    }
    let yml = dir.join(format!("{stem}.yml"));
    if yml.exists() {
        yml
    } else {
        yaml
    }
}

/// Reads and checks a test file. `with_recipe_diags` adds the recipe's own
/// diagnostics when it is invalid (`patchbay test`; `validate` reports
/// them from the recipe itself).
pub fn load(path: &Path, catalog: &Catalog, with_recipe_diags: bool) -> LoadedTest {
    let file = path.display().to_string();
    let text = match crate::safefile::read_text(path) {
        Ok(t) => t,
        Err(e) => {
            let mut t = empty(file.clone(), String::new());
            t.diagnostics.push(Diagnostic::error(
                &file,
                Pos::new(1, 1),
                "yaml-syntax",
                format!("cannot read the file: {e}"),
            ));
            return t;
        }
    };
    load_text(path, text, catalog, with_recipe_diags)
}

fn empty(file: String, text: String) -> LoadedTest {
    LoadedTest {
        file,
        text,
        root: None,
        recipe: None,
        connections: IndexMap::new(),
        cases: Vec::new(),
        diagnostics: Vec::new(),
    }
}

/// [`load`] for a text already read.
pub fn load_text(
    path: &Path,
    text: String,
    catalog: &Catalog,
    with_recipe_diags: bool,
) -> LoadedTest {
    let file = path.display().to_string();
    let mut t = empty(file.clone(), text);
    let (root, dups) = match yaml::parse(&t.text) {
        Ok(r) => r,
        Err(e) => {
            t.diagnostics
                .push(Diagnostic::error(&file, e.pos, e.code, e.message));
            return t;
        }
    };
    for d in dups {
        t.diagnostics
            .push(Diagnostic::error(&file, d.pos, d.code, d.message));
    }
    let mut cx = Checker {
        file: &file,
        root: &root,
        diags: &mut t.diagnostics,
    };
    let raw: Option<RawFile> = cx.deserialize(root.to_json(), "", "the test file");
    let Some(raw) = raw else {
        t.root = Some(root);
        return t;
    };
    if raw.cases.is_empty() {
        cx.error("/cases", "missing-key", "`cases` needs at least one case");
    }
    // The recipe under test.
    let rpath = recipe_path(path, raw.recipe.as_deref());
    let recipe = if !rpath.is_file() {
        let at = if raw.recipe.is_some() { "/recipe" } else { "" };
        cx.error(
            at,
            "test-recipe-missing",
            format!("the recipe {} does not exist", rpath.display()),
        );
        None
    } else {
        match load_paths(std::slice::from_ref(&rpath), catalog, None) {
            Ok(l) if l.errors() == 0 && l.recipes.len() == 1 => l.recipes.into_iter().next(),
            Ok(l) => {
                let at = if raw.recipe.is_some() { "/recipe" } else { "" };
                cx.error(
                    at,
                    "test-recipe-invalid",
                    format!(
                        "the recipe {} is not valid ({} error{}); run `patchbay validate` on it",
                        rpath.display(),
                        l.errors(),
                        if l.errors() == 1 { "" } else { "s" }
                    ),
                );
                if with_recipe_diags {
                    cx.diags.extend(l.diagnostics);
                }
                None
            }
            Err(e) => {
                cx.error("", "test-recipe-missing", e.to_string());
                None
            }
        }
    };
    let callable = recipe.as_ref().map(callable_ops);
    let step_ids = recipe.as_ref().map(step_ids);
    let mut names: Vec<String> = Vec::new();
    for (i, v) in raw.cases.into_iter().enumerate() {
        let base = format!("/cases/{i}");
        let Some(case) = cx.deserialize::<Case>(v, &base, "a case") else {
            continue;
        };
        let before = cx.diags.len();
        if names.contains(&case.name) {
            cx.error(
                &format!("{base}/name"),
                "duplicate-case",
                format!("a case named `{}` is already in this file", case.name),
            );
        }
        names.push(case.name.clone());
        let ready = cx.check_case(path, &base, case, i, callable.as_ref(), step_ids.as_ref());
        if cx.diags.len() == before {
            if let Some(r) = ready {
                t.cases.push(r);
            }
        }
    }
    t.connections = raw.connections;
    t.recipe = recipe;
    t.root = Some(root);
    t
}

/// Every operation a recipe's steps (fallback steps included) can call.
pub fn callable_ops(recipe: &ValidRecipe) -> BTreeSet<String> {
    fn add(steps: &[ValidStep], out: &mut BTreeSet<String>) {
        for s in steps {
            out.insert(s.op.id().to_string());
            for f in &s.fallback {
                add(&f.steps, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    add(&recipe.steps, &mut out);
    out
}

fn step_ids(recipe: &ValidRecipe) -> BTreeSet<String> {
    fn add(steps: &[ValidStep], out: &mut BTreeSet<String>) {
        for s in steps {
            out.insert(s.id.clone());
            for f in &s.fallback {
                add(&f.steps, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    add(&recipe.steps, &mut out);
    out
}

struct Checker<'a> {
    file: &'a str,
    root: &'a Node,
    diags: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    /// The position of the node at a pointer, or of its nearest ancestor.
    fn pos(&self, pointer: &str) -> Pos {
        let mut p = pointer.to_string();
        loop {
            if let Some(n) = self.root.at_pointer(&p) {
                return n.span.start;
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return self.root.span.start,
            }
        }
    }

    /// The position of the key at a pointer (for unknown keys).
    fn key_pos(&self, pointer: &str) -> Pos {
        self.root
            .key_at_pointer(pointer)
            .map(|k| k.span.start)
            .unwrap_or_else(|| self.pos(pointer))
    }

    fn error(&mut self, pointer: &str, code: &'static str, msg: impl Into<String>) {
        let pos = self.pos(pointer);
        self.diags
            .push(Diagnostic::error(self.file, pos, code, msg));
    }

    /// Deserializes a value at `base`, reporting the first problem at its
    /// position with the shared structural codes.
    fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        v: Value,
        base: &str,
        what: &str,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut pointer = base.to_string();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            pointer.push_str(&format!("/{index}"))
                        }
                        serde_path_to_error::Segment::Map { key } => pointer
                            .push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1"))),
                        _ => {}
                    }
                }
                let msg = e.inner().to_string();
                let d = if let Some(rest) = msg.strip_prefix("unknown field `") {
                    let name = rest.split('`').next().unwrap_or("");
                    let known: Vec<&str> = rest
                        .split("expected ")
                        .nth(1)
                        .map(|l| l.split('`').skip(1).step_by(2).collect())
                        .unwrap_or_default();
                    let ptr = if pointer.ends_with(&format!("/{name}")) {
                        pointer.clone()
                    } else {
                        format!("{pointer}/{name}")
                    };
                    Diagnostic::error(
                        self.file,
                        self.key_pos(&ptr),
                        "unknown-key",
                        format!("unknown key `{name}` in {what}"),
                    )
                    .suggest(did_you_mean(name, known))
                } else if let Some(rest) = msg.strip_prefix("missing field `") {
                    let name = rest.split('`').next().unwrap_or("");
                    Diagnostic::error(
                        self.file,
                        self.pos(&pointer),
                        "missing-key",
                        format!("missing key `{name}` in {what}"),
                    )
                } else {
                    let node = self.root.at_pointer(&pointer);
                    if node.is_some_and(Node::is_unquoted_template) {
                        Diagnostic::error(
                            self.file,
                            self.pos(&pointer),
                            "unquoted-template",
                            "YAML reads an unquoted `{{ ... }}` as a mapping",
                        )
                        .suggest(Some("quote the template: \"{{ ... }}\"".into()))
                    } else {
                        let found = node.map(|n| n.type_name()).unwrap_or("something else");
                        let at = pointer.rsplit('/').next().unwrap_or("");
                        Diagnostic::error(
                            self.file,
                            self.pos(&pointer),
                            "wrong-type",
                            format!("`{at}`: {msg} (found {found})"),
                        )
                    }
                };
                self.diags.push(d);
                None
            }
        }
    }

    fn check_case(
        &mut self,
        test_path: &Path,
        base: &str,
        case: Case,
        index: usize,
        callable: Option<&BTreeSet<String>>,
        steps: Option<&BTreeSet<String>>,
    ) -> Option<ReadyCase> {
        // The event.
        let event = match (&case.event, &case.event_file) {
            (Some(_), Some(_)) => {
                self.error(
                    &format!("{base}/event_file"),
                    "event-file",
                    "give `event` or `event_file`, not both",
                );
                None
            }
            (Some(e), None) => Some(e.clone()),
            (None, Some(f)) => {
                let p = test_path.parent().unwrap_or(Path::new("")).join(f);
                match read_event_file(&p) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.error(&format!("{base}/event_file"), "event-file", e);
                        None
                    }
                }
            }
            (None, None) => None,
        };
        // The clock.
        let now = match &case.now {
            None => DEFAULT_NOW.parse().expect("default clock parses"),
            Some(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => t.with_timezone(&Utc),
                Err(e) => {
                    self.error(
                        &format!("{base}/now"),
                        "invalid-time",
                        format!("`now` must be an RFC 3339 time like 2026-03-01T10:00:00Z: {e}"),
                    );
                    DEFAULT_NOW.parse().expect("default clock parses")
                }
            },
        };
        // Canned answers.
        let mut responses = IndexMap::new();
        for (op, v) in &case.responses {
            let ptr = format!("{base}/responses/{op}");
            if let Some(c) = callable {
                if op.starts_with("store.") {
                    let pos = self.key_pos(&ptr);
                    self.diags.push(Diagnostic::error(
                        self.file,
                        pos,
                        "response-not-callable",
                        format!("`{op}` runs in the test's in-memory store and takes no canned response; seed it with `store:`"),
                    ));
                } else if !c.contains(op) {
                    let pos = self.key_pos(&ptr);
                    let list: Vec<&str> = c
                        .iter()
                        .map(String::as_str)
                        .filter(|o| !o.starts_with("store."))
                        .collect();
                    self.diags.push(
                        Diagnostic::error(
                            self.file,
                            pos,
                            "response-not-callable",
                            format!(
                                "the recipe never calls `{op}` (it calls {})",
                                if list.is_empty() {
                                    "nothing".into()
                                } else {
                                    list.join(", ")
                                }
                            ),
                        )
                        .suggest(did_you_mean(op, list.iter().copied())),
                    );
                }
            }
            let (items, many) = match v {
                Value::Array(items) => (items.clone(), true),
                other => (vec![other.clone()], false),
            };
            let mut list = Vec::new();
            for (j, item) in items.into_iter().enumerate() {
                let p = if many {
                    format!("{ptr}/{j}")
                } else {
                    ptr.clone()
                };
                let Some(r) = self.deserialize::<Response>(item, &p, "a canned response") else {
                    continue;
                };
                if r.error.is_some() && (r.status.is_some() || r.body.is_some()) {
                    self.error(
                        &p,
                        "invalid-response",
                        "a response with `error` has no `status` or `body`",
                    );
                }
                if let Some(s) = r.status {
                    if !(100..=599).contains(&s) {
                        self.error(
                            &format!("{p}/status"),
                            "invalid-response",
                            format!("status {s} is not an HTTP status (100-599)"),
                        );
                    }
                }
                list.push(r);
            }
            if many && list.is_empty() {
                self.error(&ptr, "invalid-response", "an empty list of responses");
            }
            responses.insert(op.clone(), list);
        }
        self.check_expect(base, &case.expect, callable, steps);
        Some(ReadyCase {
            case,
            event,
            now,
            responses,
            index,
        })
    }

    fn check_expect(
        &mut self,
        base: &str,
        e: &Expect,
        callable: Option<&BTreeSet<String>>,
        steps: Option<&BTreeSet<String>>,
    ) {
        let base = format!("{base}/expect");
        if e.error.is_some() && e.outcome != Some(Outcome::Failed) {
            self.error(
                &format!("{base}/error"),
                "invalid-expectation",
                "`error` needs `outcome: failed`",
            );
        }
        if e.failed_step.is_some() && e.outcome != Some(Outcome::Failed) {
            self.error(
                &format!("{base}/failed_step"),
                "invalid-expectation",
                "`failed_step` needs `outcome: failed`",
            );
        }
        if let Some(ids) = steps {
            let check = |this: &mut Self, ptr: String, id: &str| {
                if !ids.contains(id) {
                    this.diags.push(
                        Diagnostic::error(
                            this.file,
                            this.pos(&ptr),
                            "invalid-expectation",
                            format!("the recipe has no step `{id}`"),
                        )
                        .suggest(did_you_mean(id, ids.iter().map(String::as_str))),
                    );
                }
            };
            if let Some(f) = &e.failed_step {
                check(self, format!("{base}/failed_step"), f);
            }
            for (i, s) in e.skipped.iter().enumerate() {
                check(self, format!("{base}/skipped/{i}"), s);
            }
            let keys: Vec<String> = e.outputs.keys().cloned().collect();
            for k in keys {
                let ptr = format!("{base}/outputs/{k}");
                if !ids.contains(&k) {
                    let pos = self.key_pos(&ptr);
                    self.diags.push(
                        Diagnostic::error(
                            self.file,
                            pos,
                            "invalid-expectation",
                            format!("the recipe has no step `{k}`"),
                        )
                        .suggest(did_you_mean(&k, ids.iter().map(String::as_str))),
                    );
                }
            }
        }
        for (i, r) in e.requests.iter().flatten().enumerate() {
            let ptr = format!("{base}/requests/{i}");
            if let Some(c) = callable {
                if !c.contains(&r.operation) {
                    self.diags.push(
                        Diagnostic::error(
                            self.file,
                            self.pos(&format!("{ptr}/operation")),
                            "invalid-expectation",
                            format!("the recipe never calls `{}`", r.operation),
                        )
                        .suggest(did_you_mean(&r.operation, c.iter().map(String::as_str))),
                    );
                }
            }
            if r.body.is_some() && r.body_exact.is_some() {
                self.error(
                    &format!("{ptr}/body_exact"),
                    "invalid-expectation",
                    "give `body` (subset) or `body_exact`, not both",
                );
            }
            if r.query.is_some() && r.query_exact.is_some() {
                self.error(
                    &format!("{ptr}/query_exact"),
                    "invalid-expectation",
                    "give `query` (subset) or `query_exact`, not both",
                );
            }
        }
        // Templates in expectations compile.
        if let Some(n) = self.root.at_pointer(&base) {
            let mut bad = Vec::new();
            templates(n, &mut bad);
            for (pos, msg) in bad {
                self.diags
                    .push(Diagnostic::error(self.file, pos, "template-syntax", msg));
            }
        }
    }
}

/// Template strings under a node that do not compile.
fn templates(n: &Node, out: &mut Vec<(Pos, String)>) {
    match &n.kind {
        NodeKind::Str(s) if crate::template::is_template(s) => {
            if let Err(e) = Template::compile(s) {
                out.push((
                    n.span.start,
                    format!("template does not compile: {}", e.message),
                ));
            }
        }
        NodeKind::Seq(items) => items.iter().for_each(|i| templates(i, out)),
        NodeKind::Map(m) => m.iter().for_each(|(_, v)| templates(v, out)),
        _ => {}
    }
}

/// An event file: JSON, or YAML.
pub fn read_event_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(json_err) => match yaml::parse(&text) {
            Ok((node, _)) => Ok(node.to_json()),
            Err(_) => Err(format!(
                "{}: not JSON ({json_err}) nor YAML",
                path.display()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const RECIPE: &str = r#"recipe: r
trigger:
  on: sendpulse.subscriber.added
steps:
  - id: contact
    action: ghl.contacts.upsert
    with: { email: "{{ event.email }}" }
"#;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("patchbay-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn codes(t: &LoadedTest) -> Vec<String> {
        t.diagnostics
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.column, d.code))
            .collect()
    }

    #[test]
    fn a_sound_file_reads_into_ready_cases() {
        let d = tmp("sound");
        write(&d, "r.yaml", RECIPE);
        let p = write(
            &d,
            "r.test.yaml",
            "cases:\n  - name: a\n    event: [{email: a@b.c}]\n    responses:\n      ghl.contacts.upsert:\n        - { status: 429, headers: { Retry-After: 2 } }\n        - { body: { contact: { id: c1 } } }\n    expect:\n      outcome: completed\n",
        );
        let t = load(&p, &Catalog::builtin(), true);
        assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
        assert_eq!(t.cases.len(), 1);
        assert_eq!(t.cases[0].responses["ghl.contacts.upsert"].len(), 2);
        assert_eq!(t.cases[0].now.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }

    #[test]
    fn problems_point_at_their_line_and_column() {
        let d = tmp("problems");
        write(&d, "r.yaml", RECIPE);
        let p = write(
            &d,
            "r.test.yaml",
            "cases:\n  - name: a\n    evnt: {}\n  - name: b\n    responses:\n      ghl.tasks.create: { status: 200 }\n  - name: b\n    now: yesterday\n    expect:\n      outcome: done\n",
        );
        let t = load(&p, &Catalog::builtin(), true);
        assert_eq!(
            codes(&t),
            vec![
                "3:5 unknown-key",
                "6:7 response-not-callable",
                "10:16 wrong-type"
            ],
            "{:?}",
            t.diagnostics
        );
        assert_eq!(
            t.diagnostics[0].suggestion.as_deref(),
            Some("did you mean 'event'?")
        );
    }

    #[test]
    fn a_missing_recipe_is_reported() {
        let d = tmp("missing");
        let p = write(&d, "x.test.yaml", "cases:\n  - name: a\n");
        let t = load(&p, &Catalog::builtin(), true);
        assert_eq!(codes(&t), vec!["1:1 test-recipe-missing"]);
    }
}
