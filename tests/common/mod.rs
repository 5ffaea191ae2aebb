//! Set-up the behaviour tests share: free ports, fresh folders, child
//! processes that die with their test, and waiting on an engine's store.
// Each test crate uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use patchbay::store::{RunFilter, RunSummary};

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
    wait_for_runs_at(&format!("sqlite://{}", db.display()), check, context).await
}

/// [`wait_for_runs`] for a store given by URL (PostgreSQL, say).
pub async fn wait_for_runs_at(
    url: &str,
    check: impl Fn(&[RunSummary]) -> Result<(), String>,
    context: impl Fn() -> String,
) -> Vec<RunSummary> {
    let store = patchbay::store::open(url).await.unwrap();
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

/// The PostgreSQL server tests use (the machine's, trust auth); a test
/// database is made on it per test.
pub fn postgres_admin_url() -> String {
    std::env::var("PATCHBAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database, dropped (with its connections) when the
/// test ends.
pub struct PgDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl PgDb {
    /// Creates `patchbay_t_<id>` on [`postgres_admin_url`].
    pub async fn new() -> PgDb {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("patchbay_t_{}", patchbay::store::id::new_id());
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL answers on 127.0.0.1:5432 (PATCHBAY_TEST_POSTGRES)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0;
        PgDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The URL with at most `n` connections per engine.
    pub fn url_with_pool(&self, n: u32) -> String {
        format!("{}?pool_size={n}", self.url)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own thread and runtime: a drop cannot await, and may run
        // inside a test's runtime.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                })
        })
        .join();
    }
}
