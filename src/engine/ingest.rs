//! A trigger firing as the stored event and runs it starts.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::catalog::OpRef;
use crate::engine::Service;
use crate::id::{EventId, RunId};
use crate::recipe::validate::ValidRecipe;
use crate::store::{Delivery, Ingested, NewEvent, NewRun, StoreError};
use crate::template::{self, Template};

impl Service {
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

impl Service {
    /// Stores a delivery with its events, then hands the runs claimed for
    /// this process to its workers. Over the backlog limit it first waits
    /// for the workers (src/dispatch.rs): nothing is stored yet, so a
    /// sender that gives up meanwhile loses nothing it was told was
    /// accepted.
    pub async fn accept(
        self: &Arc<Self>,
        delivery: Delivery,
        events: Vec<NewEvent>,
    ) -> Result<Ingested, StoreError> {
        if !events.is_empty() {
            self.dispatch.admit().await;
        }
        // In a task of its own: if the sender hangs up, the request's
        // future is dropped, but runs claimed for this process must still
        // reach a worker (and the reservation be settled).
        let svc = self.clone();
        let stored = tokio::spawn(async move {
            let reserved = svc
                .dispatch
                .reserve(events.iter().map(|e| e.runs.len()).sum());
            let writing = std::time::Instant::now();
            let result = svc.store.ingest(delivery, events, reserved.clone()).await;
            crate::metrics::global().store_write("ingest", writing.elapsed());
            match result {
                Ok(mut n) => {
                    let claimed = std::mem::take(&mut n.claimed);
                    svc.dispatch.settle(reserved.as_ref(), claimed, n.runs);
                    Ok(n)
                }
                Err(e) => {
                    svc.dispatch.settle(reserved.as_ref(), Vec::new(), 0);
                    Err(e)
                }
            }
        });
        match stored.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Corrupt {
                what: "ingest task",
                detail: e.to_string(),
            }),
        }
    }
}
