//! Set-up the benchmarks share: their runtime, a free port, a child process
//! killed with its owner, and the engine benchmarks' recipe, connections and
//! command line.
// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Seconds of load per wrk run.
pub const SECONDS: u64 = 15;

/// The SendPulse connection's webhook token.
pub const TOKEN: &str = "bench-token";

// The tests' set-up: a free port, a child killed with its owner.
#[path = "../../tests/common/mod.rs"]
pub mod tests_common;
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

/// wrk's script: each request a delivery of `PER_DELIVERY` new subscribers
/// with addresses unique per thread.
const LUA: &str = r#"
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  n = 0
  per = tonumber(os.getenv("PER_DELIVERY") or "1")
  prefix = os.getenv("PREFIX") or ""
end
function request()
  local items = {}
  for i = 1, per do
    n = n + 1
    items[i] = '{"event":"new_emails","book_id":"7","email":"' .. prefix .. 't' .. id .. '-' .. n .. '@example.com","timestamp":"' .. os.time() .. '"}'
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, "[" .. table.concat(items, ",") .. "]")
end
"#;

/// wrk's requests/s and the 50th and 99th latency percentiles of
/// [`SECONDS`] of load on `url` over `connections` connections, each
/// request a SendPulse delivery of `per_delivery` new subscribers.
/// `prefix` starts every address (two wrk runs at once must not send the
/// same events).
pub fn wrk(
    url: &str,
    connections: u32,
    per_delivery: u32,
    dir: &Path,
    prefix: &str,
) -> (f64, String, String) {
    let script = dir.join(format!("load{prefix}.lua"));
    std::fs::write(&script, LUA).unwrap();
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .env("PER_DELIVERY", per_delivery.to_string())
        .env("PREFIX", prefix)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap_or(0.0))
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    if text.contains("Non-2xx") {
        eprintln!("wrk saw errors:\n{text}");
    }
    (rps, pct("50%"), pct("99%"))
}

pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
