//! The durable engine in-process: webhook ingress and its bad-input
//! answers, dedupe, ordering under many workers, polls across a restart,
//! schedules, and dead letters with replay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use patchbay::catalog::Catalog;
use patchbay::connections::ResolvedConnection;
use patchbay::connectors::Runtime;
use patchbay::emulator::{ghl, sendpulse};
use patchbay::engine::{RecipeSet, Service};
use patchbay::recipe::load::load_texts;
use patchbay::store::{RunFilter, RunState};
use serde_json::{json, Value};
use tokio::sync::watch;

const TOKEN: &str = "SECRET-webhook-token-31337";

struct Engine {
    svc: Arc<Service>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Engine {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
    }

    /// Waits until no run is queued or running.
    async fn settle(&self) {
        for _ in 0..400 {
            let busy = self
                .svc
                .store()
                .runs(RunFilter {
                    limit: 100_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .iter()
                .any(|r| matches!(r.status, RunState::Queued | RunState::Running));
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("runs did not finish");
    }

    async fn runs(&self, status: RunState) -> Vec<patchbay::store::RunSummary> {
        self.svc
            .store()
            .runs(RunFilter {
                status: Some(status),
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

fn conn(name: &str, connector: &str, fields: &[(&str, String, bool)]) -> ResolvedConnection {
    let borrowed: Vec<(&str, &str, bool)> = fields
        .iter()
        .map(|(k, v, s)| (*k, v.as_str(), *s))
        .collect();
    ResolvedConnection::from_values(name, connector, &borrowed)
}

fn conns(g: &ghl::GhlEmulator, s: &sendpulse::SendPulseEmulator) -> Vec<ResolvedConnection> {
    vec![
        conn(
            "ghl-main",
            "ghl",
            &[
                ("base_url", g.base_url(), false),
                ("token", g.config().token.clone(), true),
                ("location_id", g.config().location_id.clone(), false),
            ],
        ),
        conn(
            "sendpulse-main",
            "sendpulse",
            &[
                ("base_url", s.base_url(), false),
                ("client_id", s.config().client_id.clone(), false),
                ("client_secret", s.config().client_secret.clone(), true),
                ("webhook_token", TOKEN.to_string(), true),
            ],
        ),
    ]
}

mod common;

/// A store file in a fresh folder.
fn temp_db(name: &str) -> PathBuf {
    common::fresh_dir(&format!("engine-{name}")).join("store.db")
}

async fn start(
    recipes: &[&str],
    conns: Vec<ResolvedConnection>,
    db: &std::path::Path,
    workers: usize,
) -> Engine {
    let catalog = Catalog::builtin();
    let texts: Vec<(String, String)> = recipes
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("r{i}.yaml"), t.to_string()))
        .collect();
    let loaded = load_texts(&texts, &catalog, None);
    assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
    let store = patchbay::store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let runtime = Runtime::new(catalog.clone(), conns.clone(), store.clone(), store.clone());
    let svc = Arc::new(Service::new(
        store,
        runtime,
        RecipeSet::new(loaded.recipes),
        patchbay::engine::Settings {
            workers,
            body_limit: 64 * 1024,
            ..Default::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let mut tasks = svc.spawn_workers(workers, rx.clone());
    tasks.extend(svc.spawn_schedules(rx));
    let app = patchbay::server::router(svc.clone());
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }));
    Engine {
        svc,
        addr,
        stop,
        tasks,
    }
}

const SUBSCRIBER: &str = r#"
recipe: subscriber
trigger: { on: sendpulse.subscriber.added, if: "event.book_id == 490686" }
steps:
  - id: contact
    action: ghl.contacts.upsert
    with: { email: "{{ event.email }}", source: "book {{ event.book_id }} seq {{ event.variables.seq | default(0) }}" }
"#;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post(e: &Engine, path: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(e.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn delivery(emails: &[&str]) -> String {
    let items: Vec<Value> = emails
        .iter()
        .map(|e| json!({"event": "new_emails", "book_id": "490686", "email": e, "timestamp": "1732700000", "variables": {}}))
        .collect();
    serde_json::to_string(&items).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_get_clear_answers_are_recorded_and_lose_nothing() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let e = start(&[SUBSCRIBER], conns(&g, &s), &temp_db("bad"), 2).await;
    let hook = format!("/hooks/sendpulse-main?token={TOKEN}");

    // Accepted first: it must survive everything below.
    let (st, body) = post(&e, &hook, &delivery(&["kept@example.com"])).await;
    assert_eq!((st, body["runs"].as_u64()), (200, Some(1)), "{body}");

    let (st, body) = post(&e, &hook, "[{\"event\": \"new_emails\",").await;
    assert_eq!(st, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON: EOF while parsing"),
        "{body}"
    );

    let (st, body) = post(&e, &hook, "{\"event\": \"new_emails\"}").await;
    assert_eq!(st, 400);
    assert_eq!(
        body["error"],
        "SendPulse deliveries are a JSON array of events"
    );

    let big = format!(
        "[{}]",
        vec!["{\"event\":\"new_emails\",\"email\":\"x@example.com\"}"; 2000].join(",")
    );
    let (st, body) = post(&e, &hook, &big).await;
    assert_eq!(st, 413);
    assert_eq!(body["error"], "body larger than the 65536 byte limit");

    let (st, body) = post(
        &e,
        "/hooks/sendpulse-main?token=wrong",
        &delivery(&["x@example.com"]),
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (401, Some("wrong token")));
    let (st, body) = post(&e, "/hooks/sendpulse-main", &delivery(&["x@example.com"])).await;
    assert_eq!(st, 401);
    assert!(body["error"].as_str().unwrap().contains("missing token"));
    let r = client()
        .post(e.url("/hooks/sendpulse-main"))
        .header("x-patchbay-token", TOKEN)
        .body(delivery(&["header@example.com"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (st, body) = post(&e, "/hooks/nope", "[]").await;
    assert_eq!(
        (st, body["error"].as_str()),
        (404, Some("no connection `nope`"))
    );

    // A book no recipe wants: accepted as unmatched.
    let other =
        json!([{"event": "new_emails", "book_id": "1", "email": "y@example.com"}]).to_string();
    let (st, body) = post(&e, &hook, &other).await;
    assert_eq!(
        (st, body["unmatched"].as_u64(), body["runs"].as_u64()),
        (202, Some(1), Some(0)),
        "{body}"
    );

    e.settle().await;
    let done = e.runs(RunState::Completed).await;
    assert_eq!(done.len(), 2, "{done:?}");
    let emails: Vec<String> = g
        .contacts()
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_string())
        .collect();
    assert!(
        emails.contains(&"kept@example.com".to_string())
            && emails.contains(&"header@example.com".to_string())
    );

    let deliveries = e.svc.store().deliveries(100).await.unwrap();
    let statuses: Vec<u16> = deliveries.iter().rev().map(|d| d.status).collect();
    assert_eq!(statuses, [200, 400, 400, 413, 401, 401, 200, 404, 202]);
    let recorded = serde_json::to_string(&deliveries).unwrap();
    assert!(!recorded.contains(TOKEN), "a secret was recorded");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_twice_makes_one_run_per_event() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let e = start(&[SUBSCRIBER], conns(&g, &s), &temp_db("dup"), 2).await;
    let hook = format!("/hooks/sendpulse-main?token={TOKEN}");
    let body = delivery(&["a@example.com", "b@example.com", "c@example.com"]);
    let (_, first) = post(&e, &hook, &body).await;
    let (_, second) = post(&e, &hook, &body).await;
    assert_eq!(
        (first["runs"].as_u64(), first["duplicates"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        (second["runs"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    e.settle().await;
    assert_eq!(e.runs(RunState::Completed).await.len(), 3);
    assert_eq!(
        g.requests()
            .iter()
            .filter(|r| r.path == "/contacts/upsert")
            .count(),
        3
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_one_ordering_key_apply_in_arrival_order_under_eight_workers() {
    let (g, s) = (
        ghl::start(ghl::GhlConfig {
            rate_limit: None,
            ..Default::default()
        })
        .await
        .unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    g.control().set_latency(Duration::from_millis(5));
    let mut cs = conns(&g, &s);
    cs[0].rate_limits = Some(vec![patchbay::catalog::RateWindow {
        requests: 100_000,
        per: "1s".into(),
    }]);
    let e = start(&[SUBSCRIBER], cs, &temp_db("order"), 8).await;
    let hook = format!("/hooks/sendpulse-main?token={TOKEN}");
    // Five subscribers, each "created" then "updated" four more times, interleaved.
    for seq in 0..5 {
        let items: Vec<Value> = (0..5)
            .map(|who| json!({"event": "new_emails", "book_id": "490686", "email": format!("p{who}@example.com"), "timestamp": format!("{seq}"), "variables": {"seq": seq}}))
            .collect();
        let (st, _) = post(&e, &hook, &serde_json::to_string(&items).unwrap()).await;
        assert_eq!(st, 200);
    }
    e.settle().await;
    for who in 0..5 {
        let email = format!("p{who}@example.com");
        let seqs: Vec<String> = g
            .requests()
            .iter()
            .filter(|r| r.path == "/contacts/upsert" && r.body["email"] == json!(email))
            .map(|r| r.body["source"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..5).map(|s| format!("book 490686 seq {s}")).collect();
        assert_eq!(seqs, expected, "{email} applied out of order");
    }
    e.shutdown().await;
}

const POLL: &str = r#"
recipe: crm-task-poll
trigger: { on: sendpulse.crm.tasks.updated, every: 1h }
steps:
  - id: keep
    action: store.put
    with: { namespace: seen, key: "{{ event.id }}", value: "{{ event.name }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_records_become_one_run_each_across_a_restart() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let db = temp_db("poll");
    let first = s.insert_crm_task(json!({"name": "first", "updatedAt": "2026-11-01 10:00:00"}));
    s.insert_crm_task(json!({"name": "second", "updatedAt": "2026-11-01 11:00:00"}));
    let e = start(&[POLL], conns(&g, &s), &db, 2).await;
    // The loop polls once at start (no cursor yet).
    let started = std::time::Instant::now();
    while e.runs(RunState::Completed).await.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the first poll did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.settle().await;
    assert_eq!(e.runs(RunState::Completed).await.len(), 2);
    let recipe = e.svc.recipes().get("crm-task-poll").unwrap();
    let op = match &recipe.trigger.kind {
        patchbay::recipe::validate::TriggerKind::Poll { op, .. } => op.clone(),
        _ => unreachable!(),
    };
    // Nothing new: nothing enqueued.
    assert_eq!(e.svc.poll_once(&recipe, &op).await.unwrap(), 0);
    e.shutdown().await;

    // New and updated records appear while the engine is down.
    let third = s.insert_crm_task(json!({"name": "third", "updatedAt": "2026-11-02 09:00:00"}));
    assert!(s.update_crm_task(
        first,
        json!({"name": "first, renamed", "updatedAt": "2026-11-02 10:00:00"})
    ));
    let e = start(&[POLL], conns(&g, &s), &db, 2).await;
    // The timer is not due for an hour: poll now, as its next tick would.
    let recipe = e.svc.recipes().get("crm-task-poll").unwrap();
    assert_eq!(e.svc.poll_once(&recipe, &op).await.unwrap(), 2);
    assert_eq!(e.svc.poll_once(&recipe, &op).await.unwrap(), 0);
    e.svc.dispatch().stored(2);
    e.settle().await;
    let runs = e.runs(RunState::Completed).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!(
        e.svc.store().get("seen", &first.to_string()).await.unwrap(),
        Some(json!("first, renamed"))
    );
    assert_eq!(
        e.svc.store().get("seen", &third.to_string()).await.unwrap(),
        Some(json!("third"))
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_every_interval_and_not_twice_per_tick() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let recipe = r#"
recipe: tick
trigger: { every: 1s }
steps:
  - id: at
    action: store.put
    with: { namespace: ticks, key: "{{ run.id }}", value: "{{ event.scheduled_at }}" }
"#;
    let e = start(&[recipe], conns(&g, &s), &temp_db("tick"), 2).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    // Runs queued so far (any state): one per tick, none twice.
    let runs = e
        .svc
        .store()
        .runs(RunFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let n = runs.len();
    assert!((2..=4).contains(&n), "{n} runs in 2.6 s of a 1 s schedule");
    let events: std::collections::HashSet<&str> =
        runs.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(events.len(), n, "a tick started two runs");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_dead_letters_and_replay_runs_them_again() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    g.control().inject(
        patchbay::emulator::Fault::Status(
            400,
            json!({"statusCode": 400, "message": "Bad Request"}),
        ),
        1,
    );
    let e = start(&[SUBSCRIBER], conns(&g, &s), &temp_db("dead"), 2).await;
    let (st, _) = post(
        &e,
        &format!("/hooks/sendpulse-main?token={TOKEN}"),
        &delivery(&["z@example.com"]),
    )
    .await;
    assert_eq!(st, 200);
    e.settle().await;
    let dead = e.runs(RunState::Failed).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error.as_ref().unwrap()["kind"], "bad_request");
    let new_id = e
        .svc
        .store()
        .replay(&dead[0].id, &dead[0].recipe_version)
        .await
        .unwrap()
        .unwrap();
    e.svc.dispatch().stored(1);
    e.settle().await;
    let (run, steps) = e.svc.store().run(&new_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunState::Completed);
    assert_eq!(steps[0].output["email"], "z@example.com");
    assert_eq!(e.runs(RunState::Replayed).await.len(), 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn highlevel_deliveries_are_verified_and_deduplicated_on_webhook_id() {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::{Signer, SigningKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let spki = b64.encode(key.verifying_key().to_public_key_der().unwrap().as_bytes());
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let mut cs = conns(&g, &s);
    cs[0] = ResolvedConnection::from_values(
        "ghl-main",
        "ghl",
        &[
            ("base_url", &g.base_url(), false),
            ("token", &g.config().token, true),
            ("location_id", &g.config().location_id, false),
            ("webhook_public_key", &spki, false),
        ],
    );
    let recipe = r#"
recipe: ghl-contact
trigger: { on: ghl.contact.created }
steps:
  - id: keep
    action: store.put
    with: { namespace: ghl, key: "{{ event.id }}", value: "{{ event.email }}" }
"#;
    let e = start(&[recipe], cs, &temp_db("ghl"), 2).await;
    let body = |id: &str, webhook: &str, at: &str| {
        json!({"type": "ContactCreate", "locationId": g.config().location_id, "id": id, "email": format!("{id}@example.com"),
               "dateAdded": "2026-11-27T10:00:00.000Z", "timestamp": at, "webhookId": webhook})
        .to_string()
    };
    let send = |body: String, sig: String| {
        let url = e.url("/hooks/ghl-main");
        async move {
            let r = client()
                .post(url)
                .header("x-ghl-signature", sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let now = chrono::Utc::now().to_rfc3339();
    let b1 = body("c1", "wh-1", &now);
    let sig1 = b64.encode(key.sign(b1.as_bytes()).to_bytes());
    let (st, r) = send(b1.clone(), sig1.clone()).await;
    assert_eq!((st, r["runs"].as_u64()), (200, Some(1)), "{r}");
    // HighLevel redelivers the same webhookId: no second run.
    let (st, r) = send(b1.clone(), sig1).await;
    assert_eq!((st, r["duplicates"].as_u64()), (200, Some(1)), "{r}");
    // A different contact with another webhookId runs.
    let b2 = body("c2", "wh-2", &now);
    let (st, r) = send(b2.clone(), b64.encode(key.sign(b2.as_bytes()).to_bytes())).await;
    assert_eq!((st, r["runs"].as_u64()), (200, Some(1)), "{r}");
    // A body signed by someone else, or changed after signing, is refused.
    let other = SigningKey::from_bytes(&[7u8; 32]);
    let (st, r) = send(b2.clone(), b64.encode(other.sign(b2.as_bytes()).to_bytes())).await;
    assert_eq!(
        (st, r["error"].as_str()),
        (401, Some("Ed25519 signature does not match the body"))
    );
    let stale = body("c3", "wh-3", "2026-01-01T00:00:00Z");
    let (st, r) = send(
        stale.clone(),
        b64.encode(key.sign(stale.as_bytes()).to_bytes()),
    )
    .await;
    assert_eq!(st, 401);
    assert!(
        r["error"].as_str().unwrap().starts_with("delivery too old"),
        "{r}"
    );
    e.settle().await;
    assert_eq!(e.runs(RunState::Completed).await.len(), 2);
    assert_eq!(
        e.svc.store().get("ghl", "c2").await.unwrap(),
        Some(json!("c2@example.com"))
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_commands_read_the_store_of_a_running_engine() {
    let (g, s) = (
        ghl::start(Default::default()).await.unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    g.control().inject(
        patchbay::emulator::Fault::Status(
            400,
            json!({"statusCode": 400, "message": "Bad Request"}),
        ),
        1,
    );
    let db = temp_db("ops");
    let e = start(&[SUBSCRIBER], conns(&g, &s), &db, 2).await;
    let hook = format!("/hooks/sendpulse-main?token={TOKEN}");
    post(&e, &hook, &delivery(&["fails@example.com"])).await;
    post(&e, &hook, &delivery(&["works@example.com"])).await;
    post(
        &e,
        "/hooks/sendpulse-main?token=bad",
        &delivery(&["x@example.com"]),
    )
    .await;
    e.settle().await;
    let store = format!("sqlite://{}", db.display());
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(args)
            .args(["--store", &store])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = cli(&["runs"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2, "{out}");
    let (_, dead) = cli(&["dead-letters"]);
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(
        dead.contains("step `contact`: bad_request Bad Request"),
        "{dead}"
    );
    let id = dead.split_whitespace().next().unwrap().to_string();
    let (code, show) = cli(&["runs", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(
        show.contains("contact (ghl.contacts.upsert) Failed"),
        "{show}"
    );
    let (_, deliveries) = cli(&["deliveries"]);
    assert!(deliveries.contains("401"), "{deliveries}");
    assert!(deliveries.contains("wrong token"), "{deliveries}");
    assert!(!deliveries.contains(TOKEN));
    e.shutdown().await;
}

const NEW_CONTACTS: &str = r#"
recipe: new-contacts
trigger: { on: ghl.contacts.new, every: 1s, connection: ghl-main }
steps:
  - id: keep
    action: store.put
    with: { namespace: contacts, key: "{{ event.id }}", value: "{{ event.email }}" }
"#;

/// The HighLevel new-contact poll through the engine's own poll loop: each
/// contact added is one run, including one added in the same millisecond
/// as the newest the last poll saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highlevel_new_contact_poll_sees_every_new_contact_once() {
    let (g, s) = (
        ghl::start(ghl::GhlConfig {
            rate_limit: None,
            ..Default::default()
        })
        .await
        .unwrap(),
        sendpulse::start(Default::default()).await.unwrap(),
    );
    let at = |ms: u32| format!("2026-12-01T10:00:0{}.{ms:03}Z", ms / 1000);
    g.insert_contact(json!({"email": "old1@example.com", "dateAdded": at(100)}));
    g.insert_contact(json!({"email": "old2@example.com", "dateAdded": at(200)}));
    let e = start(&[NEW_CONTACTS], conns(&g, &s), &temp_db("ghl-poll"), 2).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let recipe = e.svc.recipes().get("new-contacts").unwrap();
    let poll = e.svc.spawn_schedule(recipe, stop);
    let wait = |n: usize| {
        let e = &e;
        async move {
            let start = std::time::Instant::now();
            loop {
                let runs = e.runs(RunState::Completed).await;
                if runs.len() >= n {
                    return runs;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{} of {n} runs",
                    runs.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait(2).await;
    // One in the same millisecond as the newest seen, one later.
    g.insert_contact(json!({"email": "same@example.com", "dateAdded": at(200)}));
    g.insert_contact(json!({"email": "new@example.com", "dateAdded": at(900)}));
    wait(4).await;
    // Two more polls find nothing new.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = stop_tx.send(true);
    let _ = poll.await;
    e.settle().await;
    let runs = e.runs(RunState::Completed).await;
    assert_eq!(runs.len(), 4, "{runs:?}");
    let polls: Vec<_> = g
        .requests()
        .into_iter()
        .filter(|r| r.path == "/contacts/search")
        .collect();
    assert!(polls.len() >= 3, "{polls:?}");
    assert!(polls.iter().all(|r| r.status == 200), "{polls:?}");
    assert_eq!(
        polls.last().unwrap().body["filters"][0]["value"]["gte"],
        json!(at(900)),
        "the cursor goes in the search filter"
    );
    e.shutdown().await;
}
