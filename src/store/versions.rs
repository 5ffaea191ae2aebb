//! Recipe versions kept in the store: the source text of every version the
//! engine has activated, so a run always finishes on the version it was
//! queued on, even after its file changed or was deleted, or the process
//! restarted.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::StoreError;
use crate::connectors::auth::BoxFut;

/// One stored recipe version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Recipe name.
    pub recipe: String,
    /// Content hash (`version_of` of the source).
    pub version: String,
    /// The file it was loaded from.
    pub file: String,
    /// The file's text.
    pub source: String,
    /// When an engine first activated it.
    pub loaded_at: DateTime<Utc>,
}

/// The commit of queued versions, awaited separately.
pub type Committed = BoxFut<'static, Result<(), StoreError>>;

/// Where recipe versions are kept.
pub trait RecipeVersions: Send + Sync {
    /// Queues versions to be recorded (already known ones are left as they
    /// are) ahead of every write queued after this returns — so no event
    /// naming one can commit before it; the returned future ends with
    /// their commit.
    fn save_versions<'a>(
        &'a self,
        versions: &'a [StoredVersion],
    ) -> BoxFut<'a, Result<Committed, StoreError>>;
    /// One version of a recipe, if it was ever recorded.
    fn version<'a>(
        &'a self,
        recipe: &'a str,
        version: &'a str,
    ) -> BoxFut<'a, Result<Option<StoredVersion>, StoreError>>;
    /// Every version of a recipe ever activated, newest first.
    fn history<'a>(&'a self, recipe: &'a str)
        -> BoxFut<'a, Result<Vec<StoredVersion>, StoreError>>;
}

impl RecipeVersions for SqliteStore {
    fn save_versions<'a>(
        &'a self,
        versions: &'a [StoredVersion],
    ) -> BoxFut<'a, Result<Committed, StoreError>> {
        Box::pin(async move {
            if versions.is_empty() {
                return Ok(Box::pin(async { Ok(()) }) as Committed);
            }
            self.queue_versions(versions.to_vec()).await
        })
    }

    fn version<'a>(
        &'a self,
        recipe: &'a str,
        version: &'a str,
    ) -> BoxFut<'a, Result<Option<StoredVersion>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT file, source, loaded_at FROM recipe_versions WHERE recipe = ? AND version = ?")
                .bind(recipe)
                .bind(version)
                .fetch_optional(self.pool())
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(StoredVersion {
                recipe: recipe.to_string(),
                version: version.to_string(),
                file: row.try_get("file")?,
                source: row.try_get("source")?,
                loaded_at: DateTime::<Utc>::from_timestamp_millis(row.try_get("loaded_at")?)
                    .unwrap_or_default(),
            }))
        })
    }

    fn history<'a>(
        &'a self,
        recipe: &'a str,
    ) -> BoxFut<'a, Result<Vec<StoredVersion>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query_as("SELECT version, file, source, loaded_at FROM recipe_versions WHERE recipe = ? ORDER BY loaded_at DESC")
                .bind(recipe)
                .fetch_all(self.pool())
                .await?;
            Ok(from_rows(recipe, rows))
        })
    }
}

/// `(version, file, source, loaded_at)` rows as versions of `recipe`.
pub(super) fn from_rows(
    recipe: &str,
    rows: Vec<(String, String, String, i64)>,
) -> Vec<StoredVersion> {
    rows.into_iter()
        .map(|(version, file, source, at)| StoredVersion {
            recipe: recipe.to_string(),
            version,
            file,
            source,
            loaded_at: DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default(),
        })
        .collect()
}

/// Inserts versions in the writer's transaction; known ones are kept.
pub(super) fn insert(
    c: &rusqlite::Connection,
    versions: &[StoredVersion],
) -> Result<(), StoreError> {
    for v in versions {
        c.prepare_cached("INSERT INTO recipe_versions (recipe, version, file, source, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(recipe, version) DO NOTHING")?
            .execute(rusqlite::params![v.recipe, v.version, v.file, v.source, v.loaded_at.timestamp_millis()])?;
    }
    Ok(())
}
