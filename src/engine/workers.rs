//! The worker pool: claims runs, executes them with checkpoints, keeps
//! their leases, and records their ends.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{watch, Semaphore};

use crate::connectors::auth::BoxFut;
use crate::engine::Service;
use crate::interpreter::{self, CheckpointSink, RunReport, RunRequest, RunStatus, StepRecord};
use crate::store::Store;

/// How often the claimer looks for runs it was not told about (replays
/// from another process, expired leases).
const IDLE_POLL: Duration = Duration::from_millis(250);

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
        // was deleted since (see `recipe_for_run`).
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
        let running = interpreter::run(
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
            interpreter::StepStatus::Completed => "completed",
            interpreter::StepStatus::Failed => "failed",
            interpreter::StepStatus::Skipped => "skipped",
        };
        m.step_seconds
            .get_or_create(&crate::metrics::StepLabels {
                operation: s.action.clone(),
                status: status.into(),
            })
            .observe(s.duration_ms as f64 / 1000.0);
    }
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
    use crate::catalog::Catalog;
    use crate::connectors::Runtime;
    use crate::dispatch::Dispatch;
    use crate::engine::{RecipeSet, DEFAULT_LEASE};
    use crate::id::{new_id, EventId, RunId};
    use crate::store::{NewEvent, NewRun};
    use chrono::Utc;
    use std::sync::RwLock;

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
}
