//! The web console in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed here with apt-get when missing), driven
//! over the WebDriver protocol, against a running engine and the
//! emulators: sign in, see a delivery's run appear and its step's request,
//! see a failure become a dead letter and replay it, and render a mapping
//! preview. Screenshots go to `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use patchbay::emulator::{ghl, sendpulse, Fault};
use serde_json::{json, Value};

mod common;
use common::{free_port, wait_ready, Killed};

const WEBHOOK_TOKEN: &str = "console-webhook-token";
const ADMIN_TOKEN: &str = "console-admin-token";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

const RECIPE: &str = r#"
recipe: subscriber
trigger: { on: sendpulse.subscriber.added, connection: sendpulse-main }
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with: { email: "{{ event.email }}", firstName: "{{ event.variables.name }}" }
"#;

/// `chromedriver`, installed with apt-get if it is missing; `None` (the
/// test is skipped, saying why) where it cannot be installed.
fn chromedriver() -> Option<PathBuf> {
    let found = |name: &str| {
        ["/usr/bin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    if let (Some(d), Some(_)) = (found("chromedriver"), found("chromium")) {
        return Some(d);
    }
    eprintln!("installing chromium and chromium-driver with apt-get…");
    let ok = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed =
        ok(&["update", "-qq"]) && ok(&["install", "-y", "-qq", "chromium", "chromium-driver"]);
    match (installed, found("chromedriver"), found("chromium")) {
        (true, Some(d), Some(_)) => Some(d),
        _ => {
            eprintln!("SKIPPED: Chromium and chromedriver could not be installed (apt-get install chromium chromium-driver failed); the console's browser test did not run");
            None
        }
    }
}

/// A WebDriver session of headless Chromium.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Killed,
    shots: PathBuf,
}

impl Browser {
    async fn start(driver: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http.get(format!("{url}/status")).send().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session: Value = http
            .post(format!("{url}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
                }
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"));
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            base: format!("{url}/session/{id}"),
            http,
            _driver: Killed(child),
            shots,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The element once `css` matches one whose text contains `text`.
    async fn wait_for(&self, css: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let found = self
                .script(
                    "const [css, text] = arguments; const e = [...document.querySelectorAll(css)].find(e => e.textContent.includes(text)); \
                     if (!e) return null; e.setAttribute('data-found', '1'); return e.textContent;",
                    json!([css, text]),
                )
                .await;
            if let Some(t) = found.as_str() {
                return t.to_string();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let page = self
                    .script("return document.body.innerText", json!([]))
                    .await;
                self.screenshot("failure").await;
                panic!("no `{css}` with `{text}` on the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap_or_default();
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_runs_replays_dead_letters_and_previews_mappings_in_chromium() {
    let Some(driver) = chromedriver() else { return };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let g = ghl::start(ghl::GhlConfig {
        token: "pit-console".into(),
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let s = sendpulse::start(Default::default()).await.unwrap();
    let dir = common::fresh_dir("console");
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("recipes/subscriber.yaml"), RECIPE).unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n  webhook_token: {{ env: WEBHOOK_TOKEN }}\n",
            g.base_url(),
            g.config().location_id,
            s.base_url(),
            s.config().client_id,
        ),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
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
        .current_dir(&dir)
        .env("GHL_TOKEN", "pit-console")
        .env("SP_SECRET", &s.config().client_secret)
        .env("WEBHOOK_TOKEN", WEBHOOK_TOKEN)
        .env("PATCHBAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("engine.log")).unwrap())
        .spawn()
        .unwrap();
    let _engine = Killed(child);
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let deliver = |email: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("http://127.0.0.1:{port}/hooks/sendpulse-main?token={WEBHOOK_TOKEN}"))
                .json(&json!([{"event": "new_emails", "book_id": "490686", "email": email, "timestamp": "1", "variables": {"name": "Ada Lovelace"}}]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };

    let b = Browser::start(&driver).await;
    let console = format!("http://127.0.0.1:{admin}/console/");
    // Sign in once; the token lives in the tab's session storage.
    b.goto(&console).await;
    b.wait_for("#login", "Sign in").await;
    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("#login button").await;
    b.wait_for("#nav", "Runs").await;
    let url = b.call("GET", "/url", json!({})).await;
    assert!(
        !url.as_str().unwrap().contains(ADMIN_TOKEN),
        "the token is in the URL: {url}"
    );

    // A delivery's run appears in the live list; its page shows the request.
    b.goto(&format!("{console}#/runs")).await;
    deliver("ada@example.com").await;
    b.wait_for("[data-testid=runs] tr[data-run]", "subscriber")
        .await;
    b.wait_for("[data-testid=runs] .badge", "completed").await;
    b.screenshot("runs").await;
    b.click("[data-testid=runs] tr[data-run] a").await;
    b.wait_for("[data-testid=step-request]", "ada@example.com")
        .await;
    b.wait_for("[data-testid=timeline] .badge", "completed")
        .await;
    b.screenshot("run").await;

    // A failing API makes a dead letter; replay makes it complete.
    g.control().inject(
        Fault::Status(
            400,
            json!({"statusCode": 400, "message": "The email is blocked"}),
        ),
        1,
    );
    deliver("blocked@example.com").await;
    // Once the run has failed (asked through the admin API), the page lists it.
    let start = Instant::now();
    loop {
        let dead: Value = client
            .get(format!("http://127.0.0.1:{admin}/admin/dead-letters"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dead["runs"].as_array().is_some_and(|r| r.len() == 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no dead letter appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.goto(&format!("{console}#/dead-letters")).await;
    b.wait_for("[data-testid=runs] tr[data-run]", "subscriber")
        .await;
    b.wait_for("[data-testid=runs] .badge", "failed").await;
    b.screenshot("dead-letters").await;
    b.click("[data-replay]").await;
    b.wait_for("[data-testid=step-request]", "blocked@example.com")
        .await;
    b.wait_for("h1 + p .badge", "completed").await;
    b.screenshot("replayed").await;

    // The preview renders the request body for a pasted event.
    b.goto(&format!("{console}#/preview")).await;
    b.wait_for("[data-testid=preview-recipe]", "subscriber")
        .await;
    let event = json!([{"event": "new_emails", "book_id": "7", "email": "preview@example.com", "timestamp": "1", "variables": {"name": "Grace Hopper"}}]);
    b.type_into("#preview-event", &event.to_string()).await;
    let sent_before = g.requests().len();
    b.click("[data-testid=preview-render]").await;
    let body = b
        .wait_for("[data-testid=preview-body]", "preview@example.com")
        .await;
    assert!(body.contains("Grace Hopper"), "{body}");
    b.wait_for("[data-testid=preview-line]", "/contacts/upsert")
        .await;
    b.screenshot("preview").await;
    assert_eq!(
        g.requests().len(),
        sent_before,
        "the preview sent a request"
    );

    // The other pages load.
    for (page, text) in [
        ("#/deliveries", "sendpulse-main"),
        ("#/recipes", "subscriber"),
        ("#/", "Runs ended"),
    ] {
        b.goto(&format!("{console}{page}")).await;
        b.wait_for("#view", text).await;
        let name = match page.trim_start_matches("#/") {
            "" => "overview",
            other => other,
        };
        b.screenshot(name).await;
    }
    b.call("DELETE", "", json!({})).await;
}
