//! The validation corpus: every file under `tests/validate/invalid` states
//! the diagnostics it must produce, exactly, as header comments:
//!
//! ```yaml
//! # expect: 9:13 unknown-operation
//! ```
//!
//! A folder under `invalid/` is validated as one set (for cross-file checks).
//! Files under `tests/validate/valid` must produce no diagnostic at all.
//! Every file is validated with `tests/validate/connections.yaml`. Test
//! files (`*.test.yaml`, in folder cases next to their recipe) are checked
//! as `validate` checks them.

use std::path::{Path, PathBuf};

use patchbay::catalog::Catalog;
use patchbay::connections::Connections;
use patchbay::recipe::load::load_paths;
use patchbay::testing::check_files;

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
        let mut loaded = load_paths(std::slice::from_ref(&case), &catalog, Some(&conns)).unwrap();
        // Test files (`*.test.yaml`) in a case are checked as `validate` checks them.
        let (_, test_diags) = check_files(std::slice::from_ref(&case), &catalog).unwrap();
        loaded.diagnostics.extend(test_diags);
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
    let mut loaded = load_paths(&dirs, &catalog, Some(&conns)).unwrap();
    let (_, test_diags) = check_files(&dirs, &catalog).unwrap();
    loaded.diagnostics.extend(test_diags);
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
    let all = patchbay::recipe::validate::CODES
        .iter()
        .chain(patchbay::testing::file::CODES);
    for code in all {
        assert!(codes.contains(*code), "no corpus case for `{code}`");
    }
}
