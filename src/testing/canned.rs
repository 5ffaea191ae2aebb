//! The network and the store of a test case: canned answers handed out per
//! operation in order, every request recorded as it would have been sent,
//! and an in-memory link store that records what a run writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::file::{Response, TransportFailure};
use crate::catalog::ErrorKind;
use crate::connectors::auth::{BoxFut, StoredTokens, TokenStore};
use crate::connectors::native::LinkStore;
use crate::connectors::request::Prepared;
use crate::connectors::{Reply, StepError, Transport};

/// One request as it would have been sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// Operation id.
    pub operation: String,
    /// HTTP method.
    pub method: String,
    /// URL without the query.
    pub url: String,
    /// Query parameters (a repeated name becomes a list).
    pub query: Map<String, Value>,
    /// JSON body, if any.
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    /// Remaining answers per operation, with their 1-based number.
    answers: HashMap<String, (usize, Vec<Response>)>,
    /// Calls per operation.
    calls: HashMap<String, usize>,
    log: Vec<Recorded>,
    /// Messages for calls without an answer, in order.
    unanswered: Vec<String>,
}

/// Canned answers for one case at a time.
#[derive(Default)]
pub struct Canned {
    state: Mutex<State>,
}

impl Canned {
    /// Starts a case: its answers, an empty log.
    pub fn reset(&self, responses: &IndexMap<String, Vec<Response>>) {
        let mut s = self.state.lock().expect("canned lock");
        *s = State::default();
        for (op, list) in responses {
            s.answers.insert(op.clone(), (0, list.clone()));
        }
    }

    /// The requests recorded so far.
    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().expect("canned lock").log.clone()
    }

    /// Calls that found no answer.
    pub fn unanswered(&self) -> Vec<String> {
        self.state.lock().expect("canned lock").unanswered.clone()
    }

    /// Answers never used, as `(operation, 1-based number)`, in file order.
    pub fn unused(&self, responses: &IndexMap<String, Vec<Response>>) -> Vec<(String, usize)> {
        let s = self.state.lock().expect("canned lock");
        let mut out = Vec::new();
        for (op, list) in responses {
            let used = s.answers.get(op).map(|(u, _)| *u).unwrap_or(0);
            for n in used + 1..=list.len() {
                out.push((op.clone(), n));
            }
        }
        out
    }
}

impl Transport for Canned {
    fn answer(&self, op: &str, p: &Prepared) -> Result<Reply, StepError> {
        let mut s = self.state.lock().expect("canned lock");
        let mut query = Map::new();
        for (k, v) in &p.query {
            let v = Value::String(v.clone());
            match query.get_mut(k) {
                Some(Value::Array(a)) => a.push(v),
                Some(prev) => *prev = Value::Array(vec![prev.take(), v]),
                None => {
                    query.insert(k.clone(), v);
                }
            }
        }
        s.log.push(Recorded {
            operation: op.to_string(),
            method: p.method.to_string(),
            url: p.url.clone(),
            query,
            body: p.body.clone(),
        });
        let calls = {
            let c = s.calls.entry(op.to_string()).or_insert(0);
            *c += 1;
            *c
        };
        let answer = match s.answers.get_mut(op) {
            Some((used, list)) if *used < list.len() => {
                *used += 1;
                Some(list[*used - 1].clone())
            }
            Some((_, list)) => {
                let msg = format!(
                    "{op} was called {calls} times but the case gives {} response{} for it (the last one is not repeated)",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" }
                );
                s.unanswered.push(msg.clone());
                return Err(StepError::new(ErrorKind::InvalidInput, msg));
            }
            None => None,
        };
        let Some(r) = answer else {
            let msg = format!("{op} was called but the case gives no response for it");
            s.unanswered.push(msg.clone());
            return Err(StepError::new(ErrorKind::InvalidInput, msg));
        };
        match r.error {
            Some(TransportFailure::Timeout) => {
                return Err(StepError::new(
                    ErrorKind::Timeout,
                    "operation timed out (canned `error: timeout`)",
                ))
            }
            Some(TransportFailure::Reset) => {
                return Err(StepError::new(
                    ErrorKind::Network,
                    "connection reset by peer (canned `error: reset`)",
                ))
            }
            None => {}
        }
        Ok(Reply {
            status: r.status.unwrap_or(200),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), scalar_text(v)))
                .collect(),
            body: match &r.body {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            },
        })
    }
}

/// A scalar as text (`2` -> `"2"`).
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One write of a run to the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkWrite {
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// The value put, or null for a delete.
    pub value: Value,
    /// Whether it was a delete.
    pub deleted: bool,
}

#[derive(Default)]
struct Links {
    values: HashMap<(String, String), Value>,
    writes: Vec<LinkWrite>,
}

/// The in-memory store of a case: seeded links, recorded writes.
#[derive(Default)]
pub struct TestStore {
    links: Mutex<Links>,
}

impl TestStore {
    /// Starts a case with these links present.
    pub fn reset(&self, seed: &[(String, String, Value)]) {
        let mut l = self.links.lock().expect("store lock");
        *l = Links::default();
        for (ns, key, v) in seed {
            l.values.insert((ns.clone(), key.clone()), v.clone());
        }
    }

    /// The writes of the case so far.
    pub fn writes(&self) -> Vec<LinkWrite> {
        self.links.lock().expect("store lock").writes.clone()
    }
}

impl LinkStore for TestStore {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Value,
        _ttl: Option<Duration>,
    ) -> BoxFut<'a, Result<(), String>> {
        let mut l = self.links.lock().expect("store lock");
        l.values
            .insert((namespace.to_string(), key.to_string()), value.clone());
        l.writes.push(LinkWrite {
            namespace: namespace.into(),
            key: key.into(),
            value,
            deleted: false,
        });
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFut<'a, Result<Option<Value>, String>> {
        let v = self
            .links
            .lock()
            .expect("store lock")
            .values
            .get(&(namespace.to_string(), key.to_string()))
            .cloned();
        Box::pin(async move { Ok(v) })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFut<'a, Result<bool, String>> {
        let mut l = self.links.lock().expect("store lock");
        let existed = l
            .values
            .remove(&(namespace.to_string(), key.to_string()))
            .is_some();
        l.writes.push(LinkWrite {
            namespace: namespace.into(),
            key: key.into(),
            value: Value::Null,
            deleted: true,
        });
        Box::pin(async move { Ok(existed) })
    }
}

impl TokenStore for TestStore {
    fn load<'a>(&'a self, _: &'a str) -> BoxFut<'a, Option<StoredTokens>> {
        Box::pin(async { None })
    }

    fn save<'a>(&'a self, _: &'a str, _: StoredTokens) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
}
