//! The admin API: `GET /admin/recipes` (active versions, rejected files,
//! last reload), `POST /admin/reload`, and `GET /metrics` (Prometheus text).
//! Every route wants `Authorization: Bearer <--admin-token>`; the routes are
//! served on `--admin-listen`, not on the public webhook listener unless
//! the two addresses are the same.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
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

use super::{Outcome, Reloader, Trigger};

/// The admin routes, behind the bearer token.
pub fn router(reloader: Arc<Reloader>, token: Arc<str>) -> Router {
    Router::new()
        .route("/admin/recipes", get(recipes))
        .route("/admin/reload", post(reload))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(token, authorize))
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
    let m = &r.metrics;
    let mut out = String::new();
    let (rejected, unrecorded) = crate::server::rejects::snapshot();
    let _ = writeln!(
        out,
        "# HELP patchbay_webhook_rejected_total Webhook deliveries refused, by reason.\n# TYPE patchbay_webhook_rejected_total counter"
    );
    for (reason, n) in rejected {
        let _ = writeln!(
            out,
            "patchbay_webhook_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP patchbay_webhook_rejected_unrecorded_total Refused deliveries counted but not recorded in the store (over the sample rate).\n# TYPE patchbay_webhook_rejected_unrecorded_total counter\npatchbay_webhook_rejected_unrecorded_total {unrecorded}"
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_reloads_total Reloads of recipes and connections by result.\n# TYPE patchbay_reloads_total counter"
    );
    for outcome in super::Outcome::ALL {
        let _ = writeln!(
            out,
            "patchbay_reloads_total{{result=\"{}\"}} {}",
            outcome.as_str(),
            m.reloads[outcome as usize].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP patchbay_reload_recipes_total Recipes added, changed, removed and files rejected by reloads.\n# TYPE patchbay_reload_recipes_total counter"
    );
    for (label, c) in [
        ("added", &m.added),
        ("changed", &m.changed),
        ("removed", &m.removed),
        ("rejected", &m.rejected),
    ] {
        let _ = writeln!(
            out,
            "patchbay_reload_recipes_total{{change=\"{label}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let status = r.status();
    let _ = writeln!(
        out,
        "# HELP patchbay_reload_last_duration_seconds Duration of the last reload.\n# TYPE patchbay_reload_last_duration_seconds gauge\npatchbay_reload_last_duration_seconds {}",
        m.last_duration_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_reload_last_success_timestamp_seconds End of the last reload that did not fail.\n# TYPE patchbay_reload_last_success_timestamp_seconds gauge\npatchbay_reload_last_success_timestamp_seconds {}",
        m.last_success.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_recipes_active Recipes taking events.\n# TYPE patchbay_recipes_active gauge\npatchbay_recipes_active {}",
        status.recipes.len()
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_recipe_files_rejected Files currently rejected (their previous version, if any, keeps running).\n# TYPE patchbay_recipe_files_rejected gauge\npatchbay_recipe_files_rejected {}",
        status.rejected.len()
    );
    let d = &r.service().dispatch;
    let _ = writeln!(
        out,
        "# HELP patchbay_backlog_runs Runs this process stored queued that no claim has taken yet (deliveries wait above --max-backlog).\n# TYPE patchbay_backlog_runs gauge\npatchbay_backlog_runs {}",
        d.backlog()
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_claimed_runs_waiting Runs claimed and waiting for a free worker.\n# TYPE patchbay_claimed_runs_waiting gauge\npatchbay_claimed_runs_waiting {}",
        d.waiting()
    );
    let _ = writeln!(
        out,
        "# HELP patchbay_deliveries_delayed_total Deliveries that waited for the backlog to shrink before they were stored.\n# TYPE patchbay_deliveries_delayed_total counter\npatchbay_deliveries_delayed_total {}",
        d.delayed()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
