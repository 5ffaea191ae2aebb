//! `patchbay validate`, `catalog` and `schema` through the binary: exit
//! codes, the three output formats, connections and catalog overrides.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const BAD: &str = "recipe: bad
trigger:
  on: sendpulse.subscriber.added
steps:
  - id: contact
    action: ghl.contact.create
    with:
      email: \"{{ event.email }}\"
";

fn bad_file(test: &str) -> PathBuf {
    let d = temp_dir(test);
    let f = d.join("bad.yaml");
    std::fs::write(&f, BAD).unwrap();
    f
}

#[test]
fn valid_recipes_exit_zero() {
    let o = run(&[
        "validate",
        "recipes",
        "--connections",
        "tests/validate/connections.yaml",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 errors"));
}

#[test]
fn invalid_recipe_exits_one_with_rustc_like_output() {
    let f = bad_file("bad1");
    let o = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let expected = format!(
        "error[unknown-operation]: no operation 'ghl.contact.create' in the catalog\n  --> {}:6:13\n  |\n6 |     action: ghl.contact.create\n  |             ^\n  = help: did you mean 'ghl.contacts.create'?\n",
        f.display()
    );
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn json_format_is_one_documented_object_per_line() {
    let f = bad_file("bad2");
    let o = run(&["validate", "--format", "json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/diagnostic.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let props = schema["properties"].as_object().unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1);
    for line in lines {
        let d: Value = serde_json::from_str(line).unwrap();
        let obj = d.as_object().unwrap();
        for r in &required {
            assert!(obj.contains_key(*r), "missing {r} in {line}");
        }
        for (k, v) in obj {
            let p = props
                .get(k)
                .unwrap_or_else(|| panic!("undocumented key {k}"));
            match p.get("type").and_then(Value::as_str) {
                Some("string") => assert!(v.is_string(), "{k}"),
                Some("integer") => assert!(v.as_u64().is_some_and(|n| n >= 1), "{k}"),
                _ => {
                    let allowed = p["enum"].as_array().unwrap();
                    assert!(allowed.contains(v), "{k}={v}");
                }
            }
        }
        assert_eq!(d["code"], "unknown-operation");
        assert_eq!(
            (d["line"].as_u64(), d["column"].as_u64()),
            (Some(6), Some(13))
        );
        assert_eq!(d["suggestion"], "did you mean 'ghl.contacts.create'?");
    }
}

#[test]
fn github_format_emits_workflow_commands() {
    let f = bad_file("bad3");
    let o = run(&["validate", "--format", "github", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "::error file={},line=6,col=13,title=unknown-operation::no operation 'ghl.contact.create' in the catalog; did you mean 'ghl.contacts.create'?\n",
            f.display()
        )
    );
}

#[test]
fn warnings_fail_only_with_deny_warnings() {
    let d = temp_dir("warn");
    let f = d.join("w.yaml");
    std::fs::write(
        &f,
        "recipe: w\nvars:\n  spare: 1\ntrigger:\n  every: 1h\nsteps:\n  - id: s\n    action: store.get\n    with: { key: k }\n",
    )
    .unwrap();
    let o = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("warning[unused-var]"));
    let o = run(&["validate", "--deny-warnings", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn missing_path_and_bad_flags_exit_two() {
    let o = run(&["validate", "no/such/dir"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/dir"));
    let o = run(&["validate", "--format", "xml", "recipes"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "validate",
        "recipes",
        "--connections",
        "no/such/connections.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn connections_are_checked_when_given() {
    let d = temp_dir("conn");
    let conns = d.join("connections.yaml");
    std::fs::write(
        &conns,
        "ghl-main:\n  connector: ghl\n  token: \"pit-literal-secret\"\n  location_id: loc\n",
    )
    .unwrap();
    let o = run(&[
        "validate",
        "recipes",
        "--connections",
        conns.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("error[secret-literal]"), "{out}");
    assert!(out.contains(&format!("{}:3:10", conns.display())), "{out}");
    assert!(
        !out.contains("pit-literal-secret"),
        "a secret leaked into diagnostics: {out}"
    );
}

#[test]
fn catalog_dir_adds_connectors_and_reports_broken_files() {
    let d = temp_dir("catalog");
    std::fs::write(
        d.join("acme.yaml"),
        "connector: acme\ntitle: Acme\nbase_url: https://acme.test\noperations:\n  widgets.create:\n    title: Create a widget\n    method: POST\n    path: /widgets\n    inputs:\n      name: { type: string, required: true }\n",
    )
    .unwrap();
    let o = run(&[
        "catalog",
        "acme.widgets.create",
        "--catalog",
        d.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("request: POST /widgets"));

    std::fs::write(d.join("broken.yaml"), "connector: broken\ntitle: B\noperations:\n  x.y:\n    title: X\n    method: FETCH\n    path: /x\n").unwrap();
    let o = run(&["catalog", "--catalog", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("{}:6:13", d.join("broken.yaml").display())),
        "{out}"
    );
}

#[test]
fn catalog_shows_one_operation_with_inputs_output_and_scope() {
    let o = run(&["catalog", "ghl.contacts.create"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("request: POST /contacts/"), "{out}");
    assert!(out.contains("scope: contacts.write"), "{out}");
    assert!(out.contains("from connection `location_id`"), "{out}");
    assert!(out.contains("output: $.contact"), "{out}");

    let o = run(&["catalog", "ghl.tasks.create", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["inputs"]["title"]["required"], true);

    let o = run(&["catalog", "--format", "json"]);
    let all: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(all.as_array().unwrap().len() > 100);

    let o = run(&["catalog", "ghl.contacts.craete"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did you mean 'ghl.contacts.create'?"));
}

#[test]
fn schema_command_prints_the_schema_file() {
    let o = run(&["schema"]);
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/recipe.schema.json"),
    )
    .unwrap();
    assert_eq!(stdout(&o), file);
}

#[test]
fn hidden_folders_and_editor_files_in_a_recipe_folder_are_not_read() {
    let d = temp_dir("hidden");
    let good = std::fs::read_to_string("recipes/sendpulse-subscriber-to-ghl-contact.yaml").unwrap();
    std::fs::write(d.join("contact.yaml"), &good).unwrap();
    // A Kubernetes ConfigMap mount: the real files live under `..data`
    // (read, they would be a duplicate recipe name).
    std::fs::create_dir_all(d.join("..data")).unwrap();
    std::fs::write(d.join("..data/contact.yaml"), &good).unwrap();
    // Editor companions, broken as a half-saved file is.
    for junk in [
        "contact.yaml~",
        ".#contact.yaml",
        ".contact.yaml.swp",
        "contact.tmp.yaml",
    ] {
        std::fs::write(d.join(junk), "recipe: [half saved").unwrap();
    }
    let o = run(&[
        "validate",
        d.to_str().unwrap(),
        "--connections",
        "tests/validate/connections.yaml",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}{err}", stdout(&o));
    assert!(err.contains("checked 1 file: 0 errors"), "{err}");
}
