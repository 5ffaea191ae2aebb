//! `patchbay connector import` and `patchbay connector test`: writing a
//! connector file from an OpenAPI document, and checking one (offline, and
//! with a connection, one call of each read-only operation).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::catalog::openapi::{import, ImportOptions};
use crate::catalog::{parse_connector, Catalog, Method, OpKind};
use crate::cli::{print_diags, EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::connections::Connections;
use crate::connectors::native::MemoryStore;
use crate::connectors::Runtime;
use crate::diagnostic::Format;

/// `patchbay connector ...`.
#[derive(Subcommand, Debug)]
pub enum ConnectorCommand {
    /// Write a connector file from an OpenAPI 3 document (JSON or YAML);
    /// what cannot be mapped is listed on stderr and atop the file.
    Import(ImportArgs),
    /// Check a connector file offline (file:line:col diagnostics); with
    /// `--connection`, call each read-only operation once.
    Test(TestArgs),
}

/// Arguments of `connector import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The OpenAPI document.
    pub openapi: PathBuf,
    /// Connector name, which prefixes every operation id; default from the
    /// document's title.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only operations with this tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Write the connector file here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Arguments of `connector test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// The connector file.
    pub file: PathBuf,
    /// A connection of this connector to smoke-test with (from `--connections`).
    #[arg(long, requires = "connections")]
    pub connection: Option<String>,
    /// Connections file.
    #[arg(long)]
    pub connections: Option<PathBuf>,
    /// Diagnostics format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

/// Runs a `connector` command and returns the exit code.
pub fn connector(cmd: ConnectorCommand) -> i32 {
    match cmd {
        ConnectorCommand::Import(a) => import_cmd(a),
        ConnectorCommand::Test(a) => test_cmd(a),
    }
}

fn import_cmd(a: ImportArgs) -> i32 {
    let text = match std::fs::read_to_string(&a.openapi) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", a.openapi.display());
            return EXIT_USAGE;
        }
    };
    let options = ImportOptions {
        prefix: a.prefix,
        tags: a.tags,
    };
    let out = match import(&text, &options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {}: {e}", a.openapi.display());
            return EXIT_INVALID;
        }
    };
    // The importer's own output must load; a failure here is a bug.
    let name = a
        .output
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("{}.yaml", out.connector));
    if let Err(d) = parse_connector(&name, &out.yaml) {
        eprintln!("error: the imported connector does not load (a bug in the importer):");
        for d in d {
            eprintln!("  {}:{}:{}: {}", d.file, d.line, d.column, d.message);
        }
        return EXIT_INVALID;
    }
    match &a.output {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &out.yaml) {
                eprintln!("error: cannot write {}: {e}", p.display());
                return EXIT_USAGE;
            }
        }
        None => print!("{}", out.yaml),
    }
    eprintln!(
        "imported {} operation{} as connector `{}`",
        out.operations,
        if out.operations == 1 { "" } else { "s" },
        out.connector
    );
    if !out.unmapped.is_empty() {
        eprintln!("not mapped ({}):", out.unmapped.len());
        for u in &out.unmapped {
            eprintln!("  - {u}");
        }
    }
    EXIT_OK
}

fn test_cmd(a: TestArgs) -> i32 {
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", a.file.display());
            return EXIT_USAGE;
        }
    };
    let file = a.file.display().to_string();
    let connector = match parse_connector(&file, &text) {
        Ok(c) => c,
        Err(d) => {
            print_diags(&d, a.format);
            return EXIT_INVALID;
        }
    };
    let name = connector.def.connector.clone();
    let ops = connector.def.operations.len();
    println!("{file}: connector `{name}`, {ops} operations: ok");
    let Some(conn_name) = a.connection else {
        return EXIT_OK;
    };
    let catalog = Catalog::builtin().with_connector(connector);
    let Some(conns_path) = a.connections else {
        eprintln!("error: --connection needs --connections");
        return EXIT_USAGE;
    };
    let conns = match crate::cli::connections_or_exit(&conns_path, &catalog) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(smoke(&catalog, &conns, &name, &conn_name))
}

/// Calls each GET action whose required inputs all come from the
/// connection, once, and reports each answer.
async fn smoke(catalog: &Catalog, conns: &Connections, connector: &str, conn_name: &str) -> i32 {
    let Some(decl) = conns.get(conn_name) else {
        eprintln!("error: no connection `{conn_name}` in the connections file");
        return EXIT_USAGE;
    };
    if decl.connector != connector {
        eprintln!(
            "error: connection `{conn_name}` is for connector `{}`, not `{connector}`",
            decl.connector
        );
        return EXIT_USAGE;
    }
    let resolved = match decl.resolve(catalog) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let store = Arc::new(MemoryStore::default());
    let runtime = Runtime::new(catalog.clone(), vec![resolved], store.clone(), store);
    let mut out = String::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for op in catalog.operations_of(connector) {
        let def = op.def();
        if def.kind != OpKind::Action || def.method != Some(Method::Get) {
            continue;
        }
        let needs: Vec<&String> = def
            .inputs
            .iter()
            .filter(|(_, i)| i.required && i.from_connection.is_none() && i.default.is_none())
            .map(|(n, _)| n)
            .collect();
        let path = def.path.as_deref().unwrap_or_default();
        if !needs.is_empty() {
            skipped += 1;
            let needs: Vec<&str> = needs.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(
                out,
                "skip {} (GET {path}): needs {}",
                op.id(),
                needs.join(", ")
            );
            continue;
        }
        // One page is enough to know the operation works.
        let mut input = Map::new();
        if let Some(p) = &def.pagination {
            if let (Some(l), Some(size)) = (&p.limit_input, p.page_size) {
                input.insert(l.clone(), json!(size.min(10)));
            }
        }
        let started = Instant::now();
        let retry = Some(crate::recipe::validate::RetryPolicy {
            attempts: 1,
            backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_millis(100),
        });
        match runtime.call(&op, Some(conn_name), &input, retry).await {
            Ok(o) => {
                passed += 1;
                let _ = writeln!(
                    out,
                    "ok   {} (GET {path}) {} ms: {}",
                    op.id(),
                    started.elapsed().as_millis(),
                    summary(&o.output)
                );
            }
            Err(f) => {
                failed += 1;
                let status = f
                    .error
                    .status
                    .map(|s| format!(" (HTTP {s})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "FAIL {} (GET {path}): {}{status}: {}",
                    op.id(),
                    f.error.kind.as_str(),
                    f.error.message
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "{passed} passed, {failed} failed, {skipped} skipped (need inputs) with connection `{conn_name}`"
    );
    print!("{out}");
    if failed > 0 {
        EXIT_INVALID
    } else {
        EXIT_OK
    }
}

/// What came back, briefly: its shape, never its values (they may be
/// personal data).
fn summary(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("{} item{}", a.len(), if a.len() == 1 { "" } else { "s" }),
        Value::Object(m) => format!(
            "object with {} field{}",
            m.len(),
            if m.len() == 1 { "" } else { "s" }
        ),
        Value::Null => "no body".into(),
        other => format!("a {}", json_type(other)),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        _ => "value",
    }
}
