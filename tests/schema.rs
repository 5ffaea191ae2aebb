//! The schemas in `schemas/` are the generator's output, and the key lists
//! the loader checks unknown keys against match the schema.

use std::path::Path;

use patchbay::recipe::keys;
use serde_json::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(name),
    )
    .unwrap()
}

#[test]
fn recipe_schema_file_is_the_generated_schema() {
    assert_eq!(
        read("recipe.schema.json"),
        patchbay::schema::recipe_schema(),
        "schemas/recipe.schema.json is stale: run `cargo run -- schema > schemas/recipe.schema.json`"
    );
}

#[test]
fn recipe_test_schema_file_is_the_generated_schema() {
    assert_eq!(
        read("recipe-test.schema.json"),
        patchbay::schema::test_schema(),
        "schemas/recipe-test.schema.json is stale: run `cargo run -- schema --test > schemas/recipe-test.schema.json`"
    );
}

#[test]
fn connector_schema_file_is_the_generated_schema() {
    assert_eq!(
        read("connector.schema.json"),
        patchbay::schema::connector_schema(),
        "schemas/connector.schema.json is stale: run `cargo run -- schema --connector > schemas/connector.schema.json`"
    );
}

fn props(schema: &Value, pointer: &str) -> Vec<String> {
    let mut v: Vec<String> = schema
        .pointer(pointer)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    v.sort();
    v
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn loader_key_lists_match_the_schema() {
    let s: Value = serde_json::from_str(&patchbay::schema::recipe_schema()).unwrap();
    assert_eq!(props(&s, "/properties"), sorted(keys::RECIPE));
    assert_eq!(
        props(&s, "/$defs/Trigger/properties"),
        sorted(keys::TRIGGER)
    );
    assert_eq!(props(&s, "/$defs/Step/properties"), sorted(keys::STEP));
    assert_eq!(props(&s, "/$defs/Retry/properties"), sorted(keys::RETRY));
    assert_eq!(
        props(&s, "/$defs/FallbackPath/properties"),
        sorted(keys::FALLBACK)
    );
}

#[test]
fn example_recipes_carry_the_schema_modeline() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !p.is_file() || !name.ends_with(".yaml") {
            continue;
        }
        // Test files carry the test-file schema.
        let schema = if name.ends_with(".test.yaml") {
            "recipe-test"
        } else {
            "recipe"
        };
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with(&format!(
                "# yaml-language-server: $schema=../schemas/{schema}.schema.json\n"
            )),
            "{} lacks the modeline",
            p.display()
        );
    }
}

#[test]
fn catalog_doc_is_generated_from_the_catalog() {
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/catalog.md"))
            .unwrap();
    assert_eq!(
        file,
        patchbay::catalog::doc::markdown(&patchbay::catalog::Catalog::builtin()),
        "docs/catalog.md is stale: run `cargo run -- catalog --format markdown > docs/catalog.md`"
    );
}
