//! `patchbay fire` end to end: the example recipes run as a child process
//! against the API emulators, and no secret ever shows in its output, its
//! dry-run output or its logs.

use std::path::{Path, PathBuf};
use std::process::Output;

use patchbay::emulator::{ghl, sendpulse};
use serde_json::{json, Value};

const GHL_TOKEN: &str = "SECRET-ghl-token-4f1c";
const GHL_REFRESH: &str = "SECRET-ghl-refresh-77aa";
const GHL_CLIENT_SECRET: &str = "SECRET-ghl-client-9d0e";
const SP_ID: &str = "sp-client-id-public";
const SP_SECRET: &str = "SECRET-sendpulse-secret-b2c3";
const SECRETS: [&str; 4] = [GHL_TOKEN, GHL_REFRESH, GHL_CLIENT_SECRET, SP_SECRET];

struct World {
    ghl: ghl::GhlEmulator,
    sp: sendpulse::SendPulseEmulator,
    dir: PathBuf,
}

async fn world(name: &str) -> World {
    let ghl = ghl::start(ghl::GhlConfig {
        token: GHL_TOKEN.into(),
        refresh_token: GHL_REFRESH.into(),
        client_secret: GHL_CLIENT_SECRET.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let sp = sendpulse::start(sendpulse::SendPulseConfig {
        client_id: SP_ID.into(),
        client_secret: SP_SECRET.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("patchbay-fire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {}\n  refresh_token: {{ env: GHL_REFRESH }}\n  client_id: {}\n  client_secret: {{ env: GHL_CLIENT_SECRET }}\n\
             sendpulse-main:\n  connector: sendpulse\n  base_url: {}\n  client_id: {}\n  client_secret: {{ env: SP_SECRET }}\n",
            ghl.base_url(),
            ghl.config().location_id,
            ghl.config().client_id,
            sp.base_url(),
            SP_ID,
        ),
    )
    .unwrap();
    World { ghl, sp, dir }
}

impl World {
    fn event(&self, name: &str, v: Value) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        p
    }

    /// Runs `patchbay fire` (blocking the runtime thread is avoided: the
    /// emulators live on other worker threads).
    async fn fire(&self, recipe: &str, event: &Path, extra: &[&str]) -> Output {
        self.fire_with(&self.dir.join("connections.yaml"), recipe, event, extra)
            .await
    }

    /// [`World::fire`] with another connections file.
    async fn fire_with(
        &self,
        connections: &Path,
        recipe: &str,
        event: &Path,
        extra: &[&str],
    ) -> Output {
        // A bundled recipe by name, or a recipe file by path.
        let recipe = if recipe.ends_with(".yaml") {
            recipe.to_string()
        } else {
            format!("recipes/{recipe}.yaml")
        };
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_patchbay"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["fire", &recipe, "--event"])
            .arg(event)
            .arg("--connections")
            .arg(connections)
            .args(extra)
            .env("GHL_TOKEN", GHL_TOKEN)
            .env("GHL_REFRESH", GHL_REFRESH)
            .env("GHL_CLIENT_SECRET", GHL_CLIENT_SECRET)
            .env("SP_SECRET", SP_SECRET)
            .env("PATCHBAY_LOG", "debug");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_secrets(o: &Output) {
    let all = text(o);
    for s in SECRETS {
        assert!(!all.contains(s), "secret {s} leaked:\n{all}");
    }
}

fn report(o: &Output) -> Value {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)));
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_recipe_creates_a_tagged_contact() {
    let w = world("sub").await;
    let ev = w.event(
        "ev.json",
        json!([{"event": "new_emails", "timestamp": "1732700000", "book_id": "490686", "email": "Ada.Lovelace@example.com",
                "variables": {"name": "Ada Lovelace", "phone": "+44 20 7946 0958"}}]),
    );
    let o = w
        .fire(
            "sendpulse-subscriber-to-ghl-contact",
            &ev,
            &["--format", "json"],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_no_secrets(&o);
    let r = report(&o);
    assert_eq!(r["status"], "completed", "{r}");
    let contacts = w.ghl.contacts();
    assert_eq!(contacts.len(), 1);
    let c = &contacts[0];
    assert_eq!(
        (c["firstName"].as_str(), c["lastName"].as_str()),
        (Some("Ada"), Some("Lovelace"))
    );
    assert_eq!(c["phone"], "+442079460958");
    let tags: Vec<&str> = c["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in ["sendpulse", "book-490686", "lead", "newsletter"] {
        assert!(tags.contains(&t), "{tags:?}");
    }
    // The upsert went to the upsert endpoint with the location from the connection.
    let upsert = w
        .ghl
        .requests()
        .into_iter()
        .find(|q| q.path == "/contacts/upsert")
        .unwrap();
    assert_eq!(upsert.body["locationId"], json!(w.ghl.config().location_id));
    assert_eq!(
        upsert.header("authorization"),
        Some(format!("Bearer {GHL_TOKEN}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_recipe_creates_the_task_under_the_contact_found_by_email() {
    let w = world("task").await;
    let ghl_contact = w
        .ghl
        .insert_contact(json!({"email": "grace@example.com", "firstName": "Grace"}));
    let sp_contact = w.sp.insert_crm_contact(json!({"firstName": "Grace", "emails": [{"id": 1, "email": "grace@example.com", "isMain": true}]}));
    let task = json!({"id": 456, "name": "Call Grace", "description": "Discuss pricing", "stepId": 1,
                      "startAt": "2026-12-03 10:00", "finishAt": "2026-12-03 10:30", "contacts": [sp_contact],
                      "updatedAt": "2026-12-01 09:00:00"});
    let ev = w.event("task.json", task);
    let o = w
        .fire("sendpulse-task-to-ghl-task", &ev, &["--format", "json"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_no_secrets(&o);
    let tasks = w.ghl.tasks(&ghl_contact);
    assert_eq!(tasks.len(), 1, "{}", text(&o));
    assert_eq!(tasks[0]["title"], "Call Grace");
    assert_eq!(tasks[0]["dueDate"], "2026-12-03T10:30:00.000Z");
    let r = report(&o);
    let save = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "save_link")
        .unwrap();
    assert_eq!(save["output"]["contactId"], json!(ghl_contact));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_and_appointment_recipes_reach_highlevel() {
    let w = world("note").await;
    let ghl_contact = w.ghl.insert_contact(json!({"email": "alan@example.com"}));
    let sp_contact = w.sp.insert_crm_contact(json!({"firstName": "Alan", "emails": [{"id": 1, "email": "alan@example.com", "isMain": true}]}));
    let contact_event = json!({"id": sp_contact, "emails": [{"id": 1, "email": "alan@example.com", "isMain": true}],
        "comments": [{"id": 77, "text": "Called, interested"}, {"id": 78, "text": "Sent pricing"}], "updatedAt": "2026-12-01 09:00:00"});
    let ev = w.event("contact.json", contact_event);
    let o = w
        .fire("sendpulse-note-to-ghl-note", &ev, &["--format", "json"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let notes: Vec<String> = w
        .ghl
        .notes(&ghl_contact)
        .iter()
        .map(|n| n["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.contains(&"Called, interested".to_string()));

    let task = json!({"id": 900, "name": "Demo with Alan", "startAt": "2026-12-04 15:00", "finishAt": "2026-12-04 16:00",
                      "contacts": [sp_contact], "updatedAt": "2026-12-01 09:00:00"});
    let ev = w.event("appt.json", task);
    let o = w
        .fire(
            "sendpulse-task-to-ghl-appointment",
            &ev,
            &["--format", "json"],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_no_secrets(&o);
    let appts = w.ghl.appointments();
    assert_eq!(appts.len(), 1, "{}", text(&o));
    assert_eq!(appts[0]["contactId"], json!(ghl_contact));
    assert_eq!(appts[0]["startTime"], "2026-12-04T15:00:00.000Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_requests_sends_none_and_redacts_secrets() {
    let w = world("dry").await;
    let ev = w.event("ev.json", json!([{"event": "new_emails", "book_id": "490686", "email": "x@example.com", "variables": {"name": "X Y"}}]));
    let o = w
        .fire("sendpulse-subscriber-to-ghl-contact", &ev, &["--dry-run"])
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_no_secrets(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("POST {}/contacts/upsert", w.ghl.base_url())),
        "{out}"
    );
    assert!(out.contains("\"email\": \"x@example.com\""), "{out}");
    assert!(out.contains("authorization: ***"), "{out}");
    assert!(w.ghl.requests().is_empty(), "a dry run sent requests");
    assert!(w.sp.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_body_is_printed_by_a_dry_run_as_it_is_sent() {
    let w = world("form").await;
    let cfg = w.ghl.config().clone();
    std::fs::write(w.dir.join("agency-token"), &cfg.agency_token).unwrap();
    let conns = w.dir.join("agency.yaml");
    std::fs::write(
        &conns,
        format!(
            "ghl-agency:\n  connector: ghl\n  base_url: {}\n  token: {{ file: {} }}\n  location_id: {}\n  company_id: {}\n",
            w.ghl.base_url(),
            w.dir.join("agency-token").display(),
            cfg.location_id,
            cfg.company_id,
        ),
    )
    .unwrap();
    let recipe = w.dir.join("mint.yaml");
    std::fs::write(
        &recipe,
        "recipe: mint\ntrigger: { on: ghl.contact.created, connection: ghl-agency }\nsteps:\n  - id: token\n    action: ghl.oauth.location_token\n    with: { locationId: \"{{ event.locationId }}\" }\n",
    )
    .unwrap();
    let ev = w.event(
        "contact.json",
        json!({"type": "ContactCreate", "locationId": cfg.location_id, "id": "c1"}),
    );
    let recipe = recipe.to_str().unwrap();
    let o = w.fire_with(&conns, recipe, &ev, &["--dry-run"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let wire = format!(
        "companyId={}&locationId={}",
        cfg.company_id, cfg.location_id
    );
    assert!(
        out.contains("content-type: application/x-www-form-urlencoded") && out.contains(&wire),
        "{out}"
    );
    assert!(!out.contains(&cfg.agency_token), "{out}");
    assert!(w.ghl.requests().is_empty(), "a dry run sent requests");
    // Sent for real, the emulator reads the same fields from a form body.
    let o = w.fire_with(&conns, recipe, &ev, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let sent = w.ghl.requests();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        sent[0].body,
        json!({"companyId": cfg.company_id, "locationId": cfg.location_id})
    );
    assert_eq!(sent[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_one_with_the_api_message_and_no_secret() {
    let w = world("fail").await;
    w.ghl.control().inject(patchbay::emulator::Fault::Status(422, json!({"statusCode": 422, "message": ["email must be an email"], "error": "Unprocessable Entity"})), 1);
    let ev = w.event("ev.json", json!([{"event": "new_emails", "book_id": "490686", "email": "bad", "variables": {"name": "B"}}]));
    let o = w
        .fire("sendpulse-subscriber-to-ghl-contact", &ev, &[])
        .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_no_secrets(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("error: unprocessable (HTTP 422): email must be an email"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_file_the_server_would_not_take_exits_two_with_the_server_message() {
    let w = world("refused").await;
    // Items are routed by their type, as the server routes them.
    let ev = w.event(
        "untyped.json",
        json!([{"book_id": "490686", "email": "x@example.com"}]),
    );
    let o = w
        .fire("sendpulse-subscriber-to-ghl-contact", &ev, &["--dry-run"])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("item 1 of the delivery has no `event` field naming its event type"),
        "{}",
        text(&o)
    );
    let ev = w.event(
        "other.json",
        json!([{"event": "unsubscribe", "book_id": "490686", "email": "x@example.com"}]),
    );
    let o = w
        .fire("sendpulse-subscriber-to-ghl-contact", &ev, &["--dry-run"])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o)
            .contains("other.json: no item of the delivery is a sendpulse.subscriber.added event"),
        "{}",
        text(&o)
    );
    assert!(w.ghl.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_object_runs_as_a_delivery_of_one() {
    let w = world("object").await;
    // SendPulse posts arrays; a file holding one event object is that event.
    let ev = w.event(
        "object.json",
        json!({"event": "new_emails", "book_id": "490686", "email": "solo@example.com", "variables": {"name": "Solo One"}}),
    );
    let o = w
        .fire(
            "sendpulse-subscriber-to-ghl-contact",
            &ev,
            &["--format", "json"],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(report(&o)["status"], "completed");
    let contacts = w.ghl.contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["email"], "solo@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_connection_is_not_demanded_and_unused_secrets_are_not_read() {
    let w = world("noconn").await;
    // Only HighLevel, which the steps use: the trigger's `sendpulse-main`
    // is absent, and a second SendPulse connection's secret is unset.
    let conns = w.dir.join("ghl-only.yaml");
    let full = std::fs::read_to_string(w.dir.join("connections.yaml")).unwrap();
    let ghl_part = full.split("sendpulse-main:").next().unwrap().to_string();
    std::fs::write(
        &conns,
        format!("{ghl_part}sendpulse-other:\n  connector: sendpulse\n  client_id: x\n  client_secret: {{ env: PATCHBAY_TEST_UNSET_SECRET }}\n"),
    )
    .unwrap();
    let ev = w.event(
        "ev.json",
        json!([{"event": "new_emails", "book_id": "490686", "email": "lone@example.com", "variables": {"name": "Lone Ranger"}}]),
    );
    let o = w
        .fire_with(
            &conns,
            "sendpulse-subscriber-to-ghl-contact",
            &ev,
            &["--format", "json"],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning[unknown-connection]"), "{err}");
    assert_eq!(report(&o)["status"], "completed");
    assert_eq!(w.ghl.contacts().len(), 1);
}
