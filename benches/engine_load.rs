//! Load on the durable engine over loopback with `wrk` (Debian's package):
//! SendPulse deliveries -> one mapped HighLevel action against the emulator,
//! acknowledged after commit, with 1 and with 100 events per delivery; the
//! acknowledgement latency at a fixed 1,000 events/s; peak RSS; and, in the
//! same run, a minimal axum -> reqwest forwarder without durability as the
//! machine's ceiling.
//!
//! `cargo bench --bench engine_load` (needs `wrk` on PATH); results go to
//! `docs/performance.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::emulator::ghl;
use patchbay::store::{RunFilter, RunState, Store};

mod common;
use common::{free_port, peak_rss_mb, wrk, Killed, TOKEN};

use common::SECONDS;

async fn queued(store: &dyn Store) -> usize {
    store
        .runs(RunFilter {
            status: Some(RunState::Queued),
            limit: 10_000_000,
            ..Default::default()
        })
        .await
        .map(|r| r.len())
        .unwrap_or(0)
}

/// Starts the release engine (or the build `bin_var` names) on a fresh
/// store; its guard, port and pid.
fn spawn_engine(dir: &Path, bin_var: &str) -> (Killed, u16, u32) {
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let port = free_port();
    // PATCHBAY_BENCH_BIN runs another build; PATCHBAY_BENCH_BIN_B a second
    // one in every round (an A/B comparison under the same conditions).
    let bin = Command::new(common::engine_bin(bin_var));
    let child = common::engine(bin, dir, port, "sqlite://store.db")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    (Killed(child), port, pid)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Starts the engine, loads it, and reports; the events acknowledged per second.
async fn engine_case(
    dir: &Path,
    g: &ghl::GhlEmulator,
    per_delivery: u32,
    connections: u32,
    bin_var: &str,
) -> f64 {
    let (_guard, port, pid) = spawn_engine(dir, bin_var);
    g.control().clear_requests();
    let url = format!("http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}");
    let start = Instant::now();
    let (rps, p50, p99) = wrk(&url, connections, per_delivery, dir, "");
    let load_secs = start.elapsed().as_secs_f64();
    let actions_during = g.requests().len();
    let store = patchbay::store::open(&format!("sqlite://{}", dir.join("store.db").display()))
        .await
        .unwrap();
    let backlog = queued(&*store).await;
    // Drain: how long until every accepted event has run.
    while queued(&*store).await > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let events = rps * per_delivery as f64;
    // Every accepted event has run: the engine's CPU per event, start-up included.
    let cpu_per_1000 = cpu_seconds(pid) * 1e6 / (events * SECONDS as f64);
    println!(
        "engine, {per_delivery} event(s)/delivery, {connections} connections: {rps:.0} deliveries/s = {events:.0} events/s acknowledged (p50 {p50}, p99 {p99}); \
         actions reached the emulator at {:.0}/s during the load; backlog at the end {backlog} runs, drained {:.1} s later; peak RSS {:.0} MB; engine CPU {cpu_per_1000:.0} ms per 1,000 events",
        actions_during as f64 / load_secs,
        total_secs - load_secs,
        peak_rss_mb(pid),
    );
    events
}

/// A minimal axum -> reqwest forwarder without durability: the ceiling.
async fn forwarder(target: String, contact: String) -> u16 {
    use axum::routing::post;
    let client = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/hooks/{c}",
        post(move |body: axum::body::Bytes| {
            let (client, target, contact) = (client.clone(), target.clone(), contact.clone());
            async move {
                let events: Vec<serde_json::Value> =
                    serde_json::from_slice(&body).unwrap_or_default();
                for e in events {
                    let _ = client
                        .post(format!("{target}/contacts/{contact}/tags"))
                        .header("authorization", "Bearer pit-bench")
                        .header("version", "2021-07-28")
                        .json(&serde_json::json!({"tags": [e["book_id"]]}))
                        .send()
                        .await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Acknowledgement latency at a fixed rate of single-event deliveries.
async fn fixed_rate(dir: &Path, per_second: u32) {
    let (_guard, port, _) = spawn_engine(dir, "PATCHBAY_BENCH_BIN");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..per_second * 10 {
        tick.tick().await;
        let (client, url, lat) = (client.clone(), url.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let body = format!("[{{\"event\":\"new_emails\",\"book_id\":\"7\",\"email\":\"fixed{i}@example.com\",\"timestamp\":\"{now}\"}}]");
            let t = Instant::now();
            let r = client.post(&url).header("content-type", "application/json").body(body).send().await;
            if matches!(r, Ok(ref r) if r.status().is_success()) {
                lat.lock().unwrap().push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    let p = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)].as_secs_f64() * 1e3;
    println!("engine at a fixed {per_second} events/s for 10 s: {} acknowledged, p50 {:.2} ms, p99 {:.2} ms", l.len(), p(0.5), p(0.99));
}

fn main() {
    common::block_on(async {
        let g = common::ghl().await;
        let contact = g.insert_contact(serde_json::json!({"email": "bench@example.com"}));
        let dir: PathBuf =
            std::env::temp_dir().join(format!("patchbay-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::write_folder(&dir, &g.base_url(), &g.config().location_id, &contact);

        // The machine's speed moves between runs by more than the
        // differences measured here: forwarder and engine take turns, and
        // each round's ratio compares the two under the same conditions.
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3);
        let fwd = forwarder(g.base_url(), contact.clone()).await;
        let b = std::env::var("PATCHBAY_BENCH_BIN_B").is_ok();
        let (mut ratios, mut ratios_b) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (rps, p50, p99) = wrk(&format!("http://127.0.0.1:{fwd}/hooks/x"), 32, 1, &dir, "");
            println!("round {round}: forwarder (axum -> reqwest, no store), 1 event/delivery, 32 connections: {rps:.0} requests/s (p50 {p50}, p99 {p99})");
            g.control().clear_requests();
            ratios.push(engine_case(&dir, &g, 1, 32, "PATCHBAY_BENCH_BIN").await / rps);
            g.control().clear_requests();
            if b {
                print!("build B: ");
                ratios_b.push(engine_case(&dir, &g, 1, 32, "PATCHBAY_BENCH_BIN_B").await / rps);
                g.control().clear_requests();
            }
        }
        let summary = |ratios: &mut Vec<f64>| {
            ratios.sort_by(f64::total_cmp);
            let each: Vec<_> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            format!(
                "{} (median {:.2})",
                each.join(", "),
                ratios[ratios.len() / 2]
            )
        };
        println!(
            "single-event engine / forwarder, per round: {}",
            summary(&mut ratios)
        );
        if b {
            println!("build B / forwarder, per round: {}", summary(&mut ratios_b));
        }
        if std::env::var("ONLY_SINGLE").is_ok() {
            return;
        }
        engine_case(&dir, &g, 100, 8, "PATCHBAY_BENCH_BIN").await;
        g.control().clear_requests();
        fixed_rate(&dir, 1000).await;
    });
}
