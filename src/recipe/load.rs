//! Loading recipe files and folders: parse and validate every file, then
//! the checks that span files (duplicate recipe names).

use std::path::{Path, PathBuf};

use super::parse_recipe;
use super::validate::{validate_with, ValidRecipe, ValidateOptions};
use crate::catalog::Catalog;
use crate::connections::Connections;
use crate::diagnostic::{Diagnostic, Severity};

/// The outcome of loading a set of recipe files.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every file looked at.
    pub files: Vec<PathBuf>,
    /// Recipes that validated.
    pub recipes: Vec<ValidRecipe>,
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }
}

/// Whether a path names a recipe file (`*.yaml`/`*.yml`, not a test file).
pub fn is_recipe_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
        && !name.starts_with('.')
}

/// Expands files and folders (recursively) into recipe files, sorted.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if meta.is_dir() {
            walk(p, is_recipe_file, &mut out)?;
        } else if !crate::testing::file::is_test_file(p) {
            // A test file named on the command line is checked as a test
            // file (`validate`), never read as a recipe.
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// File names editors and tools write next to the real file while saving.
pub fn is_editor_junk(name: &str) -> bool {
    name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || name == "4913"
        || name.ends_with(".tmp")
        || name.contains(".tmp.")
}

/// Whether a folder entry is never read as part of a recipe or catalog
/// folder: hidden entries (`.git`, the `..data` of a Kubernetes ConfigMap
/// mount, whose files are also linked from the folder itself) and editor
/// companions.
pub fn is_skipped_entry(name: &str) -> bool {
    name.starts_with('.') || is_editor_junk(name)
}

/// The files under `dir` (recursively, in name order, symlinks followed)
/// that `keep` accepts, skipping [`is_skipped_entry`] names.
pub fn walk(dir: &Path, keep: fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    walk_guarded(dir, keep, 0, &mut Vec::new(), out)
}

fn walk_guarded(
    dir: &Path,
    keep: fn(&Path) -> bool,
    depth: usize,
    seen: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // Symlinks are followed: a bound on depth ends a loop of them, and a
    // folder already on the way down is not entered again (a link to a
    // parent would otherwise be walked once per level, 2^16 times for
    // two such links).
    if depth > 16 {
        return Ok(());
    }
    let real = std::fs::canonicalize(dir)?;
    if seen.contains(&real) {
        return Ok(());
    }
    seen.push(real);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if is_skipped_entry(name) {
            continue;
        }
        if p.is_dir() {
            walk_guarded(&p, keep, depth + 1, seen, out)?;
        } else if keep(&p) {
            out.push(p);
        }
    }
    seen.pop();
    Ok(())
}

/// Parses and validates recipe texts (`(file name, text)`).
pub fn load_texts(
    texts: &[(String, String)],
    catalog: &Catalog,
    connections: Option<&Connections>,
) -> Loaded {
    load_texts_with(texts, catalog, connections, ValidateOptions::default())
}

/// [`load_texts`] with validation options.
pub fn load_texts_with(
    texts: &[(String, String)],
    catalog: &Catalog,
    connections: Option<&Connections>,
    options: ValidateOptions,
) -> Loaded {
    let mut loaded = Loaded::default();
    let mut names: Vec<(String, String, crate::yaml::Pos)> = Vec::new();
    for (file, text) in texts {
        loaded.files.push(PathBuf::from(file));
        let first = loaded.diagnostics.len();
        let parsed = parse_recipe(file, text, &mut loaded.diagnostics);
        if let Some(r) = &parsed.recipe {
            let name = &r.recipe;
            if let Some((_, other, _)) = names.iter().find(|(n, _, _)| *n == name.value) {
                let msg = format!("recipe name `{}` is already used by {other}", name.value);
                loaded
                    .diagnostics
                    .push(Diagnostic::error(file, name.pos, "duplicate-recipe", msg));
            } else {
                names.push((name.value.clone(), file.clone(), name.pos));
            }
        }
        if let Some(v) = validate_with(
            &parsed,
            catalog,
            connections,
            options,
            &mut loaded.diagnostics,
        ) {
            loaded.recipes.push(v);
        }
        // Report a file's problems in source order.
        loaded.diagnostics[first..].sort_by_key(|d| (d.line, d.column));
    }
    // A recipe whose name clashes is not loaded.
    let dup_files: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.code == "duplicate-recipe")
        .map(|d| d.file.clone())
        .collect();
    loaded.recipes.retain(|r| !dup_files.contains(&r.file));
    loaded
}

/// Reads and validates files and folders.
pub fn load_paths(
    paths: &[PathBuf],
    catalog: &Catalog,
    connections: Option<&Connections>,
) -> std::io::Result<Loaded> {
    load_paths_with(paths, catalog, connections, ValidateOptions::default())
}

/// [`load_paths`] with validation options.
pub fn load_paths_with(
    paths: &[PathBuf],
    catalog: &Catalog,
    connections: Option<&Connections>,
    options: ValidateOptions,
) -> std::io::Result<Loaded> {
    let files = collect_files(paths)?;
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let text = crate::safefile::read_text(&f)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
        texts.push((f.display().to_string(), text));
    }
    Ok(load_texts_with(&texts, catalog, connections, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_to_parent_folders_are_walked_once() {
        let d = std::env::temp_dir().join(format!("patchbay-walk-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/r.yaml"), "recipe: r\n").unwrap();
        for l in ["up1", "up2", "up3"] {
            std::os::unix::fs::symlink(&d, d.join("sub").join(l)).unwrap();
        }
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        walk(&d, is_recipe_file, &mut out).unwrap();
        // Without the guard: 3^16 folders.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(out, vec![d.join("sub/r.yaml")]);
    }

    #[test]
    fn editor_files_and_hidden_entries_are_skipped() {
        for j in [
            ".x.yaml.swp",
            "x.yaml~",
            ".#x.yaml",
            "#x.yaml#",
            "4913",
            "x.yaml.tmp",
        ] {
            assert!(is_editor_junk(j), "{j}");
            assert!(is_skipped_entry(j), "{j}");
        }
        for ok in ["x.yaml", "..data", "a.yml"] {
            assert!(!is_editor_junk(ok), "{ok}");
        }
        assert!(is_skipped_entry("..data") && is_skipped_entry(".git"));
    }
}
