//! The store conformance suite: the same behaviour, through the `Store`
//! trait alone, on every backend — SQLite (a fresh file) and PostgreSQL
//! (a fresh database on the machine's server). A backend that passes
//! these can run the engine.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use patchbay::connectors::auth::{Refresh, StoredTokens};
use patchbay::id::{EventId, RunId};
use patchbay::interpreter::{RunReport, RunStatus, StepRecord, StepStatus};
use patchbay::secret::Secret;
use patchbay::store::versions::StoredVersion;
use patchbay::store::{
    ClaimFor, ClaimedRun, Delivery, NewEvent, NewRun, RunFilter, RunState, Store, StoreError,
};
use serde_json::json;

mod common;

const LEASE: Duration = Duration::from_secs(30);

fn event(key: Option<&str>, ordering: Option<&str>) -> NewEvent {
    let id = EventId::new();
    NewEvent {
        id: id.clone(),
        connection: "sp".into(),
        operation: "sendpulse.subscriber.added".into(),
        payload: json!({"email": format!("{id}@example.com")}),
        dedupe_key: key.map(str::to_string),
        runs: vec![NewRun {
            id: RunId::new(),
            recipe: "r".into(),
            recipe_version: "v1".into(),
            ordering_key: ordering.map(str::to_string),
        }],
    }
}

fn delivery(events: u32) -> Delivery {
    Delivery {
        connection: "sp".into(),
        status: 202,
        outcome: "accepted".into(),
        events,
        received_at: Utc::now(),
    }
}

fn record(id: &str) -> StepRecord {
    StepRecord {
        id: id.into(),
        action: "ghl.contacts.create".into(),
        status: StepStatus::Completed,
        input: json!({"email": "a@example.com"}),
        output: json!({"id": id}),
        error: None,
        attempts: 1,
        duration_ms: 3,
        rescued_by: None,
        fallback_of: None,
    }
}

fn report(run: &ClaimedRun, status: RunStatus, steps: Vec<StepRecord>) -> RunReport {
    RunReport {
        run_id: run.id.clone(),
        recipe: run.recipe.clone(),
        status,
        steps,
        failed_step: (status == RunStatus::Failed).then(|| "contact".to_string()),
        error: None,
    }
}

async fn all_runs(s: &dyn Store) -> Vec<patchbay::store::RunSummary> {
    s.runs(RunFilter {
        limit: 10_000,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn ingest(s: &dyn Store, events: Vec<NewEvent>) -> patchbay::store::Ingested {
    let n = events.len() as u32;
    s.ingest(delivery(n), events, None).await.unwrap()
}

// ---- the suite ----

async fn duplicates_are_skipped_and_runs_are_claimed_in_arrival_order(s: Arc<dyn Store>) {
    let first = ingest(&*s, vec![event(Some("k1"), None), event(Some("k2"), None)]).await;
    assert_eq!((first.events, first.runs, first.duplicates), (2, 2, 0));
    let again = ingest(&*s, vec![event(Some("k1"), None), event(None, None)]).await;
    assert_eq!((again.events, again.duplicates), (1, 1));
    // The same key twice in one ingest: the first wins.
    let twice = ingest(&*s, vec![event(Some("k3"), None), event(Some("k3"), None)]).await;
    assert_eq!((twice.events, twice.duplicates), (1, 1));
    let runs = all_runs(&*s).await;
    assert_eq!(runs.len(), 4);
    let oldest_first: Vec<RunId> = runs.iter().rev().map(|r| r.id.clone()).collect();
    let claimed: Vec<RunId> = s
        .claim("w", LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(claimed, oldest_first);
    assert!(s.claim("w", LEASE, 10).await.unwrap().is_empty());
}

async fn one_run_per_ordering_key_is_open_at_a_time(s: Arc<dyn Store>) {
    let claim = ClaimFor {
        owner: "a".into(),
        lease: LEASE,
        max: 10,
    };
    let events = vec![
        event(None, Some("contact-1")),
        event(None, Some("contact-1")),
        event(None, Some("contact-2")),
    ];
    let ids: Vec<RunId> = events.iter().map(|e| e.runs[0].id.clone()).collect();
    let n = s.ingest(delivery(3), events, Some(claim)).await.unwrap();
    let mut taken: Vec<ClaimedRun> = n.claimed;
    taken.extend(s.claim("b", LEASE, 10).await.unwrap());
    let mut got: Vec<RunId> = taken.iter().map(|r| r.id.clone()).collect();
    got.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(got, want, "the second run of contact-1 waits for the first");
    let first = taken.iter().find(|r| r.id == ids[0]).unwrap().clone();
    s.finish(&report(&first, RunStatus::Completed, vec![]))
        .await
        .unwrap();
    let next = s.claim("b", LEASE, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[1]);
    assert_eq!(next[0].ordering_key.as_deref(), Some("contact-1"));
}

async fn an_expired_lease_is_taken_over_with_its_checkpoints(s: Arc<dyn Store>) {
    ingest(&*s, vec![event(None, None)]).await;
    let run = s
        .claim("dead", Duration::from_millis(200), 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    s.checkpoint(&run.id, &[record("contact")], Duration::from_millis(200))
        .await
        .unwrap();
    assert!(s.claim("alive", LEASE, 1).await.unwrap().is_empty());
    let start = std::time::Instant::now();
    let again = loop {
        if let Some(r) = s.claim("alive", LEASE, 1).await.unwrap().pop() {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never re-queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.id, run.id);
    assert_eq!(again.done, vec![record("contact")]);
    assert_eq!(again.started_at, run.started_at, "first start kept");
}

async fn a_heartbeat_keeps_every_lease_and_a_release_queues_them_again(s: Arc<dyn Store>) {
    ingest(&*s, vec![event(None, None), event(None, None)]).await;
    let lease = Duration::from_millis(600);
    assert_eq!(s.claim("w", lease, 2).await.unwrap().len(), 2);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.heartbeat("w", lease).await.unwrap();
    }
    assert!(s.claim("other", LEASE, 2).await.unwrap().is_empty());
    assert_eq!(s.release("w").await.unwrap(), 2);
    assert_eq!(s.claim("other", LEASE, 2).await.unwrap().len(), 2);
}

async fn checkpoints_and_the_end_keep_every_step_once(s: Arc<dyn Store>) {
    ingest(&*s, vec![event(None, None)]).await;
    let run = s.claim("w", LEASE, 1).await.unwrap().pop().unwrap();
    s.checkpoint(&run.id, &[record("a")], LEASE).await.unwrap();
    s.checkpoint(&run.id, &[record("b")], LEASE).await.unwrap();
    let steps = vec![record("a"), record("b"), record("c")];
    s.finish(&report(&run, RunStatus::Completed, steps.clone()))
        .await
        .unwrap();
    let (summary, records) = s.run(&run.id).await.unwrap().unwrap();
    assert_eq!(summary.status, RunState::Completed);
    assert_eq!(records, steps);
    assert!(s.run("no-such-run").await.unwrap().is_none());
}

async fn failed_runs_are_dead_letters_until_replayed(s: Arc<dyn Store>) {
    ingest(&*s, vec![event(None, Some("k"))]).await;
    let run = s.claim("w", LEASE, 1).await.unwrap().pop().unwrap();
    s.finish(&report(&run, RunStatus::Failed, vec![record("contact")]))
        .await
        .unwrap();
    let dead = s
        .runs(RunFilter {
            status: Some(RunState::Failed),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].failed_step.as_deref(), Some("contact"));
    let new = s.replay(&run.id, "v2").await.unwrap().unwrap();
    assert!(s.replay(&run.id, "v2").await.unwrap().is_none(), "once");
    let again = s.claim("w", LEASE, 1).await.unwrap().pop().unwrap();
    assert_eq!(again.id, new);
    assert_eq!(again.recipe_version, "v2");
    assert_eq!(again.payload, run.payload);
    assert_eq!(again.ordering_key.as_deref(), Some("k"));
    let old = s.run(&run.id).await.unwrap().unwrap().0;
    assert_eq!(old.status, RunState::Replayed);
}

async fn links_expire_and_delete(s: Arc<dyn Store>) {
    s.put("tasks", "sp-1", json!({"ghl": "t-1"}), None)
        .await
        .unwrap();
    s.put(
        "tasks",
        "sp-2",
        json!("short"),
        Some(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("tasks", "sp-1").await.unwrap(),
        Some(json!({"ghl": "t-1"}))
    );
    s.put("tasks", "sp-1", json!({"ghl": "t-2"}), None)
        .await
        .unwrap();
    assert_eq!(
        s.get("tasks", "sp-1").await.unwrap(),
        Some(json!({"ghl": "t-2"}))
    );
    assert_eq!(s.get("tasks", "sp-2").await.unwrap(), Some(json!("short")));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(s.get("tasks", "sp-2").await.unwrap(), None, "expired");
    assert!(s.delete("tasks", "sp-1").await.unwrap());
    assert!(!s.delete("tasks", "sp-1").await.unwrap());
    assert_eq!(s.get("other", "sp-1").await.unwrap(), None);
}

fn tokens(access: &str, refresh: &str) -> StoredTokens {
    StoredTokens {
        access_token: Secret::new(access),
        refresh_token: Some(Secret::new(refresh)),
        expires_at: Some(2_000_000_000),
    }
}

async fn tokens_persist_and_a_refresh_sees_the_tokens_stored_before_it(s: Arc<dyn Store>) {
    assert!(s.load("ghl").await.is_none());
    s.save("ghl", tokens("a1", "r1")).await;
    assert_eq!(s.load("ghl").await, Some(tokens("a1", "r1")));
    let refresh: Refresh<'_> = Box::new(|stored| {
        Box::pin(async move {
            assert_eq!(stored, Some(tokens("a1", "r1")));
            Ok((tokens("a2", "r2"), true))
        })
    });
    assert_eq!(
        s.exclusive("ghl", refresh).await.unwrap(),
        tokens("a2", "r2")
    );
    assert_eq!(s.load("ghl").await, Some(tokens("a2", "r2")));
    let keep: Refresh<'_> =
        Box::new(|stored| Box::pin(async move { Ok((stored.unwrap(), false)) }));
    assert_eq!(s.exclusive("ghl", keep).await.unwrap(), tokens("a2", "r2"));
}

async fn a_cursor_moves_only_from_the_value_it_was_read_at(s: Arc<dyn Store>) {
    assert_eq!(s.cursor("poll:r").await.unwrap(), None);
    let n = s
        .ingest_with_cursor("poll:r", None, "10", vec![event(None, None)])
        .await
        .unwrap();
    assert_eq!(n.runs, 1);
    // A second engine that read the cursor unset too loses, storing nothing.
    let lost = s
        .ingest_with_cursor("poll:r", None, "10", vec![event(None, None)])
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    let stale = s
        .ingest_with_cursor("poll:r", Some("5"), "20", vec![event(None, None)])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    s.ingest_with_cursor("poll:r", Some("10"), "20", vec![event(None, None)])
        .await
        .unwrap();
    assert_eq!(s.cursor("poll:r").await.unwrap().as_deref(), Some("20"));
    assert_eq!(all_runs(&*s).await.len(), 2);
}

async fn recipe_versions_are_kept_once_each(s: Arc<dyn Store>) {
    let v = StoredVersion {
        recipe: "r".into(),
        version: "abc".into(),
        file: "r.yaml".into(),
        source: "recipe: r".into(),
        loaded_at: Utc::now(),
    };
    s.save_versions(std::slice::from_ref(&v))
        .await
        .unwrap()
        .await
        .unwrap();
    let moved = StoredVersion {
        file: "moved.yaml".into(),
        ..v.clone()
    };
    s.save_versions(&[moved]).await.unwrap().await.unwrap();
    let got = s.version("r", "abc").await.unwrap().unwrap();
    assert_eq!(
        (got.file.as_str(), got.source.as_str()),
        ("r.yaml", "recipe: r")
    );
    assert!(s.version("r", "other").await.unwrap().is_none());
}

async fn deliveries_accepted_and_rejected_are_listed_newest_first(s: Arc<dyn Store>) {
    ingest(&*s, vec![event(None, None)]).await;
    s.reject(Delivery {
        status: 401,
        outcome: "bad token".into(),
        events: 0,
        ..delivery(0)
    })
    .await
    .unwrap();
    let d = s.deliveries(10).await.unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].status, d[0].outcome.as_str()), (401, "bad token"));
    assert_eq!((d[1].status, d[1].events), (202, 1));
}

async fn pruning_removes_old_finished_runs_and_keeps_dead_letters_and_open_runs(s: Arc<dyn Store>) {
    ingest(
        &*s,
        vec![event(None, None), event(None, None), event(None, None)],
    )
    .await;
    let runs = s.claim("w", LEASE, 2).await.unwrap();
    s.finish(&report(&runs[0], RunStatus::Completed, vec![record("a")]))
        .await
        .unwrap();
    s.finish(&report(&runs[1], RunStatus::Failed, vec![]))
        .await
        .unwrap();
    s.put("l", "old", json!(1), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    s.put("l", "kept", json!(2), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.prune(Duration::ZERO).await.unwrap(), 1);
    let left: Vec<RunState> = all_runs(&*s).await.iter().map(|r| r.status).collect();
    assert_eq!(left, [RunState::Queued, RunState::Failed]);
    assert!(s.run(&runs[0].id).await.unwrap().is_none());
    assert!(
        s.deliveries(10).await.unwrap().is_empty(),
        "old deliveries go"
    );
    assert_eq!(s.get("l", "kept").await.unwrap(), Some(json!(2)));
    assert!(s.delete("l", "kept").await.unwrap());
    assert!(!s.delete("l", "old").await.unwrap(), "expired links go");
}

async fn runs_are_listed_by_recipe_and_state(s: Arc<dyn Store>) {
    let mut other = event(None, None);
    other.runs[0].recipe = "other".into();
    ingest(&*s, vec![event(None, None), other]).await;
    let by_recipe = s
        .runs(RunFilter {
            recipe: Some("other".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_recipe.len(), 1);
    assert_eq!(by_recipe[0].recipe, "other");
    let queued = s
        .runs(RunFilter {
            status: Some(RunState::Queued),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert!(s.ping().await);
}

// ---- the backends ----

async fn sqlite() -> Arc<dyn Store> {
    let path = std::env::temp_dir().join(format!("patchbay-conformance-{}.db", RunId::new()));
    patchbay::store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

/// At most a few PostgreSQL tests at once: each database and pool costs
/// server connections (100 by default).
static PG_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let _slot = super::PG_SLOTS.acquire().await.unwrap();
                    let db = super::common::PgDb::new().await;
                    let store = patchbay::store::open(&db.url_with_pool(4)).await.unwrap();
                    super::$name(store).await
                }
            )*
        }
    };
}

conformance!(
    duplicates_are_skipped_and_runs_are_claimed_in_arrival_order,
    one_run_per_ordering_key_is_open_at_a_time,
    an_expired_lease_is_taken_over_with_its_checkpoints,
    a_heartbeat_keeps_every_lease_and_a_release_queues_them_again,
    checkpoints_and_the_end_keep_every_step_once,
    failed_runs_are_dead_letters_until_replayed,
    links_expire_and_delete,
    tokens_persist_and_a_refresh_sees_the_tokens_stored_before_it,
    a_cursor_moves_only_from_the_value_it_was_read_at,
    recipe_versions_are_kept_once_each,
    deliveries_accepted_and_rejected_are_listed_newest_first,
    pruning_removes_old_finished_runs_and_keeps_dead_letters_and_open_runs,
    runs_are_listed_by_recipe_and_state,
);
