//! Hostile input and faults, end to end through the binary: fail-closed
//! webhooks, rejected deliveries that cost no store write each, the events
//! cap, an owner-only store file, `http.request` guards (SSRF, redirects,
//! response cap, connection-backed auth and redaction), absurd token
//! lifetimes, and configuration files that are FIFOs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::{any, get, post};
use serde_json::{json, Value};

mod common;
use common::{free_port, fresh_dir, wait_ready, Killed};

const TOKEN: &str = "SECRET-hook-token-51aa";
const ADMIN: &str = "SECRET-admin-token-0b7e";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An engine on a fresh folder: `recipes` (name, text) and a connections
/// file; the admin API on the same port.
struct Engine {
    port: u16,
    dir: PathBuf,
    _child: Killed,
}

impl Engine {
    async fn start(
        name: &str,
        connections: &str,
        recipes: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Engine {
        let dir = fresh_dir(&format!("hostile-{name}"));
        std::fs::create_dir_all(dir.join("recipes")).unwrap();
        for (file, text) in recipes {
            std::fs::write(dir.join("recipes").join(file), text).unwrap();
        }
        std::fs::write(dir.join("connections.yaml"), connections).unwrap();
        let port = free_port();
        let mut cmd = bin();
        cmd.args(["run", "--recipes"])
            .arg(dir.join("recipes"))
            .arg("--connections")
            .arg(dir.join("connections.yaml"))
            .arg("--store")
            .arg(format!("sqlite://{}", dir.join("store.db").display()))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-token", ADMIN])
            .env("PATCHBAY_LOG", "debug")
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = Killed(cmd.spawn().unwrap());
        wait_ready(&client(), port).await;
        Engine {
            port,
            dir,
            _child: child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn store(&self) -> String {
        format!("sqlite://{}", self.dir.join("store.db").display())
    }
}

const HOOK_RECIPE: &str = "recipe: public-hook\ntrigger: { on: http.webhook, connection: public }\nsteps:\n  - id: keep\n    action: store.put\n    with: { key: \"{{ event.id }}\", value: \"{{ event.id }}\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_its_webhook_secret_refuses_deliveries_unless_it_says_none() {
    let e = Engine::start(
        "failclosed",
        "unsigned:\n  connector: http\npublic:\n  connector: http\n  webhook_auth: none\n",
        &[("hook.yaml", HOOK_RECIPE)],
        &[],
    )
    .await;
    let (st, body) = e.post("/hooks/unsigned", "{\"id\": \"a\"}").await;
    assert_eq!(st, 401, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("hmac_secret") && msg.contains("webhook_auth: none"),
        "{msg}"
    );
    let (st, body) = e.post("/hooks/public", "{\"id\": \"b\"}").await;
    assert_eq!(st, 200, "{body}");
    let start = std::fs::read_to_string(e.dir.join("stdout.log")).unwrap();
    assert!(start.contains("unauthenticated-webhook"), "{start}");
}

#[test]
fn an_empty_secret_is_a_load_error_and_validate_warns_about_webhook_auth_none() {
    let dir = fresh_dir("hostile-empty");
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        "sendpulse-main:\n  connector: sendpulse\n  client_id: id\n  client_secret: { env: SP_SECRET }\n  webhook_token: { env: HOOK_TOKEN }\n",
    )
    .unwrap();
    let out = bin()
        .args(["run", "--recipes"])
        .arg(dir.join("recipes"))
        .arg("--connections")
        .arg(dir.join("connections.yaml"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("s.db").display()))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("SP_SECRET", "x")
        .env("HOOK_TOKEN", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("`webhook_token` is a secret and environment variable `HOOK_TOKEN` is empty"),
        "{err}"
    );

    std::fs::write(
        dir.join("connections.yaml"),
        "open:\n  connector: http\n  webhook_auth: none\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--connections"])
        .arg(dir.join("connections.yaml"))
        .arg(dir.join("recipes"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warning[unauthenticated-webhook]"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_deliveries_are_counted_and_only_a_sample_reaches_the_store() {
    let conns = "sendpulse-main:\n  connector: sendpulse\n  client_id: id\n  client_secret: { env: SP_SECRET }\n  webhook_token: { env: HOOK_TOKEN }\n  max_events: 3\n";
    let e = Engine::start(
        "rejects",
        conns,
        &[],
        &[("SP_SECRET", "x"), ("HOOK_TOKEN", TOKEN)],
    )
    .await;
    let long = "n".repeat(5_000);
    for i in 0..150 {
        let (st, _) = e.post(&format!("/hooks/{long}{i}"), "[]").await;
        assert_eq!(st, 404);
    }
    for _ in 0..50 {
        let (st, _) = e.post("/hooks/sendpulse-main?token=wrong", "[]").await;
        assert_eq!(st, 401);
    }
    // The events cap: five events where the connection takes three.
    let five = Value::Array(vec![json!({"event": "new_emails", "email": "a@b.c"}); 5]).to_string();
    let (st, body) = e
        .post(&format!("/hooks/sendpulse-main?token={TOKEN}"), &five)
        .await;
    assert_eq!(st, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 3"),
        "{body}"
    );

    let m = e.metrics().await;
    assert!(
        m.contains("patchbay_webhook_rejected_total{reason=\"unknown_connection\"} 150"),
        "{m}"
    );
    assert!(
        m.contains("patchbay_webhook_rejected_total{reason=\"unauthorized\"} 50"),
        "{m}"
    );
    assert!(
        m.contains("patchbay_webhook_rejected_total{reason=\"too_many_events\"} 1"),
        "{m}"
    );
    let unrecorded: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("patchbay_webhook_rejected_unrecorded_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(unrecorded >= 201 - 60, "{m}");
    let out = bin()
        .args([
            "deliveries",
            "--json",
            "--limit",
            "1000",
            "--store",
            &e.store(),
        ])
        .output()
        .unwrap();
    let recorded: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        recorded.len() <= 61,
        "{} deliveries recorded",
        recorded.len()
    );
    assert!(!recorded.is_empty());
    for d in &recorded {
        let name = d["connection"].as_str().unwrap();
        assert!(name.chars().count() <= 65, "{name}");
        assert!(d["outcome"].as_str().unwrap().chars().count() <= 301);
        assert!(!d.to_string().contains(TOKEN));
    }
}

/// Signs like HighLevel's legacy `x-wh-signature`: RSA PKCS#1 v1.5 with
/// SHA-256 over the raw body, base64, with the test key in `tests/keys/`.
fn legacy_signature(body: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem: String = include_str!("keys/ghl-legacy-webhook.key.pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&b64.decode(pem).unwrap()).unwrap();
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        body.as_bytes(),
        &mut sig,
    )
    .unwrap();
    b64.encode(sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_highlevel_signature_is_taken_with_a_warning_and_a_tampered_one_is_not() {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let ed = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
    let spki = base64::engine::general_purpose::STANDARD
        .encode(ed.verifying_key().to_public_key_der().unwrap().as_bytes());
    let rsa = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/ghl-legacy-webhook.pub.pem");
    let conns = format!(
        "ghl-main:\n  connector: ghl\n  token: {{ env: GHL_TOKEN }}\n  location_id: loc1\n  webhook_public_key: {spki}\n  webhook_rsa_public_key: {{ file: {} }}\n",
        rsa.display()
    );
    let recipe = "recipe: ghl-keep\ntrigger: { on: ghl.contact.created }\nsteps:\n  - id: keep\n    action: store.put\n    with: { key: \"{{ event.id }}\", value: \"{{ event.email }}\" }\n";
    let e = Engine::start(
        "legacy-sig",
        &conns,
        &[("ghl.yaml", recipe)],
        &[("GHL_TOKEN", "x")],
    )
    .await;
    let body = |id: &str| {
        json!({"type": "ContactCreate", "locationId": "loc1", "id": id, "email": format!("{id}@example.com"),
               "timestamp": chrono::Utc::now().to_rfc3339(), "webhookId": format!("wh-{id}")})
        .to_string()
    };
    let send = |body: String, sig: String| {
        let url = e.url("/hooks/ghl-main");
        async move {
            let r = client()
                .post(url)
                .header("x-wh-signature", sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for id in ["c1", "c2"] {
        let b = body(id);
        let (st, r) = send(b.clone(), legacy_signature(&b)).await;
        assert_eq!((st, r["runs"].as_u64()), (200, Some(1)), "{r}");
    }
    // Changed after signing: refused, and nothing is taken.
    let signed = body("c3");
    let tampered = signed.replace("c3@example.com", "evil@example.com");
    let (st, r) = send(tampered, legacy_signature(&signed)).await;
    assert_eq!(
        (st, r["error"].as_str()),
        (
            401,
            Some("RSA signature in the legacy `x-wh-signature` does not match the body")
        ),
        "{r}"
    );
    let m = e.metrics().await;
    assert!(
        m.contains("patchbay_webhook_legacy_signatures_total{connection=\"ghl-main\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("patchbay_webhook_rejected_total{reason=\"unauthorized\"} 1"),
        "{m}"
    );
    // One warning for the connection, not one per delivery.
    let logs = std::fs::read_to_string(e.dir.join("stdout.log")).unwrap()
        + &std::fs::read_to_string(e.dir.join("stderr.log")).unwrap();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("accepted on the deprecated `x-wh-signature` signature"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    let out = bin()
        .args(["runs", "--json", "--store", &e.store()])
        .output()
        .unwrap();
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(runs.len(), 2, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_file_and_its_wal_and_shm_are_owner_only() {
    let e = Engine::start("mode", "", &[], &[]).await;
    use std::os::unix::fs::PermissionsExt;
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let mode = std::fs::metadata(e.dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}: {mode:o}");
    }
}

/// A little API on 127.0.0.1 that records what reaches it.
#[derive(Clone, Default)]
struct Seen {
    hits: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
}

async fn api(seen: Seen, other_origin: String) -> String {
    let app = axum::Router::new()
        .route(
            "/ok",
            any({
                let seen = seen.clone();
                move |h: HeaderMap| async move {
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    let auth = h.get("authorization").or(h.get("x-api-key"));
                    seen.auth.lock().unwrap().push(
                        auth.map(|v| v.to_str().unwrap().to_string()).unwrap_or_default(),
                    );
                    ([("set-cookie", "session=SECRET-cookie-1")], axum::Json(json!({"ok": true})))
                }
            }),
        )
        .route("/big", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/away",
            get(move || {
                let to = other_origin.clone();
                async move { (axum::http::StatusCode::FOUND, [("location", format!("{to}/ok"))]) }
            }),
        )
        .route("/oauth/access_token", post(|| async {
            axum::Json(json!({"access_token": "SECRET-at", "token_type": "Bearer", "expires_in": u64::MAX}))
        }))
        .route("/addressbooks", get(|| async { axum::Json(json!([])) }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

/// `patchbay fire` of a one-step `http.request` recipe; (exit code, stdout, stderr).
fn fire_http(
    dir: &Path,
    name: &str,
    with: &str,
    conns: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let conn_line = if conns.is_empty() {
        ""
    } else {
        "    connection: out\n"
    };
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!("recipe: {name}\ntrigger: {{ every: 1h }}\nsteps:\n  - id: call\n    action: http.request\n{conn_line}    with: {with}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("event.json"), "{}").unwrap();
    std::fs::write(dir.join("connections.yaml"), conns).unwrap();
    let mut cmd = bin();
    cmd.arg("fire")
        .arg(dir.join(format!("{name}.yaml")))
        .arg("--event")
        .arg(dir.join("event.json"))
        .arg("--connections")
        .arg(dir.join("connections.yaml"))
        .args(extra)
        .env("PATCHBAY_LOG", "debug")
        .env_remove("PATCHBAY_HTTP_ALLOW_PRIVATE")
        .env_remove("PATCHBAY_HTTP_ALLOW_HOSTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_refuses_private_targets_unless_allowed() {
    let seen = Seen::default();
    let url = api(seen.clone(), String::new()).await;
    let dir = fresh_dir("hostile-ssrf");
    let with = format!("{{ method: GET, url: \"{url}/ok\" }}");
    let d = dir.clone();
    let w = with.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || fire_http(&d, "ssrf", &w, "", &[], &[]))
            .await
            .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("private, loopback or link-local"),
        "{out}{err}"
    );
    assert_eq!(seen.hits.load(Ordering::SeqCst), 0);
    // Allowed by the connection, or for the whole process.
    let d = dir.clone();
    let w = with.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "ssrf",
            &w,
            "out:\n  connector: http\n  allow_private: true\n",
            &[],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let d = dir.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "ssrf",
            &with,
            "",
            &[("PATCHBAY_HTTP_ALLOW_PRIVATE", "1")],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 2);
    // An allow-list keeps other hosts out, even allowed private ones.
    let d = dir.clone();
    let w = format!("{{ method: GET, url: \"{url}/ok\" }}");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "ssrf",
            &w,
            "out:\n  connector: http\n  allow_private: true\n  allow_hosts: api.example.com\n",
            &[],
            &[],
        )
    })
    .await
    .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("not in the allow-list"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_origin_are_not_followed_and_big_bodies_are_capped() {
    let other = Seen::default();
    let other_url = api(other.clone(), String::new()).await;
    let seen = Seen::default();
    let url = api(seen.clone(), other_url).await;
    let dir = fresh_dir("hostile-redirect");
    let conns = "out:\n  connector: http\n  allow_private: true\n  max_response_bytes: 1000\n";
    let d = dir.clone();
    let w = format!("{{ method: GET, url: \"{url}/away\" }}");
    let (_, out, err) =
        tokio::task::spawn_blocking(move || fire_http(&d, "redir", &w, conns, &[], &[]))
            .await
            .unwrap();
    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "followed a cross-origin redirect: {out}{err}"
    );
    let d = dir.clone();
    let w = format!("{{ method: GET, url: \"{url}/big\" }}");
    let (code, out, err) =
        tokio::task::spawn_blocking(move || fire_http(&d, "big", &w, conns, &[], &[]))
            .await
            .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("larger than 1000 bytes"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_auth_comes_from_the_connection_and_is_redacted_everywhere() {
    let seen = Seen::default();
    let url = api(seen.clone(), String::new()).await;
    let dir = fresh_dir("hostile-auth");
    let conns = format!("out:\n  connector: http\n  base_url: {url}\n  allow_private: true\n  bearer_token: {{ env: OUT_TOKEN }}\n");
    let secret = "SECRET-bearer-8c1d";
    let with = "{ method: GET, url: /ok, headers: { X-Api-Key: \"literal-SECRET-key\", Accept: application/json } }";
    let (d, c) = (dir.clone(), conns.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "auth",
            with,
            &c,
            &[("OUT_TOKEN", secret)],
            &["--format", "json"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        seen.auth.lock().unwrap().as_slice(),
        [format!("Bearer {secret}")]
    );
    for text in [&out, &err] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("literal-SECRET-key"), "{text}");
        assert!(!text.contains("SECRET-cookie-1"), "{text}");
    }
    let (d, c) = (dir.clone(), conns.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "auth",
            with,
            &c,
            &[("OUT_TOKEN", secret)],
            &["--dry-run"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("<redacted>"), "{out}");
    assert!(
        !out.contains("literal-SECRET-key") && !out.contains(secret),
        "{out}"
    );
    // The credential goes only to the connection's own origin.
    let (d, c) = (dir.clone(), conns.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fire_http(
            &d,
            "auth",
            "{ method: GET, url: \"http://127.0.0.2:9/ok\" }",
            &c,
            &[("OUT_TOKEN", secret)],
            &[],
        )
    })
    .await
    .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        format!("{out}{err}").contains("only to its `base_url`"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_expires_in_from_a_token_endpoint_is_no_panic() {
    let url = api(Seen::default(), String::new()).await;
    let dir = fresh_dir("hostile-expires");
    std::fs::write(
        dir.join("r.yaml"),
        "recipe: books\ntrigger: { every: 1h }\nsteps:\n  - id: list\n    action: sendpulse.addressbooks.list\n",
    )
    .unwrap();
    std::fs::write(dir.join("event.json"), "{}").unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!("sendpulse-main:\n  connector: sendpulse\n  base_url: {url}\n  client_id: id\n  client_secret: {{ env: SP_SECRET }}\n"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .arg("fire")
            .arg(dir.join("r.yaml"))
            .arg("--event")
            .arg(dir.join("event.json"))
            .arg("--connections")
            .arg(dir.join("connections.yaml"))
            .env("SP_SECRET", "s")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn a_fifo_in_the_recipe_folder_is_refused_not_waited_on() {
    let dir = fresh_dir("hostile-fifo");
    std::fs::write(dir.join("ok.yaml"), "recipe: ok\ntrigger: { every: 1h }\nsteps:\n  - id: a\n    action: store.get\n    with: { key: k }\n").unwrap();
    assert!(Command::new("mkfifo")
        .arg(dir.join("pipe.yaml"))
        .status()
        .unwrap()
        .success());
    let mut child = bin()
        .arg("validate")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("validate blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
}

/// Sends a request's headers only (the body never comes) and reads the
/// answer's status line, or `None` after 3 s.
async fn headers_only(port: u16, path: &str, content_length: usize) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_or_an_oversized_length_is_refused_before_the_body_is_read() {
    let conns = "sendpulse-main:\n  connector: sendpulse\n  client_id: id\n  client_secret: { env: SP_SECRET }\n  webhook_token: { env: HOOK_TOKEN }\n";
    let e = Engine::start(
        "early",
        conns,
        &[],
        &[("SP_SECRET", "x"), ("HOOK_TOKEN", TOKEN)],
    )
    .await;
    let line = headers_only(e.port, "/hooks/sendpulse-main?token=wrong", 1000).await;
    assert_eq!(line.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    let line = headers_only(
        e.port,
        &format!("/hooks/sendpulse-main?token={TOKEN}"),
        10 << 20,
    )
    .await;
    assert_eq!(line.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));
    // With the right token and a sane length, the engine waits for the body.
    assert_eq!(
        headers_only(e.port, &format!("/hooks/sendpulse-main?token={TOKEN}"), 10).await,
        None
    );
}

/// A token endpoint is external input too: its answer is read as a stream
/// and refused past the response cap, not read whole into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_endpoint_answer_is_refused_at_the_response_cap() {
    let app = axum::Router::new().route(
        "/oauth/access_token",
        post(|| async { "x".repeat(6 * 1024 * 1024) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = fresh_dir("hostile-token-cap");
    std::fs::write(
        dir.join("r.yaml"),
        "recipe: r\ntrigger: { every: 1h }\nsteps:\n  - id: books\n    action: sendpulse.addressbooks.list\n    with: {}\n",
    )
    .unwrap();
    std::fs::write(dir.join("event.json"), "{}").unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!("sp:\n  connector: sendpulse\n  base_url: {url}\n  client_id: id\n  client_secret: {{ env: SP_SECRET }}\n"),
    )
    .unwrap();
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .arg("fire")
            .arg(d.join("r.yaml"))
            .args(["--event", &d.join("event.json").display().to_string()])
            .args([
                "--connections",
                &d.join("connections.yaml").display().to_string(),
            ])
            .env("SP_SECRET", "s")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("larger than"), "{text}");
}
