//! Set-up the behaviour tests share: free ports, fresh folders, child
//! processes that die with their test, and waiting on an engine's store.
// Each test crate uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use patchbay::store::sqlite::SqliteStore;
use patchbay::store::{RunFilter, RunSummary, Store};

/// How long a test waits for runs before it fails.
pub const RUNS_DEADLINE: Duration = Duration::from_secs(60);

/// A port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty folder `patchbay-{name}-{pid}` under the system's temp folder;
/// whatever an earlier run left there is removed.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed when the test ends, passing or failing, so no
/// engine outlives its test holding a port.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `GET /readyz` on `port` until it answers 2xx; fails after 20 s.
pub async fn wait_ready(client: &reqwest::Client, port: u16) {
    let start = Instant::now();
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the engine did not come up"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Reads every run of the SQLite store at `db` until `check` accepts them
/// and returns them. `check` says what it still waits for; after
/// [`RUNS_DEADLINE`] the test fails with that and with `context()` (an
/// engine's log, say).
pub async fn wait_for_runs(
    db: &Path,
    check: impl Fn(&[RunSummary]) -> Result<(), String>,
    context: impl Fn() -> String,
) -> Vec<RunSummary> {
    let store = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let runs = store
            .runs(RunFilter {
                limit: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
        match check(&runs) {
            Ok(()) => return runs,
            Err(waiting) => assert!(start.elapsed() < RUNS_DEADLINE, "{waiting}\n{}", context()),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
