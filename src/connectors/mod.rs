//! The connector runtime: calls catalog operations over HTTP (or in the
//! engine, for `store` and `http.request`) for a connection, with auth,
//! client-side rate limits, a concurrency cap, retries with backoff and
//! `Retry-After`, pagination, and error classification.

pub mod auth;
pub mod errors;
pub mod native;
pub mod outbound;
pub mod ratelimit;
pub mod request;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::catalog::{Auth, Catalog, ConnectorDef, ErrorKind, OpRef, PageStyle};
use crate::connections::ResolvedConnection;
use crate::duration::parse_duration;
use crate::jsonpath::{self, JsonPath};
use crate::recipe::validate::RetryPolicy;
use crate::secret::Secret;
use auth::{AuthContext, AuthState, TokenStore};
pub use errors::StepError;
use native::LinkStore;
use ratelimit::RateLimiter;
use request::Prepared;

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

/// A connection's base URL, parsed.
#[derive(Debug, Clone)]
struct BaseUrl {
    /// As written, without a trailing `/`: the start of every request URL.
    prefix: String,
    url: reqwest::Url,
}

impl BaseUrl {
    /// `None` for a base with a query or fragment (then URLs are parsed whole).
    fn parse(base_url: &str) -> Option<BaseUrl> {
        let prefix = base_url.trim_end_matches('/');
        let url = reqwest::Url::parse(prefix).ok()?;
        if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
            return None;
        }
        Some(BaseUrl {
            prefix: prefix.to_string(),
            url,
        })
    }

    /// The URL of a request prepared from this base; `None` when `full`
    /// does not start with it.
    fn join(&self, full: &str) -> Option<reqwest::Url> {
        let rest = full.strip_prefix(&self.prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let mut url = self.url.clone();
        let path = format!("{}{rest}", self.url.path().trim_end_matches('/'));
        url.set_path(&path);
        Some(url)
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

/// An attempt's error plus the wait the API asked for.
struct AttemptError {
    error: StepError,
    retry_after: Option<Duration>,
}

impl From<StepError> for AttemptError {
    fn from(error: StepError) -> Self {
        AttemptError {
            error,
            retry_after: None,
        }
    }
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

    async fn paginate(
        &self,
        op: &OpRef,
        conn: &Conn,
        mut input: Map<String, Value>,
        policy: &RetryPolicy,
    ) -> Result<Outcome, Failure> {
        let p = op.def().pagination.clone().expect("paginated op");
        let items_path = jsonpath::compile(&p.items).map_err(|e| Failure {
            error: StepError::new(ErrorKind::InvalidInput, e),
            attempts: 0,
        })?;
        let page_size = p
            .limit_input
            .as_ref()
            .and_then(|l| input.get(l).and_then(Value::as_u64))
            .or(p.page_size);
        if let (Some(l), Some(size)) = (&p.limit_input, page_size) {
            input.entry(l.clone()).or_insert(Value::from(size));
        }
        // The catalog checked these paths at load; compile them once per call.
        let cursor_paths: Vec<(String, JsonPath)> = p
            .cursor
            .iter()
            .filter_map(|(name, path)| jsonpath::compile(path).ok().map(|jp| (name.clone(), jp)))
            .collect();
        let mut all = Vec::new();
        let mut attempts = 0;
        let mut offset = p
            .offset_input
            .as_ref()
            .and_then(|o| input.get(o).and_then(Value::as_u64))
            .unwrap_or(0);
        let mut page = p
            .page_input
            .as_ref()
            .and_then(|o| input.get(o).and_then(Value::as_u64))
            .unwrap_or(1);
        for _ in 0..p.max_pages.unwrap_or(DEFAULT_MAX_PAGES) {
            match p.style {
                PageStyle::Offset => {
                    if let Some(o) = &p.offset_input {
                        input.insert(o.clone(), Value::from(offset));
                    }
                }
                PageStyle::Page => {
                    if let Some(pi) = &p.page_input {
                        input.insert(pi.clone(), Value::from(page));
                    }
                }
                PageStyle::Cursor => {}
            }
            let (body, n) = self.with_retries(op, conn, &input, policy).await?;
            attempts += n;
            let items: Vec<Value> = match items_path.first(&body) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            let count = items.len() as u64;
            all.extend(items);
            if count == 0 || page_size.is_some_and(|s| count < s) {
                break;
            }
            match p.style {
                PageStyle::Offset => offset += count,
                PageStyle::Page => page += 1,
                PageStyle::Cursor => {
                    let mut advanced = false;
                    for (name, path) in &cursor_paths {
                        match path.first(&body) {
                            Some(v) if !v.is_null() => {
                                advanced = true;
                                input.insert(name.clone(), v);
                            }
                            _ => {
                                input.remove(name);
                            }
                        }
                    }
                    if !advanced {
                        break;
                    }
                }
            }
        }
        Ok(Outcome {
            output: Value::Array(all),
            attempts,
        })
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            // Every log line of the attempt (its request, a token refresh) carries its number.
            let span = tracing::debug_span!("attempt", attempt);
            let result =
                tracing::Instrument::instrument(self.attempt(op, conn, &prepared), span).await;
            let status = match &result {
                Ok(_) => Some(200),
                Err(e) => e.error.status,
            };
            metrics.http(op.id(), status, started.elapsed());
            if let Err(e) = &result {
                if e.error.kind == ErrorKind::RateLimited {
                    metrics
                        .rate_limited
                        .get_or_create(&crate::metrics::ConnectionLabels {
                            connection: conn.resolved.name.clone(),
                        })
                        .inc();
                }
            }
            match result {
                Ok(v) => return Ok((v, attempt)),
                Err(e) if e.error.kind.is_retryable() && attempt < policy.attempts => {
                    let wait = match e.retry_after {
                        Some(ra) if ra > retry::MAX_RETRY_AFTER => {
                            return Err(Failure {
                                error: e.error,
                                attempts: attempt,
                            })
                        }
                        Some(ra) => ra,
                        None => retry::jittered(policy, attempt),
                    };
                    if e.error.kind == ErrorKind::RateLimited {
                        conn.limiter.back_off(wait);
                    }
                    tracing::debug!(op = %op.id(), attempt, kind = e.error.kind.as_str(), wait_ms = wait.as_millis() as u64, "retrying");
                    metrics
                        .retries
                        .get_or_create(&crate::metrics::OperationLabels {
                            operation: op.id().to_string(),
                        })
                        .inc();
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    return Err(Failure {
                        error: e.error,
                        attempts: attempt,
                    })
                }
            }
        }
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

    async fn send(
        &self,
        conn: &Conn,
        p: &Prepared,
        auth: Option<&(String, Secret)>,
    ) -> Result<Value, AttemptError> {
        let method =
            reqwest::Method::from_bytes(p.method.as_bytes()).expect("catalog methods are valid");
        let mut req = match conn.base.as_ref().and_then(|b| b.join(&p.url)) {
            Some(url) => self.client().request(method, url),
            None => self.client().request(method, &p.url),
        }
        .timeout(conn.timeout);
        if !p.query.is_empty() {
            req = req.query(&p.query);
        }
        for (k, v) in &p.headers {
            req = req.header(k, v);
        }
        if let Some((k, v)) = auth {
            req = req.header(k, v.expose());
        }
        match (&p.body, p.encoding) {
            (Some(b), crate::catalog::Encoding::Json) => req = req.json(b),
            // The content type is among the prepared headers.
            (Some(_), crate::catalog::Encoding::Form) => {
                req = req.body(p.body_text().unwrap_or_default())
            }
            (None, _) => {}
        }
        let sent = tokio::time::Instant::now();
        let resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        tracing::debug!(connection = %conn.resolved.name, method = p.method, url = %p.url, status, elapsed_ms = sent.elapsed().as_millis() as u64, "request");
        let headers = resp.headers().clone();
        let text =
            outbound::read_capped(resp, outbound::max_response_bytes(Some(&conn.resolved))).await?;
        self.response(conn, status, &headers, text)
    }

    /// A response to its output or classified error: the remaining-quota
    /// header feeds the limiter, `Retry-After` the next wait.
    fn response(
        &self,
        conn: &Conn,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        text: String,
    ) -> Result<Value, AttemptError> {
        if let Some(h) = &conn.def.remaining_header {
            if let Some(rem) = headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
            {
                let per = headers
                    .get("x-ratelimit-interval-milliseconds")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis);
                conn.limiter.observe_remaining(rem, per);
            }
        }
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
        }
        let error = errors::classify(&conn.def, status, &text);
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now()));
        Err(AttemptError { error, retry_after })
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.generic(op, &def, conn, &prepared, timeout).await {
                Ok(output) => {
                    return Ok(Outcome {
                        output,
                        attempts: attempt,
                    })
                }
                Err(e) if e.error.kind.is_retryable() && attempt < policy.attempts => {
                    let wait = e
                        .retry_after
                        .unwrap_or_else(|| retry::jittered(policy, attempt))
                        .min(retry::MAX_RETRY_AFTER);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    return Err(Failure {
                        error: e.error,
                        attempts: attempt,
                    })
                }
            }
        }
    }

    /// `http.request`: any method and URL; the output is status, headers and body.
    async fn generic(
        &self,
        op: &OpRef,
        def: &ConnectorDef,
        conn: Option<&Conn>,
        p: &Prepared,
        timeout: Duration,
    ) -> Result<Value, AttemptError> {
        let method = reqwest::Method::from_bytes(p.method.as_bytes()).map_err(|_| {
            StepError::new(
                ErrorKind::InvalidInput,
                format!("http.request: invalid method `{}`", p.method),
            )
        })?;
        let (status, headers, text) = match &self.transport {
            Some(t) => {
                let r = t.answer(op.id(), p)?;
                (r.status, header_map(&r.headers), r.body)
            }
            None => {
                let resolved = conn.map(|c| &*c.resolved);
                let url = reqwest::Url::parse(&p.url).map_err(|e| {
                    StepError::new(
                        ErrorKind::InvalidInput,
                        format!("http.request: `url` is not an absolute URL: {e}"),
                    )
                })?;
                let policy = outbound::Policy::of(resolved);
                policy.check(&url)?;
                let client = if policy.allow_private {
                    self.client()
                } else {
                    self.public_client()
                };
                let mut req = client.request(method, url.clone()).timeout(timeout);
                if !p.query.is_empty() {
                    req = req.query(&p.query);
                }
                for (k, v) in &p.headers {
                    req = req.header(k, v);
                }
                if let Some(c) = conn {
                    if let Some((k, v)) = http_auth(c, &url)? {
                        req = req.header(k, v.expose());
                    }
                }
                if let Some(b) = &p.body {
                    req = req.json(b);
                }
                let resp = req.send().await.map_err(|e| transport_error(&e))?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let text =
                    outbound::read_capped(resp, outbound::max_response_bytes(resolved)).await?;
                (status, headers, text)
            }
        };
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, chrono::Utc::now()));
        // The output is recorded with the run: credentials an API sends
        // back (`set-cookie`) are not.
        let headers: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                let v = if outbound::is_sensitive_header(k.as_str()) {
                    outbound::REDACTED
                } else {
                    v.to_str().unwrap_or("")
                };
                (k.to_string(), Value::String(v.to_string()))
            })
            .collect();
        if !(200..300).contains(&status) {
            return Err(AttemptError {
                error: errors::classify(def, status, &text),
                retry_after,
            });
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(serde_json::json!({"status": status, "headers": headers, "body": body}))
    }
}

/// Canned headers as a header map; names or values HTTP cannot carry are dropped.
fn header_map(headers: &[(String, String)]) -> reqwest::header::HeaderMap {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    map
}

/// The credential `http.request` adds from its connection: `bearer_token`,
/// `api_key` (in `api_key_header`, `X-API-Key` by default) or `username`
/// and `password` (basic). Sent only to the connection's `base_url` origin
/// when it has one, so a recipe cannot carry it to another host.
fn http_auth(conn: &Conn, url: &reqwest::Url) -> Result<Option<(String, Secret)>, StepError> {
    let c = &conn.resolved;
    let secret = |f: &str| c.get(f).map(|v| v.expose().to_string());
    let header = if let Some(t) = secret("bearer_token") {
        (
            "authorization".to_string(),
            Secret::new(format!("Bearer {t}")),
        )
    } else if let Some(k) = secret("api_key") {
        let name = secret("api_key_header").unwrap_or_else(|| "x-api-key".into());
        (name, Secret::new(k))
    } else if let Some(user) = secret("username") {
        use base64::Engine as _;
        let pass = secret("password").unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        (
            "authorization".to_string(),
            Secret::new(format!("Basic {b64}")),
        )
    } else {
        return Ok(None);
    };
    if let Some(base) = conn.base.as_ref() {
        if base.url.origin() != url.origin() {
            return Err(StepError::new(
                ErrorKind::InvalidInput,
                format!(
                    "http.request: connection `{}` sends its credentials only to its `base_url` ({}), not to {}",
                    c.name,
                    base.url.origin().ascii_serialization(),
                    url.origin().ascii_serialization()
                ),
            ));
        }
    }
    Ok(Some(header))
}

/// The request `http.request` sends; a relative URL uses the connection's base URL.
fn http_prepared(conn: Option<&Conn>, input: &Map<String, Value>) -> Prepared {
    let url = input.get("url").and_then(Value::as_str).unwrap_or_default();
    let url = match conn {
        Some(c) if !url.contains("://") => format!(
            "{}/{}",
            c.base_url.trim_end_matches('/'),
            url.trim_start_matches('/')
        ),
        _ => url.to_string(),
    };
    let pairs = |v: Option<&Value>| -> Vec<(String, String)> {
        v.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Prepared {
        method: match input
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase()
            .as_str()
        {
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            _ => "GET",
        },
        url,
        query: pairs(input.get("query")),
        headers: pairs(input.get("headers")),
        body: input.get("body").cloned().filter(|b| !b.is_null()),
        encoding: crate::catalog::Encoding::Json,
        authenticated: conn.is_some_and(|c| {
            ["bearer_token", "api_key", "username"]
                .iter()
                .any(|f| c.resolved.get(f).is_some())
        }),
    }
}

/// Maps a transport failure to `timeout` or `network`.
fn transport_error(e: &reqwest::Error) -> AttemptError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Network
    };
    let mut msg = auth::without_url(e);
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    StepError::new(kind, msg).into()
}

#[cfg(test)]
mod tests {
    use super::BaseUrl;

    #[test]
    fn a_request_url_joined_to_the_parsed_base_equals_the_url_parsed_whole() {
        for (base, full) in [
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/contacts/upsert",
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8080/contacts/a%2Bb%40x.com/tags",
            ),
            (
                "https://services.leadconnectorhq.com",
                "https://services.leadconnectorhq.com/contacts/",
            ),
            (
                "http://h:1/api/v1/",
                "http://h:1/api/v1/addressbooks/12/emails",
            ),
            ("https://api.sendpulse.com", "https://api.sendpulse.com"),
        ] {
            let joined = BaseUrl::parse(base).unwrap().join(full).unwrap();
            assert_eq!(
                joined,
                reqwest::Url::parse(full).unwrap(),
                "{base} + {full}"
            );
        }
    }

    #[test]
    fn a_url_outside_the_base_or_a_base_with_a_query_is_parsed_whole() {
        let base = BaseUrl::parse("http://h:1/api").unwrap();
        assert!(base.join("http://other:1/api/x").is_none());
        assert!(base.join("http://h:1/apix").is_none());
        assert!(BaseUrl::parse("http://h:1/api?key=1").is_none());
    }
}
