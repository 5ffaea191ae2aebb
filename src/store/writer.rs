//! The SQLite store's writer: one OS thread owns the engine's write
//! connection and applies its writes (ingests, claims, checkpoints, run
//! ends, `store` links, refreshed tokens, retention) in batched
//! `BEGIN IMMEDIATE` transactions — group commit, so durable acceptance
//! costs one fsync per batch rather than per event, and no second
//! connection waits on SQLite's lock. (Migrations run before it starts;
//! `replay` writes through the pool, as the operations CLI does from its
//! own process.)
//!
//! Why a thread with rusqlite rather than an async driver: SQLite is an
//! in-process library, and an async driver pays a cross-thread round trip
//! per statement; a batch here runs its statements back to back, compiled
//! once (docs/decisions.md).

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, PrepFlags, Statement};
use tokio::sync::{mpsc, oneshot};

use super::rows::{now_ms, parse_json, to_time, DEDUPE_WINDOW};
use super::versions::StoredVersion;
use super::{ClaimFor, ClaimedRun, Delivery, Ingested, NewEvent, RunState, StoreError};
use crate::connectors::auth::StoredTokens;

/// Most jobs in one transaction.
const MAX_BATCH: usize = 512;
/// A batch smaller than this waits [`COMMIT_DELAY`] for more under load.
const MIN_BATCH: usize = 16;
/// How long a small batch waits under load.
const COMMIT_DELAY: Duration = Duration::from_micros(300);
/// How often expired leases are looked for while writing: the one place
/// that queues a dead process's runs again (a reap walks every running
/// run, so claims do not do it too).
pub(super) const REAP_EVERY_MS: i64 = 500;

/// A cursor move: name, the value it must still hold (`None`: unset), new value.
pub(super) type Cursor = (String, Option<String>, String);

/// A write for the writer thread.
pub(super) enum Job {
    /// Accept events (and record the delivery, move a cursor).
    Ingest {
        delivery: Option<Delivery>,
        events: Vec<NewEvent>,
        /// A cursor to move: its name, the value it must still hold, its new value.
        cursor: Option<Cursor>,
        claim: Option<ClaimFor>,
        reply: oneshot::Sender<Result<Ingested, StoreError>>,
    },
    /// Take up to `max` claimable runs.
    Claim {
        worker: String,
        lease: Duration,
        max: usize,
        reply: oneshot::Sender<Result<Vec<ClaimedRun>, StoreError>>,
    },
    /// Extend (`Some(lease)`) or give up (`None`) every lease of an owner.
    Leases {
        owner: String,
        lease: Option<Duration>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Recipe versions (hot reload): through the writer, so they never wait
    /// in the busy handler and commit before any event naming them.
    Versions {
        versions: Vec<StoredVersion>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Store finished steps and extend the lease.
    Checkpoint {
        run_id: String,
        records: Vec<String>,
        lease: Duration,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Write a `store` connector link, or delete it (`value: None`).
    Link {
        namespace: String,
        key: String,
        /// The value as JSON text, and when it expires (ms).
        value: Option<(String, Option<i64>)>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Keep a connection's refreshed OAuth tokens.
    Tokens {
        connection: String,
        tokens: StoredTokens,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delete one chunk of what retention removes.
    Prune {
        what: Prune,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// End a run.
    Finish {
        run_id: String,
        /// Every step record of the run; those not yet checkpointed are stored.
        records: Vec<String>,
        status: RunState,
        failed_step: Option<String>,
        error: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Most rows one [`Job::Prune`] deletes: a chunk is one job of a batch, so
/// ingests committed with it wait for it; chunks keep that wait short.
pub(super) const PRUNE_CHUNK: i64 = 500;

/// One chunk of retention (docs/operations.md), as a writer job: pruning
/// through a second connection made the writer wait for SQLite's lock in
/// the busy handler, which sleeps in steps of up to 100 ms.
#[derive(Clone)]
pub(super) enum Prune {
    /// Finished runs (not dead letters) made before `cutoff_id` and last
    /// updated before `cutoff`, with their steps, and each event with its
    /// last run.
    Runs { cutoff_id: String, cutoff: i64 },
    /// Deliveries received before `cutoff`.
    Deliveries { cutoff: i64 },
    /// Dedupe keys expired at `now`.
    Dedupe { now: i64 },
    /// Links expired at `now`.
    Links { now: i64 },
}

/// What a job did, sent to its caller only after its transaction committed.
enum Done {
    Ingested(Ingested),
    Claimed(Vec<ClaimedRun>),
    Count(u64),
    Unit,
}

impl Job {
    /// Answers the job's caller.
    fn reply(self, result: Result<Done, StoreError>) {
        match (self, result) {
            (Job::Ingest { reply, .. }, Ok(Done::Ingested(n))) => drop(reply.send(Ok(n))),
            (Job::Ingest { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Job::Claim { reply, .. }, Ok(Done::Claimed(r))) => drop(reply.send(Ok(r))),
            (Job::Claim { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (
                Job::Leases { reply, .. } | Job::Prune { reply, .. } | Job::Link { reply, .. },
                Ok(Done::Count(n)),
            ) => drop(reply.send(Ok(n))),
            (
                Job::Leases { reply, .. } | Job::Prune { reply, .. } | Job::Link { reply, .. },
                Err(e),
            ) => drop(reply.send(Err(e))),
            (
                Job::Versions { reply, .. }
                | Job::Checkpoint { reply, .. }
                | Job::Finish { reply, .. }
                | Job::Tokens { reply, .. },
                r,
            ) => drop(reply.send(r.map(|_| ()))),
            (_, Ok(_)) => unreachable!("each job has one kind of result"),
        }
    }
}

/// A write error as every job of a failed batch reports it.
fn write_error(msg: &str) -> StoreError {
    StoreError::Backend(msg.to_string())
}

/// Opens the write connection (`synchronous=FULL`: accepted events must
/// survive a power cut) and starts the writer thread, once its statements
/// compiled.
pub(super) fn start(path: &std::path::Path) -> Result<mpsc::Sender<Job>, StoreError> {
    let conn = open(path)?;
    let (tx, rx) = mpsc::channel(4096);
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("patchbay-store-writer".into())
        .spawn(move || match Writer::new(&conn) {
            Ok(w) => {
                let _ = ready.send(Ok(()));
                w.run(rx)
            }
            Err(e) => drop(ready.send(Err(e))),
        })
        .map_err(|e| StoreError::Corrupt {
            what: "writer thread",
            detail: e.to_string(),
        })?;
    started.recv().map_err(|e| StoreError::Corrupt {
        what: "writer thread",
        detail: e.to_string(),
    })??;
    Ok(tx)
}

/// The write connection, configured.
fn open(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 16 MiB of page cache (default 2 MiB): index pages the writer touches
    // stay in memory instead of being read back with a syscall each.
    conn.pragma_update(None, "cache_size", -16384)?;
    // Plans must not depend on bound values: otherwise SQLite marks a
    // statement whose `LIMIT ?` (the claim's batch size) changed as stale
    // and compiles it again on the next step — that was ~6 % of the
    // engine's CPU under load.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// SQL of the statements the writer keeps compiled.
mod sql {
    pub const BEGIN: &str = "BEGIN IMMEDIATE";
    pub const COMMIT: &str = "COMMIT";
    pub const ROLLBACK: &str = "ROLLBACK";
    pub const DEDUPE: &str = "INSERT INTO dedupe (key, expires_at) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at WHERE dedupe.expires_at < ?3";
    pub const EVENT: &str = "INSERT INTO events (id, connection, operation, payload, received_at) VALUES (?1, ?2, ?3, ?4, ?5)";
    pub const KEY_BUSY: &str =
        "SELECT 1 FROM runs WHERE ordering_key = ?1 AND status IN ('queued', 'running') LIMIT 1";
    pub const RUN_LEASED: &str = "INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status, lease_owner, lease_until, started_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?8, ?8)";
    pub const RUN_QUEUED: &str = "INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)";
    pub const DELIVERY: &str = "INSERT INTO deliveries (connection, status, outcome, events, received_at) VALUES (?1, ?2, ?3, ?4, ?5)";
    pub const PAYLOAD: &str = "SELECT payload FROM events WHERE id = ?1";
    pub const STEPS_OF: &str = "SELECT record FROM steps WHERE run_id = ?1 ORDER BY idx";
    pub const NEXT_STEP: &str = "SELECT COALESCE(MAX(idx) + 1, 0) FROM steps WHERE run_id = ?1";
    pub const STEP: &str = "INSERT INTO steps (run_id, idx, record) VALUES (?1, ?2, ?3)";
    pub const STEP_IF_NEW: &str = "INSERT INTO steps (run_id, idx, record) VALUES (?1, ?2, ?3) ON CONFLICT(run_id, idx) DO NOTHING";
    pub const EXTEND: &str =
        "UPDATE runs SET lease_until = ?1, updated_at = ?2 WHERE id = ?3 AND status = 'running'";
    pub const END: &str = "UPDATE runs SET status = ?1, failed_step = ?2, error = ?3, lease_owner = NULL, lease_until = NULL, updated_at = ?4 WHERE id = ?5";
}

/// The write connection with the statements of every event's path compiled
/// once for its life. (`prepare_cached` hashes the SQL text on every take
/// and every return, ~8,700 instructions an event, and rusqlite's
/// transactions compile `BEGIN` and `COMMIT` anew each time.) Rarer writes
/// use the connection's statement cache.
struct Writer<'c> {
    conn: &'c Connection,
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    dedupe: Statement<'c>,
    event: Statement<'c>,
    key_busy: Statement<'c>,
    run_leased: Statement<'c>,
    run_queued: Statement<'c>,
    delivery: Statement<'c>,
    claimable: Statement<'c>,
    claim: Statement<'c>,
    payload: Statement<'c>,
    steps_of: Statement<'c>,
    next_step: Statement<'c>,
    step: Statement<'c>,
    step_if_new: Statement<'c>,
    extend: Statement<'c>,
    end: Statement<'c>,
}

impl<'c> Writer<'c> {
    fn new(conn: &'c Connection) -> Result<Writer<'c>, StoreError> {
        // Persistent: a statement kept for long must not hold SQLite's
        // per-connection lookaside memory, or every transient allocation
        // of the statements falls back to malloc (+12,000 instructions an
        // event, measured).
        let prepare =
            |sql: &str| conn.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT);
        Ok(Writer {
            conn,
            begin: prepare(sql::BEGIN)?,
            commit: prepare(sql::COMMIT)?,
            rollback: prepare(sql::ROLLBACK)?,
            dedupe: prepare(sql::DEDUPE)?,
            event: prepare(sql::EVENT)?,
            key_busy: prepare(sql::KEY_BUSY)?,
            run_leased: prepare(sql::RUN_LEASED)?,
            run_queued: prepare(sql::RUN_QUEUED)?,
            delivery: prepare(sql::DELIVERY)?,
            claimable: prepare(CLAIMABLE)?,
            claim: prepare(CLAIM)?,
            payload: prepare(sql::PAYLOAD)?,
            steps_of: prepare(sql::STEPS_OF)?,
            next_step: prepare(sql::NEXT_STEP)?,
            step: prepare(sql::STEP)?,
            step_if_new: prepare(sql::STEP_IF_NEW)?,
            extend: prepare(sql::EXTEND)?,
            end: prepare(sql::END)?,
        })
    }

    /// Takes every waiting job, applies them in one transaction and answers
    /// each after the commit. When a job fails, the batch is rolled back and
    /// its jobs are applied again one transaction each, so a bad job fails
    /// alone (savepoints per job would copy every page they touch).
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut last_reap = 0i64;
        let mut busy = false;
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            let mut gather = |jobs: &mut Vec<Job>| {
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
            };
            gather(&mut jobs);
            // Under load, wait a moment for more jobs (like PostgreSQL's
            // commit_delay): every commit writes the index pages its rows
            // touched, so fuller commits write fewer pages per event.
            if busy && jobs.len() < MIN_BATCH {
                std::thread::sleep(COMMIT_DELAY);
                gather(&mut jobs);
            }
            busy = jobs.len() > 1;
            let now = now_ms();
            // Runs whose lease expired (their process died) are queued again.
            let reap_now = now - last_reap > REAP_EVERY_MS;
            if reap_now {
                last_reap = now;
            }
            match self.batch(&jobs, now, reap_now) {
                Ok(done) => jobs
                    .into_iter()
                    .zip(done)
                    .for_each(|(job, d)| job.reply(Ok(d))),
                Err(BatchError::Commit(msg)) => jobs
                    .into_iter()
                    .for_each(|job| job.reply(Err(write_error(&msg)))),
                Err(BatchError::Job) => {
                    for job in jobs {
                        let r = self.alone(&job, now);
                        job.reply(r);
                    }
                }
            }
        }
    }

    /// Every job in one transaction.
    fn batch(&mut self, jobs: &[Job], now: i64, reap_now: bool) -> Result<Vec<Done>, BatchError> {
        // Whatever went wrong before, no transaction is left open to make
        // every later `BEGIN` fail.
        self.abandon();
        self.begin
            .execute([])
            .map_err(|e| BatchError::Commit(e.to_string()))?;
        if reap_now {
            let _ = reap(self.conn, now);
        }
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self.apply(job, now) {
                Ok(d) => done.push(d),
                Err(_) => {
                    self.abandon();
                    return Err(BatchError::Job);
                }
            }
        }
        if let Err(e) = self.commit.execute([]) {
            self.abandon();
            return Err(BatchError::Commit(e.to_string()));
        }
        Ok(done)
    }

    /// One job in its own transaction.
    fn alone(&mut self, job: &Job, now: i64) -> Result<Done, StoreError> {
        self.abandon();
        self.begin.execute([])?;
        let done = self
            .apply(job, now)
            .and_then(|d| Ok(self.commit.execute([]).map(|_| d)?));
        if done.is_err() {
            self.abandon();
        }
        done
    }

    /// Rolls back the open transaction, if SQLite has not already.
    fn abandon(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.rollback.execute([]);
        }
    }

    fn apply(&mut self, job: &Job, now: i64) -> Result<Done, StoreError> {
        Ok(match job {
            Job::Ingest {
                delivery,
                events,
                cursor,
                claim,
                ..
            } => Done::Ingested(self.ingest(
                delivery.as_ref(),
                events,
                cursor.as_ref(),
                claim.as_ref(),
                now,
            )?),
            Job::Leases { owner, lease, .. } => Done::Count(leases(self.conn, owner, *lease, now)?),
            Job::Claim {
                worker, lease, max, ..
            } => Done::Claimed(self.claim_batch(worker, *lease, *max, now)?),
            Job::Checkpoint {
                run_id,
                records,
                lease,
                ..
            } => {
                self.checkpoint(run_id, records, *lease, now)?;
                Done::Unit
            }
            Job::Versions { versions, .. } => {
                insert_versions(self.conn, versions)?;
                Done::Unit
            }
            Job::Prune { what, .. } => Done::Count(prune(self.conn, what)?),
            Job::Link {
                namespace,
                key,
                value,
                ..
            } => Done::Count(link(self.conn, namespace, key, value.as_ref())?),
            Job::Tokens {
                connection, tokens, ..
            } => {
                self.conn.prepare_cached("INSERT INTO tokens (connection, access_token, refresh_token, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(connection) DO UPDATE SET access_token = excluded.access_token, refresh_token = excluded.refresh_token, expires_at = excluded.expires_at")?
                    .execute(params![
                        connection,
                        tokens.access_token.expose(),
                        tokens.refresh_token.as_ref().map(|s| s.expose()),
                        tokens.expires_at
                    ])?;
                Done::Unit
            }
            Job::Finish {
                run_id,
                records,
                status,
                failed_step,
                error,
                ..
            } => {
                self.finish(
                    run_id,
                    records,
                    *status,
                    failed_step.as_deref(),
                    error.as_deref(),
                    now,
                )?;
                Done::Unit
            }
        })
    }

    fn ingest(
        &mut self,
        delivery: Option<&Delivery>,
        events: &[NewEvent],
        cursor: Option<&Cursor>,
        claim: Option<&ClaimFor>,
        now: i64,
    ) -> Result<Ingested, StoreError> {
        if let Some((name, expected, _)) = cursor {
            let current: Option<String> = self
                .conn
                .prepare_cached("SELECT value FROM cursors WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            if current != *expected {
                return Err(StoreError::Conflict(format!(
                    "cursor `{name}` was moved by another writer"
                )));
            }
        }
        let mut n = Ingested::default();
        for ev in events {
            if let Some(key) = &ev.dedupe_key {
                let fresh = self.dedupe.execute(params![
                    key,
                    now + DEDUPE_WINDOW.as_millis() as i64,
                    now
                ])?;
                if fresh == 0 {
                    n.duplicates += 1;
                    continue;
                }
            }
            self.event.execute(params![
                ev.id,
                ev.connection,
                ev.operation,
                ev.payload.to_string(),
                now
            ])?;
            n.events += 1;
            // A run's `seq` is its rowid: SQLite gives each insert the next one.
            for run in &ev.runs {
                n.runs += 1;
                let owner = claim.filter(|cl| n.claimed.len() < cl.max);
                let free = match (&owner, &run.ordering_key) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(_), Some(key)) => self
                        .key_busy
                        .query_row([key], |_| Ok(()))
                        .optional()?
                        .is_none(),
                };
                match owner.filter(|_| free) {
                    Some(cl) => {
                        self.run_leased.execute(params![
                            run.id,
                            ev.id,
                            run.recipe,
                            run.recipe_version,
                            run.ordering_key,
                            cl.owner,
                            now + cl.lease.as_millis() as i64,
                            now
                        ])?;
                        n.claimed.push(ClaimedRun {
                            id: run.id.clone(),
                            recipe: run.recipe.clone(),
                            recipe_version: run.recipe_version.clone(),
                            payload: ev.payload.clone(),
                            ordering_key: run.ordering_key.clone(),
                            started_at: to_time(now),
                            done: Vec::new(),
                        });
                    }
                    None => {
                        self.run_queued.execute(params![
                            run.id,
                            ev.id,
                            run.recipe,
                            run.recipe_version,
                            run.ordering_key,
                            now
                        ])?;
                    }
                }
            }
        }
        if let Some(d) = delivery {
            self.delivery.execute(params![
                d.connection,
                d.status,
                d.outcome,
                d.events,
                d.received_at.timestamp_millis()
            ])?;
        }
        if let Some((name, _, value)) = cursor {
            self.conn.prepare_cached("INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value")?
                .execute(params![name, value])?;
        }
        Ok(n)
    }

    /// Takes up to `max` of the oldest queued runs whose ordering key has no
    /// earlier unfinished run. Of several queued runs of one key only the
    /// first qualifies (the others have it before them), so a batch never
    /// holds two runs of one key. Selected and leased in the writer's
    /// transaction, so nothing can take them in between.
    fn claim_batch(
        &mut self,
        worker: &str,
        lease: Duration,
        max: usize,
        now: i64,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let seqs = self
            .claimable
            .query_map([max as i64], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut runs = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let (id, recipe, recipe_version, event_id, started_at, ordering_key) =
                self.claim.query_row(
                    params![worker, now + lease.as_millis() as i64, now, seq],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<String>>(5)?,
                        ))
                    },
                )?;
            let payload: String = self.payload.query_row([&event_id], |r| r.get(0))?;
            let mut done = Vec::new();
            let mut records = self.steps_of.query([&id])?;
            while let Some(row) = records.next()? {
                let text: String = row.get(0)?;
                done.push(
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                        what: "steps.record",
                        detail: e.to_string(),
                    })?,
                );
            }
            runs.push(ClaimedRun {
                id: id.into(),
                recipe,
                recipe_version,
                payload: parse_json("events.payload", &payload)?,
                ordering_key,
                started_at: to_time(started_at),
                done,
            });
        }
        Ok(runs)
    }

    fn checkpoint(
        &mut self,
        run_id: &str,
        records: &[String],
        lease: Duration,
        now: i64,
    ) -> Result<(), StoreError> {
        if !records.is_empty() {
            let next: i64 = self.next_step.query_row([run_id], |r| r.get(0))?;
            for (i, r) in records.iter().enumerate() {
                self.step.execute(params![run_id, next + i as i64, r])?;
            }
        }
        self.extend
            .execute(params![now + lease.as_millis() as i64, now, run_id])?;
        Ok(())
    }

    /// Stores the step records not yet checkpointed and ends the run.
    fn finish(
        &mut self,
        run_id: &str,
        records: &[String],
        status: RunState,
        failed_step: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        // Steps checkpointed before are already there and stay as they are;
        // most runs have none, so this costs no lookup of what was stored.
        for (i, r) in records.iter().enumerate() {
            self.step_if_new.execute(params![run_id, i as i64, r])?;
        }
        self.end
            .execute(params![status.as_str(), failed_step, error, now, run_id])?;
        Ok(())
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A job failed: retry the jobs one by one.
    Job,
    /// The transaction could not begin or commit: every job fails.
    Commit(String),
}

// Queries over open runs repeat the condition of the partial index
// `runs_open`, `status IN ('queued', 'running')`, word for word: SQLite
// uses a partial index only when the query's WHERE names its condition.

fn reap(c: &Connection, now: i64) -> Result<usize, StoreError> {
    Ok(c
        .prepare_cached("UPDATE runs SET status = 'queued', lease_owner = NULL WHERE status IN ('queued', 'running') AND status = 'running' AND lease_until < ?")?
        .execute([now])?)
}

/// Writes (or, without a value, deletes) a link; how many rows changed.
fn link(
    c: &Connection,
    namespace: &str,
    key: &str,
    value: Option<&(String, Option<i64>)>,
) -> Result<u64, StoreError> {
    let n = match value {
        Some((json, expires_at)) => c
            .prepare_cached("INSERT INTO links (namespace, key, value, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")?
            .execute(params![namespace, key, json, expires_at])?,
        None => c
            .prepare_cached("DELETE FROM links WHERE namespace = ?1 AND key = ?2")?
            .execute(params![namespace, key])?,
    };
    Ok(n as u64)
}

/// Deletes one chunk of `what`; how many runs (or rows) went.
fn prune(c: &Connection, what: &Prune) -> Result<u64, StoreError> {
    match what {
        Prune::Runs { cutoff_id, cutoff } => {
            // Ids start with their creation time and a run ends after it
            // began, so the id range bounds the walk to old runs.
            let gone = c
                .prepare_cached(
                    "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE id < ?1
                       AND status IN ('completed', 'filtered', 'replayed') AND updated_at < ?2
                       ORDER BY id LIMIT ?3) RETURNING id, event_id",
                )?
                .query_map(params![cutoff_id, cutoff, PRUNE_CHUNK], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut steps = c.prepare_cached("DELETE FROM steps WHERE run_id = ?1")?;
            // An event goes with its last run (a replay is a later run of
            // the same event); `runs_event` makes the check a seek.
            let mut event = c.prepare_cached(
                "DELETE FROM events WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM runs WHERE event_id = ?1)",
            )?;
            for (run, ev) in &gone {
                steps.execute([run])?;
                event.execute([ev])?;
            }
            Ok(gone.len() as u64)
        }
        Prune::Deliveries { cutoff } => {
            // Delivery ids grow with time: everything below the first young
            // one is old, found without scanning the young ones.
            let young: Option<i64> = c
                .prepare_cached(
                    "SELECT id FROM deliveries WHERE received_at >= ?1 ORDER BY id LIMIT 1",
                )?
                .query_row([cutoff], |r| r.get(0))
                .optional()?;
            Ok(c.prepare_cached("DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE id < ?1 ORDER BY id LIMIT ?2)")?
                .execute(params![young.unwrap_or(i64::MAX), PRUNE_CHUNK])? as u64)
        }
        Prune::Dedupe { now } => Ok(c
            .prepare_cached("DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe WHERE expires_at < ?1 LIMIT ?2)")?
            .execute(params![now, PRUNE_CHUNK])? as u64),
        Prune::Links { now } => Ok(c
            .prepare_cached("DELETE FROM links WHERE (namespace, key) IN (SELECT namespace, key FROM links WHERE expires_at IS NOT NULL AND expires_at < ?1 LIMIT ?2)")?
            .execute(params![now, PRUNE_CHUNK])? as u64),
    }
}

/// Extends every lease `owner` holds, or (without a lease) queues its runs again.
fn leases(
    c: &Connection,
    owner: &str,
    lease: Option<Duration>,
    now: i64,
) -> Result<u64, StoreError> {
    let n = match lease {
        Some(l) => c
            .prepare_cached("UPDATE runs SET lease_until = ?1 WHERE status IN ('queued', 'running') AND status = 'running' AND lease_owner = ?2")?
            .execute(params![now + l.as_millis() as i64, owner])?,
        None => c
            .prepare_cached("UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL WHERE status IN ('queued', 'running') AND status = 'running' AND lease_owner = ?1")?
            .execute([owner])?,
    };
    Ok(n as u64)
}

/// The claimable runs, oldest first; `runs_open` and `runs_open_ordering`
/// keep it an index walk. Finding none costs one index seek: the claimer
/// asks after every run end with an ordering key, and most find nothing.
/// (A single `UPDATE … WHERE id IN (SELECT …) RETURNING` cost ~65,000
/// instructions even when empty: SQLite built temporary tables for the
/// `IN` list and the returned rows.)
const CLAIMABLE: &str = "SELECT r.seq FROM runs r
     WHERE r.status IN ('queued', 'running') AND r.status = 'queued'
       AND (r.ordering_key IS NULL OR NOT EXISTS (
           SELECT 1 FROM runs o
           WHERE o.ordering_key = r.ordering_key AND o.seq < r.seq
             AND o.status IN ('queued', 'running')))
     ORDER BY r.seq LIMIT ?1";

/// Leases one claimable run (by rowid).
const CLAIM: &str = "UPDATE runs SET status = 'running', lease_owner = ?1, lease_until = ?2,
        started_at = COALESCE(started_at, ?3), updated_at = ?3
     WHERE seq = ?4
     RETURNING id, recipe, recipe_version, event_id, started_at, ordering_key";

/// Inserts versions in the writer's transaction; known ones are kept.
fn insert_versions(c: &rusqlite::Connection, versions: &[StoredVersion]) -> Result<(), StoreError> {
    for v in versions {
        c.prepare_cached("INSERT INTO recipe_versions (recipe, version, file, source, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(recipe, version) DO NOTHING")?
            .execute(rusqlite::params![v.recipe, v.version, v.file, v.source, v.loaded_at.timestamp_millis()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A migrated store file and the writer's connection to it.
    async fn writer_conn() -> Connection {
        let path = std::env::temp_dir().join(format!("patchbay-writer-{}.db", crate::id::new_id()));
        super::super::sqlite::SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        open(&path).unwrap()
    }

    #[tokio::test]
    async fn a_run_end_adds_the_steps_not_checkpointed_and_keeps_the_others() {
        let c = writer_conn().await;
        let now = super::now_ms();
        c.execute("INSERT INTO runs (id, event_id, recipe, recipe_version, status, created_at, updated_at) VALUES ('r1', 'e1', 'r', 'v', 'running', 0, 0)", [])
            .unwrap();
        let lease = Duration::from_secs(30);
        let mut w = Writer::new(&c).unwrap();
        w.checkpoint("r1", &["first".into()], lease, now).unwrap();
        let records = ["first, as the run saw it".to_string(), "second".into()];
        w.finish("r1", &records, RunState::Completed, None, None, now)
            .unwrap();
        let steps: Vec<String> = c
            .prepare("SELECT record FROM steps WHERE run_id = 'r1' ORDER BY idx")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(steps, ["first", "second"]);
        let status: String = c
            .query_row("SELECT status FROM runs WHERE id = 'r1'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(status, "completed");
    }

    /// An ingest of one event with id `id`, and where its answer arrives.
    fn ingest(id: &str) -> (Job, oneshot::Receiver<Result<Ingested, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let event = NewEvent {
            id: id.into(),
            connection: "sp".into(),
            operation: "op".into(),
            payload: serde_json::json!({}),
            dedupe_key: None,
            runs: Vec::new(),
        };
        let job = Job::Ingest {
            delivery: None,
            events: vec![event],
            cursor: None,
            claim: None,
            reply,
        };
        (job, rx)
    }

    #[tokio::test]
    async fn a_failing_job_fails_alone_and_the_writer_goes_on() {
        let c = writer_conn().await;
        let mut w = Writer::new(&c).unwrap();
        let now = super::now_ms();
        // The same event id twice: the second insert breaks the events key.
        let jobs = vec![ingest("e1").0, ingest("e1").0, ingest("e2").0];
        assert!(matches!(w.batch(&jobs, now, false), Err(BatchError::Job)));
        assert!(c.is_autocommit(), "the failed batch was rolled back");
        let alone: Vec<bool> = jobs.iter().map(|j| w.alone(j, now).is_ok()).collect();
        assert_eq!(alone, [true, false, true]);
        let events: i64 = c
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 2);
        // A transaction left open by anything else does not wedge it either.
        c.execute_batch("BEGIN").unwrap();
        assert!(w.batch(&[ingest("e3").0], now, false).is_ok());
        assert!(c.is_autocommit());
    }

    #[tokio::test]
    async fn claims_of_different_sizes_reuse_one_compiled_statement() {
        let c = writer_conn().await;
        let now = super::now_ms();
        let mut w = Writer::new(&c).unwrap();
        for max in [256, 3, 64, 1, 200] {
            w.claim_batch("w", Duration::from_secs(30), max, now)
                .unwrap();
        }
        assert_eq!(w.claimable.get_status(StatementStatus::RePrepare), 0);
    }
}
