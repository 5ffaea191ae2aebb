//! The console and admin API over a large store: 100,000 runs (with their
//! events and steps) in SQLite, served by the release engine; the time of
//! every request a console page makes, median and worst of 20, and of
//! each page in all (its files and its API calls).
//!
//! `cargo bench --bench console`; results go to `docs/performance.md`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, Killed};

const RUNS: i64 = 100_000;
const TOKEN: &str = "bench-admin-token";

/// Fills the store: runs of 5 recipes, one event and one step each, 90 %
/// completed, 5 % failed, 5 % filtered, created over the last day.
/// The id of a run a tenth of the way in (a page deep in the past).
fn fill(path: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut deep = String::new();
    c.execute_batch("BEGIN").unwrap();
    {
        let mut ev = c
            .prepare("INSERT INTO events (id, connection, operation, payload, received_at) VALUES (?1, 'sendpulse-main', 'sendpulse.subscriber.added', ?2, ?3)")
            .unwrap();
        let mut run = c
            .prepare("INSERT INTO runs (id, event_id, recipe, recipe_version, status, created_at, updated_at, failed_step, error) VALUES (?1, ?2, ?3, 'v1', ?4, ?5, ?5, ?6, ?7)")
            .unwrap();
        let mut step = c
            .prepare("INSERT INTO steps (run_id, idx, record) VALUES (?1, 0, ?2)")
            .unwrap();
        for i in 0..RUNS {
            let at = now - (RUNS - i) * 864; // one day
            let id = format!("{}{:012x}", patchbay::id::id_prefix(at), i);
            let ev_id = format!("{}{:012x}", patchbay::id::id_prefix(at), i + RUNS);
            if i == RUNS / 10 {
                deep = id.clone();
            }
            let email = format!("user{i}@example.com");
            let payload = serde_json::json!({"event": "new_emails", "email": email, "book_id": "490686", "variables": {"name": format!("User {i}")}});
            ev.execute(rusqlite::params![ev_id, payload.to_string(), at])
                .unwrap();
            let (status, failed, error) = match i % 20 {
                0 => (
                    "failed",
                    Some("contact"),
                    Some(
                        r#"{"kind":"bad_request","status":400,"message":"The email is blocked","body":null}"#,
                    ),
                ),
                1 => ("filtered", None, None),
                _ => ("completed", None, None),
            };
            run.execute(rusqlite::params![
                id,
                ev_id,
                format!("recipe-{}", i % 5),
                status,
                at,
                failed,
                error
            ])
            .unwrap();
            let record = serde_json::json!({"id": "contact", "action": "ghl.contacts.upsert", "status": if status == "failed" {"failed"} else {"completed"},
                "input": {"email": email, "firstName": "User"}, "output": {"id": format!("c{i}")}, "error": null, "attempts": 1, "duration_ms": 3,
                "rescued_by": null, "fallback_of": null});
            step.execute(rusqlite::params![id, record.to_string()])
                .unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
    println!(
        "store filled: {RUNS} runs, events and steps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    deep
}

fn main() {
    common::block_on(async {
        let dir =
            std::env::temp_dir().join(format!("patchbay-console-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("recipes")).unwrap();
        std::fs::write(
            dir.join("recipes/r.yaml"),
            "recipe: recipe-0\ntrigger: { every: 1h }\nsteps:\n  - id: keep\n    action: store.put\n    with: { namespace: n, key: k, value: v }\n",
        )
        .unwrap();
        let db = dir.join("store.db");
        // Migrated by the store itself, then filled directly.
        drop(
            patchbay::store::open(&format!("sqlite://{}", db.display()))
                .await
                .unwrap(),
        );
        let deep = fill(&db);
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(common::engine_bin("PATCHBAY_BENCH_BIN"))
            .args([
                "run",
                "--recipes",
                "recipes",
                "--store",
                "sqlite://store.db",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .current_dir(&dir)
            .env("PATCHBAY_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _engine = Killed(child);
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{admin}");
        let start = Instant::now();
        while client.get(format!("{base}/console/")).send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Ids to look at: a recent failed run, and a page deep in the past.
        let failed: serde_json::Value = client
            .get(format!("{base}/admin/dead-letters?limit=1"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let failed_id = failed["runs"][0]["id"].as_str().unwrap().to_string();
        let time = |path: String| {
            let client = client.clone();
            let url = format!("{base}{path}");
            async move {
                let mut times = Vec::new();
                for _ in 0..20 {
                    let t = Instant::now();
                    let r = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                    r.bytes().await.unwrap();
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(f64::total_cmp);
                (times[10], times[19])
            }
        };
        let files = ["/console/", "/console/app.js", "/console/app.css"];
        let pages: Vec<(&str, Vec<String>)> = vec![
            ("runs (newest 50)", vec!["/admin/runs?limit=50".into()]),
            (
                "runs, one recipe",
                vec!["/admin/runs?recipe=recipe-3&limit=50".into()],
            ),
            (
                "runs, failed",
                vec!["/admin/runs?status=failed&limit=50".into()],
            ),
            (
                "runs, text search in payloads",
                vec!["/admin/runs?q=user77777%40example&limit=50".into()],
            ),
            (
                "runs, a page 90,000 runs back",
                vec![format!("/admin/runs?limit=50&before={deep}")],
            ),
            ("run detail", vec![format!("/admin/runs/{failed_id}")]),
            ("dead letters", vec!["/admin/dead-letters?limit=200".into()]),
            ("deliveries", vec!["/admin/deliveries?limit=200".into()]),
            ("recipes", vec!["/admin/recipes".into()]),
            ("overview", vec!["/metrics".into()]),
        ];
        let mut file_total = 0.0;
        for f in files {
            let (median, worst) = time(f.to_string()).await;
            file_total += median;
            println!("{f}: median {median:.2} ms, worst {worst:.2} ms");
        }
        for (page, calls) in pages {
            let mut total = file_total;
            let mut each = Vec::new();
            for c in calls {
                let (median, worst) = time(c.clone()).await;
                total += median;
                each.push(format!("{c}: median {median:.2} ms, worst {worst:.2} ms"));
            }
            println!(
                "page {page}: {total:.2} ms in all (files + API, medians); {}",
                each.join("; ")
            );
        }
    });
}
