//! Operations commands against the store, usable while the engine runs:
//! `runs`, `runs show ID`, `dead-letters`, `replay`.

use std::fmt::Write as _;
use std::path::Path;

use crate::catalog::Catalog;
use crate::cli::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::recipe::load::load_paths;
use crate::store::{RunFilter, RunState, Store};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// The store, or the exit code after saying why it cannot be opened.
async fn open(store: &str) -> Result<std::sync::Arc<dyn Store>, i32> {
    crate::store::open(store).await.map_err(|e| {
        eprintln!(
            "error: cannot open the store {}: {e}",
            crate::store::redact_url(store)
        );
        EXIT_USAGE
    })
}

/// `patchbay runs [show ID]` and `patchbay dead-letters`.
pub fn runs(
    show: Vec<String>,
    recipe: Option<String>,
    status: Option<String>,
    store: &str,
    json: bool,
) -> i32 {
    block_on(async move {
        let s = match open(store).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        match show.as_slice() {
            [] => {}
            [cmd, id] if cmd == "show" => return show_run(&*s, id, json).await,
            _ => {
                eprintln!("error: use `patchbay runs` or `patchbay runs show ID`");
                return EXIT_USAGE;
            }
        }
        let status = match status.as_deref().map(|s| RunState::parse(s).ok_or(s)) {
            Some(Err(bad)) => {
                eprintln!("error: no run status `{bad}` (queued, running, completed, failed, filtered, replayed)");
                return EXIT_USAGE;
            }
            Some(Ok(s)) => Some(s),
            None => None,
        };
        let list = match s
            .runs(RunFilter {
                recipe,
                status,
                limit: 200,
                ..Default::default()
            })
            .await
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).expect("runs serialize")
            );
            return EXIT_OK;
        }
        let mut out = String::new();
        for r in &list {
            let _ = write!(
                out,
                "{}  {:<10} {:<40} {}",
                r.id,
                r.status.as_str(),
                r.recipe,
                r.updated_at.format("%Y-%m-%d %H:%M:%S")
            );
            if let (Some(step), Some(err)) = (&r.failed_step, &r.error) {
                let _ = write!(
                    out,
                    "  step `{step}`: {} {}",
                    err["kind"].as_str().unwrap_or(""),
                    err["message"].as_str().unwrap_or("")
                );
            }
            out.push('\n');
        }
        if list.is_empty() {
            out.push_str("no runs\n");
        }
        print!("{out}");
        EXIT_OK
    })
}

async fn show_run(s: &dyn Store, id: &str, json: bool) -> i32 {
    let detail = match s.run(id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            eprintln!("error: no run `{id}`");
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let (run, steps) = detail;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run": run, "steps": steps}))
                .expect("json")
        );
        return EXIT_OK;
    }
    println!(
        "run {} of {} ({}), version {}: {}",
        run.id,
        run.recipe,
        run.event_id,
        run.recipe_version,
        run.status.as_str()
    );
    for st in steps {
        println!(
            "  {} ({}) {:?}, {} attempt(s), {} ms",
            st.id, st.action, st.status, st.attempts, st.duration_ms
        );
        println!("    input:  {}", st.input);
        println!("    output: {}", st.output);
        if let Some(e) = st.error {
            println!("    error:  {}: {}", e.kind.as_str(), e.message);
        }
    }
    if let Some(e) = run.error {
        println!("failed at `{}`: {}", run.failed_step.unwrap_or_default(), e);
    }
    EXIT_OK
}

/// `patchbay deliveries`: recent deliveries with their answer.
pub fn deliveries(limit: u32, store: &str, json: bool) -> i32 {
    block_on(async move {
        let s = match open(store).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let list = match s.deliveries(limit).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).expect("deliveries serialize")
            );
            return EXIT_OK;
        }
        for d in &list {
            println!(
                "{}  {:<20} {}  {} event(s)  {}",
                d.received_at.format("%Y-%m-%d %H:%M:%S"),
                d.connection,
                d.status,
                d.events,
                d.outcome
            );
        }
        if list.is_empty() {
            println!("no deliveries");
        }
        EXIT_OK
    })
}

/// `patchbay replay ID|--all-failed [--recipe R]`.
pub fn replay(
    id: Option<String>,
    all_failed: bool,
    recipe: Option<String>,
    recipes: &Path,
    store: &str,
) -> i32 {
    if id.is_some() == all_failed {
        eprintln!("error: give a run id or --all-failed");
        return EXIT_USAGE;
    }
    // Replays run on the recipe version in the folder now (after a fix).
    let loaded = match load_paths(&[recipes.to_path_buf()], &Catalog::builtin(), None) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    block_on(async move {
        let s = match open(store).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let targets = match id {
            Some(id) => match s.run(&id).await {
                Ok(Some((r, _))) => vec![r],
                _ => {
                    eprintln!("error: no run `{id}`");
                    return EXIT_INVALID;
                }
            },
            None => match s
                .runs(RunFilter {
                    recipe,
                    status: Some(RunState::Failed),
                    limit: 100_000,
                    ..Default::default()
                })
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            },
        };
        let mut code = EXIT_OK;
        for r in targets {
            let Some(current) = loaded.recipes.iter().find(|v| v.name == r.recipe) else {
                eprintln!(
                    "error: recipe `{}` of run {} is not in {} (or is invalid)",
                    r.recipe,
                    r.id,
                    recipes.display()
                );
                code = EXIT_INVALID;
                continue;
            };
            match s.replay(&r.id, &current.version).await {
                Ok(Some(new)) => println!(
                    "run {} queued again as {new} (recipe version {})",
                    r.id, current.version
                ),
                Ok(None) => {
                    eprintln!("error: run {} is {}, not failed", r.id, r.status.as_str());
                    code = EXIT_INVALID;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            }
        }
        code
    })
}
