//! Entry points for hostile input: each takes arbitrary bytes and drives one
//! parser the way the engine does. The cargo-fuzz targets in `fuzz/` call
//! them, and `tests/fuzz_corpus.rs` replays the kept corpora through the
//! same functions in an ordinary `cargo test`. None may panic, hang or
//! grow memory without bound, whatever the bytes.

use std::sync::LazyLock;

use crate::catalog::Catalog;

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

/// The fuzz targets, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: &[&str] = &["recipe", "template", "webhook", "connections", "catalog"];

/// Runs the entry point of a target by its name; `false` for an unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "recipe" => recipe(data),
        "template" => template(data),
        "webhook" => webhook(data),
        "connections" => connections(data),
        "catalog" => catalog(data),
        _ => return false,
    }
    true
}

/// A recipe file: YAML, schema and catalog validation, as `validate` does.
pub fn recipe(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::recipe::load::load_texts(
        &[("fuzz.yaml".to_string(), text.into_owned())],
        &CATALOG,
        None,
    );
}

/// A template (first line) analysed, compiled and rendered against a JSON
/// context (the rest, when it parses), and the same text as a condition.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let ctx_json: serde_json::Value = serde_json::from_str(rest).unwrap_or_else(|_| {
        serde_json::json!({"event": {"email": "a@example.com", "n": 3, "items": [1, 2]},
                           "vars": {"x": "y"}, "steps": {}})
    });
    let ctx = crate::template::to_value(&ctx_json);
    if crate::template::analyze_template(source).is_ok() {
        if let Ok(t) = crate::template::Template::compile(source) {
            let _ = t.render(&ctx);
        }
    }
    if crate::template::analyze_expression(source).is_ok() {
        if let Ok(c) = crate::template::Condition::compile(source) {
            let _ = c.eval(&ctx);
            let _ = c.value(&ctx);
        }
    }
}

/// A webhook body for one of the built-in connectors (chosen by the first
/// byte), split into events and coerced as the server does.
pub fn webhook(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let hooks: Vec<_> = CATALOG
        .connectors()
        .filter(|c| c.webhook.is_some())
        .collect();
    if hooks.is_empty() {
        return;
    }
    let connector = hooks[*first as usize % hooks.len()];
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if let Ok(items) = crate::interpreter::event::delivery(&CATALOG, connector, parsed) {
        items.for_each(drop);
    }
}

/// A connections file checked against the built-in catalog.
pub fn connections(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Values are not resolved: that reads the environment and files.
    let _ = crate::connections::Connections::parse("fuzz.yaml", &text, &CATALOG);
}

/// A connector (catalog) file.
pub fn catalog(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::catalog::parse_connector("fuzz.yaml", &text);
}
