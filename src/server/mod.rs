//! The HTTP surface of `patchbay run`: webhook ingress per connection,
//! `/healthz` and `/readyz`. A delivery is answered 2xx only after its
//! events are committed to the store; every rejected one is recorded.

pub mod admin;
pub mod console;
pub mod listen;
pub mod operator;
pub mod rejects;
pub mod verify;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::engine::{RecipeSet, Service};
use crate::store::{Delivery, NewEvent};

/// The router of the engine.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/hooks/{connection}", post(hook))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(svc)
}

async fn ready(State(svc): State<Arc<Service>>) -> Response {
    let store = svc.store().ping().await;
    let recipes = svc.recipes().all().count();
    let status = if store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"store": store, "recipes": recipes}))).into_response()
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Answers a rejected delivery: counted by reason for `/metrics`, and
/// recorded in the store only as a rate-limited sample ([`rejects`]), so a
/// flood of bad requests costs no store write each. The connection name
/// in the record and the log is cut to [`rejects::MAX_NAME_CHARS`].
async fn reject(
    svc: &Service,
    connection: &str,
    reason: rejects::Reason,
    status: StatusCode,
    message: String,
) -> Response {
    rejects::count(reason);
    let connection = rejects::truncate(connection, rejects::MAX_NAME_CHARS);
    if rejects::sample() {
        let d = Delivery {
            connection: connection.clone(),
            status: status.as_u16(),
            outcome: rejects::truncate(&message, rejects::MAX_MESSAGE_CHARS),
            events: 0,
            received_at: chrono::Utc::now(),
        };
        if let Err(e) = svc.store().reject(d).await {
            tracing::error!(error = %e, "could not record a rejected delivery");
        }
        tracing::info!(%connection, status = status.as_u16(), reason = reason.as_str(), %message, "delivery rejected");
    }
    // Labels stay bounded: an unknown connection is not the sender's text.
    let label = if svc.runtime().connection(&connection).is_some() {
        connection.as_str()
    } else {
        "(unknown)"
    };
    crate::metrics::global().delivery(label, &format!("rejected_{}", status.as_u16()));
    answer(status, json!({"error": message}))
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Timeout,
}

/// The whole body, at most `limit` bytes, within `timeout` (a sender that
/// dribbles its body holds a connection and a task).
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// A delivery's events to store, its unmatched items and its item count;
/// or why it is refused.
type Split = Result<(Vec<NewEvent>, u32, u32), (rejects::Reason, StatusCode, String)>;

/// A delivery accepted on a deprecated signature: counted each time
/// (`patchbay_webhook_legacy_signatures_total`), and a warning the first
/// time per connection, so a sender that never moves on does not fill the
/// logs.
fn legacy_signature(connection: &str, header: &str, instead_of: &str) {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex, PoisonError};
    static WARNED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    crate::metrics::global()
        .webhook_legacy_signatures
        .get_or_create(&crate::metrics::ConnectionLabels {
            connection: connection.to_string(),
        })
        .inc();
    let first = WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(connection.to_string());
    if first {
        tracing::warn!(
            connection,
            header,
            "a delivery was accepted on the deprecated `{header}` signature: the sender should sign with `{instead_of}`; later ones are counted in patchbay_webhook_legacy_signatures_total, not logged"
        );
    } else {
        tracing::debug!(
            connection,
            header,
            "delivery accepted on a deprecated signature"
        );
    }
}

/// Parses a verified body and splits it into the events of the recipes
/// it fires (CPU work proportional to the body).
fn split_delivery(
    svc: &Service,
    connection: &str,
    connector: &str,
    body: &[u8],
    max_events: usize,
    recipes: &RecipeSet,
) -> Split {
    use rejects::Reason;
    let catalog = svc.catalog();
    let Some(def) = catalog.connector(connector) else {
        let msg = format!("connection `{connection}` has an unknown connector");
        return Err((Reason::UnknownConnection, StatusCode::NOT_FOUND, msg));
    };
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Reason::Malformed,
            StatusCode::BAD_REQUEST,
            format!("malformed JSON: {e}"),
        )
    })?;
    let items = crate::interpreter::event::delivery(&catalog, def, parsed)
        .map_err(|e| (Reason::BadDelivery, StatusCode::BAD_REQUEST, e.to_string()))?;
    if items.len() > max_events {
        let msg = format!(
            "the delivery holds {} events; connection `{connection}` takes at most {max_events} per delivery (`max_events`)",
            items.len()
        );
        return Err((Reason::TooManyEvents, StatusCode::PAYLOAD_TOO_LARGE, msg));
    }
    let mut events = Vec::new();
    let mut unmatched = 0u32;
    let total = items.len() as u32;
    for item in items {
        let Ok((op, payload)) = item else {
            unmatched += 1;
            continue;
        };
        let matching = recipes.for_webhook(op.id(), connection);
        let ev = svc.event_for(&op, connection, payload, &matching);
        if ev.runs.is_empty() {
            unmatched += 1;
            continue;
        }
        events.push(ev);
    }
    Ok((events, unmatched, total))
}

/// What a webhook delivery was answered, once its events are stored.
/// (Fields in the order `json!` gave them.)
#[derive(serde::Serialize)]
struct Accepted {
    accepted: u32,
    duplicates: u32,
    events: u32,
    runs: u32,
    unmatched: u32,
}

/// Events a delivery may hold unless its connection sets `max_events`.
pub const DEFAULT_MAX_EVENTS: usize = 1000;

/// How long the body of a delivery may take to arrive once its headers did.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bodies above this size are parsed and split off the async runtime's
/// threads: that work is proportional to the body and would stall every
/// other request on the thread.
const BLOCKING_BODY_BYTES: usize = 64 * 1024;

async fn hook(
    State(svc): State<Arc<Service>>,
    Path(connection): Path<String>,
    // A list, not a map: no hashing per delivery, and a repeated
    // parameter is not an error (the first `token` counts).
    Query(query): Query<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    use rejects::Reason;
    // The parts, not the `HeaderMap` extractor: that one copies every header.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let Some(conn) = svc.runtime().connection(&connection) else {
        let msg = format!(
            "no connection `{}`",
            rejects::truncate(&connection, rejects::MAX_NAME_CHARS)
        );
        return reject(
            &svc,
            &connection,
            Reason::UnknownConnection,
            StatusCode::NOT_FOUND,
            msg,
        )
        .await;
    };
    let catalog = svc.catalog();
    let Some(def) = catalog.connector(&conn.connector) else {
        let msg = format!("connection `{connection}` has an unknown connector");
        return reject(
            &svc,
            &connection,
            Reason::UnknownConnection,
            StatusCode::NOT_FOUND,
            msg,
        )
        .await;
    };
    let Some(hook) = def.webhook.clone() else {
        let msg = format!(
            "connection `{connection}` ({}) receives no webhooks",
            def.connector
        );
        return reject(
            &svc,
            &connection,
            Reason::NoWebhooks,
            StatusCode::NOT_FOUND,
            msg,
        )
        .await;
    };
    let query_token = query
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    // Before the body is read: a wrong token costs no body transfer.
    if let Err(e) = verify::precheck(&hook.verify, &conn, headers, query_token) {
        return reject(
            &svc,
            &connection,
            Reason::of(&e),
            StatusCode::UNAUTHORIZED,
            e.to_string(),
        )
        .await;
    }
    let too_large = || format!("body larger than the {} byte limit", svc.body_limit());
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > svc.body_limit() as u64) {
        return reject(
            &svc,
            &connection,
            Reason::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            too_large(),
        )
        .await;
    }
    let body: Bytes = match read_body(body, svc.body_limit(), BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return reject(
                &svc,
                &connection,
                Reason::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                too_large(),
            )
            .await
        }
        Err(BodyError::Timeout) => {
            let msg = format!(
                "the body did not arrive within {}s",
                BODY_READ_TIMEOUT.as_secs()
            );
            return reject(
                &svc,
                &connection,
                Reason::Timeout,
                StatusCode::REQUEST_TIMEOUT,
                msg,
            )
            .await;
        }
    };
    match verify::verify(&hook.verify, &conn, headers, query_token, &body) {
        Err(e) => {
            return reject(
                &svc,
                &connection,
                Reason::of(&e),
                StatusCode::UNAUTHORIZED,
                e.to_string(),
            )
            .await;
        }
        Ok(verify::Verified::Legacy { header, instead_of }) => {
            legacy_signature(&connection, &header, &instead_of)
        }
        Ok(verify::Verified::Checked) => {}
    }
    let max_events = conn
        .get("max_events")
        .and_then(|v| v.expose().parse::<usize>().ok())
        .unwrap_or(DEFAULT_MAX_EVENTS);
    let recipes = svc.recipes();
    let big = body.len() > BLOCKING_BODY_BYTES;
    let split = {
        let svc = svc.clone();
        let connection = connection.clone();
        let connector = conn.connector.clone();
        move || split_delivery(&svc, &connection, &connector, &body, max_events, &recipes)
    };
    let split = if big {
        match tokio::task::spawn_blocking(split).await {
            Ok(r) => r,
            Err(e) => Err((
                Reason::BadDelivery,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the delivery could not be split: {e}"),
            )),
        }
    } else {
        split()
    };
    let (events, unmatched, total) = match split {
        Ok(x) => x,
        Err((reason, status, msg)) => return reject(&svc, &connection, reason, status, msg).await,
    };
    let outcome = if events.is_empty() {
        "unmatched"
    } else {
        "accepted"
    };
    let status = if events.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let delivery = Delivery {
        connection: connection.clone(),
        status: status.as_u16(),
        outcome: outcome.to_string(),
        events: total,
        received_at: chrono::Utc::now(),
    };
    let result = svc.accept(delivery, events).await;
    match result {
        Ok(n) => {
            crate::metrics::global().delivery(&connection, outcome);
            let accepted = Accepted {
                accepted: n.events,
                duplicates: n.duplicates,
                events: total,
                runs: n.runs,
                unmatched,
            };
            (status, Json(accepted)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store a delivery");
            // Not acknowledged: 429 is the one answer every sender retries
            // (HighLevel retries nothing else).
            let mut r = answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": format!("the store is unavailable; retry ({e})")}),
            );
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("30"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_stalls_times_out_and_one_over_the_limit_is_refused() {
        use futures_util::StreamExt;
        let first =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"[{"))]);
        let stalled = axum::body::Body::from_stream(first.chain(futures_util::stream::pending()));
        let started = std::time::Instant::now();
        let r = read_body(stalled, 1024, std::time::Duration::from_millis(200)).await;
        assert_eq!(r, Err(BodyError::Timeout));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let big = axum::body::Body::from(vec![b'x'; 2048]);
        assert_eq!(
            read_body(big, 1024, BODY_READ_TIMEOUT).await,
            Err(BodyError::TooLarge)
        );
        let ok = axum::body::Body::from("[]");
        assert_eq!(
            read_body(ok, 1024, BODY_READ_TIMEOUT).await.unwrap(),
            Bytes::from_static(b"[]")
        );
    }
}
