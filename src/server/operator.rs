//! The operator listener: `GET /admin/recipes` (active versions, rejected files,
//! last reload), `POST /admin/reload`, and `GET /metrics` (Prometheus text).
//! Every route wants `Authorization: Bearer <--admin-token>`; the routes are
//! served on `--admin-listen`, not on the public webhook listener unless
//! the two addresses are the same.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::reload::{Outcome, Reloader, Trigger};

/// The admin routes, behind the bearer token.
pub fn router(reloader: Arc<Reloader>, token: Arc<str>) -> Router {
    Router::new()
        .route("/admin/recipes", get(recipes))
        .route("/admin/reload", post(reload))
        .route("/metrics", get(metrics))
        .merge(super::admin::routes())
        .layer(middleware::from_fn_with_state(token, authorize))
        // The console's files hold no data: the page asks for the token
        // and sends it with every API call.
        .merge(super::console::routes())
        .with_state(reloader)
}

/// Constant-time bearer check.
async fn authorize(
    State(token): State<Arc<str>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) && !token.is_empty() {
        return next.run(req).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "admin endpoints need `Authorization: Bearer <admin token>` (--admin-token or PATCHBAY_ADMIN_TOKEN)"})),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

async fn recipes(State(r): State<Arc<Reloader>>) -> Response {
    Json(r.status()).into_response()
}

/// Optional body of `POST /admin/reload`: settings the caller expects the
/// engine to run with. They cannot change without a restart, so a
/// different value is refused (409) rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    listen: Option<String>,
    store: Option<String>,
}

async fn reload(State(r): State<Arc<Reloader>>, body: Bytes) -> Response {
    let asked: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("the body is optional; when given it is {{\"listen\": ADDR, \"store\": URL}}: {e}")})),
                )
                    .into_response()
            }
        }
    };
    if let Err(e) = r.check_fixed(asked.listen.as_deref(), asked.store.as_deref()) {
        return (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response();
    }
    let report = r
        .reload(Trigger::Admin)
        .await
        .expect("an admin reload always reports");
    let status = match report.result {
        Outcome::Error => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    (status, Json(report)).into_response()
}

async fn metrics(State(r): State<Arc<Reloader>>) -> Response {
    let m = crate::metrics::global();
    // Gauges of what is, read at the scrape.
    let (rejected, unrecorded) = super::rejects::snapshot();
    for (reason, n) in rejected {
        let c = m
            .webhook_rejected
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.to_string(),
            });
        c.inc_by(n.saturating_sub(c.get()));
    }
    m.webhook_rejected_unrecorded
        .inc_by(unrecorded.saturating_sub(m.webhook_rejected_unrecorded.get()));
    let status = r.status();
    m.recipes_active.set(status.recipes.len() as i64);
    m.files_rejected.set(status.rejected.len() as i64);
    let d = &r.service().dispatch();
    m.backlog.set(d.backlog() as i64);
    m.leased_waiting.set(d.waiting() as i64);
    let delayed = d.delayed();
    let counted = m.deliveries_delayed.get();
    m.deliveries_delayed.inc_by(delayed.saturating_sub(counted));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
