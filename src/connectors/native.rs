//! Operations that run inside the engine: the `store` connector's durable
//! links, and `http.request`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::auth::{BoxFut, StoredTokens, TokenStore};
use super::errors::StepError;
use crate::catalog::ErrorKind;

/// Durable key/value links for `store.put/get/delete`, namespaced.
pub trait LinkStore: Send + Sync {
    /// Stores a value, replacing any earlier one; `ttl` makes it expire.
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Value,
        ttl: Option<Duration>,
    ) -> BoxFut<'a, Result<(), String>>;
    /// The value, or `None` when absent or expired.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<Value>, String>>;
    /// Removes a key; whether it existed.
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFut<'a, Result<bool, String>>;
}

/// `(namespace, key)`.
type LinkKey = (String, String);

/// The longest `ttl` a link may have.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// An in-process store: links and tokens for one `patchbay fire` or a test.
/// The engine uses the durable store instead.
#[derive(Debug, Default)]
pub struct MemoryStore {
    links: Mutex<HashMap<LinkKey, (Value, Option<Instant>)>>,
    tokens: Mutex<HashMap<String, StoredTokens>>,
}

impl LinkStore for MemoryStore {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Value,
        ttl: Option<Duration>,
    ) -> BoxFut<'a, Result<(), String>> {
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        self.links
            .lock()
            .expect("store lock")
            .insert((namespace.to_string(), key.to_string()), (value, expires));
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<Value>, String>> {
        let now = Instant::now();
        let v = self
            .links
            .lock()
            .expect("store lock")
            .get(&(namespace.to_string(), key.to_string()))
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.clone());
        Box::pin(async move { Ok(v) })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFut<'a, Result<bool, String>> {
        let existed = self
            .links
            .lock()
            .expect("store lock")
            .remove(&(namespace.to_string(), key.to_string()))
            .is_some();
        Box::pin(async move { Ok(existed) })
    }
}

impl TokenStore for MemoryStore {
    fn load<'a>(&'a self, connection: &'a str) -> BoxFut<'a, Option<StoredTokens>> {
        let t = self
            .tokens
            .lock()
            .expect("store lock")
            .get(connection)
            .cloned();
        Box::pin(async move { t })
    }

    fn save<'a>(&'a self, connection: &'a str, tokens: StoredTokens) -> BoxFut<'a, ()> {
        self.tokens
            .lock()
            .expect("store lock")
            .insert(connection.to_string(), tokens);
        Box::pin(async {})
    }
}

/// Runs `store.put`, `store.get` or `store.delete`.
pub async fn store_op(
    store: &dyn LinkStore,
    native: &str,
    input: &Map<String, Value>,
) -> Result<Value, StepError> {
    let ns = input
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("links");
    // Ids are often numbers (SendPulse): a number key is its text.
    let key = match input.get("key") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(StepError::new(
                ErrorKind::InvalidInput,
                format!("{native}: input `key` must be a non-empty string or a number"),
            ))
        }
    };
    let key = key.as_str();
    let failed = |e: String| {
        StepError::new(
            ErrorKind::Server,
            format!("{native}: the store failed: {e}"),
        )
    };
    match native {
        "store.put" => {
            let ttl = match input.get("ttl").and_then(Value::as_str) {
                Some(t) => Some(crate::duration::parse_duration(t).map_err(|e| {
                    StepError::new(ErrorKind::InvalidInput, format!("store.put: {e}"))
                })?),
                None => None,
            };
            // Expiry times are sums with "now": a ttl near `u64::MAX`
            // seconds would overflow them.
            if ttl.is_some_and(|t| t > MAX_TTL) {
                return Err(StepError::new(
                    ErrorKind::InvalidInput,
                    "store.put: `ttl` is longer than 100 years; leave it out to keep the link forever",
                ));
            }
            let value = input.get("value").cloned().unwrap_or(Value::Null);
            store
                .put(ns, key, value.clone(), ttl)
                .await
                .map_err(failed)?;
            Ok(value)
        }
        "store.get" => Ok(store
            .get(ns, key)
            .await
            .map_err(failed)?
            .unwrap_or(Value::Null)),
        "store.delete" => Ok(Value::Bool(store.delete(ns, key).await.map_err(failed)?)),
        other => Err(StepError::new(
            ErrorKind::InvalidInput,
            format!("no built-in operation `{other}`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_ttl_is_invalid_input_not_a_panic() {
        let store = MemoryStore::default();
        let input = |ttl: &str| {
            serde_json::json!({"namespace": "n", "key": "k", "value": 1, "ttl": ttl})
                .as_object()
                .unwrap()
                .clone()
        };
        let e = store_op(&store, "store.put", &input("213503982334601d"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("100 years"), "{}", e.message);
        assert!(store_op(&store, "store.put", &input("3650d")).await.is_ok());
    }
}
