//! The embedded store: one SQLite file in WAL mode, versioned migrations,
//! and group commit — concurrent ingests are written by one task in one
//! `synchronous=FULL` transaction, so durable acceptance costs one fsync per
//! batch rather than per event.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    ClaimedRun, Delivery, Ingested, NewEvent, RunFilter, RunState, RunSummary, Store, StoreError,
};
use crate::connectors::auth::{BoxFut, StoredTokens, TokenStore};
use crate::connectors::native::LinkStore;
use crate::engine::{RunReport, RunStatus, StepRecord};
use crate::secret::Secret;

/// How long a dedupe key is remembered.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

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
    // 2: the source of every recipe version an engine activated (hot reload).
    "CREATE TABLE recipe_versions (
        recipe TEXT NOT NULL, version TEXT NOT NULL, file TEXT NOT NULL, source TEXT NOT NULL,
        loaded_at INTEGER NOT NULL, PRIMARY KEY (recipe, version));",
];

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;

/// A write for the writer task. Every write goes through one connection
/// in batched transactions: SQLite has one writer at a time, and letting
/// several connections compete makes them sleep in the busy handler.
enum Job {
    Ingest {
        delivery: Option<Delivery>,
        events: Vec<NewEvent>,
        cursor: Option<(String, String)>,
        reply: oneshot::Sender<Result<Ingested, StoreError>>,
    },
    Claim {
        worker: String,
        lease: Duration,
        reply: oneshot::Sender<Result<Option<ClaimedRun>, StoreError>>,
    },
    Checkpoint {
        run_id: String,
        records: Vec<String>,
        lease: Duration,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Finish {
        run_id: String,
        /// Every step record of the run; those not yet checkpointed are stored.
        records: Vec<String>,
        status: RunState,
        failed_step: Option<String>,
        error: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Recipe versions (hot reload): through the writer, so they never wait
    /// in the busy handler and commit before any event naming them.
    Versions {
        versions: Vec<super::versions::StoredVersion>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A job's answer, sent only after its transaction committed.
enum Answer {
    Ingest(
        oneshot::Sender<Result<Ingested, StoreError>>,
        Result<Ingested, StoreError>,
    ),
    Claim(
        oneshot::Sender<Result<Option<ClaimedRun>, StoreError>>,
        Result<Option<ClaimedRun>, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Ingest(r, v) => drop(r.send(v)),
            Answer::Claim(r, v) => drop(r.send(v)),
            Answer::Unit(r, v) => drop(r.send(v)),
        }
    }

    /// The commit failed: every job of the batch fails.
    fn fail(self, msg: &str) {
        let e = || StoreError::Corrupt {
            what: "write",
            detail: msg.to_string(),
        };
        match self {
            Answer::Ingest(r, _) => drop(r.send(Err(e()))),
            Answer::Claim(r, _) => drop(r.send(Err(e()))),
            Answer::Unit(r, _) => drop(r.send(Err(e()))),
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl SqliteStore {
    /// Opens (creating if needed) `sqlite://FILE` or `sqlite::memory:` and
    /// migrates it.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::Url(url.to_string()));
        }
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let memory = url.contains(":memory:");
        // Run-state writes (claims, checkpoints, ends) use synchronous=NORMAL:
        // in WAL mode they survive a process crash, and one lost to a power
        // cut only repeats a step. Accepting events is what must never be
        // lost, so the group-commit writer uses FULL (an fsync per batch).
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection.
            .max_connections(if memory { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone().synchronous(if memory {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            }))
            .await?;
        migrate(&pool).await?;
        let accept = if memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.synchronous(SqliteSynchronous::Full))
                .await?
        };
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(accept, rx));
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
        versions: Vec<super::versions::StoredVersion>,
    ) -> Result<BoxFut<'static, Result<(), StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Versions { versions, reply }).await?;
        Ok(Box::pin(async move {
            rx.await
                .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
        }))
    }

    async fn submit(
        &self,
        delivery: Option<Delivery>,
        events: Vec<NewEvent>,
        cursor: Option<(String, String)>,
    ) -> Result<Ingested, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ingest {
            delivery,
            events,
            cursor,
            reply,
        })
        .await?;
        rx.await
            .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Db(sqlx::Error::PoolClosed))
    }

    async fn unit(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<(), StoreError>>,
    ) -> Result<(), StoreError> {
        self.send(job).await?;
        rx.await
            .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
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

/// The writer task: takes every waiting write, applies them in one
/// transaction (group commit), and answers each after the commit.
async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Job>) {
    let mut last_reap = 0i64;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                for j in jobs {
                    answer_of(
                        j,
                        StoreError::Corrupt {
                            what: "write",
                            detail: msg.clone(),
                        },
                    )
                    .send();
                }
                continue;
            }
        };
        let now = now_ms();
        // Runs whose lease expired (their process died) are queued again.
        if now - last_reap > 500 {
            last_reap = now;
            let _ = sqlx::query("UPDATE runs SET status = 'queued', lease_owner = NULL WHERE status = 'running' AND lease_until < ?")
                .bind(now)
                .execute(&mut *tx)
                .await;
        }
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            answers.push(apply(&mut tx, job, now).await);
        }
        match tx.commit().await {
            Ok(()) => answers.into_iter().for_each(Answer::send),
            Err(e) => {
                let msg = e.to_string();
                answers.into_iter().for_each(|a| a.fail(&msg));
            }
        }
    }
}

fn answer_of(job: Job, e: StoreError) -> Answer {
    match job {
        Job::Ingest { reply, .. } => Answer::Ingest(reply, Err(e)),
        Job::Claim { reply, .. } => Answer::Claim(reply, Err(e)),
        Job::Checkpoint { reply, .. } | Job::Finish { reply, .. } => Answer::Unit(reply, Err(e)),
        Job::Versions { reply, .. } => Answer::Unit(reply, Err(e)),
    }
}

async fn apply(tx: &mut Transaction<'_, Sqlite>, job: Job, now: i64) -> Answer {
    match job {
        Job::Ingest {
            delivery,
            events,
            cursor,
            reply,
        } => Answer::Ingest(reply, ingest(tx, delivery, &events, cursor, now).await),
        Job::Claim {
            worker,
            lease,
            reply,
        } => Answer::Claim(reply, claim(tx, &worker, lease, now).await),
        Job::Checkpoint {
            run_id,
            records,
            lease,
            reply,
        } => Answer::Unit(reply, checkpoint(tx, &run_id, &records, lease, now).await),
        Job::Finish {
            run_id,
            records,
            status,
            failed_step,
            error,
            reply,
        } => Answer::Unit(
            reply,
            finish(tx, &run_id, &records, status, failed_step, error, now).await,
        ),
        Job::Versions { versions, reply } => {
            Answer::Unit(reply, super::versions::insert(tx, &versions).await)
        }
    }
}

async fn ingest(
    tx: &mut Transaction<'_, Sqlite>,
    delivery: Option<Delivery>,
    events: &[NewEvent],
    cursor: Option<(String, String)>,
    now: i64,
) -> Result<Ingested, StoreError> {
    let mut c = Ingested::default();
    let mut seq: Option<i64> = None;
    for ev in events {
        if let Some(key) = &ev.dedupe_key {
            let fresh = sqlx::query("INSERT INTO dedupe (key, expires_at) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at WHERE dedupe.expires_at < ?")
                .bind(key)
                .bind(now + DEDUPE_WINDOW.as_millis() as i64)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if fresh == 0 {
                c.duplicates += 1;
                continue;
            }
        }
        insert_event(tx, ev, now).await?;
        c.events += 1;
        for run in &ev.runs {
            let next = match seq {
                Some(s) => s + 1,
                None => sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM runs")
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get("s")?,
            };
            seq = Some(next);
            sqlx::query("INSERT INTO runs (id, seq, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)")
                .bind(&run.id)
                .bind(next)
                .bind(&ev.id)
                .bind(&run.recipe)
                .bind(&run.recipe_version)
                .bind(&run.ordering_key)
                .bind(now)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            c.runs += 1;
        }
    }
    if let Some(d) = &delivery {
        insert_delivery(tx, d).await?;
    }
    if let Some((name, value)) = &cursor {
        sqlx::query("INSERT INTO cursors (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&mut **tx)
            .await?;
    }
    Ok(c)
}

async fn claim(
    tx: &mut Transaction<'_, Sqlite>,
    worker: &str,
    lease: Duration,
    now: i64,
) -> Result<Option<ClaimedRun>, StoreError> {
    if let Some(run) = claim_queued(tx, worker, lease, now).await? {
        return Ok(Some(run));
    }
    // Nothing queued: take back runs whose process died, then try again.
    let reaped = sqlx::query("UPDATE runs SET status = 'queued', lease_owner = NULL WHERE status = 'running' AND lease_until < ?")
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if reaped == 0 {
        return Ok(None);
    }
    claim_queued(tx, worker, lease, now).await
}

async fn claim_queued(
    tx: &mut Transaction<'_, Sqlite>,
    worker: &str,
    lease: Duration,
    now: i64,
) -> Result<Option<ClaimedRun>, StoreError> {
    // The oldest queued run whose ordering key has no earlier unfinished
    // run; `runs_claim` and `runs_ordering` keep this an index walk.
    let row = sqlx::query(
        "UPDATE runs SET status = 'running', lease_owner = ?1, lease_until = ?2,
                started_at = COALESCE(started_at, ?3), updated_at = ?3
         WHERE id = (
            SELECT r.id FROM runs r
            WHERE r.status = 'queued'
              AND (r.ordering_key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM runs o
                  WHERE o.ordering_key = r.ordering_key AND o.seq < r.seq
                    AND o.status IN ('queued', 'running')))
            ORDER BY r.seq LIMIT 1)
         RETURNING id, recipe, recipe_version, event_id, started_at",
    )
    .bind(worker)
    .bind(now + lease.as_millis() as i64)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("id")?;
    let event_id: String = row.try_get("event_id")?;
    let payload: String = sqlx::query("SELECT payload FROM events WHERE id = ?")
        .bind(&event_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("payload")?;
    let steps = sqlx::query("SELECT record FROM steps WHERE run_id = ? ORDER BY idx")
        .bind(&id)
        .fetch_all(&mut **tx)
        .await?;
    let mut done = Vec::with_capacity(steps.len());
    for s in steps {
        let text: String = s.try_get("record")?;
        done.push(
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "steps.record",
                detail: e.to_string(),
            })?,
        );
    }
    Ok(Some(ClaimedRun {
        id,
        recipe: row.try_get("recipe")?,
        recipe_version: row.try_get("recipe_version")?,
        payload: parse_json("events.payload", &payload)?,
        started_at: to_time(row.try_get("started_at")?),
        done,
    }))
}

/// Stores the step records not yet checkpointed and ends the run.
async fn finish(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: &str,
    records: &[String],
    status: RunState,
    failed_step: Option<String>,
    error: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM steps WHERE run_id = ?")
        .bind(run_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    for (i, r) in records.iter().enumerate().skip(stored as usize) {
        sqlx::query("INSERT INTO steps (run_id, idx, record) VALUES (?, ?, ?)")
            .bind(run_id)
            .bind(i as i64)
            .bind(r)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("UPDATE runs SET status = ?, failed_step = ?, error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(failed_step)
        .bind(error)
        .bind(now)
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn checkpoint(
    tx: &mut Transaction<'_, Sqlite>,
    run_id: &str,
    records: &[String],
    lease: Duration,
    now: i64,
) -> Result<(), StoreError> {
    if !records.is_empty() {
        let next: i64 =
            sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) AS n FROM steps WHERE run_id = ?")
                .bind(run_id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("n")?;
        for (i, r) in records.iter().enumerate() {
            sqlx::query("INSERT INTO steps (run_id, idx, record) VALUES (?, ?, ?)")
                .bind(run_id)
                .bind(next + i as i64)
                .bind(r)
                .execute(&mut **tx)
                .await?;
        }
    }
    sqlx::query(
        "UPDATE runs SET lease_until = ?, updated_at = ? WHERE id = ? AND status = 'running'",
    )
    .bind(now + lease.as_millis() as i64)
    .bind(now)
    .bind(run_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut Transaction<'_, Sqlite>,
    ev: &NewEvent,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO events (id, connection, operation, payload, received_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&ev.id)
        .bind(&ev.connection)
        .bind(&ev.operation)
        .bind(ev.payload.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_delivery(tx: &mut Transaction<'_, Sqlite>, d: &Delivery) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO deliveries (connection, status, outcome, events, received_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&d.connection)
        .bind(d.status as i64)
        .bind(&d.outcome)
        .bind(d.events as i64)
        .bind(d.received_at.timestamp_millis())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn parse_json(what: &'static str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
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

/// Finished runs older than a cutoff.
macro_rules! finished_before {
    () => {
        "status IN ('completed', 'filtered', 'replayed') AND updated_at < ?"
    };
}

impl Store for SqliteStore {
    fn ingest(
        &self,
        delivery: Delivery,
        events: Vec<NewEvent>,
    ) -> BoxFut<'_, Result<Ingested, StoreError>> {
        Box::pin(self.submit(Some(delivery), events, None))
    }

    fn reject(&self, delivery: Delivery) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.submit(Some(delivery), Vec::new(), None)
                .await
                .map(|_| ())
        })
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<Option<ClaimedRun>, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Claim {
                worker: worker.to_string(),
                lease,
                reply,
            })
            .await?;
            rx.await
                .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
        })
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
            let status = match report.status {
                RunStatus::Completed => RunState::Completed,
                RunStatus::Failed => RunState::Failed,
                RunStatus::Filtered => RunState::Filtered,
            };
            let (reply, rx) = oneshot::channel();
            let job = Job::Finish {
                run_id: report.run_id.clone(),
                records: report
                    .steps
                    .iter()
                    .map(|r| serde_json::to_string(r).expect("records serialize"))
                    .collect(),
                status,
                failed_step: report.failed_step.clone(),
                error: report
                    .error
                    .as_ref()
                    .map(|e| serde_json::to_string(e).expect("errors serialize")),
                reply,
            };
            self.unit(job, rx).await
        })
    }

    fn runs(&self, filter: RunFilter) -> BoxFut<'_, Result<Vec<RunSummary>, StoreError>> {
        Box::pin(async move {
            let sql = concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE (?1 IS NULL OR recipe = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY seq DESC LIMIT ?3"
            );
            let rows = sqlx::query(sql)
                .bind(filter.recipe)
                .bind(filter.status.map(RunState::as_str))
                .bind(if filter.limit == 0 { 100 } else { filter.limit } as i64)
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
            let seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM runs")
                .fetch_one(&mut *tx)
                .await?
                .try_get("s")?;
            let new_id = format!("{:016x}", rand::random::<u64>());
            let now = now_ms();
            let event_id: String = row.try_get("event_id")?;
            let recipe: String = row.try_get("recipe")?;
            let ordering_key: Option<String> = row.try_get("ordering_key")?;
            sqlx::query("INSERT INTO runs (id, seq, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)")
                .bind(&new_id)
                .bind(seq)
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
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(concat!(
                "DELETE FROM steps WHERE run_id IN (SELECT id FROM runs WHERE ",
                finished_before!(),
                ")"
            ))
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            let runs = sqlx::query(concat!("DELETE FROM runs WHERE ", finished_before!()))
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM events WHERE received_at < ? AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM deliveries WHERE received_at < ?")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM dedupe WHERE expires_at < ?")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM links WHERE expires_at IS NOT NULL AND expires_at < ?")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(runs)
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
        value: &'a str,
        events: Vec<NewEvent>,
    ) -> BoxFut<'a, Result<Ingested, StoreError>> {
        Box::pin(self.submit(None, events, Some((name.to_string(), value.to_string()))))
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
            sqlx::query("INSERT INTO links (namespace, key, value, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
                .bind(namespace)
                .bind(key)
                .bind(value.to_string())
                .bind(ttl.map(|t| now_ms() + t.as_millis() as i64))
                .execute(&self.pool)
                .await
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
            sqlx::query("DELETE FROM links WHERE namespace = ? AND key = ?")
                .bind(namespace)
                .bind(key)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected() > 0)
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
            let r = sqlx::query("INSERT INTO tokens (connection, access_token, refresh_token, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT(connection) DO UPDATE SET access_token = excluded.access_token, refresh_token = excluded.refresh_token, expires_at = excluded.expires_at")
                .bind(connection)
                .bind(tokens.access_token.expose())
                .bind(tokens.refresh_token.as_ref().map(|s| s.expose().to_string()))
                .bind(tokens.expires_at)
                .execute(&self.pool)
                .await;
            if let Err(e) = r {
                tracing::error!(connection, error = %e, "could not save refreshed tokens");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                id: format!("run-{id}"),
                recipe: "r".into(),
                recipe_version: "v1".into(),
                ordering_key: ordering.map(str::to_string),
            }],
        }
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
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
        let a = s
            .ingest(
                delivery(),
                vec![
                    event("a", Some("k1"), Some("task-1")),
                    event("b", Some("k2"), Some("task-1")),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            a,
            Ingested {
                events: 2,
                duplicates: 0,
                runs: 2
            }
        );
        let b = s
            .ingest(delivery(), vec![event("a2", Some("k1"), None)])
            .await
            .unwrap();
        assert_eq!(b.duplicates, 1);
        let first = s
            .claim("w1", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.id, "run-a");
        // Same ordering key: the second waits for the first.
        assert!(s
            .claim("w2", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none());
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
            s.claim("w2", Duration::from_secs(30))
                .await
                .unwrap()
                .unwrap()
                .id,
            "run-b"
        );
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_its_checkpoints() {
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
        s.ingest(delivery(), vec![event("a", None, None)])
            .await
            .unwrap();
        let c = s
            .claim("w1", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        let rec: StepRecord = serde_json::from_value(json!({"id": "s1", "action": "store.put", "status": "completed", "input": {}, "output": 1,
            "error": null, "attempts": 1, "duration_ms": 1, "rescued_by": null, "fallback_of": null})).unwrap();
        s.checkpoint(&c.id, std::slice::from_ref(&rec), Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = s
            .claim("w2", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.id, c.id);
        assert_eq!(again.done, vec![rec]);
        assert_eq!(again.started_at, c.started_at);
    }

    #[tokio::test]
    async fn failed_runs_are_dead_letters_until_replayed() {
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
        s.ingest(delivery(), vec![event("a", None, None)])
            .await
            .unwrap();
        let c = s
            .claim("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
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
        let again = s
            .claim("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (again.id.as_str(), again.recipe_version.as_str()),
            (new_id.as_str(), "v2")
        );
        assert_eq!(again.payload, json!({"email": "a"}));
    }

    #[tokio::test]
    async fn links_and_tokens_persist() {
        let s = SqliteStore::open("sqlite::memory:").await.unwrap();
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
}
