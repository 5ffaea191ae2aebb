//! The durable store: accepted events, runs with per-step checkpoints,
//! dedupe keys, the `store` connector's links, OAuth tokens, poll cursors,
//! rejected deliveries and dead letters. [`Store`] is what the engine needs;
//! [`open`] picks the backend from the URL: [`sqlite::SqliteStore`] (one
//! process, embedded) or [`postgres::PgStore`] (several engines share it).
//! Nothing about a run lives only in memory: claims are leases in the
//! store, so another process can take over a crashed one's work.

pub mod postgres;
mod rows;
pub mod sqlite;
pub mod versions;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use crate::id;
use crate::id::{EventId, RunId};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::connectors::auth::{BoxFut, TokenStore};
use crate::connectors::native::LinkStore;
use crate::interpreter::{RunReport, StepRecord};
use versions::RecipeVersions;

/// The store URL `patchbay run` and the operations commands use by default.
pub const DEFAULT_URL: &str = "sqlite://patchbay.db";

/// A store operation failed. No driver types: the engine acts on the kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, refused, pool closed).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another writer changed the row first (a cursor moved by another
    /// engine, a unique key taken).
    #[error("store conflict: {0}")]
    Conflict(String),
    /// A value in the store does not parse.
    #[error("store: corrupt value in {what}: {detail}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The database answered with another error.
    #[error("store: {0}")]
    Backend(String),
    /// The store URL is not one patchbay knows.
    #[error("store URL `{0}` is not supported: use `sqlite://FILE` (one engine) or `postgres://USER@HOST/DB` (several engines); an in-memory store would lose accepted events")]
    Url(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(d.to_string())
            }
            e => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// The writer of a store is gone (the process is shutting down).
pub(crate) fn closed() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

/// Opens the store at `url`, choosing the backend by its scheme
/// (`sqlite://FILE`, `postgres://…` or `postgresql://…`), migrated.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Url(redact_url(url)))
    }
}

/// A store URL with its password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A run to create with its event.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Run id.
    pub id: RunId,
    /// Recipe name.
    pub recipe: String,
    /// Content hash of the recipe version that will run it.
    pub recipe_version: String,
    /// Runs with the same key run in arrival order.
    pub ordering_key: Option<String>,
}

/// An accepted event and the runs it starts.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event id.
    pub id: EventId,
    /// Connection it came from (empty for schedules).
    pub connection: String,
    /// Trigger operation id.
    pub operation: String,
    /// The coerced payload.
    pub payload: Value,
    /// Seen before within the retention window means: skip.
    pub dedupe_key: Option<String>,
    /// One per matching recipe.
    pub runs: Vec<NewRun>,
}

/// One webhook delivery, accepted or rejected, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Connection in the URL.
    pub connection: String,
    /// Status answered.
    pub status: u16,
    /// `accepted`, `unmatched`, or why it was rejected (no secrets).
    pub outcome: String,
    /// Events in the delivery.
    pub events: u32,
    /// When.
    pub received_at: DateTime<Utc>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default)]
pub struct Ingested {
    /// New events stored.
    pub events: u32,
    /// Events skipped as duplicates.
    pub duplicates: u32,
    /// Runs created.
    pub runs: u32,
    /// Runs claimed in the same transaction (see [`ClaimFor`]), ready to run.
    pub claimed: Vec<ClaimedRun>,
}

/// Asks an ingest to claim the runs it creates, up to `max`, for `owner`:
/// the process that accepted the events runs them without a second trip
/// to the store. Runs whose ordering key has an unfinished run stay queued.
#[derive(Debug, Clone)]
pub struct ClaimFor {
    /// The lease owner (one per process).
    pub owner: String,
    /// Lease length.
    pub lease: Duration,
    /// Most runs to claim.
    pub max: usize,
}

/// A run a worker took.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// Run id.
    pub id: RunId,
    /// Recipe name.
    pub recipe: String,
    /// The version it started on.
    pub recipe_version: String,
    /// The event payload.
    pub payload: Value,
    /// Runs with the same key run in arrival order.
    pub ordering_key: Option<String>,
    /// First start (kept across resumes).
    pub started_at: DateTime<Utc>,
    /// Steps checkpointed before an interruption.
    pub done: Vec<StepRecord>,
}

/// Run states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    /// Done.
    Completed,
    /// Failed for good: a dead letter until replayed.
    Failed,
    /// `trigger.if` was false when it ran.
    Filtered,
    /// Replaced by a replay.
    Replayed,
}

impl RunState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Filtered => "filtered",
            RunState::Replayed => "replayed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<RunState> {
        Some(match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "filtered" => RunState::Filtered,
            "replayed" => RunState::Replayed,
            _ => return None,
        })
    }
}

/// A run as listed by `patchbay runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub id: RunId,
    /// Recipe.
    pub recipe: String,
    /// Recipe version.
    pub recipe_version: String,
    /// State.
    pub status: RunState,
    /// The event.
    pub event_id: EventId,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The failing step, for failed runs.
    pub failed_step: Option<String>,
    /// The final error, for failed runs.
    pub error: Option<Value>,
}

/// Filters of `runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this recipe.
    pub recipe: Option<String>,
    /// Only this state.
    pub status: Option<RunState>,
    /// At most this many, newest first.
    pub limit: u32,
    /// Only runs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only runs whose id, recipe, failed step, error or event payload
    /// contains this text (case-insensitive).
    pub text: Option<String>,
    /// Only runs created before this one (the next page after it).
    pub before: Option<RunId>,
}

impl RunFilter {
    /// The `LIKE` pattern of `text`, its wildcards escaped with `\\`.
    pub fn like(&self) -> Option<String> {
        self.text.as_ref().filter(|t| !t.is_empty()).map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// A run with every step record.
pub type RunDetail = (RunSummary, Vec<StepRecord>);

/// A run's end as every backend stores it: state, step records and
/// error as JSON text.
pub(crate) struct RunEnd {
    pub status: RunState,
    pub records: Vec<String>,
    pub failed_step: Option<String>,
    pub error: Option<String>,
}

impl RunEnd {
    pub(crate) fn of(report: &RunReport) -> RunEnd {
        RunEnd {
            status: match report.status {
                crate::interpreter::RunStatus::Completed => RunState::Completed,
                crate::interpreter::RunStatus::Failed => RunState::Failed,
                crate::interpreter::RunStatus::Filtered => RunState::Filtered,
            },
            records: report
                .steps
                .iter()
                .map(|r| serde_json::to_string(r).expect("records serialize"))
                .collect(),
            failed_step: report.failed_step.clone(),
            error: report
                .error
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("errors serialize")),
        }
    }
}

/// What the engine needs from a store.
pub trait Store: LinkStore + TokenStore + RecipeVersions + Send + Sync {
    /// Stores events and their runs atomically (one transaction per batch
    /// of concurrent ingests), skipping duplicates, and records the delivery.
    fn ingest(
        &self,
        delivery: Delivery,
        events: Vec<NewEvent>,
        claim: Option<ClaimFor>,
    ) -> BoxFut<'_, Result<Ingested, StoreError>>;
    /// Records a rejected delivery.
    fn reject(&self, delivery: Delivery) -> BoxFut<'_, Result<(), StoreError>>;
    /// Takes up to `max` of the oldest queued runs whose ordering key has no
    /// earlier unfinished run. A run whose lease expired (its process died)
    /// is queued again by the store within half a second.
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
        max: usize,
    ) -> BoxFut<'a, Result<Vec<ClaimedRun>, StoreError>>;
    /// Extends the lease of every run `owner` holds: one heartbeat per
    /// process keeps its runs, whether executing or waiting for a worker.
    fn heartbeat<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    /// Queues again every run `owner` holds (graceful shutdown), so the
    /// next start resumes them at once instead of after the lease.
    fn release<'a>(&'a self, owner: &'a str) -> BoxFut<'a, Result<u64, StoreError>>;
    /// Persists finished steps of a run and extends its lease.
    fn checkpoint<'a>(
        &'a self,
        run_id: &'a str,
        records: &'a [StepRecord],
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    /// Ends a run with its report.
    fn finish<'a>(&'a self, report: &'a RunReport) -> BoxFut<'a, Result<(), StoreError>>;
    /// Lists runs.
    fn runs(&self, filter: RunFilter) -> BoxFut<'_, Result<Vec<RunSummary>, StoreError>>;
    /// One run with every step record.
    fn run<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<Option<RunDetail>, StoreError>>;
    /// The payload of an accepted event.
    fn event_payload<'a>(
        &'a self,
        id: &'a EventId,
    ) -> BoxFut<'a, Result<Option<Value>, StoreError>>;
    /// Queues a failed run again (as a new run of the same event); its id.
    fn replay<'a>(
        &'a self,
        id: &'a str,
        recipe_version: &'a str,
    ) -> BoxFut<'a, Result<Option<String>, StoreError>>;
    /// Recent deliveries, newest first.
    fn deliveries(&self, limit: u32) -> BoxFut<'_, Result<Vec<Delivery>, StoreError>>;
    /// Deletes finished runs (and their events) older than `age`, and
    /// expired dedupe keys and links; how many runs went.
    fn prune(&self, age: Duration) -> BoxFut<'_, Result<u64, StoreError>>;
    /// A poll or schedule cursor.
    fn cursor<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<Option<String>, StoreError>>;
    /// Stores events and moves a cursor in one transaction, if the cursor
    /// still holds `expected` (compare-and-set: `None` means unset); when
    /// another engine moved it first, nothing is stored and the answer is
    /// [`StoreError::Conflict`].
    fn ingest_with_cursor<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a str>,
        value: &'a str,
        events: Vec<NewEvent>,
    ) -> BoxFut<'a, Result<Ingested, StoreError>>;
    /// Whether the store answers.
    fn ping(&self) -> BoxFut<'_, bool>;
    /// Ends when another engine may have stored runs (PostgreSQL's
    /// LISTEN/NOTIFY); never, for a store only one process uses.
    fn woken(&self) -> BoxFut<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// Records `owner` as alive for `ttl` and answers how many engines are
    /// (this one included): each engine takes its share of an API's rate
    /// limit. One, for a store only one process uses.
    fn live_engines<'a>(
        &'a self,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<usize, StoreError>> {
        let _ = (owner, ttl);
        Box::pin(async { Ok(1) })
    }
}

/// Ids are stored as text in every backend.
macro_rules! id_as_text {
    ($($id:ty),*) => {$(
        impl<DB: sqlx::Database> sqlx::Type<DB> for $id
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $id
        where
            String: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                self.as_str().to_string().encode_by_ref(buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $id
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<$id>::from(<String as sqlx::Decode<DB>>::decode(value)?))
            }
        }

        impl sqlx::postgres::PgHasArrayType for $id {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl rusqlite::ToSql for $id {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $id {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                String::column_result(value).map(<$id>::from)
            }
        }
    )*};
}

id_as_text!(RunId, EventId);
