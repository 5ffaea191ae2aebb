//! The shared store: PostgreSQL, for several engines at once. Each event
//! is run by one engine: claims take queued runs `FOR UPDATE SKIP LOCKED`
//! under a lease, and an ordering key has one run in flight cluster-wide
//! (a run is claimable only when no earlier run of its key is open).
//! Concurrent ingests and run ends of one engine are written in batches,
//! each one statement with array parameters (group commit, as the SQLite
//! writer does), so a batch costs a handful of round trips. Committed
//! runs are announced with `NOTIFY`, which wakes idle engines. Leases
//! compare the engines' clocks: keep them in sync (NTP) to well within a
//! lease.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot, Notify};

use super::rows::{now_ms, parse_json, to_time, DEDUPE_WINDOW};
use super::versions::{Committed, RecipeVersions, StoredVersion};
use super::{
    ClaimFor, ClaimedRun, Delivery, Ingested, NewEvent, RunFilter, RunState, RunSummary, Store,
    StoreError,
};
use crate::connectors::auth::{BoxFut, Refresh, StoredTokens, TokenStore};
use crate::connectors::errors::StepError;
use crate::connectors::native::LinkStore;
use crate::interpreter::{RunReport, StepRecord};
use crate::secret::Secret;

/// The channel on which committed runs are announced.
const CHANNEL: &str = "patchbay_runs";
/// Most jobs in one transaction.
const MAX_BATCH: usize = 256;
/// Batches written at once by one engine.
const WRITERS: usize = 2;
/// A batch smaller than this waits [`COMMIT_DELAY`] for more under load:
/// round trips are paid per batch, so fuller batches cost less per event.
const MIN_BATCH: usize = 16;
/// How long a small batch waits under load.
const COMMIT_DELAY: Duration = Duration::from_micros(500);
/// Connections per engine (PostgreSQL's default `max_connections` is 100:
/// several engines, the listener and the operators' commands share it).
const POOL_SIZE: u32 = 10;
/// How often an engine queues again the runs of dead engines.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// Most rows one retention statement deletes.
const PRUNE_CHUNK: i64 = 500;
/// Key of the advisory lock migrations hold (engines may start together).
const MIGRATION_LOCK: i64 = 0x7061_7463_6862_6179; // "patchbay"

/// Schema versions, applied in order once each.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema (the same tables as SQLite's schema 4).
    "CREATE TABLE events (
        id TEXT PRIMARY KEY, connection TEXT NOT NULL, operation TEXT NOT NULL,
        payload TEXT NOT NULL, received_at BIGINT NOT NULL);
     CREATE TABLE runs (
        seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, event_id TEXT NOT NULL,
        recipe TEXT NOT NULL, recipe_version TEXT NOT NULL, ordering_key TEXT,
        status TEXT NOT NULL, lease_owner TEXT, lease_until BIGINT, started_at BIGINT,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, failed_step TEXT, error TEXT);
     CREATE INDEX runs_open ON runs (status, seq) WHERE status IN ('queued', 'running');
     CREATE INDEX runs_open_ordering ON runs (ordering_key, seq) WHERE status IN ('queued', 'running');
     CREATE INDEX runs_failed ON runs (seq) WHERE status = 'failed';
     CREATE INDEX runs_recipe ON runs (recipe, seq);
     CREATE INDEX runs_event ON runs (event_id);
     CREATE TABLE steps (run_id TEXT NOT NULL, idx INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (run_id, idx));
     CREATE TABLE dedupe (key TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);
     CREATE TABLE links (namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        expires_at BIGINT, PRIMARY KEY (namespace, key));
     CREATE TABLE tokens (connection TEXT PRIMARY KEY, access_token TEXT NOT NULL,
        refresh_token TEXT, expires_at BIGINT);
     CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE deliveries (id BIGSERIAL PRIMARY KEY, connection TEXT NOT NULL,
        status INTEGER NOT NULL, outcome TEXT NOT NULL, events INTEGER NOT NULL,
        received_at BIGINT NOT NULL);
     CREATE INDEX deliveries_received ON deliveries (received_at);
     CREATE TABLE recipe_versions (recipe TEXT NOT NULL, version TEXT NOT NULL,
        file TEXT NOT NULL, source TEXT NOT NULL, loaded_at BIGINT NOT NULL,
        PRIMARY KEY (recipe, version));
     CREATE TABLE engines (owner TEXT PRIMARY KEY, alive_until BIGINT NOT NULL)",
    // 2: a batch of ingests and run ends in one call (see `batch`).
    WRITE_FUNCTION,
];

/// Writes one batch of ingests and run ends, deciding on the server what
/// the engine decided between round trips before: which events are new
/// (dedupe keys; the first of a key in the batch takes it), and which runs
/// the ingesting engine claims (a run whose ordering key has an open run,
/// anywhere or earlier in the batch, stays queued; the keys are locked, in
/// one order, until the commit). One call is one round trip and, outside
/// a transaction, one commit.
///
/// Arrays: events (`e_`, each with its job's 1-based index), runs (`r_`,
/// each with its event's index), per job the claim asked for (`j_`: owner
/// or null, most runs, lease end), deliveries (`d_`), checkpointed steps
/// (`s_`) and run ends (`f_`). Returns which events were stored and which
/// runs were claimed.
const WRITE_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION patchbay_write(
    p_now BIGINT, p_dedupe_until BIGINT, p_channel TEXT,
    e_job INT[], e_id TEXT[], e_conn TEXT[], e_op TEXT[], e_payload TEXT[], e_key TEXT[],
    r_ev INT[], r_id TEXT[], r_recipe TEXT[], r_ver TEXT[], r_key TEXT[],
    j_owner TEXT[], j_max INT[], j_until BIGINT[],
    d_conn TEXT[], d_status INT[], d_outcome TEXT[], d_events INT[], d_at BIGINT[],
    s_run TEXT[], s_idx INT[], s_record TEXT[],
    f_id TEXT[], f_status TEXT[], f_step TEXT[], f_error TEXT[],
    OUT ev_ok BOOLEAN[], OUT run_owned BOOLEAN[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_fresh TEXT[] := '{}';
    v_taken TEXT[] := '{}';
    v_lock TEXT[] := '{}';
    v_busy TEXT[] := '{}';
    v_claims INT[] := array_fill(0, ARRAY[cardinality(j_max)]);
    v_owner TEXT[] := array_fill(NULL::TEXT, ARRAY[cardinality(r_id)]);
    v_until BIGINT[] := array_fill(NULL::BIGINT, ARRAY[cardinality(r_id)]);
    v_queued BOOLEAN := false;
    v_i INT;
    v_job INT;
    v_key TEXT;
BEGIN
    ev_ok := array_fill(false, ARRAY[cardinality(e_id)]);
    run_owned := array_fill(false, ARRAY[cardinality(r_id)]);
    IF EXISTS (SELECT 1 FROM unnest(e_key) AS x WHERE x IS NOT NULL) THEN
        WITH ins AS (
            INSERT INTO dedupe (key, expires_at)
            SELECT DISTINCT x, p_dedupe_until FROM unnest(e_key) AS x WHERE x IS NOT NULL
            ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
            WHERE dedupe.expires_at < p_now
            RETURNING dedupe.key)
        SELECT COALESCE(array_agg(ins.key), '{}') INTO v_fresh FROM ins;
    END IF;
    FOR v_i IN 1..cardinality(e_id) LOOP
        v_key := e_key[v_i];
        IF v_key IS NULL THEN
            ev_ok[v_i] := true;
        ELSIF v_key = ANY(v_fresh) AND NOT v_key = ANY(v_taken) THEN
            ev_ok[v_i] := true;
            v_taken := v_taken || v_key;
        END IF;
    END LOOP;
    SELECT COALESCE(array_agg(DISTINCT r_key[x]), '{}') INTO v_lock
    FROM generate_series(1, cardinality(r_id)) AS x
    WHERE r_key[x] IS NOT NULL AND ev_ok[r_ev[x]] AND j_owner[e_job[r_ev[x]]] IS NOT NULL;
    IF cardinality(v_lock) > 0 THEN
        PERFORM pg_advisory_xact_lock(h) FROM (
            SELECT hashtextextended('patchbay.key.' || x, 0) AS h FROM unnest(v_lock) AS x
            ORDER BY 1) AS keys;
        -- A new snapshot (this function is volatile): runs committed while
        -- the locks were awaited are seen.
        SELECT COALESCE(array_agg(DISTINCT runs.ordering_key), '{}') INTO v_busy FROM runs
        WHERE runs.ordering_key = ANY(v_lock) AND runs.status IN ('queued', 'running');
    END IF;
    FOR v_i IN 1..cardinality(r_id) LOOP
        CONTINUE WHEN NOT ev_ok[r_ev[v_i]];
        v_job := e_job[r_ev[v_i]];
        v_key := r_key[v_i];
        IF v_key IS NOT NULL AND v_key = ANY(v_busy) THEN
            v_queued := true;
            CONTINUE;
        END IF;
        IF v_key IS NOT NULL THEN
            v_busy := v_busy || v_key;
        END IF;
        IF j_owner[v_job] IS NOT NULL AND v_claims[v_job] < j_max[v_job] THEN
            run_owned[v_i] := true;
            v_claims[v_job] := v_claims[v_job] + 1;
            v_owner[v_i] := j_owner[v_job];
            v_until[v_i] := j_until[v_job];
        ELSE
            v_queued := true;
        END IF;
    END LOOP;
    WITH ev AS (
        INSERT INTO events (id, connection, operation, payload, received_at)
        SELECT u.id, u.c, u.o, u.p, p_now
        FROM unnest(e_id, e_conn, e_op, e_payload) WITH ORDINALITY AS u(id, c, o, p, n)
        WHERE ev_ok[u.n]),
    r AS (
        INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status,
            lease_owner, lease_until, started_at, created_at, updated_at)
        SELECT u.id, e_id[u.ev], u.recipe, u.ver, u.okey,
            CASE WHEN u.owner IS NULL THEN 'queued' ELSE 'running' END,
            u.owner, u.until, CASE WHEN u.owner IS NULL THEN NULL ELSE p_now END, p_now, p_now
        FROM unnest(r_id, r_ev, r_recipe, r_ver, r_key, v_owner, v_until)
            WITH ORDINALITY AS u(id, ev, recipe, ver, okey, owner, until, n)
        WHERE ev_ok[u.ev]
        -- In array order, so `seq` follows arrival.
        ORDER BY u.n),
    d AS (
        INSERT INTO deliveries (connection, status, outcome, events, received_at)
        SELECT * FROM unnest(d_conn, d_status, d_outcome, d_events, d_at)),
    s AS (
        -- Steps checkpointed before stay as they are.
        INSERT INTO steps (run_id, idx, record)
        SELECT * FROM unnest(s_run, s_idx, s_record) ON CONFLICT DO NOTHING)
    UPDATE runs SET status = u.status, failed_step = u.step, error = u.error,
        lease_owner = NULL, lease_until = NULL, updated_at = p_now
    FROM unnest(f_id, f_status, f_step, f_error) AS u(id, status, step, error)
    WHERE runs.id = u.id;
    IF v_queued THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
END
$fn$"#;

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
    /// Poked when another engine (or this one) announced runs.
    wake: Arc<Notify>,
    /// The listener and the reaper; they end with the store.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A batched write.
enum Job {
    Ingest {
        delivery: Option<Delivery>,
        events: Vec<NewEvent>,
        claim: Option<ClaimFor>,
        reply: oneshot::Sender<Result<Ingested, StoreError>>,
    },
    Finish {
        run_id: String,
        records: Vec<String>,
        status: RunState,
        failed_step: Option<String>,
        error: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl PgStore {
    /// Connects to `postgres://…` and migrates the database.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let (url, pool_size) = pool_size(url)?;
        let opts = PgConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Url(format!("{}: {e}", super::redact_url(&url))))?
            // The statements are few and prepared once per connection;
            // planning the batch statement anew for each batch (what the
            // server does for its first executions, and whenever a custom
            // plan looks cheaper) cost more than running it.
            .options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(4096);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks: Vec<_> = (0..WRITERS)
            .map(|_| tokio::spawn(write_loop(pool.clone(), rx.clone())))
            .collect();
        tasks.push(tokio::spawn(listen(pool.clone(), wake.clone())));
        tasks.push(tokio::spawn(reap_loop(pool.clone())));
        Ok(PgStore {
            pool,
            writer: tx,
            wake,
            tasks,
        })
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        self.writer.send(job).await.map_err(|_| super::closed())
    }
}

/// Takes patchbay's own `pool_size=N` parameter (connections per engine,
/// default [`POOL_SIZE`]) out of the URL.
fn pool_size(url: &str) -> Result<(String, u32), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), POOL_SIZE));
    };
    let mut size = POOL_SIZE;
    let mut rest = Vec::new();
    for param in query.split('&') {
        match param.strip_prefix("pool_size=") {
            Some(n) => {
                size = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    StoreError::Url(format!(
                        "{}: pool_size must be a positive number",
                        super::redact_url(url)
                    ))
                })?
            }
            None => rest.push(param),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, size))
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i32 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(&mut *tx)
        .await?
        .try_get("v")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        // Several statements in one simple query (a function body has `;`).
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(i as i32 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Wakes this engine's claimer whenever a run is announced. A lost
/// listener connection is opened again; the claimer's idle poll covers
/// the gap.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for runs of other engines; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for runs of other engines; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while listener.recv().await.is_ok() {
            wake.notify_one();
        }
    }
}

/// Queues again the runs whose lease expired (their engine died).
async fn reap_loop(pool: PgPool) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let r = sqlx::query(
            "WITH r AS (UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL
                 WHERE status IN ('queued', 'running') AND status = 'running' AND lease_until < $1
                 RETURNING 1)
             SELECT COUNT(*) AS n, pg_notify($2, '') FROM r HAVING COUNT(*) > 0",
        )
        .bind(now_ms())
        .bind(CHANNEL)
        .fetch_optional(&pool)
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "lease sweep failed");
        }
    }
}

/// Applies batches of ingests and run ends until the store is dropped.
/// [`WRITERS`] of these share the queue: while one batch waits for its
/// commit to reach the server's disk, the next is being written, and the
/// server flushes concurrent commits together.
async fn write_loop(pool: PgPool, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let mut busy = false;
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut jobs = vec![first];
            let gather = |rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>| {
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
            };
            gather(&mut rx, &mut jobs);
            if busy && jobs.len() < MIN_BATCH {
                tokio::time::sleep(COMMIT_DELAY).await;
                gather(&mut rx, &mut jobs);
            }
            busy = jobs.len() > 1;
            tracing::trace!(jobs = jobs.len(), "store batch");
            jobs
        };
        match batch(&pool, &jobs).await {
            Ok(done) => jobs
                .into_iter()
                .zip(done)
                .for_each(|(j, d)| reply(j, Ok(d))),
            Err(_) if jobs.len() > 1 => {
                // One bad job must not fail the others: each alone.
                for job in jobs {
                    let r = batch(&pool, std::slice::from_ref(&job)).await;
                    reply(job, r.map(|mut d| d.pop().unwrap_or_default()));
                }
            }
            Err(e) => jobs.into_iter().for_each(|j| reply(j, Err(e.clone()))),
        }
    }
}

fn reply(job: Job, r: Result<Ingested, StoreError>) {
    match job {
        Job::Ingest { reply, .. } => drop(reply.send(r)),
        Job::Finish { reply, .. } => drop(reply.send(r.map(|_| ()))),
    }
}

/// Every job in one call of `patchbay_write` (one round trip, one commit);
/// per job, what its caller gets (a run end gets an empty [`Ingested`]).
async fn batch(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Ingested>, StoreError> {
    let now = now_ms();
    let (mut e_job, mut e_id, mut e_conn, mut e_op, mut e_payload, mut e_key) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut r_ev, mut r_id, mut r_recipe, mut r_ver, mut r_key) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut j_owner, mut j_max, mut j_until) = (Vec::new(), Vec::new(), Vec::new());
    let (mut d_conn, mut d_status, mut d_outcome, mut d_events, mut d_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut s_run, mut s_idx, mut s_record) = (Vec::new(), Vec::new(), Vec::new());
    let (mut f_id, mut f_status, mut f_step, mut f_error) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (job_no, job) in jobs.iter().enumerate() {
        let claim = match job {
            Job::Ingest { claim, .. } => claim.as_ref(),
            Job::Finish { .. } => None,
        };
        j_owner.push(claim.map(|c| c.owner.clone()));
        j_max.push(claim.map_or(0, |c| c.max.min(i32::MAX as usize) as i32));
        j_until.push(claim.map_or(0, |c| now + c.lease.as_millis() as i64));
        match job {
            Job::Ingest {
                delivery, events, ..
            } => {
                for ev in events {
                    e_job.push(job_no as i32 + 1);
                    e_id.push(ev.id.to_string());
                    e_conn.push(ev.connection.clone());
                    e_op.push(ev.operation.clone());
                    e_payload.push(ev.payload.to_string());
                    e_key.push(ev.dedupe_key.clone());
                    for run in &ev.runs {
                        r_ev.push(e_id.len() as i32);
                        r_id.push(run.id.to_string());
                        r_recipe.push(run.recipe.clone());
                        r_ver.push(run.recipe_version.clone());
                        r_key.push(run.ordering_key.clone());
                    }
                }
                if let Some(d) = delivery {
                    d_conn.push(d.connection.clone());
                    d_status.push(d.status as i32);
                    d_outcome.push(d.outcome.clone());
                    d_events.push(d.events as i32);
                    d_at.push(d.received_at.timestamp_millis());
                }
            }
            Job::Finish {
                run_id,
                records,
                status,
                failed_step,
                error,
                ..
            } => {
                for (i, r) in records.iter().enumerate() {
                    s_run.push(run_id.clone());
                    s_idx.push(i as i32);
                    s_record.push(r.clone());
                }
                f_id.push(run_id.clone());
                f_status.push(status.as_str());
                f_step.push(failed_step.clone());
                f_error.push(error.clone());
            }
        }
    }
    let row = sqlx::query(
        "SELECT ev_ok, run_owned FROM patchbay_write($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26,
             $27, $28, $29)",
    )
    .bind(now)
    .bind(now + DEDUPE_WINDOW.as_millis() as i64)
    .bind(CHANNEL)
    .bind(&e_job)
    .bind(&e_id)
    .bind(&e_conn)
    .bind(&e_op)
    .bind(&e_payload)
    .bind(&e_key)
    .bind(&r_ev)
    .bind(&r_id)
    .bind(&r_recipe)
    .bind(&r_ver)
    .bind(&r_key)
    .bind(&j_owner)
    .bind(&j_max)
    .bind(&j_until)
    .bind(&d_conn)
    .bind(&d_status)
    .bind(&d_outcome)
    .bind(&d_events)
    .bind(&d_at)
    .bind(&s_run)
    .bind(&s_idx)
    .bind(&s_record)
    .bind(&f_id)
    .bind(&f_status)
    .bind(&f_step)
    .bind(&f_error)
    .fetch_one(pool)
    .await?;
    let ev_ok: Vec<bool> = row.try_get("ev_ok")?;
    let run_owned: Vec<bool> = row.try_get("run_owned")?;
    if ev_ok.len() != e_id.len() || run_owned.len() != r_id.len() {
        return Err(StoreError::Corrupt {
            what: "patchbay_write",
            detail: "answer does not match the batch".into(),
        });
    }
    // The answers, job by job, in the order the arrays were filled.
    let (mut ev_no, mut run_no) = (0, 0);
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut n = Ingested::default();
        if let Job::Ingest { events, .. } = job {
            for ev in events {
                let ok = ev_ok[ev_no];
                ev_no += 1;
                if !ok {
                    n.duplicates += 1;
                    run_no += ev.runs.len();
                    continue;
                }
                n.events += 1;
                for run in &ev.runs {
                    n.runs += 1;
                    if run_owned[run_no] {
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
                    run_no += 1;
                }
            }
        }
        done.push(n);
    }
    Ok(done)
}

/// Announces, at commit, that runs can be claimed.
async fn notify(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn summary(row: &PgRow) -> Result<RunSummary, StoreError> {
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

const RUN_COLUMNS: &str =
    "id, recipe, recipe_version, status, event_id, created_at, updated_at, failed_step, error";

/// Takes up to `$1` of the oldest claimable runs and returns each with its
/// payload and checkpointed steps, in one statement. Runs another engine
/// is claiming are skipped, not waited for; a run whose key has an
/// earlier open run (on any engine) is not claimable.
const CLAIM: &str = "WITH c AS (
        SELECT r.seq FROM runs r
        WHERE r.status IN ('queued', 'running') AND r.status = 'queued'
          AND (r.ordering_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM runs o WHERE o.ordering_key = r.ordering_key AND o.seq < r.seq
                AND o.status IN ('queued', 'running')))
        ORDER BY r.seq LIMIT $1 FOR UPDATE SKIP LOCKED),
     u AS (
        UPDATE runs SET status = 'running', lease_owner = $2, lease_until = $3,
            started_at = COALESCE(started_at, $4), updated_at = $4
        FROM c WHERE runs.seq = c.seq
        RETURNING runs.seq, runs.id, runs.recipe, runs.recipe_version, runs.event_id,
            runs.started_at, runs.ordering_key)
     SELECT u.id, u.recipe, u.recipe_version, u.started_at, u.ordering_key, e.payload,
        (SELECT COALESCE(json_agg(s.record::json ORDER BY s.idx), '[]'::json)::text
           FROM steps s WHERE s.run_id = u.id) AS steps
     FROM u JOIN events e ON e.id = u.event_id ORDER BY u.seq";

impl Store for PgStore {
    fn ingest(
        &self,
        delivery: Delivery,
        events: Vec<NewEvent>,
        claim: Option<ClaimFor>,
    ) -> BoxFut<'_, Result<Ingested, StoreError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Ingest {
                delivery: Some(delivery),
                events,
                claim,
                reply,
            })
            .await?;
            rx.await.unwrap_or_else(|_| Err(super::closed()))
        })
    }

    fn reject(&self, delivery: Delivery) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move { self.ingest(delivery, Vec::new(), None).await.map(|_| ()) })
    }

    fn claim<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
        max: usize,
    ) -> BoxFut<'a, Result<Vec<ClaimedRun>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let rows = sqlx::query(CLAIM)
                .bind(max as i64)
                .bind(owner)
                .bind(now + lease.as_millis() as i64)
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    let payload: String = r.try_get("payload")?;
                    let steps: String = r.try_get("steps")?;
                    Ok(ClaimedRun {
                        id: r.try_get("id")?,
                        recipe: r.try_get("recipe")?,
                        recipe_version: r.try_get("recipe_version")?,
                        payload: parse_json("events.payload", &payload)?,
                        ordering_key: r.try_get("ordering_key")?,
                        started_at: to_time(r.try_get("started_at")?),
                        done: serde_json::from_str(&steps).map_err(|e| StoreError::Corrupt {
                            what: "steps.record",
                            detail: e.to_string(),
                        })?,
                    })
                })
                .collect()
        })
    }

    fn heartbeat<'a>(
        &'a self,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("UPDATE runs SET lease_until = $1 WHERE status IN ('queued', 'running') AND status = 'running' AND lease_owner = $2")
                .bind(now_ms() + lease.as_millis() as i64)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, owner: &'a str) -> BoxFut<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let n = sqlx::query("UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL WHERE status IN ('queued', 'running') AND status = 'running' AND lease_owner = $1")
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                notify(&mut tx).await?;
            }
            sqlx::query("DELETE FROM engines WHERE owner = $1")
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn checkpoint<'a>(
        &'a self,
        run_id: &'a str,
        records: &'a [StepRecord],
        lease: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let records: Vec<String> = records
                .iter()
                .map(|r| serde_json::to_string(r).expect("records serialize"))
                .collect();
            let mut tx = self.pool.begin().await?;
            if !records.is_empty() {
                sqlx::query(
                    "INSERT INTO steps (run_id, idx, record)
                     SELECT $1, (SELECT COALESCE(MAX(idx) + 1, 0) FROM steps WHERE run_id = $1) + u.n - 1, u.record
                     FROM UNNEST($2::text[]) WITH ORDINALITY AS u(record, n)",
                )
                .bind(run_id)
                .bind(&records)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE runs SET lease_until = $1, updated_at = $2 WHERE id = $3 AND status = 'running'")
                .bind(now + lease.as_millis() as i64)
                .bind(now)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn finish<'a>(&'a self, report: &'a RunReport) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let end = super::RunEnd::of(report);
            let (reply, rx) = oneshot::channel();
            self.send(Job::Finish {
                run_id: report.run_id.to_string(),
                records: end.records,
                status: end.status,
                failed_step: end.failed_step,
                error: end.error,
                reply,
            })
            .await?;
            rx.await.unwrap_or_else(|_| Err(super::closed()))
        })
    }

    fn runs(&self, filter: RunFilter) -> BoxFut<'_, Result<Vec<RunSummary>, StoreError>> {
        Box::pin(async move {
            let like = filter.like();
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR recipe = $1)
                   AND ($2::text IS NULL OR status = $2)
                   AND ($4::text IS NULL OR seq < (SELECT seq FROM runs WHERE id = $4))
                   AND ($5::bigint IS NULL OR created_at >= $5) AND ($6::bigint IS NULL OR created_at < $6)
                   AND ($7::text IS NULL OR id ILIKE $7 OR recipe ILIKE $7 OR failed_step ILIKE $7
                        OR error ILIKE $7 OR event_id IN (SELECT id FROM events WHERE payload ILIKE $7))
                 ORDER BY seq DESC LIMIT $3"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(filter.recipe)
                .bind(filter.status.map(RunState::as_str))
                .bind(if filter.limit == 0 { 100 } else { filter.limit } as i64)
                .bind(filter.before)
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
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            let texts: Vec<String> =
                sqlx::query_scalar("SELECT record FROM steps WHERE run_id = $1 ORDER BY idx")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?;
            let records = texts
                .iter()
                .map(|t| {
                    serde_json::from_str(t).map_err(|e| StoreError::Corrupt {
                        what: "steps.record",
                        detail: e.to_string(),
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Some((summary(&row)?, records)))
        })
    }

    fn event_payload<'a>(
        &'a self,
        id: &'a crate::id::EventId,
    ) -> BoxFut<'a, Result<Option<Value>, StoreError>> {
        Box::pin(async move {
            let text: Option<String> =
                sqlx::query_scalar("SELECT payload FROM events WHERE id = $1")
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
            let mut tx = self.pool.begin().await?;
            // The row lock makes two operators' replays of one run one replay.
            let row = sqlx::query("SELECT event_id, recipe, ordering_key FROM runs WHERE id = $1 AND status = 'failed' FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let new_id = super::id::new_id();
            let now = now_ms();
            sqlx::query("INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6)")
                .bind(&new_id)
                .bind(row.try_get::<String, _>("event_id")?)
                .bind(row.try_get::<String, _>("recipe")?)
                .bind(recipe_version)
                .bind(row.try_get::<Option<String>, _>("ordering_key")?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE runs SET status = 'replayed', updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            notify(&mut tx).await?;
            tx.commit().await?;
            Ok(Some(new_id))
        })
    }

    fn deliveries(&self, limit: u32) -> BoxFut<'_, Result<Vec<Delivery>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT connection, status, outcome, events, received_at FROM deliveries ORDER BY id DESC LIMIT $1")
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Delivery {
                        connection: r.try_get("connection")?,
                        status: r.try_get::<i32, _>("status")? as u16,
                        outcome: r.try_get("outcome")?,
                        events: r.try_get::<i32, _>("events")? as u32,
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
            let cutoff_id = super::id::id_prefix(cutoff);
            let mut pruned = 0;
            loop {
                // A chunk of old finished runs (dead letters stay), their
                // steps, and each event with its last run.
                let mut tx = self.pool.begin().await?;
                let gone: Vec<(String, String)> = sqlx::query_as(
                    "DELETE FROM runs WHERE seq IN (SELECT seq FROM runs WHERE id < $1
                       AND status IN ('completed', 'filtered', 'replayed') AND updated_at < $2
                       ORDER BY seq LIMIT $3) RETURNING id, event_id",
                )
                .bind(&cutoff_id)
                .bind(cutoff)
                .bind(PRUNE_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
                let (run_ids, event_ids): (Vec<String>, Vec<String>) = gone.into_iter().unzip();
                sqlx::query("DELETE FROM steps WHERE run_id = ANY($1)")
                    .bind(&run_ids)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM events e WHERE e.id = ANY($1) AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id)")
                    .bind(&event_ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                pruned += run_ids.len() as u64;
                if (run_ids.len() as i64) < PRUNE_CHUNK {
                    break;
                }
            }
            for sql in [
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE received_at < $1 LIMIT $2)",
                "DELETE FROM dedupe WHERE key IN (SELECT key FROM dedupe WHERE expires_at < $3 LIMIT $2)",
                "DELETE FROM links WHERE (namespace, key) IN (SELECT namespace, key FROM links WHERE expires_at IS NOT NULL AND expires_at < $3 LIMIT $2)",
                "DELETE FROM engines WHERE alive_until < $3 - 3600000 AND $1 = $1 AND $2 = $2",
            ] {
                loop {
                    let n = sqlx::query(sql)
                        .bind(cutoff)
                        .bind(PRUNE_CHUNK)
                        .bind(now)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    if (n as i64) < PRUNE_CHUNK {
                        break;
                    }
                }
            }
            Ok(pruned)
        })
    }

    fn cursor<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
    }

    fn ingest_with_cursor<'a>(
        &'a self,
        name: &'a str,
        expected: Option<&'a str>,
        value: &'a str,
        events: Vec<NewEvent>,
    ) -> BoxFut<'a, Result<Ingested, StoreError>> {
        Box::pin(async move {
            // Compare-and-set in its own transaction: a second engine's
            // update waits on the row and then finds the value changed.
            let mut tx = self.pool.begin().await?;
            let moved = match expected {
                Some(old) => sqlx::query("UPDATE cursors SET value = $3 WHERE name = $1 AND value = $2")
                    .bind(name)
                    .bind(old)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?,
                None => sqlx::query("INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?,
            }
            .rows_affected();
            if moved == 0 {
                return Err(StoreError::Conflict(format!(
                    "cursor `{name}` was moved by another engine"
                )));
            }
            let mut n = Ingested::default();
            if !events.is_empty() {
                // The events go in the cursor's transaction; dedupe keys
                // still guard against a record seen through another path.
                n = ingest_in(&mut tx, &events).await?;
                if n.runs > 0 {
                    notify(&mut tx).await?;
                }
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    fn ping(&self) -> BoxFut<'_, bool> {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&self.pool).await.is_ok() })
    }

    fn woken(&self) -> BoxFut<'_, ()> {
        Box::pin(self.wake.notified())
    }

    fn live_engines<'a>(
        &'a self,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let n: i64 = sqlx::query_scalar(
                "WITH me AS (INSERT INTO engines (owner, alive_until) VALUES ($1, $2)
                    ON CONFLICT (owner) DO UPDATE SET alive_until = excluded.alive_until)
                 SELECT COUNT(*) + 1 FROM engines WHERE alive_until > $3 AND owner <> $1",
            )
            .bind(owner)
            .bind(now + ttl.as_millis() as i64)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            Ok(n.max(1) as usize)
        })
    }
}

/// Events and their runs (all queued) inside `tx`, skipping duplicates.
async fn ingest_in(
    tx: &mut Transaction<'_, Postgres>,
    events: &[NewEvent],
) -> Result<Ingested, StoreError> {
    let now = now_ms();
    let mut n = Ingested::default();
    for ev in events {
        if let Some(key) = &ev.dedupe_key {
            let fresh = sqlx::query(
                "INSERT INTO dedupe (key, expires_at) VALUES ($1, $2) ON CONFLICT (key)
                 DO UPDATE SET expires_at = excluded.expires_at WHERE dedupe.expires_at < $3",
            )
            .bind(key)
            .bind(now + DEDUPE_WINDOW.as_millis() as i64)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if fresh == 0 {
                n.duplicates += 1;
                continue;
            }
        }
        sqlx::query("INSERT INTO events (id, connection, operation, payload, received_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&ev.id)
            .bind(&ev.connection)
            .bind(&ev.operation)
            .bind(ev.payload.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        n.events += 1;
        for run in &ev.runs {
            sqlx::query("INSERT INTO runs (id, event_id, recipe, recipe_version, ordering_key, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6)")
                .bind(&run.id)
                .bind(&ev.id)
                .bind(&run.recipe)
                .bind(&run.recipe_version)
                .bind(&run.ordering_key)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            n.runs += 1;
        }
    }
    Ok(n)
}

impl LinkStore for PgStore {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Value,
        ttl: Option<Duration>,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let expires_at =
                ttl.map(|t| now_ms().saturating_add(t.as_millis().min(i64::MAX as u128) as i64));
            sqlx::query("INSERT INTO links (namespace, key, value, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
                .bind(namespace)
                .bind(key)
                .bind(value.to_string())
                .bind(expires_at)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::from(e).to_string())
        })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<Value>, String>> {
        Box::pin(async move {
            let text: Option<String> = sqlx::query_scalar("SELECT value FROM links WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > $3)")
                .bind(namespace)
                .bind(key)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| StoreError::from(e).to_string())?;
            text.map(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                .transpose()
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFut<'a, Result<bool, String>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM links WHERE namespace = $1 AND key = $2")
                .bind(namespace)
                .bind(key)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected() > 0)
                .map_err(|e| StoreError::from(e).to_string())
        })
    }
}

/// Reads a connection's tokens through any executor.
async fn load_tokens<'e, E>(e: E, connection: &str) -> Result<Option<StoredTokens>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row: Option<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT access_token, refresh_token, expires_at FROM tokens WHERE connection = $1",
    )
    .bind(connection)
    .fetch_optional(e)
    .await?;
    Ok(row.map(|(a, r, x)| StoredTokens {
        access_token: Secret::new(a),
        refresh_token: r.map(Secret::new),
        expires_at: x,
    }))
}

/// Saves a connection's tokens through any executor.
async fn save_tokens<'e, E>(e: E, connection: &str, t: &StoredTokens) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query("INSERT INTO tokens (connection, access_token, refresh_token, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (connection) DO UPDATE SET access_token = excluded.access_token, refresh_token = excluded.refresh_token, expires_at = excluded.expires_at")
        .bind(connection)
        .bind(t.access_token.expose())
        .bind(t.refresh_token.as_ref().map(|s| s.expose()))
        .bind(t.expires_at)
        .execute(e)
        .await?;
    Ok(())
}

impl TokenStore for PgStore {
    fn load<'a>(&'a self, connection: &'a str) -> BoxFut<'a, Option<StoredTokens>> {
        Box::pin(async move {
            load_tokens(&self.pool, connection)
                .await
                .inspect_err(
                    |e| tracing::error!(connection, error = %e, "could not read stored tokens"),
                )
                .ok()
                .flatten()
        })
    }

    fn save<'a>(&'a self, connection: &'a str, tokens: StoredTokens) -> BoxFut<'a, ()> {
        Box::pin(async move {
            if let Err(e) = save_tokens(&self.pool, connection, &tokens).await {
                tracing::error!(connection, error = %e, "could not save refreshed tokens");
            }
        })
    }

    /// Holds a transaction-scoped advisory lock on the connection while
    /// `refresh` runs: an engine that waited reads the tokens the first
    /// one saved instead of spending the rotated refresh token again.
    fn exclusive<'a>(
        &'a self,
        connection: &'a str,
        refresh: Refresh<'a>,
    ) -> BoxFut<'a, Result<StoredTokens, StepError>> {
        Box::pin(async move {
            let unavailable = |e: StoreError| {
                StepError::new(
                    crate::catalog::ErrorKind::Network,
                    format!("cannot lock the tokens of `{connection}` in the store: {e}"),
                )
            };
            let mut tx = self.pool.begin().await.map_err(|e| unavailable(e.into()))?;
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('patchbay.tokens.' || $1, 0))",
            )
            .bind(connection)
            .execute(&mut *tx)
            .await
            .map_err(|e| unavailable(e.into()))?;
            let stored = load_tokens(&mut *tx, connection)
                .await
                .map_err(unavailable)?;
            let (tokens, save) = refresh(stored).await?;
            if save {
                save_tokens(&mut *tx, connection, &tokens)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(|e| unavailable(e.into()))?;
            Ok(tokens)
        })
    }
}

impl RecipeVersions for PgStore {
    fn save_versions<'a>(
        &'a self,
        versions: &'a [StoredVersion],
    ) -> BoxFut<'a, Result<Committed, StoreError>> {
        Box::pin(async move {
            // Written before this returns, so before any event naming them.
            let mut tx = self.pool.begin().await?;
            for v in versions {
                sqlx::query("INSERT INTO recipe_versions (recipe, version, file, source, loaded_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (recipe, version) DO NOTHING")
                    .bind(&v.recipe)
                    .bind(&v.version)
                    .bind(&v.file)
                    .bind(&v.source)
                    .bind(v.loaded_at.timestamp_millis())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Box::pin(async { Ok(()) }) as Committed)
        })
    }

    fn version<'a>(
        &'a self,
        recipe: &'a str,
        version: &'a str,
    ) -> BoxFut<'a, Result<Option<StoredVersion>, StoreError>> {
        Box::pin(async move {
            let row: Option<(String, String, i64)> = sqlx::query_as("SELECT file, source, loaded_at FROM recipe_versions WHERE recipe = $1 AND version = $2")
                .bind(recipe)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|(file, source, at)| StoredVersion {
                recipe: recipe.to_string(),
                version: version.to_string(),
                file,
                source,
                loaded_at: to_time(at),
            }))
        })
    }

    fn history<'a>(
        &'a self,
        recipe: &'a str,
    ) -> BoxFut<'a, Result<Vec<StoredVersion>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query_as("SELECT version, file, source, loaded_at FROM recipe_versions WHERE recipe = $1 ORDER BY loaded_at DESC")
                .bind(recipe)
                .fetch_all(&self.pool)
                .await?;
            Ok(super::versions::from_rows(recipe, rows))
        })
    }
}
