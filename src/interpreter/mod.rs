//! The interpreter: runs one event through one valid recipe — trigger
//! filter, then each step in order with its condition, mapping, fan-out,
//! retries and fallback paths — and reports every finished step to a
//! [`CheckpointSink`], so a durable engine can resume a run after its last
//! completed step.

pub mod event;

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::ErrorKind;
use crate::connectors::auth::BoxFut;
use crate::connectors::{Runtime, StepError};
use crate::recipe::validate::{Compiled, ValidRecipe, ValidStep};
use crate::recipe::OnError;
use crate::template::{self, RenderError};

/// What happened to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran and succeeded (possibly rescued by a fallback path).
    Completed,
    /// It failed for good.
    Failed,
    /// Its `if` was false.
    Skipped,
}

impl StepStatus {
    /// The name templates see in `steps.<id>.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// The record of one step: what went in, what came out, how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step id.
    pub id: String,
    /// Operation id.
    pub action: String,
    /// Outcome.
    pub status: StepStatus,
    /// The rendered input (null when skipped or when rendering failed).
    pub input: Value,
    /// The output (a rescued step carries its fallback's output).
    pub output: Value,
    /// The error of a failed step, or of a rescued one.
    pub error: Option<StepError>,
    /// Calls made, retries included.
    pub attempts: u32,
    /// Wall time.
    pub duration_ms: u64,
    /// Index of the fallback path that rescued it.
    pub rescued_by: Option<usize>,
    /// The step whose fallback path this step belongs to.
    pub fallback_of: Option<String>,
}

impl StepRecord {
    /// `steps.<id>` as templates see it. Built as a template value at once
    /// (a JSON object first would copy the output twice); keys in the order
    /// a JSON object had them.
    fn to_context(&self) -> minijinja::Value {
        minijinja::context! {
            attempts => self.attempts,
            duration_ms => self.duration_ms,
            error => self.error.as_ref().map(|e| template::to_value(&e.to_value())),
            output => template::to_value(&self.output),
            status => self.status.as_str(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step completed, was skipped, or failed with `on_error: continue`.
    Completed,
    /// A step failed for good.
    Failed,
    /// `trigger.if` was false: nothing ran.
    Filtered,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: crate::id::RunId,
    /// Recipe name.
    pub recipe: String,
    /// Outcome.
    pub status: RunStatus,
    /// Every step that ran, in order (fallback steps included).
    pub steps: Vec<StepRecord>,
    /// The step that failed the run.
    pub failed_step: Option<String>,
    /// Its error.
    pub error: Option<StepError>,
}

/// Receives every finished top-level step (with the fallback steps it ran)
/// before the next one starts. The step that ends a run is not sent here:
/// it is in the [`RunReport`], which the caller persists as the run's end.
pub trait CheckpointSink: Send + Sync {
    /// Persists finished steps of a run.
    fn checkpoint<'a>(
        &'a self,
        run_id: &'a str,
        records: &'a [StepRecord],
    ) -> BoxFut<'a, Result<(), String>>;
}

/// A sink that keeps nothing (`fire`, tests).
pub struct NoCheckpoints;

impl CheckpointSink for NoCheckpoints {
    fn checkpoint<'a>(&'a self, _: &'a str, _: &'a [StepRecord]) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// One run to execute.
pub struct RunRequest<'a> {
    /// The recipe version the run started on.
    pub recipe: &'a ValidRecipe,
    /// The trigger payload.
    pub event: &'a Value,
    /// Run id.
    pub run_id: &'a str,
    /// When the run started (kept across resumes).
    pub started_at: DateTime<Utc>,
    /// Records of steps completed before an interruption; those steps are
    /// not run again.
    pub resume: &'a [StepRecord],
}

/// The evaluation state of a run, kept as template values: the event and
/// vars are converted once per run, not once per step (cloning a template
/// value shares it).
struct State {
    base: BTreeMap<&'static str, minijinja::Value>,
    steps: BTreeMap<String, minijinja::Value>,
}

impl State {
    fn context(&self, extra: &[(&str, Value)]) -> minijinja::Value {
        let mut m: BTreeMap<&str, minijinja::Value> =
            self.base.iter().map(|(k, v)| (*k, v.clone())).collect();
        m.insert("steps", minijinja::Value::from(self.steps.clone()));
        for (k, v) in extra {
            m.insert(k, template::to_value(v));
        }
        minijinja::Value::from(m)
    }

    fn record(&mut self, r: &StepRecord) {
        self.steps.insert(r.id.clone(), r.to_context());
    }
}

/// Runs an event through a recipe.
pub async fn run(req: RunRequest<'_>, runtime: &Runtime, sink: &dyn CheckpointSink) -> RunReport {
    let recipe = req.recipe;
    let mut base = BTreeMap::new();
    base.insert("event", template::to_value(req.event));
    base.insert("vars", template::to_value(&recipe.vars));
    base.insert(
        "run",
        minijinja::context! {
            id => req.run_id,
            recipe => recipe.name.as_str(),
            started_at => req.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
    );
    let mut state = State {
        base,
        steps: BTreeMap::new(),
    };
    let mut report = RunReport {
        run_id: req.run_id.into(),
        recipe: recipe.name.clone(),
        status: RunStatus::Completed,
        steps: Vec::new(),
        failed_step: None,
        error: None,
    };
    if let Some(cond) = &recipe.trigger.condition {
        let ctx = state.context(&[]);
        match cond.eval(&ctx) {
            Ok(true) => {}
            Ok(false) => {
                report.status = RunStatus::Filtered;
                return report;
            }
            Err(e) => {
                report.status = RunStatus::Failed;
                report.error = Some(template_error("trigger.if", e));
                return report;
            }
        }
    }
    for r in req.resume {
        state.record(r);
        report.steps.push(r.clone());
    }
    for (i, step) in recipe.steps.iter().enumerate() {
        if req
            .resume
            .iter()
            .any(|r| r.id == step.id && r.fallback_of.is_none())
        {
            continue;
        }
        let mut records = Vec::new();
        // Every log line of the step (its requests, retries) carries it.
        let span = tracing::info_span!("step", step = %step.id);
        let rec = tracing::Instrument::instrument(
            exec_step(step, &mut state, runtime, None, &mut records),
            span,
        )
        .await;
        let failed = rec.status == StepStatus::Failed && step.on_error == OnError::Fail;
        if failed {
            report.failed_step = Some(rec.id.clone());
            report.error = rec.error.clone();
        }
        records.push(rec);
        // The step that ends the run is persisted with the run's end (one
        // write instead of two); every other step before the next starts.
        let ends_run = failed || i + 1 == recipe.steps.len();
        if !ends_run {
            if let Err(e) = sink.checkpoint(req.run_id, &records).await {
                tracing::error!(run = req.run_id, error = %e, "checkpoint failed");
            }
        }
        report.steps.extend(records);
        if failed {
            report.status = RunStatus::Failed;
            return report;
        }
    }
    report
}

fn template_error(what: &str, e: RenderError) -> StepError {
    StepError::new(ErrorKind::Template, format!("{what}: {}", e.0))
}

/// Renders a compiled mapping.
pub fn render(c: &Compiled, ctx: &minijinja::Value) -> Result<Value, RenderError> {
    Ok(match c {
        Compiled::Literal(v) => v.clone(),
        Compiled::Template(t) => t.render(ctx)?,
        Compiled::List(items) => Value::Array(
            items
                .iter()
                .map(|i| render(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Compiled::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, RenderError>>()?,
        ),
    })
}

/// Runs one step (and, if it fails, its fallback paths). Fallback steps'
/// records are pushed to `inner`.
fn exec_step<'a>(
    step: &'a ValidStep,
    state: &'a mut State,
    runtime: &'a Runtime,
    error: Option<&'a StepError>,
    inner: &'a mut Vec<StepRecord>,
) -> BoxFut<'a, StepRecord> {
    Box::pin(async move {
        let start = Instant::now();
        let mut rec = StepRecord {
            id: step.id.clone(),
            action: step.op.id().to_string(),
            status: StepStatus::Completed,
            input: Value::Null,
            output: Value::Null,
            error: None,
            attempts: 0,
            duration_ms: 0,
            rescued_by: None,
            fallback_of: None,
        };
        let error_ctx: Vec<(&str, Value)> = error
            .map(|e| vec![("error", e.to_value())])
            .unwrap_or_default();
        let ctx = state.context(&error_ctx);
        if let Some(cond) = &step.condition {
            match cond.eval(&ctx) {
                Ok(true) => {}
                Ok(false) => {
                    rec.status = StepStatus::Skipped;
                    state.record(&rec);
                    return rec;
                }
                Err(e) => {
                    rec.status = StepStatus::Failed;
                    rec.error = Some(template_error("if", e));
                }
            }
        }
        if rec.status == StepStatus::Completed {
            let result = call_step(step, &ctx, &error_ctx, state, runtime, &mut rec).await;
            match result {
                // A dry run has no responses: a mapping that reads one
                // cannot be rendered, which is not a failure of the recipe.
                Err(mut e) if runtime.is_dry_run() && e.kind == ErrorKind::Template => {
                    e.message = format!(
                        "not rendered in a dry run (it reads a response): {}",
                        e.message
                    );
                    rec.status = StepStatus::Skipped;
                    rec.error = Some(e);
                }
                Err(e) => {
                    rec.status = StepStatus::Failed;
                    rec.error = Some(e);
                }
                Ok(()) => {}
            }
        }
        if rec.status == StepStatus::Failed {
            let err = rec.error.clone().expect("failed steps carry an error");
            state.record(&rec);
            let ctx = state.context(&[("error", err.to_value())]);
            for (i, path) in step.fallback.iter().enumerate() {
                let take = match &path.when {
                    None => true,
                    Some(w) => w.eval(&ctx).unwrap_or(false),
                };
                if !take {
                    continue;
                }
                let mut last = None;
                let mut ok = true;
                for s in &path.steps {
                    let mut nested = Vec::new();
                    let mut r = exec_step(s, state, runtime, Some(&err), &mut nested).await;
                    r.fallback_of = Some(step.id.clone());
                    for n in &mut nested {
                        n.fallback_of.get_or_insert_with(|| step.id.clone());
                    }
                    inner.extend(nested);
                    let failed = r.status == StepStatus::Failed && s.on_error == OnError::Fail;
                    if r.status == StepStatus::Completed {
                        last = Some(r.output.clone());
                    }
                    inner.push(r);
                    if failed {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    rec.status = StepStatus::Completed;
                    rec.output = last.unwrap_or(Value::Null);
                    rec.rescued_by = Some(i);
                }
                // Only the first path whose `when` holds runs.
                break;
            }
        }
        rec.duration_ms = start.elapsed().as_millis() as u64;
        state.record(&rec);
        rec
    })
}

/// Renders the input and calls the operation (once, or per item/batch).
async fn call_step(
    step: &ValidStep,
    ctx: &minijinja::Value,
    extra: &[(&str, Value)],
    state: &State,
    runtime: &Runtime,
    rec: &mut StepRecord,
) -> Result<(), StepError> {
    let Some(each) = &step.for_each else {
        let input = render(&step.with, ctx).map_err(|e| template_error("with", e))?;
        rec.input = crate::connectors::outbound::redact_input(&input);
        let map = as_input_map(step, input)?;
        return match runtime
            .call(&step.op, step.connection.as_deref(), &map, step.retry)
            .await
        {
            Ok(o) => {
                rec.output = o.output;
                rec.attempts = o.attempts;
                Ok(())
            }
            Err(f) => {
                rec.attempts = f.attempts;
                Err(f.error)
            }
        };
    };
    let items = match each.value(ctx).map_err(|e| template_error("for_each", e))? {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => {
            return Err(StepError::new(
                ErrorKind::Template,
                format!("for_each: expected a list, got {}", kind_of(&other)),
            ));
        }
    };
    let batch = step.batch_size.unwrap_or(1).max(1) as usize;
    let batch_input = step.op.def().batch_input.clone();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for group in items.chunks(batch) {
        let mut merged: Option<Map<String, Value>> = None;
        for item in group {
            let mut pairs: Vec<(&str, Value)> = extra.to_vec();
            pairs.push(("item", item.clone()));
            let item_ctx = state.context(&pairs);
            let input = render(&step.with, &item_ctx).map_err(|e| template_error("with", e))?;
            let map = as_input_map(step, input)?;
            merged = Some(match (merged, &batch_input, step.batch_size) {
                (Some(mut acc), Some(list), Some(_)) => {
                    let add = map.get(list).cloned().unwrap_or(Value::Null);
                    let entry = acc.entry(list.clone()).or_insert(Value::Array(Vec::new()));
                    if let Value::Array(a) = entry {
                        match add {
                            Value::Array(more) => a.extend(more),
                            Value::Null => {}
                            v => a.push(v),
                        }
                    }
                    acc
                }
                (None, Some(list), Some(_)) => {
                    let mut m = map;
                    if let Some(v) = m.get_mut(list) {
                        if !v.is_array() {
                            *v = Value::Array(vec![v.take()]);
                        }
                    }
                    m
                }
                (_, _, _) => map,
            });
        }
        let Some(map) = merged else { continue };
        inputs.push(crate::connectors::outbound::redact_input(&Value::Object(
            map.clone(),
        )));
        match runtime
            .call(&step.op, step.connection.as_deref(), &map, step.retry)
            .await
        {
            Ok(o) => {
                rec.attempts += o.attempts;
                outputs.push(o.output);
            }
            Err(f) => {
                rec.attempts += f.attempts;
                rec.input = Value::Array(inputs);
                rec.output = Value::Array(outputs);
                return Err(f.error);
            }
        }
    }
    rec.input = Value::Array(inputs);
    rec.output = Value::Array(outputs);
    Ok(())
}

fn as_input_map(step: &ValidStep, input: Value) -> Result<Map<String, Value>, StepError> {
    match input {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(StepError::new(
            ErrorKind::InvalidInput,
            format!(
                "{}: `with` must render to a mapping, got {}",
                step.op.id(),
                kind_of(&other)
            ),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Template;
    use serde_json::json;

    #[test]
    fn a_step_reads_in_templates_as_the_json_object_of_its_record_keys_in_order() {
        let error = StepError::new(ErrorKind::Conflict, "exists".to_string());
        let rec = StepRecord {
            id: "contact".into(),
            action: "ghl.contacts.create".into(),
            status: StepStatus::Failed,
            input: json!({"email": "a@b.c"}),
            output: json!({"id": "c1", "tags": ["a"]}),
            error: Some(error.clone()),
            attempts: 2,
            duration_ms: 7,
            rescued_by: None,
            fallback_of: None,
        };
        let ctx = minijinja::context! { s => rec.to_context() };
        let text = Template::compile("{{ s | tojson }}")
            .unwrap()
            .render(&ctx)
            .unwrap();
        let expected = json!({
            "attempts": 2,
            "duration_ms": 7,
            "error": error.to_value(),
            "output": {"id": "c1", "tags": ["a"]},
            "status": "failed",
        });
        // `tojson` spaces its separators; no value here has a space.
        let compact = text.as_str().unwrap().replace(' ', "");
        assert_eq!(compact, expected.to_string());
        let id = Template::compile("{{ s.output.id }}").unwrap();
        assert_eq!(id.render(&ctx).unwrap(), json!("c1"));
    }
}
