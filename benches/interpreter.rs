//! Per-step interpreter overhead without the network: render a 6-field
//! mapping, check the input against the operation, build the request and
//! extract the output with the catalog's JSONPath.
//!
//! `cargo bench --bench interpreter`; results go to `docs/performance.md`.

use std::time::Instant;

use patchbay::catalog::Catalog;
use patchbay::connectors::request::{complete_input, prepare};
use patchbay::interpreter::render;
use patchbay::jsonpath;
use patchbay::recipe::load::load_texts;
use patchbay::template;
use serde_json::json;

const RECIPE: &str = r#"
recipe: bench
trigger:
  on: sendpulse.subscriber.added
steps:
  - id: contact
    action: ghl.contacts.create
    with:
      email: "{{ event.email | lower }}"
      firstName: "{{ event.variables.name | split | first }}"
      lastName: "{{ event.variables.name | split | last }}"
      phone: "{{ event.variables.phone | phone }}"
      source: "SendPulse book {{ event.book_id }}"
      tags: ["sendpulse", "book-{{ event.book_id }}"]
"#;

fn main() {
    let catalog = Catalog::builtin();
    let loaded = load_texts(&[("bench.yaml".into(), RECIPE.into())], &catalog, None);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let step = &loaded.recipes[0].steps[0];
    let event = json!({
        "event": "new_emails", "book_id": 490686, "email": "Ada@Example.com", "timestamp": 1496827422,
        "variables": {"name": "Ada Lovelace", "phone": "+44 20 7946 0958"}
    });
    let response = json!({"contact": {"id": "seD4PfOuKoVMLkEZqohJ", "email": "ada@example.com", "tags": ["sendpulse"]}});
    let output = jsonpath::compile("$.contact").unwrap();
    let ctx_json = json!({"event": event, "vars": {}, "steps": {}, "run": {"id": "r1", "recipe": "bench", "started_at": "2026-01-01T00:00:00Z"}});

    let conn = patchbay::connections::ResolvedConnection {
        name: "ghl-main".into(),
        connector: "ghl".into(),
        fields: [(
            "location_id".to_string(),
            patchbay::connections::FieldValue::Plain("loc1".into()),
        )]
        .into_iter()
        .collect(),
        rate_limits: None,
        concurrency: None,
    };
    let n = 200_000;
    let mut sink = 0usize;
    for _ in 0..2 {
        let t = Instant::now();
        for _ in 0..n {
            let ctx = template::to_value(&ctx_json);
            let input = render(&step.with, &ctx).unwrap();
            let map = complete_input(&step.op, Some(&conn), input.as_object().unwrap()).unwrap();
            let req = prepare(&step.op, "http://127.0.0.1:1", &map);
            let out = output.first(&response).unwrap();
            sink += req.unwrap().body.map(|b| b.to_string().len()).unwrap_or(0)
                + out.as_object().map(|o| o.len()).unwrap_or(0);
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "per step (context + render 6 fields + input check + request + output): {per:.2} µs"
        );
    }
    std::hint::black_box(sink);
}
