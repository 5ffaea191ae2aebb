//! How runs reach the worker pool. The process that accepts events claims
//! their runs in the same transaction (up to the room in its queue) and
//! hands them straight to a worker; everything else — runs waiting on an
//! ordering key, runs over the budget, polls, schedules, replays, a crashed
//! process's runs — is claimed from the store in batches by one claimer.
//! Every claim is a lease of this process, kept alive by one heartbeat.
//!
//! Backpressure: when more runs wait in the store than `--max-backlog`,
//! a new delivery waits (at most [`MAX_ADMISSION_WAIT`]) for the workers
//! to catch up before it is stored, so a sender faster than the actions
//! is slowed down instead of growing the queue without bound. Nothing is
//! refused: after the wait the delivery is accepted anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Longest a delivery waits for the backlog to shrink before it is
/// accepted anyway (senders time out after several seconds).
pub const MAX_ADMISSION_WAIT: Duration = Duration::from_secs(2);

use tokio::sync::{mpsc, Mutex, Notify};

use crate::store::{ClaimFor, ClaimedRun};

/// The queue between claims and workers.
pub struct Dispatch {
    /// This process's lease owner name.
    pub owner: String,
    /// Lease length.
    pub lease: Duration,
    tx: mpsc::UnboundedSender<ClaimedRun>,
    rx: Mutex<mpsc::UnboundedReceiver<ClaimedRun>>,
    /// Runs claimed (or reserved for a claim) and not yet started.
    waiting: AtomicUsize,
    /// Most runs claimed ahead of the workers.
    capacity: usize,
    /// Runs were left queued in the store: ingests stop claiming until the
    /// claimer has caught up, so stored runs are not overtaken forever.
    stored_first: AtomicBool,
    /// Runs this process stored queued and no claim has taken yet (other
    /// processes' runs are not counted: the figure is this process's view).
    queued: AtomicUsize,
    /// Counts [`Self::stored`] calls, so a claim can tell whether runs
    /// were stored while it ran (see [`Self::claimed`]).
    stores: AtomicU64,
    /// Most `queued` runs before deliveries wait (0: no limit).
    max_backlog: usize,
    /// Wakes deliveries waiting for the backlog to shrink.
    room_in_store: Notify,
    /// Deliveries that had to wait for the backlog (for `/metrics`).
    delayed: AtomicU64,
    /// Wakes the claimer.
    pub work: Notify,
}

impl Dispatch {
    /// A queue for `workers` workers; deliveries wait while more than
    /// `max_backlog` runs are queued in the store (0: never).
    pub fn new(workers: usize, lease: Duration, max_backlog: usize) -> Dispatch {
        let (tx, rx) = mpsc::unbounded_channel();
        Dispatch {
            owner: format!("{}-{}", std::process::id(), crate::id::new_id()),
            lease,
            tx,
            rx: Mutex::new(rx),
            waiting: AtomicUsize::new(0),
            // Enough to keep workers busy between two claimer rounds, few
            // enough to start within a fraction of the lease.
            capacity: (workers * 4).max(64),
            // A fresh process first takes what the store holds.
            stored_first: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            stores: AtomicU64::new(0),
            max_backlog,
            room_in_store: Notify::new(),
            delayed: AtomicU64::new(0),
            work: Notify::new(),
        }
    }

    /// Waits while the store's backlog is over the limit, at most
    /// [`MAX_ADMISSION_WAIT`]; a delivery that waited is counted in
    /// [`Self::delayed`].
    pub async fn admit(&self) {
        if !self.over_backlog() {
            return;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + MAX_ADMISSION_WAIT;
        while self.over_backlog() {
            let room = self.room_in_store.notified();
            tokio::pin!(room);
            // Registered before the check: a claim in between still wakes us.
            room.as_mut().enable();
            if !self.over_backlog() {
                break;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                break;
            }
        }
    }

    /// Deliveries that waited for the backlog to shrink, since start.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Runs this process stored queued that no claim has taken yet.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs claimed and waiting for a free worker.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn over_backlog(&self) -> bool {
        self.max_backlog > 0 && self.queued.load(Ordering::Acquire) >= self.max_backlog
    }

    /// Reserves room for an ingest's runs; `None` when there is none or
    /// stored runs come first. Give back what was not used with [`Self::settle`].
    pub fn reserve(&self, runs: usize) -> Option<ClaimFor> {
        if runs == 0 || self.stored_first.load(Ordering::Acquire) {
            return None;
        }
        let max = self.room().min(runs);
        if max == 0 {
            return None;
        }
        self.waiting.fetch_add(max, Ordering::AcqRel);
        Some(ClaimFor {
            owner: self.owner.clone(),
            lease: self.lease,
            max,
        })
    }

    /// Hands an ingest's claimed runs to the workers, frees the rest of its
    /// reservation, and wakes the claimer for runs the ingest left queued.
    pub fn settle(&self, reserved: Option<&ClaimFor>, claimed: Vec<ClaimedRun>, runs: u32) {
        let unused = reserved.map_or(0, |r| r.max.saturating_sub(claimed.len()));
        self.waiting.fetch_sub(unused, Ordering::AcqRel);
        let left = runs as usize - claimed.len().min(runs as usize);
        for run in claimed {
            let _ = self.tx.send(run);
        }
        if left > 0 {
            self.stored(left);
        }
    }

    /// `runs` were queued in the store (polls, schedules, leftovers of an
    /// ingest; 0 when unknown, e.g. a replay from another process).
    pub fn stored(&self, runs: usize) {
        self.queued.fetch_add(runs, Ordering::AcqRel);
        self.stores.fetch_add(1, Ordering::AcqRel);
        self.stored_first.store(true, Ordering::Release);
        self.work.notify_one();
    }

    /// Free places in the queue.
    fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.waiting.load(Ordering::Acquire))
    }

    /// How many runs the claimer should take now (0: wait).
    pub fn wanted(&self) -> usize {
        let room = self.room();
        // Claim in batches rather than one run per freed place.
        if room * 4 >= self.capacity {
            room
        } else {
            0
        }
    }

    /// A mark to take before claiming and hand to [`Self::claimed`].
    pub fn epoch(&self) -> u64 {
        self.stores.load(Ordering::Acquire)
    }

    /// Queues runs the claimer took; `wanted` is what it asked for, and
    /// `epoch` the mark taken before the claim.
    pub fn claimed(&self, runs: Vec<ClaimedRun>, wanted: usize, epoch: u64) {
        let taken = runs.len();
        // Runs stored while the claim ran may not have been seen by it:
        // only a claim that overlapped no store may say the store is empty.
        let nothing_stored_since = self.stores.load(Ordering::Acquire) == epoch;
        if taken < wanted && nothing_stored_since {
            self.stored_first.store(false, Ordering::Release);
            // Nothing claimable is left (at most runs waiting on an
            // ordering key): the count starts again from zero, so it
            // cannot drift upwards.
            self.queued.store(0, Ordering::Release);
        } else {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    Some(q.saturating_sub(taken))
                });
        }
        self.waiting.fetch_add(taken, Ordering::AcqRel);
        if !self.over_backlog() {
            self.room_in_store.notify_waiters();
        }
        for run in runs {
            let _ = self.tx.send(run);
        }
    }

    /// The next run for a worker; `None` when the queue is closed.
    pub async fn next(&self) -> Option<ClaimedRun> {
        let run = self.rx.lock().await.recv().await?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.stored_first.load(Ordering::Acquire) {
            self.work.notify_one();
        }
        Some(run)
    }

    /// A run ended: followers on its ordering key, and stored runs waiting
    /// for room, can be claimed now.
    pub fn ended(&self, run: &ClaimedRun) {
        if run.ordering_key.is_some() || self.stored_first.load(Ordering::Acquire) {
            self.work.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> ClaimedRun {
        ClaimedRun {
            id: id.into(),
            recipe: "r".into(),
            recipe_version: "v1".into(),
            payload: serde_json::Value::Null,
            ordering_key: None,
            started_at: chrono::Utc::now(),
            done: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_delivery_waits_while_the_backlog_is_over_the_limit_until_claims_make_room() {
        let d = std::sync::Arc::new(Dispatch::new(1, Duration::from_secs(60), 10));
        d.admit().await;
        assert_eq!(d.delayed(), 0, "under the limit nothing waits");
        d.stored(10);
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "at the limit a delivery waits");
        let started = std::time::Instant::now();
        d.claimed((0..5).map(|i| run(&i.to_string())).collect(), 5, d.epoch());
        assert_eq!(d.backlog(), 5);
        waiting.await.unwrap();
        assert_eq!(d.delayed(), 1, "it is counted as delayed");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_is_accepted_after_the_longest_wait_when_the_backlog_stays() {
        let d = Dispatch::new(1, Duration::from_secs(60), 10);
        d.stored(25);
        let started = tokio::time::Instant::now();
        d.admit().await;
        assert_eq!(started.elapsed(), MAX_ADMISSION_WAIT);
        assert_eq!(d.delayed(), 1);
    }

    #[tokio::test]
    async fn without_a_limit_or_once_the_store_is_drained_nothing_waits() {
        let unlimited = Dispatch::new(1, Duration::from_secs(60), 0);
        unlimited.stored(1_000_000);
        unlimited.admit().await;
        assert_eq!(unlimited.delayed(), 0);
        // A claim that finds less than it asked for resets the count: the
        // store has nothing claimable left.
        let d = Dispatch::new(1, Duration::from_secs(60), 10);
        d.stored(50);
        d.claimed(vec![run("a")], 64, d.epoch());
        assert_eq!(d.backlog(), 0);
        d.admit().await;
        assert_eq!(d.delayed(), 0);
    }

    #[test]
    fn runs_stored_while_a_claim_ran_keep_the_store_first_and_counted() {
        let d = Dispatch::new(1, Duration::from_secs(60), 10);
        d.claimed(Vec::new(), 64, d.epoch());
        assert!(
            !d.stored_first.load(Ordering::Acquire),
            "an empty store: ingests claim directly"
        );
        // A poll stores runs while a claim is in flight; the claim did not see them.
        let epoch = d.epoch();
        d.stored(5);
        d.claimed(Vec::new(), 64, epoch);
        assert!(
            d.stored_first.load(Ordering::Acquire),
            "stored runs still come first"
        );
        assert_eq!(d.backlog(), 5, "and still count towards the limit");
        // The next claim that overlaps no store finds the truth.
        d.claimed(vec![run("a")], 64, d.epoch());
        assert!(!d.stored_first.load(Ordering::Acquire));
        assert_eq!(d.backlog(), 0);
    }
}
