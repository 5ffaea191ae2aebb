//! Guards on what the engine sends and reads: redirects stay on the origin
//! they started from (never to another host, never from https to http),
//! response bodies are read as a stream up to a cap, and `http.request`
//! refuses private, loopback and link-local targets unless allowed (SSRF),
//! optionally only to an allow-list of hosts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::catalog::ErrorKind;
use crate::connections::ResolvedConnection;

use super::StepError;

/// The largest response body read unless the connection sets
/// `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Redirects followed at most (same origin only).
const MAX_REDIRECTS: usize = 5;

/// Global allow-list of `http.request` hosts (comma separated).
pub const ENV_ALLOW_HOSTS: &str = "PATCHBAY_HTTP_ALLOW_HOSTS";

/// Global switch letting `http.request` reach private addresses (`1`/`true`).
pub const ENV_ALLOW_PRIVATE: &str = "PATCHBAY_HTTP_ALLOW_PRIVATE";

/// Headers whose values are never recorded or printed.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-patchbay-token",
    "x-access-token",
];

/// Whether a header's value is a credential: listed names, and any name
/// with `token`, `secret`, `password`, `signature` or `api-key` in it.
pub fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SENSITIVE_HEADERS.contains(&n.as_str())
        || [
            "token",
            "secret",
            "password",
            "signature",
            "api-key",
            "apikey",
            "session",
        ]
        .iter()
        .any(|w| n.contains(w))
}

/// The placeholder for a redacted value.
pub const REDACTED: &str = "<redacted>";

/// A step's rendered input as recorded with its run: the values of
/// credential headers in its `headers` mapping (`http.request`) redacted.
pub fn redact_input(input: &serde_json::Value) -> serde_json::Value {
    let mut out = input.clone();
    if let Some(serde_json::Value::Object(h)) = out.get_mut("headers") {
        for (k, v) in h.iter_mut() {
            if is_sensitive_header(k) {
                *v = serde_json::Value::String(REDACTED.into());
            }
        }
    }
    out
}

/// The redirect policy of every client: same origin, at most
/// [`MAX_REDIRECTS`], so an API cannot send a request (and the credential
/// on it) to another host, or downgrade it to plain http.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > MAX_REDIRECTS || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

/// The largest response body a connection reads.
pub fn max_response_bytes(conn: Option<&ResolvedConnection>) -> usize {
    conn.and_then(|c| c.get("max_response_bytes"))
        .and_then(|v| v.expose().parse().ok())
        .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES)
}

/// Reads a response body as a stream, refusing it past `max` bytes (the
/// declared length is checked first).
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<String, StepError> {
    let too_large = |status: u16| {
        let mut e = StepError::new(
            ErrorKind::Server,
            format!("the response body is larger than {max} bytes (`max_response_bytes`)"),
        );
        e.status = Some(status);
        e
    };
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large(status));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(too_large(status));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Network
                };
                return Err(StepError::new(kind, super::auth::without_url(&e)));
            }
        }
    }
    Ok(match String::from_utf8(body) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Whether an address is one `http.request` may not reach by default:
/// loopback, private, link-local, shared (CGNAT), unspecified, broadcast,
/// multicast, and their IPv6 forms (IPv4-mapped included).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Where `http.request` may go, for one connection (or none).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Hosts allowed (`api.example.com`, `*.example.com`); empty = any.
    pub allow_hosts: Vec<String>,
    /// Private, loopback and link-local targets allowed.
    pub allow_private: bool,
}

impl Policy {
    /// The connection's `allow_hosts`/`allow_private`, or else the
    /// environment's [`ENV_ALLOW_HOSTS`]/[`ENV_ALLOW_PRIVATE`].
    pub fn of(conn: Option<&ResolvedConnection>) -> Policy {
        let field = |name: &str| {
            conn.and_then(|c| c.get(name))
                .map(|v| v.expose().to_string())
        };
        let hosts = field("allow_hosts").or_else(|| std::env::var(ENV_ALLOW_HOSTS).ok());
        let private = field("allow_private").or_else(|| std::env::var(ENV_ALLOW_PRIVATE).ok());
        Policy {
            allow_hosts: hosts
                .map(|h| {
                    h.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            allow_private: private.is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes")),
        }
    }

    /// Checks a URL before anything is sent: scheme, allow-list, and an IP
    /// literal host (names are checked when resolved, [`PublicResolver`]).
    pub fn check(&self, url: &reqwest::Url) -> Result<(), StepError> {
        let refuse =
            |msg: String| StepError::new(ErrorKind::InvalidInput, format!("http.request: {msg}"));
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(format!("`{}` URLs are not sent", url.scheme())));
        }
        let Some(host) = url.host_str() else {
            return Err(refuse("the URL has no host".into()));
        };
        let name = host.to_ascii_lowercase();
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|a| host_matches(a, &name))
        {
            return Err(refuse(format!(
                "host `{name}` is not in the allow-list (`allow_hosts` / {ENV_ALLOW_HOSTS})"
            )));
        }
        // The URL parser has already turned `0x7f000001` and the like into
        // dotted form; IPv6 literals keep their brackets.
        let ip = match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => Some(ip),
            Err(_) if name == "localhost" || name.ends_with(".localhost") => {
                Some(IpAddr::from([127, 0, 0, 1]))
            }
            Err(_) => None,
        };
        if !self.allow_private && ip.is_some_and(is_internal) {
            return Err(refuse(format!(
                "host `{name}` is a private, loopback or link-local address; set `allow_private: true` on the connection (or {ENV_ALLOW_PRIVATE}=1) to allow it"
            )));
        }
        Ok(())
    }
}

/// `*.example.com` matches below `example.com`; anything else exactly.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

/// A DNS resolver that drops private, loopback and link-local addresses,
/// so a public name pointing inside (or rebinding there) is refused at
/// connect time, not only when checked.
#[derive(Debug, Default)]
pub struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.into_iter().filter(|a| !is_internal(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to private, loopback or link-local addresses; set `allow_private: true` on the connection (or {ENV_ALLOW_PRIVATE}=1) to allow them"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client for `http.request` to public addresses only.
pub fn public_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect_policy())
        .dns_resolver(Arc::new(PublicResolver))
        .build()
        .expect("HTTP client builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_policy_refuses_internal_literals_and_hosts_off_the_list() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let p = Policy::default();
        for u in [
            "http://127.0.0.1:8080/x",
            "http://[::1]/",
            "http://169.254.169.254/latest",
            "http://localhost/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let e = p.check(&url(u)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{u}");
        }
        assert!(p.check(&url("https://api.example.com/x")).is_ok());
        assert!(p.check(&url("file:///etc/passwd")).is_err());
        let open = Policy {
            allow_private: true,
            ..Policy::default()
        };
        assert!(open.check(&url("http://127.0.0.1:8080/x")).is_ok());
        let listed = Policy {
            allow_hosts: vec!["api.example.com".into(), "*.example.org".into()],
            allow_private: false,
        };
        assert!(listed.check(&url("https://api.example.com/x")).is_ok());
        assert!(listed.check(&url("https://a.b.example.org/x")).is_ok());
        assert!(listed.check(&url("https://example.org/x")).is_err());
        assert!(listed.check(&url("https://evilexample.org/x")).is_err());
        assert!(listed.check(&url("https://other.com/x")).is_err());
    }

    #[test]
    fn credential_headers_are_sensitive() {
        for h in [
            "Authorization",
            "X-Api-Key",
            "Cookie",
            "Set-Cookie",
            "X-My-Token",
            "x-client-secret",
        ] {
            assert!(is_sensitive_header(h), "{h}");
        }
        for h in ["Content-Type", "Accept", "Version", "X-Request-Id"] {
            assert!(!is_sensitive_header(h), "{h}");
        }
    }
}
