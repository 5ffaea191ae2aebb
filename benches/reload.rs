//! Hot reload on the release engine: the latency from a recipe file saved
//! to its new version serving (polled on `/admin/recipes`), over 100
//! reloads with the default debounce, idle and under load; and the
//! webhook throughput with and without reloads going on.
//!
//! `cargo bench --bench reload`; results go to `docs/performance.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::recipe::validate::version_of;
use patchbay::store::{RunFilter, RunState};

mod common;
use common::{free_port, Killed};

const ADMIN_TOKEN: &str = "bench-admin-token";
const RELOADS: usize = 100;
const LOAD_SECONDS: u64 = 10;
const SENDERS: usize = 16;

fn recipe(i: usize) -> String {
    format!(
        "recipe: bench\ntrigger: {{ on: http.webhook, connection: inbound }}\nsteps:\n  - id: contact\n    action: ghl.contacts.upsert\n    connection: ghl-main\n    with: {{ email: \"{{{{ event.email }}}}\", source: \"bench v{i}\" }}\n"
    )
}

struct Bench {
    client: reqwest::Client,
    port: u16,
    admin: u16,
    dir: PathBuf,
}

impl Bench {
    async fn version(&self) -> Option<String> {
        self.status()
            .await
            .and_then(|v| v["recipes"][0]["version"].as_str().map(str::to_string))
    }

    async fn status(&self) -> Option<serde_json::Value> {
        self.client
            .get(format!("http://127.0.0.1:{}/admin/recipes", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// How long the engine's last reload transaction took (read, validate,
    /// record the version, swap), without the debounce.
    async fn last_transaction(&self) -> Duration {
        let ms = self.status().await.unwrap()["last_reload"]["duration_ms"]
            .as_f64()
            .unwrap_or(0.0);
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// Saves version `i` (alternately in place and by rename) and returns
    /// how long until it serves.
    async fn reload(&self, i: usize) -> (Duration, Duration) {
        let text = recipe(i);
        let want = version_of(&text);
        let path = self.dir.join("recipes/bench.yaml");
        let t = Instant::now();
        if i % 2 == 0 {
            let tmp = self.dir.join("recipes/.bench.yaml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        } else {
            std::fs::write(&path, &text).unwrap();
        }
        loop {
            if self.version().await.as_deref() == Some(want.as_str()) {
                let elapsed = t.elapsed();
                return (elapsed, self.last_transaction().await);
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "reload {i} never served"
            );
            // Polling faster would itself load the engine under test.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Posts events from `SENDERS` tasks until `stop`; events acknowledged.
    fn load(
        &self,
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicU64>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..SENDERS)
            .map(|s| {
                let (client, port, stop, acked) =
                    (self.client.clone(), self.port, stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let r = client
                            .post(format!("http://127.0.0.1:{port}/hooks/inbound"))
                            .header("content-type", "application/json")
                            .body(format!("{{\"email\":\"s{s}-{n}@example.com\"}}"))
                            .send()
                            .await;
                        if matches!(r, Ok(ref r) if r.status().is_success()) {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect()
    }
}

/// Waits until no run is queued or running, so every phase starts without
/// a backlog competing with acceptance for the store's writer.
async fn drain(dir: &Path) {
    let store = patchbay::store::open(&format!("sqlite://{}", dir.join("store.db").display()))
        .await
        .unwrap();
    loop {
        let mut busy = 0;
        for status in [RunState::Queued, RunState::Running] {
            busy += store
                .runs(RunFilter {
                    status: Some(status),
                    limit: 10_000_000,
                    ..Default::default()
                })
                .await
                .map(|r| r.len())
                .unwrap_or(0);
        }
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentiles(pairs: Vec<(Duration, Duration)>) -> String {
    let (mut v, mut tx): (Vec<Duration>, Vec<Duration>) = pairs.into_iter().unzip();
    v.sort();
    tx.sort();
    let q = |v: &[Duration], q: f64| {
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    let transaction = format!(
        "; the reload transaction itself: p50 {:.1} ms, p99 {:.1} ms",
        q(&tx, 0.5),
        q(&tx, 0.99)
    );
    let p = |q: f64| {
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} reloads)",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0),
        v.len()
    ) + &transaction
}

fn spawn_engine(dir: &Path, port: u16, admin: u16) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "run",
            "--recipes",
            "recipes",
            "--connections",
            "connections.yaml",
        ])
        .args(["--store", "sqlite://store.db", "--workers", "16"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .current_dir(dir)
        .env("PATCHBAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("GHL_TOKEN", "pit-bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

fn main() {
    common::block_on(async {
        let g = common::ghl().await;
        let dir: PathBuf =
            std::env::temp_dir().join(format!("patchbay-reload-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("recipes")).unwrap();
        std::fs::write(dir.join("recipes/bench.yaml"), recipe(0)).unwrap();
        std::fs::write(
            dir.join("connections.yaml"),
            format!(
                "inbound:\n  connector: http\n  webhook_auth: none\nghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  rate_limits: [{{ requests: 10000000, per: 1s }}]\n  concurrency: 64\n",
                g.base_url(),
                g.config().location_id
            ),
        )
        .unwrap();
        let (port, admin) = (free_port(), free_port());
        let _engine = spawn_engine(&dir, port, admin);
        let b = Bench {
            client: reqwest::Client::new(),
            port,
            admin,
            dir: dir.clone(),
        };
        let start = Instant::now();
        while b.version().await.is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "engine did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // 1. Idle: file saved -> new version serving.
        let mut idle = Vec::new();
        for i in 1..=RELOADS {
            idle.push(b.reload(i).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "save -> serving, idle, default debounce (100 ms): {}",
            percentiles(idle)
        );

        // 2. Throughput without reloads.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = b.load(stop.clone(), acked.clone());
        tokio::time::sleep(Duration::from_secs(LOAD_SECONDS)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let quiet = acked.load(Ordering::Relaxed) as f64 / LOAD_SECONDS as f64;
        println!("webhook events acknowledged, {SENDERS} senders, no reloads: {quiet:.0}/s");
        drain(&dir).await;

        // 3. The same load with a save every second (someone editing).
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = b.load(stop.clone(), acked.clone());
        let t = Instant::now();
        let mut paced = Vec::new();
        let mut i = RELOADS;
        for s in 1..=LOAD_SECONDS {
            i += 1;
            paced.push(b.reload(i).await);
            let next = Duration::from_secs(s);
            tokio::time::sleep(next.saturating_sub(t.elapsed())).await;
        }
        let elapsed = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let during = acked.load(Ordering::Relaxed) as f64 / elapsed;
        println!(
            "webhook events acknowledged with a save every second: {during:.0}/s ({:+.1} %)",
            (during / quiet - 1.0) * 100.0
        );
        println!("save -> serving under that load: {}", percentiles(paced));
        drain(&dir).await;

        // 4. The same load while the file is saved again as soon as each
        // version serves: the worst case.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = b.load(stop.clone(), acked.clone());
        let t = Instant::now();
        let mut busy = Vec::new();
        while t.elapsed() < Duration::from_secs(LOAD_SECONDS) {
            i += 1;
            busy.push(b.reload(i).await);
        }
        let elapsed = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let during = acked.load(Ordering::Relaxed) as f64 / elapsed;
        println!(
            "webhook events acknowledged while reloading back to back: {during:.0}/s ({:+.1} %), {} reloads in {elapsed:.1} s",
            (during / quiet - 1.0) * 100.0,
            busy.len()
        );
        println!("save -> serving under that load: {}", percentiles(busy));
    });
}
