//! Stateful emulators of the external APIs (HighLevel v2 and v1, SendPulse),
//! real HTTP servers on 127.0.0.1 that behave like `shared/reference/` says:
//! status codes, wrappers, error bodies, auth with expiring tokens and rate
//! limits that answer 429. Tests drive faults through [`Emulator`]; every
//! request is recorded for assertions. `patchbay run --sandbox` uses them too.

pub mod ghl;
pub mod sendpulse;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use tokio::time::Instant;

/// One request an emulator received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string (without `?`), empty when none.
    pub query: String,
    /// Request headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; a form body (`application/x-www-form-urlencoded`)
    /// as an object of its fields (text, or a list of text for a repeated
    /// field); a string when it is neither; null when empty.
    pub body: Value,
    /// The status the emulator answered.
    pub status: u16,
    /// When it arrived (tokio time, so virtual time works).
    pub at: Instant,
}

impl Recorded {
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

/// A fault to inject into the next responses.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and JSON body.
    Status(u16, Value),
    /// Answer 429, with `Retry-After` when given (the header value as is:
    /// seconds or an HTTP-date).
    RateLimited(Option<String>),
    /// Drop the connection without an answer.
    Reset,
}

/// Shared fault and recording state of one emulator.
#[derive(Debug, Default)]
pub struct Control {
    faults: Mutex<VecDeque<Fault>>,
    latency: Mutex<Duration>,
    recorded: Mutex<Vec<Recorded>>,
    /// Requests in the rate window (arrival times), for the 429 limiter.
    window: Mutex<VecDeque<Instant>>,
    limit: Mutex<Option<(usize, Duration)>>,
}

impl Control {
    /// Queues `n` copies of a fault for the next requests.
    pub fn inject(&self, fault: Fault, n: usize) {
        let mut f = self.faults.lock().unwrap();
        for _ in 0..n {
            f.push_back(fault.clone());
        }
    }

    /// Delays every answer.
    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().unwrap() = d;
    }

    /// Sets the emulator's own rate limit: at most `requests` per `per`
    /// (sliding window), 429 beyond. `None` lifts it.
    pub fn set_rate_limit(&self, limit: Option<(usize, Duration)>) {
        *self.limit.lock().unwrap() = limit;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// Forgets recorded requests.
    pub fn clear_requests(&self) {
        self.recorded.lock().unwrap().clear();
    }

    /// Whether this request is over the rate limit (and counts it if not).
    fn over_limit(&self, now: Instant) -> Option<Duration> {
        let limit = *self.limit.lock().unwrap();
        let (max, per) = limit?;
        let mut w = self.window.lock().unwrap();
        while w.front().is_some_and(|t| now.duration_since(*t) >= per) {
            w.pop_front();
        }
        if w.len() >= max {
            let wait = per - now.duration_since(*w.front().expect("non-empty"));
            return Some(wait);
        }
        w.push_back(now);
        None
    }

    /// How many requests the current window still allows.
    pub fn remaining(&self) -> Option<(usize, usize, Duration)> {
        let (max, per) = (*self.limit.lock().unwrap())?;
        let w = self.window.lock().unwrap();
        Some((max.saturating_sub(w.len()), max, per))
    }
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Serves `router` (already given its state) on 127.0.0.1 with the
    /// recording, latency, fault and rate-limit layer in front.
    pub async fn serve(
        router: Router,
        control: Arc<Control>,
        rate_headers: RateHeaders,
        listen: Option<SocketAddr>,
    ) -> std::io::Result<Emulator> {
        let bind = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let layered = router.layer(middleware::from_fn_with_state(
            (control.clone(), rate_headers),
            front,
        ));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, layered).await;
        });
        Ok(Emulator {
            addr,
            control,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fault injection, latency, rate limit and recorded requests.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.control.requests()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which rate-limit headers an API sends on every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateHeaders {
    /// None (SendPulse).
    None,
    /// HighLevel's `X-RateLimit-*`.
    HighLevel,
}

/// The layer in front of every emulator route.
async fn front(
    State((control, rate_headers)): State<(Arc<Control>, RateHeaders)>,
    req: Request,
    next: Next,
) -> Response {
    let now = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: parse_body(&parts.headers, &bytes),
        status: 0,
        at: now,
    };
    let latency = *control.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = control.faults.lock().unwrap().pop_front();
    let mut response = match fault {
        Some(Fault::Status(status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response(),
        Some(Fault::RateLimited(retry_after)) => too_many(rate_headers, retry_after),
        Some(Fault::Reset) => {
            rec.status = 0;
            control.recorded.lock().unwrap().push(rec);
            // A body that fails mid-stream makes the server drop the connection.
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                ))
            });
            return Response::builder()
                .status(200)
                .header("content-length", "100")
                .body(Body::from_stream(stream))
                .expect("valid response");
        }
        None => match control.over_limit(now) {
            Some(wait) => too_many(rate_headers, Some(wait.as_secs().max(1).to_string())),
            None => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        },
    };
    if rate_headers == RateHeaders::HighLevel {
        if let Some((remaining, max, per)) = control.remaining() {
            let h = response.headers_mut();
            h.insert("x-ratelimit-remaining", HeaderValue::from(remaining as u64));
            h.insert("x-ratelimit-max", HeaderValue::from(max as u64));
            h.insert(
                "x-ratelimit-interval-milliseconds",
                HeaderValue::from(per.as_millis() as u64),
            );
        }
    }
    rec.status = response.status().as_u16();
    control.recorded.lock().unwrap().push(rec);
    response
}

fn too_many(rate_headers: RateHeaders, retry_after: Option<String>) -> Response {
    let body = match rate_headers {
        RateHeaders::HighLevel => {
            serde_json::json!({"statusCode": 429, "message": "Too Many Requests"})
        }
        RateHeaders::None => {
            serde_json::json!({"message": "More than 10 requests per second", "error_code": 2020202020})
        }
    };
    let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    if let Some(ra) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert("retry-after", ra);
    }
    r
}

fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form {
        return Value::Object(form_fields(&String::from_utf8_lossy(bytes)));
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The fields of a form body or query (`a=1&b=x+y`), percent-decoded; a
/// field given several times becomes a list.
pub fn form_fields(s: &str) -> serde_json::Map<String, Value> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut out = serde_json::Map::new();
    for p in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let v = Value::String(decode(v));
        match out.get_mut(&decode(k)) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => *prev = Value::Array(vec![prev.take(), v]),
            None => {
                out.insert(decode(k), v);
            }
        }
    }
    out
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A random id of `n` alphanumeric characters (HighLevel ids are 20).
pub fn random_id(n: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), n)
}

/// A JSON response with a status.
pub fn json(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(body),
    )
        .into_response()
}
