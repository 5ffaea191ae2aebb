//! Replays the fuzz corpora kept in `fuzz/corpus/<target>/` through the
//! same entry functions the cargo-fuzz targets call (`patchbay::hostile`),
//! so CI re-checks every input the fuzzer found interesting (and every
//! crash it found, kept there after the fix) without the fuzzer.

use std::path::Path;

fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for `{target}`");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let started = std::time::Instant::now();
        assert!(patchbay::hostile::run(target, &data));
        // Debug builds are slow, but no input may take long.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{} took {:?}",
            f.display(),
            started.elapsed()
        );
    }
}

#[test]
fn the_recipe_corpus_replays() {
    replay("recipe");
}

#[test]
fn the_template_corpus_replays() {
    replay("template");
}

#[test]
fn the_webhook_corpus_replays() {
    replay("webhook");
}

#[test]
fn the_connections_corpus_replays() {
    replay("connections");
}

#[test]
fn the_catalog_corpus_replays() {
    replay("catalog");
}

#[test]
fn every_target_has_a_replay_test() {
    assert_eq!(
        patchbay::hostile::TARGETS,
        ["recipe", "template", "webhook", "connections", "catalog"]
    );
}
