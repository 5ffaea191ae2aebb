//! The recipe language: the parsed model (every value with its position)
//! and the loader from YAML. A [`Recipe`] is only parsed; the engine takes
//! a [`validate::ValidRecipe`], which only [`validate::validate`] makes.

pub mod load;
mod parse;
pub mod validate;

use std::borrow::Cow;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator};

pub use parse::{parse_recipe, ParsedFile};

use crate::yaml::{Node, Pos};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Its position.
    pub pos: Pos,
}

impl<T> Spanned<T> {
    /// Wraps a value.
    pub fn new(value: T, pos: Pos) -> Self {
        Spanned { value, pos }
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A YAML subtree of templates (`with:`), kept as written with positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping(pub Node);

impl JsonSchema for Mapping {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Mapping".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "Values are literals or minijinja templates; a string that is exactly one `{{ expr }}` renders to the expression's native value."
        })
    }
}

/// A recipe as parsed: structure checked, nothing resolved yet.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields, title = "patchbay recipe")]
pub struct Recipe {
    /// Unique name of the recipe.
    pub recipe: Spanned<String>,
    /// What the recipe does.
    pub description: Option<Spanned<String>>,
    /// Constants available as `vars.<name>`.
    #[schemars(with = "Option<IndexMap<String, serde_json::Value>>")]
    pub vars: IndexMap<String, Spanned<serde_json::Value>>,
    /// What starts a run.
    pub trigger: Trigger,
    /// Steps run in order.
    pub steps: Vec<Step>,
}

/// What starts a run: a webhook event, a poll, or a schedule.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Trigger {
    /// A trigger operation of the catalog (`sendpulse.subscriber.added`);
    /// omit for a plain schedule.
    pub on: Option<Spanned<String>>,
    /// The connection events come from.
    pub connection: Option<Spanned<String>>,
    /// Filter expression; events for which it is false start no run.
    #[schemars(rename = "if")]
    pub condition: Option<Spanned<String>>,
    /// Interval of a poll or schedule (`5m`, `1h`).
    pub every: Option<Spanned<String>>,
    /// Cron expression of a schedule (`0 * * * *`).
    pub cron: Option<Spanned<String>>,
    /// Time zone of `cron`: `UTC` (default), an IANA name such as
    /// `Europe/Berlin` (daylight saving time included), or a fixed offset
    /// such as `+02:00`.
    pub timezone: Option<Spanned<String>>,
    /// Inputs of a poll trigger's list call.
    pub with: Option<Mapping>,
    /// Where the `trigger:` key's value starts.
    #[schemars(skip)]
    pub pos: Pos,
}

/// What to do when a step fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum OnError {
    /// The run fails (default).
    Fail,
    /// The run goes on; the step keeps `status: failed` and its error.
    Continue,
}

/// One step of a recipe.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Step {
    /// Unique id, referenced as `steps.<id>`.
    pub id: Spanned<String>,
    /// An action operation of the catalog (`ghl.contacts.create`).
    pub action: Spanned<String>,
    /// What the step is for.
    pub description: Option<Spanned<String>>,
    /// The connection used; optional when exactly one fits.
    pub connection: Option<Spanned<String>>,
    /// Expression; the step is skipped when it is false.
    #[schemars(rename = "if")]
    pub condition: Option<Spanned<String>>,
    /// Field mapping: the operation's inputs as templates.
    pub with: Option<Mapping>,
    /// Retry policy for retryable errors.
    pub retry: Option<Retry>,
    /// Fallback paths tried in order when the step fails after retries.
    #[schemars(default)]
    pub fallback: Vec<FallbackPath>,
    /// `fail` (default) or `continue`.
    pub on_error: Option<Spanned<OnError>>,
    /// Expression giving a list; the step runs once per item (`item`).
    pub for_each: Option<Spanned<String>>,
    /// Items per call for operations that take a list.
    pub batch_size: Option<Spanned<u32>>,
    /// Where the step's mapping starts.
    #[schemars(skip)]
    pub pos: Pos,
}

/// Retry settings of a step.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts including the first (1-20).
    pub attempts: Option<Spanned<u32>>,
    /// First backoff (`1s`).
    pub backoff: Option<Spanned<String>>,
    /// Backoff cap (`60s`, at most `1h`).
    pub max_backoff: Option<Spanned<String>>,
    /// Where `retry:` starts.
    #[schemars(skip)]
    pub pos: Pos,
}

/// One fallback path.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FallbackPath {
    /// Expression over `error`; no `when` means always.
    pub when: Option<Spanned<String>>,
    /// Steps of the path.
    pub steps: Vec<Step>,
    /// Where the path starts.
    #[schemars(skip)]
    pub pos: Pos,
}

/// The keys each mapping of a recipe may have, for unknown-key checks and
/// suggestions; the schema test keeps these and the types equal.
pub mod keys {
    /// Top level.
    pub const RECIPE: &[&str] = &["recipe", "description", "vars", "trigger", "steps"];
    /// `trigger:`.
    pub const TRIGGER: &[&str] = &[
        "on",
        "connection",
        "if",
        "every",
        "cron",
        "timezone",
        "with",
    ];
    /// A step.
    pub const STEP: &[&str] = &[
        "id",
        "action",
        "description",
        "connection",
        "if",
        "with",
        "retry",
        "fallback",
        "on_error",
        "for_each",
        "batch_size",
    ];
    /// `retry:`.
    pub const RETRY: &[&str] = &["attempts", "backoff", "max_backoff"];
    /// A fallback path.
    pub const FALLBACK: &[&str] = &["when", "steps"];
}
