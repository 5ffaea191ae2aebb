//! `patchbay test` speed: 1,000 generated cases (100 test files of 10
//! cases over one recipe, each case with a rate-limited retry, a fallback-free
//! three-step run and expectations on requests, outputs and links), timed
//! as the release binary runs them, process start included.
//!
//! `cargo bench --bench testcmd`; results go to `docs/performance.md`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RECIPE: &str = r#"# yaml-language-server: $schema=../schemas/recipe.schema.json
recipe: bench-contact
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
      email: "{{ event.email | lower }}"
      firstName: "{{ event.variables.name | split | first }}"
      tags: ["sendpulse", "book-{{ event.book_id }}"]
    retry: { attempts: 3, backoff: 5s, max_backoff: 60s }
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

fn case(file: usize, i: usize) -> String {
    let email = format!("user{file}x{i}@example.com");
    format!(
        r#"  - name: case {i}
    event: [{{ event: new_emails, book_id: "1", email: "{email}", variables: {{ name: "Ada Lovelace" }} }}]
    now: "2026-03-01T10:00:00Z"
    responses:
      ghl.contacts.upsert:
        - {{ status: 429, headers: {{ Retry-After: "2" }} }}
        - {{ status: 200, body: {{ contact: {{ id: "c{i}" }} }} }}
      ghl.notes.create: {{ status: 201, body: {{ note: {{ id: "n{i}" }} }} }}
    expect:
      requests:
        - operation: ghl.contacts.upsert
        - operation: ghl.contacts.upsert
          body: {{ email: "{{{{ event.email }}}}", firstName: Ada, tags: [sendpulse, book-1], locationId: loc-1 }}
        - operation: ghl.notes.create
          path: /contacts/c{i}/notes
          body_exact: {{ body: "subscribed at 2026-03-01T10:00:00.000Z" }}
      outcome: completed
      outputs: {{ contact: {{ id: "c{i}" }} }}
      links: [{{ namespace: contacts, key: "{email}", value: "c{i}" }}]
"#
    )
}

fn generate(dir: &Path, files: usize, cases: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..files {
        std::fs::write(dir.join(format!("t{f:03}.yaml")), RECIPE).unwrap();
        let mut text = String::from(
            "# yaml-language-server: $schema=../schemas/recipe-test.schema.json\nconnections:\n  ghl-main: { location_id: loc-1 }\ncases:\n",
        );
        for i in 0..cases {
            text.push_str(&case(f, i));
        }
        std::fs::write(dir.join(format!("t{f:03}.test.yaml")), text).unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("patchbay-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    generate(&dir, 100, 10);
    let bin = env!("CARGO_BIN_EXE_patchbay");
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new(bin).arg("test").arg(&dir).output().unwrap();
        runs.push(t.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert_eq!(stdout, "1000 passed, 0 failed\n");
    }
    let m = median(runs.clone());
    println!(
        "patchbay test: 1000 cases in 100 files, process start included: median {:.0} ms (min {:.0} ms, max {:.0} ms; {:.0} µs per case)",
        m.as_secs_f64() * 1e3,
        runs.iter().min().unwrap().as_secs_f64() * 1e3,
        runs.iter().max().unwrap().as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e6 / 1000.0
    );
    // Each case waits a Retry-After of 2 s in virtual time: 2,000 s of
    // back-off that take no real time.
    let _ = std::fs::remove_dir_all(&dir);
}
