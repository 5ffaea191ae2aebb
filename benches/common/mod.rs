//! Set-up the engine benchmarks share: a free port, the benchmark's recipe
//! and connections, and the engine's command line.
// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The SendPulse connection's webhook token.
pub const TOKEN: &str = "bench-token";

/// A port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
