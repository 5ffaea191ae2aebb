//! The recipes taking events, and the earlier versions runs still need.
//! A claimed run executes the version it was queued on (bound at ingest),
//! from memory, else compiled again from the source the store kept — so a
//! run finishes on its version even after its file was changed or
//! deleted, or the engine restarted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::diagnostic::Diagnostic;
use crate::engine::Service;
use crate::recipe::load::load_texts;
use crate::recipe::validate::{TriggerKind, ValidRecipe};
use crate::store::versions::StoredVersion;
use crate::store::ClaimedRun;

/// Earlier recipe versions kept in memory for the runs bound to them; past
/// this many, a run's version is compiled again from the store.
const RETAINED_VERSIONS: usize = 256;

/// The recipes currently taking events, by name, and the earlier versions
/// that queued or running runs may still need.
#[derive(Debug, Default)]
pub struct RecipeSet {
    by_name: HashMap<String, Arc<ValidRecipe>>,
    /// Every version seen, by (recipe, version), active ones included.
    versions: std::sync::Mutex<HashMap<(String, String), Arc<ValidRecipe>>>,
}

impl RecipeSet {
    /// A set from valid recipes.
    pub fn new(recipes: Vec<ValidRecipe>) -> RecipeSet {
        RecipeSet::from_arcs(recipes.into_iter().map(Arc::new).collect(), HashMap::new())
    }

    fn from_arcs(
        recipes: Vec<Arc<ValidRecipe>>,
        mut versions: HashMap<(String, String), Arc<ValidRecipe>>,
    ) -> RecipeSet {
        if versions.len() + recipes.len() > RETAINED_VERSIONS {
            versions.clear();
        }
        for r in &recipes {
            versions.insert((r.name.clone(), r.version.clone()), r.clone());
        }
        RecipeSet {
            by_name: recipes.into_iter().map(|r| (r.name.clone(), r)).collect(),
            versions: std::sync::Mutex::new(versions),
        }
    }

    /// The set after a reload: `recipes` take new events; the versions of
    /// this set stay reachable for the runs bound to them.
    pub fn succeed(&self, recipes: Vec<Arc<ValidRecipe>>) -> RecipeSet {
        let versions = self.versions.lock().expect("versions lock").clone();
        RecipeSet::from_arcs(recipes, versions)
    }

    /// A version of a recipe, active or earlier, if still in memory.
    pub fn version(&self, name: &str, version: &str) -> Option<Arc<ValidRecipe>> {
        let versions = self.versions.lock().expect("versions lock");
        versions
            .get(&(name.to_string(), version.to_string()))
            .cloned()
    }

    /// Keeps a version (compiled from the store) for the next runs on it.
    pub fn remember(&self, recipe: Arc<ValidRecipe>) {
        let mut versions = self.versions.lock().expect("versions lock");
        if versions.len() >= RETAINED_VERSIONS {
            versions.retain(|(name, v), _| self.by_name.get(name).is_some_and(|a| a.version == *v));
        }
        versions.insert((recipe.name.clone(), recipe.version.clone()), recipe);
    }

    /// A recipe by name.
    pub fn get(&self, name: &str) -> Option<Arc<ValidRecipe>> {
        self.by_name.get(name).cloned()
    }

    /// Every recipe.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ValidRecipe>> {
        self.by_name.values()
    }

    /// The recipes a webhook event of `op` on `connection` starts.
    pub fn for_webhook(&self, op: &str, connection: &str) -> Vec<Arc<ValidRecipe>> {
        let mut v: Vec<_> = self
            .by_name
            .values()
            .filter(|r| match &r.trigger.kind {
                TriggerKind::Webhook(o) => {
                    o.id() == op
                        && r.trigger
                            .connection
                            .as_deref()
                            .is_none_or(|c| c == connection)
                }
                _ => false,
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

impl Service {
    /// The recipe version a run executes, or `None` when it is known
    /// nowhere (the run becomes a dead letter).
    pub async fn recipe_for_run(&self, run: &ClaimedRun) -> Option<Arc<ValidRecipe>> {
        let set = self.recipes();
        if let Some(r) = set.version(&run.recipe, &run.recipe_version) {
            return Some(r);
        }
        match self.store.version(&run.recipe, &run.recipe_version).await {
            Ok(Some(stored)) => match compile(&stored, &self.catalog()) {
                Ok(r) => {
                    let r = Arc::new(r);
                    set.remember(r.clone());
                    return Some(r);
                }
                Err(diags) => {
                    let first = diags.first().map(Diagnostic::one_line).unwrap_or_default();
                    tracing::error!(run = %run.id, recipe = %run.recipe, version = %run.recipe_version, error = %first, "the stored recipe version no longer validates");
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::error!(run = %run.id, recipe = %run.recipe, error = %e, "cannot read the run's recipe version")
            }
        }
        // A version no engine recorded (runs queued before versions were
        // kept, or a replay onto a folder the engine never loaded): the
        // active version is the best there is.
        let active = set.get(&run.recipe);
        if let Some(a) = &active {
            tracing::warn!(run = %run.id, recipe = %run.recipe, queued_on = %run.recipe_version, running = %a.version, "the run's recipe version is unknown; running the active version");
        }
        active
    }
}

/// Validates a stored version again (without connection checks: the
/// connections it named may have changed since).
pub fn compile(v: &StoredVersion, catalog: &Catalog) -> Result<ValidRecipe, Vec<Diagnostic>> {
    let loaded = load_texts(&[(v.file.clone(), v.source.clone())], catalog, None);
    match loaded.recipes.into_iter().next() {
        Some(r) if r.name == v.recipe && r.version == v.version => Ok(r),
        _ => Err(loaded.diagnostics),
    }
}
