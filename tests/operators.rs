//! What an operator sees of a running engine (a child process against the
//! emulators): JSON log lines that carry the run, metrics that count what
//! happened, an admin API whose answers match its OpenAPI document, and no
//! secret in a debug-level log of a flow with auth, a token refresh and
//! webhooks.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use patchbay::emulator::{ghl, sendpulse, Fault};
use serde_json::{json, Value};

mod common;
use common::{free_port, wait_ready, Killed};

const WEBHOOK_TOKEN: &str = "ops-webhook-token-7f3a";
const ADMIN_TOKEN: &str = "ops-admin-token-91c2";
const GHL_SECRET: &str = "ops-ghl-client-secret-55e1";
const SP_SECRET: &str = "ops-sp-client-secret-08d4";

const RECIPE: &str = r#"
recipe: subscriber
trigger: { on: sendpulse.subscriber.added, connection: sendpulse-main }
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with: { email: "{{ event.email }}", firstName: "{{ event.variables.name | default('x') }}" }
  - id: note
    action: ghl.notes.create
    connection: ghl-main
    with: { contactId: "{{ steps.contact.output.id }}", body: "Subscribed to {{ event.book_id }}" }
"#;

/// The emulators, an engine on them, and its log file.
struct Engine {
    g: ghl::GhlEmulator,
    _s: sendpulse::SendPulseEmulator,
    port: u16,
    admin: u16,
    dir: PathBuf,
    _child: Killed,
    client: reqwest::Client,
}

async fn engine(name: &str, log_format: &str) -> Engine {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let g = ghl::start(ghl::GhlConfig {
        token: "ops-access-token-0".into(),
        client_secret: GHL_SECRET.into(),
        refresh_token: "ops-refresh-token-0".into(),
        rate_limit: None,
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
    let dir = common::fresh_dir(name);
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("recipes/subscriber.yaml"), RECIPE).unwrap();
    let c = g.config();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  refresh_token: {{ env: GHL_REFRESH }}\n  client_id: {}\n  client_secret: {{ env: GHL_SECRET }}\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n  webhook_token: {{ env: WEBHOOK_TOKEN }}\n",
            g.base_url(),
            c.location_id,
            c.client_id,
            s.base_url(),
            s.config().client_id,
        ),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["--log-format", log_format, "run"])
        .args(["--recipes", "recipes", "--connections", "connections.yaml"])
        .args(["--store", "sqlite://store.db"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .current_dir(&dir)
        .env("GHL_TOKEN", &c.token)
        .env("GHL_REFRESH", &c.refresh_token)
        .env("GHL_SECRET", GHL_SECRET)
        .env("SP_SECRET", SP_SECRET)
        .env("WEBHOOK_TOKEN", WEBHOOK_TOKEN)
        .env("PATCHBAY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PATCHBAY_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("engine.log")).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    Engine {
        g,
        _s: s,
        port,
        admin,
        dir,
        _child: Killed(child),
        client,
    }
}

impl Engine {
    async fn deliver(&self, email: &str, token: &str) -> u16 {
        let body = json!([{"event": "new_emails", "book_id": "490686", "email": email, "timestamp": "1732700000", "variables": {"name": "Ada"}}]);
        self.client
            .post(format!(
                "http://127.0.0.1:{}/hooks/sendpulse-main?token={token}",
                self.port
            ))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        let mut req = match method {
            "POST" => self.client.post(url),
            _ => self.client.get(url),
        }
        .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn metrics(&self) -> String {
        match self.admin("GET", "/metrics", None).await {
            (200, Value::String(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    /// Waits until `n` runs have ended; every run.
    async fn ended(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let (_, page) = self.admin("GET", "/admin/runs?limit=200", None).await;
            let runs = page["runs"].as_array().cloned().unwrap_or_default();
            let done = runs
                .iter()
                .filter(|r| {
                    matches!(
                        r["status"].as_str(),
                        Some("completed" | "failed" | "replayed")
                    )
                })
                .count();
            if done >= n {
                return runs;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{done} of {n} runs ended: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("engine.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_of_a_run_carry_its_id_recipe_version_step_and_attempt() {
    let e = engine("ops-json", "json").await;
    assert_eq!(e.deliver("json@example.com", WEBHOOK_TOKEN).await, 200);
    let runs = e.ended(1).await;
    let run_id = runs[0]["id"].as_str().unwrap().to_string();
    let lines: Vec<Value> = e
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    // The request lines of the run's steps.
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["spans"].is_array())
        .collect();
    assert!(requests.len() >= 2, "{lines:?}");
    for l in &requests {
        let spans = l["spans"].as_array().unwrap();
        let field = |name: &str| spans.iter().find_map(|s| s.get(name).cloned());
        assert_eq!(field("run_id"), Some(json!(run_id)), "{l}");
        assert_eq!(field("recipe"), Some(json!("subscriber")), "{l}");
        assert_eq!(
            field("version"),
            Some(runs[0]["recipe_version"].clone()),
            "{l}"
        );
        assert!(
            field("step").is_some_and(|s| s == "contact" || s == "note"),
            "{l}"
        );
        assert_eq!(field("attempt"), Some(json!(1)), "{l}");
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_have_no_colour_codes() {
    let e = engine("ops-text", "text").await;
    assert_eq!(e.deliver("text@example.com", WEBHOOK_TOKEN).await, 200);
    e.ended(1).await;
    let log = e.log();
    assert!(log.contains("run_id="), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a file: {log}");
}

/// A metric's value, from its full line prefix (name and labels).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_runs_steps_requests_retries_and_refreshes() {
    let e = engine("ops-metrics", "text").await;
    // A refused token first (one refresh), then one 500 (one retry).
    e.g.expire_tokens();
    assert_eq!(e.deliver("m1@example.com", WEBHOOK_TOKEN).await, 200);
    e.ended(1).await;
    e.g.control()
        .inject(Fault::Status(500, json!({"message": "boom"})), 1);
    assert_eq!(e.deliver("m2@example.com", WEBHOOK_TOKEN).await, 200);
    assert_eq!(e.deliver("m3@example.com", "wrong-token").await, 401);
    e.ended(2).await;
    let m = e.metrics().await;
    let sp = r#"connection="sendpulse-main""#;
    assert_eq!(
        value(
            &m,
            &format!(r#"patchbay_deliveries_total{{{sp},outcome="accepted"}}"#)
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"patchbay_deliveries_total{{{sp},outcome="rejected_401"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&m, r#"patchbay_runs_started_total{recipe="subscriber"}"#),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"patchbay_runs_ended_total{recipe="subscriber",status="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"patchbay_step_duration_seconds_count{operation="ghl.contacts.upsert",status="completed"}"#
        ),
        2.0
    );
    assert!(
        value(
            &m,
            r#"patchbay_http_request_duration_seconds_count{operation="ghl.contacts.upsert",status_class="2xx"}"#
        ) >= 2.0
    );
    assert_eq!(
        value(
            &m,
            r#"patchbay_http_request_duration_seconds_count{operation="ghl.contacts.upsert",status_class="5xx"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"patchbay_http_retries_total{operation="ghl.contacts.upsert"}"#
        ),
        1.0,
        "the 500 (a 401 is renewed within its attempt)"
    );
    assert_eq!(
        value(
            &m,
            r#"patchbay_token_refreshes_total{connection="ghl-main"}"#
        ),
        1.0
    );
    assert!(
        m.contains("# TYPE patchbay_store_write_duration_seconds histogram"),
        "{m}"
    );
    assert!(
        value(
            &m,
            r#"patchbay_store_write_duration_seconds_count{operation="ingest"}"#
        ) >= 2.0
    );
    assert_eq!(value(&m, "patchbay_backlog_runs"), 0.0);
    assert_eq!(value(&m, "patchbay_runs_in_flight"), 0.0);
    assert!(
        m.contains(r#"patchbay_reloads_total{result="ok"} 1"#),
        "{m}"
    );
}

// ---- the admin API against its OpenAPI document ----

/// Checks `v` against a schema of the document (the subset it uses: type,
/// enum, required, properties, items, oneOf, $ref); the problems found.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], v, at, problems);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options.iter().any(|o| {
            let mut p = Vec::new();
            check(doc, o, v, at, &mut p);
            p.is_empty()
        });
        if !fits {
            problems.push(format!("{at}: matches no oneOf option: {v}"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == kind || (*t == "number" && kind == "integer"))
    {
        problems.push(format!("{at}: a {kind}, the document says {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            problems.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Value::Object(m) = v {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !m.contains_key(r.as_str().unwrap()) {
                problems.push(format!("{at}: `{r}` is missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, s) in props {
                if let Some(x) = m.get(k) {
                    check(doc, s, x, &format!("{at}.{k}"), problems);
                }
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
        for (i, x) in items.iter().enumerate() {
            check(doc, s, x, &format!("{at}[{i}]"), problems);
        }
    }
}

/// The answer's status must be documented for the route, and its body
/// must match the documented schema.
fn conforms(doc: &Value, method: &str, route: &str, status: u16, body: &Value) {
    let op = &doc["paths"][route][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {route} is not documented");
    let mut resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {route} answered {status}, which is not documented: {body}"
    );
    if let Some(r) = resp["$ref"].as_str() {
        resp = &doc["components"]["responses"][r.trim_start_matches("#/components/responses/")];
    }
    let Some(schema) = resp["content"]["application/json"].get("schema") else {
        return;
    };
    let mut problems = Vec::new();
    check(doc, schema, body, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "{method} {route} ({status}): {problems:#?}\n{body:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_shows_replays_and_previews_as_its_openapi_document_says() {
    let e = engine("ops-admin", "text").await;
    let (status, doc) = e.admin("GET", "/admin/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(patchbay::server::admin::OPENAPI).unwrap()
    );
    assert_eq!(doc["openapi"], "3.1.0");

    assert_eq!(e.deliver("ok@example.com", WEBHOOK_TOKEN).await, 200);
    e.ended(1).await;
    // The next one fails for good: a dead letter.
    e.g.control().inject(
        Fault::Status(400, json!({"statusCode": 400, "message": "bad contact"})),
        1,
    );
    assert_eq!(e.deliver("dead@example.com", WEBHOOK_TOKEN).await, 200);
    assert_eq!(e.deliver("x@example.com", "wrong").await, 401);
    e.ended(2).await;

    let (s, page) = e.admin("GET", "/admin/runs?limit=1", None).await;
    conforms(&doc, "GET", "/admin/runs", s, &page);
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().expect("a second page").to_string();
    let (s, page2) = e
        .admin("GET", &format!("/admin/runs?limit=1&before={next}"), None)
        .await;
    conforms(&doc, "GET", "/admin/runs", s, &page2);
    assert_ne!(page2["runs"][0]["id"], page["runs"][0]["id"]);
    assert!(page2["next"].is_null());
    let (_, found) = e.admin("GET", "/admin/runs?q=DEAD%40example", None).await;
    assert_eq!(found["runs"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["runs"][0]["status"], "failed");
    let (s, bad) = e.admin("GET", "/admin/runs?status=lost", None).await;
    conforms(&doc, "GET", "/admin/runs", s, &bad);
    assert_eq!(s, 400);

    let (s, dead) = e.admin("GET", "/admin/dead-letters", None).await;
    conforms(&doc, "GET", "/admin/dead-letters", s, &dead);
    let dead_id = dead["runs"][0]["id"].as_str().unwrap().to_string();
    let (s, detail) = e
        .admin("GET", &format!("/admin/runs/{dead_id}"), None)
        .await;
    conforms(&doc, "GET", "/admin/runs/{id}", s, &detail);
    assert_eq!(detail["event"]["email"], "dead@example.com");
    assert_eq!(detail["steps"][0]["error"]["kind"], "bad_request");
    let (s, missing) = e.admin("GET", "/admin/runs/nope", None).await;
    conforms(&doc, "GET", "/admin/runs/{id}", s, &missing);
    assert_eq!(s, 404);

    let (s, replayed) = e
        .admin("POST", &format!("/admin/runs/{dead_id}/replay"), None)
        .await;
    conforms(&doc, "POST", "/admin/runs/{id}/replay", s, &replayed);
    assert_eq!(s, 202);
    let (s, again) = e
        .admin("POST", &format!("/admin/runs/{dead_id}/replay"), None)
        .await;
    conforms(&doc, "POST", "/admin/runs/{id}/replay", s, &again);
    assert_eq!(s, 409);
    e.ended(3).await;
    let new = replayed["run"].as_str().unwrap();
    let (_, run) = e.admin("GET", &format!("/admin/runs/{new}"), None).await;
    assert_eq!(run["run"]["status"], "completed", "{run}");
    let (s, many) = e
        .admin("POST", "/admin/replay", Some(json!({"all_failed": true})))
        .await;
    conforms(&doc, "POST", "/admin/replay", s, &many);
    assert_eq!(many["replayed"], json!([]));

    let (s, d) = e.admin("GET", "/admin/deliveries", None).await;
    conforms(&doc, "GET", "/admin/deliveries", s, &d);
    let outcomes: Vec<u64> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert_eq!(outcomes, [401, 200, 200]);

    let (s, recipes) = e.admin("GET", "/admin/recipes", None).await;
    conforms(&doc, "GET", "/admin/recipes", s, &recipes);
    let (s, versions) = e
        .admin("GET", "/admin/recipes/subscriber/versions", None)
        .await;
    conforms(&doc, "GET", "/admin/recipes/{name}/versions", s, &versions);
    assert_eq!(versions["versions"][0]["serving"], true);

    let delivery = json!([{"event": "new_emails", "book_id": "7", "email": "preview@example.com", "timestamp": "1", "variables": {"name": "Pre"}}]);
    let before = e.g.requests().len();
    let (s, p) = e
        .admin(
            "POST",
            "/admin/preview",
            Some(json!({"recipe": "subscriber", "event": delivery})),
        )
        .await;
    conforms(&doc, "POST", "/admin/preview", s, &p);
    assert_eq!(s, 200, "{p}");
    let step = &p["runs"][0]["steps"][0];
    assert_eq!(step["request"]["method"], "POST");
    assert!(
        step["request"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/contacts/upsert"),
        "{step}"
    );
    assert_eq!(step["request"]["body"]["email"], "preview@example.com");
    assert_eq!(e.g.requests().len(), before, "a preview sends nothing");
    let (s, invalid) = e
        .admin(
            "POST",
            "/admin/preview",
            Some(json!({"recipe_text": "recipe: x\ntrigger: { on: sendpulse.subscriber.added }\nsteps:\n  - id: a\n    action: ghl.contact.create\n", "event": {}})),
        )
        .await;
    conforms(&doc, "POST", "/admin/preview", s, &invalid);
    assert_eq!(s, 422);
    assert!(
        invalid["diagnostics"][0]
            .as_str()
            .unwrap()
            .contains("unknown-operation"),
        "{invalid}"
    );

    let (s, reload) = e.admin("POST", "/admin/reload", None).await;
    conforms(&doc, "POST", "/admin/reload", s, &reload);
    // Without the token: 401, documented.
    let r = e
        .client
        .get(format!("http://127.0.0.1:{}/admin/runs", e.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_a_debug_log_of_auth_refresh_webhooks_and_failures() {
    let e = engine("ops-secrets", "json").await;
    e.g.expire_tokens();
    assert_eq!(e.deliver("s1@example.com", WEBHOOK_TOKEN).await, 200);
    assert_eq!(e.deliver("s2@example.com", "not-the-token").await, 401);
    e.g.control().inject(
        Fault::Status(400, json!({"statusCode": 400, "message": "no"})),
        1,
    );
    assert_eq!(e.deliver("s3@example.com", WEBHOOK_TOKEN).await, 200);
    e.ended(2).await;
    let (_, dead) = e.admin("GET", "/admin/dead-letters", None).await;
    let id = dead["runs"][0]["id"].as_str().unwrap().to_string();
    e.admin("POST", &format!("/admin/runs/{id}/replay"), None)
        .await;
    e.ended(3).await;
    let log = e.log();
    assert!(
        log.contains("token request"),
        "the refresh is in the log: {log}"
    );
    let refreshed = e.g.refresh_token().unwrap();
    for secret in [
        WEBHOOK_TOKEN,
        ADMIN_TOKEN,
        GHL_SECRET,
        SP_SECRET,
        "ops-access-token-0",
        "ops-refresh-token-0",
        refreshed.as_str(),
    ] {
        assert!(!log.contains(secret), "`{secret}` is in the log");
        let m = e.metrics().await;
        assert!(!m.contains(secret), "`{secret}` is in /metrics");
        let (_, runs) = e.admin("GET", &format!("/admin/runs/{id}"), None).await;
        assert!(
            !runs.to_string().contains(secret),
            "`{secret}` is in a run record"
        );
    }
}
