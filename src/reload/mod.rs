//! Hot reload: re-reads the recipe folder and the connections file, and
//! swaps what changed as one transaction. Data flows load -> validate ->
//! plan -> swap: every file is read and validated with the same checks as
//! `patchbay validate` (plus cross-file checks: duplicate names, connections
//! named); a valid change replaces its recipe for new events, an invalid
//! one is rejected with its diagnostics while the previous version of that
//! file's recipe keeps running. Reloads come from the file watcher
//! ([`watch`]), SIGHUP and `POST /admin/reload` ([`admin`]); one mutex
//! serialises them.

pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch as signal;

use crate::catalog::Catalog;
use crate::connections::{Connections, ResolvedConnection};
use crate::diagnostic::{Diagnostic, Severity};
use crate::engine::Service;
use crate::recipe::load::{is_recipe_file, is_skipped_entry, load_texts, walk};
use crate::recipe::validate::{version_of, ValidRecipe};
use crate::store::versions::StoredVersion;

/// What the engine reloads from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The recipe folder (`--recipes`).
    pub recipes: PathBuf,
    /// The connections file (`--connections`), if any.
    pub connections: Option<PathBuf>,
    /// Extra connector files (`--catalog`), if any.
    pub catalog: Option<PathBuf>,
}

/// Settings fixed for the life of the process: a reload that asks for
/// other values is refused (restart needed).
#[derive(Debug, Clone)]
pub struct Fixed {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--store`.
    pub store: String,
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Engine start.
    Start,
    /// A file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every changed file was applied (or nothing had changed).
    Ok,
    /// At least one file was rejected; its previous version keeps running.
    Rejected,
    /// Nothing could be applied (folder unreadable, store failed).
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }
}

/// A file a reload did not apply, with why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// The file (or folder).
    pub file: String,
    /// `file:line:col: error[code]: message` lines.
    pub diagnostics: Vec<String>,
    /// The same, structured.
    pub details: Vec<Diagnostic>,
}

impl Rejected {
    fn new(file: &str, details: Vec<Diagnostic>) -> Rejected {
        Rejected {
            file: file.to_string(),
            diagnostics: details.iter().map(Diagnostic::one_line).collect(),
            details,
        }
    }

    /// A rejection without a source position (unreadable file, restart needed).
    fn message(file: &str, code: &'static str, message: String) -> Rejected {
        Rejected::new(
            file,
            vec![Diagnostic::error(
                file,
                crate::yaml::Pos { line: 1, col: 1 },
                code,
                message,
            )],
        )
    }
}

/// What one reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// What started it.
    pub trigger: Trigger,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// How it ended.
    pub result: Outcome,
    /// Recipes that started taking events.
    pub added: Vec<String>,
    /// Recipes with a new version.
    pub changed: Vec<String>,
    /// Recipes that stopped taking events.
    pub removed: Vec<String>,
    /// Files not applied, with their diagnostics.
    pub rejected: Vec<Rejected>,
    /// Diagnostics that do not keep a file from loading (warnings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
    /// Connections added, changed or removed.
    pub connections: Vec<String>,
    /// Changed connector files (`--catalog`) were applied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub catalog: bool,
    /// Why nothing could be applied, for `error`.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: f64,
}

/// A reload refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A setting that only a restart changes.
    #[error("{what} is `{running}` and cannot change while the engine runs: restart patchbay to use `{wanted}`")]
    RestartNeeded {
        /// `the listen address`, `the store URL`.
        what: &'static str,
        /// The running value.
        running: String,
        /// The asked-for value.
        wanted: String,
    },
}

/// One active recipe, for `GET /admin/recipes`.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeStatus {
    /// Recipe name.
    pub name: String,
    /// Active version (content hash).
    pub version: String,
    /// Source file.
    pub file: String,
    /// When this version became active.
    pub loaded_at: DateTime<Utc>,
    /// The trigger kind (`webhook`, `poll`, `schedule`).
    pub trigger: &'static str,
    /// The last rejected edit of its file, until a new version loads.
    pub last_error: Option<Rejected>,
}

/// What `GET /admin/recipes` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// Active recipes by name.
    pub recipes: Vec<RecipeStatus>,
    /// Files currently rejected (invalid now), with diagnostics.
    pub rejected: Vec<Rejected>,
    /// The last reload.
    pub last_reload: Option<ReloadReport>,
    /// The last reload that rejected something or failed.
    pub last_error: Option<ReloadReport>,
}

/// What the last reload applied, to compare the next one with.
#[derive(Default)]
struct Applied {
    /// Content hash of every recipe file looked at (valid or not).
    files: BTreeMap<String, String>,
    /// Hash of the connections file as last read.
    connections_hash: Option<String>,
    /// The connections file as last applied (the resolved connections
    /// serving now live in the runtime, which diffs them).
    decls: Option<Connections>,
    /// Hash of the `--catalog` folder the engine started with.
    catalog_hash: Option<String>,
    /// Hash of the `--catalog` folder as last read.
    catalog_seen: Option<String>,
    /// When each active (recipe, version) was loaded.
    loaded_at: HashMap<(String, String), DateTime<Utc>>,
    /// Rejections that stay until their file changes, by file.
    rejected: BTreeMap<String, Rejected>,
    /// The last rejection per recipe, until a new version loads.
    recipe_errors: HashMap<String, Rejected>,
}

/// Reloads recipes and connections into a running [`Service`].
pub struct Reloader {
    svc: Arc<Service>,
    sources: Sources,
    fixed: Fixed,
    applied: tokio::sync::Mutex<Applied>,
    status: RwLock<Status>,
    /// Poll and schedule loops by recipe, with the version they run.
    schedules: Mutex<HashMap<String, (String, tokio::task::JoinHandle<()>)>>,
    stop: signal::Receiver<bool>,
}

impl Reloader {
    /// A reloader over a started service; `decls` is the connections file
    /// it started with.
    pub fn new(
        svc: Arc<Service>,
        sources: Sources,
        fixed: Fixed,
        decls: Option<Connections>,
        stop: signal::Receiver<bool>,
    ) -> Reloader {
        let catalog_hash = sources.catalog.as_deref().and_then(tree_hash);
        let connections_hash = sources
            .connections
            .as_deref()
            .and_then(|p| crate::safefile::read_text(p).ok())
            .map(|t| version_of(&t));
        Reloader {
            svc,
            sources,
            fixed,
            applied: tokio::sync::Mutex::new(Applied {
                decls,
                catalog_seen: catalog_hash.clone(),
                catalog_hash,
                connections_hash,
                ..Default::default()
            }),
            status: RwLock::new(Status::default()),
            schedules: Mutex::new(HashMap::new()),
            stop,
        }
    }

    /// The sources watched.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The service this reloader drives.
    pub fn service(&self) -> &Arc<Service> {
        &self.svc
    }

    /// The state shown by `GET /admin/recipes`.
    pub fn status(&self) -> Status {
        self.status.read().expect("status lock").clone()
    }

    /// Refuses a reload that asks for another listen address or store.
    pub fn check_fixed(&self, listen: Option<&str>, store: Option<&str>) -> Result<(), Refused> {
        if let Some(l) = listen {
            if l.parse::<SocketAddr>().ok() != Some(self.fixed.listen) {
                return Err(Refused::RestartNeeded {
                    what: "the listen address",
                    running: self.fixed.listen.to_string(),
                    wanted: l.to_string(),
                });
            }
        }
        if let Some(s) = store {
            if s != self.fixed.store {
                return Err(Refused::RestartNeeded {
                    what: "the store URL",
                    running: self.fixed.store.clone(),
                    wanted: s.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Stops every poll and schedule loop (shutdown).
    pub fn stop_schedules(&self) {
        for (_, (_, task)) in self.schedules.lock().expect("schedules lock").drain() {
            task.abort();
        }
    }

    /// Reloads everything. A watcher-triggered reload that finds no file
    /// whose content changed does nothing and returns `None`.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadReport> {
        let started = Instant::now();
        let mut applied = self.applied.lock().await;
        let mut report = ReloadReport {
            trigger,
            at: Utc::now(),
            result: Outcome::Ok,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            rejected: Vec::new(),
            warnings: Vec::new(),
            connections: Vec::new(),
            catalog: false,
            error: None,
            duration_ms: 0.0,
        };
        let outcome = self.apply(&mut applied, trigger, &mut report).await;
        let committed = match outcome {
            Ok(None) => return None,
            Ok(Some(c)) => Some(c),
            Err(e) => {
                report.result = Outcome::Error;
                report.error = Some(e);
                None
            }
        };
        if report.result == Outcome::Ok && !report.rejected.is_empty() {
            report.result = Outcome::Rejected;
        }
        report.at = Utc::now();
        report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.record(&applied, &report);
        // The new set serves already; the versions' commit (an fsync) ends
        // the reload, so the next one starts after it.
        if let Some(Err(e)) = match committed {
            Some(c) => Some(c.await),
            None => None,
        } {
            // This process has the versions in memory; after a restart,
            // runs queued on them would run on the active version instead.
            tracing::error!(error = %e, "could not record recipe versions; after a restart their queued runs use the active version");
            report.error = Some(format!(
                "the new recipe versions could not be recorded in the store: {e}"
            ));
            let mut status = self.status.write().expect("status lock");
            status.last_error = Some(report.clone());
            status.last_reload = Some(report.clone());
        }
        Some(report)
    }

    /// The transaction: `Ok(None)` when a watcher reload found nothing
    /// changed; `Err` when nothing could be applied.
    async fn apply(
        &self,
        applied: &mut Applied,
        trigger: Trigger,
        report: &mut ReloadReport,
    ) -> Result<Option<crate::store::versions::Committed>, String> {
        let force = trigger != Trigger::Watch;
        // 1. Read: every recipe file, the connections file, the catalog.
        let texts = read_recipes(&self.sources.recipes)?;
        let hashes: BTreeMap<String, String> = texts
            .iter()
            .map(|(f, t)| (f.clone(), version_of(t)))
            .collect();
        let conn_text = self.sources.connections.as_ref().map(|p| {
            crate::safefile::read_text(p)
                .map_err(|e| format!("cannot read connections file {}: {e}", p.display()))
        });
        let conn_hash = match &conn_text {
            Some(Ok(t)) => Some(version_of(t)),
            _ => None,
        };
        let catalog_hash = self.sources.catalog.as_deref().and_then(tree_hash);
        let nothing_changed = hashes == applied.files
            && conn_hash == applied.connections_hash
            && catalog_hash == applied.catalog_seen;
        if !force && nothing_changed {
            return Ok(None);
        }

        // 2. Connector files (`--catalog`): a changed folder is loaded and,
        // before anything uses it, checked against what serves now: the
        // recipes of unchanged files and the connections file must still
        // validate, or the whole catalog change is rejected and the old
        // catalog keeps serving (docs/decisions.md).
        let mut persistent: BTreeMap<String, Rejected> = BTreeMap::new();
        let serving = self.svc.catalog();
        let mut catalog = serving.clone();
        let mut catalog_changed = false;
        if let (Some(dir), Some(now)) = (&self.sources.catalog, &catalog_hash) {
            if applied.catalog_hash.as_ref() != Some(now) {
                let file = dir.display().to_string();
                match Catalog::with_dir(dir) {
                    Ok((_, d)) if d.iter().any(|d| d.severity == Severity::Error) => {
                        persistent.insert(file.clone(), Rejected::new(&file, d));
                    }
                    Ok((candidate, _)) => {
                        let candidate = Arc::new(candidate);
                        let breaks = self
                            .catalog_breaks(
                                &candidate,
                                &texts,
                                &hashes,
                                applied,
                                conn_text.as_ref(),
                            )
                            .await?;
                        if breaks.is_empty() {
                            catalog = candidate;
                            catalog_changed = true;
                        } else {
                            persistent.insert(file.clone(), Rejected::new(&file, breaks));
                        }
                    }
                    Err(e) => {
                        persistent.insert(
                            file.clone(),
                            Rejected::message(
                                &file,
                                "unreadable",
                                format!("cannot read {file}: {e}"),
                            ),
                        );
                    }
                }
            }
        }

        // 3. Connections: parsed and resolved like at start; a file that
        // does not parse or resolve is rejected and the old ones stay.
        let mut decls = applied.decls.clone();
        // None: the connections serving now stay.
        let mut resolved: Option<Vec<ResolvedConnection>> = None;
        if let Some(path) = &self.sources.connections {
            let file = path.display().to_string();
            match &conn_text {
                Some(Ok(text)) => match Connections::parse(&file, text, &catalog) {
                    Ok(d) => match resolve_all(&file, &d, &catalog) {
                        Ok(r) => {
                            decls = Some(d);
                            resolved = Some(r);
                        }
                        Err(diag) => {
                            persistent.insert(file.clone(), Rejected::new(&file, vec![diag]));
                        }
                    },
                    Err(diags) => {
                        let errors: Vec<Diagnostic> = diags
                            .into_iter()
                            .filter(|d| d.severity == Severity::Error)
                            .collect();
                        persistent.insert(file.clone(), Rejected::new(&file, errors));
                    }
                },
                Some(Err(e)) => {
                    persistent.insert(
                        file.clone(),
                        Rejected::message(&file, "unreadable", e.clone()),
                    );
                }
                None => {}
            }
        }

        // 4. Validate every recipe file. Files with an active recipe go
        // first, so a new file that reuses an active name is the one
        // reported as the duplicate.
        let current = self.svc.recipes();
        let active_files: HashMap<&str, Arc<ValidRecipe>> = current
            .all()
            .map(|r| (r.file.as_str(), r.clone()))
            .collect();
        let mut ordered: Vec<(String, String)> = texts.clone();
        ordered.sort_by_key(|(f, _)| (!active_files.contains_key(f.as_str()), f.clone()));
        // Validation is CPU work (tens of ms for a large folder): off the
        // threads that answer webhooks.
        let loaded = {
            let (texts, catalog, decls) = (ordered.clone(), catalog.clone(), decls.clone());
            tokio::task::spawn_blocking(move || load_texts(&texts, &catalog, decls.as_ref()))
                .await
                .map_err(|e| format!("validation failed: {e}"))?
        };

        report.warnings = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity != Severity::Error)
            .cloned()
            .collect();
        // `webhook_auth: none` and the like, printed at start like
        // `validate` prints them.
        if let Some(d) = &decls {
            report.warnings.extend(d.warnings.iter().cloned());
        }

        // 5. Plan the new active set, file by file.
        let mut next: Vec<Arc<ValidRecipe>> = Vec::new();
        let mut new_versions: Vec<StoredVersion> = Vec::new();
        let by_file: HashMap<&str, &ValidRecipe> = loaded
            .recipes
            .iter()
            .map(|r| (r.file.as_str(), r))
            .collect();
        let mut errors: BTreeMap<&str, Vec<Diagnostic>> = BTreeMap::new();
        for d in &loaded.diagnostics {
            if d.severity == Severity::Error {
                errors.entry(d.file.as_str()).or_default().push(d.clone());
            }
        }
        let now = Utc::now();
        for (file, text) in &ordered {
            match by_file.get(file.as_str()) {
                Some(valid) => {
                    let same = current
                        .get(&valid.name)
                        .filter(|a| a.version == valid.version && a.file == valid.file);
                    // A new version is recorded; at start, every version is.
                    if same.is_none() || trigger == Trigger::Start {
                        new_versions.push(StoredVersion {
                            recipe: valid.name.clone(),
                            version: valid.version.clone(),
                            file: file.clone(),
                            source: text.clone(),
                            loaded_at: now,
                        });
                    }
                    // Unchanged: the same `Arc`, so nothing about it restarts;
                    // after a catalog change, the one compiled against it.
                    match same.filter(|_| !catalog_changed) {
                        Some(same) => next.push(same),
                        None => next.push(Arc::new((*valid).clone())),
                    }
                }
                None => {
                    let diags = errors.remove(file.as_str()).unwrap_or_default();
                    let rejected = Rejected::new(file, diags);
                    if let Some(old) = active_files.get(file.as_str()) {
                        // The previous version of this file keeps running.
                        applied
                            .recipe_errors
                            .insert(old.name.clone(), rejected.clone());
                        next.push(old.clone());
                    }
                    persistent.insert(file.clone(), rejected);
                }
            }
        }
        // Two files can never both serve one name.
        let mut seen = std::collections::HashSet::new();
        next.retain(|r| seen.insert(r.name.clone()));

        // 6. Diff against what serves now.
        let next_names: HashMap<&str, &Arc<ValidRecipe>> =
            next.iter().map(|r| (r.name.as_str(), r)).collect();
        for r in current.all() {
            match next_names.get(r.name.as_str()) {
                None => report.removed.push(r.name.clone()),
                Some(n) if n.version != r.version || n.file != r.file => {
                    report.changed.push(r.name.clone())
                }
                Some(_) => {}
            }
        }
        for r in &next {
            if current.get(&r.name).is_none() {
                report.added.push(r.name.clone());
            }
        }
        report.added.sort();
        report.changed.sort();
        report.removed.sort();

        // 7. Commit: versions are queued to the store's writer first, so no
        // event naming a new version can commit before it (one writer, in
        // order) without waiting for an fsync here; then connections, then
        // recipes.
        let committed = self
            .svc
            .store()
            .save_versions(&new_versions)
            .await
            .map_err(|e| format!("cannot record the new recipe versions: {e}"))?;
        if catalog_changed {
            report.catalog = true;
            report.connections = self.svc.runtime().set_catalog((*catalog).clone(), resolved);
        } else if let Some(resolved) = resolved {
            report.connections = self.svc.runtime().set_connections(resolved);
        }
        let set = current.succeed(next.clone());
        self.svc.replace_recipes(set);
        if catalog_changed {
            // Poll loops hold their trigger's declaration: start them anew.
            for (_, (_, task)) in self.schedules.lock().expect("schedules lock").drain() {
                task.abort();
            }
        }
        self.reconcile_schedules(&next);

        // 8. Remember what was applied.
        for v in &new_versions {
            applied
                .loaded_at
                .insert((v.recipe.clone(), v.version.clone()), now);
            applied.recipe_errors.remove(&v.recipe);
        }
        let live: std::collections::HashSet<(String, String)> = next
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        applied.loaded_at.retain(|k, _| live.contains(k));
        applied
            .recipe_errors
            .retain(|k, _| next_names.contains_key(k.as_str()));
        applied.files = hashes;
        if catalog_changed {
            applied.catalog_hash = catalog_hash.clone();
        }
        applied.catalog_seen = catalog_hash;
        applied.connections_hash = conn_hash;
        applied.decls = decls;
        applied.rejected = persistent;
        report.rejected = applied.rejected.values().cloned().collect();
        Ok(Some(committed))
    }

    /// What a candidate catalog breaks among what serves now: recipes of
    /// files unchanged since the last reload that no longer validate, and
    /// a connections file that no longer parses or resolves. Each problem
    /// keeps its own file:line:col; a first line says what was rejected.
    async fn catalog_breaks(
        &self,
        candidate: &Arc<Catalog>,
        texts: &[(String, String)],
        hashes: &BTreeMap<String, String>,
        applied: &Applied,
        conn_text: Option<&Result<String, String>>,
    ) -> Result<Vec<Diagnostic>, String> {
        let mut problems = Vec::new();
        let mut decls = applied.decls.clone();
        if let (Some(path), Some(Ok(text))) = (&self.sources.connections, conn_text) {
            let file = path.display().to_string();
            match Connections::parse(&file, text, candidate) {
                Ok(d) => {
                    if let Err(diag) = resolve_all(&file, &d, candidate) {
                        problems.push(diag);
                    }
                    decls = Some(d);
                }
                // Only if the serving catalog takes the file is it the
                // catalog's fault; otherwise step 3 reports the file.
                Err(diags) if Connections::parse(&file, text, &self.svc.catalog()).is_ok() => {
                    problems.extend(diags.into_iter().filter(|d| d.severity == Severity::Error));
                }
                Err(_) => {}
            }
        }
        // The source of every running version: its file when unchanged,
        // else the copy the store keeps (the file may hold a newer edit).
        let current = self.svc.recipes();
        let mut serving: Vec<(String, String)> = Vec::new();
        for r in current.all() {
            let unchanged = applied.files.get(&r.file) == hashes.get(&r.file);
            match texts
                .iter()
                .find(|(f, _)| *f == r.file)
                .filter(|_| unchanged)
            {
                Some(t) => serving.push(t.clone()),
                None => {
                    if let Ok(Some(v)) = self.svc.store().version(&r.name, &r.version).await {
                        serving.push((r.file.clone(), v.source));
                    }
                }
            }
        }
        let loaded = {
            let (catalog, decls) = (candidate.clone(), decls);
            tokio::task::spawn_blocking(move || load_texts(&serving, &catalog, decls.as_ref()))
                .await
                .map_err(|e| format!("validation failed: {e}"))?
        };
        let mut broken: Vec<String> = Vec::new();
        for d in loaded
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
        {
            if let Some(r) = current.all().find(|r| r.file == d.file) {
                if !broken.contains(&r.name) {
                    broken.push(r.name.clone());
                }
            }
            problems.push(d);
        }
        if problems.is_empty() {
            return Ok(problems);
        }
        let dir = self
            .sources
            .catalog
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let what = if broken.is_empty() {
            "the connections file".to_string()
        } else {
            let names: Vec<String> = broken.iter().map(|n| format!("`{n}`")).collect();
            format!(
                "running recipe{} {}",
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            )
        };
        problems.insert(
            0,
            Diagnostic::error(
                &dir,
                crate::yaml::Pos { line: 1, col: 1 },
                "catalog-breaks-recipes",
                format!("connector change rejected: it breaks {what}; the previous catalog and recipes keep serving"),
            ),
        );
        Ok(problems)
    }

    /// Restarts the poll and schedule loops whose recipe changed, starts
    /// new ones and stops removed ones; unchanged loops carry on.
    fn reconcile_schedules(&self, active: &[Arc<ValidRecipe>]) {
        let mut loops = self.schedules.lock().expect("schedules lock");
        let wanted: HashMap<&str, &Arc<ValidRecipe>> = active
            .iter()
            .filter(|r| r.trigger.kind.is_timed())
            .map(|r| (r.name.as_str(), r))
            .collect();
        loops.retain(|name, (version, task)| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|r| r.version == *version);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, r) in wanted {
            if !loops.contains_key(name) {
                let task = self.svc.spawn_schedule(r.clone(), self.stop.clone());
                loops.insert(name.to_string(), (r.version.clone(), task));
            }
        }
    }

    /// Updates the status, the counters and the log after a reload.
    fn record(&self, applied: &Applied, report: &ReloadReport) {
        let m = crate::metrics::global();
        m.reloads
            .get_or_create(&crate::metrics::ReloadLabels {
                result: report.result.as_str().to_string(),
            })
            .inc();
        for (change, n) in [
            ("added", report.added.len()),
            ("changed", report.changed.len()),
            ("removed", report.removed.len()),
            ("rejected", report.rejected.len()),
        ] {
            m.reload_changes
                .get_or_create(&crate::metrics::ChangeLabels {
                    change: change.to_string(),
                })
                .inc_by(n as u64);
        }
        m.reload_last_seconds.set(report.duration_ms / 1000.0);
        if report.result != Outcome::Error {
            m.reload_last_success.set(report.at.timestamp());
        }
        let rejected_files: Vec<&str> = report.rejected.iter().map(|r| r.file.as_str()).collect();
        match report.result {
            Outcome::Ok => tracing::info!(
                trigger = ?report.trigger,
                added = ?report.added,
                changed = ?report.changed,
                removed = ?report.removed,
                connections = ?report.connections,
                catalog = report.catalog,
                ms = report.duration_ms,
                "recipes reloaded"
            ),
            Outcome::Rejected => tracing::warn!(
                trigger = ?report.trigger,
                added = ?report.added,
                changed = ?report.changed,
                removed = ?report.removed,
                connections = ?report.connections,
                rejected = ?rejected_files,
                diagnostics = ?report.rejected.iter().flat_map(|r| r.diagnostics.iter()).collect::<Vec<_>>(),
                ms = report.duration_ms,
                "reload rejected files; their previous versions keep running"
            ),
            Outcome::Error => tracing::error!(
                trigger = ?report.trigger,
                error = report.error.as_deref().unwrap_or(""),
                "reload failed; nothing changed"
            ),
        }
        let set = self.svc.recipes();
        let mut recipes: Vec<RecipeStatus> = set
            .all()
            .map(|r| RecipeStatus {
                name: r.name.clone(),
                version: r.version.clone(),
                file: r.file.clone(),
                loaded_at: applied
                    .loaded_at
                    .get(&(r.name.clone(), r.version.clone()))
                    .copied()
                    .unwrap_or(report.at),
                trigger: r.trigger.kind.label(),
                last_error: applied.recipe_errors.get(&r.name).cloned(),
            })
            .collect();
        recipes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut status = self.status.write().expect("status lock");
        status.recipes = recipes;
        if report.result != Outcome::Error {
            status.rejected = applied.rejected.values().cloned().collect();
        }
        if report.result != Outcome::Ok {
            status.last_error = Some(report.clone());
        }
        status.last_reload = Some(report.clone());
    }
}

/// Resolves every connection, or the first that cannot be read as a
/// diagnostic at its declaration.
fn resolve_all(
    file: &str,
    decls: &Connections,
    catalog: &Catalog,
) -> Result<Vec<ResolvedConnection>, Diagnostic> {
    let mut out = Vec::new();
    for c in decls.by_name.values() {
        match c.resolve(catalog) {
            Ok(r) => out.push(r),
            Err(e) => {
                return Err(Diagnostic::error(
                    file,
                    c.pos,
                    "connection-unresolved",
                    e.to_string(),
                ))
            }
        }
    }
    Ok(out)
}

/// Every recipe file under `root` with its text, sorted by path. Hidden
/// entries (`.git`, Kubernetes' `..data`, editors' dot-temp files) are
/// skipped; symlinks are followed, so a ConfigMap's `x.yaml -> ..data/x.yaml`
/// is read once. A file that disappears while being read is left out.
pub fn read_recipes(root: &Path) -> Result<Vec<(String, String)>, String> {
    let meta = std::fs::metadata(root)
        .map_err(|e| format!("cannot read recipe folder {}: {e}", root.display()))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        walk(root, is_recipe_file, &mut files)
            .map_err(|e| format!("cannot read recipe folder {}: {e}", root.display()))?;
    } else {
        files.push(root.to_path_buf());
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        match crate::safefile::read_text(&f) {
            Ok(t) => out.push((f.display().to_string(), t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", f.display())),
        }
    }
    Ok(out)
}

/// A hash of every file under a folder (names and contents), to notice a
/// changed catalog.
fn tree_hash(dir: &Path) -> Option<String> {
    let mut files = Vec::new();
    fn all(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_skipped_entry(name) || depth > 16 {
                continue;
            }
            if p.is_dir() {
                all(&p, depth + 1, out);
            } else {
                out.push(p);
            }
        }
    }
    all(dir, 0, &mut files);
    files.sort();
    let mut text = String::new();
    for f in files {
        text.push_str(&f.display().to_string());
        text.push('\0');
        text.push_str(&crate::safefile::read_text(&f).unwrap_or_default());
        text.push('\0');
    }
    Some(version_of(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_junk_files_are_not_read() {
        let dir = std::env::temp_dir().join(format!("patchbay-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_data")).unwrap();
        std::fs::create_dir_all(dir.join("team")).unwrap();
        std::fs::write(dir.join("a.yaml"), "a").unwrap();
        std::fs::write(dir.join("team/b.yml"), "b").unwrap();
        std::fs::write(dir.join(".a.yaml.swp"), "x").unwrap();
        std::fs::write(dir.join("a.yaml~"), "x").unwrap();
        std::fs::write(dir.join("..2026_data/c.yaml"), "c").unwrap();
        let got: Vec<String> = read_recipes(&dir)
            .unwrap()
            .into_iter()
            .map(|(f, _)| f.trim_start_matches(&dir.display().to_string()).to_string())
            .collect();
        assert_eq!(got, vec!["/a.yaml", "/team/b.yml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
