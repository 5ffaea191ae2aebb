//! YAML tree -> [`Recipe`], reporting every structural problem (unknown,
//! missing and mistyped keys) rather than stopping at the first.

use indexmap::IndexMap;

use super::{keys, FallbackPath, Mapping, OnError, Recipe, Retry, Spanned, Step, Trigger};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::yaml::{self, LineIndex, Node, NodeKind, Pos};

/// A recipe file read from disk: its source, line index, tree and the
/// recipe if its structure was sound.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// The file name as given.
    pub file: String,
    /// Maps offsets inside scalars to positions.
    pub index: LineIndex,
    /// The YAML tree (for positions of template strings).
    pub root: Option<Node>,
    /// The recipe, when the structure allowed building one. Steps that
    /// could not be read are left out of it, so the rest still gets checked.
    pub recipe: Option<Recipe>,
    /// No structural error: only then can the recipe become valid.
    pub complete: bool,
    /// Ids of steps that could not be read, so references to them are not
    /// reported as unknown.
    pub broken_step_ids: Vec<String>,
}

/// Parses a recipe file. Structural problems go to `diags`; the recipe is
/// returned when the required parts could be read, so that later checks can
/// still report their problems in the same run.
pub fn parse_recipe(file: &str, text: &str, diags: &mut Vec<Diagnostic>) -> ParsedFile {
    let index = LineIndex::new(text);
    let (root, dups) = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            diags.push(Diagnostic::error(file, e.pos, e.code, e.message));
            return ParsedFile {
                file: file.into(),
                index,
                root: None,
                recipe: None,
                complete: false,
                broken_step_ids: Vec::new(),
            };
        }
    };
    for d in dups {
        diags.push(Diagnostic::error(file, d.pos, d.code, d.message));
    }
    let before = diags.len();
    let mut p = Parser {
        file,
        diags,
        broken_step_ids: Vec::new(),
    };
    let recipe = p.recipe(&root);
    let broken_step_ids = std::mem::take(&mut p.broken_step_ids);
    ParsedFile {
        file: file.into(),
        index,
        root: Some(root),
        recipe,
        complete: diags.len() == before,
        broken_step_ids,
    }
}

struct Parser<'a> {
    file: &'a str,
    diags: &'a mut Vec<Diagnostic>,
    broken_step_ids: Vec<String>,
}

/// The keys of one mapping, with the ones read so far marked.
struct Fields<'n> {
    entries: &'n [(Node, Node)],
    pos: Pos,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

impl Parser<'_> {
    fn error(&mut self, pos: Pos, code: &'static str, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, pos, code, msg));
    }

    /// Opens a mapping and reports keys outside `known`.
    fn fields<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Option<Fields<'n>> {
        let Some(entries) = node.as_map() else {
            self.wrong_type(node, &format!("{what} must be a mapping"));
            return None;
        };
        for (k, _) in entries {
            let name = k.key_string();
            if !known.contains(&name.as_str()) {
                let d = Diagnostic::error(
                    self.file,
                    k.span.start,
                    "unknown-key",
                    format!("unknown key `{name}` in {what}"),
                )
                .suggest(did_you_mean(&name, known.iter().copied()));
                self.diags.push(d);
            }
        }
        Some(Fields {
            entries,
            pos: node.span.start,
        })
    }

    fn wrong_type(&mut self, node: &Node, expected: &str) {
        if node.is_unquoted_template() {
            self.diags.push(
                Diagnostic::error(
                    self.file,
                    node.span.start,
                    "unquoted-template",
                    "YAML reads an unquoted `{{ ... }}` as a mapping",
                )
                .suggest(Some("quote the template: \"{{ ... }}\"".into())),
            );
            return;
        }
        self.error(
            node.span.start,
            "wrong-type",
            format!("{expected}, found {}", node.type_name()),
        );
    }

    fn missing(&mut self, f: &Fields<'_>, key: &str, what: &str) {
        self.error(f.pos, "missing-key", format!("{what} needs `{key}`"));
    }

    fn string(&mut self, f: &Fields<'_>, key: &str) -> Option<Spanned<String>> {
        let node = f.get(key)?;
        match &node.kind {
            NodeKind::Str(s) => Some(Spanned::new(s.clone(), node.span.start)),
            _ => {
                self.wrong_type(node, &format!("`{key}` must be a string"));
                None
            }
        }
    }

    /// Expressions and durations: strings, but a plain number or boolean
    /// is accepted as its text (`if: true`).
    fn text(&mut self, f: &Fields<'_>, key: &str) -> Option<Spanned<String>> {
        let node = f.get(key)?;
        match &node.kind {
            NodeKind::Str(s) => Some(Spanned::new(s.clone(), node.span.start)),
            NodeKind::Bool(_) | NodeKind::Int(_) | NodeKind::Float(_) => {
                Some(Spanned::new(node.key_string(), node.span.start))
            }
            _ => {
                self.wrong_type(node, &format!("`{key}` must be a string"));
                None
            }
        }
    }

    fn uint(&mut self, f: &Fields<'_>, key: &str) -> Option<Spanned<u32>> {
        let node = f.get(key)?;
        match node.kind {
            NodeKind::Int(i) if (0..=u32::MAX as i64).contains(&i) => {
                Some(Spanned::new(i as u32, node.span.start))
            }
            _ => {
                self.wrong_type(node, &format!("`{key}` must be a whole number"));
                None
            }
        }
    }

    fn recipe(&mut self, root: &Node) -> Option<Recipe> {
        if matches!(root.kind, NodeKind::Null) {
            self.error(
                Pos::new(1, 1),
                "missing-key",
                "the file is empty: a recipe needs `recipe`, `trigger` and `steps`",
            );
            return None;
        }
        let f = self.fields(root, "the recipe", keys::RECIPE)?;
        let name = self.string(&f, "recipe");
        if f.get("recipe").is_none() {
            self.missing(&f, "recipe", "a recipe");
        }
        let description = self.string(&f, "description");
        let mut vars = IndexMap::new();
        if let Some(v) = f.get("vars") {
            match v.as_map() {
                Some(entries) => {
                    for (k, val) in entries {
                        vars.insert(k.key_string(), Spanned::new(val.to_json(), k.span.start));
                    }
                }
                None if matches!(v.kind, NodeKind::Null) => {}
                None => self.wrong_type(v, "`vars` must be a mapping"),
            }
        }
        let trigger = match f.get("trigger") {
            Some(t) => self.trigger(t),
            None => {
                self.missing(&f, "trigger", "a recipe");
                None
            }
        };
        let steps = match f.get("steps") {
            Some(s) => self.steps(s, "`steps`"),
            None => {
                self.missing(&f, "steps", "a recipe");
                None
            }
        };
        if let Some(node) = f.get("steps") {
            if matches!(&node.kind, NodeKind::Seq(items) if items.is_empty()) {
                self.error(
                    node.span.start,
                    "empty-steps",
                    "a recipe needs at least one step",
                );
            }
        }
        Some(Recipe {
            recipe: name?,
            description,
            vars,
            trigger: trigger?,
            steps: steps?,
        })
    }

    fn trigger(&mut self, node: &Node) -> Option<Trigger> {
        let f = self.fields(node, "`trigger`", keys::TRIGGER)?;
        let t = Trigger {
            on: self.string(&f, "on"),
            connection: self.string(&f, "connection"),
            condition: self.text(&f, "if"),
            every: self.text(&f, "every"),
            cron: self.string(&f, "cron"),
            timezone: self.string(&f, "timezone"),
            with: self.mapping(&f, "with"),
            pos: node.span.start,
        };
        if f.get("on").is_none() && f.get("every").is_none() && f.get("cron").is_none() {
            self.error(
                f.pos,
                "missing-key",
                "`trigger` needs `on` (an event or poll), or `every`/`cron` (a schedule)",
            );
            return None;
        }
        Some(t)
    }

    fn mapping(&mut self, f: &Fields<'_>, key: &str) -> Option<Mapping> {
        let node = f.get(key)?;
        match node.kind {
            // An unquoted `{{ }}` is reported by the validator with the templates.
            NodeKind::Map(_) => Some(Mapping(node.clone())),
            NodeKind::Null => None,
            _ => {
                self.wrong_type(
                    node,
                    &format!("`{key}` must be a mapping of input names to values"),
                );
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, what: &str) -> Option<Vec<Step>> {
        let NodeKind::Seq(items) = &node.kind else {
            self.wrong_type(node, &format!("{what} must be a list of steps"));
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match self.step(item) {
                Some(s) => out.push(s),
                None => {
                    if let Some(id) = item.get("id").and_then(Node::as_str) {
                        self.broken_step_ids.push(id.to_string());
                    }
                }
            }
        }
        Some(out)
    }

    fn step(&mut self, node: &Node) -> Option<Step> {
        let f = self.fields(node, "a step", keys::STEP)?;
        let id = self.string(&f, "id");
        if f.get("id").is_none() {
            self.missing(&f, "id", "a step");
        }
        let action = self.string(&f, "action");
        if f.get("action").is_none() {
            self.missing(&f, "action", "a step");
        }
        let on_error = f.get("on_error").and_then(|n| match n.as_str() {
            Some("fail") => Some(Spanned::new(OnError::Fail, n.span.start)),
            Some("continue") => Some(Spanned::new(OnError::Continue, n.span.start)),
            _ => {
                let text = n.key_string();
                self.diags.push(
                    Diagnostic::error(
                        self.file,
                        n.span.start,
                        "wrong-type",
                        format!("`on_error` must be `fail` or `continue`, found `{text}`"),
                    )
                    .suggest(did_you_mean(&text, ["fail", "continue"])),
                );
                None
            }
        });
        let retry = f.get("retry").and_then(|r| self.retry(r));
        let mut fallback = Vec::new();
        let mut fallback_ok = true;
        if let Some(fb) = f.get("fallback") {
            match &fb.kind {
                NodeKind::Seq(paths) => {
                    for p in paths {
                        match self.fallback(p) {
                            Some(p) => fallback.push(p),
                            None => fallback_ok = false,
                        }
                    }
                }
                _ => {
                    self.wrong_type(
                        fb,
                        "`fallback` must be a list of paths (`- when: ... steps: [...]`)",
                    );
                    fallback_ok = false;
                }
            }
        }
        let step = Step {
            id: id?,
            action: action?,
            description: self.string(&f, "description"),
            connection: self.string(&f, "connection"),
            condition: self.text(&f, "if"),
            with: self.mapping(&f, "with"),
            retry,
            fallback,
            on_error,
            for_each: self.text(&f, "for_each"),
            batch_size: self.uint(&f, "batch_size"),
            pos: node.span.start,
        };
        fallback_ok.then_some(step)
    }

    fn retry(&mut self, node: &Node) -> Option<Retry> {
        let f = self.fields(node, "`retry`", keys::RETRY)?;
        Some(Retry {
            attempts: self.uint(&f, "attempts"),
            backoff: self.text(&f, "backoff"),
            max_backoff: self.text(&f, "max_backoff"),
            pos: node.span.start,
        })
    }

    fn fallback(&mut self, node: &Node) -> Option<FallbackPath> {
        let f = self.fields(node, "a fallback path", keys::FALLBACK)?;
        let when = self.text(&f, "when");
        let steps = match f.get("steps") {
            Some(s) => {
                let steps = self.steps(s, "fallback `steps`")?;
                if matches!(&s.kind, NodeKind::Seq(items) if items.is_empty()) {
                    self.error(
                        s.span.start,
                        "empty-steps",
                        "a fallback path needs at least one step",
                    );
                }
                steps
            }
            None => {
                self.missing(&f, "steps", "a fallback path");
                return None;
            }
        };
        Some(FallbackPath {
            when,
            steps,
            pos: node.span.start,
        })
    }
}
