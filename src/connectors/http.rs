//! Requests on the wire: the HTTP client's side of a catalog operation
//! (`send`, `response`) and of `http.request` (`generic`), with the base
//! URL parsed once, credentials only to their origin, capped responses,
//! and canned answers ([`super::Transport`]) read like real ones.

use std::time::Duration;

use serde_json::{Map, Value};

use super::request::Prepared;
use super::retry::{self, AttemptError};
use super::{auth, errors, outbound, Conn, Runtime, StepError};
use crate::catalog::{ConnectorDef, ErrorKind, OpRef};
use crate::secret::Secret;

/// A connection's base URL, parsed.
#[derive(Debug, Clone)]
pub(super) struct BaseUrl {
    /// As written, without a trailing `/`: the start of every request URL.
    prefix: String,
    url: reqwest::Url,
}

impl BaseUrl {
    /// `None` for a base with a query or fragment (then URLs are parsed whole).
    pub(super) fn parse(base_url: &str) -> Option<BaseUrl> {
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

impl Runtime {
    pub(super) async fn send(
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
    pub(super) fn response(
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
        Err(AttemptError {
            error,
            retry_after: retry::retry_after(headers),
        })
    }

    /// `http.request`: any method and URL; the output is status, headers and body.
    pub(super) async fn generic(
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
        let retry_after = retry::retry_after(&headers);
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

/// One attempt, measured: its latency and status, and a 429 counted
/// against its connection.
pub(super) async fn observed<T>(
    op: &OpRef,
    connection: &str,
    attempt: impl std::future::Future<Output = Result<T, AttemptError>>,
) -> Result<T, AttemptError> {
    let metrics = crate::metrics::global();
    let started = std::time::Instant::now();
    let result = attempt.await;
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
                    connection: connection.to_string(),
                })
                .inc();
        }
    }
    result
}

/// Canned headers as a header map; names or values HTTP cannot carry are dropped.
pub(super) fn header_map(headers: &[(String, String)]) -> reqwest::header::HeaderMap {
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
pub(super) fn http_auth(
    conn: &Conn,
    url: &reqwest::Url,
) -> Result<Option<(String, Secret)>, StepError> {
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
pub(super) fn http_prepared(conn: Option<&Conn>, input: &Map<String, Value>) -> Prepared {
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
pub(super) fn transport_error(e: &reqwest::Error) -> AttemptError {
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
