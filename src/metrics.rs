//! The engine's Prometheus metrics: one registry per process, written by
//! the parts that see each thing happen (webhooks, runs, HTTP calls, the
//! store, reloads) and served on `GET /metrics` (OpenMetrics text).
//! Names follow Prometheus conventions: `_total` counters, `_seconds`
//! histograms, base units. Labels are bounded sets (recipe and connection
//! names from the operator's files, operation ids from the catalog,
//! outcomes and status classes), never request data.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `connection`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The connection in the URL (cut to 64 characters: it is the sender's text).
    pub connection: String,
    /// `accepted`, `unmatched`, `duplicate`, or why it was rejected.
    pub outcome: String,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why a webhook delivery was refused (`bad_token`, `bad_signature`, …).
    pub reason: String,
}

/// `recipe`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecipeLabels {
    /// Recipe name.
    pub recipe: String,
}

/// `recipe`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunEndLabels {
    /// Recipe name.
    pub recipe: String,
    /// `completed`, `failed` (a dead letter) or `filtered`.
    pub status: String,
}

/// `operation`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// Operation id.
    pub operation: String,
    /// `completed`, `failed` or `skipped`.
    pub status: String,
}

/// `operation`, `status_class`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Operation id.
    pub operation: String,
    /// `2xx`, `4xx`, `5xx`, or `error` (no answer: timeout, network).
    pub status_class: String,
}

/// `operation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Operation id.
    pub operation: String,
}

/// `connection`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// Connection name.
    pub connection: String,
}

/// `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied`, `unchanged`, `rejected`, `error`, …
    pub result: String,
}

/// `change`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `added`, `changed`, `removed` or `rejected`.
    pub change: String,
}

/// `operation` (`ingest` or `finish`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The store write.
    pub operation: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Webhook deliveries by connection and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Runs started (claimed by a worker) by recipe.
    pub runs_started: Family<RecipeLabels, Counter>,
    /// Runs ended by recipe and status.
    pub runs_ended: Family<RunEndLabels, Counter>,
    /// Runs that failed for good and became dead letters, by recipe.
    pub dead_letters: Family<RecipeLabels, Counter>,
    /// Step durations (retries included) by operation and status.
    pub step_seconds: Histograms<StepLabels>,
    /// HTTP request durations by operation and status class.
    pub http_seconds: Histograms<HttpLabels>,
    /// Attempts after the first, by operation.
    pub retries: Family<OperationLabels, Counter>,
    /// 429 answers, by connection.
    pub rate_limited: Family<ConnectionLabels, Counter>,
    /// OAuth token fetches and refreshes, by connection.
    pub token_refreshes: Family<ConnectionLabels, Counter>,
    /// Store writes on the run path, by kind.
    pub store_seconds: Histograms<StoreLabels>,
    /// Runs this process stored queued that no claim has taken yet.
    pub backlog: Gauge,
    /// Runs claimed (leased) by this process and waiting for a worker.
    pub leased_waiting: Gauge,
    /// Runs executing now.
    pub runs_in_flight: Gauge,
    /// Deliveries that waited for the backlog to shrink.
    pub deliveries_delayed: Counter,
    /// Webhook deliveries refused, by reason (`src/server/rejects.rs`).
    pub webhook_rejected: Family<ReasonLabels, Counter>,
    /// Refused deliveries counted but not recorded in the store.
    pub webhook_rejected_unrecorded: Counter,
    /// Deliveries accepted on a deprecated signature, by connection.
    pub webhook_legacy_signatures: Family<ConnectionLabels, Counter>,
    /// Reloads by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Recipes added, changed, removed and files rejected by reloads.
    pub reload_changes: Family<ChangeLabels, Counter>,
    /// Duration of the last reload.
    pub reload_last_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Unix time of the end of the last reload that did not fail.
    pub reload_last_success: Gauge,
    /// Recipes taking events.
    pub recipes_active: Gauge,
    /// Recipe files currently rejected.
    pub files_rejected: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("patchbay");
        let m = Metrics {
            deliveries: Family::default(),
            runs_started: Family::default(),
            runs_ended: Family::default(),
            dead_letters: Family::default(),
            step_seconds: Family::new_with_constructor(seconds),
            http_seconds: Family::new_with_constructor(seconds),
            retries: Family::default(),
            rate_limited: Family::default(),
            token_refreshes: Family::default(),
            store_seconds: Family::new_with_constructor(seconds),
            backlog: Gauge::default(),
            leased_waiting: Gauge::default(),
            runs_in_flight: Gauge::default(),
            deliveries_delayed: Counter::default(),
            webhook_rejected: Family::default(),
            webhook_rejected_unrecorded: Counter::default(),
            webhook_legacy_signatures: Family::default(),
            reloads: Family::default(),
            reload_changes: Family::default(),
            reload_last_seconds: Gauge::default(),
            reload_last_success: Gauge::default(),
            recipes_active: Gauge::default(),
            files_rejected: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "deliveries",
            "Webhook deliveries by connection and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "runs_started",
            "Runs started by a worker, by recipe",
            m.runs_started.clone(),
        );
        r.register(
            "runs_ended",
            "Runs ended, by recipe and status (completed, failed, filtered)",
            m.runs_ended.clone(),
        );
        r.register(
            "runs_dead_lettered",
            "Runs that failed for good (dead letters), by recipe",
            m.dead_letters.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Step duration, retries included, by operation and status",
            m.step_seconds.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Outgoing HTTP request duration by operation and status class",
            m.http_seconds.clone(),
        );
        r.register(
            "http_retries",
            "Attempts after the first, by operation",
            m.retries.clone(),
        );
        r.register(
            "http_rate_limited",
            "429 answers received, by connection",
            m.rate_limited.clone(),
        );
        r.register(
            "token_refreshes",
            "OAuth token fetches and refreshes, by connection",
            m.token_refreshes.clone(),
        );
        r.register("store_write_duration_seconds", "Store writes on the run path (ingest: until the commit that acknowledges a delivery; finish: a run's end), by operation", m.store_seconds.clone());
        r.register(
            "backlog_runs",
            "Runs this process stored queued that no claim has taken yet",
            m.backlog.clone(),
        );
        r.register(
            "claimed_runs_waiting",
            "Runs claimed (leased) by this process and waiting for a free worker",
            m.leased_waiting.clone(),
        );
        r.register(
            "runs_in_flight",
            "Runs executing now",
            m.runs_in_flight.clone(),
        );
        r.register(
            "deliveries_delayed",
            "Deliveries that waited for the backlog to shrink before they were stored",
            m.deliveries_delayed.clone(),
        );
        r.register(
            "webhook_rejected",
            "Webhook deliveries refused, by reason",
            m.webhook_rejected.clone(),
        );
        r.register(
            "webhook_rejected_unrecorded",
            "Refused deliveries counted but not recorded in the store (over the sample rate)",
            m.webhook_rejected_unrecorded.clone(),
        );
        r.register(
            "webhook_legacy_signatures",
            "Webhook deliveries accepted on a deprecated signature (HighLevel's x-wh-signature), by connection",
            m.webhook_legacy_signatures.clone(),
        );
        r.register(
            "reloads",
            "Reloads of recipes and connections by result",
            m.reloads.clone(),
        );
        r.register(
            "reload_recipes",
            "Recipes added, changed, removed and files rejected by reloads",
            m.reload_changes.clone(),
        );
        r.register(
            "reload_last_duration_seconds",
            "Duration of the last reload",
            m.reload_last_seconds.clone(),
        );
        r.register(
            "reload_last_success_timestamp_seconds",
            "End of the last reload that did not fail",
            m.reload_last_success.clone(),
        );
        r.register(
            "recipes_active",
            "Recipes taking events",
            m.recipes_active.clone(),
        );
        r.register(
            "recipe_files_rejected",
            "Recipe files currently rejected (their previous version, if any, keeps running)",
            m.files_rejected.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts a webhook delivery.
    pub fn delivery(&self, connection: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                connection: connection.chars().take(64).collect(),
                outcome: outcome.chars().take(64).collect(),
            })
            .inc();
    }

    /// Records one HTTP attempt of `operation`: its duration and answer
    /// (`None`: no answer).
    pub fn http(&self, operation: &str, status: Option<u16>, took: Duration) {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".into(),
        };
        self.http_seconds
            .get_or_create(&HttpLabels {
                operation: operation.to_string(),
                status_class: class,
            })
            .observe(took.as_secs_f64());
    }

    /// Records a store write of kind `operation`.
    pub fn store_write(&self, operation: &str, took: Duration) {
        self.store_seconds
            .get_or_create(&StoreLabels {
                operation: operation.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_named_by_prometheus_conventions() {
        let m = Metrics::new();
        m.delivery("sendpulse-main", "accepted");
        m.http("ghl.contacts.upsert", Some(201), Duration::from_millis(3));
        m.http("ghl.contacts.upsert", None, Duration::from_millis(30));
        let text = m.encode();
        assert!(
            text.contains(
                r#"patchbay_deliveries_total{connection="sendpulse-main",outcome="accepted"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"patchbay_http_request_duration_seconds_count{operation="ghl.contacts.upsert",status_class="2xx"} 1"#), "{text}");
        assert!(text.contains(r#"status_class="error""#), "{text}");
        assert!(text.contains("# TYPE patchbay_http_request_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn attacker_chosen_connection_names_are_cut() {
        let m = Metrics::new();
        m.delivery(&"x".repeat(5000), "unknown connection");
        assert!(m.encode().len() < 2000);
    }
}
