//! Several engines on one PostgreSQL store (the machine's server; each test
//! makes and drops its own database): every event is run by one engine,
//! a killed engine's runs are taken over, a schedule tick and a polled
//! record fire once per cluster, a rotated refresh token is spent once,
//! and one ordering key's events apply in arrival order across engines.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use patchbay::emulator::{ghl, sendpulse};
use patchbay::store::{RunState, RunSummary};
use serde_json::{json, Value};

mod common;
use common::{free_port, wait_ready, Killed, PgDb};

const TOKEN: &str = "cluster-webhook-token";
const WORKERS: usize = 8;

/// One engine test at a time: each runs several engines on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SUBSCRIBER: &str = r#"
recipe: subscriber
trigger: { on: sendpulse.subscriber.added, connection: sendpulse-main }
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with:
      email: "{{ event.email }}"
      firstName: "{{ event.variables.name | default('x') }}"
      source: "seq {{ event.variables.seq | default(0) }}"
"#;

/// The emulators and a folder with `recipes` and the connections for them.
struct Cluster {
    g: ghl::GhlEmulator,
    s: sendpulse::SendPulseEmulator,
    dir: std::path::PathBuf,
    db: PgDb,
}

async fn cluster(name: &str, recipes: &[(&str, &str)], ghl_config: ghl::GhlConfig) -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let g = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..ghl_config
    })
    .await
    .unwrap();
    let s = sendpulse::start(Default::default()).await.unwrap();
    let dir = common::fresh_dir(name);
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    for (file, text) in recipes {
        std::fs::write(dir.join("recipes").join(file), text).unwrap();
    }
    let c = g.config();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  refresh_token: {{ env: GHL_REFRESH }}\n  client_id: {}\n  client_secret: {{ env: GHL_SECRET }}\n  rate_limits: [{{ requests: 100000, per: 1s }}]\n  concurrency: 64\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n  webhook_token: {{ env: WEBHOOK_TOKEN }}\n",
            g.base_url(),
            c.location_id,
            c.client_id,
            s.base_url(),
            s.config().client_id,
        ),
    )
    .unwrap();
    Cluster {
        dir,
        db: PgDb::new().await,
        g,
        s,
    }
}

impl Cluster {
    /// Starts one engine on the shared store, listening on `port`.
    fn engine(&self, port: u16) -> Killed {
        let log = std::fs::File::create(self.dir.join(format!("engine-{port}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args([
                "run",
                "--recipes",
                "recipes",
                "--connections",
                "connections.yaml",
            ])
            .args(["--store", &self.db.url_with_pool(6)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--workers", &WORKERS.to_string(), "--lease", "2s"])
            .current_dir(&self.dir)
            .env("GHL_TOKEN", &self.g.config().token)
            .env("GHL_REFRESH", &self.g.config().refresh_token)
            .env("GHL_SECRET", &self.g.config().client_secret)
            .env("SP_SECRET", &self.s.config().client_secret)
            .env("WEBHOOK_TOKEN", TOKEN)
            .env("RUST_LOG", "patchbay=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Killed(child)
    }

    /// Every engine's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {:?}\n", e.file_name());
                out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                out += "\n";
            }
        }
        out
    }

    /// Every run, once `check` accepts them.
    async fn wait_runs(
        &self,
        check: impl Fn(&[RunSummary]) -> Result<(), String>,
    ) -> Vec<RunSummary> {
        common::wait_for_runs_at(&self.db.url_with_pool(2), check, || self.logs()).await
    }

    /// The upserts the HighLevel emulator received.
    fn upserts(&self) -> Vec<Value> {
        self.g
            .requests()
            .into_iter()
            .filter(|r| r.path == "/contacts/upsert")
            .map(|r| r.body)
            .collect()
    }
}

fn completed(n: usize) -> impl Fn(&[RunSummary]) -> Result<(), String> {
    move |runs| {
        let done = runs
            .iter()
            .filter(|r| r.status == RunState::Completed)
            .count();
        (done >= n)
            .then_some(())
            .ok_or_else(|| format!("{done} of {n} runs completed"))
    }
}

fn subscriber(i: usize, seq: usize) -> Value {
    json!({"event": "new_emails", "book_id": "490686", "email": format!("user{i}@example.com"),
           "timestamp": format!("{seq}"), "variables": {"name": format!("User {i}"), "seq": seq}})
}

/// Posts one delivery to `port`; whether it was acknowledged.
async fn deliver(client: &reqwest::Client, port: u16, items: &[Value]) -> bool {
    client
        .post(format!(
            "http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}"
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_string(items).unwrap())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn kill(engine: &mut Killed) {
    engine.0.kill().unwrap(); // SIGKILL
    engine.0.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_lose_and_repeat_nothing_when_one_is_killed_twice() {
    const EVENTS: usize = 2000;
    const AT_ONCE: usize = 16;
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster(
        "cluster-kill",
        &[("subscriber.yaml", SUBSCRIBER)],
        Default::default(),
    )
    .await;
    c.g.control().set_latency(Duration::from_millis(2));
    let ports = [free_port(), free_port()];
    let client = reqwest::Client::new();
    let mut engines = vec![c.engine(ports[0]), c.engine(ports[1])];
    for p in ports {
        wait_ready(&client, p).await;
    }
    let kills_at = [EVENTS / 3, 2 * EVENTS / 3];
    let mut kills = 0;
    let mut next = 0;
    while next < EVENTS {
        let chunk: Vec<usize> = (next..(next + AT_ONCE).min(EVENTS)).collect();
        next += chunk.len();
        // Single-event deliveries spread over both engines; one that is not
        // acknowledged goes again to the other (as a load balancer would).
        let sends = chunk.iter().map(|&i| {
            let client = client.clone();
            async move {
                let mut port = ports[i % 2];
                let mut tries = 0;
                while !deliver(&client, port, &[subscriber(i, 0)]).await {
                    port = if port == ports[0] { ports[1] } else { ports[0] };
                    tries += 1;
                    assert!(tries < 200, "event {i} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        });
        futures_util::future::join_all(sends).await;
        if kills_at
            .iter()
            .any(|k| (next - chunk.len()..next).contains(k))
        {
            kill(&mut engines[1]);
            kills += 1;
            engines[1] = c.engine(ports[1]);
            wait_ready(&client, ports[1]).await;
        }
    }
    assert_eq!(kills, 2);
    let runs = c.wait_runs(completed(EVENTS)).await;
    assert_eq!(runs.len(), EVENTS, "extra runs were created");
    assert!(runs.iter().all(|r| r.status == RunState::Completed));
    let emails: HashSet<String> =
        c.g.contacts()
            .iter()
            .map(|x| x["email"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(
        c.g.contacts().len(),
        EVENTS,
        "a contact is missing or duplicated"
    );
    assert_eq!(emails.len(), EVENTS);
    let resent = c.upserts().len() - EVENTS;
    assert!(
        resent <= kills * WORKERS,
        "{resent} requests re-sent after {kills} kills with {WORKERS} workers"
    );
    eprintln!("cluster kill test: {kills} kills, {resent} re-sent requests");
    drop(engines);
}

const TICK: &str = r#"
recipe: tick
trigger: { every: 1s }
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with: { email: "tick-{{ event.scheduled_at | replace(':', '-') | replace('+', '-') }}@example.com" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_schedule_on_three_engines_fires_once_per_tick() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster("cluster-tick", &[("tick.yaml", TICK)], Default::default()).await;
    let ports = [free_port(), free_port(), free_port()];
    let client = reqwest::Client::new();
    let engines: Vec<Killed> = ports.iter().map(|p| c.engine(*p)).collect();
    for p in ports {
        wait_ready(&client, p).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(engines);
    let ticks: Vec<String> = c
        .upserts()
        .iter()
        .map(|b| b["email"].as_str().unwrap().to_string())
        .collect();
    let distinct: HashSet<&String> = ticks.iter().collect();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "a tick fired more than once: {ticks:?}\n{}",
        c.logs()
    );
    assert!(
        (8..=12).contains(&ticks.len()),
        "{} ticks in 10 s: {ticks:?}\n{}",
        ticks.len(),
        c.logs()
    );
}

const TASK_POLL: &str = r#"
recipe: task-poll
trigger: { on: sendpulse.crm.tasks.updated, every: 1s, connection: sendpulse-main }
steps:
  - id: keep
    action: store.put
    with: { namespace: seen, key: "{{ event.id }}", value: "{{ event.name }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_on_two_engines_makes_one_run_per_record() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster(
        "cluster-poll",
        &[("poll.yaml", TASK_POLL)],
        Default::default(),
    )
    .await;
    // 500 records, 20 to a second (one poll sees several of a second, and
    // a later poll more of the same second).
    let stamp = |i: usize| format!("2026-11-01 10:{:02}:{:02}", i / 20 / 60, (i / 20) % 60);
    for i in 0..250 {
        c.s.insert_crm_task(json!({"name": format!("task {i}"), "updatedAt": stamp(i)}));
    }
    let ports = [free_port(), free_port()];
    let client = reqwest::Client::new();
    let engines: Vec<Killed> = ports.iter().map(|p| c.engine(*p)).collect();
    for p in ports {
        wait_ready(&client, p).await;
    }
    for i in 250..500 {
        c.s.insert_crm_task(json!({"name": format!("task {i}"), "updatedAt": stamp(i)}));
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let runs = c.wait_runs(completed(500)).await;
    // A few more polls: nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs_after = c.wait_runs(completed(500)).await;
    drop(engines);
    assert_eq!(runs.len(), 500, "{}", c.logs());
    assert_eq!(runs_after.len(), 500, "a record was run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_on_two_engines_refresh_a_rotating_token_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster(
        "cluster-refresh",
        &[("subscriber.yaml", SUBSCRIBER)],
        ghl::GhlConfig {
            token: "oauth-access-0".into(),
            ..Default::default()
        },
    )
    .await;
    let ports = [free_port(), free_port()];
    let client = reqwest::Client::new();
    let engines: Vec<Killed> = ports.iter().map(|p| c.engine(*p)).collect();
    for p in ports {
        wait_ready(&client, p).await;
    }
    // The access token both engines hold is refused from now on; slow
    // answers keep one engine's refresh in flight while the other's
    // requests are refused too.
    c.g.expire_tokens();
    c.g.control().set_latency(Duration::from_millis(40));
    let sends = (0..20).map(|i| {
        let client = client.clone();
        async move { assert!(deliver(&client, ports[i % 2], &[subscriber(i, 0)]).await) }
    });
    futures_util::future::join_all(sends).await;
    let runs = c
        .wait_runs(|runs| {
            let ended = runs
                .iter()
                .filter(|r| matches!(r.status, RunState::Completed | RunState::Failed))
                .count();
            (ended == 20)
                .then_some(())
                .ok_or_else(|| format!("{ended} of 20 runs ended"))
        })
        .await;
    drop(engines);
    let failed: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| r.status != RunState::Completed)
        .collect();
    assert!(failed.is_empty(), "runs failed: {failed:?}\n{}", c.logs());
    assert_eq!(c.g.token_refreshes(), 1, "{}", c.logs());
    assert!(!c.logs().contains("invalid_grant"), "{}", c.logs());
    assert_eq!(c.g.contacts().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ordering_key_applies_in_arrival_order_across_two_engines() {
    const PEOPLE: usize = 6;
    const UPDATES: usize = 8;
    let _one = ONE_AT_A_TIME.lock().await;
    let c = cluster(
        "cluster-order",
        &[("subscriber.yaml", SUBSCRIBER)],
        Default::default(),
    )
    .await;
    // Slow actions: runs of one key would overtake each other if allowed.
    c.g.control().set_latency(Duration::from_millis(15));
    let ports = [free_port(), free_port()];
    let client = reqwest::Client::new();
    let engines: Vec<Killed> = ports.iter().map(|p| c.engine(*p)).collect();
    for p in ports {
        wait_ready(&client, p).await;
    }
    // Each person's updates arrive one after the other, alternating engines;
    // the people interleave.
    for seq in 0..UPDATES {
        let sends = (0..PEOPLE).map(|who| {
            let client = client.clone();
            async move {
                let port = ports[(who + seq) % 2];
                assert!(deliver(&client, port, &[subscriber(who, seq)]).await);
            }
        });
        futures_util::future::join_all(sends).await;
    }
    c.wait_runs(completed(PEOPLE * UPDATES)).await;
    drop(engines);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for b in c.upserts() {
        seen.entry(b["email"].as_str().unwrap().to_string())
            .or_default()
            .push(b["source"].as_str().unwrap().to_string());
    }
    for who in 0..PEOPLE {
        let expected: Vec<String> = (0..UPDATES).map(|s| format!("seq {s}")).collect();
        assert_eq!(
            seen[&format!("user{who}@example.com")],
            expected,
            "user{who} applied out of order"
        );
    }
}
