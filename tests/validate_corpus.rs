//! The validation corpus: every file under `tests/validate/invalid` states
//! the diagnostics it must produce, exactly, as header comments:
//!
//! ```yaml
//! # expect: 9:13 unknown-operation
//! ```
//!
//! A folder under `invalid/` is validated as one set (for cross-file checks).
//! Files under `tests/validate/valid` must produce no diagnostic at all.
//! Every file is validated with `tests/validate/connections.yaml`.

use std::path::{Path, PathBuf};

use patchbay::catalog::Catalog;
use patchbay::connections::Connections;
use patchbay::recipe::load::load_paths;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate")
}

fn connections(catalog: &Catalog) -> Connections {
    let path = root().join("connections.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Connections::parse(&path.display().to_string(), &text, catalog)
        .expect("test connections are valid")
}

/// `(file name, "line:col code")` pairs a case expects.
fn expectations(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            if let Some(e) = line.trim_start().strip_prefix("# expect:") {
                out.push((name(f), e.trim().to_string()));
            }
        }
    }
    out.sort();
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_invalid_recipe_reports_exactly_its_expected_diagnostics() {
    let catalog = Catalog::builtin();
    let conns = connections(&catalog);
    let mut failures = Vec::new();
    let mut count = 0;
    for case in cases(&root().join("invalid")) {
        let files = if case.is_dir() {
            cases(&case)
        } else {
            vec![case.clone()]
        };
        let expected = expectations(&files);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            case.display()
        );
        let loaded = load_paths(std::slice::from_ref(&case), &catalog, Some(&conns)).unwrap();
        let mut actual: Vec<(String, String)> = loaded
            .diagnostics
            .iter()
            .map(|d| {
                (
                    name(Path::new(&d.file)),
                    format!("{}:{} {}", d.line, d.column, d.code),
                )
            })
            .collect();
        actual.sort();
        if actual != expected {
            let msgs: Vec<String> = loaded.diagnostics.iter().map(|d| d.one_line()).collect();
            failures.push(format!(
                "{}\n  expected: {expected:?}\n  actual:   {actual:?}\n  {}",
                case.display(),
                msgs.join("\n  ")
            ));
        }
        count += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        count >= 60,
        "the corpus has {count} cases; keep at least 60"
    );
}

#[test]
fn every_valid_recipe_passes_without_diagnostics() {
    let catalog = Catalog::builtin();
    let conns = connections(&catalog);
    let dirs = [
        root().join("valid"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes"),
    ];
    let loaded = load_paths(&dirs, &catalog, Some(&conns)).unwrap();
    let msgs: Vec<String> = loaded.diagnostics.iter().map(|d| d.one_line()).collect();
    assert!(msgs.is_empty(), "{}", msgs.join("\n"));
    assert!(
        loaded.recipes.len() >= 10,
        "only {} valid recipes",
        loaded.recipes.len()
    );
}

#[test]
fn every_check_has_a_case_in_the_corpus() {
    let mut codes = std::collections::BTreeSet::new();
    for case in cases(&root().join("invalid")) {
        let files = if case.is_dir() {
            cases(&case)
        } else {
            vec![case]
        };
        for (_, e) in expectations(&files) {
            codes.insert(e.split_whitespace().nth(1).unwrap().to_string());
        }
    }
    for code in patchbay::recipe::validate::CODES {
        assert!(codes.contains(*code), "no corpus case for `{code}`");
    }
}
