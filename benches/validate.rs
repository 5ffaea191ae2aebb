//! Validation speed: 1,000 generated recipe files in one process, and one
//! file per process as a CI job runs it (process start included).
//!
//! `cargo bench --bench validate`; results go to `docs/performance.md`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use patchbay::catalog::Catalog;
use patchbay::recipe::load::load_paths;

/// The example recipes, renamed so that every file is distinct.
fn generate(dir: &PathBuf, n: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut sources: Vec<(String, String)> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.to_string_lossy().ends_with(".test.yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("recipe: "))
                .unwrap()
                .to_string();
            (name, text)
        })
        .collect();
    sources.sort();
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let (name, text) = &sources[i % sources.len()];
        let renamed = text.replacen(
            &format!("recipe: {name}"),
            &format!("recipe: {name}-{i}"),
            1,
        );
        std::fs::write(dir.join(format!("r{i:04}.yaml")), renamed).unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("patchbay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    generate(&dir, 1000);

    // One process, 1,000 files: catalog load + read + parse + validate.
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let catalog = Catalog::builtin();
        let loaded = load_paths(std::slice::from_ref(&dir), &catalog, None).unwrap();
        runs.push(t.elapsed());
        assert_eq!(
            loaded.recipes.len(),
            1000,
            "{:?}",
            loaded.diagnostics.first()
        );
        assert_eq!(loaded.errors(), 0);
    }
    let batch = median(runs);
    println!(
        "validate 1000 files in one process: median {:.1} ms ({:.0} µs per file)",
        batch.as_secs_f64() * 1e3,
        batch.as_secs_f64() * 1e6 / 1000.0
    );

    let t = Instant::now();
    for _ in 0..20 {
        std::hint::black_box(Catalog::builtin());
    }
    println!(
        "load the built-in catalog: {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );

    // One file per process, as `patchbay validate recipes/one.yaml` in CI.
    let bin = env!("CARGO_BIN_EXE_patchbay");
    let file = dir.join("r0000.yaml");
    let mut runs = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["validate", "--format", "json"])
            .arg(&file)
            .output()
            .unwrap();
        runs.push(t.elapsed());
        assert!(out.status.success());
    }
    let single = median(runs);
    println!(
        "validate one file, process start included: median {:.2} ms",
        single.as_secs_f64() * 1e3
    );

    let mut runs = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        Command::new("true").output().unwrap();
        runs.push(t.elapsed());
    }
    println!(
        "(spawning /bin/true on this machine: median {:.2} ms)",
        median(runs).as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
}
