//! `patchbay run`: the long-running engine — webhook server, workers,
//! polls and schedules over the durable store — and `--sandbox`, which
//! starts the API emulators in-process so a first run needs no account.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cli::{catalog_or_exit, connections_or_exit, print_diags, EXIT_OK, EXIT_USAGE};
use crate::connections::{Connections, ResolvedConnection};
use crate::connectors::Runtime;
use crate::diagnostic::Format;
#[cfg(feature = "sandbox")]
use crate::emulator::{ghl, sendpulse};
use crate::engine::{RecipeSet, Service, Settings};
use crate::reload::{Fixed, Reloader, Sources, Trigger};
use crate::store::Store;

/// A line to stdout for the operator; a closed stdout (a supervisor that
/// stopped reading) must not stop the engine, so write errors are ignored.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Arguments of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Recipe folder.
    #[arg(long, default_value = "recipes")]
    pub recipes: PathBuf,
    /// Connections file.
    #[arg(long)]
    pub connections: Option<PathBuf>,
    /// Extra connector files.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Store URL.
    #[arg(long, default_value = crate::store::DEFAULT_URL)]
    pub store: String,
    /// Address of the webhook and health endpoints.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Runs executed at once.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Threads of the async runtime (0: one fewer than the cores, at
    /// least 1 — the store's writer thread takes the remaining core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Runs waiting in the store before new deliveries are slowed down
    /// (each waits up to 2 s for the workers to catch up; 0: never).
    #[arg(long, default_value_t = 20_000)]
    pub max_backlog: usize,
    /// Start the HighLevel and SendPulse emulators and use them.
    #[arg(long)]
    pub sandbox: bool,
    /// Largest webhook body in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Finished runs older than this are deleted (`7d`, `12h`).
    #[arg(long, default_value = "7d", value_parser = crate::duration::parse_duration)]
    pub retention: Duration,
    /// Time in-flight steps get to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub grace: Duration,
    /// How long a run's claim lasts without progress; a crashed process's
    /// runs are resumed once it expires.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration)]
    pub lease: Duration,
    /// Address of the admin API and `/metrics` (off when not given; the
    /// same address as `--listen` serves them next to the webhooks).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API wants (or `PATCHBAY_ADMIN_TOKEN`).
    #[arg(long)]
    pub admin_token: Option<String>,
    /// How long file changes settle before a reload (`100ms`).
    #[arg(long, default_value = "100ms", value_parser = crate::duration::parse_duration)]
    pub reload_debounce: Duration,
}

/// Sandbox addresses and credentials (fixed, so the README's curl lines work).
pub mod sandbox {
    /// HighLevel emulator address.
    pub const GHL_ADDR: &str = "127.0.0.1:8788";
    /// SendPulse emulator address.
    pub const SENDPULSE_ADDR: &str = "127.0.0.1:8789";
    /// The HighLevel token (a Private Integration Token: it never expires).
    pub const GHL_TOKEN: &str = "pit-sandbox-token";
    /// The HighLevel location.
    pub const LOCATION: &str = "sandboxLocation000001";
    /// The SendPulse webhook token.
    pub const WEBHOOK_TOKEN: &str = "sandbox-webhook-token";
    /// The SendPulse address book of the README's delivery.
    pub const BOOK_ID: i64 = 490686;
    /// SendPulse client id.
    pub const SP_CLIENT_ID: &str = "sandbox-client-id";
    /// SendPulse client secret.
    pub const SP_CLIENT_SECRET: &str = "sandbox-client-secret";
    /// Seed of the key the emulated HighLevel signs its webhooks with
    /// (fixed: the sandbox has no secrets worth keeping).
    pub const GHL_WEBHOOK_SEED: [u8; 32] = *b"patchbay-sandbox-ghl-webhook-key";
}

/// Runs the engine until SIGINT/SIGTERM; the exit code.
pub fn run(args: RunArgs) -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads(
            args.threads,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ))
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run_async(args))
}

/// The async runtime's threads: `--threads` (`flag`), or one fewer than
/// the `cores`.
/// The store's writer is a thread of its own that is busy under load; one
/// runtime thread per core on top of it made the threads take turns on
/// the cores and cost ~13 % more CPU per event on two cores
/// (docs/decisions.md).
fn runtime_threads(flag: usize, cores: usize) -> usize {
    if flag > 0 {
        return flag;
    }
    cores.saturating_sub(1).max(1)
}

/// The running emulators of `--sandbox`.
#[cfg(feature = "sandbox")]
type Emulators = (ghl::GhlEmulator, sendpulse::SendPulseEmulator);
#[cfg(not(feature = "sandbox"))]
type Emulators = ();

/// Without the `sandbox` feature there are no emulators to start.
#[cfg(not(feature = "sandbox"))]
async fn start_sandbox(
    _listen: SocketAddr,
) -> std::io::Result<(Emulators, Vec<ResolvedConnection>)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "this build has no emulators (built without the `sandbox` feature)",
    ))
}

/// Starts the emulators and returns them with connections pointing at them.
/// The emulated HighLevel sends signed `ContactCreate`/`ContactUpdate`
/// webhooks to the engine's `ghl-main` hook, as a real location would.
#[cfg(feature = "sandbox")]
async fn start_sandbox(
    listen: SocketAddr,
) -> std::io::Result<(Emulators, Vec<ResolvedConnection>)> {
    let webhook = ghl::WebhookTarget {
        url: format!("http://{listen}/hooks/ghl-main"),
        key: ed25519_dalek::SigningKey::from_bytes(&sandbox::GHL_WEBHOOK_SEED),
    };
    let public_key = webhook.public_key();
    let g = ghl::start(ghl::GhlConfig {
        token: sandbox::GHL_TOKEN.into(),
        location_id: sandbox::LOCATION.into(),
        listen: Some(sandbox::GHL_ADDR.parse().expect("valid address")),
        webhook: Some(webhook),
        ..Default::default()
    })
    .await?;
    let s = sendpulse::start(sendpulse::SendPulseConfig {
        client_id: sandbox::SP_CLIENT_ID.into(),
        client_secret: sandbox::SP_CLIENT_SECRET.into(),
        listen: Some(sandbox::SENDPULSE_ADDR.parse().expect("valid address")),
        ..Default::default()
    })
    .await?;
    // The address book the bundled recipes and the README's delivery use.
    s.insert_book_with_id(sandbox::BOOK_ID, "Leads");
    let conns = vec![
        ResolvedConnection::from_values(
            "ghl-main",
            "ghl",
            &[
                ("base_url", &g.base_url(), false),
                ("token", sandbox::GHL_TOKEN, true),
                ("location_id", sandbox::LOCATION, false),
                ("webhook_public_key", &public_key, false),
            ],
        ),
        ResolvedConnection::from_values(
            "sendpulse-main",
            "sendpulse",
            &[
                ("base_url", &s.base_url(), false),
                ("client_id", sandbox::SP_CLIENT_ID, false),
                ("client_secret", sandbox::SP_CLIENT_SECRET, true),
                ("webhook_token", sandbox::WEBHOOK_TOKEN, true),
            ],
        ),
    ];
    Ok(((g, s), conns))
}

async fn run_async(args: RunArgs) -> i32 {
    let catalog = match catalog_or_exit(args.catalog.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Keeps the sandbox emulators alive as long as the engine.
    let mut _emulators = None;
    let (resolved, decls) = if args.sandbox {
        if args.connections.is_some() {
            eprintln!("error: --sandbox makes its own connections; leave out --connections");
            return EXIT_USAGE;
        }
        match start_sandbox(args.listen).await {
            Ok((emulators, conns)) => {
                _emulators = Some(emulators);
                let mut decls = Connections::default();
                for c in &conns {
                    decls.by_name.insert(
                        c.name.clone(),
                        crate::connections::ConnectionDecl {
                            name: c.name.clone(),
                            connector: c.connector.clone(),
                            fields: Default::default(),
                            rate_limits: None,
                            concurrency: None,
                            pos: Default::default(),
                        },
                    );
                }
                (conns, Some(decls))
            }
            Err(e) => {
                eprintln!(
                    "error: cannot start the sandbox emulators on {} and {}: {e}",
                    sandbox::GHL_ADDR,
                    sandbox::SENDPULSE_ADDR
                );
                return EXIT_USAGE;
            }
        }
    } else {
        match &args.connections {
            None => (Vec::new(), None),
            Some(path) => {
                let decls = match connections_or_exit(path, &catalog) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let mut out = Vec::new();
                for c in decls.by_name.values() {
                    match c.resolve(&catalog) {
                        Ok(r) => out.push(r),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return EXIT_USAGE;
                        }
                    }
                }
                (out, Some(decls))
            }
        }
    };
    let admin_token = args
        .admin_token
        .clone()
        .or_else(|| std::env::var("PATCHBAY_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if args.admin_listen.is_some() && admin_token.is_none() {
        eprintln!(
            "error: --admin-listen needs a token: pass --admin-token or set PATCHBAY_ADMIN_TOKEN"
        );
        return EXIT_USAGE;
    }
    // An unreadable recipe folder stops the start before the store is
    // created; the first reload below reads and validates the recipes.
    if let Err(e) = crate::reload::read_recipes(&args.recipes) {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    let store: Arc<dyn Store> = match crate::store::open(&args.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open the store {}: {e}",
                crate::store::redact_url(&args.store)
            );
            return EXIT_USAGE;
        }
    };
    let runtime = Runtime::new(catalog.clone(), resolved, store.clone(), store.clone());
    let svc = Arc::new(Service::new(
        store.clone(),
        runtime,
        // Filled by the first reload.
        RecipeSet::default(),
        Settings {
            workers: args.workers,
            lease: args.lease,
            max_backlog: args.max_backlog,
            body_limit: args.body_limit,
        },
    ));
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return EXIT_USAGE;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // The reloader owns the recipes and the poll and schedule loops: its
    // first reload validates the folder (like `patchbay validate`), starts
    // the loops and records the recipe versions in the store.
    let reloader = Arc::new(Reloader::new(
        svc.clone(),
        Sources {
            recipes: args.recipes.clone(),
            connections: args.connections.clone(),
            catalog: args.catalog.clone(),
        },
        Fixed {
            listen: args.listen,
            store: args.store.clone(),
        },
        decls,
        stop_rx.clone(),
    ));
    if let Some(r) = reloader.reload(Trigger::Start).await {
        if let Some(e) = r.error {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
        let mut diags: Vec<_> = r.rejected.iter().flat_map(|f| f.details.clone()).collect();
        diags.extend(r.warnings);
        diags.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        if !diags.is_empty() {
            print_diags(&diags, Format::Human);
        }
        if !r.rejected.is_empty() {
            tracing::warn!(
                rejected = r.rejected.len(),
                "recipes with errors are not loaded"
            );
        }
    }
    // Workers start once the recipes are in: runs left in the store find
    // their recipe loaded.
    let workers = svc.spawn_workers(args.workers.max(1), stop_rx.clone());
    let mut recipe_names: Vec<String> = svc.recipes().all().map(|r| r.name.clone()).collect();
    recipe_names.sort();
    let watcher = match crate::reload::watch::spawn(reloader.clone(), args.reload_debounce) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("warning: {e}; recipes reload only on SIGHUP and POST /admin/reload");
            None
        }
    };
    let hangup = spawn_hangup(reloader.clone());
    let mut admin_task = None;
    let mut app = crate::server::router(svc.clone());
    if let (Some(addr), Some(token)) = (args.admin_listen, admin_token) {
        let admin = crate::server::operator::router(reloader.clone(), Arc::from(token));
        if addr == args.listen {
            app = app.merge(admin);
        } else {
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {addr} (admin): {e}");
                    return EXIT_USAGE;
                }
            };
            admin_task = Some(tokio::spawn(async move {
                let _ = axum::serve(l, admin).await;
            }));
        }
    }
    let pruner = {
        let (store, retention, mut stop) = (store.clone(), args.retention, stop_rx.clone());
        tokio::spawn(async move {
            loop {
                match store.prune(retention).await {
                    Ok(n) if n > 0 => tracing::info!(runs = n, "pruned finished runs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    };
    say!("patchbay listening on http://{}", args.listen);
    say!(
        "recipes: {}",
        if recipe_names.is_empty() {
            "(none)".to_string()
        } else {
            recipe_names.join(", ")
        }
    );
    say!("store: {}", crate::store::redact_url(&args.store));
    if let Some(a) = args.admin_listen {
        say!("admin: http://{a}/admin/recipes (bearer token)");
    }
    if args.sandbox {
        print_sandbox_help(args.listen);
    }
    // Slow clients cannot hold connections open (src/server/listen.rs).
    let listener = crate::server::listen::GuardedListener::new(listener, Default::default());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    if let Err(e) = server.await {
        eprintln!("error: server failed: {e}");
    }
    // Stop taking new runs; let in-flight steps finish within the grace
    // period. Whatever is cut off keeps its lease and checkpoints and is
    // resumed by the next start.
    say!(
        "shutting down: letting in-flight runs finish (up to {}s)",
        args.grace.as_secs()
    );
    let _ = stop_tx.send(true);
    pruner.abort();
    hangup.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(a) = admin_task {
        a.abort();
    }
    reloader.stop_schedules();
    let all = futures_util::future::join_all(workers);
    if tokio::time::timeout(args.grace, all).await.is_err() {
        say!("grace period over: unfinished runs resume at the next start");
    }
    // Runs claimed but not finished go back to the queue, so the next
    // start takes them at once instead of after their lease.
    if let Err(e) = store.release(&svc.dispatch().owner).await {
        eprintln!("warning: could not release this process's runs ({e}); they resume once their lease expires");
    }
    EXIT_OK
}

/// Reloads on every SIGHUP.
fn spawn_hangup(reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                reloader.reload(Trigger::Signal).await;
            }
        }
        #[cfg(not(unix))]
        drop(reloader);
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn print_sandbox_help(listen: SocketAddr) {
    say!(
        "\nsandbox: HighLevel emulator on http://{}, SendPulse emulator on http://{}\n\
         \nPost a SendPulse delivery (a new subscriber):\n\
         \n  curl -s -X POST 'http://{listen}/hooks/sendpulse-main?token={}' -H 'Content-Type: application/json' \\\n    -d '[{{\"event\":\"new_emails\",\"book_id\":\"490686\",\"email\":\"ada@example.com\",\"timestamp\":\"1732700000\",\"variables\":{{\"name\":\"Ada Lovelace\",\"phone\":\"+44 20 7946 0958\"}}}}]'\n\
         \nThen list the contacts the recipe created in the emulated HighLevel:\n\
         \n  curl -s 'http://{}/contacts/?locationId={}' -H 'Authorization: Bearer {}' -H 'Version: 2021-07-28'\n",
        sandbox::GHL_ADDR,
        sandbox::SENDPULSE_ADDR,
        sandbox::WEBHOOK_TOKEN,
        sandbox::GHL_ADDR,
        sandbox::LOCATION,
        sandbox::GHL_TOKEN,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_threads_leave_a_core_to_the_store_writer_unless_given() {
        assert_eq!(runtime_threads(0, 2), 1);
        assert_eq!(runtime_threads(0, 8), 7);
        // One core: the runtime still gets its thread.
        assert_eq!(runtime_threads(0, 1), 1);
        assert_eq!(runtime_threads(3, 2), 3);
        assert_eq!(runtime_threads(1, 8), 1);
    }
}
