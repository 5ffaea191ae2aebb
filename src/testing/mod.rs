//! `patchbay test`: finds recipe test files, runs every case over canned
//! answers on a virtual clock, and reports (human, JSON, JUnit); `--update`
//! rewrites expected requests from actual ones. See `docs/testing.md`.

pub mod canned;
pub mod exec;
pub mod file;
pub mod junit;
pub mod matcher;
pub mod update;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::catalog::Catalog;
use crate::cli::{load_catalog, EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::diagnostic::{self, Diagnostic, Severity};
use exec::{CaseResult, FileRunner};
use file::{collect_test_files, LoadedTest};

/// Output formats of `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    /// Failing cases with a diff, then `N passed, N failed`.
    Human,
    /// One JSON object with every case.
    Json,
    /// JUnit XML for CI systems.
    Junit,
}

/// Arguments of `test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Test files, recipe files or folders (recursive); default `recipes/`.
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: TestFormat,
    /// Only cases whose `FILE::CASE` name contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Rewrite `expect.requests` of cases whose requests differ from the
    /// requests actually sent (review the change before committing it).
    #[arg(long)]
    pub update: bool,
    /// Extra connector files that add to or override the built-in catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

/// The results of one test file.
#[derive(Debug)]
pub struct FileResult {
    /// The file as given.
    pub file: String,
    /// Cases run.
    pub cases: Vec<CaseResult>,
    /// Set when the file has errors (its valid cases still ran).
    pub error: Option<String>,
}

/// Loads, runs and checks every selected case of the files.
pub fn run_files(
    files: &[PathBuf],
    catalog: &Catalog,
    filter: Option<&str>,
) -> (Vec<FileResult>, Vec<Diagnostic>, Vec<LoadedTest>) {
    // Virtual time: sleeps (back-off, Retry-After, rate limits) complete at
    // once because the paused clock jumps to the next timer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    let mut diags = Vec::new();
    let mut loaded = Vec::new();
    for path in files {
        let t = file::load(path, catalog, true);
        let errors = t
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        diags.extend(t.diagnostics.iter().cloned());
        let mut r = FileResult {
            file: t.file.clone(),
            cases: Vec::new(),
            error: (errors > 0).then(|| {
                t.diagnostics
                    .iter()
                    .map(Diagnostic::one_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
        };
        if let Some(runner) = FileRunner::new(&t, catalog) {
            for c in &t.cases {
                let name = format!("{}::{}", t.file, c.case.name);
                if filter.is_some_and(|f| !name.contains(f)) {
                    continue;
                }
                r.cases.push(rt.block_on(runner.run_case(c)));
            }
        }
        results.push(r);
        loaded.push(t);
    }
    (results, diags, loaded)
}

/// Runs `test` and returns the exit code.
pub fn test(args: TestArgs) -> i32 {
    let started = Instant::now();
    let (catalog, catalog_diags) = match load_catalog(args.catalog.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if !catalog_diags.is_empty() {
        crate::cli::print_diags(&catalog_diags, diagnostic::Format::Human);
        return EXIT_USAGE;
    }
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("recipes")]
    } else {
        args.paths.clone()
    };
    let files = match collect_test_files(&paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!("error: no test files (*.test.yaml) in {}", shown.join(", "));
        return EXIT_USAGE;
    }
    let filter = args.filter.as_deref();
    let (mut results, mut diags, loaded) = run_files(&files, &catalog, filter);
    if args.update {
        let mut updated = 0;
        for (t, r) in loaded.iter().zip(&results) {
            let Some(root) = &t.root else { continue };
            let todo: Vec<(usize, Vec<canned::Recorded>)> = r
                .cases
                .iter()
                .filter(|c| !c.requests_match)
                .map(|c| (c.index, c.requests.clone()))
                .collect();
            if todo.is_empty() {
                continue;
            }
            let (text, failed) = update::rewrite(&t.text, root, &todo);
            for (i, e) in &failed {
                eprintln!("warning: {}: case #{}: not updated: {e}", t.file, i + 1);
            }
            if text != t.text {
                if let Err(e) = std::fs::write(&t.file, text) {
                    eprintln!("error: cannot write {}: {e}", t.file);
                    return EXIT_USAGE;
                }
                updated += todo.len() - failed.len();
            }
        }
        eprintln!(
            "updated the expected requests of {updated} case{}",
            if updated == 1 { "" } else { "s" }
        );
        (results, diags, _) = run_files(&files, &catalog, filter);
    }
    let passed = results
        .iter()
        .flat_map(|r| &r.cases)
        .filter(|c| c.mismatches.is_empty())
        .count();
    let failed = results
        .iter()
        .flat_map(|r| &r.cases)
        .filter(|c| !c.mismatches.is_empty())
        .count();
    let out = match args.format {
        TestFormat::Human => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let mut s = diagnostic::render_human(&diags, &diagnostic::read_source);
            s.push_str(&human(&results, colour));
            let _ = writeln!(s, "{passed} passed, {failed} failed");
            s
        }
        TestFormat::Json => {
            let cases: Vec<serde_json::Value> = results
                .iter()
                .flat_map(|r| {
                    r.cases.iter().map(move |c| {
                        json!({
                            "file": r.file,
                            "case": c.case,
                            "name": format!("{}::{}", r.file, c.case),
                            "passed": c.mismatches.is_empty(),
                            "mismatches": c.mismatches,
                            "requests": c.requests,
                            "outcome": c.outcome,
                        })
                    })
                })
                .collect();
            let v = json!({
                "passed": passed,
                "failed": failed,
                "cases": cases,
                "diagnostics": diags,
            });
            serde_json::to_string_pretty(&v).expect("json") + "\n"
        }
        TestFormat::Junit => junit::render(&results, started.elapsed().as_secs_f64()),
    };
    if args.format != TestFormat::Human && !diags.is_empty() {
        // Machine output stays parseable; people still see the problems.
        eprint!(
            "{}",
            diagnostic::render_human(&diags, &diagnostic::read_source)
        );
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    diags.retain(|d| d.severity == Severity::Error);
    if !diags.is_empty() {
        EXIT_USAGE
    } else if failed > 0 {
        EXIT_INVALID
    } else {
        EXIT_OK
    }
}

/// Failing cases: the first mismatch with its diff, the others one line each.
fn human(results: &[FileResult], colour: bool) -> String {
    let (red, reset) = if colour {
        ("\x1b[31m", "\x1b[0m")
    } else {
        ("", "")
    };
    let mut out = String::new();
    for r in results {
        for c in &r.cases {
            let Some(first) = c.mismatches.first() else {
                continue;
            };
            let _ = writeln!(out, "{red}FAIL{reset} {}::{}", r.file, c.case);
            let _ = writeln!(out, "  {}", first.message);
            if let Some(d) = first.diff(colour) {
                for l in d.lines() {
                    let _ = writeln!(out, "    {l}");
                }
            }
            for m in &c.mismatches[1..] {
                let _ = writeln!(out, "  {}", m.message);
            }
            out.push('\n');
        }
    }
    out
}

/// Checks test files for `patchbay validate`: structure, recipe, callable
/// operations. The recipe's own problems are left to the recipe's check.
pub fn check_files(
    paths: &[PathBuf],
    catalog: &Catalog,
) -> std::io::Result<(usize, Vec<Diagnostic>)> {
    let files = collect_test_files_only(paths)?;
    let mut diags = Vec::new();
    for f in &files {
        diags.extend(file::load(f, catalog, false).diagnostics);
    }
    Ok((files.len(), diags))
}

/// Test files among paths (folders recursively); a recipe file given by
/// name does not pull in its test file here.
fn collect_test_files_only(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(collect_test_files(std::slice::from_ref(p))?);
        } else if file::is_test_file(Path::new(p)) {
            out.push(p.clone());
        }
    }
    Ok(out)
}
