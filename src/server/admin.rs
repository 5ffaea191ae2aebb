//! The operator's API over runs: list and filter runs, one run with its
//! event and steps, dead letters, replay (one or many), deliveries,
//! recipe version history, and the mapping preview (the requests a recipe
//! would send for an event, sent nowhere). Served behind the admin token
//! with the reload routes (`src/server/operator.rs`); described by
//! `docs/admin-openapi.json`, which `GET /admin/openapi.json` serves.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::connectors::native::MemoryStore;
use crate::connectors::outbound::REDACTED;
use crate::connectors::Runtime;
use crate::id::RunId;
use crate::interpreter::{self, NoCheckpoints, RunRequest};
use crate::recipe::validate::ValidRecipe;
use crate::reload::Reloader;
use crate::store::{RunFilter, RunState};

/// The OpenAPI 3.1 document of the admin API.
pub const OPENAPI: &str = include_str!("../../docs/admin-openapi.json");

/// Most runs one page lists.
const MAX_PAGE: u32 = 200;

/// The routes (the caller adds the token check).
pub fn routes() -> Router<Arc<Reloader>> {
    Router::new()
        .route("/admin/runs", get(list_runs))
        .route("/admin/runs/{id}", get(show_run))
        .route("/admin/runs/{id}/replay", post(replay_one))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/replay", post(replay_many))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/recipes/{name}/versions", get(versions))
        .route("/admin/preview", post(preview))
        .route("/admin/openapi.json", get(openapi))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn store_error(e: crate::store::StoreError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Query of `GET /admin/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    recipe: Option<String>,
    status: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    q: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

impl RunsQuery {
    /// The store's filter and the page size, or why the query is wrong.
    fn filter(self, status: Option<RunState>) -> Result<(RunFilter, u32), String> {
        let status = match (status, self.status.as_deref()) {
            (Some(s), _) => Some(s),
            (None, None | Some("")) => None,
            (None, Some(s)) => Some(RunState::parse(s).ok_or_else(|| {
                format!(
                    "no run status `{s}` (queued, running, completed, failed, filtered, replayed)"
                )
            })?),
        };
        let limit = self.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        Ok((
            RunFilter {
                recipe: self.recipe.filter(|r| !r.is_empty()),
                status,
                // One more than asked: whether another page follows.
                limit: limit + 1,
                since: self.since,
                until: self.until,
                text: self.q,
                before: self.before.filter(|b| !b.is_empty()).map(RunId::from),
            },
            limit,
        ))
    }
}

/// A page of runs, newest first, and the `before` of the next page.
async fn page(r: &Reloader, filter: RunFilter, limit: u32) -> Response {
    match r.service().store().runs(filter).await {
        Ok(mut runs) => {
            let next = (runs.len() > limit as usize).then(|| {
                runs.truncate(limit as usize);
                runs.last().map(|r| r.id.clone())
            });
            Json(json!({"runs": runs, "next": next.flatten()})).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn list_runs(State(r): State<Arc<Reloader>>, Query(q): Query<RunsQuery>) -> Response {
    match q.filter(None) {
        Ok((filter, limit)) => page(&r, filter, limit).await,
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn dead_letters(State(r): State<Arc<Reloader>>, Query(q): Query<RunsQuery>) -> Response {
    match q.filter(Some(RunState::Failed)) {
        Ok((filter, limit)) => page(&r, filter, limit).await,
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn show_run(State(r): State<Arc<Reloader>>, Path(id): Path<String>) -> Response {
    let store = &r.service().store();
    let (run, steps) = match store.run(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => return store_error(e),
    };
    let event = match store.event_payload(&run.event_id).await {
        Ok(e) => e,
        Err(e) => return store_error(e),
    };
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| redact(serde_json::to_value(s).expect("records serialize")))
        .collect();
    Json(json!({"run": run, "event": event, "steps": steps})).into_response()
}

/// Replays one failed run on the recipe's serving version; the new run's id.
async fn replay(r: &Reloader, id: &str) -> Result<RunId, (StatusCode, String)> {
    let svc = r.service();
    let run = match svc.store().run(id).await {
        Ok(Some((run, _))) => run,
        Ok(None) => return Err((StatusCode::NOT_FOUND, format!("no run `{id}`"))),
        Err(e) => return Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    if run.status != RunState::Failed {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "run `{id}` is {}: only failed runs (dead letters) are replayed",
                run.status.as_str()
            ),
        ));
    }
    let Some(recipe) = svc.recipes().get(&run.recipe) else {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "recipe `{}` is not loaded: restore its file to replay its runs",
                run.recipe
            ),
        ));
    };
    match svc.store().replay(id, &recipe.version).await {
        Ok(Some(new)) => {
            svc.dispatch().stored(1);
            Ok(RunId::from(new))
        }
        Ok(None) => Err((
            StatusCode::CONFLICT,
            format!("run `{id}` was replayed already"),
        )),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn replay_one(State(r): State<Arc<Reloader>>, Path(id): Path<String>) -> Response {
    match replay(&r, &id).await {
        Ok(new) => (
            StatusCode::ACCEPTED,
            Json(json!({"replayed": id, "run": new})),
        )
            .into_response(),
        Err((status, msg)) => error(status, msg),
    }
}

/// Body of `POST /admin/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayMany {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all_failed: bool,
    recipe: Option<String>,
}

async fn replay_many(State(r): State<Arc<Reloader>>, body: axum::body::Bytes) -> Response {
    let asked: ReplayMany = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is {{\"ids\": [RUN_ID, …]}} or {{\"all_failed\": true, \"recipe\": NAME?}}: {e}"),
            )
        }
    };
    // Both, or neither.
    if asked.ids.is_empty() != asked.all_failed {
        return error(
            StatusCode::BAD_REQUEST,
            "give either `ids` or `all_failed: true`",
        );
    }
    let ids = if asked.all_failed {
        let filter = RunFilter {
            recipe: asked.recipe,
            status: Some(RunState::Failed),
            limit: 100_000,
            ..Default::default()
        };
        match r.service().store().runs(filter).await {
            Ok(runs) => runs.into_iter().map(|r| r.id.to_string()).collect(),
            Err(e) => return store_error(e),
        }
    } else {
        asked.ids
    };
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    for id in ids {
        match replay(&r, &id).await {
            Ok(new) => replayed.push(json!({"id": id, "run": new})),
            Err((_, msg)) => skipped.push(json!({"id": id, "error": msg})),
        }
    }
    Json(json!({"replayed": replayed, "skipped": skipped})).into_response()
}

/// Query of `GET /admin/deliveries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<u32>,
}

async fn deliveries(State(r): State<Arc<Reloader>>, Query(q): Query<DeliveriesQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match r.service().store().deliveries(limit).await {
        Ok(d) => Json(json!({"deliveries": d})).into_response(),
        Err(e) => store_error(e),
    }
}

async fn versions(State(r): State<Arc<Reloader>>, Path(name): Path<String>) -> Response {
    match r.service().store().history(&name).await {
        Ok(v) => {
            let serving = r.service().recipes().get(&name).map(|r| r.version.clone());
            let versions: Vec<Value> = v
                .into_iter()
                .map(|v| {
                    json!({
                        "version": v.version,
                        "file": v.file,
                        "loaded_at": v.loaded_at,
                        "serving": serving.as_deref() == Some(v.version.as_str()),
                        "source": v.source,
                    })
                })
                .collect();
            Json(json!({"recipe": name, "versions": versions})).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// Body of `POST /admin/preview`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    /// A serving recipe, by name.
    recipe: Option<String>,
    /// Or a recipe's YAML text (validated first).
    recipe_text: Option<String>,
    /// The event: a webhook delivery (split as the engine would) or one
    /// event object.
    event: Value,
}

async fn preview(State(r): State<Arc<Reloader>>, body: axum::body::Bytes) -> Response {
    let asked: PreviewBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                "the body is {{\"recipe\": NAME or \"recipe_text\": YAML, \"event\": EVENT}}: {e}"
            ),
            )
        }
    };
    let svc = r.service();
    let catalog = svc.catalog();
    let recipe: Arc<ValidRecipe> = match (&asked.recipe, &asked.recipe_text) {
        (Some(name), None) => match svc.recipes().get(name) {
            Some(r) => r,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no recipe `{name}` is serving"),
                )
            }
        },
        (None, Some(text)) => {
            let loaded = crate::recipe::load::load_texts(
                &[("preview.yaml".to_string(), text.clone())],
                &catalog,
                None,
            );
            if loaded.errors() > 0 || loaded.recipes.len() != 1 {
                let diagnostics: Vec<String> =
                    loaded.diagnostics.iter().map(|d| d.one_line()).collect();
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"error": "the recipe is not valid", "diagnostics": diagnostics})),
                )
                    .into_response();
            }
            Arc::new(loaded.recipes.into_iter().next().expect("one recipe"))
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give `recipe` or `recipe_text`, not both",
            )
        }
    };
    let events = match crate::engine::triggers::fixture_events(
        &catalog,
        &recipe.trigger.kind,
        Some(asked.event),
        crate::engine::triggers::Shape::EventOrDelivery,
        chrono::Utc::now(),
    ) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    // The engine's connections, sending nothing: requests are recorded
    // before credentials are added.
    let store = Arc::new(MemoryStore::default());
    let mut previews = Vec::new();
    for ev in events {
        let runtime = Runtime::new(
            (*catalog).clone(),
            svc.runtime().resolved_connections(),
            store.clone(),
            store.clone(),
        )
        .with_dry_run();
        let report = interpreter::run(
            RunRequest {
                recipe: &recipe,
                event: &ev,
                run_id: &RunId::new(),
                started_at: Utc::now(),
                resume: &[],
            },
            &runtime,
            &NoCheckpoints,
        )
        .await;
        let mut requests = runtime.dry_run_requests().into_iter();
        let steps: Vec<Value> = report
            .steps
            .iter()
            .map(|s| {
                let sends = s.status != interpreter::StepStatus::Skipped
                    && catalog
                        .op(&s.action)
                        .is_some_and(|op| op.def().native.is_none());
                let request = sends
                    .then(|| requests.next())
                    .flatten()
                    .map(|p| redact(serde_json::to_value(p).expect("requests serialize")));
                json!({
                    "id": s.id,
                    "action": s.action,
                    "status": s.status,
                    "input": redact(s.input.clone()),
                    "error": s.error,
                    "request": request,
                })
            })
            .collect();
        previews.push(json!({"event": ev, "status": report.status, "steps": steps}));
    }
    Json(json!({"recipe": recipe.name, "version": recipe.version, "runs": previews}))
        .into_response()
}

/// Header and field names whose values are credentials (the rule run
/// records use, with `_` read as `-`: `api_key` is `api-key`).
fn sensitive(name: &str) -> bool {
    crate::connectors::outbound::is_sensitive_header(&name.replace('_', "-"))
}

/// `value` with every credential-like field (and header pair) masked.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if sensitive(&k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k, v)
                })
                .collect::<Map<String, Value>>(),
        ),
        // Header lists are `[name, value]` pairs.
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| match item {
                    Value::Array(pair)
                        if pair.len() == 2 && pair[0].as_str().is_some_and(sensitive) =>
                    {
                        Value::Array(vec![pair[0].clone(), Value::String(REDACTED.into())])
                    }
                    other => redact(other),
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_fields_and_header_pairs_are_masked() {
        let v = redact(json!({
            "headers": [["Authorization", "Bearer s3cret"], ["Version", "2021-07-28"]],
            "body": {"email": "a@example.com", "api_key": "k", "nested": {"X-Token": "t"}},
            "refresh_token": null,
        }));
        assert_eq!(
            v,
            json!({
                "headers": [["Authorization", REDACTED], ["Version", "2021-07-28"]],
                "body": {"email": "a@example.com", "api_key": REDACTED, "nested": {"X-Token": REDACTED}},
                "refresh_token": null,
            })
        );
    }

    /// Every route this module and the reload routes serve is in the
    /// OpenAPI document, with the method it is served on.
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let sources = [include_str!("admin.rs"), include_str!("operator.rs")];
        let mut found = 0;
        for src in sources {
            for part in src.split(".route(\"").skip(1) {
                let (path, rest) = part.split_once('"').unwrap();
                let method = rest
                    .trim_start_matches(", ")
                    .split('(')
                    .next()
                    .unwrap()
                    .trim();
                let openapi_path = path.to_string();
                assert!(
                    doc["paths"][&openapi_path][method].is_object(),
                    "{method} {path} is not in docs/admin-openapi.json"
                );
                found += 1;
            }
        }
        assert!(found >= 12, "routes found: {found}");
    }
}
