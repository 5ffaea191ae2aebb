//! The embedded store: one SQLite file in WAL mode, versioned migrations,
//! and group commit — concurrent ingests are written by one task in one
//! `synchronous=FULL` transaction, so durable acceptance costs one fsync per
//! batch rather than per event.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::rows::{now_ms, parse_json, to_time};
use super::versions::{from_rows, Committed, RecipeVersions, StoredVersion};
use super::writer::{self, Job, Prune};
use super::{
    ClaimFor, ClaimedRun, Delivery, Ingested, NewEvent, RunFilter, RunState, RunSummary, Store,
    StoreError,
};
use crate::connectors::auth::{BoxFut, StoredTokens, TokenStore};
use crate::connectors::native::LinkStore;
use crate::interpreter::{RunReport, StepRecord};
use crate::secret::Secret;

/// Schema versions, applied in order once each.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE events (
        id TEXT PRIMARY KEY, connection TEXT NOT NULL, operation TEXT NOT NULL,
        payload TEXT NOT NULL, received_at INTEGER NOT NULL);
     CREATE TABLE runs (
        id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, event_id TEXT NOT NULL REFERENCES events(id),
        recipe TEXT NOT NULL, recipe_version TEXT NOT NULL, ordering_key TEXT,
        status TEXT NOT NULL, lease_owner TEXT, lease_until INTEGER, started_at INTEGER,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, failed_step TEXT, error TEXT);
     CREATE INDEX runs_claim ON runs(status, seq);
     CREATE INDEX runs_ordering ON runs(ordering_key, seq);
     CREATE INDEX runs_recipe ON runs(recipe, seq);
     CREATE TABLE steps (run_id TEXT NOT NULL, idx INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (run_id, idx));
     CREATE TABLE dedupe (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
     CREATE TABLE links (namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, expires_at INTEGER,
        PRIMARY KEY (namespace, key));
     CREATE TABLE tokens (connection TEXT PRIMARY KEY, access_token TEXT NOT NULL, refresh_token TEXT, expires_at INTEGER);
     CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, connection TEXT NOT NULL, status INTEGER NOT NULL,
        outcome TEXT NOT NULL, events INTEGER NOT NULL, received_at INTEGER NOT NULL);",
    // 2: unfinished runs by ordering key, so the ordering checks of claims
    // do not walk a key's finished history.
    // The index over every run's key goes: each index written per run costs
    // pages in every commit.
    // Dedupe keys are random: one B-tree for them (WITHOUT ROWID) rather
    // than a table plus an index.
    "CREATE INDEX runs_open_ordering ON runs(ordering_key, seq) WHERE status IN ('queued', 'running');
     DROP INDEX runs_ordering;
     CREATE TABLE dedupe2 (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO dedupe2 SELECT key, expires_at FROM dedupe;
     DROP TABLE dedupe;
     ALTER TABLE dedupe2 RENAME TO dedupe;",
    // 3: the source of every recipe version an engine activated (hot reload).
    "CREATE TABLE recipe_versions (
        recipe TEXT NOT NULL, version TEXT NOT NULL, file TEXT NOT NULL, source TEXT NOT NULL,
        loaded_at INTEGER NOT NULL, PRIMARY KEY (recipe, version));",
    // 4: fewer B-trees written per event. Every table or index a row lands
    // in costs its pages in each commit, so: events and steps keyed by
    // their primary key alone (`WITHOUT ROWID`: one B-tree, not a table
    // plus an index); a run's `seq` is its rowid (no separate index); the
    // claim index holds open runs only, so finishing a run removes one
    // entry instead of moving it, and failed runs get their own small
    // index for `dead-letters`; deliveries without AUTOINCREMENT (its
    // counter row was one more write per delivery). The event a run
    // belongs to is written in the same transaction as the run, so the
    // foreign key (a lookup per run) goes; `runs_event` lets pruning find
    // whether an old event still has runs (without it, every event pruned
    // scanned the whole runs table).
    "CREATE TABLE events4 (
        id TEXT PRIMARY KEY, connection TEXT NOT NULL, operation TEXT NOT NULL,
        payload TEXT NOT NULL, received_at INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO events4 SELECT id, connection, operation, payload, received_at FROM events;
     CREATE TABLE runs4 (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, event_id TEXT NOT NULL,
        recipe TEXT NOT NULL, recipe_version TEXT NOT NULL, ordering_key TEXT,
        status TEXT NOT NULL, lease_owner TEXT, lease_until INTEGER, started_at INTEGER,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, failed_step TEXT, error TEXT);
     INSERT INTO runs4 (seq, id, event_id, recipe, recipe_version, ordering_key, status, lease_owner,
        lease_until, started_at, created_at, updated_at, failed_step, error)
        SELECT seq, id, event_id, recipe, recipe_version, ordering_key, status, lease_owner,
        lease_until, started_at, created_at, updated_at, failed_step, error FROM runs;
     DROP TABLE runs;
     DROP TABLE events;
     ALTER TABLE events4 RENAME TO events;
     ALTER TABLE runs4 RENAME TO runs;
     CREATE INDEX runs_open ON runs(status, seq) WHERE status IN ('queued', 'running');
     CREATE INDEX runs_open_ordering ON runs(ordering_key, seq) WHERE status IN ('queued', 'running');
     CREATE INDEX runs_failed ON runs(seq) WHERE status = 'failed';
     CREATE INDEX runs_recipe ON runs(recipe, seq);
     CREATE INDEX runs_event ON runs(event_id);
     CREATE TABLE steps4 (run_id TEXT NOT NULL, idx INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)) WITHOUT ROWID;
     INSERT INTO steps4 SELECT run_id, idx, record FROM steps;
     DROP TABLE steps;
     ALTER TABLE steps4 RENAME TO steps;
     CREATE TABLE deliveries4 (id INTEGER PRIMARY KEY, connection TEXT NOT NULL, status INTEGER NOT NULL,
        outcome TEXT NOT NULL, events INTEGER NOT NULL, received_at INTEGER NOT NULL);
     INSERT INTO deliveries4 SELECT id, connection, status, outcome, events, received_at FROM deliveries;
     DROP TABLE deliveries;
     ALTER TABLE deliveries4 RENAME TO deliveries;",
];

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

impl SqliteStore {
    /// Opens (creating if needed) `sqlite://FILE` and migrates it.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        // An in-memory database would lose every accepted event.
        if !url.starts_with("sqlite:") || url.contains(":memory:") {
            return Err(StoreError::Url(url.to_string()));
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Created owner-only: it holds payloads and tokens. SQLite gives
        // the -wal and -shm files the database file's mode.
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(opts.get_filename());
        }
        // Reads (operations commands, links, tokens) use a small pool with
        // synchronous=NORMAL; the hot-path writes go through the writer
        // thread's own connection with FULL (store/writer.rs).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone().synchronous(SqliteSynchronous::Normal))
            .await?;
        migrate(&pool).await?;
        let tx = writer::start(opts.get_filename())?;
        Ok(SqliteStore { pool, writer: tx })
    }

    /// The read pool.
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Queues recipe versions for the writer's next batch; the returned
    /// future ends with their commit.
    pub(super) async fn queue_versions(
        &self,
        versions: Vec<StoredVersion>,
    ) -> Result<BoxFut<'static, Result<(), StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Versions { versions, reply }).await?;
        Ok(Box::pin(
            async move { rx.await.unwrap_or(Err(super::closed())) },
        ))
    }

    async fn submit(
        &self,
        delivery: Option<Delivery>,
        events: Vec<NewEvent>,
        cursor: Option<writer::Cursor>,
        claim: Option<ClaimFor>,
    ) -> Result<Ingested, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ingest {
            delivery,
            events,
            cursor,
            claim,
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(super::closed()))
    }

    async fn leases(&self, owner: &str, lease: Option<Duration>) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Leases {
            owner: owner.to_string(),
            lease,
            reply,
        })
        .await?;
        rx.await.unwrap_or(Err(super::closed()))
    }

    /// Has the writer delete chunks of `what` until one comes back short;
    /// how many rows went in all.
    async fn prune_chunks(&self, what: Prune) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Prune {
                what: what.clone(),
                reply,
            })
            .await?;
            let n = rx.await.unwrap_or(Err(super::closed()))?;
            total += n;
            if n < writer::PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer.send(job).await.map_err(|_| super::closed())
    }

    async fn unit(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        self.send(job).await?;
        rx.await.unwrap_or(Err(super::closed()))
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(pool)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(pool)
        .await?
        .try_get("v")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

fn summary(row: &sqlx::sqlite::SqliteRow) -> Result<RunSummary, StoreError> {
    let status: String = row.try_get("status")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(RunSummary {
        id: row.try_get("id")?,
        recipe: row.try_get("recipe")?,
        recipe_version: row.try_get("recipe_version")?,
        status: RunState::parse(&status).ok_or(StoreError::Corrupt {
            what: "runs.status",
            detail: status.clone(),
        })?,
        event_id: row.try_get("event_id")?,
        created_at: to_time(row.try_get("created_at")?),
        updated_at: to_time(row.try_get("updated_at")?),
        failed_step: row.try_get("failed_step")?,
        error: error.map(|e| parse_json("runs.error", &e)).transpose()?,
    })
}

/// The columns of a [`RunSummary`].
macro_rules! run_columns {
    () => {
        "id, recipe, recipe_version, status, event_id, created_at, updated_at, failed_step, error"
    };
}

impl Store for SqliteStore {
    fn ingest(
        &self,
        delivery: Delivery,
        events: Vec<NewEvent>,
        claim: Option<ClaimFor>,
    ) -> BoxFut<'_, Result<Ingested, StoreError>> {
        Box::pin(self.submit(Some(delivery), events, None, claim))
    }

    fn reject(&self, delivery: Delivery) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.submit(Some(delivery), Vec::new(), None, None)
                .await
                .map(|_| ())
        })
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        lease: Duration,
        max: usize,
    ) -> BoxFut<'a, Result<Vec<ClaimedRun>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Claim {
                worker: worker.to_string(),
                lease,
                max,
                reply,
            })
            .await?;
            rx.await.unwrap_or(Err(super::closed()))
        })
    }

    fn heartbeat<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move { self.leases(owner, Some(lease)).await.map(|_| ()) })
    }

    fn release<'a>(&'a self, owner: &'a str) -> BoxFut<'a, Result<u64, StoreError>> {
        Box::pin(self.leases(owner, None))
    }

    fn checkpoint<'a>(
        &'a self,
        run_id: &'a str,
        records: &'a [StepRecord],
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let records = records
                .iter()
                .map(|r| serde_json::to_string(r).expect("records serialize"))
                .collect();
            self.unit(
                Job::Checkpoint {
                    run_id: run_id.to_string(),
                    records,
                    lease,
                    reply,
                },
                rx,
            )
            .await
        })
    }

    fn finish<'a>(&'a self, report: &'a RunReport) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let end = super::RunEnd::of(report);
            let (reply, rx) = oneshot::channel();
            let job = Job::Finish {
                run_id: report.run_id.to_string(),
                records: end.records,
                status: end.status,
                failed_step: end.failed_step,
                error: end.error,
                reply,
            };
            self.unit(job, rx).await
        })
    }

    fn runs(&self, filter: RunFilter) -> BoxFut<'_, Result<Vec<RunSummary>, StoreError>> {
        Box::pin(async move {
            // The status is written into the query (it is one of a fixed
            // set): SQLite picks a partial index (`runs_failed` for dead
            // letters, `runs_open`) only for a condition it can see.
            let status = match filter.status {
                None => String::new(),
                Some(s @ (RunState::Queued | RunState::Running)) => format!(
                    " AND status IN ('queued', 'running') AND status = '{}'",
                    s.as_str()
                ),
                Some(s) => format!(" AND status = '{}'", s.as_str()),
            };
            // A page starts below its `before` run: a rowid range, so a
            // deep page costs no more than the first.
            let before: i64 = match &filter.before {
                Some(id) => sqlx::query_scalar("SELECT seq FROM runs WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .unwrap_or(0),
                None => i64::MAX,
            };
            let like = filter.like();
            let text = if like.is_some() {
                " AND (id LIKE ?6 ESCAPE '\\' OR recipe LIKE ?6 ESCAPE '\\' OR failed_step LIKE ?6 ESCAPE '\\'
                   OR error LIKE ?6 ESCAPE '\\' OR event_id IN (SELECT id FROM events WHERE payload LIKE ?6 ESCAPE '\\'))"
            } else {
                ""
            };
            let sql = format!(
                "SELECT {} FROM runs WHERE seq < ?3 AND (?1 IS NULL OR recipe = ?1){status}
                   AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at < ?5){text}
                 ORDER BY seq DESC LIMIT ?2",
                run_columns!(),
            );
            // Safe: `status` comes from the fixed names of `RunState`,
            // `text` is a fixed string.
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(filter.recipe)
                .bind(if filter.limit == 0 { 100 } else { filter.limit } as i64)
                .bind(before)
                .bind(filter.since.map(|t| t.timestamp_millis()))
                .bind(filter.until.map(|t| t.timestamp_millis()))
                .bind(like)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(summary).collect()
        })
    }

    fn run<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFut<'a, Result<Option<(RunSummary, Vec<StepRecord>)>, StoreError>> {
        Box::pin(async move {
            let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?");
            let Some(row) = sqlx::query(sql).bind(id).fetch_optional(&self.pool).await? else {
                return Ok(None);
            };
            let steps = sqlx::query("SELECT record FROM steps WHERE run_id = ? ORDER BY idx")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
            let mut records = Vec::new();
            for s in steps {
                let text: String = s.try_get("record")?;
                records.push(
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        what: "steps.record",
                        detail: e.to_string(),
                    })?,
                );
            }
            Ok(Some((summary(&row)?, records)))
        })
    }

    fn event_payload<'a>(
        &'a self,
        id: &'a crate::id::EventId,
    ) -> BoxFut<'a, Result<Option<Value>, StoreError>> {
        Box::pin(async move {
            let text: Option<String> =
                sqlx::query_scalar("SELECT payload FROM events WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            text.map(|t| parse_json("events.payload", &t)).transpose()
        })
    }

    fn replay<'a>(
        &'a self,
        id: &'a str,
        recipe_version: &'a str,
    ) -> BoxFut<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let row = sqlx::query("SELECT event_id, recipe, ordering_key FROM runs WHERE id = ? AND status = 'failed'")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let new_id = crate::id::new_id();
            let now = now_ms();
            let event_id: String = row.try_get("event_id")?;
            let recipe: String = row.try_get("recipe")?;
            let ordering_key: Option<String> = row.try_get("ordering_key")?;
            sqlx::query("INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)")
                .bind(&new_id)
                .bind(event_id)
                .bind(recipe)
                .bind(recipe_version)
                .bind(ordering_key)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE runs SET status = 'replayed', updated_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(new_id))
        })
    }

    fn deliveries(&self, limit: u32) -> BoxFut<'_, Result<Vec<Delivery>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT connection, status, outcome, events, received_at FROM deliveries ORDER BY id DESC LIMIT ?")
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Delivery {
                        connection: r.try_get("connection")?,
                        status: r.try_get::<i64, _>("status")? as u16,
                        outcome: r.try_get("outcome")?,
                        events: r.try_get::<i64, _>("events")? as u32,
                        received_at: to_time(r.try_get("received_at")?),
                    })
                })
                .collect()
        })
    }

    fn prune(&self, age: Duration) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let cutoff = now - age.as_millis() as i64;
            let runs = Prune::Runs {
                cutoff_id: super::id::id_prefix(cutoff),
                cutoff,
            };
            let pruned = self.prune_chunks(runs).await?;
            self.prune_chunks(Prune::Deliveries { cutoff }).await?;
            self.prune_chunks(Prune::Dedupe { now }).await?;
            self.prune_chunks(Prune::Links { now }).await?;
            Ok(pruned)
        })
    }

    fn cursor<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT value FROM cursors WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|r| r.try_get("value")).transpose()?)
        })
    }

    fn ingest_with_cursor<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a str>,
        value: &'a str,
        events: Vec<NewEvent>,
    ) -> BoxFut<'a, Result<Ingested, StoreError>> {
        Box::pin(self.submit(
            None,
            events,
            Some((
                name.to_string(),
                expected.map(str::to_string),
                value.to_string(),
            )),
            None,
        ))
    }

    fn ping(&self) -> BoxFut<'_, bool> {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&self.pool).await.is_ok() })
    }
}

impl LinkStore for SqliteStore {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Value,
        ttl: Option<Duration>,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let expires_at = ttl.map(|t| now_ms() + t.as_millis() as i64);
            self.send(Job::Link {
                namespace: namespace.to_string(),
                key: key.to_string(),
                value: Some((value.to_string(), expires_at)),
                reply,
            })
            .await
            .map_err(|e| e.to_string())?;
            rx.await
                .unwrap_or(Err(super::closed()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<Value>, String>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT value FROM links WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)")
                .bind(namespace)
                .bind(key)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let text: String = r.try_get("value").map_err(|e| e.to_string())?;
                    serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
            }
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFut<'a, Result<bool, String>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Link {
                namespace: namespace.to_string(),
                key: key.to_string(),
                value: None,
                reply,
            })
            .await
            .map_err(|e| e.to_string())?;
            rx.await
                .unwrap_or(Err(super::closed()))
                .map(|n| n > 0)
                .map_err(|e| e.to_string())
        })
    }
}

impl TokenStore for SqliteStore {
    fn load<'a>(&'a self, connection: &'a str) -> BoxFut<'a, Option<StoredTokens>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT access_token, refresh_token, expires_at FROM tokens WHERE connection = ?",
            )
            .bind(connection)
            .fetch_optional(&self.pool)
            .await
            .ok()??;
            Some(StoredTokens {
                access_token: Secret::new(row.try_get::<String, _>("access_token").ok()?),
                refresh_token: row
                    .try_get::<Option<String>, _>("refresh_token")
                    .ok()?
                    .map(Secret::new),
                expires_at: row.try_get("expires_at").ok()?,
            })
        })
    }

    fn save<'a>(&'a self, connection: &'a str, tokens: StoredTokens) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let job = Job::Tokens {
                connection: connection.to_string(),
                tokens,
                reply,
            };
            let r = self.unit(job, rx).await;
            if let Err(e) = r {
                tracing::error!(connection, error = %e, "could not save refreshed tokens");
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpreter::RunStatus;
    use crate::store::{NewRun, RunFilter};
    use serde_json::json;

    fn event(id: &str, key: Option<&str>, ordering: Option<&str>) -> NewEvent {
        NewEvent {
            id: id.into(),
            connection: "sp".into(),
            operation: "sendpulse.subscriber.added".into(),
            payload: json!({"email": id}),
            dedupe_key: key.map(str::to_string),
            runs: vec![NewRun {
                id: format!("run-{id}").into(),
                recipe: "r".into(),
                recipe_version: "v1".into(),
                ordering_key: ordering.map(str::to_string),
            }],
        }
    }

    /// A store in a fresh file under the temp directory.
    async fn temp_store() -> SqliteStore {
        let path = std::env::temp_dir().join(format!("patchbay-store-{}.db", crate::id::new_id()));
        SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }

    async fn claim1(s: &SqliteStore, worker: &str, lease: Duration) -> Option<ClaimedRun> {
        s.claim(worker, lease, 1).await.unwrap().pop()
    }

    fn delivery() -> Delivery {
        Delivery {
            connection: "sp".into(),
            status: 202,
            outcome: "accepted".into(),
            events: 1,
            received_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn duplicates_are_skipped_and_runs_are_claimed_in_order() {
        let s = temp_store().await;
        let a = s
            .ingest(
                delivery(),
                vec![
                    event("a", Some("k1"), Some("task-1")),
                    event("b", Some("k2"), Some("task-1")),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!((a.events, a.duplicates, a.runs), (2, 0, 2));
        let b = s
            .ingest(delivery(), vec![event("a2", Some("k1"), None)], None)
            .await
            .unwrap();
        assert_eq!(b.duplicates, 1);
        let first = claim1(&s, "w1", Duration::from_secs(30)).await.unwrap();
        assert_eq!(first.id, "run-a");
        // Same ordering key: the second waits for the first.
        assert!(claim1(&s, "w2", Duration::from_secs(30)).await.is_none());
        let report = RunReport {
            run_id: "run-a".into(),
            recipe: "r".into(),
            status: RunStatus::Completed,
            steps: vec![],
            failed_step: None,
            error: None,
        };
        s.finish(&report).await.unwrap();
        assert_eq!(
            claim1(&s, "w2", Duration::from_secs(30)).await.unwrap().id,
            "run-b"
        );
    }

    #[tokio::test]
    async fn an_ingest_claims_its_runs_except_those_waiting_on_their_ordering_key() {
        let s = temp_store().await;
        let me = ClaimFor {
            owner: "node-a".into(),
            lease: Duration::from_secs(30),
            max: 2,
        };
        let a = s
            .ingest(
                delivery(),
                vec![
                    event("a", None, Some("task-1")),
                    event("b", None, Some("task-1")),
                    event("c", None, None),
                    event("d", None, None),
                ],
                Some(me),
            )
            .await
            .unwrap();
        // "b" waits for "a" (same key); "d" is over the budget of two.
        let ids: Vec<&str> = a.claimed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["run-a", "run-c"]);
        assert_eq!(a.claimed[0].payload, json!({"email": "a"}));
        assert_eq!(a.runs, 4);
        // Another claimer gets "d" only: "a" and "c" are leased, "b" waits.
        let other = s
            .claim("node-b", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].id, "run-d");
        // A graceful stop gives node-a's runs back.
        assert_eq!(s.release("node-a").await.unwrap(), 2);
        let again = s
            .claim("node-b", Duration::from_secs(30), 10)
            .await
            .unwrap();
        let ids: Vec<&str> = again.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["run-a", "run-c"]);
    }

    #[tokio::test]
    async fn a_heartbeat_keeps_every_lease_of_its_owner() {
        let s = temp_store().await;
        s.ingest(delivery(), vec![event("a", None, None)], None)
            .await
            .unwrap();
        let c = claim1(&s, "node-a", Duration::from_millis(1))
            .await
            .unwrap();
        s.heartbeat("node-a", Duration::from_secs(30))
            .await
            .unwrap();
        // Past the writer's next reap: without the heartbeat, node-b would
        // get the run.
        tokio::time::sleep(Duration::from_millis(writer::REAP_EVERY_MS as u64 + 50)).await;
        assert!(claim1(&s, "node-b", Duration::from_secs(30))
            .await
            .is_none());
        let _ = c;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_its_checkpoints() {
        let s = temp_store().await;
        s.ingest(delivery(), vec![event("a", None, None)], None)
            .await
            .unwrap();
        let c = claim1(&s, "w1", Duration::from_millis(1)).await.unwrap();
        let rec: StepRecord = serde_json::from_value(json!({"id": "s1", "action": "store.put", "status": "completed", "input": {}, "output": 1,
            "error": null, "attempts": 1, "duration_ms": 1, "rescued_by": null, "fallback_of": null})).unwrap();
        s.checkpoint(&c.id, std::slice::from_ref(&rec), Duration::from_millis(1))
            .await
            .unwrap();
        // The writer queues expired runs again at its next reap.
        tokio::time::sleep(Duration::from_millis(writer::REAP_EVERY_MS as u64 + 50)).await;
        let again = claim1(&s, "w2", Duration::from_secs(30)).await.unwrap();
        assert_eq!(again.id, c.id);
        assert_eq!(again.done, vec![rec]);
        assert_eq!(again.started_at, c.started_at);
    }

    #[tokio::test]
    async fn failed_runs_are_dead_letters_until_replayed() {
        let s = temp_store().await;
        s.ingest(delivery(), vec![event("a", None, None)], None)
            .await
            .unwrap();
        let c = claim1(&s, "w", Duration::from_secs(30)).await.unwrap();
        let report = RunReport {
            run_id: c.id.clone(),
            recipe: "r".into(),
            status: RunStatus::Failed,
            steps: vec![],
            failed_step: Some("contact".into()),
            error: Some(crate::connectors::StepError::new(
                crate::catalog::ErrorKind::BadRequest,
                "nope",
            )),
        };
        s.finish(&report).await.unwrap();
        let dead = s
            .runs(RunFilter {
                status: Some(RunState::Failed),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].error.as_ref().unwrap()["message"], "nope");
        let new_id = s.replay(&c.id, "v2").await.unwrap().unwrap();
        let again = claim1(&s, "w", Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            (again.id.as_str(), again.recipe_version.as_str()),
            (new_id.as_str(), "v2")
        );
        assert_eq!(again.payload, json!({"email": "a"}));
    }

    #[tokio::test]
    async fn links_and_tokens_persist() {
        let s = temp_store().await;
        s.put("ns", "k", json!({"id": 1}), None).await.unwrap();
        assert_eq!(s.get("ns", "k").await.unwrap(), Some(json!({"id": 1})));
        assert!(s.delete("ns", "k").await.unwrap());
        assert_eq!(s.get("ns", "k").await.unwrap(), None);
        s.save(
            "c",
            StoredTokens {
                access_token: Secret::new("a"),
                refresh_token: Some(Secret::new("r")),
                expires_at: Some(5),
            },
        )
        .await;
        assert_eq!(
            s.load("c").await.unwrap().refresh_token.unwrap().expose(),
            "r"
        );
    }

    fn ended(run_id: &str, status: RunStatus) -> RunReport {
        RunReport {
            run_id: run_id.into(),
            recipe: "r".into(),
            status,
            steps: vec![],
            failed_step: None,
            error: None,
        }
    }

    async fn count(s: &SqliteStore, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap()
    }

    #[tokio::test]
    async fn pruning_removes_old_finished_runs_with_their_events_and_keeps_dead_letters_and_open_runs(
    ) {
        let s = temp_store().await;
        // Real (time-ordered) ids: pruning walks the id range.
        let evs: Vec<NewEvent> = (0..3)
            .map(|_| {
                let mut e = event(&crate::id::new_id(), None, None);
                e.runs[0].id = crate::id::RunId::new();
                e
            })
            .collect();
        let ids: Vec<crate::id::RunId> = evs.iter().map(|e| e.runs[0].id.clone()).collect();
        s.ingest(delivery(), evs, None).await.unwrap();
        let lease = Duration::from_secs(30);
        let done = claim1(&s, "w", lease).await.unwrap();
        let failed = claim1(&s, "w", lease).await.unwrap();
        assert_eq!((&done.id, &failed.id), (&ids[0], &ids[1]));
        let mut report = ended(&done.id, RunStatus::Completed);
        report.steps = vec![crate::interpreter::StepRecord {
            id: "s".into(),
            action: "store.put".into(),
            status: crate::interpreter::StepStatus::Completed,
            input: json!({}),
            output: json!({}),
            error: None,
            attempts: 1,
            duration_ms: 0,
            rescued_by: None,
            fallback_of: None,
        }];
        s.finish(&report).await.unwrap();
        s.finish(&ended(&failed.id, RunStatus::Failed))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;

        assert_eq!(s.prune(Duration::ZERO).await.unwrap(), 1);
        assert!(s.run(&ids[0]).await.unwrap().is_none());
        assert_eq!(count(&s, "SELECT COUNT(*) FROM steps").await, 0);
        // The completed run's event went; the dead letter's and the queued
        // run's stay.
        assert_eq!(count(&s, "SELECT COUNT(*) FROM events").await, 2);
        assert_eq!(
            s.run(&ids[1]).await.unwrap().unwrap().0.status,
            RunState::Failed
        );
        assert_eq!(
            s.run(&ids[2]).await.unwrap().unwrap().0.status,
            RunState::Queued
        );
        // Nothing finished is younger than an hour: nothing more goes.
        assert_eq!(s.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn pruning_removes_old_deliveries_and_expired_dedupe_keys_and_links_only() {
        let s = temp_store().await;
        let old = Delivery {
            received_at: Utc::now() - chrono::Duration::hours(2),
            ..delivery()
        };
        s.reject(old).await.unwrap();
        s.reject(delivery()).await.unwrap();
        let now = now_ms();
        sqlx::query("INSERT INTO dedupe (key, expires_at) VALUES ('gone', ?1), ('kept', ?2)")
            .bind(now - 1)
            .bind(now + 60_000)
            .execute(s.pool())
            .await
            .unwrap();
        s.put("ns", "expired", json!(1), Some(Duration::ZERO))
            .await
            .unwrap();
        s.put("ns", "forever", json!(2), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;

        s.prune(Duration::from_secs(3600)).await.unwrap();
        let young = s.deliveries(10).await.unwrap();
        assert_eq!(young.len(), 1);
        assert!(young[0].received_at > Utc::now() - chrono::Duration::minutes(1));
        assert_eq!(
            count(&s, "SELECT COUNT(*) FROM dedupe WHERE key = 'kept'").await,
            1
        );
        assert_eq!(count(&s, "SELECT COUNT(*) FROM dedupe").await, 1);
        // (`get` hides expired links; pruning removes their rows.)
        assert_eq!(count(&s, "SELECT COUNT(*) FROM links").await, 1);
        assert_eq!(s.get("ns", "forever").await.unwrap(), Some(json!(2)));
    }

    #[tokio::test]
    async fn a_batch_claim_takes_the_oldest_runs_in_order_and_one_run_per_ordering_key() {
        let s = temp_store().await;
        s.ingest(
            delivery(),
            vec![
                event("a", None, Some("task-1")),
                event("b", None, Some("task-1")),
                event("c", None, None),
                event("d", None, Some("task-2")),
            ],
            None,
        )
        .await
        .unwrap();
        let lease = Duration::from_secs(30);
        let ids = |runs: Vec<ClaimedRun>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.claim("w", lease, 10).await.unwrap()),
            ["run-a", "run-c", "run-d"]
        );
        // `b` waits for `a`, its predecessor on task-1.
        assert!(s.claim("w", lease, 10).await.unwrap().is_empty());
        s.finish(&ended("run-a", RunStatus::Completed))
            .await
            .unwrap();
        assert_eq!(ids(s.claim("w", lease, 10).await.unwrap()), ["run-b"]);
    }

    #[tokio::test]
    async fn pruning_goes_through_more_runs_than_one_chunk() {
        let s = temp_store().await;
        let n = writer::PRUNE_CHUNK as usize + 100;
        let evs: Vec<NewEvent> = (0..n)
            .map(|_| {
                let mut e = event(&crate::id::new_id(), None, None);
                e.runs[0].id = crate::id::RunId::new();
                e
            })
            .collect();
        s.ingest(delivery(), evs, None).await.unwrap();
        let runs = s.claim("w", Duration::from_secs(30), n).await.unwrap();
        assert_eq!(runs.len(), n);
        let reports: Vec<RunReport> = runs
            .iter()
            .map(|r| ended(&r.id, RunStatus::Completed))
            .collect();
        futures_util::future::join_all(reports.iter().map(|r| s.finish(r))).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.prune(Duration::ZERO).await.unwrap(), n as u64);
        assert_eq!(count(&s, "SELECT COUNT(*) FROM runs").await, 0);
        assert_eq!(count(&s, "SELECT COUNT(*) FROM events").await, 0);
        assert_eq!(count(&s, "SELECT COUNT(*) FROM deliveries").await, 0);
    }

    #[tokio::test]
    async fn a_store_of_schema_3_is_migrated_with_its_runs_and_keeps_their_order() {
        let path = std::env::temp_dir().join(format!("patchbay-store-{}.db", crate::id::new_id()));
        let url = format!("sqlite://{}", path.display());
        {
            // The schema as version 3 left it, with one queued run.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::from_str(&url)
                        .unwrap()
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            sqlx::query("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                .execute(&pool)
                .await
                .unwrap();
            for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
                for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(sqlx::AssertSqlSafe(stmt))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                    .bind(i as i64 + 1)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            sqlx::query(
                "INSERT INTO events VALUES ('e-old', 'sp', 'op', '{\"email\":\"old\"}', 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO runs (id, seq, event_id, recipe, recipe_version, status, created_at, updated_at) VALUES ('run-old', 7, 'e-old', 'r', 'v1', 'queued', 1, 1)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO runs (id, seq, event_id, recipe, recipe_version, status, created_at, updated_at) VALUES ('run-done', 6, 'e-old', 'r', 'v1', 'completed', 1, 1)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO steps VALUES ('run-done', 0, '{}')")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let s = SqliteStore::open(&url).await.unwrap();
        assert_eq!(
            count(&s, "SELECT MAX(version) FROM schema_version").await,
            4
        );
        assert_eq!(count(&s, "SELECT COUNT(*) FROM steps").await, 1);
        s.ingest(delivery(), vec![event("new", None, None)], None)
            .await
            .unwrap();
        // The old run keeps its place ahead of the new one.
        let lease = Duration::from_secs(30);
        let first = claim1(&s, "w", lease).await.unwrap();
        assert_eq!(first.id, "run-old");
        assert_eq!(first.payload, json!({"email": "old"}));
        assert_eq!(claim1(&s, "w", lease).await.unwrap().id, "run-new");
        assert_eq!(
            count(&s, "SELECT seq FROM runs WHERE id = 'run-new'").await,
            8
        );
    }
}
