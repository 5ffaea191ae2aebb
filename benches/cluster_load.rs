//! The store backends under load, in one run: one engine on SQLite, one on
//! PostgreSQL, and two on one PostgreSQL (wrk against each, the same 32
//! connections in all), each taking single-event SendPulse deliveries ->
//! one mapped HighLevel action against the emulator. Reports events/s
//! acknowledged, actions/s completed (during the load, and until every
//! accepted event had run) and the acknowledgement p99.
//!
//! `cargo bench --bench cluster_load` (needs `wrk`, and PostgreSQL on
//! 127.0.0.1:5432 or `PATCHBAY_TEST_POSTGRES`); results go to
//! `docs/performance.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use patchbay::emulator::ghl;
use patchbay::store::{RunFilter, RunState};

mod common;
use common::{free_port, peak_rss_mb, tests_common::PgDb, wrk, Killed, TOKEN};

/// Starts an engine on `store`; its guard, port and pid.
fn spawn_engine(dir: &Path, store: &str) -> (Killed, u16, u32) {
    let port = free_port();
    let bin = Command::new(common::engine_bin("PATCHBAY_BENCH_BIN"));
    let child = common::engine(bin, dir, port, store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    (Killed(child), port, pid)
}

/// Runs not yet ended.
async fn open_runs(store: &dyn patchbay::store::Store) -> usize {
    let mut n = 0;
    for status in [RunState::Queued, RunState::Running] {
        n += store
            .runs(RunFilter {
                status: Some(status),
                limit: 10_000_000,
                ..Default::default()
            })
            .await
            .map(|r| r.len())
            .unwrap_or(0);
    }
    n
}

/// Loads `engines` engines on `store` with 32 connections in all; the
/// events acknowledged per second.
async fn case(name: &str, dir: &Path, g: &ghl::GhlEmulator, store: &str, engines: usize) -> f64 {
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let running: Vec<(Killed, u16, u32)> = (0..engines).map(|_| spawn_engine(dir, store)).collect();
    g.control().clear_requests();
    let start = Instant::now();
    let loads: Vec<_> = running
        .iter()
        .enumerate()
        .map(|(i, (_, port, _))| {
            let url = format!("http://127.0.0.1:{port}/hooks/sendpulse-main?token={TOKEN}");
            let dir = dir.to_path_buf();
            std::thread::spawn(move || wrk(&url, 32 / engines as u32, 1, &dir, &format!("e{i}-")))
        })
        .collect();
    let results: Vec<(f64, String, String)> =
        loads.into_iter().map(|t| t.join().unwrap()).collect();
    let load_secs = start.elapsed().as_secs_f64();
    let actions_during = g.requests().len();
    let s = patchbay::store::open(store).await.unwrap();
    let backlog = open_runs(&*s).await;
    while open_runs(&*s).await > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total_secs = start.elapsed().as_secs_f64();
    let events: f64 = results.iter().map(|r| r.0).sum();
    let p99: Vec<&str> = results.iter().map(|r| r.2.as_str()).collect();
    let rss: Vec<String> = running
        .iter()
        .map(|r| format!("{:.0}", peak_rss_mb(r.2)))
        .collect();
    let completed = g.requests().len();
    println!(
        "{name}: {events:.0} events/s acknowledged (p99 {}); actions {:.0}/s during the load, {:.0}/s until the last accepted event ran \
         (backlog {backlog} at the end of the load, drained {:.1} s later); peak RSS {} MB",
        p99.join(" / "),
        actions_during as f64 / load_secs,
        completed as f64 / total_secs,
        total_secs - load_secs,
        rss.join(" / "),
    );
    drop(running);
    events
}

fn main() {
    common::block_on(async {
        let g = common::ghl().await;
        let contact = g.insert_contact(serde_json::json!({"email": "bench@example.com"}));
        let dir: PathBuf =
            std::env::temp_dir().join(format!("patchbay-cluster-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        common::write_folder(&dir, &g.base_url(), &g.config().location_id, &contact);
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(2);
        for round in 1..=rounds {
            println!("round {round}");
            let sqlite = case("one engine, SQLite", &dir, &g, "sqlite://store.db", 1).await;
            let db = PgDb::new().await;
            let pg = case("one engine, PostgreSQL", &dir, &g, &db.url, 1).await;
            drop(db);
            let db = PgDb::new().await;
            let pg2 = case("two engines, one PostgreSQL", &dir, &g, &db.url, 2).await;
            drop(db);
            println!(
                "round {round}: PostgreSQL / SQLite {:.2}; two engines / one, on PostgreSQL {:.2}",
                pg / sqlite,
                pg2 / pg
            );
        }
    });
}
