//! Set-up the benchmarks share: their runtime, a free port, a child process
//! killed with its owner, and the engine benchmarks' recipe, connections and
//! command line.
// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The SendPulse connection's webhook token.
pub const TOKEN: &str = "bench-token";

// The tests' set-up: a free port, a child killed with its owner.
#[path = "../../tests/common/mod.rs"]
mod tests_common;
#[allow(unused_imports)] // each benchmark uses part
pub use tests_common::{free_port, Killed};

/// Runs a benchmark's `main` on a two-thread runtime, with rustls's
/// crypto provider installed (reqwest and the emulators need one).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(f)
}

/// The HighLevel emulator, its rate limit lifted, taking the benchmarks'
/// token (`pit-bench`, as [`engine`] sets it).
pub async fn ghl() -> patchbay::emulator::ghl::GhlEmulator {
    patchbay::emulator::ghl::start(patchbay::emulator::ghl::GhlConfig {
        token: "pit-bench".into(),
        rate_limit: None,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Writes `recipes/bench.yaml` (a SendPulse subscriber -> `ghl.tags.add`
/// on `contact`) and `connections.yaml` (HighLevel at `ghl_url` with the
/// limits lifted, SendPulse with [`TOKEN`]) into `dir`.
pub fn write_folder(dir: &Path, ghl_url: &str, location_id: &str, contact: &str) {
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(
        dir.join("recipes/bench.yaml"),
        format!(
            "recipe: bench\ntrigger: {{ on: sendpulse.subscriber.added, connection: sendpulse-main }}\nsteps:\n  - id: tag\n    action: ghl.tags.add\n    connection: ghl-main\n    with: {{ contactId: \"{contact}\", tags: [\"book-{{{{ event.book_id }}}}\"] }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("connections.yaml"),
        format!(
            "ghl-main:\n  connector: ghl\n  base_url: {ghl_url}\n  token: {{ env: GHL_TOKEN }}\n  location_id: {location_id}\n  rate_limits: [{{ requests: 10000000, per: 1s }}]\n  concurrency: 64\n\
             sendpulse-main:\n  connector: sendpulse\n  api_key: {{ env: GHL_TOKEN }}\n  webhook_token: {{ env: WEBHOOK_TOKEN }}\n"
        ),
    )
    .unwrap();
}

/// `bin run` over the folder [`write_folder`] wrote, with 64 workers, on
/// `port` and `store`; `cmd` is `bin` itself or a wrapper (valgrind) that
/// runs it.
pub fn engine(mut cmd: Command, dir: &Path, port: u16, store: &str) -> Command {
    cmd.args([
        "run",
        "--recipes",
        "recipes",
        "--connections",
        "connections.yaml",
    ])
    .args(["--store", store, "--workers", "64"])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .current_dir(dir)
    .env("GHL_TOKEN", "pit-bench")
    .env("WEBHOOK_TOKEN", TOKEN);
    cmd
}

/// The engine to measure: `PATCHBAY_BENCH_BIN` (or `var`), else this
/// checkout's release build.
pub fn engine_bin(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| env!("CARGO_BIN_EXE_patchbay").to_string())
}
