//! Authentication of one connection: static tokens and API keys, OAuth2
//! client credentials (cached until shortly before expiry, one fetch shared
//! by concurrent requests) and the OAuth2 refresh-token flow (the rotated
//! refresh token is persisted through [`TokenStore`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::errors::{classify, StepError};
use crate::catalog::{Auth, ConnectorDef, Encoding, ErrorKind};
use crate::connections::ResolvedConnection;
use crate::secret::Secret;

/// A boxed future, for object-safe async traits.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Tokens obtained by a refresh, persisted so a restart does not reuse a
/// consumed refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTokens {
    /// The access token.
    pub access_token: Secret,
    /// The rotated refresh token.
    pub refresh_token: Option<Secret>,
    /// Unix seconds at which the access token expires.
    pub expires_at: Option<i64>,
}

/// A token refresh run by [`TokenStore::exclusive`]: given the tokens
/// stored now, the tokens to use and whether to save them.
pub type Refresh<'a> = Box<
    dyn FnOnce(Option<StoredTokens>) -> BoxFut<'a, Result<(StoredTokens, bool), StepError>>
        + Send
        + 'a,
>;

/// Where refreshed tokens of connections are kept (the store implements it).
pub trait TokenStore: Send + Sync {
    /// The last tokens saved for a connection.
    fn load<'a>(&'a self, connection: &'a str) -> BoxFut<'a, Option<StoredTokens>>;
    /// Saves tokens for a connection, replacing earlier ones.
    fn save<'a>(&'a self, connection: &'a str, tokens: StoredTokens) -> BoxFut<'a, ()>;
    /// Runs `refresh` while no other process refreshes this connection's
    /// tokens (a rotated refresh token is good for one use), with the
    /// tokens stored now, and saves what it asks to. A store used by one
    /// process needs no lock: the connection's auth state already lets one
    /// request refresh at a time.
    fn exclusive<'a>(
        &'a self,
        connection: &'a str,
        refresh: Refresh<'a>,
    ) -> BoxFut<'a, Result<StoredTokens, StepError>> {
        Box::pin(async move {
            let stored = self.load(connection).await;
            let (tokens, save) = refresh(stored).await?;
            if save {
                self.save(connection, tokens.clone()).await;
            }
            Ok(tokens)
        })
    }
}

/// Expiry margin: a token is renewed this long before it expires.
const MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    refresh_token: Option<Secret>,
    expires_at: Option<Instant>,
}

/// The auth state of one connection, shared by all its requests.
#[derive(Debug, Default)]
pub struct AuthState {
    cached: Mutex<Option<Cached>>,
}

/// What a request needs to authenticate.
pub struct AuthContext<'a> {
    /// The connector.
    pub def: &'a ConnectorDef,
    /// The connection's values.
    pub conn: &'a ResolvedConnection,
    /// Base URL for relative token URLs.
    pub base_url: &'a str,
    /// HTTP client.
    pub client: &'a reqwest::Client,
    /// Persistence of refreshed tokens.
    pub tokens: &'a dyn TokenStore,
}

impl AuthState {
    /// The header to send, or none. Fetches a token when none is cached or
    /// it is about to expire; concurrent callers wait for one fetch.
    pub async fn header(
        &self,
        cx: &AuthContext<'_>,
    ) -> Result<Option<(String, Secret)>, StepError> {
        match &cx.def.auth {
            Auth::None => Ok(None),
            Auth::ApiKeyHeader { header, key } => {
                let v = field(cx.conn, key)?;
                Ok(Some((header.clone(), v)))
            }
            Auth::Bearer { .. } | Auth::Oauth2ClientCredentials { .. } => {
                let token = self.token(cx).await?;
                Ok(Some((
                    "authorization".into(),
                    Secret::new(format!("Bearer {}", token.expose())),
                )))
            }
        }
    }

    async fn token(&self, cx: &AuthContext<'_>) -> Result<Secret, StepError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.expires_at.is_none_or(|e| Instant::now() + MARGIN < e) {
                return Ok(c.token.clone());
            }
        }
        let fresh = match &cx.def.auth {
            Auth::Bearer { token, refresh } => {
                let stale = cached.take();
                match (stale, refresh) {
                    // An expired or refused token: refresh, unless another
                    // process already has (its tokens are in the store).
                    (Some(old), Some(_)) => self.refresh_once(cx, old).await?,
                    _ => match cx.tokens.load(&cx.conn.name).await {
                        Some(t) => Cached {
                            token: t.access_token,
                            refresh_token: t.refresh_token,
                            expires_at: t.expires_at.map(unix_to_instant),
                        },
                        None => Cached {
                            token: field(cx.conn, token)?,
                            refresh_token: None,
                            expires_at: None,
                        },
                    },
                }
            }
            Auth::Oauth2ClientCredentials {
                static_token: Some(f),
                ..
            } if cx.conn.get(f).is_some() => Cached {
                token: field(cx.conn, f)?,
                refresh_token: None,
                expires_at: None,
            },
            Auth::Oauth2ClientCredentials { .. } => self.client_credentials(cx).await?,
            _ => unreachable!("header() handles the other schemes"),
        };
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// After a 401 with `used`: forget that token (unless another request
    /// already replaced it) and say whether a new one can be had.
    pub async fn invalidate(&self, cx: &AuthContext<'_>, used: &Secret) -> bool {
        let mut cached = self.cached.lock().await;
        let same = cached.as_ref().is_some_and(|c| {
            format!("Bearer {}", c.token.expose()) == used.expose() || c.token == *used
        });
        let renewable = match &cx.def.auth {
            Auth::Bearer {
                refresh: Some(r), ..
            } => {
                cx.conn.get(&r.refresh_token).is_some()
                    || cached.as_ref().is_some_and(|c| c.refresh_token.is_some())
            }
            Auth::Oauth2ClientCredentials { static_token, .. } => static_token
                .as_ref()
                .is_none_or(|f| cx.conn.get(f).is_none()),
            _ => false,
        };
        if !renewable {
            return false;
        }
        if same {
            // Mark expired; keep the refresh token for the bearer flow.
            if let Some(c) = cached.as_mut() {
                c.expires_at = Some(Instant::now());
            }
        }
        true
    }

    async fn client_credentials(&self, cx: &AuthContext<'_>) -> Result<Cached, StepError> {
        let Auth::Oauth2ClientCredentials {
            token_url,
            encoding,
            client_id,
            client_secret,
            ..
        } = &cx.def.auth
        else {
            unreachable!()
        };
        let id = field(cx.conn, client_id)?;
        let secret = field(cx.conn, client_secret)?;
        let params = [
            ("grant_type", "client_credentials"),
            ("client_id", id.expose()),
            ("client_secret", secret.expose()),
        ];
        let body = self.post_token(cx, token_url, *encoding, &params).await?;
        tokens_from(&body, None)
    }

    /// Refreshes `old` under the store's lock for this connection: when the
    /// stored access token is no longer the one that failed, another
    /// process refreshed it, and that one is used instead.
    async fn refresh_once(&self, cx: &AuthContext<'_>, old: Cached) -> Result<Cached, StepError> {
        let refresh: Refresh<'_> = Box::new(move |stored: Option<StoredTokens>| {
            Box::pin(async move {
                if let Some(t) = stored.filter(|t| t.access_token != old.token) {
                    return Ok((t, false));
                }
                let fresh = self.refresh(cx, old.refresh_token).await?;
                let expires_at = fresh.expires_at.map(|e| {
                    chrono::Utc::now().timestamp()
                        + e.saturating_duration_since(Instant::now()).as_secs() as i64
                });
                let tokens = StoredTokens {
                    access_token: fresh.token,
                    refresh_token: fresh.refresh_token,
                    expires_at,
                };
                Ok((tokens, true))
            }) as BoxFut<'_, _>
        });
        let t = cx.tokens.exclusive(&cx.conn.name, refresh).await?;
        Ok(Cached {
            token: t.access_token,
            refresh_token: t.refresh_token,
            expires_at: t.expires_at.map(unix_to_instant),
        })
    }

    /// Asks the token endpoint for new tokens with the refresh token.
    async fn refresh(
        &self,
        cx: &AuthContext<'_>,
        current: Option<Secret>,
    ) -> Result<Cached, StepError> {
        let Auth::Bearer {
            refresh: Some(r), ..
        } = &cx.def.auth
        else {
            unreachable!()
        };
        let refresh_token = match current {
            Some(t) => t,
            None => field(cx.conn, &r.refresh_token)?,
        };
        let id = field(cx.conn, &r.client_id)?;
        let secret = field(cx.conn, &r.client_secret)?;
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", id.expose()),
            ("client_secret", secret.expose()),
        ];
        let body = self
            .post_token(cx, &r.token_url, r.encoding, &params)
            .await?;
        tokens_from(&body, Some(refresh_token))
    }

    async fn post_token(
        &self,
        cx: &AuthContext<'_>,
        url: &str,
        encoding: Encoding,
        params: &[(&str, &str)],
    ) -> Result<Value, StepError> {
        crate::metrics::global()
            .token_refreshes
            .get_or_create(&crate::metrics::ConnectionLabels {
                connection: cx.conn.name.clone(),
            })
            .inc();
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", cx.base_url.trim_end_matches('/'))
        };
        let req = cx.client.post(&url).timeout(Duration::from_secs(30));
        let req = match encoding {
            Encoding::Json => {
                let body: serde_json::Map<String, Value> = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                req.json(&body)
            }
            Encoding::Form => req.form(params),
        };
        let resp = req.send().await.map_err(|e| {
            StepError::new(
                ErrorKind::Network,
                format!("token request failed: {}", without_url(&e)),
            )
        })?;
        let status = resp.status().as_u16();
        tracing::debug!(connection = %cx.conn.name, url = %url, status, "token request");
        // Capped like every API answer: a token endpoint is external input.
        let max = super::outbound::max_response_bytes(Some(cx.conn));
        let text = super::outbound::read_capped(resp, max).await?;
        if !(200..300).contains(&status) {
            let mut e = classify(cx.def, status, &text);
            // A failed token request is an auth failure whatever its status.
            if matches!(status, 400 | 401 | 403) {
                e.kind = ErrorKind::Unauthorized;
            }
            e.message = format!("could not get an access token: {}", e.message);
            return Err(e);
        }
        serde_json::from_str(&text).map_err(|_| {
            StepError::new(
                ErrorKind::Unauthorized,
                "the token endpoint answered without JSON",
            )
        })
    }
}

fn tokens_from(body: &Value, previous_refresh: Option<Secret>) -> Result<Cached, StepError> {
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            StepError::new(
                ErrorKind::Unauthorized,
                "the token endpoint answered without `access_token`",
            )
        })?;
    let expires_at = body
        .get("expires_in")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        // Clamped: an absurd `expires_in` would overflow the `Instant`.
        .map(|s| Instant::now() + Duration::from_secs(s.min(MAX_TOKEN_LIFETIME_SECS)));
    let refresh_token = body
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(Secret::new)
        .or(previous_refresh);
    Ok(Cached {
        token: Secret::new(token),
        refresh_token,
        expires_at,
    })
}

fn unix_to_instant(unix: i64) -> Instant {
    let now = chrono::Utc::now().timestamp();
    let left = unix.saturating_sub(now).max(0) as u64;
    Instant::now() + Duration::from_secs(left.min(MAX_TOKEN_LIFETIME_SECS))
}

/// The longest a token is trusted without a refresh (a year).
const MAX_TOKEN_LIFETIME_SECS: u64 = 365 * 86_400;

/// A connection field as a secret, or an `unauthorized` error naming it.
fn field(conn: &ResolvedConnection, name: &str) -> Result<Secret, StepError> {
    conn.get(name)
        .map(|v| Secret::new(v.expose()))
        .ok_or_else(|| {
            StepError::new(
                ErrorKind::Unauthorized,
                format!("connection `{}` has no `{name}`", conn.name),
            )
        })
}

/// A reqwest error's text without the URL (query strings may hold secrets).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    s
}
