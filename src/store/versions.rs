//! Recipe versions kept in the store: the source text of every version the
//! engine has activated, so a run always finishes on the version it was
//! queued on, even after its file changed or was deleted, or the process
//! restarted.

use super::StoreError;
use crate::connectors::auth::BoxFut;
use chrono::{DateTime, Utc};

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
