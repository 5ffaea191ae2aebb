//! Hot reload against the real binary: recipe files are added, changed,
//! renamed, deleted and saved the ways editors, `git` and Kubernetes save
//! them, in a temp folder, while the engine serves webhooks; the admin API
//! shows what serves, the emulator records which version each request came
//! from, and the store records which version each run was queued on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::emulator::ghl;
use patchbay::recipe::validate::version_of;
use patchbay::store::{RunFilter, RunState, RunSummary, Store};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "admin-token-for-tests";
const DEADLINE: Duration = Duration::from_secs(20);

mod common;
use common::{free_port, Killed};

/// A fresh folder for test `name`, with an empty `recipes` folder.
fn temp_dir(name: &str) -> PathBuf {
    let dir = common::fresh_dir(&format!("reload-{name}"));
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    dir
}

/// A recipe on the generic webhook of `inbound` whose request to HighLevel
/// carries `marker` (so the emulator tells which version sent it).
fn recipe(name: &str, marker: &str) -> String {
    format!(
        "recipe: {name}\ntrigger: {{ on: http.webhook, connection: inbound }}\nsteps:\n  - id: contact\n    action: ghl.contacts.upsert\n    connection: ghl-main\n    with: {{ email: \"{{{{ event.email }}}}\", source: \"{marker}\" }}\n"
    )
}

/// Two steps, so a run is still going when its file changes.
fn two_steps(name: &str, marker: &str) -> String {
    format!(
        "recipe: {name}\ntrigger: {{ on: http.webhook, connection: inbound }}\nsteps:\n  - id: first\n    action: ghl.contacts.upsert\n    connection: ghl-main\n    with: {{ email: \"{{{{ event.email }}}}\", source: \"first {marker}\" }}\n  - id: second\n    action: ghl.contacts.upsert\n    connection: ghl-main\n    with: {{ email: \"{{{{ event.email }}}}\", source: \"second {marker}\" }}\n"
    )
}

fn connections(g: &ghl::GhlEmulator, token_env: &str) -> String {
    format!(
        "inbound:\n  connector: http\n  webhook_auth: none\nghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: {token_env} }}\n  location_id: {}\n  rate_limits: [{{ requests: 100000, per: 1s }}]\n  concurrency: 64\n",
        g.base_url(),
        g.config().location_id,
    )
}

async fn emulator(token: &str) -> ghl::GhlEmulator {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ghl::start(ghl::GhlConfig {
        token: token.into(),
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap()
}

struct Engine {
    child: Killed,
    port: u16,
    admin: u16,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Engine {
    /// Starts `patchbay run` in `dir` (recipes in `recipes`, connections
    /// in `connections.yaml`) and waits until it serves.
    async fn start(dir: &Path, extra: &[&str]) -> Engine {
        let (port, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("engine.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args([
                "run",
                "--recipes",
                "recipes",
                "--connections",
                "connections.yaml",
            ])
            .args(["--store", "sqlite://store.db"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--reload-debounce", "50ms"])
            .args(extra)
            .current_dir(dir)
            .env("PATCHBAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PATCHBAY_LOG", "patchbay=info")
            .env("GHL_TOKEN", "pit-reload")
            .env("GHL_TOKEN_B", "pit-reload-b")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let e = Engine {
            child: Killed(child),
            port,
            admin,
            dir: dir.to_path_buf(),
            client: reqwest::Client::new(),
        };
        let start = Instant::now();
        loop {
            let up = e
                .client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up && e.try_status().await.is_some() {
                return e;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "engine did not come up: {}",
                e.log()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    async fn try_status(&self) -> Option<Value> {
        let r = self
            .client
            .get(self.admin_url("/admin/recipes"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn status(&self) -> Value {
        self.try_status().await.expect("admin answers")
    }

    /// Polls `/admin/recipes` until `ok` holds.
    async fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status().await;
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; status: {s:#}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `name` serves the version of `text`.
    async fn wait_serving(&self, name: &str, text: &str) -> Value {
        let v = version_of(text);
        self.wait_for(&format!("{name} at {v}"), |s| {
            recipe_of(s, name).is_some_and(|r| r["version"] == v)
        })
        .await
    }

    async fn wait_gone(&self, name: &str) -> Value {
        self.wait_for(&format!("{name} removed"), |s| recipe_of(s, name).is_none())
            .await
    }

    /// Posts one event to `/hooks/inbound`; the status code.
    async fn post(&self, email: &str) -> u16 {
        self.client
            .post(format!("http://127.0.0.1:{}/hooks/inbound", self.port))
            .header("content-type", "application/json")
            .body(json!({ "email": email }).to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn store(&self) -> Arc<dyn Store> {
        patchbay::store::open(&format!("sqlite://{}", self.dir.join("store.db").display()))
            .await
            .unwrap()
    }

    /// Waits until `n` runs exist and none is queued or running.
    async fn settle(&self, n: usize) -> Vec<RunSummary> {
        let settled = |runs: &[RunSummary]| {
            let busy = runs
                .iter()
                .any(|r| matches!(r.status, RunState::Queued | RunState::Running));
            (runs.len() >= n && !busy)
                .then_some(())
                .ok_or_else(|| format!("{} runs, busy: {busy}", runs.len()))
        };
        let log = || format!("log:\n{}", self.log());
        common::wait_for_runs(&self.dir.join("store.db"), settled, log).await
    }
}

fn recipe_of<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["recipes"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

/// The `source` markers the emulator received for one email, in order.
fn markers(g: &ghl::GhlEmulator, email: &str) -> Vec<String> {
    g.requests()
        .iter()
        .filter(|r| r.path == "/contacts/upsert" && r.body["email"] == email)
        .map(|r| r.body["source"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Writes a file the way editors that save atomically do: a temp file
/// next to it, then a rename over it.
fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        path.file_name().unwrap().to_str().unwrap(),
        rand::random::<u32>()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start_dir(name: &str, g: &ghl::GhlEmulator, files: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir(name);
    std::fs::write(dir.join("connections.yaml"), connections(g, "GHL_TOKEN")).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join("recipes").join(f), text).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_an_invalid_recipe_is_reported_once_and_the_valid_ones_serve() {
    let g = emulator("pit-reload").await;
    let good = recipe("alpha", "v1");
    let bad = recipe("beta", "v1").replace("ghl.contacts.upsert", "ghl.contact.upsert");
    let dir = start_dir(
        "start-invalid",
        &g,
        &[("alpha.yaml", &good), ("beta.yaml", &bad)],
    );
    let port = free_port();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args(["run", "--recipes", "recipes"])
            .args([
                "--connections",
                "connections.yaml",
                "--store",
                "sqlite://store.db",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(&dir)
            .env("GHL_TOKEN", "pit-reload")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // Everything printed up to the list of recipes serving. The pipe is
    // drained to the end: closing it early would make the engine's next
    // line to stdout fail (a broken pipe) and stop it.
    let (lines, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            let _ = lines.send(line);
        }
    });
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        while let Ok(line) = rx.recv() {
            let last = line.starts_with("recipes:");
            out.push(line);
            if last {
                break;
            }
        }
        out.join("\n")
    });
    let out = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the engine started")
        .unwrap();
    // Ready within moments of the start line (a loaded machine may take a
    // few scheduler turns to run the listener's task).
    let mut served = String::new();
    for _ in 0..50 {
        match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            Ok(r) if r.status().is_success() => {
                served.clear();
                break;
            }
            Ok(r) => served = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => served = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(child);
    assert_eq!(
        out.matches("error[unknown-operation]").count(),
        1,
        "the bad file is reported once:\n{out}"
    );
    assert!(out.contains("--> recipes/beta.yaml:5:13"), "{out}");
    assert!(out.contains("patchbay listening on"), "{out}");
    assert!(
        out.ends_with("recipes: alpha"),
        "only the valid recipe serves:\n{out}"
    );
    assert!(served.is_empty(), "/readyz: {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_added_changed_saved_atomically_renamed_and_deleted() {
    let g = emulator("pit-reload").await;
    let a1 = recipe("alpha", "alpha v1");
    let dir = start_dir("files", &g, &[("alpha.yaml", &a1)]);
    let e = Engine::start(&dir, &[]).await;
    let s = e.wait_serving("alpha", &a1).await;
    let alpha = recipe_of(&s, "alpha").unwrap();
    assert_eq!(alpha["file"], "recipes/alpha.yaml");
    assert!(alpha["loaded_at"].as_str().is_some());
    assert_eq!(e.post("e1@example.com").await, 200);

    // Added.
    let b1 = recipe("beta", "beta v1");
    std::fs::write(dir.join("recipes/beta.yaml"), &b1).unwrap();
    let s = e.wait_serving("beta", &b1).await;
    assert_eq!(s["last_reload"]["added"], json!(["beta"]), "{s:#}");
    assert_eq!(e.post("e2@example.com").await, 200);

    // Changed in place (truncate, then write).
    let a2 = recipe("alpha", "alpha v2");
    std::fs::write(dir.join("recipes/alpha.yaml"), &a2).unwrap();
    e.wait_serving("alpha", &a2).await;
    assert_eq!(e.post("e3@example.com").await, 200);

    // Saved atomically, with an editor's swap and backup files around it
    // (not recipes, and not valid YAML either: they must be ignored).
    std::fs::write(dir.join("recipes/.alpha.yaml.swp"), "\u{0}binary swap").unwrap();
    std::fs::write(dir.join("recipes/alpha.yaml~"), "recipe: [broken").unwrap();
    std::fs::write(dir.join("recipes/4913"), "").unwrap();
    let a3 = recipe("alpha", "alpha v3");
    atomic_write(&dir.join("recipes/alpha.yaml"), &a3);
    let s = e.wait_serving("alpha", &a3).await;
    assert_eq!(s["rejected"], json!([]), "{s:#}");
    let _ = std::fs::remove_file(dir.join("recipes/4913"));
    assert_eq!(e.post("e4@example.com").await, 200);

    // Renamed: same recipe, new file.
    std::fs::rename(
        dir.join("recipes/beta.yaml"),
        dir.join("recipes/gamma.yaml"),
    )
    .unwrap();
    e.wait_for("beta from gamma.yaml", |s| {
        recipe_of(s, "beta").is_some_and(|r| r["file"] == "recipes/gamma.yaml")
    })
    .await;
    assert_eq!(e.post("e5@example.com").await, 200);

    // Deleted: it stops taking events.
    std::fs::remove_file(dir.join("recipes/gamma.yaml")).unwrap();
    let s = e.wait_gone("beta").await;
    assert_eq!(s["last_reload"]["removed"], json!(["beta"]), "{s:#}");
    assert_eq!(e.post("e6@example.com").await, 200);

    let runs = e.settle(10).await;
    assert!(runs.iter().all(|r| r.status == RunState::Completed));
    assert_eq!(runs.len(), 10, "1 + 2 + 2 + 2 + 2 + 1 runs");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(markers(&g, "e1@example.com"), ["alpha v1"]);
    assert_eq!(
        sorted(markers(&g, "e2@example.com")),
        ["alpha v1", "beta v1"]
    );
    assert_eq!(
        sorted(markers(&g, "e3@example.com")),
        ["alpha v2", "beta v1"]
    );
    assert_eq!(
        sorted(markers(&g, "e4@example.com")),
        ["alpha v3", "beta v1"]
    );
    assert_eq!(
        sorted(markers(&g, "e5@example.com")),
        ["alpha v3", "beta v1"]
    );
    assert_eq!(markers(&g, "e6@example.com"), ["alpha v3"]);
    let log = e.log();
    assert!(log.contains("recipes reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_old_version_serving_until_fixed() {
    let g = emulator("pit-reload").await;
    let v1 = recipe("alpha", "alpha v1");
    let dir = start_dir("invalid", &g, &[("alpha.yaml", &v1)]);
    let e = Engine::start(&dir, &[]).await;
    e.wait_serving("alpha", &v1).await;

    // A typo in the operation: rejected with file:line:col diagnostics.
    let broken = v1.replace("ghl.contacts.upsert", "ghl.contact.upsert");
    std::fs::write(dir.join("recipes/alpha.yaml"), &broken).unwrap();
    let s = e
        .wait_for("the rejection", |s| {
            s["rejected"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    let diag = s["rejected"][0]["diagnostics"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        diag.starts_with("recipes/alpha.yaml:5:13: error[unknown-operation]"),
        "{diag}"
    );
    assert!(diag.contains("did you mean"), "{diag}");
    let alpha = recipe_of(&s, "alpha").unwrap();
    assert_eq!(
        alpha["version"],
        version_of(&v1),
        "the old version keeps serving"
    );
    assert_eq!(alpha["last_error"]["diagnostics"][0], diag);
    assert_eq!(s["last_reload"]["result"], "rejected");
    assert_eq!(e.post("during@example.com").await, 200);

    // The metrics and `patchbay status` say the same.
    let metrics = e
        .client
        .get(e.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("patchbay_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patchbay_recipe_files_rejected 1"),
        "{metrics}"
    );
    // Backpressure shows too: nothing is queued behind the workers here.
    for line in [
        "patchbay_backlog_runs 0",
        "patchbay_claimed_runs_waiting 0",
        "patchbay_deliveries_delayed_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "status",
            "--admin",
            &e.admin_url(""),
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&version_of(&v1)), "{text}");
    assert!(text.contains(&diag), "{text}");
    assert!(text.contains("previous version running"), "{text}");

    // The fix serves.
    let v2 = recipe("alpha", "alpha v2");
    std::fs::write(dir.join("recipes/alpha.yaml"), &v2).unwrap();
    let s = e.wait_serving("alpha", &v2).await;
    assert_eq!(s["rejected"], json!([]));
    assert!(recipe_of(&s, "alpha").unwrap()["last_error"].is_null());
    assert_eq!(e.post("fixed@example.com").await, 200);
    e.settle(2).await;
    assert_eq!(markers(&g, "during@example.com"), ["alpha v1"]);
    assert_eq!(markers(&g, "fixed@example.com"), ["alpha v2"]);

    // A new file that reuses an active name is the one rejected.
    std::fs::write(dir.join("recipes/copy.yaml"), recipe("alpha", "copy")).unwrap();
    let s = e
        .wait_for("the duplicate", |s| {
            s["rejected"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    assert_eq!(s["rejected"][0]["file"], "recipes/copy.yaml");
    assert!(s["rejected"][0]["diagnostics"][0]
        .as_str()
        .unwrap()
        .contains("duplicate-recipe"));
    assert_eq!(recipe_of(&s, "alpha").unwrap()["version"], version_of(&v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_wants_its_token_and_reloads_on_request_and_sighup() {
    let g = emulator("pit-reload").await;
    let v1 = recipe("alpha", "alpha v1");
    let dir = start_dir("admin", &g, &[("alpha.yaml", &v1)]);
    let e = Engine::start(&dir, &[]).await;

    for path in ["/admin/recipes", "/metrics"] {
        let r = e.client.get(e.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let r = e
            .client
            .get(e.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = e
        .client
        .post(e.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Not on the public listener.
    let r = e
        .client
        .get(format!("http://127.0.0.1:{}/admin/recipes", e.port))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    let r = e
        .client
        .post(e.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["trigger"], "admin");
    assert_eq!(report["result"], "ok");

    // The listen address and the store only change with a restart.
    for (body, what) in [
        (json!({"listen": "0.0.0.0:9999"}), "the listen address"),
        (json!({"store": "sqlite://elsewhere.db"}), "the store URL"),
    ] {
        let r = e
            .client
            .post(e.admin_url("/admin/reload"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409);
        let b: Value = r.json().await.unwrap();
        let msg = b["error"].as_str().unwrap();
        assert!(msg.starts_with(what) && msg.contains("restart"), "{msg}");
    }

    let pid = e.child.0.id().to_string();
    // The shell's own `kill`, so no procps is needed.
    assert!(Command::new("sh")
        .args(["-c", &format!("kill -HUP {pid}")])
        .status()
        .unwrap()
        .success());
    e.wait_for("a SIGHUP reload", |s| {
        s["last_reload"]["trigger"] == "signal"
    })
    .await;
    // Still serving after all that.
    assert_eq!(e.post("after@example.com").await, 200);
    e.settle(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap() {
    let g = emulator("pit-reload").await;
    let dir = start_dir("configmap", &g, &[]);
    let r = dir.join("recipes");
    // The layout a ConfigMap volume has: timestamped folders, `..data`
    // pointing at the current one, and one symlink per key through it.
    let a1 = recipe("alpha", "alpha v1");
    std::fs::create_dir(r.join("..2026_11_27_01")).unwrap();
    std::fs::write(r.join("..2026_11_27_01/alpha.yaml"), &a1).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_01", r.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/alpha.yaml", r.join("alpha.yaml")).unwrap();
    let e = Engine::start(&dir, &[]).await;
    let s = e.wait_serving("alpha", &a1).await;
    assert_eq!(s["recipes"].as_array().unwrap().len(), 1, "{s:#}");

    // The kubelet's update: a new folder, `..data_tmp` renamed over `..data`.
    let a2 = recipe("alpha", "alpha v2");
    let b1 = recipe("beta", "beta v1");
    std::fs::create_dir(r.join("..2026_11_27_02")).unwrap();
    std::fs::write(r.join("..2026_11_27_02/alpha.yaml"), &a2).unwrap();
    std::fs::write(r.join("..2026_11_27_02/beta.yaml"), &b1).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_02", r.join("..data_tmp")).unwrap();
    std::fs::rename(r.join("..data_tmp"), r.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/beta.yaml", r.join("beta.yaml")).unwrap();
    std::fs::remove_dir_all(r.join("..2026_11_27_01")).unwrap();
    e.wait_serving("alpha", &a2).await;
    let s = e.wait_serving("beta", &b1).await;
    assert_eq!(s["rejected"], json!([]), "{s:#}");
    assert_eq!(e.post("k8s@example.com").await, 200);
    e.settle(2).await;
    let mut m = markers(&g, "k8s@example.com");
    m.sort();
    assert_eq!(m, ["alpha v2", "beta v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_folder_replaced_like_a_checkout() {
    let g = emulator("pit-reload").await;
    let a1 = recipe("alpha", "alpha v1");
    let b1 = recipe("beta", "beta v1");
    let dir = start_dir("checkout", &g, &[("alpha.yaml", &a1), ("beta.yaml", &b1)]);
    std::fs::create_dir(dir.join("recipes/team")).unwrap();
    let e = Engine::start(&dir, &[]).await;
    e.wait_serving("beta", &b1).await;

    // A checkout of another branch: many files at once, in a subfolder too.
    let a2 = recipe("alpha", "alpha v2");
    let c1 = recipe("gamma", "gamma v1");
    std::fs::remove_file(dir.join("recipes/beta.yaml")).unwrap();
    std::fs::write(dir.join("recipes/alpha.yaml"), &a2).unwrap();
    std::fs::write(dir.join("recipes/team/gamma.yaml"), &c1).unwrap();
    e.wait_serving("alpha", &a2).await;
    e.wait_serving("gamma", &c1).await;
    e.wait_gone("beta").await;

    // The folder itself swapped for another one (deploy by rename).
    let next = dir.join("recipes.next");
    std::fs::create_dir(&next).unwrap();
    let a3 = recipe("alpha", "alpha v3");
    let d1 = recipe("delta", "delta v1");
    std::fs::write(next.join("alpha.yaml"), &a3).unwrap();
    std::fs::write(next.join("delta.yaml"), &d1).unwrap();
    std::fs::rename(dir.join("recipes"), dir.join("recipes.old")).unwrap();
    std::fs::rename(&next, dir.join("recipes")).unwrap();
    e.wait_serving("alpha", &a3).await;
    e.wait_serving("delta", &d1).await;
    let s = e.wait_gone("gamma").await;
    assert_eq!(s["recipes"].as_array().unwrap().len(), 2, "{s:#}");

    // The new folder is watched, not the old one.
    let a4 = recipe("alpha", "alpha v4");
    std::fs::write(dir.join("recipes.old/alpha.yaml"), recipe("alpha", "stale")).unwrap();
    std::fs::write(dir.join("recipes/alpha.yaml"), &a4).unwrap();
    e.wait_serving("alpha", &a4).await;
    assert_eq!(e.post("checkout@example.com").await, 200);
    e.settle(2).await;
    let mut m = markers(&g, "checkout@example.com");
    m.sort();
    assert_eq!(m, ["alpha v4", "delta v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_connections_file_applies_to_new_requests() {
    let a = emulator("pit-reload").await;
    let b = emulator("pit-reload-b").await;
    let v1 = recipe("alpha", "alpha v1");
    let dir = start_dir("connections", &a, &[("alpha.yaml", &v1)]);
    let e = Engine::start(&dir, &[]).await;
    e.wait_serving("alpha", &v1).await;
    assert_eq!(e.post("one@example.com").await, 200);
    e.settle(1).await;
    assert_eq!(markers(&a, "one@example.com"), ["alpha v1"]);

    // New base URL and a rotated token (another variable), saved atomically.
    atomic_write(
        &dir.join("connections.yaml"),
        &connections(&b, "GHL_TOKEN_B"),
    );
    let s = e
        .wait_for("the new connection", |s| {
            s["last_reload"]["connections"] == json!(["ghl-main"])
        })
        .await;
    assert_eq!(s["last_reload"]["result"], "ok", "{s:#}");
    assert_eq!(e.post("two@example.com").await, 200);
    let runs = e.settle(2).await;
    assert!(
        runs.iter().all(|r| r.status == RunState::Completed),
        "{runs:?}"
    );
    assert!(markers(&a, "two@example.com").is_empty());
    assert_eq!(markers(&b, "two@example.com"), ["alpha v1"]);
    let sent = b.requests();
    let last = sent
        .iter()
        .rev()
        .find(|r| r.path == "/contacts/upsert")
        .unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer pit-reload-b"));
    assert_eq!(last.status, 200);

    // A broken connections file is rejected; the current one stays.
    std::fs::write(
        dir.join("connections.yaml"),
        "ghl-main:\n  connector: ghl\n  tokn: x\n",
    )
    .unwrap();
    let s = e
        .wait_for("the rejected connections file", |s| {
            s["rejected"]
                .as_array()
                .is_some_and(|r| r.iter().any(|f| f["file"] == "connections.yaml"))
        })
        .await;
    assert_eq!(s["last_reload"]["result"], "rejected");
    assert_eq!(e.post("three@example.com").await, 200);
    e.settle(3).await;
    assert_eq!(markers(&b, "three@example.com"), ["alpha v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_run_finishes_on_the_version_it_started_on() {
    let g = emulator("pit-reload").await;
    let v1 = two_steps("slow", "v1");
    let dir = start_dir("inflight", &g, &[("slow.yaml", &v1)]);
    let e = Engine::start(&dir, &[]).await;
    e.wait_serving("slow", &v1).await;
    g.control().set_latency(Duration::from_millis(700));

    assert_eq!(e.post("first@example.com").await, 200);
    // Wait until the run is under way (its first step is in flight).
    let store = e.store().await;
    let start = Instant::now();
    while !store
        .runs(RunFilter {
            status: Some(RunState::Running),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .any(|r| r.recipe == "slow")
    {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v2 = two_steps("slow", "v2");
    std::fs::write(dir.join("recipes/slow.yaml"), &v2).unwrap();
    e.wait_serving("slow", &v2).await;
    assert_eq!(e.post("second@example.com").await, 200);

    let runs = e.settle(2).await;
    g.control().set_latency(Duration::ZERO);
    assert!(
        runs.iter().all(|r| r.status == RunState::Completed),
        "{runs:?}"
    );
    // Both steps of the first run were sent from v1, though the second
    // was sent after v2 was serving.
    assert_eq!(markers(&g, "first@example.com"), ["first v1", "second v1"]);
    assert_eq!(markers(&g, "second@example.com"), ["first v2", "second v2"]);
    let mut versions: Vec<&str> = runs.iter().map(|r| r.recipe_version.as_str()).collect();
    versions.sort();
    let mut want = vec![version_of(&v1), version_of(&v2)];
    want.sort();
    assert_eq!(versions, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_of_a_deleted_recipe_run_on_their_version() {
    let g = emulator("pit-reload").await;
    let v1 = recipe("doomed", "doomed v1");
    let dir = start_dir("deleted", &g, &[("doomed.yaml", &v1)]);
    let e = Engine::start(&dir, &["--workers", "1"]).await;
    e.wait_serving("doomed", &v1).await;
    g.control().set_latency(Duration::from_millis(150));
    for i in 0..5 {
        assert_eq!(e.post(&format!("q{i}@example.com")).await, 200);
    }
    std::fs::remove_file(dir.join("recipes/doomed.yaml")).unwrap();
    e.wait_gone("doomed").await;
    // A deleted recipe takes no new events...
    let r = e
        .client
        .post(format!("http://127.0.0.1:{}/hooks/inbound", e.port))
        .body(json!({"email": "late@example.com"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // ...and what it had queued runs on its last version.
    let runs = e.settle(5).await;
    g.control().set_latency(Duration::ZERO);
    assert_eq!(runs.len(), 5);
    for r in &runs {
        assert_eq!(r.status, RunState::Completed, "{r:?}");
        assert_eq!(r.recipe_version, version_of(&v1));
    }
    for i in 0..5 {
        assert_eq!(markers(&g, &format!("q{i}@example.com")), ["doomed v1"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_changes_while_events_stream() {
    const CHANGES: usize = 200;
    let g = emulator("pit-reload").await;
    let text = |i: usize| recipe("soak", &format!("soak m{i}"));
    let dir = start_dir("soak", &g, &[("soak.yaml", &text(0))]);
    let e = Arc::new(Engine::start(&dir, &[]).await);
    e.wait_serving("soak", &text(0)).await;
    let markers_by_version: HashMap<String, String> = (0..=CHANGES)
        .map(|i| (version_of(&text(i)), format!("soak m{i}")))
        .collect();

    let index_by_version: HashMap<String, usize> =
        (0..=CHANGES).map(|i| (version_of(&text(i)), i)).collect();
    // The newest change known to serve, and the newest one written.
    let serving = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));

    // Events stream from another task the whole time; each remembers which
    // versions could have been serving while it was accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (e, stop) = (e.clone(), stop.clone());
        let (serving, written) = (serving.clone(), written.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let email = format!("s{i}@example.com");
                let lo = serving.load(Ordering::SeqCst);
                assert_eq!(e.post(&email).await, 200);
                let hi = written.load(Ordering::SeqCst);
                sent.push((email, lo, hi));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };
    let started = Instant::now();
    for i in 1..=CHANGES {
        let path = dir.join("recipes/soak.yaml");
        written.store(i, Ordering::SeqCst);
        if i % 2 == 0 {
            atomic_write(&path, &text(i));
        } else {
            std::fs::write(&path, text(i)).unwrap();
        }
        e.wait_serving("soak", &text(i)).await;
        serving.store(i, Ordering::SeqCst);
    }
    let reload_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    let runs = e.settle(sent.len()).await;
    eprintln!(
        "soak: {CHANGES} changes in {:.1}s, {} events",
        reload_time.as_secs_f64(),
        sent.len()
    );

    // Every event: exactly one run, completed, one request whose marker is
    // the content of the version the run recorded.
    assert_eq!(runs.len(), sent.len(), "an event lost or run twice");
    let requests = g.requests();
    let mut by_email: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in requests.iter().filter(|r| r.path == "/contacts/upsert") {
        by_email
            .entry(r.body["email"].as_str().unwrap())
            .or_default()
            .push(r.body["source"].as_str().unwrap());
    }
    let mut versions_seen = HashSet::new();
    for run in &runs {
        assert_eq!(run.status, RunState::Completed, "{run:?}");
        versions_seen.insert(run.recipe_version.clone());
    }
    let emails_by_run = event_emails(&dir).await;
    let window: HashMap<&str, (usize, usize)> = sent
        .iter()
        .map(|(e, lo, hi)| (e.as_str(), (*lo, *hi)))
        .collect();
    for run in &runs {
        let email = &emails_by_run[run.event_id.as_str()];
        // The version recorded is one that was serving while it was accepted.
        let (lo, hi) = window[email.as_str()];
        let idx = index_by_version[&run.recipe_version];
        assert!(
            (lo..=hi).contains(&idx),
            "event {email} accepted while versions {lo}..={hi} served, recorded {idx}"
        );
        let want = markers_by_version
            .get(&run.recipe_version)
            .unwrap_or_else(|| {
                panic!(
                    "run {} recorded unknown version {}",
                    run.id, run.recipe_version
                )
            });
        assert_eq!(
            by_email.get(email.as_str()).cloned().unwrap_or_default(),
            vec![want.as_str()],
            "event {email}"
        );
    }
    let unique: HashSet<&String> = sent.iter().map(|(e, _, _)| e).collect();
    assert_eq!(unique.len(), sent.len());
    assert!(
        versions_seen.len() > 10,
        "events spread over only {} versions",
        versions_seen.len()
    );
    let s = e.status().await;
    assert_eq!(s["rejected"], json!([]), "{s:#}");
}

/// Event id -> the email it carried, read from the store file.
async fn event_emails(dir: &Path) -> HashMap<String, String> {
    use sqlx::Row;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("store.db").display()))
        .await
        .unwrap();
    let rows = sqlx::query("SELECT id, payload FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let payload: Value =
                serde_json::from_str(&r.try_get::<String, _>("payload").unwrap()).unwrap();
            (
                r.try_get::<String, _>("id").unwrap(),
                payload["email"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The `x-catalog` header of the HighLevel upserts for one email, in order.
fn catalog_marks(g: &ghl::GhlEmulator, email: &str) -> Vec<Option<String>> {
    g.requests()
        .iter()
        .filter(|r| r.path == "/contacts/upsert" && r.body["email"] == email)
        .map(|r| r.header("x-catalog").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_connector_applies_without_restart_and_one_that_breaks_a_recipe_is_rejected() {
    let g = emulator("pit-reload").await;
    let v1 = recipe("alpha", "alpha v1");
    let dir = start_dir("catalog", &g, &[("alpha.yaml", &v1)]);
    let ghl_yaml = include_str!("../src/catalog/connectors/ghl.yaml");
    let version = "headers:\n  Version: \"2021-07-28\"\n";
    assert!(ghl_yaml.contains(version));
    let with_header =
        |mark: &str| ghl_yaml.replace(version, &format!("{version}  X-Catalog: {mark}\n"));
    std::fs::create_dir(dir.join("catalog")).unwrap();
    std::fs::write(dir.join("catalog/ghl.yaml"), with_header("one")).unwrap();
    let e = Engine::start(&dir, &["--catalog", "catalog"]).await;
    e.wait_serving("alpha", &v1).await;
    assert_eq!(e.status().await["rejected"], json!([]));
    assert_eq!(e.post("c1@example.com").await, 200);
    e.settle(1).await;
    assert_eq!(catalog_marks(&g, "c1@example.com"), [Some("one".into())]);

    // A changed connector serves the next event, without a restart.
    atomic_write(&dir.join("catalog/ghl.yaml"), &with_header("two"));
    e.wait_for("the catalog applied", |s| {
        s["last_reload"]["catalog"] == true
    })
    .await;
    assert_eq!(e.post("c2@example.com").await, 200);
    e.settle(2).await;
    assert_eq!(catalog_marks(&g, "c2@example.com"), [Some("two".into())]);

    // Renaming the operation alpha uses would break it: rejected, with
    // alpha's line and column, and the previous catalog keeps serving.
    let broken =
        with_header("three").replace("\n  contacts.upsert:\n", "\n  contacts.upsert_v2:\n");
    assert_ne!(broken, with_header("three"));
    atomic_write(&dir.join("catalog/ghl.yaml"), &broken);
    let s = e
        .wait_for("the catalog rejection", |s| {
            s["rejected"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
    assert_eq!(s["rejected"][0]["file"], "catalog");
    let diags: Vec<&str> = s["rejected"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        diags[0].contains("catalog-breaks-recipes") && diags[0].contains("`alpha`"),
        "{diags:?}"
    );
    assert!(
        diags
            .iter()
            .any(|d| d.starts_with("recipes/alpha.yaml:5:13: error[unknown-operation]")),
        "{diags:?}"
    );
    assert!(recipe_of(&s, "alpha").is_some());
    assert_eq!(e.post("c3@example.com").await, 200);
    e.settle(3).await;
    assert_eq!(catalog_marks(&g, "c3@example.com"), [Some("two".into())]);

    // Recipes still reload meanwhile, against the catalog that serves.
    let v2 = recipe("alpha", "alpha v2");
    std::fs::write(dir.join("recipes/alpha.yaml"), &v2).unwrap();
    e.wait_serving("alpha", &v2).await;
    // Fixed: the rejection goes and the new catalog applies.
    atomic_write(&dir.join("catalog/ghl.yaml"), &with_header("three"));
    e.wait_for("the catalog back", |s| s["rejected"] == json!([]))
        .await;
    assert_eq!(e.post("c4@example.com").await, 200);
    e.settle(4).await;
    assert_eq!(catalog_marks(&g, "c4@example.com"), [Some("three".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_keeps_unchanged_connections_and_rebuilds_changed_ones() {
    use patchbay::catalog::Catalog;
    use patchbay::connections::ResolvedConnection;
    use patchbay::connectors::native::MemoryStore;
    use patchbay::connectors::Runtime;

    let a = emulator("pit-a").await;
    let b = emulator("pit-b").await;
    let conn = |g: &ghl::GhlEmulator, token: &str| {
        ResolvedConnection::from_values(
            "ghl-main",
            "ghl",
            &[
                ("base_url", &g.base_url(), false),
                ("token", token, true),
                ("location_id", &g.config().location_id, false),
            ],
        )
    };
    let store = Arc::new(MemoryStore::default());
    let catalog = Catalog::builtin();
    let rt = Runtime::new(
        catalog.clone(),
        vec![conn(&a, "pit-a")],
        store.clone(),
        store,
    );
    let op = catalog.op("ghl.contacts.upsert").unwrap();
    let input = |email: &str| json!({"email": email}).as_object().unwrap().clone();
    rt.call(&op, Some("ghl-main"), &input("a@example.com"), None)
        .await
        .unwrap();
    // Same values: the live state (limiter, slots, token cache) is kept.
    assert!(rt.set_connections(vec![conn(&a, "pit-a")]).is_empty());
    // A new base URL and token: rebuilt, and the next call uses them.
    assert_eq!(rt.set_connections(vec![conn(&b, "pit-b")]), ["ghl-main"]);
    rt.call(&op, Some("ghl-main"), &input("b@example.com"), None)
        .await
        .unwrap();
    assert_eq!(markers(&a, "b@example.com").len(), 0);
    assert_eq!(
        b.requests().last().unwrap().header("authorization"),
        Some("Bearer pit-b")
    );
    // Removed: calls fail clearly.
    assert_eq!(rt.set_connections(vec![]), ["ghl-main"]);
    let err = rt
        .call(&op, Some("ghl-main"), &input("c@example.com"), None)
        .await
        .unwrap_err();
    assert!(
        err.error
            .message
            .contains("no `ghl` connection named `ghl-main`"),
        "{}",
        err.error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_queued_runs_still_run_on_their_version_from_the_store() {
    let g = emulator("pit-reload").await;
    let v1 = recipe("alpha", "alpha v1");
    let dir = start_dir("restart", &g, &[("alpha.yaml", &v1)]);
    let args = ["--workers", "1", "--lease", "1s"];
    let e = Engine::start(&dir, &args).await;
    e.wait_serving("alpha", &v1).await;
    g.control().set_latency(Duration::from_millis(300));
    for i in 0..4 {
        assert_eq!(e.post(&format!("r{i}@example.com")).await, 200);
    }
    // Killed with runs queued; the file changes while it is down.
    drop(e);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = g
        .requests()
        .iter()
        .filter(|r| r.path == "/contacts/upsert")
        .count();
    assert!(before < 4, "the runs were to be left queued");
    let v2 = recipe("alpha", "alpha v2");
    std::fs::write(dir.join("recipes/alpha.yaml"), &v2).unwrap();
    g.control().set_latency(Duration::ZERO);
    let e = Engine::start(&dir, &args).await;
    e.wait_serving("alpha", &v2).await;
    assert_eq!(e.post("new@example.com").await, 200);
    let runs = e.settle(5).await;
    for r in &runs {
        assert_eq!(r.status, RunState::Completed, "{r:?}");
    }
    for i in 0..4 {
        let m = markers(&g, &format!("r{i}@example.com"));
        assert!(!m.is_empty(), "r{i}");
        // A step in flight at the kill may have been sent twice; every
        // request came from v1.
        assert!(m.iter().all(|m| m == "alpha v1"), "r{i}: {m:?}");
    }
    assert_eq!(markers(&g, "new@example.com"), ["alpha v2"]);
}
