//! The HTTP surface of `patchbay run`: webhook ingress per connection,
//! `/healthz` and `/readyz`. A delivery is answered 2xx only after its
//! events are committed to the store; every rejected one is recorded.

pub mod admin;
pub mod console;
pub mod verify;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::service::Service;
use crate::store::Delivery;

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
    let store = svc.store.ping().await;
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

/// Records a rejected delivery and answers it.
async fn reject(svc: &Service, connection: &str, status: StatusCode, message: String) -> Response {
    let d = Delivery {
        connection: connection.to_string(),
        status: status.as_u16(),
        outcome: message.clone(),
        events: 0,
        received_at: chrono::Utc::now(),
    };
    if let Err(e) = svc.store.reject(d).await {
        tracing::error!(error = %e, "could not record a rejected delivery");
    }
    // Labels stay bounded: an unknown connection is not the sender's text.
    let label = if svc.runtime.connection(connection).is_some() {
        connection
    } else {
        "(unknown)"
    };
    crate::metrics::global().delivery(label, &format!("rejected_{}", status.as_u16()));
    tracing::info!(connection, status = status.as_u16(), reason = %message, "delivery rejected");
    answer(status, json!({"error": message}))
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

async fn hook(
    State(svc): State<Arc<Service>>,
    Path(connection): Path<String>,
    // A list, not a map: no hashing per delivery, and a repeated
    // parameter is not an error (the first `token` counts).
    Query(query): Query<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    // The parts, not the `HeaderMap` extractor: that one copies every header.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let Some(conn) = svc.runtime.connection(&connection) else {
        return reject(
            &svc,
            &connection,
            StatusCode::NOT_FOUND,
            format!("no connection `{connection}`"),
        )
        .await;
    };
    let catalog = svc.catalog();
    let Some(def) = catalog.connector(&conn.connector) else {
        return reject(
            &svc,
            &connection,
            StatusCode::NOT_FOUND,
            format!("connection `{connection}` has an unknown connector"),
        )
        .await;
    };
    let Some(hook) = def.webhook.clone() else {
        let msg = format!(
            "connection `{connection}` ({}) receives no webhooks",
            def.connector
        );
        return reject(&svc, &connection, StatusCode::NOT_FOUND, msg).await;
    };
    let body: Bytes = match axum::body::to_bytes(body, svc.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            let msg = format!("body larger than the {} byte limit", svc.body_limit);
            return reject(&svc, &connection, StatusCode::PAYLOAD_TOO_LARGE, msg).await;
        }
    };
    if let Err(e) = verify::verify(
        &hook.verify,
        &conn,
        headers,
        query
            .iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.as_str()),
        &body,
    ) {
        return reject(&svc, &connection, StatusCode::UNAUTHORIZED, e.to_string()).await;
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("malformed JSON: {e}");
            return reject(&svc, &connection, StatusCode::BAD_REQUEST, msg).await;
        }
    };
    let items = match crate::engine::event::delivery(&catalog, def, parsed) {
        Ok(items) => items,
        Err(e) => return reject(&svc, &connection, StatusCode::BAD_REQUEST, e.to_string()).await,
    };
    let recipes = svc.recipes();
    let mut events = Vec::new();
    let mut unmatched = 0u32;
    let total = items.len() as u32;
    for item in items {
        let Ok((op, payload)) = item else {
            unmatched += 1;
            continue;
        };
        let matching = recipes.for_webhook(op.id(), &connection);
        let ev = svc.event_for(&op, &connection, payload, &matching);
        if ev.runs.is_empty() {
            unmatched += 1;
            continue;
        }
        events.push(ev);
    }
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
    // Over the backlog limit, wait for the workers before accepting more
    // (src/dispatch.rs): nothing is stored yet, so a sender that gives up
    // meanwhile loses nothing it was told was accepted.
    if !events.is_empty() {
        svc.dispatch.admit().await;
    }
    // Stored and handed to the workers in a task of its own: if the sender
    // hangs up, the request's future is dropped, but runs claimed for this
    // process must still reach a worker (and the reservation be settled).
    let stored = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let reserved = svc
                .dispatch
                .reserve(events.iter().map(|e| e.runs.len()).sum());
            let writing = std::time::Instant::now();
            let result = svc.store.ingest(delivery, events, reserved.clone()).await;
            crate::metrics::global().store_write("ingest", writing.elapsed());
            match result {
                Ok(mut n) => {
                    let claimed = std::mem::take(&mut n.claimed);
                    svc.dispatch.settle(reserved.as_ref(), claimed, n.runs);
                    Ok(n)
                }
                Err(e) => {
                    svc.dispatch.settle(reserved.as_ref(), Vec::new(), 0);
                    Err(e)
                }
            }
        })
    };
    let result = match stored.await {
        Ok(r) => r,
        Err(e) => Err(crate::store::StoreError::Corrupt {
            what: "ingest task",
            detail: e.to_string(),
        }),
    };
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
