//! The running engine: the active recipe set, turning trigger firings into
//! stored events and runs, the worker pool that claims and executes runs
//! with checkpoints, and the poll and schedule loops.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{watch, Semaphore};

use crate::catalog::{Catalog, OpRef};
use crate::connectors::auth::BoxFut;
use crate::connectors::Runtime;
use crate::dispatch::Dispatch;
use crate::engine::{self, event, CheckpointSink, RunReport, RunRequest, RunStatus, StepRecord};
use crate::recipe::validate::{TriggerKind, ValidRecipe};
use crate::store::{NewEvent, NewRun, Store};
use crate::template::{self, Template};

/// How long a claim lasts without a checkpoint or heartbeat, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How often the claimer looks for runs it was not told about (replays
/// from another process, expired leases).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Earlier recipe versions kept in memory for the runs bound to them; past
/// this many, a run's version is compiled again from the store.
const RETAINED_VERSIONS: usize = 256;

/// The recipes currently taking events, by name, and the earlier versions
/// that queued or running runs may still need.
#[derive(Debug, Default)]
pub struct RecipeSet {
    by_name: HashMap<String, Arc<ValidRecipe>>,
    /// Every version seen, by (recipe, version), active ones included.
    versions: std::sync::Mutex<HashMap<(String, String), Arc<ValidRecipe>>>,
}

impl RecipeSet {
    /// A set from valid recipes.
    pub fn new(recipes: Vec<ValidRecipe>) -> RecipeSet {
        RecipeSet::from_arcs(recipes.into_iter().map(Arc::new).collect(), HashMap::new())
    }

    fn from_arcs(
        recipes: Vec<Arc<ValidRecipe>>,
        mut versions: HashMap<(String, String), Arc<ValidRecipe>>,
    ) -> RecipeSet {
        if versions.len() + recipes.len() > RETAINED_VERSIONS {
            versions.clear();
        }
        for r in &recipes {
            versions.insert((r.name.clone(), r.version.clone()), r.clone());
        }
        RecipeSet {
            by_name: recipes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            versions: std::sync::Mutex::new(versions),
        }
    }

    /// The set after a reload: `recipes` take new events; the versions of
    /// this set stay reachable for the runs bound to them.
    pub fn succeed(&self, recipes: Vec<Arc<ValidRecipe>>) -> RecipeSet {
        let versions = self.versions.lock().expect("versions lock").clone();
        RecipeSet::from_arcs(recipes, versions)
    }

    /// A version of a recipe, active or earlier, if still in memory.
    pub fn version(&self, name: &str, version: &str) -> Option<Arc<ValidRecipe>> {
        let versions = self.versions.lock().expect("versions lock");
        versions
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }

    /// Keeps a version (compiled from the store) for the next runs on it.
    pub fn remember(&self, recipe: Arc<ValidRecipe>) {
        let mut versions = self.versions.lock().expect("versions lock");
        if versions.len() >= RETAINED_VERSIONS {
            versions.retain(|(name, v), _| self.by_name.get(name).is_some_and(|a| a.version == *v));
        }
        versions.insert((recipe.name.clone(), recipe.version.clone()), recipe);
    }

    /// A recipe by name.
    pub fn get(&self, name: &str) -> Option<Arc<ValidRecipe>> {
        self.by_name.get(name).cloned()
    }

    /// Every recipe.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ValidRecipe>> {
        self.by_name.values()
    }

    /// The recipes a webhook event of `op` on `connection` starts.
    pub fn for_webhook(&self, op: &str, connection: &str) -> Vec<Arc<ValidRecipe>> {
        let mut v: Vec<_> = self
            .by_name
            .values()
            .filter(|r| match &r.trigger.kind {
                TriggerKind::Webhook(o) => {
                    o.id() == op
                        && r.trigger
                            .connection
                            .as_deref()
                            .is_none_or(|c| c == connection)
                }
                _ => false,
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Everything the server, workers and schedulers share.
pub struct Service {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Connector runtime.
    pub runtime: Arc<Runtime>,
    /// The active recipes.
    pub recipes: RwLock<Arc<RecipeSet>>,
    /// Hands claimed runs to the workers.
    pub dispatch: Dispatch,
    /// Largest accepted webhook body.
    pub body_limit: usize,
    /// How long a claim lasts without a checkpoint or heartbeat: after a
    /// crash, the crashed process's runs are taken over once it expires.
    pub lease: Duration,
}

pub use crate::id::{id_prefix, new_id, EventId, RunId};

/// The end of a run that failed outside its steps (`invalid_input`): the
/// steps it completed before stay as they are.
fn failed(run: &crate::store::ClaimedRun, message: String) -> RunReport {
    RunReport {
        run_id: run.id.clone(),
        recipe: run.recipe.clone(),
        status: RunStatus::Failed,
        steps: run.done.clone(),
        failed_step: None,
        error: Some(crate::connectors::StepError::new(
            crate::catalog::ErrorKind::InvalidInput,
            message,
        )),
    }
}

impl Service {
    /// The catalog serving now (a `--catalog` reload swaps it in the runtime).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.runtime.catalog()
    }

    /// The active recipe set.
    pub fn recipes(&self) -> Arc<RecipeSet> {
        self.recipes.read().expect("recipes lock").clone()
    }

    /// Builds the stored event for one trigger firing (its payload already
    /// coerced, see [`event::coerce`]): dedupe and ordering keys, one run
    /// per recipe whose `trigger.if` holds.
    pub fn event_for(
        &self,
        op: &OpRef,
        connection: &str,
        payload: Value,
        recipes: &[Arc<ValidRecipe>],
    ) -> NewEvent {
        let event = template::to_value(&payload);
        let ctx = minijinja::context! { event => event.clone() };
        let key = |t: &Option<String>| -> Option<String> {
            let t = t.as_ref()?;
            let rendered = compiled_key(t)?.render(&ctx).ok()?;
            let s = match rendered {
                Value::String(s) => s,
                Value::Null => return None,
                other => other.to_string(),
            };
            (!s.is_empty()).then_some(s)
        };
        // `join` rather than `format!`: it sizes the string once (~1,000
        // instructions a key less, on every event).
        let dedupe_key = key(&op.def().dedupe_key).map(|k| [connection, op.id(), &k].join(":"));
        let ordering_key = key(&op.def().ordering_key).map(|k| [connection, &k].join(":"));
        let mut runs = Vec::new();
        for r in recipes {
            let ok = match &r.trigger.condition {
                None => true,
                Some(c) => {
                    let vars = template::to_value(&r.vars);
                    c.eval(&minijinja::context! { event => event.clone(), vars })
                        .unwrap_or(false)
                }
            };
            if ok {
                runs.push(NewRun {
                    id: RunId::new(),
                    recipe: r.name.clone(),
                    recipe_version: r.version.clone(),
                    ordering_key: ordering_key.clone(),
                });
            }
        }
        NewEvent {
            id: EventId::new(),
            connection: connection.to_string(),
            operation: op.id().to_string(),
            payload,
            dedupe_key,
            runs,
        }
    }

    /// Starts the worker pool (at most `n` runs at once), the claimer and
    /// the lease heartbeat; they stop taking runs when `stop` turns true,
    /// and the pool's task ends when its in-flight runs have.
    pub fn spawn_workers(
        self: &Arc<Self>,
        n: usize,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        let (s1, s2) = (stop.clone(), stop);
        // The heartbeat outlives `stop`: runs finishing in the grace period
        // keep their leases until the pool has drained.
        let (drained, pool_done) = tokio::sync::oneshot::channel::<()>();
        vec![
            tokio::spawn(async move {
                a.pool(n, s1).await;
                let _ = drained.send(());
            }),
            tokio::spawn(async move { b.claimer(s2).await }),
            tokio::spawn(async move { c.heartbeat(pool_done).await }),
        ]
    }

    async fn pool(self: Arc<Self>, n: usize, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(n.max(1)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = stop.changed() => break,
            };
            let run = tokio::select! {
                r = self.dispatch.next() => match r { Some(r) => r, None => break },
                _ = stop.changed() => break,
            };
            if *stop.borrow() {
                break;
            }
            let svc = self.clone();
            running.spawn(async move { svc.execute(run, permit).await });
            // Reap finished tasks so the set does not grow.
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    /// Claims stored runs in batches when the queue has room.
    async fn claimer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let want = self.dispatch.wanted();
            if want > 0 {
                let epoch = self.dispatch.epoch();
                match self
                    .store
                    .claim(&self.dispatch.owner, self.lease, want)
                    .await
                {
                    Ok(runs) => {
                        let full = runs.len() == want;
                        self.dispatch.claimed(runs, want, epoch);
                        if full {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claim failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.dispatch.work.notified() => {}
                _ = self.store.woken() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Keeps every lease of this process alive, executing or waiting.
    /// Also counts the engines sharing the store, so each takes its share
    /// of every connection's rate limit.
    async fn heartbeat(self: Arc<Self>, mut pool_done: tokio::sync::oneshot::Receiver<()>) {
        loop {
            match self
                .store
                .live_engines(&self.dispatch.owner, self.lease)
                .await
            {
                Ok(n) => self.runtime.share_rate_limits(n),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count the engines sharing the store")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.lease / 3) => {}
                _ = &mut pool_done => return,
            }
            if let Err(e) = self.store.heartbeat(&self.dispatch.owner, self.lease).await {
                tracing::error!(error = %e, "could not extend the leases of this process's runs");
            }
        }
    }

    async fn execute(
        &self,
        run: crate::store::ClaimedRun,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        // The version the run was queued on, even if its file changed or
        // was deleted since (src/reload/versions.rs).
        let Some(recipe) = self.recipe_for_run(&run).await else {
            drop(slot);
            let report = failed(&run, format!("recipe `{}` is no longer loaded", run.recipe));
            let _ = self.store.finish(&report).await;
            self.dispatch.ended(&run);
            return;
        };
        let sink = StoreSink {
            store: self.store.clone(),
            lease: self.lease,
        };
        let metrics = crate::metrics::global();
        let recipe_label = crate::metrics::RecipeLabels {
            recipe: run.recipe.clone(),
        };
        metrics.runs_started.get_or_create(&recipe_label).inc();
        metrics.runs_in_flight.inc();
        // Every log line of the run carries its id, recipe and version.
        let span = tracing::info_span!("run", run_id = %run.id, recipe = %run.recipe, version = %run.recipe_version);
        let running = engine::run(
            RunRequest {
                recipe: &recipe,
                event: &run.payload,
                run_id: &run.id,
                started_at: run.started_at,
                resume: &run.done,
            },
            &self.runtime,
            &sink,
        );
        let running = tracing::Instrument::instrument(running, span.clone());
        // A panic in a run is a bug of ours, not of the recipe; left alone
        // it would end the task with the run still leased to this process
        // (the heartbeat keeps the lease) until a restart. The run fails
        // instead, as a dead letter to replay once the bug is fixed.
        let report = match std::panic::AssertUnwindSafe(running).catch_unwind().await {
            Ok(report) => report,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                tracing::error!(run = %run.id, recipe = %run.recipe, panic = %what, "a run panicked; it is kept as a dead letter");
                failed(
                    &run,
                    format!("the engine failed while running this run (panic: {what}); replay it once that is fixed"),
                )
            }
        };
        let writing = std::time::Instant::now();
        if let Err(e) = self.store.finish(&report).await {
            tracing::error!(run = %run.id, error = %e, "could not record the end of a run; it will be resumed");
        }
        metrics.store_write("finish", writing.elapsed());
        metrics.runs_in_flight.dec();
        record_run_metrics(metrics, &report);
        // The place is held until the end is committed: `--workers` bounds
        // the steps in flight (sent, not yet recorded) at any moment.
        drop(slot);
        self.dispatch.ended(&run);
        match report.status {
            RunStatus::Failed => {
                tracing::warn!(run = %run.id, recipe = %run.recipe, step = ?report.failed_step, error = ?report.error.as_ref().map(|e| &e.message), "run failed")
            }
            _ => {
                tracing::debug!(run = %run.id, recipe = %run.recipe, status = ?report.status, "run finished")
            }
        }
    }

    /// Starts one loop per poll and schedule trigger.
    pub fn spawn_schedules(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.recipes()
            .all()
            .filter(|r| !matches!(r.trigger.kind, TriggerKind::Webhook(_)))
            .map(|r| self.spawn_schedule(r.clone(), stop.clone()))
            .collect()
    }

    /// Starts the loop of one poll or schedule trigger.
    pub fn spawn_schedule(
        self: &Arc<Self>,
        recipe: Arc<ValidRecipe>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        tokio::spawn(async move { svc.schedule_loop(recipe, stop).await })
    }

    async fn schedule_loop(
        self: Arc<Self>,
        recipe: Arc<ValidRecipe>,
        mut stop: watch::Receiver<bool>,
    ) {
        let cursor_name = format!("schedule:{}", recipe.name);
        loop {
            let stored = match self.store.cursor(&cursor_name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(recipe = %recipe.name, error = %e, "cannot read the schedule cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let last = stored
                .as_deref()
                .and_then(|c| c.parse::<i64>().ok())
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            let now = Utc::now();
            let mut due = next_due(&recipe, last, now);
            // Overdue (every engine was down): the missed ticks fire once,
            // as the latest of them.
            for _ in 0..10_000 {
                match next_due(&recipe, Some(due), now) {
                    next if next <= now => due = next,
                    _ => break,
                }
            }
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            // The tick is the time it was due, not when this engine woke:
            // every engine sharing the store computes the same one, and the
            // cursor moves from `stored` to it once (compare-and-set), so a
            // tick fires once per cluster.
            let tick = due.timestamp_millis().to_string();
            let fired = match &recipe.trigger.kind {
                TriggerKind::Poll { op, .. } => {
                    // The tick is taken even when the poll then fails, so a
                    // failing API is retried at the interval, not in a loop.
                    match self
                        .store
                        .ingest_with_cursor(&cursor_name, stored.as_deref(), &tick, Vec::new())
                        .await
                    {
                        Ok(_) => self.poll_once(&recipe, op).await,
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => {
                    self.fire_schedule(&recipe, &cursor_name, stored.as_deref(), due)
                        .await
                }
            };
            match fired {
                Ok(runs) => self.dispatch.stored(runs),
                Err(e) if e.starts_with("store conflict") => {
                    tracing::debug!(recipe = %recipe.name, "another engine took this tick");
                }
                Err(e) => {
                    tracing::warn!(recipe = %recipe.name, error = %e, "trigger firing failed; retrying at the next tick");
                }
            }
        }
    }

    /// Enqueues a schedule's event for the tick `due` and moves its cursor
    /// from `expected` to it, atomically; how many runs were queued.
    async fn fire_schedule(
        &self,
        recipe: &Arc<ValidRecipe>,
        cursor_name: &str,
        expected: Option<&str>,
        due: DateTime<Utc>,
    ) -> Result<usize, String> {
        let tick = due.timestamp_millis().to_string();
        let ev = NewEvent {
            id: EventId::new(),
            connection: String::new(),
            operation: "schedule".into(),
            payload: event::schedule_event(due),
            dedupe_key: Some(format!("schedule:{}:{tick}", recipe.name)),
            runs: vec![NewRun {
                id: RunId::new(),
                recipe: recipe.name.clone(),
                recipe_version: recipe.version.clone(),
                ordering_key: None,
            }],
        };
        self.store
            .ingest_with_cursor(cursor_name, expected, &tick, vec![ev])
            .await
            .map(|n| n.runs as usize)
            .map_err(|e| e.to_string())
    }

    /// One poll: records past the cursor become events; the cursor moves
    /// in the same transaction by compare-and-set, so a record is enqueued
    /// once even when several engines poll. How many runs were queued.
    pub async fn poll_once(&self, recipe: &Arc<ValidRecipe>, op: &OpRef) -> Result<usize, String> {
        let poll = op.def().poll.clone().ok_or("poll trigger without `poll`")?;
        let cursor_name = format!("poll:{}", recipe.name);
        let stored = self
            .store
            .cursor(&cursor_name)
            .await
            .map_err(|e| e.to_string())?;
        let cursor = stored.as_deref().map(PollCursor::parse);
        let list = self
            .catalog()
            .op(&format!("{}.{}", op.connector().connector, poll.operation))
            .ok_or("poll list operation missing")?;
        let mut input: serde_json::Map<String, Value> = poll.inputs.clone().into_iter().collect();
        if let Some(w) = &recipe.trigger.with {
            let ctx = template::to_value(&serde_json::json!({ "vars": recipe.vars }));
            if let Value::Object(m) = engine::render(w, &ctx).map_err(|e| e.0)? {
                input.extend(m);
            }
        }
        if let Some(c) = &cursor {
            let at = format_cursor(&c.at, poll.cursor_format.as_deref());
            let value = match &poll.cursor_value {
                Some(shape) => with_cursor(shape, &at),
                // An input declared as a number gets a number (`startAfter`
                // in epoch ms), not the digits as a string.
                None => match list.def().inputs.get(&poll.cursor_input).map(|i| i.ty) {
                    Some(
                        crate::catalog::ValueType::Integer | crate::catalog::ValueType::Number,
                    ) => serde_json::from_str::<serde_json::Number>(&at)
                        .map(Value::Number)
                        .unwrap_or(Value::String(at)),
                    _ => Value::String(at),
                },
            };
            input.insert(poll.cursor_input.clone(), value);
        }
        let out = self
            .runtime
            .call(&list, recipe.trigger.connection.as_deref(), &input, None)
            .await
            .map_err(|f| format!("{}: {}", f.error.kind.as_str(), f.error.message))?;
        let records = match out.output {
            Value::Array(items) => items,
            other => match crate::jsonpath::compile(&poll.records)
                .ok()
                .and_then(|p| p.first(&other))
            {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
        };
        let connection = recipe.trigger.connection.clone().unwrap_or_default();
        let mut next = cursor.clone().unwrap_or_default();
        let mut events = Vec::new();
        let only = [recipe.clone()];
        for rec in records {
            let Some(stamp) = rec.get(&poll.cursor_field).map(scalar_text) else {
                continue;
            };
            let id = rec.get(&poll.id_field).map(scalar_text).unwrap_or_default();
            // The API filters at its own granularity: drop what was seen.
            if cursor.as_ref().is_some_and(|c| c.seen(&stamp, &id)) {
                continue;
            }
            next.advance(&stamp, &id);
            let mut ev = self.event_for(op, &connection, event::coerce(op, rec), &only);
            ev.dedupe_key = Some(format!("poll:{}:{stamp}:{id}", recipe.name));
            events.push(ev);
        }
        if events.is_empty() {
            return Ok(0);
        }
        let stored = self
            .store
            .ingest_with_cursor(&cursor_name, stored.as_deref(), &next.to_text(), events)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stored.runs as usize)
    }
}

/// `shape` with every string `{{ cursor }}` replaced by the cursor.
fn with_cursor(shape: &Value, cursor: &str) -> Value {
    match shape {
        Value::String(s) if s.trim() == "{{ cursor }}" => Value::String(cursor.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_cursor(v, cursor)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), with_cursor(v, cursor)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A string value as it is, any other as JSON text.
fn scalar_text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// Where a poll stands: the newest stamp seen and the ids seen at that
/// stamp. Records of one second share a stamp, and one created in the
/// same second as the last poll's newest must still count as new: a
/// stamp alone (`<=`) would drop it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollCursor {
    /// The newest stamp seen.
    pub at: String,
    /// Ids of the records seen at `at`.
    pub ids: Vec<String>,
}

impl PollCursor {
    /// Reads a stored cursor; a bare stamp (stores written before ids were
    /// kept) has no ids.
    pub fn parse(text: &str) -> PollCursor {
        serde_json::from_str(text).unwrap_or_else(|_| PollCursor {
            at: text.to_string(),
            ids: Vec::new(),
        })
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("cursors serialize")
    }

    /// Whether a record with this stamp and id was seen already.
    pub fn seen(&self, stamp: &str, id: &str) -> bool {
        match compare_stamps(stamp, &self.at) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.ids.iter().any(|i| i == id),
            std::cmp::Ordering::Greater => false,
        }
    }

    /// Takes a new record into account.
    pub fn advance(&mut self, stamp: &str, id: &str) {
        match compare_stamps(stamp, &self.at) {
            _ if self.at.is_empty() => {
                self.at = stamp.to_string();
                self.ids = vec![id.to_string()];
            }
            std::cmp::Ordering::Greater => {
                self.at = stamp.to_string();
                self.ids = vec![id.to_string()];
            }
            std::cmp::Ordering::Equal => self.ids.push(id.to_string()),
            std::cmp::Ordering::Less => {}
        }
    }
}

/// Compares two cursor stamps as what they are: numbers as numbers, times
/// as instants (whatever their offset or precision), anything else as text.
pub fn compare_stamps(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.total_cmp(&y);
    }
    let time = |s: &str| crate::template::parse_time(&minijinja::Value::from(s));
    if let (Some(x), Some(y)) = (time(a), time(b)) {
        return x.cmp(&y);
    }
    a.cmp(b)
}

/// Counts a run's end and its steps.
fn record_run_metrics(m: &crate::metrics::Metrics, report: &RunReport) {
    let status = match report.status {
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Filtered => "filtered",
    };
    m.runs_ended
        .get_or_create(&crate::metrics::RunEndLabels {
            recipe: report.recipe.clone(),
            status: status.into(),
        })
        .inc();
    if report.status == RunStatus::Failed {
        m.dead_letters
            .get_or_create(&crate::metrics::RecipeLabels {
                recipe: report.recipe.clone(),
            })
            .inc();
    }
    for s in &report.steps {
        let status = match s.status {
            engine::StepStatus::Completed => "completed",
            engine::StepStatus::Failed => "failed",
            engine::StepStatus::Skipped => "skipped",
        };
        m.step_seconds
            .get_or_create(&crate::metrics::StepLabels {
                operation: s.action.clone(),
                status: status.into(),
            })
            .observe(s.duration_ms as f64 / 1000.0);
    }
}

/// A catalog key template (dedupe, ordering), compiled once per process:
/// they are few, and rendering them is on the ingest path.
fn compiled_key(source: &str) -> Option<Template> {
    static CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Option<Template>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().expect("template cache lock");
    if let Some(t) = cache.get(source) {
        return t.clone();
    }
    let t = Template::compile(source).ok();
    cache.insert(source.to_string(), t.clone());
    t
}

/// The cursor as the list call wants it (`%Y-%m-%d %H:%M` for SendPulse).
fn format_cursor(cursor: &str, format: Option<&str>) -> String {
    let Some(f) = format else {
        return cursor.to_string();
    };
    match crate::template::parse_time(&minijinja::Value::from(cursor)) {
        Some(t) => t.format(f).to_string(),
        None => cursor.to_string(),
    }
}

/// When a schedule or poll fires next. Missed ticks during downtime are
/// not replayed one by one: an overdue trigger fires once, now
/// (docs/operations.md).
pub fn next_due(
    recipe: &ValidRecipe,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let Some(last) = last else { return now };
    match &recipe.trigger.kind {
        TriggerKind::Every(d) | TriggerKind::Poll { every: d, .. } => {
            last + chrono::Duration::from_std(*d).unwrap_or_default()
        }
        TriggerKind::Cron { cron, zone, .. } => {
            next_cron(cron, zone, last).unwrap_or(now + chrono::Duration::days(365))
        }
        TriggerKind::Webhook(_) => now + chrono::Duration::days(365),
    }
}

/// The first tick of `cron`, read in `zone`, strictly after `last`.
///
/// croner resolves a repeated (fall-back) wall-clock time to its earlier
/// instant even when `last` already lies past it, in the repeated hour (a
/// late fire after downtime). That tick has passed: the walk goes on from
/// the later instant of the same wall-clock time, so a time is used once
/// and an overdue tick never fires again and again.
pub fn next_cron(
    cron: &croner::Cron,
    zone: &crate::zone::Zone,
    last: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::TimeZone as _;
    let mut from = last.with_timezone(zone);
    // A tick falls in at most one fold, so two passes find it; the third
    // only guards against a zone that folds twice.
    for _ in 0..3 {
        let next = cron.find_next_occurrence(&from, false).ok()?;
        if next.with_timezone(&Utc) > last {
            return Some(next.with_timezone(&Utc));
        }
        let later = zone.from_local_datetime(&next.naive_local()).latest()?;
        if later <= from {
            return None;
        }
        from = later;
    }
    None
}

/// Checkpoints into the store.
struct StoreSink {
    store: Arc<dyn Store>,
    lease: Duration,
}

impl CheckpointSink for StoreSink {
    fn checkpoint<'a>(
        &'a self,
        run_id: &'a str,
        records: &'a [StepRecord],
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            self.store
                .checkpoint(run_id, records, self.lease)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stamped_in_the_second_of_the_cursor_is_new_unless_its_id_was_seen() {
        let mut c = PollCursor::default();
        c.advance("2026-11-01 10:00:05", "1");
        c.advance("2026-11-01 10:00:05", "2");
        assert!(c.seen("2026-11-01 10:00:05", "1"));
        assert!(!c.seen("2026-11-01 10:00:05", "3"), "same second, new id");
        assert!(c.seen("2026-11-01 10:00:04", "9"));
        assert!(!c.seen("2026-11-01 10:00:06", "1"));
        let back = PollCursor::parse(&c.to_text());
        assert_eq!(back, c);
        // A cursor stored as a bare stamp by an older version.
        assert_eq!(PollCursor::parse("1700000000").at, "1700000000");
    }

    #[test]
    fn stamps_compare_as_numbers_and_instants_not_as_text() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_stamps("9", "10"), Less, "9 < 10, though '9' > '10'");
        assert_eq!(
            compare_stamps("2026-11-01T10:00:00+02:00", "2026-11-01T09:00:00Z"),
            Less,
            "08:00 UTC is before 09:00 UTC"
        );
        assert_eq!(
            compare_stamps("2026-11-01T09:00:00.000Z", "2026-11-01T09:00:00Z"),
            Equal
        );
    }

    #[test]
    fn the_cursor_goes_where_the_search_filter_says() {
        let shape = serde_json::json!([{"field": "dateAdded", "operator": "range", "value": {"gte": "{{ cursor }}"}}]);
        assert_eq!(
            with_cursor(&shape, "2026-12-01T10:00:00.200Z"),
            serde_json::json!([{"field": "dateAdded", "operator": "range", "value": {"gte": "2026-12-01T10:00:00.200Z"}}])
        );
    }
    use crate::zone::Zone;

    /// A transport that panics: a bug inside a run.
    struct Panics;

    impl crate::connectors::Transport for Panics {
        fn answer(
            &self,
            _: &str,
            _: &crate::connectors::request::Prepared,
        ) -> Result<crate::connectors::Reply, crate::connectors::StepError> {
            panic!("transport exploded")
        }
    }

    #[tokio::test]
    async fn a_run_that_panics_fails_as_a_dead_letter_instead_of_keeping_its_lease() {
        use crate::store::{Delivery, RunFilter, RunState};
        let catalog = Catalog::builtin();
        let text = "recipe: r\ntrigger: { on: sendpulse.subscriber.added }\nsteps:\n  - id: tag\n    action: ghl.tags.add\n    connection: ghl-main\n    with: { contactId: c1, tags: [a] }\n";
        let loaded =
            crate::recipe::load::load_texts(&[("r.yaml".into(), text.into())], &catalog, None);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let version = loaded.recipes[0].version.clone();
        let path = std::env::temp_dir().join(format!("patchbay-panic-{}.db", new_id()));
        let store = crate::store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let conns = vec![crate::connections::ResolvedConnection::from_values(
            "ghl-main",
            "ghl",
            &[("token", "pit-test", true), ("location_id", "loc-1", false)],
        )];
        let runtime = Runtime::new(catalog.clone(), conns.clone(), store.clone(), store.clone())
            .with_transport(Arc::new(Panics));
        let svc = Service {
            store: store.clone(),
            runtime: Arc::new(runtime),
            recipes: RwLock::new(Arc::new(RecipeSet::new(loaded.recipes))),
            dispatch: Dispatch::new(1, DEFAULT_LEASE, 0),
            body_limit: 1 << 20,
            lease: DEFAULT_LEASE,
        };
        let event = NewEvent {
            id: EventId::new(),
            connection: "sendpulse-main".into(),
            operation: "sendpulse.subscriber.added".into(),
            payload: serde_json::json!({"email": "a@example.com"}),
            dedupe_key: None,
            runs: vec![NewRun {
                id: RunId::new(),
                recipe: "r".into(),
                recipe_version: version,
                ordering_key: None,
            }],
        };
        let delivery = Delivery {
            connection: "sendpulse-main".into(),
            status: 202,
            outcome: "accepted".into(),
            events: 1,
            received_at: Utc::now(),
        };
        store.ingest(delivery, vec![event], None).await.unwrap();
        let run = store
            .claim(&svc.dispatch.owner, DEFAULT_LEASE, 1)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let slot = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        svc.execute(run, slot).await;

        let failed = store
            .runs(RunFilter {
                status: Some(RunState::Failed),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            failed.len(),
            1,
            "the run is a dead letter, not left running"
        );
        let error = failed[0].error.as_ref().unwrap().to_string();
        assert!(error.contains("panic: transport exploded"), "{error}");
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The next tick after `last`, as RFC 3339 in UTC.
    fn next(expr: &str, zone: &str, last: &str) -> String {
        let cron: croner::Cron = expr.parse().unwrap();
        let zone = Zone::parse(zone).unwrap();
        next_cron(&cron, &zone, at(last))
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    #[test]
    fn next_due_reads_cron_in_the_validated_zone() {
        let text = |tz: &str| {
            format!(
                "recipe: r\ntrigger:\n  cron: \"0 9 * * 1-5\"\n  timezone: {tz}\nsteps:\n  - id: s\n    action: http.request\n    with: {{ method: GET, url: https://example.com }}\n"
            )
        };
        let catalog = crate::catalog::Catalog::builtin();
        let last = at("2026-07-03T16:00:00Z"); // Friday, after 09:00 in all four
        for (tz, want) in [
            ("America/New_York", "2026-07-06T13:00:00+00:00"),
            ("Europe/Berlin", "2026-07-06T07:00:00+00:00"),
            ("UTC", "2026-07-06T09:00:00+00:00"),
            ("Etc/UTC", "2026-07-06T09:00:00+00:00"),
            ("\"+02:00\"", "2026-07-06T07:00:00+00:00"),
        ] {
            let loaded =
                crate::recipe::load::load_texts(&[("r.yaml".into(), text(tz))], &catalog, None);
            assert!(
                loaded.diagnostics.is_empty(),
                "{tz}: {:?}",
                loaded.diagnostics
            );
            let due = next_due(&loaded.recipes[0], Some(last), last);
            assert_eq!(due.to_rfc3339(), want, "{tz}");
        }
    }

    #[test]
    fn weekday_nine_in_berlin_follows_daylight_saving_time() {
        let weekdays = "0 9 * * 1-5";
        // Winter (CET, UTC+1): 09:00 is 08:00 UTC.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-03-26T08:00:00Z"),
            "2026-03-27T08:00:00Z"
        );
        // Over the weekend of 2026-03-29 (spring forward) into CEST
        // (UTC+2): Monday 09:00 is 07:00 UTC.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-03-27T08:00:00.120Z"),
            "2026-03-30T07:00:00Z"
        );
        // Over the weekend of 2026-10-25 (fall back) into CET again.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-10-23T07:00:00.080Z"),
            "2026-10-26T08:00:00Z"
        );
        // A fixed offset does not move.
        assert_eq!(
            next(weekdays, "+01:00", "2026-03-27T08:00:00Z"),
            "2026-03-30T08:00:00Z"
        );
    }

    #[test]
    fn weekday_nine_in_new_york_follows_daylight_saving_time() {
        let weekdays = "0 9 * * 1-5";
        // EST (UTC-5) -> EDT (UTC-4) on Sunday 2026-03-08.
        assert_eq!(
            next(weekdays, "America/New_York", "2026-03-06T14:00:00Z"),
            "2026-03-09T13:00:00Z"
        );
        // EDT -> EST on Sunday 2026-11-01.
        assert_eq!(
            next(weekdays, "America/New_York", "2026-10-30T13:00:00Z"),
            "2026-11-02T14:00:00Z"
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_runs_right_after_the_gap_that_day() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does
        // not exist. croner runs the job at the first valid time after the
        // gap (03:00 CEST = 01:00 UTC), the same day, once.
        let daily = "30 2 * * *";
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-03-28T01:30:00Z"),
            "2026-03-29T01:00:00Z"
        );
        // The day after is back to 02:30, now CEST (00:30 UTC).
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-03-29T01:00:00.050Z"),
            "2026-03-30T00:30:00Z"
        );
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            next(daily, "America/New_York", "2026-03-07T07:30:00Z"),
            "2026-03-08T07:00:00Z"
        );
        // Other jobs skip the times in the gap: after 01:30 CET comes
        // 03:00 CEST, 30 minutes later, and a list of hours loses 02:30.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z"),
            "2026-03-29T01:00:00Z"
        );
        assert_eq!(
            next("30 2,14 * * *", "Europe/Berlin", "2026-03-28T13:30:00Z"),
            "2026-03-29T12:30:00Z"
        );
    }

    #[test]
    fn a_time_in_the_fall_back_fold_runs_once() {
        // Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET, so 02:30
        // happens twice. The job runs at the first one (02:30 CEST =
        // 00:30 UTC) and next on the 26th, not at 02:30 CET.
        let daily = "30 2 * * *";
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-24T00:30:00Z"),
            "2026-10-25T00:30:00Z"
        );
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-25T00:30:00.200Z"),
            "2026-10-26T01:30:00Z"
        );
        // An engine that was down fires the overdue tick late, inside the
        // repeated hour (02:15 CET = 01:15 UTC): croner alone would answer
        // 02:30 CEST, in the past, and the schedule would fire in a loop
        // until 02:30 CET. The tick is skipped instead.
        let cron: croner::Cron = daily.parse().unwrap();
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let alone = cron
            .find_next_occurrence(&at("2026-10-25T01:15:00Z").with_timezone(&berlin), false)
            .unwrap();
        assert_eq!(alone.with_timezone(&Utc), at("2026-10-25T00:30:00Z"));
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-25T01:15:00Z"),
            "2026-10-26T01:30:00Z"
        );
        // New York, 2026-11-01: 02:00 EDT goes back to 01:00 EST.
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-10-31T05:30:00Z"),
            "2026-11-01T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-11-01T05:30:00.100Z"),
            "2026-11-02T06:30:00Z"
        );
        // An interval job walks the wall clock once: after 02:30 CEST
        // comes 03:00 CET, and the repeated hour's second pass has no tick.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z"),
            "2026-10-25T02:00:00Z"
        );
        // Fired late inside the second pass (02:10 CET), it goes on after
        // the repeated hour too: 02:30 was used by its first instance.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-10-25T01:10:00Z"),
            "2026-10-25T02:00:00Z"
        );
    }
}
