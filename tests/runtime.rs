//! The interpreter and connector runtime against the API emulators:
//! fallbacks, on_error, fan-out and batching, retries with backoff and
//! Retry-After (virtual time), token refresh under concurrency, and the
//! client-side rate limit.

use std::sync::Arc;
use std::time::Duration;

use patchbay::catalog::{Catalog, ErrorKind};
use patchbay::connections::ResolvedConnection;
use patchbay::connectors::native::MemoryStore;
use patchbay::connectors::Runtime;
use patchbay::emulator::{ghl, sendpulse, Fault};
use patchbay::interpreter::{self, NoCheckpoints, RunReport, RunRequest, RunStatus, StepStatus};
use patchbay::recipe::load::load_texts;
use patchbay::recipe::validate::ValidRecipe;
use serde_json::{json, Value};

fn conn(name: &str, connector: &str, fields: &[(&str, &str, bool)]) -> ResolvedConnection {
    ResolvedConnection::from_values(name, connector, fields)
}

fn ghl_conn(e: &ghl::GhlEmulator) -> ResolvedConnection {
    let c = e.config();
    conn(
        "ghl-main",
        "ghl",
        &[
            ("base_url", &e.base_url(), false),
            ("token", &c.token, true),
            ("location_id", &c.location_id, false),
            ("refresh_token", &c.refresh_token, true),
            ("client_id", &c.client_id, true),
            ("client_secret", &c.client_secret, true),
        ],
    )
}

fn sp_conn(e: &sendpulse::SendPulseEmulator) -> ResolvedConnection {
    let c = e.config();
    conn(
        "sendpulse-main",
        "sendpulse",
        &[
            ("base_url", &e.base_url(), false),
            ("client_id", &c.client_id, true),
            ("client_secret", &c.client_secret, true),
        ],
    )
}

fn runtime(conns: Vec<ResolvedConnection>) -> (Runtime, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    (
        Runtime::new(Catalog::builtin(), conns, store.clone(), store.clone()),
        store,
    )
}

fn recipe(text: &str) -> ValidRecipe {
    let loaded = load_texts(
        &[("test.yaml".into(), text.into())],
        &Catalog::builtin(),
        None,
    );
    assert!(loaded.errors() == 0, "{:?}", loaded.diagnostics);
    loaded.recipes.into_iter().next().unwrap()
}

async fn run(r: &ValidRecipe, event: Value, rt: &Runtime) -> RunReport {
    interpreter::run(
        RunRequest {
            recipe: r,
            event: &event,
            run_id: "run-1",
            started_at: chrono::Utc::now(),
            resume: &[],
        },
        rt,
        &NoCheckpoints,
    )
    .await
}

fn step<'a>(r: &'a RunReport, id: &str) -> &'a interpreter::StepRecord {
    r.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no step {id} in {:?}", r.steps))
}

#[tokio::test]
async fn fallback_path_is_taken_on_conflict_and_its_output_stands_in() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    let existing = e.insert_contact(json!({"email": "ada@example.com", "firstName": "Ada"}));
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: ghl.contact.created }
steps:
  - id: contact
    action: ghl.contacts.create
    with: { email: "ada@example.com", firstName: "Ada" }
    fallback:
      - when: error.kind == "not_found"
        steps:
          - { id: never, action: ghl.contacts.get, with: { contactId: "x" } }
      - when: error.kind == "conflict"
        steps:
          - id: existing
            action: ghl.contacts.lookup
            with: { email: "ada@example.com" }
  - id: note
    action: ghl.notes.create
    with:
      contactId: "{{ steps.contact.output.id }}"
      body: "rescued by path {{ steps.contact.status }}"
"#,
    );
    let report = run(&r, json!({}), &rt).await;
    assert_eq!(report.status, RunStatus::Completed, "{report:?}");
    let contact = step(&report, "contact");
    assert_eq!(contact.rescued_by, Some(1));
    assert_eq!(contact.error.as_ref().unwrap().kind, ErrorKind::Conflict);
    assert_eq!(contact.output["id"], json!(existing));
    assert!(report.steps.iter().all(|s| s.id != "never"));
    assert_eq!(e.notes(&existing).len(), 1);
    assert_eq!(e.notes(&existing)[0]["body"], "rescued by path completed");
}

#[tokio::test]
async fn on_error_continue_lets_the_run_go_on_and_fail_stops_it() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: ghl.contact.created }
steps:
  - id: missing
    action: ghl.contacts.get
    with: { contactId: "doesNotExist12345678" }
    on_error: continue
  - id: after
    action: store.put
    with: { key: "k", value: "{{ steps.missing.status }}/{{ steps.missing.error.kind }}" }
  - id: fails
    action: ghl.contacts.get
    with: { contactId: "doesNotExist12345678" }
  - id: never
    action: store.put
    with: { key: "k2", value: 1 }
"#,
    );
    let report = run(&r, json!({}), &rt).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(step(&report, "missing").status, StepStatus::Failed);
    assert_eq!(step(&report, "after").output, json!("failed/not_found"));
    assert_eq!(report.failed_step.as_deref(), Some("fails"));
    assert_eq!(report.error.as_ref().unwrap().kind, ErrorKind::NotFound);
    assert!(report.steps.iter().all(|s| s.id != "never"));
}

#[tokio::test]
async fn for_each_250_items_is_batched_by_batch_size() {
    let e = sendpulse::start(sendpulse::SendPulseConfig::default())
        .await
        .unwrap();
    let book = e.insert_book("leads");
    let (rt, _) = runtime(vec![sp_conn(&e)]);
    let r = recipe(&format!(
        r#"
recipe: t
trigger: {{ every: 1h }}
steps:
  - id: add
    action: sendpulse.subscribers.add
    for_each: "range(250)"
    batch_size: 100
    with:
      id: {book}
      emails:
        - email: "user{{{{ item }}}}@example.com"
          variables: {{ n: "{{{{ item }}}}" }}
"#
    ));
    let report = run(&r, json!({}), &rt).await;
    assert_eq!(report.status, RunStatus::Completed, "{report:?}");
    let calls: Vec<usize> = e
        .requests()
        .iter()
        .filter(|q| q.path.ends_with("/emails") && q.method == "POST")
        .map(|q| q.body["emails"].as_array().unwrap().len())
        .collect();
    assert_eq!(calls, [100, 100, 50]);
    assert_eq!(e.subscribers(book).len(), 250);
    assert_eq!(step(&report, "add").output.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bad_request_is_not_retried_and_keeps_the_api_message() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    e.control().inject(
        Fault::Status(
            400,
            json!({"statusCode": 400, "message": "Invalid date format for dueDate"}),
        ),
        1,
    );
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: ghl.contact.created }
steps:
  - id: c
    action: ghl.contacts.create
    retry: { attempts: 5, backoff: 1s }
    with: { email: "x@example.com" }
"#,
    );
    let report = run(&r, json!({}), &rt).await;
    let c = step(&report, "c");
    assert_eq!(c.attempts, 1);
    let err = c.error.as_ref().unwrap();
    assert_eq!((err.kind, err.status), (ErrorKind::BadRequest, Some(400)));
    assert_eq!(err.message, "Invalid date format for dueDate");
    assert_eq!(e.requests().len(), 1);
}

#[tokio::test]
async fn invalid_input_fails_before_any_request() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: http.webhook }
steps:
  - id: t
    action: ghl.tasks.create
    with: { contactId: "c", title: "t", dueDate: "d", completed: "{{ event.done }}" }
"#,
    );
    let report = run(&r, json!({"done": "yes"}), &rt).await;
    let err = step(&report, "t").error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message.contains("input `completed` must be boolean"),
        "{}",
        err.message
    );
    assert!(e.requests().is_empty());
}

/// Request arrival gaps, in seconds of (virtual) time.
fn gaps(e: &patchbay::emulator::Emulator) -> Vec<f64> {
    let r = e.requests();
    r.windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_within_jitter_bounds() {
    let e = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: ghl.contact.created }
steps:
  - id: c
    action: ghl.contacts.get
    retry: { attempts: 6, backoff: 1s, max_backoff: 60s }
    with: { contactId: "{{ event.id }}" }
"#,
    );
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    // Many runs: every gap is within its ceiling, and later gaps are longer on average.
    let mut sums = [0.0f64; 5];
    let runs = 40;
    for _ in 0..runs {
        e.control().clear_requests();
        e.control()
            .inject(Fault::Status(503, json!({"message": "unavailable"})), 5);
        let report = run(&r, json!({"id": id}), &rt).await;
        assert_eq!(step(&report, "c").attempts, 6);
        assert_eq!(report.status, RunStatus::Completed);
        let g = gaps(e.emulator());
        assert_eq!(g.len(), 5);
        for (i, gap) in g.iter().enumerate() {
            let ceiling = 2f64.powi(i as i32);
            assert!(*gap <= ceiling + 0.05, "gap {i} = {gap} over {ceiling}");
            sums[i] += gap;
        }
    }
    let means: Vec<f64> = sums.iter().map(|s| s / runs as f64).collect();
    assert!(
        means.windows(2).all(|w| w[1] > w[0]),
        "means do not grow: {means:?}"
    );
    // Full jitter: the mean sits near half the ceiling.
    assert!(means[4] > 4.0 && means[4] < 12.0, "{means:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_and_http_date_is_honoured() {
    let e = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let r = recipe(
        r#"
recipe: t
trigger: { on: ghl.contact.created }
steps:
  - id: c
    action: ghl.contacts.get
    retry: { attempts: 3, backoff: 100ms, max_backoff: 200ms }
    with: { contactId: "{{ event.id }}" }
"#,
    );
    e.control().inject(Fault::RateLimited(Some("7".into())), 1);
    let report = run(&r, json!({"id": id}), &rt).await;
    assert_eq!(report.status, RunStatus::Completed);
    let g = gaps(e.emulator());
    assert!(g[0] >= 7.0 && g[0] < 7.5, "{g:?}");

    e.control().clear_requests();
    // An HTTP-date is relative to the wall clock; ask for ~30 s from now.
    let when = chrono::Utc::now() + chrono::Duration::seconds(30);
    e.control().inject(
        Fault::RateLimited(Some(when.to_rfc2822().replace("+0000", "GMT"))),
        1,
    );
    let report = run(&r, json!({"id": id}), &rt).await;
    assert_eq!(report.status, RunStatus::Completed);
    let g = gaps(e.emulator());
    assert!(g[0] >= 28.0 && g[0] <= 31.0, "{g:?}");
}

#[tokio::test]
async fn twenty_concurrent_requests_share_one_token_refresh() {
    let e = sendpulse::start(sendpulse::SendPulseConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let book = e.insert_book("b");
    let (rt, _) = runtime(vec![sp_conn(&e)]);
    let cat = Catalog::builtin();
    let op = cat.op("sendpulse.subscribers.count").unwrap();
    let input = json!({"id": book}).as_object().unwrap().clone();
    rt.call(&op, None, &input, None).await.unwrap();
    assert_eq!(e.token_fetches(), 1);
    e.expire_tokens();
    let calls = (0..20).map(|_| rt.call(&op, None, &input, None));
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(e.token_fetches(), 2, "exactly one refresh after the 401s");
}

#[tokio::test]
async fn ghl_refresh_token_flow_rotates_and_persists_the_refresh_token() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    let (rt, store) = runtime(vec![ghl_conn(&e)]);
    let cat = Catalog::builtin();
    let op = cat.op("ghl.contacts.get").unwrap();
    let input = json!({"contactId": id}).as_object().unwrap().clone();
    rt.call(&op, None, &input, None).await.unwrap();
    e.expire_tokens();
    let results =
        futures_util::future::join_all((0..20).map(|_| rt.call(&op, None, &input, None))).await;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(e.token_refreshes(), 1);
    use patchbay::connectors::auth::TokenStore;
    let saved = store.load("ghl-main").await.expect("rotated tokens saved");
    assert_eq!(
        saved.refresh_token.map(|s| s.expose().to_string()),
        e.refresh_token()
    );
}

#[tokio::test(start_paused = true)]
async fn five_hundred_actions_get_no_429_and_stay_within_the_limit() {
    let e = ghl::start(ghl::GhlConfig::default()).await.unwrap();
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let cat = Catalog::builtin();
    let op = cat.op("ghl.tags.add").unwrap();
    let rt = Arc::new(rt);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (rt, op, id) = (rt.clone(), op.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let input = json!({"contactId": id, "tags": [format!("t{i}")]})
                .as_object()
                .unwrap()
                .clone();
            rt.call(&op, None, &input, None).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let reqs = e.requests();
    assert_eq!(reqs.len(), 500);
    assert!(
        reqs.iter().all(|r| r.status != 429),
        "the emulator answered 429"
    );
    // Any 10 s window holds at most 100 requests.
    let times: Vec<Duration> = reqs.iter().map(|r| r.at - reqs[0].at).collect();
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(10))
            .count();
        assert!(n <= 100, "{n} requests in the 10 s from {t:?}");
    }
    assert!(times[499] >= Duration::from_secs(40));
}

#[tokio::test]
async fn a_reset_connection_is_a_network_error_and_is_retried() {
    let e = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let cat = Catalog::builtin();
    let op = cat.op("ghl.contacts.get").unwrap();
    let input = json!({"contactId": id}).as_object().unwrap().clone();
    e.control().inject(Fault::Reset, 1);
    let policy = patchbay::recipe::validate::RetryPolicy {
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let out = rt.call(&op, None, &input, Some(policy)).await.unwrap();
    assert_eq!(out.attempts, 2);
    assert_eq!(out.output["id"], json!(id));
    e.control().inject(Fault::Reset, 3);
    let f = rt.call(&op, None, &input, Some(policy)).await.unwrap_err();
    assert_eq!((f.error.kind, f.attempts), (ErrorKind::Network, 3));
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_bounds_requests_in_flight() {
    let e = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let id = e.insert_contact(json!({"email": "a@b.c"}));
    e.control().set_latency(Duration::from_millis(100));
    let mut c = ghl_conn(&e);
    c.concurrency = Some(2);
    let (rt, _) = runtime(vec![c]);
    let cat = Catalog::builtin();
    let op = cat.op("ghl.contacts.get").unwrap();
    let input = json!({"contactId": id}).as_object().unwrap().clone();
    let start = tokio::time::Instant::now();
    let results =
        futures_util::future::join_all((0..10).map(|_| rt.call(&op, None, &input, None))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    // Ten 100 ms requests, two at a time: five rounds.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(700),
        "{took:?}"
    );
}

#[tokio::test]
async fn list_operations_page_through_every_record() {
    let e = ghl::start(ghl::GhlConfig {
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..250 {
        e.insert_contact(json!({"email": format!("user{i}@example.com")}));
    }
    let (rt, _) = runtime(vec![ghl_conn(&e)]);
    let cat = Catalog::builtin();
    let op = cat.op("ghl.contacts.list").unwrap();
    let out = rt
        .call(&op, None, &serde_json::Map::new(), None)
        .await
        .unwrap();
    let items = out.output.as_array().unwrap();
    assert_eq!(items.len(), 250);
    let mut emails: Vec<&str> = items.iter().map(|c| c["email"].as_str().unwrap()).collect();
    emails.sort();
    emails.dedup();
    assert_eq!(emails.len(), 250, "a record was listed twice");
    let pages: Vec<String> = e.requests().iter().map(|r| r.query.clone()).collect();
    assert!(pages.len() >= 3 && pages.len() <= 4, "{pages:?}");
    assert!(pages[1].contains("startAfterId="), "{pages:?}");
}

#[test]
fn set_connections_names_the_added_changed_and_removed_connections_only() {
    let a = conn("a", "ghl", &[("token", "t1", true)]);
    let b = conn("b", "ghl", &[("token", "t2", true)]);
    let (rt, _) = runtime(vec![a.clone(), b.clone()]);
    // The same values again: nothing changed.
    assert!(rt.set_connections(vec![a.clone(), b.clone()]).is_empty());
    // A rotated secret is a change; a removed and an added one are too.
    let rotated = conn("a", "ghl", &[("token", "t1-rotated", true)]);
    assert_ne!(rotated, a);
    let c = conn("c", "sendpulse", &[]);
    assert_eq!(rt.set_connections(vec![rotated, c]), ["a", "b", "c"]);
}
