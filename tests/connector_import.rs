//! `patchbay connector import`: OpenAPI documents written from the API
//! references import to connectors whose operations match the hand-written
//! catalog on method, path and required inputs; a public spec (Swagger
//! Petstore) imports to a connector that `validate` accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use patchbay::catalog::openapi::{import, ImportOptions};
use patchbay::catalog::{parse_connector, Catalog, OpKind};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openapi")
        .join(name)
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn patchbay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The path part of a base URL (`https://x/crm/v1` -> `/crm/v1`).
fn base_path(url: Option<&str>) -> String {
    let url = url.unwrap_or_default();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/')
        .map(|i| rest[i..].trim_end_matches('/').to_string())
        .unwrap_or_default()
}

/// Every imported operation has a hand-written one with the same method
/// and full path, and both require the same inputs. Returns how many.
fn matches_catalog(file: &str, builtin: &str) -> usize {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let out = import(&text, &ImportOptions::default()).unwrap();
    let imported = parse_connector(file, &out.yaml)
        .unwrap_or_else(|d| panic!("{d:?}\n{}", out.yaml))
        .def;
    let catalog = Catalog::builtin();
    let hand = catalog.connector(builtin).unwrap();
    let (ib, hb) = (
        base_path(imported.base_url.as_deref()),
        base_path(hand.base_url.as_deref()),
    );
    let mut n = 0;
    for (name, op) in &imported.operations {
        let op = op.get();
        let path = format!("{ib}{}", op.path.as_deref().unwrap());
        let found = catalog.operations_of(builtin).find(|h| {
            let d = h.def();
            d.kind == OpKind::Action
                && d.method == op.method
                && d.path.as_deref().map(|p| format!("{hb}{p}")) == Some(path.clone())
        });
        let h = found.unwrap_or_else(|| {
            panic!(
                "{file}: imported `{name}` ({:?} {path}) has no `{builtin}` operation",
                op.method
            )
        });
        let required = |inputs: &indexmap::IndexMap<String, patchbay::catalog::InputDef>| {
            inputs
                .iter()
                .filter(|(_, i)| i.required)
                .map(|(n, _)| n.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            required(&op.inputs),
            required(&h.def().inputs),
            "{file}: required inputs of `{name}` vs `{}`",
            h.id()
        );
        n += 1;
    }
    n
}

#[test]
fn highlevel_document_imports_to_the_hand_written_operations() {
    assert_eq!(matches_catalog("highlevel.yaml", "ghl"), 13);
}

#[test]
fn sendpulse_document_imports_to_the_hand_written_operations() {
    assert_eq!(matches_catalog("sendpulse.json", "sendpulse"), 17);
}

#[test]
fn auth_headers_and_pagination_are_mapped() {
    let text = std::fs::read_to_string(fixture("highlevel.yaml")).unwrap();
    let out = import(&text, &ImportOptions::default()).unwrap();
    let c = parse_connector("hl.yaml", &out.yaml).unwrap().def;
    // `Version` is required with one value on every operation: a header
    // of the connector, not an input.
    assert_eq!(
        c.headers.get("Version").map(String::as_str),
        Some("2021-07-28")
    );
    assert!(c
        .operations
        .values()
        .all(|o| !o.get().inputs.contains_key("Version")));
    assert!(matches!(
        c.auth,
        patchbay::catalog::Auth::Bearer { ref token, refresh: None } if token == "token"
    ));
    assert!(c.connection["token"].secret);
    let by_business = c.operations["contacts.get_contacts_by_business_id"].get();
    let p = by_business.pagination.as_ref().expect("offset paging");
    assert_eq!(p.style, patchbay::catalog::PageStyle::Offset);
    assert_eq!(p.items, "$.contacts");
    assert_eq!(p.offset_input.as_deref(), Some("skip"));

    let text = std::fs::read_to_string(fixture("sendpulse.json")).unwrap();
    let out = import(&text, &ImportOptions::default()).unwrap();
    let c = parse_connector("sp.yaml", &out.yaml).unwrap().def;
    assert!(matches!(
        c.auth,
        patchbay::catalog::Auth::Oauth2ClientCredentials { ref token_url, .. }
            if token_url == "https://api.sendpulse.com/oauth/access_token"
    ));
    assert_eq!(
        c.operations["address_books.list_address_books"]
            .get()
            .pagination
            .as_ref()
            .map(|p| (p.items.as_str(), p.limit_input.as_deref())),
        Some(("$", Some("limit")))
    );
    // The token request's encoding is not in OpenAPI: listed, not guessed silently.
    assert!(
        out.unmapped.iter().any(|u| u.contains("encoded")),
        "{:?}",
        out.unmapped
    );
}

#[test]
fn tags_select_operations_and_prefix_names_the_connector() {
    let d = dir("tags");
    let file = d.join("hl.yaml");
    let o = patchbay(&[
        "connector",
        "import",
        fixture("highlevel.yaml").to_str().unwrap(),
        "--prefix",
        "hl",
        "--tag",
        "Tasks",
        "--tag",
        "Notes",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("imported 3 operations as connector `hl`"),
        "{}",
        text(&o)
    );
    let c = parse_connector("hl.yaml", &std::fs::read_to_string(&file).unwrap())
        .unwrap()
        .def;
    let names: Vec<&String> = c.operations.keys().collect();
    assert_eq!(
        names,
        [
            "notes.create_note",
            "tasks.create_task",
            "tasks.update_task_completed"
        ]
    );
    let o = patchbay(&[
        "connector",
        "import",
        fixture("highlevel.yaml").to_str().unwrap(),
        "--tag",
        "Nope",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no operation to import with tag Nope"));
}

#[test]
fn a_public_spec_imports_to_a_connector_validate_accepts() {
    let d = dir("petstore");
    let cat = d.join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    let file = cat.join("petstore.yaml");
    let o = patchbay(&[
        "connector",
        "import",
        fixture("petstore.yaml").to_str().unwrap(),
        "--prefix",
        "petstore",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // What did not map is said, on stderr and atop the file.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("GET /pets: a page size but no offset, page or cursor input"),
        "{err}"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("#   - GET /pets: a page size"),
        "{written}"
    );

    let recipe = d.join("pet.yaml");
    std::fs::write(
        &recipe,
        "recipe: pet-lookup\ntrigger:\n  every: 1h\nsteps:\n  - id: pet\n    action: petstore.pets.show_pet_by_id\n    connection: pets\n    with:\n      petId: \"42\"\n  - id: list\n    action: petstore.pets.list_pets\n    connection: pets\n    with:\n      limit: 10\n",
    )
    .unwrap();
    let o = patchbay(&[
        "validate",
        "--catalog",
        cat.to_str().unwrap(),
        recipe.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A required input left out is caught by the imported declaration.
    std::fs::write(
        &recipe,
        "recipe: pet-lookup\ntrigger:\n  every: 1h\nsteps:\n  - id: pet\n    action: petstore.pets.show_pet_by_id\n    connection: pets\n    with: {}\n",
    )
    .unwrap();
    let o = patchbay(&[
        "validate",
        "--catalog",
        cat.to_str().unwrap(),
        recipe.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("petId"), "{}", text(&o));
}

#[test]
fn a_form_body_imports_as_form_fields() {
    let doc = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "Tokens", "version": "1"},
        "servers": [{"url": "https://api.example.com"}],
        "paths": {"/oauth/locationToken": {"post": {
            "operationId": "getLocationToken", "tags": ["OAuth"],
            "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["companyId", "locationId"],
                "properties": {
                    "companyId": {"type": "string"},
                    "locationId": {"type": "string"},
                    "meta": {"type": "object"}
                }
            }}}},
            "responses": {"200": {"description": "ok"}}
        }}}
    });
    let out = import(&doc.to_string(), &ImportOptions::default()).unwrap();
    let c = parse_connector("t.yaml", &out.yaml)
        .unwrap_or_else(|d| panic!("{d:?}\n{}", out.yaml))
        .def;
    assert_eq!(c.operations.len(), 1, "{}", out.yaml);
    let op = c.operations[0].get();
    assert_eq!(
        op.body_encoding,
        patchbay::catalog::Encoding::Form,
        "{}",
        out.yaml
    );
    let required: Vec<&String> = op
        .inputs
        .iter()
        .filter(|(_, i)| i.required)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(required, ["companyId", "locationId"]);
    assert!(!op.inputs.contains_key("meta"));
    assert!(
        out.unmapped
            .iter()
            .any(|u| u.contains("form field `meta` is an object")),
        "{:?}",
        out.unmapped
    );
}
