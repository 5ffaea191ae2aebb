//! CI runs the example recipes' test files: `patchbay test recipes/` (the
//! built binary) passes every case.

use std::path::Path;
use std::process::Command;

#[test]
fn patchbay_test_passes_on_the_example_recipes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .current_dir(root)
        .args(["test", "recipes/"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    let (passed, failed) = summary
        .split_once(" passed, ")
        .and_then(|(p, f)| Some((p.parse::<u32>().ok()?, f.strip_suffix(" failed")?)))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    assert_eq!(failed, "0", "{stdout}");
    assert!(passed >= 1, "no case ran: {stdout}");
}
