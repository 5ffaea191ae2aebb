//! The end-to-end secret scan: a whole flow through `patchbay run` against
//! the API emulators (a webhook with its token, an OAuth refresh, a
//! fallback, a dead letter and its replay, a refused delivery, a dry run),
//! then every place an operator or an attacker could read is searched for
//! every configured secret value: the debug-level logs, the store file and
//! its WAL, run records, deliveries, dead letters, dry-run output and
//! `/metrics`. Zero occurrences.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use patchbay::emulator::{ghl, sendpulse, Fault};
use serde_json::{json, Value};

mod common;
use common::{free_port, fresh_dir, wait_ready, Killed};

const GHL_TOKEN: &str = "SECRET-scan-ghl-token-6d1a";
const GHL_REFRESH: &str = "SECRET-scan-ghl-refresh-93be";
const GHL_CLIENT_SECRET: &str = "SECRET-scan-ghl-client-0c4f";
const SP_SECRET: &str = "SECRET-scan-sp-secret-71d2";
const HOOK_TOKEN: &str = "SECRET-scan-hook-token-a5e0";
const ADMIN: &str = "SECRET-scan-admin-2f88";
const SECRETS: [&str; 6] = [
    GHL_TOKEN,
    GHL_REFRESH,
    GHL_CLIENT_SECRET,
    SP_SECRET,
    HOOK_TOKEN,
    ADMIN,
];

const RECIPE: &str = r#"recipe: scan
trigger:
  on: sendpulse.subscriber.added
  connection: sendpulse-main
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with:
      email: "{{ event.email }}"
      source: scan
    fallback:
      - when: error.kind == "unprocessable"
        steps:
          - id: parked
            action: store.put
            with: { namespace: parked, key: "{{ event.email }}", value: "{{ error.message }}" }
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
}

fn with_secrets(cmd: &mut Command) -> &mut Command {
    cmd.env("GHL_TOKEN", GHL_TOKEN)
        .env("GHL_REFRESH", GHL_REFRESH)
        .env("GHL_CLIENT_SECRET", GHL_CLIENT_SECRET)
        .env("SP_SECRET", SP_SECRET)
        .env("HOOK_TOKEN", HOOK_TOKEN)
        .env("PATCHBAY_LOG", "debug")
}

/// Runs a CLI command against the store (logging at debug level); its
/// stdout and stderr together.
fn cli(args: &[&str]) -> String {
    let out = with_secrets(&mut bin()).args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A CLI command's JSON output.
fn cli_json(args: &[&str]) -> Vec<Value> {
    let out = bin().args(args).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn delivery(email: &str) -> String {
    json!([{"event": "new_emails", "book_id": "1", "email": email, "variables": {}, "timestamp": "1700000000"}])
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_appears_in_logs_store_records_dry_runs_or_metrics() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let g = ghl::start(ghl::GhlConfig {
        token: GHL_TOKEN.into(),
        refresh_token: GHL_REFRESH.into(),
        client_secret: GHL_CLIENT_SECRET.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = sendpulse::start(sendpulse::SendPulseConfig {
        client_secret: SP_SECRET.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = fresh_dir("secret-scan");
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("recipes/scan.yaml"), RECIPE).unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  refresh_token: {{ env: GHL_REFRESH }}\n  client_id: {}\n  client_secret: {{ env: GHL_CLIENT_SECRET }}\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n  webhook_token: {{ env: HOOK_TOKEN }}\n",
            g.base_url(),
            g.config().location_id,
            g.config().client_id,
            s.base_url(),
            s.config().client_id,
        ),
    )
    .unwrap();
    let store = format!("sqlite://{}", dir.join("store.db").display());
    let port = free_port();
    let child = Killed(
        with_secrets(&mut bin())
            .args(["run", "--recipes"])
            .arg(dir.join("recipes"))
            .arg("--connections")
            .arg(dir.join("connections.yaml"))
            .args(["--store", &store])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-token", ADMIN])
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("out.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("err.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    wait_ready(&http, port).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let post = |path: String, body: String, header: bool| {
        let mut r = http.post(url(&path)).body(body);
        if header {
            r = r.header("x-patchbay-token", HOOK_TOKEN);
        }
        r.send()
    };

    // 1. The configured access token has expired: the run refreshes it.
    g.expire_tokens();
    let r = post(
        "/hooks/sendpulse-main".into(),
        delivery("refresh@example.com"),
        true,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_runs(&store, |runs| {
        runs.len() == 1 && runs[0]["status"] == "completed"
    })
    .await;
    assert_eq!(g.token_refreshes(), 1);
    // 2. A 422 is rescued by the fallback.
    g.control().inject(
        Fault::Status(
            422,
            json!({"statusCode": 422, "message": ["email must be an email"]}),
        ),
        1,
    );
    let r = post(
        format!("/hooks/sendpulse-main?token={HOOK_TOKEN}"),
        delivery("fallback@example.com"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // 3. A 400 no fallback takes: a dead letter.
    g.control().inject(
        Fault::Status(400, json!({"statusCode": 400, "message": "Bad Request"})),
        1,
    );
    post(
        "/hooks/sendpulse-main".into(),
        delivery("dead@example.com"),
        true,
    )
    .await
    .unwrap();
    // 4. Refused: a wrong token, and no token.
    post(
        "/hooks/sendpulse-main?token=wrong".into(),
        delivery("x@example.com"),
        false,
    )
    .await
    .unwrap();
    post(
        "/hooks/sendpulse-main".into(),
        delivery("y@example.com"),
        false,
    )
    .await
    .unwrap();
    wait_runs(&store, |runs| {
        runs.len() == 3
            && runs
                .iter()
                .all(|r| r["status"] == "completed" || r["status"] == "failed")
    })
    .await;
    // 5. The dead letter, replayed.
    let dead = cli_json(&["dead-letters", "--json", "--store", &store]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let id = dead[0]["run_id"]
        .as_str()
        .or(dead[0]["id"].as_str())
        .unwrap()
        .to_string();
    let replay = cli(&[
        "replay",
        &id,
        "--recipes",
        &dir.join("recipes").display().to_string(),
        "--store",
        &store,
    ]);
    wait_runs(&store, |runs| {
        runs.iter().filter(|r| r["status"] == "completed").count() == 3
    })
    .await;

    // Everything an operator can read.
    let mut seen = vec![
        ("replay", replay),
        ("runs", cli(&["runs", "--json", "--store", &store])),
        (
            "deliveries",
            cli(&["deliveries", "--json", "--store", &store]),
        ),
        ("dead letters", cli(&["dead-letters", "--store", &store])),
    ];
    let runs = cli_json(&["runs", "--json", "--store", &store]);
    for r in &runs {
        let id = r["id"].as_str().or(r["run_id"].as_str()).unwrap();
        seen.push(("runs show", cli(&["runs", id, "--store", &store])));
    }
    let metrics = http
        .get(url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patchbay_webhook_rejected_total{reason=\"unauthorized\"} 2"),
        "{metrics}"
    );
    seen.push(("metrics", metrics));
    std::fs::write(dir.join("event.json"), delivery("dry@example.com")).unwrap();
    let dry = with_secrets(&mut bin())
        .arg("fire")
        .arg(dir.join("recipes/scan.yaml"))
        .arg("--event")
        .arg(dir.join("event.json"))
        .arg("--connections")
        .arg(dir.join("connections.yaml"))
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    seen.push((
        "dry run",
        format!(
            "{}{}",
            String::from_utf8_lossy(&dry.stdout),
            String::from_utf8_lossy(&dry.stderr)
        ),
    ));
    drop(child);
    for f in ["out.log", "err.log"] {
        seen.push((f, std::fs::read_to_string(dir.join(f)).unwrap()));
    }
    assert!(
        seen.iter()
            .any(|(w, t)| *w == "err.log" && t.contains("DEBUG")),
        "the engine logged at debug level"
    );
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(f)) {
            seen.push((f, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    for (where_, text) in &seen {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} appears in {where_}");
        }
    }
}

/// Waits until the store's runs (as `patchbay runs --json` lists them)
/// satisfy `done`.
async fn wait_runs(store: &str, done: impl Fn(&[Value]) -> bool) {
    let started = Instant::now();
    loop {
        let runs = cli_json(&["runs", "--json", "--store", store]);
        if done(&runs) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "runs never settled: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
