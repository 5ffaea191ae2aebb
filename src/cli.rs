//! The command line: `validate`, `catalog`, `fire`, `test`, `run`, `schema`, ...

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::catalog::{Catalog, OpKind, OpRef};
use crate::connections::Connections;
use crate::diagnostic::{self, Diagnostic, Format};
use crate::recipe::load::load_paths;

/// Exit code: everything valid.
pub const EXIT_OK: i32 = 0;
/// Exit code: problems found.
pub const EXIT_INVALID: i32 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "patchbay",
    version,
    about = "A declarative integration engine: YAML recipes, a connector catalog, durable runs."
)]
struct Cli {
    /// Log lines as `text` (colours only on a terminal) or `json` (one
    /// object a line, with the run's span fields); levels from
    /// `PATCHBAY_LOG` or `RUST_LOG`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check recipes offline: YAML, schema, catalog references, templates, connections.
    Validate {
        /// Recipe files or folders (recursive); default `recipes/`.
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Extra connector files that add to or override the built-in catalog.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Connections file; without it connection checks are skipped.
        #[arg(long)]
        connections: Option<PathBuf>,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// List connectors and operations, or show one operation.
    Catalog {
        /// An operation id (`ghl.contacts.create`) or connector name (`ghl`).
        op: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: CatalogFormat,
        /// Extra connector files.
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Run one event through one recipe, calling the APIs (or only printing
    /// the requests with `--dry-run`).
    Fire {
        /// The recipe file.
        recipe: PathBuf,
        /// The event: a JSON or YAML file with the trigger payload (a
        /// webhook delivery that is an array runs each item).
        #[arg(long)]
        event: PathBuf,
        /// Connections file.
        #[arg(long)]
        connections: Option<PathBuf>,
        /// Extra connector files.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Print the requests instead of sending them.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: CatalogFormat,
    },
    /// Run recipe test files (`*.test.yaml`): an event, canned responses,
    /// expected requests and outcome. Exit 0 all passed, 1 a case failed,
    /// 2 errors in the test files.
    Test(crate::testing::TestArgs),
    /// Run the engine: webhooks, polls, schedules and workers over the store.
    Run(crate::run::RunArgs),
    /// List runs in the store (`runs show ID` for one run with its steps).
    Runs {
        /// `show ID` to show one run.
        #[arg(num_args = 0..=2)]
        show: Vec<String>,
        /// Only this recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// Only this status (queued, running, completed, failed, filtered, replayed).
        #[arg(long)]
        status: Option<String>,
        /// Store URL.
        #[arg(long, default_value = crate::store::DEFAULT_URL)]
        store: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List runs that failed for good.
    DeadLetters {
        /// Only this recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// Store URL.
        #[arg(long, default_value = crate::store::DEFAULT_URL)]
        store: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List recent webhook deliveries, accepted and rejected.
    Deliveries {
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Store URL.
        #[arg(long, default_value = crate::store::DEFAULT_URL)]
        store: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Queue failed runs again, on the recipe version now in the folder.
    Replay {
        /// A run id.
        id: Option<String>,
        /// Every failed run (of `--recipe` if given).
        #[arg(long)]
        all_failed: bool,
        /// Only this recipe.
        #[arg(long)]
        recipe: Option<String>,
        /// Recipe folder (for the current versions).
        #[arg(long, default_value = "recipes")]
        recipes: PathBuf,
        /// Store URL.
        #[arg(long, default_value = crate::store::DEFAULT_URL)]
        store: String,
    },
    /// Show what a running engine serves: recipe versions, rejected
    /// files with diagnostics, the last reload (from its admin API).
    Status(crate::status::StatusArgs),
    /// Write and check connector files: `connector import OPENAPI_FILE`,
    /// `connector test FILE`.
    #[command(subcommand)]
    Connector(crate::authoring::ConnectorCommand),
    /// Print the recipe JSON Schema (or the connector-file or test-file schema).
    Schema {
        /// Print the connector-file schema instead.
        #[arg(long, conflicts_with = "test")]
        connector: bool,
        /// Print the recipe test file schema instead.
        #[arg(long)]
        test: bool,
    },
}

/// Output formats of `catalog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CatalogFormat {
    Human,
    Json,
    /// The whole catalog as Markdown (`docs/catalog.md`).
    Markdown,
}

/// Runs the CLI and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate {
            paths,
            format,
            catalog,
            connections,
            deny_warnings,
        } => validate(paths, format, catalog, connections, deny_warnings),
        Command::Catalog {
            op,
            format,
            catalog,
        } => catalog_cmd(op, format, catalog),
        Command::Fire {
            recipe,
            event,
            connections,
            catalog,
            dry_run,
            format,
        } => crate::fire::fire(crate::fire::FireArgs {
            recipe,
            event,
            connections,
            catalog,
            dry_run,
            json: format == CatalogFormat::Json,
        }),
        Command::Test(args) => crate::testing::test(args),
        Command::Run(args) => crate::run::run(args),
        Command::Runs {
            show,
            recipe,
            status,
            store,
            json,
        } => crate::ops::runs(show, recipe, status, &store, json),
        Command::DeadLetters {
            recipe,
            store,
            json,
        } => crate::ops::runs(Vec::new(), recipe, Some("failed".into()), &store, json),
        Command::Deliveries { limit, store, json } => crate::ops::deliveries(limit, &store, json),
        Command::Replay {
            id,
            all_failed,
            recipe,
            recipes,
            store,
        } => crate::ops::replay(id, all_failed, recipe, &recipes, &store),
        Command::Status(args) => crate::status::status(args),
        Command::Connector(cmd) => crate::authoring::connector(cmd),
        Command::Schema { connector, test } => {
            let s = if connector {
                crate::schema::connector_schema()
            } else if test {
                crate::schema::test_schema()
            } else {
                crate::schema::recipe_schema()
            };
            print!("{s}");
            EXIT_OK
        }
    }
}

/// Logs go to stderr; `PATCHBAY_LOG` (or `RUST_LOG`) sets the filter,
/// default `warn` plus reload lines.
fn init_logging(format: LogFormat) {
    let filter = std::env::var("PATCHBAY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        // Reload lines are shown by default: an operator who saved a file
        // wants to see it applied.
        .unwrap_or_else(|_| "warn,patchbay::reload=info".into());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            // Every span's fields (run, step, attempt), outermost first.
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Text => {
            use std::io::IsTerminal as _;
            tracing_subscriber::fmt()
                // Colour codes only for a person at a terminal, not in files.
                .with_ansi(std::io::stderr().is_terminal())
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init()
        }
    };
}

/// Loads the catalog, reporting broken override files.
pub fn load_catalog(dir: Option<&PathBuf>) -> Result<(Catalog, Vec<Diagnostic>), String> {
    match dir {
        None => Ok((Catalog::builtin(), Vec::new())),
        Some(d) => Catalog::with_dir(d)
            .map_err(|e| format!("cannot read catalog folder {}: {e}", d.display())),
    }
}

/// The catalog for `fire` and `run`, or the exit code after printing why not.
pub fn catalog_or_exit(dir: Option<&PathBuf>) -> Result<Catalog, i32> {
    match load_catalog(dir) {
        Ok((c, d)) if d.is_empty() => Ok(c),
        Ok((_, d)) => {
            print_diags(&d, Format::Human);
            Err(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_USAGE)
        }
    }
}

/// A checked connections file for `fire` and `run`, or the exit code after
/// printing why not.
pub fn connections_or_exit(path: &std::path::Path, catalog: &Catalog) -> Result<Connections, i32> {
    let text = crate::safefile::read_text(path).map_err(|e| {
        eprintln!(
            "error: cannot read connections file {}: {e}",
            path.display()
        );
        EXIT_USAGE
    })?;
    Connections::parse(&path.display().to_string(), &text, catalog).map_err(|d| {
        print_diags(&d, Format::Human);
        EXIT_INVALID
    })
}

/// Prints diagnostics to stdout in a format.
pub fn print_diags(diags: &[Diagnostic], format: Format) {
    let out = match format {
        Format::Human => diagnostic::render_human(diags, &diagnostic::read_source),
        Format::Json => diagnostic::render_json(diags),
        Format::Github => diagnostic::render_github(diags),
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
}

fn validate(
    paths: Vec<PathBuf>,
    format: Format,
    catalog: Option<PathBuf>,
    connections: Option<PathBuf>,
    deny_warnings: bool,
) -> i32 {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("recipes")]
    } else {
        paths
    };
    let (catalog, mut diags) = match load_catalog(catalog.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let conns = match &connections {
        None => None,
        Some(path) => {
            let text = match crate::safefile::read_text(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!(
                        "error: cannot read connections file {}: {e}",
                        path.display()
                    );
                    return EXIT_USAGE;
                }
            };
            match Connections::parse(&path.display().to_string(), &text, &catalog) {
                Ok(c) => {
                    diags.extend(c.warnings.iter().cloned());
                    Some(c)
                }
                Err(mut d) => {
                    diags.append(&mut d);
                    None
                }
            }
        }
    };
    let loaded = match load_paths(&paths, &catalog, conns.as_ref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    diags.extend(loaded.diagnostics.iter().cloned());
    // Test files met on the way are checked as test files.
    let tests = match crate::testing::check_files(&paths, &catalog) {
        Ok((n, d)) => {
            diags.extend(d);
            n
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    print_diags(&diags, format);
    let errors = diags
        .iter()
        .filter(|d| d.severity == diagnostic::Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    if format == Format::Human {
        eprintln!(
            "checked {} file{}: {errors} error{}, {warnings} warning{}",
            loaded.files.len() + tests,
            if loaded.files.len() + tests == 1 {
                ""
            } else {
                "s"
            },
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        );
    }
    if errors > 0 || (deny_warnings && warnings > 0) {
        EXIT_INVALID
    } else {
        EXIT_OK
    }
}

fn kind_name(k: OpKind) -> &'static str {
    match k {
        OpKind::Action => "action",
        OpKind::Webhook => "webhook trigger",
        OpKind::Poll => "poll trigger",
    }
}

/// One operation as JSON for `catalog --format json`.
fn op_json(op: &OpRef) -> serde_json::Value {
    let d = op.def();
    serde_json::json!({
        "id": op.id(),
        "kind": d.kind,
        "title": d.title,
        "description": d.description,
        "method": d.method,
        "path": d.path,
        "native": d.native,
        "scope": d.scope,
        "inputs": d.inputs,
        "output": d.output.clone().unwrap_or_else(|| "$".into()),
        "pagination": d.pagination,
        "batch_input": d.batch_input,
        "event_type": d.event_type,
        "payload": d.payload,
        "poll": d.poll,
    })
}

fn catalog_cmd(op: Option<String>, format: CatalogFormat, dir: Option<PathBuf>) -> i32 {
    let (catalog, diags) = match load_catalog(dir.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if !diags.is_empty() {
        print_diags(&diags, Format::Human);
        return EXIT_INVALID;
    }
    let out = match op {
        None if format == CatalogFormat::Markdown => crate::catalog::doc::markdown(&catalog),
        Some(id) if catalog.op(&id).is_some() => {
            let op = catalog.op(&id).expect("checked");
            match format {
                CatalogFormat::Json => {
                    serde_json::to_string_pretty(&op_json(&op)).expect("json") + "\n"
                }
                CatalogFormat::Human | CatalogFormat::Markdown => describe_op(&op),
            }
        }
        Some(name) if catalog.connector(&name).is_some() => {
            let ops: Vec<OpRef> = catalog
                .operations()
                .filter(|o| o.connector().connector == name)
                .collect();
            list_ops(&ops, format)
        }
        Some(id) => {
            let ids = catalog.operation_ids();
            let sugg = diagnostic::did_you_mean(&id, ids.iter().map(String::as_str));
            eprintln!(
                "error: no operation or connector '{id}' in the catalog{}",
                sugg.map(|s| format!("; {s}")).unwrap_or_default()
            );
            return EXIT_USAGE;
        }
        None => {
            let ops: Vec<OpRef> = catalog.operations().collect();
            list_ops(&ops, format)
        }
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    EXIT_OK
}

fn list_ops(ops: &[OpRef], format: CatalogFormat) -> String {
    if format == CatalogFormat::Json {
        let all: Vec<_> = ops.iter().map(op_json).collect();
        return serde_json::to_string_pretty(&all).expect("json") + "\n";
    }
    let mut out = String::new();
    let mut current = String::new();
    for op in ops {
        let c = &op.connector().connector;
        if *c != current {
            out.push_str(&format!("\n{c} — {}\n", op.connector().title));
            current = c.clone();
        }
        let how = match (&op.def().method, &op.def().path) {
            (Some(m), Some(p)) => format!("{} {p}", m.as_str()),
            _ => kind_name(op.def().kind).to_string(),
        };
        out.push_str(&format!(
            "  {:<34} {:<48} {}\n",
            op.id(),
            how,
            op.def().title
        ));
    }
    out.trim_start().to_string()
}

fn describe_op(op: &OpRef) -> String {
    let d = op.def();
    let mut s = format!("{} — {}\n", op.id(), d.title);
    s.push_str(&format!("kind: {}\n", kind_name(d.kind)));
    if let (Some(m), Some(p)) = (&d.method, &d.path) {
        s.push_str(&format!("request: {} {p}\n", m.as_str()));
        if d.body_encoding == crate::catalog::Encoding::Form {
            s.push_str("body: form fields (application/x-www-form-urlencoded)\n");
        }
    }
    if let Some(n) = &d.native {
        s.push_str(&format!("built in: {n}\n"));
    }
    if let Some(sc) = &d.scope {
        s.push_str(&format!("scope: {sc}\n"));
    }
    if !d.description.is_empty() {
        s.push_str(&format!("\n{}\n", d.description.trim()));
    }
    if !d.inputs.is_empty() {
        s.push_str("\ninputs:\n");
        for (name, i) in &d.inputs {
            let mut notes = vec![format!("{:?}", i.location).to_lowercase()];
            if i.required {
                notes.push("required".into());
            }
            if let Some(f) = &i.from_connection {
                notes.push(format!("from connection `{f}`"));
            }
            if let Some(e) = i.encode {
                notes.push(format!("sent as {}", e.as_str()));
            }
            s.push_str(&format!(
                "  {:<28} {:<8} {:<40} {}\n",
                name,
                i.ty.as_str(),
                notes.join(", "),
                i.description
            ));
        }
    }
    if d.kind == OpKind::Action {
        s.push_str(&format!(
            "\noutput: {}\n",
            d.output.as_deref().unwrap_or("$")
        ));
    }
    if let Some(b) = &d.batch_input {
        s.push_str(&format!(
            "batchable: `for_each` + `batch_size` fill the list input `{b}`\n"
        ));
    }
    if let Some(e) = &d.event_type {
        s.push_str(&format!("\nevent type: {e}\n"));
    }
    if !d.payload.is_empty() {
        s.push_str("\npayload:\n");
        for (name, f) in &d.payload {
            s.push_str(&format!("  {:<28} {}\n", name, f.ty.as_str()));
        }
    }
    s
}
