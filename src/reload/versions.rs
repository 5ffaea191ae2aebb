//! Which recipe version a claimed run executes: the one it was queued on
//! (bound at ingest), from memory, else compiled again from the source the
//! store kept — so a run finishes on its version even after its file was
//! changed or deleted, or the engine restarted.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::diagnostic::Diagnostic;
use crate::recipe::load::load_texts;
use crate::recipe::validate::ValidRecipe;
use crate::service::Service;
use crate::store::versions::StoredVersion;
use crate::store::ClaimedRun;

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
