//! How runs reach the worker pool. The process that accepts events claims
//! their runs in the same transaction (up to the room in its queue) and
//! hands them straight to a worker; everything else — runs waiting on an
//! ordering key, runs over the budget, polls, schedules, replays, a crashed
//! process's runs — is claimed from the store in batches by one claimer.
//! Every claim is a lease of this process, kept alive by one heartbeat.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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
    backlog: AtomicBool,
    /// Wakes the claimer.
    pub work: Notify,
}

impl Dispatch {
    /// A queue for `workers` workers.
    pub fn new(workers: usize, lease: Duration) -> Dispatch {
        let (tx, rx) = mpsc::unbounded_channel();
        Dispatch {
            owner: format!("{}-{}", std::process::id(), crate::service::new_id()),
            lease,
            tx,
            rx: Mutex::new(rx),
            waiting: AtomicUsize::new(0),
            // Enough to keep workers busy between two claimer rounds, few
            // enough to start within a fraction of the lease.
            capacity: (workers * 4).max(64),
            // A fresh process first takes what the store holds.
            backlog: AtomicBool::new(true),
            work: Notify::new(),
        }
    }

    /// Reserves room for an ingest's runs; `None` when there is none or
    /// stored runs come first. Give back what was not used with [`Self::settle`].
    pub fn reserve(&self, runs: usize) -> Option<ClaimFor> {
        if runs == 0 || self.backlog.load(Ordering::Acquire) {
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
            self.stored();
        }
    }

    /// Runs were queued in the store (polls, schedules, replays, leftovers).
    pub fn stored(&self) {
        self.backlog.store(true, Ordering::Release);
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

    /// Queues runs the claimer took; `wanted` is what it asked for.
    pub fn claimed(&self, runs: Vec<ClaimedRun>, wanted: usize) {
        if runs.len() < wanted {
            self.backlog.store(false, Ordering::Release);
        }
        self.waiting.fetch_add(runs.len(), Ordering::AcqRel);
        for run in runs {
            let _ = self.tx.send(run);
        }
    }

    /// The next run for a worker; `None` when the queue is closed.
    pub async fn next(&self) -> Option<ClaimedRun> {
        let run = self.rx.lock().await.recv().await?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        if self.backlog.load(Ordering::Acquire) {
            self.work.notify_one();
        }
        Some(run)
    }

    /// A run ended: followers on its ordering key, and stored runs waiting
    /// for room, can be claimed now.
    pub fn ended(&self, run: &ClaimedRun) {
        if run.ordering_key.is_some() || self.backlog.load(Ordering::Acquire) {
            self.work.notify_one();
        }
    }
}
