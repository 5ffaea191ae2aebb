//! The running engine: the active recipe set ([`recipes`]), trigger
//! firings turned into stored events and runs ([`ingest`], and per trigger
//! kind [`triggers`]), and the worker pool that claims and executes runs
//! with checkpoints ([`workers`]). The steps themselves are run by the
//! [`crate::interpreter`].

pub mod ingest;
pub mod recipes;
pub mod triggers;
pub mod workers;

pub use recipes::RecipeSet;
pub use triggers::poll::{compare_stamps, PollCursor};
pub use triggers::schedule::{next_cron, next_due};

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::connectors::Runtime;
use crate::dispatch::Dispatch;
use crate::store::Store;

/// How long a claim lasts without a checkpoint or heartbeat, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How an engine is set up (`patchbay run`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most runs executing at once.
    pub workers: usize,
    /// How long a claim lasts without a checkpoint or heartbeat: after a
    /// crash, the crashed process's runs are taken over once it expires.
    pub lease: Duration,
    /// Most runs waiting for a worker before webhooks wait (0: no limit).
    pub max_backlog: usize,
    /// Largest accepted webhook body.
    pub body_limit: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            workers: 16,
            lease: DEFAULT_LEASE,
            max_backlog: 0,
            body_limit: 1024 * 1024,
        }
    }
}

/// Everything the server, workers and schedulers share. The server hands
/// it deliveries ([`Service::accept`]); reload swaps its recipes
/// ([`Service::replace_recipes`]); the rest runs in its own tasks.
pub struct Service {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    recipes: RwLock<Arc<RecipeSet>>,
    dispatch: Dispatch,
    body_limit: usize,
    lease: Duration,
}

pub use crate::id::{id_prefix, new_id, EventId, RunId};

impl Service {
    /// An engine over `store`, calling APIs through `runtime`, serving
    /// `recipes` until the first reload replaces them.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Runtime,
        recipes: RecipeSet,
        settings: Settings,
    ) -> Service {
        Service {
            store,
            runtime: Arc::new(runtime),
            recipes: RwLock::new(Arc::new(recipes)),
            dispatch: Dispatch::new(
                settings.workers.max(1),
                settings.lease,
                settings.max_backlog,
            ),
            body_limit: settings.body_limit,
            lease: settings.lease,
        }
    }

    /// The durable store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The connector runtime (connections, auth, rate limits).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Hands claimed runs to the workers.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Largest accepted webhook body.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The catalog serving now (a `--catalog` reload swaps it in the runtime).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.runtime.catalog()
    }

    /// The active recipe set.
    pub fn recipes(&self) -> Arc<RecipeSet> {
        self.recipes.read().expect("recipes lock").clone()
    }

    /// Serves `set` from now on (a reload); runs already claimed keep the
    /// version they started on.
    pub fn replace_recipes(&self, set: RecipeSet) {
        *self.recipes.write().expect("recipes lock") = Arc::new(set);
        self.dispatch.work.notify_one();
    }
}
