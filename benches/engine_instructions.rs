//! Instructions the engine executes per event, counted by valgrind's
//! cachegrind: on this shared VM the one measure that does not move with
//! the machine's speed (about ±1 % between runs, where throughput moves by
//! ±25 %), so a change's effect on the engine's work can be seen at all.
//!
//! The release engine runs under cachegrind against a stub HighLevel that
//! answers every request `201` (served by this process, so its work is not
//! counted). Eight senders post single-event SendPulse deliveries
//! (`sendpulse.subscriber.added` -> `ghl.tags.add`), and the engine is
//! stopped once every run completed. Two runs, of 400 and 2,400 events:
//! the difference over 2,000 is the cost of one event without start-up.
//!
//! `cargo bench --bench engine_instructions` (needs valgrind);
//! `PATCHBAY_BENCH_BIN=path` measures another build;
//! `PATCHBAY_BENCH_CALLGRIND=path` runs the larger run under callgrind and
//! writes its profile there (for `callgrind_annotate`), so the number comes
//! with where it goes. Results go to `docs/performance.md`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use patchbay::store::{RunFilter, RunState, Store};

mod common;
use common::{free_port, TOKEN};

const SENDERS: usize = 8;

/// A HighLevel stand-in: every request gets `201 {"tags": [...]}`.
async fn stub() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::CREATED,
            axum::Json(serde_json::json!({"tags": ["book-7"]})),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn count(store: &dyn Store, status: RunState) -> usize {
    store
        .runs(RunFilter {
            status: Some(status),
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .map(|r| r.len())
        .unwrap_or(0)
}

/// The engine's instructions for `events` single-event deliveries, start-up
/// and shutdown included.
/// With `profile`, callgrind runs instead and writes its profile there.
async fn instructions(dir: &Path, events: usize, profile: Option<&str>) -> u64 {
    let db = dir.join(format!("store-{events}.db"));
    let port = free_port();
    let log = dir.join(format!("valgrind-{events}.txt"));
    let mut valgrind = Command::new("valgrind");
    match profile {
        Some(out) => valgrind
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={out}")),
        None => valgrind
            .args(["--tool=cachegrind", "--cache-sim=no"])
            .arg("--cachegrind-out-file=/dev/null"),
    };
    valgrind
        .arg(format!("--log-file={}", log.display()))
        .arg(common::engine_bin("PATCHBAY_BENCH_BIN"));
    let store = format!("sqlite://{}", db.display());
    let mut engine = common::engine(valgrind, dir, port, &store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("valgrind is installed (apt-get install valgrind)");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..600 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("{base}/hooks/sendpulse-main?token={TOKEN}");
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for i in 0..events / SENDERS {
                    let now = chrono::Utc::now().timestamp();
                    let body = format!("[{{\"event\":\"new_emails\",\"book_id\":\"7\",\"email\":\"s{s}-{i}@example.com\",\"timestamp\":\"{now}\"}}]");
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "delivery answered {}", r.status());
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let store = patchbay::store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    while count(&*store, RunState::Completed).await < events {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &engine.id().to_string()])
        .status();
    engine.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    // cachegrind says `I   refs: N`, callgrind `Collected : N`.
    text.lines()
        .find_map(|l| {
            l.split_once("I   refs:")
                .or_else(|| l.split_once("Collected :"))
                .map(|(_, n)| n.trim().replace(',', ""))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in valgrind's output:\n{text}"))
}

fn main() {
    common::block_on(async {
        let ghl = stub().await;
        let dir = std::env::temp_dir().join(format!("patchbay-instr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::write_folder(&dir, &ghl, "loc1", "c123");
        let (small, large) = (400, 2400);
        let profile = std::env::var("PATCHBAY_BENCH_CALLGRIND").ok();
        let a = instructions(&dir, small, None).await;
        let b = instructions(&dir, large, profile.as_deref()).await;
        println!(
            "engine instructions: {a} for {small} events, {b} for {large} events; {:.0} per event (start-up excluded)",
            (b - a) as f64 / (large - small) as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
