//! `patchbay fire`: one event through one recipe, against the real APIs
//! (or the emulators), printing the run; `--dry-run` prints the requests.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::catalog::Catalog;
use crate::cli::{
    catalog_or_exit, connections_or_exit, print_diags, EXIT_INVALID, EXIT_OK, EXIT_USAGE,
};
use crate::connections::Connections;
use crate::connectors::native::MemoryStore;
use crate::connectors::Runtime;
use crate::diagnostic::Format;
use crate::diagnostic::Severity;
use crate::interpreter::{self, NoCheckpoints, RunReport, RunRequest, RunStatus, StepStatus};
use crate::recipe::load::load_paths_with;
use crate::recipe::validate::{ValidRecipe, ValidStep, ValidateOptions};

/// Arguments of `fire`.
pub struct FireArgs {
    /// Recipe file.
    pub recipe: PathBuf,
    /// Event file.
    pub event: PathBuf,
    /// Connections file.
    pub connections: Option<PathBuf>,
    /// Catalog folder.
    pub catalog: Option<PathBuf>,
    /// Print requests only.
    pub dry_run: bool,
    /// JSON output.
    pub json: bool,
}

/// Runs `fire` and returns the exit code.
pub fn fire(args: FireArgs) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(fire_async(args))
}

async fn fire_async(args: FireArgs) -> i32 {
    let catalog = match catalog_or_exit(args.catalog.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let conns = match &args.connections {
        None => Connections::default(),
        Some(path) => match connections_or_exit(path, &catalog) {
            Ok(c) => c,
            Err(code) => return code,
        },
    };
    // `fire` is handed the event, so the trigger's connection is not used.
    let options = ValidateOptions {
        trigger_connection_unused: true,
    };
    let loaded = match load_paths_with(
        std::slice::from_ref(&args.recipe),
        &catalog,
        args.connections.as_ref().map(|_| &conns),
        options,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if loaded.errors() > 0 || loaded.recipes.len() != 1 {
        print_diags(&loaded.diagnostics, Format::Human);
        if loaded.recipes.len() != 1 && loaded.errors() == 0 {
            eprintln!("error: {} holds no recipe", args.recipe.display());
        }
        return EXIT_INVALID;
    }
    // Warnings go to stderr: stdout may be `--format json`.
    let warnings: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .cloned()
        .collect();
    if !warnings.is_empty() {
        eprint!(
            "{}",
            crate::diagnostic::render_human(&warnings, &crate::diagnostic::read_source)
        );
    }
    let recipe = &loaded.recipes[0];
    let events = match read_events(&args.event, recipe, &catalog) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    // Only the connections the steps use are resolved: another
    // connection's unset secret is no reason to refuse this run.
    let mut used = Vec::new();
    used_connections(&recipe.steps, &mut used);
    let mut resolved = Vec::new();
    for c in conns.by_name.values().filter(|c| used.contains(&c.name)) {
        if args.dry_run {
            // A dry run sends nothing: unset values become placeholders.
            resolved.push(c.resolve_or_placeholders(&catalog));
            continue;
        }
        match c.resolve(&catalog) {
            Ok(r) => resolved.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let store = Arc::new(MemoryStore::default());
    let mut runtime = Runtime::new(catalog, resolved, store.clone(), store);
    if args.dry_run {
        runtime = runtime.with_dry_run();
    }
    let mut code = EXIT_OK;
    let mut out = String::new();
    let mut json_reports = Vec::new();
    for ev in events {
        let run_id = new_run_id();
        let report = interpreter::run(
            RunRequest {
                recipe,
                event: &ev,
                run_id: &run_id,
                started_at: chrono::Utc::now(),
                resume: &[],
            },
            &runtime,
            &NoCheckpoints,
        )
        .await;
        if report.status == RunStatus::Failed && !args.dry_run {
            code = EXIT_INVALID;
        }
        if args.json {
            let mut v = serde_json::to_value(&report).expect("report serializes");
            if args.dry_run {
                v["requests"] =
                    serde_json::to_value(runtime.dry_run_requests()).expect("requests serialize");
            }
            json_reports.push(v);
        } else {
            human(&mut out, &report, args.dry_run);
            if args.dry_run {
                dry_run_requests(&mut out, &runtime);
            }
        }
    }
    if args.json {
        out = serde_json::to_string_pretty(&json_reports).expect("json") + "\n";
    }
    print!("{out}");
    code
}

/// The connection names the steps (fallbacks included) use.
fn used_connections(steps: &[ValidStep], out: &mut Vec<String>) {
    for s in steps {
        if let Some(c) = &s.connection {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        for f in &s.fallback {
            used_connections(&f.steps, out);
        }
    }
}

/// Reads the event file (JSON, or YAML) into the events to run. A webhook
/// trigger's file may be a delivery as the connector sends it or a single
/// event: an object where deliveries are arrays is taken as a delivery of
/// one, and an array where deliveries are one object is a list of them.
fn read_events(
    path: &PathBuf,
    recipe: &ValidRecipe,
    catalog: &Catalog,
) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read event file {}: {e}", path.display()))?;
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(json_err) => match crate::yaml::parse(&text) {
            Ok((node, _)) => node.to_json(),
            Err(_) => {
                return Err(format!(
                    "{}: not JSON ({json_err}) nor YAML",
                    path.display()
                ))
            }
        },
    };
    crate::engine::triggers::fixture_events(
        catalog,
        &recipe.trigger.kind,
        Some(value),
        crate::engine::triggers::Shape::EventOrDelivery,
        chrono::Utc::now(),
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

fn new_run_id() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

fn human(out: &mut String, r: &RunReport, dry_run: bool) {
    let status = match r.status {
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Filtered => "filtered out by trigger.if (no step ran)",
    };
    let _ = writeln!(
        out,
        "run {} of {}: {status}{}",
        r.run_id,
        r.recipe,
        if dry_run { " (dry run)" } else { "" }
    );
    for s in &r.steps {
        let mark = match s.status {
            StepStatus::Completed => "ok  ",
            StepStatus::Failed => "FAIL",
            StepStatus::Skipped => "skip",
        };
        let indent = if s.fallback_of.is_some() {
            "    "
        } else {
            "  "
        };
        let _ = write!(out, "{indent}{mark} {} ({})", s.id, s.action);
        if s.status != StepStatus::Skipped {
            let _ = write!(
                out,
                " {} attempt{}, {} ms",
                s.attempts,
                if s.attempts == 1 { "" } else { "s" },
                s.duration_ms
            );
        }
        if let Some(i) = s.rescued_by {
            let _ = write!(out, ", rescued by fallback path {}", i + 1);
        }
        out.push('\n');
        if let Some(e) = &s.error {
            let status = e.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{indent}     error: {}{status}: {}",
                e.kind.as_str(),
                e.message
            );
        }
        if s.status == StepStatus::Completed && !dry_run {
            let _ = writeln!(out, "{indent}     output: {}", compact(&s.output));
        }
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn dry_run_requests(out: &mut String, runtime: &Runtime) {
    let _ = writeln!(out, "\nrequests that would be sent:");
    for p in runtime.dry_run_requests() {
        let mut url = p.url.clone();
        if !p.query.is_empty() {
            let q: Vec<String> = p.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let _ = writeln!(out, "\n{} {url}", p.method);
        for (k, v) in &p.headers {
            let _ = writeln!(out, "{k}: {v}");
        }
        if p.authenticated {
            let _ = writeln!(out, "authorization: *** (from the connection, redacted)");
        }
        match (&p.body, p.encoding) {
            (Some(b), crate::catalog::Encoding::Json) => {
                let _ = writeln!(
                    out,
                    "\n{}",
                    serde_json::to_string_pretty(b).unwrap_or_default()
                );
            }
            (Some(_), crate::catalog::Encoding::Form) => {
                let _ = writeln!(out, "\n{}", p.body_text().unwrap_or_default());
            }
            (None, _) => {}
        }
    }
}
