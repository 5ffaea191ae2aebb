//! The connector runtime: calls catalog operations over HTTP (or in the
//! engine, for `store` and `http.request`) for a connection, with auth,
//! client-side rate limits, a concurrency cap, retries with backoff and
//! `Retry-After`, pagination, and error classification.

pub mod auth;
pub mod errors;
mod http;
pub mod native;
pub mod outbound;
mod pagination;
pub mod ratelimit;
pub mod request;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::catalog::{Auth, Catalog, ConnectorDef, ErrorKind, OpRef};
use crate::connections::ResolvedConnection;
use crate::duration::parse_duration;
use crate::secret::Secret;
use auth::{AuthContext, AuthState, TokenStore};
pub use errors::StepError;
use http::{header_map, http_prepared, observed, BaseUrl};
use native::LinkStore;
use ratelimit::RateLimiter;
use request::Prepared;
use retry::AttemptError;
use retry::RetryPolicy;

/// Retry policy when neither the step nor the connector sets one.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(60),
};

/// Default request timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Page cap when the catalog sets none.
const DEFAULT_MAX_PAGES: u32 = 10;

/// The result of one operation call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The extracted output.
    pub output: Value,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
}

/// A failed call and how many attempts it took.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The final error.
    pub error: StepError,
    /// Attempts made.
    pub attempts: u32,
}

/// One connection's live state: limiter, concurrency slots, auth.
struct Conn {
    resolved: Arc<ResolvedConnection>,
    def: ConnectorDef,
    base_url: String,
    /// `base_url` parsed once: a request then parses only its own path
    /// (parsing the host again, IDNA included, was a measurable share of
    /// every action's cost).
    base: Option<BaseUrl>,
    limiter: RateLimiter,
    slots: Semaphore,
    auth: AuthState,
    timeout: Duration,
}

/// A canned answer to one request (see [`Transport`]).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body text.
    pub body: String,
}

/// Answers requests in place of the network (`patchbay test`): auth,
/// retries, `Retry-After` and error classification stay the runtime's own.
pub trait Transport: Send + Sync {
    /// The answer to one attempt of operation `op`, or the transport
    /// failure (`timeout`, `network`) it stands for.
    fn answer(&self, op: &str, request: &Prepared) -> Result<Reply, StepError>;
}

impl Conn {
    /// The live state of a connection; `None` when its connector is unknown.
    fn build(catalog: &Catalog, c: ResolvedConnection) -> Option<Conn> {
        let def = catalog.connector(&c.connector).cloned()?;
        let windows: Vec<(u32, Duration)> = c
            .rate_limits
            .as_ref()
            .unwrap_or(&def.rate_limits)
            .iter()
            .filter_map(|w| parse_duration(&w.per).ok().map(|d| (w.requests, d)))
            .collect();
        let concurrency = c.concurrency.or(def.concurrency).unwrap_or(32) as usize;
        let base_url = c
            .get("base_url")
            .map(|v| v.expose().to_string())
            .or_else(|| def.base_url.clone())
            .unwrap_or_default();
        let timeout = def
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        Some(Conn {
            limiter: RateLimiter::new(&windows),
            slots: Semaphore::new(concurrency.max(1)),
            auth: AuthState::default(),
            base: BaseUrl::parse(&base_url),
            base_url,
            timeout,
            def,
            resolved: Arc::new(c),
        })
    }
}

/// Whether `def` is still what `catalog` declares for its connector.
fn same_def(catalog: &Catalog, def: &ConnectorDef) -> bool {
    match catalog.connector(&def.connector) {
        // Serialized forms compare every field; reloads are rare.
        Some(now) => serde_json::to_value(now).ok() == serde_json::to_value(def).ok(),
        None => false,
    }
}

/// Shared by every run of one engine (or one `fire`).
pub struct Runtime {
    /// Built on first use: canned runs never need it.
    client: OnceLock<reqwest::Client>,
    /// `http.request`'s client that resolves names to public addresses only.
    public_client: OnceLock<reqwest::Client>,
    /// When set, requests are answered here instead of sent.
    transport: Option<Arc<dyn Transport>>,
    /// Swapped whole by a catalog reload.
    catalog: RwLock<Arc<Catalog>>,
    /// Swapped whole by a reload; a run holds the `Conn` it took.
    conns: RwLock<Arc<HashMap<String, Arc<Conn>>>>,
    store: Arc<dyn LinkStore>,
    tokens: Arc<dyn TokenStore>,
    /// When set, requests are recorded here instead of sent.
    dry_run: Option<Mutex<Vec<Prepared>>>,
    /// Engines sharing each connection's API budget (see [`Self::share_rate_limits`]).
    engines: std::sync::atomic::AtomicUsize,
}

impl Runtime {
    /// A runtime over resolved connections.
    pub fn new(
        catalog: Catalog,
        connections: Vec<ResolvedConnection>,
        store: Arc<dyn LinkStore>,
        tokens: Arc<dyn TokenStore>,
    ) -> Runtime {
        let conns = connections
            .into_iter()
            .filter_map(|c| Some((c.name.clone(), Arc::new(Conn::build(&catalog, c)?))))
            .collect();
        Runtime {
            client: OnceLock::new(),
            public_client: OnceLock::new(),
            transport: None,
            catalog: RwLock::new(Arc::new(catalog)),
            conns: RwLock::new(Arc::new(conns)),
            store,
            tokens,
            dry_run: None,
            engines: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// `engines` engines share every connection's API budget: each sends at
    /// most its share of every rate-limit window (docs/operations.md).
    pub fn share_rate_limits(&self, engines: usize) {
        self.engines
            .store(engines.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The HTTP client, built on first use.
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            // reqwest is built without a default crypto provider (ring, not aws-lc).
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .redirect(outbound::redirect_policy())
                .build()
                .expect("HTTP client builds")
        })
    }

    /// The client of `http.request` when private targets are not allowed.
    fn public_client(&self) -> &reqwest::Client {
        self.public_client.get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            outbound::public_client()
        })
    }

    /// Answers requests with `transport` instead of the network; auth uses
    /// a fixed test credential and a 401 renews it once without a token
    /// request (`patchbay test`).
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Runtime {
        self.transport = Some(transport);
        self
    }

    /// Replaces the connections for new requests (hot reload). A connection
    /// whose values did not change keeps its live state (rate limiter,
    /// concurrency slots, cached token); requests in flight finish on the
    /// state they took. Returns the names of connections added, changed or
    /// removed.
    pub fn set_connections(&self, connections: Vec<ResolvedConnection>) -> Vec<String> {
        let catalog = self.catalog();
        let mut conns = self.conns.write().expect("connections lock");
        let mut next = HashMap::new();
        let mut touched = Vec::new();
        for c in connections {
            match conns.get(&c.name) {
                Some(old) if *old.resolved == c && same_def(&catalog, &old.def) => {
                    next.insert(c.name.clone(), old.clone());
                }
                _ => {
                    touched.push(c.name.clone());
                    if let Some(conn) = Conn::build(&catalog, c.clone()) {
                        next.insert(c.name, Arc::new(conn));
                    }
                }
            }
        }
        touched.extend(conns.keys().filter(|k| !next.contains_key(*k)).cloned());
        touched.sort();
        touched.dedup();
        *conns = Arc::new(next);
        touched
    }

    /// Every connection as requests use it now.
    pub fn resolved_connections(&self) -> Vec<ResolvedConnection> {
        self.conns
            .read()
            .expect("connections lock")
            .values()
            .map(|c| (*c.resolved).clone())
            .collect()
    }

    /// Records requests instead of sending them (`fire --dry-run`).
    pub fn with_dry_run(mut self) -> Runtime {
        self.dry_run = Some(Mutex::new(Vec::new()));
        self
    }

    /// Whether this runtime only records requests.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run.is_some()
    }

    /// The requests a dry run would have sent.
    pub fn dry_run_requests(&self) -> Vec<Prepared> {
        self.dry_run
            .as_ref()
            .map(|d| d.lock().expect("dry-run lock").clone())
            .unwrap_or_default()
    }

    /// A connection as requests use it now (webhook checks read its
    /// secrets); `None` when no connection has that name.
    pub fn connection(&self, name: &str) -> Option<Arc<ResolvedConnection>> {
        let conns = self.conns.read().expect("connections lock");
        conns.get(name).map(|c| c.resolved.clone())
    }

    /// The catalog serving now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Replaces the catalog (hot reload) and then the connections, so a
    /// connection whose connector declaration changed gets new state built
    /// from the new one; the others keep theirs. Runs in flight keep the
    /// operations they hold. Returns the connections rebuilt or removed.
    pub fn set_catalog(
        &self,
        catalog: Catalog,
        connections: Option<Vec<ResolvedConnection>>,
    ) -> Vec<String> {
        // Without new connection values, the ones serving are rebuilt where
        // their connector changed.
        let connections = connections.unwrap_or_else(|| {
            let conns = self.conns.read().expect("connections lock");
            conns.values().map(|c| (*c.resolved).clone()).collect()
        });
        *self.catalog.write().expect("catalog lock") = Arc::new(catalog);
        self.set_connections(connections)
    }

    /// The connection a step uses: the named one, or the only one of the
    /// operation's connector.
    fn conn_for(&self, op: &OpRef, name: Option<&str>) -> Result<Option<Arc<Conn>>, StepError> {
        let connector = &op.connector().connector;
        let conns = self.conns.read().expect("connections lock").clone();
        if let Some(n) = name {
            return match conns.get(n) {
                Some(c) if c.resolved.connector == *connector => Ok(Some(c.clone())),
                _ => Err(StepError::new(
                    ErrorKind::InvalidInput,
                    format!("no `{connector}` connection named `{n}`"),
                )),
            };
        }
        let mut fitting = conns
            .values()
            .filter(|c| c.resolved.connector == *connector);
        match (fitting.next(), fitting.next()) {
            (Some(c), None) => Ok(Some(c.clone())),
            (None, _) if op.connector().builtin => Ok(None),
            (None, _) => Err(StepError::new(
                ErrorKind::InvalidInput,
                format!("`{}` needs a `{connector}` connection", op.id()),
            )),
            _ => Err(StepError::new(
                ErrorKind::InvalidInput,
                format!("several `{connector}` connections: name one"),
            )),
        }
    }

    /// Calls an operation with retries; pages through list operations.
    pub async fn call(
        &self,
        op: &OpRef,
        connection: Option<&str>,
        input: &Map<String, Value>,
        retry: Option<RetryPolicy>,
    ) -> Result<Outcome, Failure> {
        let conn = self
            .conn_for(op, connection)
            .map_err(|error| Failure { error, attempts: 0 })?;
        let policy = retry
            .or_else(|| {
                op.connector().retry.as_ref().and_then(|r| {
                    Some(RetryPolicy {
                        attempts: r.attempts,
                        backoff: parse_duration(&r.backoff).ok()?,
                        max_backoff: parse_duration(&r.max_backoff).ok()?,
                    })
                })
            })
            .unwrap_or(DEFAULT_RETRY);
        let input = request::complete_input(op, conn.as_ref().map(|c| &*c.resolved), input)
            .map_err(|error| Failure { error, attempts: 0 })?;
        if let Some(native) = &op.def().native {
            return self
                .native(op, native, conn.as_deref(), &input, &policy)
                .await;
        }
        let Some(conn) = conn else {
            return Err(Failure {
                error: StepError::new(
                    ErrorKind::InvalidInput,
                    format!("`{}` needs a connection", op.id()),
                ),
                attempts: 0,
            });
        };
        match &op.def().pagination {
            Some(_) => self.paginate(op, &conn, input, &policy).await,
            None => {
                let (body, attempts) = self.with_retries(op, &conn, &input, &policy).await?;
                Ok(Outcome {
                    output: self.extract(op, body),
                    attempts,
                })
            }
        }
    }

    fn extract(&self, op: &OpRef, body: Value) -> Value {
        match op.output() {
            Some(p) => p.first(&body).unwrap_or(Value::Null),
            None => body,
        }
    }

    /// One logical request with the step's retry policy.
    async fn with_retries(
        &self,
        op: &OpRef,
        conn: &Conn,
        input: &Map<String, Value>,
        policy: &RetryPolicy,
    ) -> Result<(Value, u32), Failure> {
        let prepared = request::prepare(op, &conn.base_url, input)
            .map_err(|error| Failure { error, attempts: 0 })?;
        if let Some(d) = &self.dry_run {
            d.lock().expect("dry-run lock").push(prepared.redacted());
            return Ok((Value::Null, 0));
        }
        let metrics = crate::metrics::global();
        retry::run(
            policy,
            |attempt| {
                // Every log line of the attempt (its request, a token
                // refresh) carries its number.
                let span = tracing::debug_span!("attempt", attempt);
                let attempt = tracing::Instrument::instrument(self.attempt(op, conn, &prepared), span);
                observed(op, &conn.resolved.name, attempt)
            },
            |error, wait| {
                if error.kind == ErrorKind::RateLimited {
                    conn.limiter.back_off(wait);
                }
                tracing::debug!(op = %op.id(), kind = error.kind.as_str(), wait_ms = wait.as_millis() as u64, "retrying");
                metrics
                    .retries
                    .get_or_create(&crate::metrics::OperationLabels {
                        operation: op.id().to_string(),
                    })
                    .inc();
            },
        )
        .await
    }

    /// One attempt: limiter, slot, auth, send; one token refresh on 401.
    /// Against a [`Transport`] (`patchbay test`) the same limiter and slots
    /// apply, no credential is sent, and a 401 is renewed once where the
    /// connector's auth can renew (assumed to succeed: no token request).
    async fn attempt(
        &self,
        op: &OpRef,
        conn: &Conn,
        prepared: &Prepared,
    ) -> Result<Value, AttemptError> {
        // Canned runs never build the HTTP client the auth context holds.
        let cx = self.transport.is_none().then(|| AuthContext {
            def: &conn.def,
            conn: &conn.resolved,
            base_url: &conn.base_url,
            client: self.client(),
            tokens: self.tokens.as_ref(),
        });
        let mut refreshed = false;
        loop {
            let header = match &cx {
                Some(cx) => conn.auth.header(cx).await?,
                None => None,
            };
            conn.limiter
                .acquire(self.engines.load(std::sync::atomic::Ordering::Relaxed))
                .await;
            let _slot = conn.slots.acquire().await.expect("semaphore open");
            let result = match &self.transport {
                Some(t) => match t.answer(op.id(), prepared) {
                    Ok(r) => self.response(conn, r.status, &header_map(&r.headers), r.body),
                    Err(error) => Err(error.into()),
                },
                None => self.send(conn, prepared, header.as_ref()).await,
            };
            match result {
                Err(e) if e.error.kind == ErrorKind::Unauthorized && !refreshed => {
                    let renewed = match &cx {
                        Some(cx) => {
                            let used = header.map(|(_, v)| v).unwrap_or_else(|| Secret::new(""));
                            conn.auth.invalidate(cx, &used).await
                        }
                        None => matches!(
                            conn.def.auth,
                            Auth::Bearer {
                                refresh: Some(_),
                                ..
                            } | Auth::Oauth2ClientCredentials { .. }
                        ),
                    };
                    if !renewed {
                        return Err(e);
                    }
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    async fn native(
        &self,
        op: &OpRef,
        native: &str,
        conn: Option<&Conn>,
        input: &Map<String, Value>,
        policy: &RetryPolicy,
    ) -> Result<Outcome, Failure> {
        if let Some(d) = &self.dry_run {
            if native == "http.request" {
                d.lock()
                    .expect("dry-run lock")
                    .push(http_prepared(conn, input).redacted());
                return Ok(Outcome {
                    output: Value::Null,
                    attempts: 0,
                });
            }
        }
        if native.starts_with("store.") {
            return native::store_op(self.store.as_ref(), native, input)
                .await
                .map(|output| Outcome {
                    output,
                    attempts: 1,
                })
                .map_err(|error| Failure { error, attempts: 1 });
        }
        if native != "http.request" {
            return Err(Failure {
                error: StepError::new(
                    ErrorKind::InvalidInput,
                    format!("`{}`: unknown built-in `{native}`", op.id()),
                ),
                attempts: 0,
            });
        }
        let prepared = http_prepared(conn, input);
        let timeout = input
            .get("timeout")
            .and_then(Value::as_str)
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        let def = self
            .catalog()
            .connector("http")
            .cloned()
            .unwrap_or_else(|| op.connector().clone());
        let connection = conn.map_or("", |c| c.resolved.name.as_str());
        retry::run(
            policy,
            |_| observed(op, connection, self.generic(op, &def, conn, &prepared, timeout)),
            |error, wait| {
                tracing::debug!(op = %op.id(), kind = error.kind.as_str(), wait_ms = wait.as_millis() as u64, "retrying");
                crate::metrics::global()
                    .retries
                    .get_or_create(&crate::metrics::OperationLabels {
                        operation: op.id().to_string(),
                    })
                    .inc();
            },
        )
        .await
        .map(|(output, attempts)| Outcome { output, attempts })
    }
}
