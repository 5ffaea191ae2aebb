//! The process-level crash test: the engine runs as a child process against
//! the emulators, 1,000 SendPulse subscriber events arrive in batches, and
//! the engine is `kill -9`ed at three random moments and restarted. At the
//! end every contact exists exactly once, every run completed, and the
//! re-sent requests are at most the steps in flight at the kills. And the
//! graceful stop: SIGTERM lets the steps in flight finish, exits 0, and the
//! rest runs at the next start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use patchbay::emulator::{ghl, sendpulse};
use patchbay::store::RunState;
use rand::Rng;
use serde_json::json;

const WORKERS: usize = 8;
const EVENTS: usize = 1000;
const BATCH: usize = 50;
const TOKEN: &str = "crash-test-token";

const RECIPE: &str = r#"
recipe: subscriber
trigger: { on: sendpulse.subscriber.added, connection: sendpulse-main }
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with: { email: "{{ event.email }}", firstName: "{{ event.variables.name }}" }
"#;

mod common;
use common::{free_port, wait_ready, Killed};

fn spawn(dir: &Path, port: u16) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "run",
            "--recipes",
            "recipes",
            "--connections",
            "connections.yaml",
            "--store",
            "sqlite://store.db",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            &WORKERS.to_string(),
            "--lease",
            "2s",
        ])
        .current_dir(dir)
        .env("GHL_TOKEN", "pit-crash")
        .env("SP_SECRET", "sp-secret")
        .env("WEBHOOK_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

/// The emulators and a folder with the recipe and connections for them.
async fn setup(
    name: &str,
    latency: Duration,
) -> (ghl::GhlEmulator, sendpulse::SendPulseEmulator, PathBuf) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let g = ghl::start(ghl::GhlConfig {
        token: "pit-crash".into(),
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    g.control().set_latency(latency);
    let s = sendpulse::start(sendpulse::SendPulseConfig {
        client_secret: "sp-secret".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = common::fresh_dir(name);
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("recipes/subscriber.yaml"), RECIPE).unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  rate_limits: [{{ requests: 100000, per: 1s }}]\n  concurrency: 64\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n  webhook_token: {{ env: WEBHOOK_TOKEN }}\n",
            g.base_url(),
            g.config().location_id,
            s.base_url(),
            s.config().client_id,
        ),
    )
    .unwrap();

    (g, s, dir)
}

/// Every run, once those of `n` events have completed.
async fn wait_completed(dir: &Path, n: usize) -> Vec<patchbay::store::RunSummary> {
    let completed = |runs: &[patchbay::store::RunSummary]| {
        let done = runs
            .iter()
            .filter(|r| r.status == RunState::Completed)
            .count();
        (done == n)
            .then_some(())
            .ok_or_else(|| format!("{done} of {n} runs completed"))
    };
    common::wait_for_runs(&dir.join("store.db"), completed, String::new).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_loses_and_repeats_nothing() {
    let (g, _s, dir) = setup("crash", Duration::from_millis(3)).await;
    let port = free_port();
    let client = reqwest::Client::new();
    let mut engine = spawn(&dir, port);
    wait_ready(&client, port).await;

    let kill_after: HashSet<usize> = {
        let mut rng = rand::rng();
        let mut picks = HashSet::new();
        while picks.len() < 3 {
            picks.insert(rng.random_range(1..EVENTS / BATCH));
        }
        picks
    };
    let mut kills = 0;
    for b in 0..EVENTS / BATCH {
        let items: Vec<_> = (b * BATCH..(b + 1) * BATCH)
            .map(|i| json!({"event": "new_emails", "book_id": "490686", "email": format!("user{i}@example.com"), "timestamp": "1732700000", "variables": {"name": format!("User {i}")}}))
            .collect();
        let body = serde_json::to_string(&items).unwrap();
        // Like SendPulse: deliver until acknowledged.
        loop {
            let r = client
                .post(format!(
                    "http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}"
                ))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            if matches!(&r, Ok(resp) if resp.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if kill_after.contains(&b) {
            // Let some runs get going, then kill without warning.
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(5..60))).await;
            engine.0.kill().unwrap(); // SIGKILL
            engine.0.wait().unwrap();
            kills += 1;
            engine = spawn(&dir, port);
            wait_ready(&client, port).await;
        }
    }
    assert_eq!(kills, 3);

    // Wait for every run to finish (leases of killed runs expire after 2 s).
    let runs = wait_completed(&dir, EVENTS).await;
    assert_eq!(runs.len(), EVENTS, "extra runs were created");
    drop(engine);

    let contacts = g.contacts();
    let emails: HashSet<String> = contacts
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contacts.len(), EVENTS, "a contact is missing or duplicated");
    assert_eq!(emails.len(), EVENTS);
    let upserts = g
        .requests()
        .iter()
        .filter(|r| r.path == "/contacts/upsert")
        .count();
    let resent = upserts - EVENTS;
    assert!(
        resent <= kills * WORKERS,
        "{resent} requests re-sent after {kills} kills with {WORKERS} workers"
    );
    eprintln!("crash test: {kills} kills, {resent} re-sent requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_steps_in_flight_finish_exits_zero_and_the_rest_resumes() {
    const N: usize = 40;
    // Slow actions: steps are in flight when the signal comes.
    let (g, _s, dir) = setup("sigterm", Duration::from_millis(300)).await;
    let port = free_port();
    let client = reqwest::Client::new();
    let mut engine = spawn(&dir, port);
    wait_ready(&client, port).await;
    let items: Vec<_> = (0..N)
        .map(|i| json!({"event": "new_emails", "book_id": "490686", "email": format!("term{i}@example.com"), "timestamp": "1732700000", "variables": {"name": format!("Term {i}")}}))
        .collect();
    let r = client
        .post(format!(
            "http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}"
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&items).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let term = Command::new("kill")
        .args(["-TERM", &engine.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = engine.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    // The steps in flight at the signal finished; with 8 workers and 300 ms
    // per action, the others had not started.
    let sent = g.requests().len();
    assert!(
        (1..N).contains(&sent),
        "{sent} of {N} actions sent before the exit"
    );

    // The rest runs at the next start; nothing is sent twice.
    engine = spawn(&dir, port);
    wait_ready(&client, port).await;
    let runs = wait_completed(&dir, N).await;
    assert_eq!(runs.len(), N);
    drop(engine);
    let upserts = g
        .requests()
        .iter()
        .filter(|r| r.path == "/contacts/upsert")
        .count();
    assert_eq!(upserts, N, "a step was sent twice or not at all");
}
