//! `patchbay test`, run as a binary on small self-contained recipes in
//! temporary folders: each kind of mismatch fails with its precise message,
//! exit codes, JUnit and JSON output, `--filter`, `--update`, and the checks
//! `validate` makes of test files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A SendPulse subscriber becomes a HighLevel contact with a note, and the
/// link is stored.
const RECIPE: &str = r#"recipe: contact
vars:
  book: 1
trigger:
  on: sendpulse.subscriber.added
  connection: sendpulse-main
  if: event.book_id == vars.book
steps:
  - id: contact
    action: ghl.contacts.upsert
    connection: ghl-main
    with:
      email: "{{ event.email }}"
      tags: ["book-{{ event.book_id }}"]
    retry: { attempts: 3, backoff: 10s, max_backoff: 60s }
  - id: note
    if: steps.contact.output.id is defined
    action: ghl.notes.create
    with:
      contactId: "{{ steps.contact.output.id }}"
      body: "subscribed at {{ run.started_at }}"
  - id: link
    action: store.put
    with: { namespace: contacts, key: "{{ event.email }}", value: "{{ steps.contact.output.id }}" }
"#;

const HEAD: &str = "# yaml-language-server: $schema=../schemas/recipe-test.schema.json\nconnections:\n  ghl-main: { location_id: loc-1 }\ncases:\n";

/// A case that passes: the upsert is rate limited once, then answers.
const PASSING: &str = r#"  - name: upserts the contact
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    now: "2026-03-01T10:00:00Z"
    responses:
      ghl.contacts.upsert:
        - { status: 429, headers: { Retry-After: "30" } }
        - { status: 200, body: { contact: { id: c1 } } }
      ghl.notes.create: { status: 201, body: { note: { id: n1 } } }
    expect:
      requests:
        - operation: ghl.contacts.upsert
          body: { email: "{{ event.email }}" }
        - operation: ghl.contacts.upsert
          method: POST
          body: { email: a@b.c, tags: ["book-1"], locationId: loc-1 }
        - operation: ghl.notes.create
          path: "/contacts/{{ steps.contact.output.id }}/notes"
          body_exact: { body: "subscribed at 2026-03-01T10:00:00.000Z" }
      outcome: completed
      outputs: { contact: { id: c1 } }
      links: [{ namespace: contacts, key: a@b.c, value: c1 }]
"#;

static N: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder holding the recipe and a test file with these cases.
fn setup(cases: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "patchbay-testcmd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("contact.yaml"), RECIPE).unwrap();
    std::fs::write(dir.join("contact.test.yaml"), format!("{HEAD}{cases}")).unwrap();
    dir
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn patchbay(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn test_dir(dir: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["test", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    patchbay(&args)
}

/// Runs one failing case and returns its output, checking the exit code
/// and summary.
fn failing(case: &str) -> String {
    let dir = setup(case);
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.ends_with("0 passed, 1 failed\n"), "{}", o.stdout);
    o.stdout
}

#[test]
fn a_passing_case_exits_0_with_the_summary_and_takes_no_real_time_for_back_off() {
    let dir = setup(PASSING);
    let start = std::time::Instant::now();
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "1 passed, 0 failed\n");
    // Retry-After: 30 is waited in virtual time.
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn a_missing_request_fails_with_its_number_and_operation() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
    expect:
      requests:
        - operation: ghl.contacts.upsert
        - operation: ghl.notes.create
"#,
    );
    assert!(
        out.contains("FAIL ")
            && out.contains("contact.test.yaml::c\n")
            && out.contains(
                "  request #2 (ghl.notes.create) was expected but not sent (only 1 request was sent)\n"
            ),
        "{out}"
    );
}

#[test]
fn an_extra_request_fails_with_what_was_sent() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: { id: c1 } } }
      ghl.notes.create: { status: 201 }
    expect:
      requests:
        - operation: ghl.contacts.upsert
"#,
    );
    assert!(
        out.contains("  request #2 (ghl.notes.create) was sent but not expected: POST https://services.leadconnectorhq.com/contacts/c1/notes {\"body\":\"subscribed at 2026-01-01T00:00:00.000Z\"}\n"),
        "{out}"
    );
}

#[test]
fn a_body_difference_fails_with_the_pointer_and_a_diff() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: x@y.z }]
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
    expect:
      requests:
        - operation: ghl.contacts.upsert
          body: { email: a@b.c, tags: ["book-1"] }
"#,
    );
    assert!(
        out.contains(
            "  request #1 (ghl.contacts.upsert): body differs at /email: expected \"a@b.c\", got \"x@y.z\"\n    --- expected\n    +++ actual\n     {\n    -  \"email\": \"a@b.c\",\n    +  \"email\": \"x@y.z\",\n       \"tags\": [\n"
        ),
        "{out}"
    );
}

#[test]
fn requests_in_another_order_fail_as_wrong_order() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: { id: c1 } } }
      ghl.notes.create: { status: 201 }
    expect:
      requests:
        - operation: ghl.notes.create
        - operation: ghl.contacts.upsert
"#,
    );
    assert!(
        out.contains("  request #1: expected ghl.notes.create, got ghl.contacts.upsert (the same requests were sent in another order)\n"),
        "{out}"
    );
}

#[test]
fn a_wrong_outcome_fails_with_the_error_that_ended_the_run() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { status: 400, body: { message: "bad email" } }
    expect:
      outcome: completed
"#,
    );
    assert!(
        out.contains(
            "  outcome: expected completed, got failed (step contact: bad_request: bad email)\n"
        ),
        "{out}"
    );
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { status: 400, body: { message: "bad email" } }
    expect:
      outcome: failed
      error: conflict
      failed_step: note
"#,
    );
    assert!(
        out.contains("  error: expected conflict, got bad_request: bad email\n")
            && out.contains("  failed step: expected note, got contact\n"),
        "{out}"
    );
}

#[test]
fn an_uncalled_canned_response_fails_the_case() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert:
        - { body: { contact: {} } }
        - { body: { contact: {} } }
"#,
    );
    assert!(
        out.contains("  canned response for ghl.contacts.upsert #2 was never used\n"),
        "{out}"
    );
}

#[test]
fn a_call_without_a_canned_response_fails_the_case() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: { id: c1 } } }
"#,
    );
    assert!(
        out.contains("  ghl.notes.create was called but the case gives no response for it\n"),
        "{out}"
    );
    // The last answer of a sequence is not repeated.
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: [{ status: 500 }]
"#,
    );
    assert!(
        out.contains("  ghl.contacts.upsert was called 2 times but the case gives 1 response for it (the last one is not repeated)\n"),
        "{out}"
    );
}

#[test]
fn skipped_steps_outputs_and_links_are_checked() {
    let out = failing(
        r#"  - name: c
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: { name: x } } }
    expect:
      skipped: [note, link]
      outputs: { contact: { id: c1 } }
      links: [{ namespace: contacts, key: a@b.c, value: c1 }]
"#,
    );
    assert!(
        out.contains("  step link: expected skipped, got failed\n")
            && out.contains("  outputs.contact differs at /id: missing (expected \"c1\")\n")
            && out.contains("  link contacts/a@b.c was not written (the run wrote: nothing)\n"),
        "{out}"
    );
}

#[test]
fn transport_errors_auth_renewal_store_seed_and_filtered_events() {
    let dir = setup(
        r#"  - name: timeout fails the run after the retries
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: [{ error: timeout }, { error: reset }, { error: timeout }]
    expect:
      outcome: failed
      error: timeout
      failed_step: contact
  - name: an expired token is renewed once
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    store:
      - { namespace: contacts, key: a@b.c, value: old }
    responses:
      ghl.contacts.upsert: [{ status: 401 }, { body: { contact: { id: c2 } } }]
      ghl.notes.create: { status: 201 }
    expect:
      requests:
        - { operation: ghl.contacts.upsert }
        - { operation: ghl.contacts.upsert }
        - { operation: ghl.notes.create, path: /contacts/c2/notes }
      links: [{ namespace: contacts, key: a@b.c, value: c2 }]
  - name: another book is filtered out
    event: [{ event: new_emails, book_id: "2", email: a@b.c }]
    expect: { outcome: skipped, requests: [] }
  - name: vars override the recipe's
    event: [{ event: new_emails, book_id: "2", email: a@b.c }]
    vars: { book: 2 }
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
    expect: { outcome: failed, error: template, failed_step: link, skipped: [note] }
  - name: a delivery of two events runs both
    event:
      - { event: new_emails, book_id: "1", email: a@b.c }
      - { event: unsubscribe, book_id: "1", email: z@b.c }
      - { event: new_emails, book_id: "1", email: d@e.f }
    responses:
      ghl.contacts.upsert: [{ body: { contact: {} } }, { body: { contact: {} } }]
    expect:
      requests:
        - { operation: ghl.contacts.upsert, body: { email: a@b.c } }
        - { operation: ghl.contacts.upsert, body: { email: d@e.f } }
"#,
    );
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "5 passed, 0 failed\n");
}

/// The server's answer to a SendPulse delivery that is not an array
/// (tests/engine.rs checks the server says exactly this).
const NOT_AN_ARRAY: &str = "SendPulse deliveries are a JSON array of events";

#[test]
fn a_delivery_the_server_would_not_take_fails_the_case_with_the_server_message() {
    let out = failing(
        r#"  - name: one object instead of an array
    event: { event: new_emails, book_id: "1", email: a@b.c }
    expect: { requests: [] }
"#,
    );
    assert!(out.contains(&format!("  {NOT_AN_ARRAY}\n")), "{out}");
    // An item without its type field is no event for the server either.
    let out = failing(
        r#"  - name: an item without its type
    event: [{ book_id: "1", email: a@b.c }]
    expect: { outcome: skipped, requests: [] }
"#,
    );
    assert!(
        out.contains("  item 1 of the delivery has no `event` field naming its event type, so no trigger takes it\n"),
        "{out}"
    );
}

#[test]
fn errors_in_test_files_exit_2_with_file_line_col() {
    let dir = setup(
        r#"  - name: c
    evnt: []
  - name: d
    responses:
      ghl.tasks.create: { status: 201 }
"#,
    );
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    let file = dir.join("contact.test.yaml").display().to_string();
    assert!(
        o.stdout.contains(&format!("  --> {file}:6:5\n"))
            && o.stdout
                .contains("error[unknown-key]: unknown key `evnt` in a case")
            && o.stdout.contains(&format!("  --> {file}:9:7\n"))
            && o.stdout.contains(
                "error[response-not-callable]: the recipe never calls `ghl.tasks.create`"
            ),
        "{}",
        o.stdout
    );
    // JUnit reports the broken file as an error, diagnostics go to stderr.
    let o = test_dir(&dir, &["--format", "junit"]);
    assert_eq!(o.code, 2);
    check_xml(&o.stdout);
    assert!(
        o.stdout
            .contains("<error message=\"the test file has errors\" type=\"invalid\">")
            && o.stderr.contains("error[unknown-key]"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    // No test file at all is a usage error too.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = test_dir(&empty, &[]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no test files"), "{}", o.stderr);
}

/// Element names opened and closed in order: a well-formedness check
/// without an XML parser (attributes are quoted, text has no `<`).
fn check_xml(xml: &str) {
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
    let mut stack: Vec<String> = Vec::new();
    let body = &xml[xml.find("?>").unwrap() + 2..];
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        assert!(!text.contains('>'), "stray `>` in text: {text}");
        let end = rest[i..].find('>').unwrap() + i;
        let tag = &rest[i + 1..end];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
}

#[test]
fn junit_output_is_well_formed_and_escaped() {
    let dir = setup(&format!(
        "{PASSING}{}",
        r#"  - name: "fails <with> & \"quotes\""
    event: [{ event: new_emails, book_id: "1", email: "<x>@y.z" }]
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
    expect:
      requests:
        - operation: ghl.contacts.upsert
          body: { email: a@b.c }
"#
    ));
    let o = test_dir(&dir, &["--format", "junit"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    check_xml(&o.stdout);
    assert!(
        o.stdout.contains("<testsuites name=\"patchbay test\" tests=\"2\" failures=\"1\"")
            && o.stdout.contains("<testcase name=\"upserts the contact\" classname=")
            && o.stdout.contains("<testcase name=\"fails &lt;with&gt; &amp; &quot;quotes&quot;\"")
            && o.stdout.contains("<failure message=\"request #1 (ghl.contacts.upsert): body differs at /email: expected &quot;a@b.c&quot;, got &quot;&lt;x&gt;@y.z&quot;\" type=\"request_differs\">"),
        "{}",
        o.stdout
    );
}

#[test]
fn json_output_lists_cases_mismatches_and_requests() {
    let dir = setup(&format!(
        "{PASSING}{}",
        r#"  - name: fails
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
    expect: { outcome: skipped }
"#
    ));
    let o = test_dir(&dir, &["--format", "json"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["passed"], 1);
    assert_eq!(v["failed"], 1);
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0]["passed"], true);
    assert_eq!(cases[0]["requests"].as_array().unwrap().len(), 3);
    assert_eq!(cases[0]["requests"][1]["body"]["locationId"], "loc-1");
    assert_eq!(cases[1]["case"], "fails");
    assert_eq!(cases[1]["outcome"], "failed");
    assert_eq!(cases[1]["mismatches"][0]["kind"], "outcome");
    assert!(cases[1]["name"]
        .as_str()
        .unwrap()
        .ends_with("contact.test.yaml::fails"));
    assert_eq!(v["diagnostics"], serde_json::json!([]));
}

#[test]
fn filter_runs_only_matching_cases() {
    let dir = setup(&format!(
        "{PASSING}{}",
        r#"  - name: fails
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    expect: { outcome: failed }
"#
    ));
    let o = test_dir(&dir, &["--filter", "::upserts"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "1 passed, 0 failed\n");
    let o = test_dir(&dir, &["--filter", "fails"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.ends_with("0 passed, 1 failed\n"), "{}", o.stdout);
}

#[test]
fn update_rewrites_expected_requests_and_then_passes() {
    let dir = setup(
        r#"  # a comment that stays
  - name: recorded
    event: [{ event: new_emails, book_id: "1", email: a@b.c }]
    responses:
      ghl.contacts.upsert:
        - { status: 429 }
        - { body: { contact: { id: c1 } } }
      ghl.notes.create: { status: 201 }
    expect:
      requests:
        - operation: ghl.contacts.upsert
          body: { email: wrong@b.c }
      outcome: completed   # kept too
  - name: new case without expectations
    event: [{ event: new_emails, book_id: "1", email: q@b.c }]
    responses:
      ghl.contacts.upsert: { body: { contact: {} } }
"#,
    );
    let file = dir.join("contact.test.yaml");
    let before = std::fs::read_to_string(&file).unwrap();
    assert_eq!(test_dir(&dir, &[]).code, 1);
    let o = test_dir(&dir, &["--update"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("updated the expected requests of 2 cases"),
        "{}",
        o.stderr
    );
    assert_eq!(o.stdout, "2 passed, 0 failed\n");
    let after = std::fs::read_to_string(&file).unwrap();
    assert_ne!(before, after);
    assert!(
        after.contains("  # a comment that stays\n")
            && after.contains("      outcome: completed   # kept too\n"),
        "{after}"
    );
    assert!(after.contains("        - operation: ghl.contacts.upsert\n          body: {\"createNewIfDuplicateAllowed\": false, \"email\": \"a@b.c\", \"locationId\": \"loc-1\", \"tags\": [\"book-1\"]}\n        - operation: ghl.contacts.upsert\n"), "{after}");
    // Round trip: a plain run passes, and a second update changes nothing.
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let o = test_dir(&dir, &["--update"]);
    assert_eq!(o.code, 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);
}

#[test]
fn a_recipe_file_given_runs_its_test_file() {
    let dir = setup(PASSING);
    let o = patchbay(&["test", dir.join("contact.yaml").to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "1 passed, 0 failed\n");
}

#[test]
fn validate_checks_test_files_and_does_not_read_them_as_recipes() {
    let dir = setup(PASSING);
    let o = patchbay(&["validate", dir.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("checked 2 files: 0 errors"),
        "{}",
        o.stderr
    );
    let dir = setup(
        r#"  - name: c
    responses:
      ghl.contacts.upsrt: { status: 201 }
      store.put: {}
"#,
    );
    let test_file = dir.join("contact.test.yaml");
    for target in [dir.clone(), test_file.clone()] {
        let o = patchbay(&["validate", "--format", "json", target.to_str().unwrap()]);
        assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
        let lines: Vec<serde_json::Value> = o
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(u64, u64, &str)> = lines
            .iter()
            .map(|d| {
                (
                    d["line"].as_u64().unwrap(),
                    d["column"].as_u64().unwrap(),
                    d["code"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (7, 7, "response-not-callable"),
                (8, 7, "response-not-callable")
            ],
            "{}",
            o.stdout
        );
        assert_eq!(
            lines[0]["suggestion"],
            "did you mean 'ghl.contacts.upsert'?"
        );
    }
    // A test file whose recipe is missing.
    std::fs::remove_file(dir.join("contact.yaml")).unwrap();
    let o = patchbay(&["validate", test_file.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("error[test-recipe-missing]"),
        "{}",
        o.stdout
    );
}

#[test]
fn polls_schedules_http_request_and_event_files() {
    let dir = setup(PASSING);
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(
        "poll.yaml",
        r#"recipe: poll
trigger:
  on: ghl.contacts.new
  every: 5m
steps:
  - id: link
    action: store.put
    with: { key: "{{ event.id }}", value: "{{ event.email }}" }
"#,
    );
    write(
        "poll.test.yaml",
        r#"cases:
  - name: each record of the page is one event
    event_file: page.json
    expect:
      outcome: completed
      links:
        - { key: c1, value: a@b.c }
        - { key: c2, value: d@e.f }
"#,
    );
    write(
        "page.json",
        r#"[{"id": "c1", "email": "a@b.c"}, {"id": "c2", "email": "d@e.f"}]"#,
    );
    write(
        "tick.yaml",
        r#"recipe: tick
trigger:
  every: 1h
steps:
  - id: ping
    action: http.request
    with:
      method: POST
      url: https://example.com/ping
      body: { at: "{{ event.scheduled_at }}", started: "{{ run.started_at }}" }
"#,
    );
    write(
        "tick.test.yaml",
        r#"cases:
  - name: the clock is the case's
    now: "2026-03-01T10:00:00Z"
    responses:
      http.request: [{ status: 503 }, { status: 200, body: { ok: true } }]
    expect:
      requests:
        - { operation: http.request, path: example.com/ping }
        - operation: http.request
          method: POST
          body_exact: { at: "2026-03-01T10:00:00+00:00", started: "{{ run.started_at }}" }
      outputs: { ping: { status: 200, body: { ok: true } } }
"#,
    );
    let o = test_dir(&dir, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "3 passed, 0 failed\n");
    // The clock matters: another `now` fails the exact body.
    let tick = std::fs::read_to_string(dir.join("tick.test.yaml")).unwrap();
    write(
        "tick.test.yaml",
        &tick.replace(
            "now: \"2026-03-01T10:00:00Z\"",
            "now: \"2026-03-02T10:00:00Z\"",
        ),
    );
    let o = test_dir(&dir, &["--filter", "tick"]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("body differs at /at: expected \"2026-03-01T10:00:00+00:00\", got \"2026-03-02T10:00:00+00:00\""),
        "{}",
        o.stdout
    );
}
