//! HighLevel emulator: API v2 (`services.leadconnectorhq.com`) and the legacy
//! API v1 (`rest.gohighlevel.com`, everything under `/v1/...`) on one server,
//! sharing one location's data, as `shared/reference/ghl-contacts-api.md`
//! describes them.
//!
//! v2: `Authorization: Bearer <token>` (the configured token, a PIT when it
//! starts with `pit-`, or an access token issued by `POST /oauth/token`) and
//! `Version: 2021-07-28` (`2021-04-15` for the calendars endpoint). Creates
//! answer 201, writes are wrapped (`{"contact": …}`, `{"task": …}`), deletes
//! answer `{"succeded": true}` (sic). Errors are NestJS-shaped:
//! `{"statusCode":400,"message":"Contact not found"}`, 422 with a `message`
//! array, 401 `Invalid token: access token is invalid`, 403 for a foreign
//! `locationId`.
//!
//! v1: `Authorization: Bearer <v1_api_key>`, no `Version` header, creates answer
//! 200, task and note objects are bare, `DELETE` answers 200 with an empty
//! body, errors are `{"msg": …}` (400/401) or field-keyed maps (422).
//!
//! Data is stored once, in v2 shape; the v1 routes render v1 views of it
//! (`contactName`, `customField`, task `description`/`isCompleted`, note
//! `createdBy`/`createdAt`).
//!
//! `POST /oauth/locationToken` takes the agency token only (a location token
//! answers 401), a form body (400 otherwise), the configured `company_id`
//! (403 otherwise) and the location (400 "Location not found" otherwise);
//! the token it mints works like any access token of the location.
//!
//! Emulator choices where the reference is silent or unverified: tag lists
//! answered by the tag endpoints are the contact's resulting tags; the v2
//! contact list `count` is the total number of matches; v1 `POST /contacts/`
//! on a location that disallows duplicates updates the matching contact
//! instead of failing; v1 appointments answer `{"appointments": [...]}`; a
//! missing `Version` header answers 400 "Version header was not found".

// Handlers answer `Err(Response)` early; the size of that is irrelevant here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use indexmap::IndexMap;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{bearer, json as respond, random_id, Control, Emulator, RateHeaders};

/// The `Version` header of the contacts endpoints.
pub const VERSION: &str = "2021-07-28";
/// The `Version` header of the calendars endpoints.
pub const CALENDARS_VERSION: &str = "2021-04-15";

/// Settings of a HighLevel emulator.
#[derive(Debug, Clone)]
pub struct GhlConfig {
    /// The v2 token accepted from the start: a Private Integration Token
    /// (`pit-…`, never expires) or an initial OAuth access token (expires
    /// after `token_ttl` or on [`GhlEmulator::expire_tokens`]).
    pub token: String,
    /// The v1 location API key.
    pub v1_api_key: String,
    /// The one location (sub-account) the tokens give access to.
    pub location_id: String,
    /// The agency (company) the location belongs to.
    pub company_id: String,
    /// An Agency access token: it may call `POST /oauth/locationToken`,
    /// which mints location tokens, and nothing else.
    pub agency_token: String,
    /// OAuth client id of the Marketplace app.
    pub client_id: String,
    /// OAuth client secret of the Marketplace app.
    pub client_secret: String,
    /// The refresh token valid at start (single use; each refresh rotates it).
    pub refresh_token: String,
    /// Lifetime of access tokens (`expires_in`).
    pub token_ttl: Duration,
    /// Whether the location allows duplicate contacts (same email or phone).
    pub allow_duplicates: bool,
    /// Burst rate limit, 429 beyond; `None` for none.
    pub rate_limit: Option<(usize, Duration)>,
    /// Address to listen on; a free port on 127.0.0.1 when `None`.
    pub listen: Option<std::net::SocketAddr>,
    /// Where to send `ContactCreate`/`ContactUpdate` webhooks, if anywhere.
    pub webhook: Option<WebhookTarget>,
}

/// Where the emulator delivers its webhooks, signed as HighLevel signs
/// them: Ed25519 over the raw body, base64 in `x-ghl-signature`.
#[derive(Clone)]
pub struct WebhookTarget {
    /// The receiving URL (a patchbay `POST /hooks/{connection}`).
    pub url: String,
    /// The signing key; its public half goes in the connection.
    pub key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WebhookTarget {
    /// The public key as a connection's `webhook_public_key` holds it
    /// (base64 of the DER SubjectPublicKeyInfo, as HighLevel publishes it).
    pub fn public_key(&self) -> String {
        use base64::Engine as _;
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let der = self
            .key
            .verifying_key()
            .to_public_key_der()
            .expect("an Ed25519 key encodes");
        base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
    }
}

impl Default for GhlConfig {
    fn default() -> Self {
        GhlConfig {
            token: "ghl-test-access-token".into(),
            v1_api_key: "ghl-test-v1-api-key".into(),
            location_id: "ve9EPM428h8vShlRW1KT".into(),
            company_id: "emuCompany0000000001".into(),
            agency_token: "ghl-test-agency-token".into(),
            client_id: "ghl-test-client-id".into(),
            client_secret: "ghl-test-client-secret".into(),
            refresh_token: "ghl-test-refresh-token".into(),
            token_ttl: Duration::from_secs(86399),
            allow_duplicates: false,
            rate_limit: Some((100, Duration::from_secs(10))),
            listen: None,
            webhook: None,
        }
    }
}

/// A running HighLevel emulator (v2 and v1 on one address).
pub struct GhlEmulator {
    emulator: Emulator,
    shared: Arc<Shared>,
}

/// Starts a HighLevel emulator on 127.0.0.1.
pub async fn start(config: GhlConfig) -> std::io::Result<GhlEmulator> {
    let listen = config.listen;
    let mut st = St::default();
    let expiry = (!config.token.starts_with("pit-")).then(|| Instant::now() + config.token_ttl);
    st.access.insert(config.token.clone(), expiry);
    st.refresh.insert(config.refresh_token.clone());
    st.latest_refresh = Some(config.refresh_token.clone());
    let control = Arc::new(Control::default());
    control.set_rate_limit(config.rate_limit);
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(st),
        webhook_client: std::sync::OnceLock::new(),
    });
    let emulator = Emulator::serve(
        router(shared.clone()),
        control,
        RateHeaders::HighLevel,
        listen,
    )
    .await?;
    Ok(GhlEmulator { emulator, shared })
}

impl Deref for GhlEmulator {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

impl GhlEmulator {
    /// The underlying server (address, fault control, recorded requests).
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// The settings it runs with.
    pub fn config(&self) -> &GhlConfig {
        &self.shared.config
    }

    /// Every contact (v2 shape), oldest first.
    pub fn contacts(&self) -> Vec<Value> {
        self.shared.lock().contacts.values().cloned().collect()
    }

    /// One contact (v2 shape).
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.shared.lock().contacts.get(id).cloned()
    }

    /// The tasks of a contact (v2 shape).
    pub fn tasks(&self, contact_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .tasks
            .values()
            .filter(|t| belongs(t, contact_id))
            .cloned()
            .collect()
    }

    /// The notes of a contact (v2 shape).
    pub fn notes(&self, contact_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .notes
            .values()
            .filter(|n| belongs(n, contact_id))
            .cloned()
            .collect()
    }

    /// Every appointment.
    pub fn appointments(&self) -> Vec<Value> {
        self.shared.lock().appointments.values().cloned().collect()
    }

    /// The campaign ids a contact is in.
    pub fn campaigns(&self, contact_id: &str) -> Vec<String> {
        self.shared
            .lock()
            .campaigns
            .get(contact_id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The workflow ids a contact is in.
    pub fn workflows(&self, contact_id: &str) -> Vec<String> {
        self.shared
            .lock()
            .workflows
            .get(contact_id)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Expires every issued access token and the configured token (unless
    /// it is a PIT): they answer 401 until refreshed.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for (token, expiry) in self.shared.lock().access.iter_mut() {
            if !token.starts_with("pit-") {
                *expiry = Some(now);
            }
        }
    }

    /// How many successful refreshes `POST /oauth/token` answered.
    pub fn token_refreshes(&self) -> usize {
        self.shared.lock().refreshes
    }

    /// The refresh token currently valid (the latest issued one).
    pub fn refresh_token(&self) -> Option<String> {
        let st = self.shared.lock();
        st.latest_refresh.clone().filter(|t| st.refresh.contains(t))
    }

    /// Stores a contact as is (v2 shape) and returns its id; `id`,
    /// `locationId`, `dateAdded` and `dateUpdated` are filled when missing.
    pub fn insert_contact(&self, contact: Value) -> String {
        let mut st = self.shared.lock();
        let given = contact.as_object().cloned().unwrap_or_default();
        let ms = given
            .get("dateAdded")
            .and_then(Value::as_str)
            .and_then(parse_ms)
            .unwrap_or_else(|| st.next_ms());
        let now = iso_ms(ms);
        let mut c = base_contact(&self.shared.config.location_id, &now);
        apply_contact(&mut c, &given, &now);
        for key in ["id", "locationId", "dateAdded", "dateUpdated"] {
            if let Some(v) = given.get(key) {
                c.insert(key.into(), v.clone());
            }
        }
        let id = c["id"].as_str().unwrap_or_default().to_string();
        st.contacts.insert(id.clone(), Value::Object(c));
        id
    }
}

// ---------------------------------------------------------------- state

struct Shared {
    config: GhlConfig,
    state: Mutex<St>,
    /// Sends the webhooks, built on the first: one connection pool for all.
    webhook_client: std::sync::OnceLock<reqwest::Client>,
}

#[derive(Default)]
struct St {
    contacts: IndexMap<String, Value>,
    deleted: HashSet<String>,
    tasks: IndexMap<String, Value>,
    notes: IndexMap<String, Value>,
    appointments: IndexMap<String, Value>,
    campaigns: HashMap<String, BTreeSet<String>>,
    workflows: HashMap<String, BTreeSet<String>>,
    /// Access token -> expiry (`None`: never).
    access: HashMap<String, Option<Instant>>,
    /// Refresh tokens not yet used.
    refresh: HashSet<String>,
    latest_refresh: Option<String>,
    refreshes: usize,
    last_ms: i64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delivers a contact webhook (`ContactCreate`, `ContactUpdate`) in the
    /// background, as HighLevel does after the API call answered.
    fn emit(&self, kind: &str, contact: &Value) {
        let Some(target) = &self.config.webhook else {
            return;
        };
        let mut body = contact.as_object().cloned().unwrap_or_default();
        body.insert("type".into(), json!(kind));
        body.insert("locationId".into(), json!(self.config.location_id));
        body.insert("webhookId".into(), json!(random_id(24)));
        body.insert(
            "timestamp".into(),
            json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        let raw = serde_json::to_vec(&Value::Object(body)).expect("JSON encodes");
        let signature = {
            use base64::Engine as _;
            use ed25519_dalek::Signer;
            base64::engine::general_purpose::STANDARD.encode(target.key.sign(&raw).to_bytes())
        };
        let client = self
            .webhook_client
            .get_or_init(reqwest::Client::new)
            .clone();
        let url = target.url.clone();
        tokio::spawn(async move {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-ghl-signature", signature)
                .body(raw)
                .send()
                .await;
            if let Err(e) = sent {
                tracing::debug!(url = %url, error = %e, "emulated HighLevel webhook not delivered");
            }
        });
    }

    /// v2 gate: a valid token, then the `Version` header.
    fn v2(&self, req: &Req, version: &str) -> Result<MutexGuard<'_, St>, Response> {
        let st = self.lock();
        if !bearer(&req.headers).is_some_and(|t| st.token_valid(t)) {
            return Err(e401());
        }
        match req.headers.get("version").and_then(|v| v.to_str().ok()) {
            None => Err(e400("Version header was not found")),
            Some(v) if v != version => Err(e400(format!(
                "Invalid Version header {v:?}: this endpoint expects {version}"
            ))),
            Some(_) => Ok(st),
        }
    }

    /// v1 gate: the location API key.
    fn v1(&self, req: &Req) -> Result<MutexGuard<'_, St>, Response> {
        if bearer(&req.headers) != Some(self.config.v1_api_key.as_str()) {
            return Err(respond(401, json!({"msg": "Unauthorized"})));
        }
        Ok(self.lock())
    }

    /// A `locationId` (body or query) must be this location's.
    fn location(&self, loc: Option<&str>) -> Result<(), Response> {
        match loc {
            None | Some("") => Err(e422(vec!["locationId should not be empty".into()])),
            Some(l) if l == self.config.location_id => Ok(()),
            Some(_) => Err(respond(
                403,
                json!({"statusCode": 403, "message": "The token does not have access to this location."}),
            )),
        }
    }
}

impl St {
    fn token_valid(&self, token: &str) -> bool {
        match self.access.get(token) {
            Some(None) => true,
            Some(Some(expiry)) => Instant::now() < *expiry,
            None => false,
        }
    }

    /// Strictly increasing epoch milliseconds, so `dateAdded` orders contacts.
    fn next_ms(&mut self) -> i64 {
        self.last_ms = Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms
    }

    fn stamp(&mut self) -> String {
        let ms = self.next_ms();
        iso_ms(ms)
    }

    fn contact_mut(&mut self, id: &str) -> Result<&mut Map<String, Value>, String> {
        self.contacts
            .get_mut(id)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| "Contact not found".to_string())
    }

    fn has_contact(&self, id: &str) -> Result<(), String> {
        if self.contacts.contains_key(id) {
            Ok(())
        } else {
            Err("Contact not found".into())
        }
    }

    /// The existing contact a new email/phone would duplicate (email first).
    fn duplicate_of(
        &self,
        body: &Map<String, Value>,
        except: Option<&str>,
    ) -> Option<(String, &'static str)> {
        let others = || {
            self.contacts
                .values()
                .filter(move |c| Some(id_of(c)) != except)
        };
        if let Some(email) = body
            .get("email")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            let email = email.to_lowercase();
            if let Some(c) =
                others().find(|c| c.get("emailLowerCase").and_then(Value::as_str) == Some(&email))
            {
                return Some((id_of(c).to_string(), "email"));
            }
        }
        if let Some(phone) = body
            .get("phone")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            let phone = normalize_phone(phone);
            if let Some(c) =
                others().find(|c| c.get("phone").and_then(Value::as_str) == Some(&phone))
            {
                return Some((id_of(c).to_string(), "phone"));
            }
        }
        None
    }

    fn new_contact(&mut self, location_id: &str, body: &Map<String, Value>) -> Value {
        let now = self.stamp();
        let mut c = base_contact(location_id, &now);
        apply_contact(&mut c, body, &now);
        let c = Value::Object(c);
        self.contacts.insert(id_of(&c).to_string(), c.clone());
        c
    }

    fn update_contact(&mut self, id: &str, body: &Map<String, Value>) -> Result<Value, String> {
        let now = self.stamp();
        let c = self.contact_mut(id)?;
        apply_contact(c, body, &now);
        Ok(Value::Object(c.clone()))
    }

    fn delete_contact(&mut self, id: &str) -> Result<(), String> {
        self.contacts
            .shift_remove(id)
            .ok_or_else(|| "Contact not found".to_string())?;
        self.tasks.retain(|_, t| !belongs(t, id));
        self.notes.retain(|_, n| !belongs(n, id));
        self.appointments.retain(|_, a| !belongs(a, id));
        self.campaigns.remove(id);
        self.workflows.remove(id);
        self.deleted.insert(id.to_string());
        Ok(())
    }

    /// Adds tags (case-insensitively unique); the contact's tags after.
    fn add_tags(&mut self, id: &str, tags: &[String]) -> Result<Vec<String>, String> {
        let now = self.stamp();
        let c = self.contact_mut(id)?;
        let mut all = string_list(c.get("tags"));
        for t in tags {
            if !all.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                all.push(t.clone());
            }
        }
        c.insert("tags".into(), json!(all));
        c.insert("dateUpdated".into(), json!(now));
        Ok(all)
    }

    /// Removes tags (case-insensitively); the contact's tags after.
    fn remove_tags(&mut self, id: &str, tags: &[String]) -> Result<Vec<String>, String> {
        let now = self.stamp();
        let c = self.contact_mut(id)?;
        let mut all = string_list(c.get("tags"));
        all.retain(|x| !tags.iter().any(|t| t.eq_ignore_ascii_case(x)));
        c.insert("tags".into(), json!(all));
        c.insert("dateUpdated".into(), json!(now));
        Ok(all)
    }

    fn task_mut(
        &mut self,
        contact_id: &str,
        task_id: &str,
    ) -> Result<&mut Map<String, Value>, String> {
        self.has_contact(contact_id)?;
        child(&mut self.tasks, contact_id, task_id).ok_or_else(|| "Task not found".to_string())
    }

    fn note_mut(
        &mut self,
        contact_id: &str,
        note_id: &str,
    ) -> Result<&mut Map<String, Value>, String> {
        self.has_contact(contact_id)?;
        child(&mut self.notes, contact_id, note_id).ok_or_else(|| "Note not found".to_string())
    }

    fn remove_child(items: &mut IndexMap<String, Value>, contact_id: &str, id: &str) -> bool {
        if items.get(id).is_some_and(|t| belongs(t, contact_id)) {
            items.shift_remove(id);
            true
        } else {
            false
        }
    }

    /// Contacts (insertion order) matching a free-text query.
    fn matching(&self, query: Option<&str>) -> Vec<Value> {
        self.contacts
            .values()
            .filter(|c| text_match(c, query))
            .cloned()
            .collect()
    }
}

fn child<'a>(
    items: &'a mut IndexMap<String, Value>,
    contact_id: &str,
    id: &str,
) -> Option<&'a mut Map<String, Value>> {
    items
        .get_mut(id)
        .filter(|t| belongs(t, contact_id))
        .and_then(Value::as_object_mut)
}

fn belongs(item: &Value, contact_id: &str) -> bool {
    item.get("contactId").and_then(Value::as_str) == Some(contact_id)
}

fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or("")
}

// -------------------------------------------------------------- routes

type S = State<Arc<Shared>>;
type Out = Result<Response, Response>;

fn router(shared: Arc<Shared>) -> Router {
    let r = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/oauth/locationToken", post(location_token))
        // v2 contacts
        .route("/contacts", get(contacts_list).post(contact_create))
        .route("/contacts/", get(contacts_list).post(contact_create))
        .route("/contacts/upsert", post(contact_upsert))
        .route("/contacts/search", post(contacts_search))
        .route("/contacts/search/duplicate", get(contacts_duplicate))
        .route("/contacts/business/{businessId}", get(contacts_by_business))
        .route("/contacts/bulk/business", post(bulk_business))
        .route("/contacts/bulk/tags/update/{type}", post(bulk_tags))
        .route(
            "/contacts/{contactId}",
            get(contact_get).put(contact_update).delete(contact_delete),
        )
        .route(
            "/contacts/{contactId}/tasks",
            get(tasks_list).post(task_create),
        )
        .route(
            "/contacts/{contactId}/tasks/{taskId}",
            get(task_get).put(task_update).delete(task_delete),
        )
        .route(
            "/contacts/{contactId}/tasks/{taskId}/completed",
            put(task_completed),
        )
        .route(
            "/contacts/{contactId}/notes",
            get(notes_list).post(note_create),
        )
        .route(
            "/contacts/{contactId}/notes/{id}",
            get(note_get).put(note_update).delete(note_delete),
        )
        .route("/contacts/{contactId}/appointments", get(appointments_list))
        .route(
            "/contacts/{contactId}/tags",
            post(tags_add).delete(tags_remove),
        )
        .route(
            "/contacts/{contactId}/followers",
            post(followers_add).delete(followers_remove),
        )
        .route(
            "/contacts/{contactId}/campaigns/removeAll",
            delete(campaigns_remove_all),
        )
        .route(
            "/contacts/{contactId}/campaigns/{campaignId}",
            post(campaign_add).delete(campaign_remove),
        )
        .route(
            "/contacts/{contactId}/workflow/{workflowId}",
            post(workflow_add).delete(workflow_remove),
        )
        .route("/calendars/events/appointments", post(appointment_create));
    // v1, with and without the trailing slash
    let v1: Vec<(&str, MethodRouter<Arc<Shared>>)> = vec![
        (
            "/v1/contacts/",
            get(v1_contacts_list).post(v1_contact_create),
        ),
        ("/v1/contacts/lookup", get(v1_lookup)),
        (
            "/v1/contacts/{contactId}",
            get(v1_contact_get)
                .put(v1_contact_update)
                .delete(v1_contact_delete),
        ),
        (
            "/v1/contacts/{contactId}/tasks/",
            get(v1_tasks_list).post(v1_task_create),
        ),
        (
            "/v1/contacts/{contactId}/tasks/{taskId}",
            get(v1_task_get).put(v1_task_update).delete(v1_task_delete),
        ),
        (
            "/v1/contacts/{contactId}/tasks/{taskId}/status",
            put(v1_task_status),
        ),
        (
            "/v1/contacts/{contactId}/notes/",
            get(v1_notes_list).post(v1_note_create),
        ),
        (
            "/v1/contacts/{contactId}/notes/{noteId}",
            get(v1_note_get).put(v1_note_update).delete(v1_note_delete),
        ),
        (
            "/v1/contacts/{contactId}/appointments/",
            get(v1_appointments),
        ),
        (
            "/v1/contacts/{contactId}/tags/",
            post(v1_tags_add).delete(v1_tags_remove),
        ),
        (
            "/v1/contacts/{contactId}/campaigns/remove-all",
            delete(v1_campaigns_remove_all),
        ),
        (
            "/v1/contacts/{contactId}/campaigns/{campaignId}",
            post(v1_campaign_add).delete(v1_campaign_remove),
        ),
        (
            "/v1/contacts/{contactId}/workflow/{workflowId}",
            post(v1_workflow_add),
        ),
    ];
    let r = v1.into_iter().fold(r, |r, (path, m)| {
        let other = match path.strip_suffix('/') {
            Some(p) => p.to_string(),
            None => format!("{path}/"),
        };
        r.route(path, m.clone()).route(&other, m)
    });
    r.fallback(unknown_route).with_state(shared)
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    respond(
        404,
        json!({"statusCode": 404, "message": format!("Cannot {method} {}", uri.path()), "error": "Not Found"}),
    )
}

/// Headers, decoded query and raw body of a request.
struct Req {
    headers: HeaderMap,
    query: HashMap<String, String>,
    raw: Bytes,
}

impl<T: Send + Sync> FromRequest<T> for Req {
    type Rejection = Response;

    async fn from_request(req: Request, _: &T) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let raw = axum::body::to_bytes(body, 16 * 1024 * 1024)
            .await
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())?;
        Ok(Req {
            query: form_pairs(parts.uri.query().unwrap_or("")),
            headers: parts.headers,
            raw,
        })
    }
}

impl Req {
    /// The JSON body (`{}` when empty).
    fn body(&self) -> Result<Value, String> {
        if self.raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Map::new()));
        }
        serde_json::from_slice(&self.raw).map_err(|e| format!("Unexpected token in JSON body: {e}"))
    }

    /// A non-empty query parameter.
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn host(&self) -> &str {
        self.headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    }
}

/// `a=1&b=x%20y` (also `+` for space) into a map.
fn form_pairs(s: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// -------------------------------------------------------------- errors

fn e400(message: impl Into<String>) -> Response {
    respond(400, json!({"statusCode": 400, "message": message.into()}))
}

fn e401() -> Response {
    respond(
        401,
        json!({"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"}),
    )
}

fn e422(messages: Vec<String>) -> Response {
    respond(
        422,
        json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}),
    )
}

fn check(errors: Vec<String>) -> Result<(), Response> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(e422(errors))
    }
}

fn duplicate(contact_id: &str, field: &str) -> Response {
    respond(
        400,
        json!({
            "statusCode": 400,
            "message": "This location does not allow duplicated contacts.",
            "meta": {"contactId": contact_id, "matchingField": field},
        }),
    )
}

fn succeded(status: u16) -> Response {
    respond(status, json!({"succeded": true}))
}

fn v1_400(message: impl Into<String>) -> Response {
    respond(400, json!({"msg": message.into()}))
}

fn v1_422(errors: Map<String, Value>) -> Result<(), Response> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(respond(422, Value::Object(errors)))
    }
}

fn v1_rule(errors: &mut Map<String, Value>, field: &str, message: &str, rule: &str) {
    errors.insert(field.into(), json!({"message": message, "rule": rule}));
}

/// v1 answers 200 with an empty body to deletes and campaign/workflow calls.
fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

// ---------------------------------------------------------- validation

#[derive(Clone, Copy)]
enum Ty {
    Str,
    NullStr,
    Bool,
    Num,
    Arr,
    Obj,
}

/// NestJS-like whitelist validation: unknown properties, required ones, types.
fn validate(body: &Value, fields: &[(&str, Ty)], required: &[&str]) -> Vec<String> {
    let Some(map) = body.as_object() else {
        return vec!["request body must be a JSON object".into()];
    };
    let mut errors: Vec<String> = map
        .keys()
        .filter(|k| !fields.iter().any(|(f, _)| f == k))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    for (field, ty) in fields {
        match map.get(*field) {
            None | Some(Value::Null) if required.contains(field) => {
                errors.push(format!("{field} should not be empty"))
            }
            None => {}
            Some(v) => {
                let ok = match ty {
                    Ty::Str => v.is_string(),
                    Ty::NullStr => v.is_string() || v.is_null(),
                    Ty::Bool => v.is_boolean(),
                    Ty::Num => v.is_number(),
                    Ty::Arr => v.is_array(),
                    Ty::Obj => v.is_object(),
                };
                if !ok {
                    errors.push(match ty {
                        Ty::Str | Ty::NullStr => format!("{field} must be a string"),
                        Ty::Bool => format!("{field} must be a boolean value"),
                        Ty::Num => format!(
                            "{field} must be a number conforming to the specified constraints"
                        ),
                        Ty::Arr => format!("{field} must be an array"),
                        Ty::Obj => format!("{field} must be an object"),
                    });
                }
            }
        }
    }
    errors
}

const CONTACT_FIELDS: &[(&str, Ty)] = &[
    ("firstName", Ty::NullStr),
    ("lastName", Ty::NullStr),
    ("name", Ty::NullStr),
    ("email", Ty::NullStr),
    ("phone", Ty::NullStr),
    ("address1", Ty::NullStr),
    ("city", Ty::NullStr),
    ("state", Ty::NullStr),
    ("postalCode", Ty::NullStr),
    ("website", Ty::NullStr),
    ("timezone", Ty::NullStr),
    ("country", Ty::Str),
    ("source", Ty::Str),
    ("assignedTo", Ty::Str),
    ("dnd", Ty::Bool),
    ("dndSettings", Ty::Obj),
    ("inboundDndSettings", Ty::Obj),
    ("tags", Ty::Arr),
    ("customFields", Ty::Arr),
    ("dateOfBirth", Ty::NullStr),
];

/// Create: the update fields plus `locationId`, `gender`, `companyName`.
fn create_fields() -> Vec<(&'static str, Ty)> {
    let mut f = CONTACT_FIELDS.to_vec();
    f.extend([
        ("locationId", Ty::Str),
        ("gender", Ty::Str),
        ("companyName", Ty::NullStr),
    ]);
    f
}

fn upsert_fields() -> Vec<(&'static str, Ty)> {
    let mut f = create_fields();
    f.push(("createNewIfDuplicateAllowed", Ty::Bool));
    f
}

/// Value checks beyond types.
fn contact_checks(body: &Value) -> Vec<String> {
    let mut errors = vec![];
    if let Some(email) = body.get("email").and_then(Value::as_str) {
        if !is_email(email) {
            errors.push("email must be an email".into());
        }
    }
    if let Some(tags) = body.get("tags").and_then(Value::as_array) {
        if !tags.iter().all(Value::is_string) {
            errors.push("each value in tags must be a string".into());
        }
    }
    if let Some(fields) = body.get("customFields").and_then(Value::as_array) {
        for (i, f) in fields.iter().enumerate() {
            if !f
                .get("id")
                .or_else(|| f.get("key"))
                .is_some_and(Value::is_string)
            {
                errors.push(format!("customFields.{i}.id should not be empty"));
            }
        }
    }
    if let Some(dob) = body.get("dateOfBirth").and_then(Value::as_str) {
        if parse_dob(dob).is_none() {
            errors.push("dateOfBirth must be a valid date".into());
        }
    }
    errors
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !s.contains(char::is_whitespace)
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|p| !p.is_empty())
}

/// A JSON array of strings (tags, followers) as strings.
fn strings(body: &Value, field: &str) -> Result<Vec<String>, Response> {
    let errors = validate(body, &[(field, Ty::Arr)], &[field]);
    check(errors)?;
    let items = body[field].as_array().cloned().unwrap_or_default();
    if !items.iter().all(Value::is_string) {
        return Err(e422(vec![format!(
            "each value in {field} must be a string"
        )]));
    }
    Ok(items
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------ contacts

fn base_contact(location_id: &str, now: &str) -> Map<String, Value> {
    let c = json!({
        "id": random_id(20),
        "locationId": location_id,
        "type": "lead",
        "dnd": false,
        "tags": [],
        "customFields": [],
        "followers": [],
        "dateAdded": now,
        "dateUpdated": now,
    });
    c.as_object().cloned().unwrap_or_default()
}

/// Writes body fields into a stored contact, normalising like HighLevel
/// (phone, lower-case copies, `customFields` as `{id, value}`).
fn apply_contact(c: &mut Map<String, Value>, body: &Map<String, Value>, now: &str) {
    for (k, v) in body {
        match k.as_str() {
            "id" | "locationId" | "createNewIfDuplicateAllowed" | "dateAdded" | "dateUpdated" => {}
            "email" => {
                c.insert("email".into(), v.clone());
                let lower = v
                    .as_str()
                    .map(|e| json!(e.to_lowercase()))
                    .unwrap_or(Value::Null);
                c.insert("emailLowerCase".into(), lower);
            }
            "phone" => {
                let phone = v
                    .as_str()
                    .map(|p| json!(normalize_phone(p)))
                    .unwrap_or(Value::Null);
                c.insert("phone".into(), phone);
            }
            "tags" => {
                let mut tags: Vec<String> = vec![];
                for t in string_list(Some(v)) {
                    if !tags.iter().any(|x| x.eq_ignore_ascii_case(&t)) {
                        tags.push(t);
                    }
                }
                c.insert("tags".into(), json!(tags));
            }
            "customFields" => merge_custom_fields(c, v),
            "dateOfBirth" => {
                let dob = v
                    .as_str()
                    .and_then(parse_dob)
                    .map(Value::from)
                    .unwrap_or(Value::Null);
                c.insert("dateOfBirth".into(), dob);
            }
            _ => {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    let has = |k: &str| body.contains_key(k);
    let blank = |c: &Map<String, Value>, k: &str| {
        c.get(k).and_then(Value::as_str).is_none_or(str::is_empty)
    };
    if has("name") && !has("firstName") && !has("lastName") {
        if let Some(name) = body.get("name").and_then(Value::as_str).map(str::trim) {
            if blank(c, "firstName") && blank(c, "lastName") && !name.is_empty() {
                let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                c.insert("firstName".into(), json!(first));
                if !last.trim().is_empty() {
                    c.insert("lastName".into(), json!(last.trim()));
                }
            }
        }
    } else if !has("name") && (has("firstName") || has("lastName")) {
        let full: Vec<&str> = ["firstName", "lastName"]
            .iter()
            .filter_map(|k| c.get(*k).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        let name = if full.is_empty() {
            Value::Null
        } else {
            json!(full.join(" "))
        };
        c.insert("name".into(), name);
    }
    for (src, dst) in [
        ("firstName", "firstNameLowerCase"),
        ("lastName", "lastNameLowerCase"),
        ("name", "fullNameLowerCase"),
    ] {
        let lower = c
            .get(src)
            .and_then(Value::as_str)
            .map(|s| json!(s.to_lowercase()))
            .unwrap_or(Value::Null);
        c.insert(dst.into(), lower);
    }
    c.insert("dateUpdated".into(), json!(now));
}

/// Written `{id|key, field_value}` items replace the read `{id, value}` ones.
fn merge_custom_fields(c: &mut Map<String, Value>, written: &Value) {
    let mut fields = c
        .get("customFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in written.as_array().into_iter().flatten() {
        let Some(id) = item
            .get("id")
            .or_else(|| item.get("key"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let value = item
            .get("field_value")
            .or_else(|| item.get("value"))
            .cloned()
            .unwrap_or(Value::Null);
        fields.retain(|f| f.get("id").and_then(Value::as_str) != Some(id));
        fields.push(json!({"id": id, "value": value}));
    }
    c.insert("customFields".into(), Value::Array(fields));
}

/// `+1 888-888-8888` -> `+18888888888`; ten bare digits get `+1`.
fn normalize_phone(p: &str) -> String {
    let digits: String = p.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        p.to_string()
    } else if p.trim_start().starts_with('+') || digits.len() != 10 {
        format!("+{digits}")
    } else {
        format!("+1{digits}")
    }
}

/// The date formats the spec lists, normalised to `YYYY-MM-DD`.
fn parse_dob(s: &str) -> Option<String> {
    let formats = [
        "%Y/%m/%d", "%m/%d/%Y", "%Y-%m-%d", "%m-%d-%Y", "%Y.%m.%d", "%m.%d.%Y", "%Y_%m_%d",
        "%m_%d_%Y",
    ];
    formats
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
        .map(|d| d.format("%Y-%m-%d").to_string())
}

fn text_match(c: &Value, query: Option<&str>) -> bool {
    let Some(q) = query else { return true };
    let q = q.to_lowercase();
    let hit = |v: &Value| v.as_str().is_some_and(|s| s.to_lowercase().contains(&q));
    [
        "name",
        "firstName",
        "lastName",
        "email",
        "phone",
        "companyName",
    ]
    .iter()
    .any(|f| c.get(*f).is_some_and(hit))
        || c.get("tags")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(hit))
}

// ----------------------------------------------------------------- time

fn iso_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn parse_ms(s: &str) -> Option<i64> {
    parse_iso(s).map(|d| d.timestamp_millis())
}

/// ISO-8601 with or without zone (UTC assumed), or a bare date.
fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// Epoch ms of a date field (ISO string or number), 0 when absent.
fn ms_of(c: &Value, field: &str) -> i64 {
    match c.get(field) {
        Some(Value::String(s)) => parse_ms(s).unwrap_or(0),
        Some(v) => v.as_i64().unwrap_or(0),
        None => 0,
    }
}

// ----------------------------------------------------------- pagination

struct Page {
    items: Vec<Value>,
    total: usize,
    skipped: usize,
    more: bool,
}

/// The `startAfter` / `startAfterId` cursor over contacts ordered by a date
/// field (then id); "after" follows the order (older first when descending).
fn cursor_page(
    mut list: Vec<Value>,
    field: &str,
    asc: bool,
    limit: usize,
    after: Option<i64>,
    after_id: Option<&str>,
) -> Page {
    let key = |c: &Value| (ms_of(c, field), id_of(c).to_string());
    list.sort_by(|a, b| {
        if asc {
            key(a).cmp(&key(b))
        } else {
            key(b).cmp(&key(a))
        }
    });
    let total = list.len();
    let start = match (after, after_id) {
        (Some(ms), id) => {
            // Without an id, records at exactly `ms` count as seen.
            let id = id.unwrap_or(if asc { "\u{10FFFF}" } else { "" });
            list.iter()
                .position(|c| {
                    let (cm, cid) = key(c);
                    if asc {
                        (cm, cid.as_str()) > (ms, id)
                    } else {
                        (cm, cid.as_str()) < (ms, id)
                    }
                })
                .unwrap_or(total)
        }
        (None, Some(id)) => list
            .iter()
            .position(|c| id_of(c) == id)
            .map_or(0, |i| i + 1),
        (None, None) => 0,
    };
    let end = (start + limit).min(total);
    Page {
        items: list[start..end].to_vec(),
        total,
        skipped: start,
        more: end < total,
    }
}

fn page_meta(page: &Page, field: &str, limit: usize, next_url: Option<String>) -> Value {
    let last = page.items.last();
    let current = page.skipped / limit.max(1) + 1;
    json!({
        "total": page.total,
        "nextPageUrl": next_url,
        "startAfterId": last.map(|c| id_of(c).to_string()),
        "startAfter": last.map(|c| ms_of(c, field)),
        "currentPage": current,
        "nextPage": page.more.then_some(current + 1),
        "prevPage": (current > 1).then(|| current - 1),
    })
}

fn next_url(req: &Req, path: &str, params: &[(&str, String)]) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let qs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("http://{}{path}?{}", req.host(), qs.join("&"))
}

/// `limit` query parameter: default, 1..=max.
fn parse_limit(v: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    let Some(v) = v else { return Ok(default) };
    let n: i64 = v.parse().map_err(|_| {
        "limit must be a number conforming to the specified constraints".to_string()
    })?;
    if n < 1 {
        Err("limit must not be less than 1".into())
    } else if n as usize > max {
        Err(format!("limit must not be greater than {max}"))
    } else {
        Ok(n as usize)
    }
}

fn parse_start_after(v: Option<&str>) -> Result<Option<i64>, String> {
    v.map(|v| {
        v.parse::<i64>().map_err(|_| {
            "startAfter must be a number conforming to the specified constraints".to_string()
        })
    })
    .transpose()
}

// ------------------------------------------------------ v2 handlers: OAuth

async fn oauth_token(State(s): S, req: Req) -> Out {
    let content_type = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(respond(
            400,
            json!({
                "statusCode": 400,
                "error": "invalid_request",
                "message": "The token request must be form-encoded (Content-Type: application/x-www-form-urlencoded).",
            }),
        ));
    }
    let form = form_pairs(std::str::from_utf8(&req.raw).unwrap_or(""));
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("client_id") != s.config.client_id || field("client_secret") != s.config.client_secret
    {
        return Err(respond(
            401,
            json!({
                "statusCode": 401,
                "error": "invalid_client",
                "error_description": "Client authentication failed.",
                "message": "Invalid client credentials",
            }),
        ));
    }
    match field("grant_type") {
        "refresh_token" => {}
        "" => return Err(e422(vec!["grant_type should not be empty".into()])),
        other => {
            return Err(respond(
                400,
                json!({
                    "statusCode": 400,
                    "error": "unsupported_grant_type",
                    "message": format!("Grant type {other} is not supported by this emulator"),
                }),
            ))
        }
    }
    let mut st = s.lock();
    if !st.refresh.remove(field("refresh_token")) {
        return Err(respond(
            400,
            json!({
                "statusCode": 400,
                "error": "invalid_grant",
                "error_description": "Invalid grant: refresh token is invalid",
                "message": "Invalid grant: refresh token is invalid",
            }),
        ));
    }
    let access = format!("at-{}", random_id(40));
    let refresh = format!("rt-{}", random_id(40));
    st.access
        .insert(access.clone(), Some(Instant::now() + s.config.token_ttl));
    st.refresh.insert(refresh.clone());
    st.latest_refresh = Some(refresh.clone());
    st.refreshes += 1;
    let user_type = match field("user_type") {
        "" => "Location",
        other => other,
    };
    Ok(respond(
        200,
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": s.config.token_ttl.as_secs(),
            "refresh_token": refresh,
            "scope": "contacts.readonly contacts.write calendars/events.write",
            "userType": user_type,
            "locationId": s.config.location_id,
            "companyId": s.config.company_id,
            "userId": "emuUser0000000000001",
            "planId": "emuPlan0000000000001",
            "approvedLocations": [s.config.location_id],
            "isBulkInstallation": false,
            "installToFutureLocations": false,
            "approveAllLocations": false,
        }),
    ))
}

/// `POST /oauth/locationToken`: an agency token mints a token for one of
/// the agency's locations (form body `companyId`, `locationId`). The minted
/// token works like any access token of the location.
async fn location_token(State(s): S, req: Req) -> Out {
    let token = bearer(&req.headers);
    if token != Some(s.config.agency_token.as_str()) {
        // Agency-Access-Only: a location's own token is refused.
        let location_token = token.is_some_and(|t| s.lock().token_valid(t));
        return Err(if location_token {
            respond(
                401,
                json!({"statusCode": 401, "message": "This route requires an Agency access token", "error": "Unauthorized"}),
            )
        } else {
            e401()
        });
    }
    match req.headers.get("version").and_then(|v| v.to_str().ok()) {
        None => return Err(e400("Version header was not found")),
        Some(v) if v != VERSION => {
            return Err(e400(format!(
                "Invalid Version header {v:?}: this endpoint expects {VERSION}"
            )))
        }
        Some(_) => {}
    }
    let form_body = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !form_body {
        return Err(e400(
            "The body must be form-encoded (Content-Type: application/x-www-form-urlencoded)",
        ));
    }
    let form = form_pairs(std::str::from_utf8(&req.raw).unwrap_or(""));
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let missing: Vec<String> = ["companyId", "locationId"]
        .into_iter()
        .filter(|k| field(k).is_empty())
        .map(|k| format!("{k} should not be empty"))
        .collect();
    check(missing)?;
    if field("companyId") != s.config.company_id {
        return Err(respond(
            403,
            json!({"statusCode": 403, "message": "The token does not have access to this company."}),
        ));
    }
    if field("locationId") != s.config.location_id {
        return Err(e400("Location not found"));
    }
    let access = format!("at-{}", random_id(40));
    s.lock()
        .access
        .insert(access.clone(), Some(Instant::now() + s.config.token_ttl));
    Ok(respond(
        200,
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": s.config.token_ttl.as_secs(),
            "scope": "contacts.readonly contacts.write calendars/events.write",
            "locationId": s.config.location_id,
            "planId": "emuPlan0000000000001",
            "userId": "emuUser0000000000001",
            "appId": "emuApp00000000000001",
            "versionId": "emuVersion0000000001",
        }),
    ))
}

// --------------------------------------------------- v2 handlers: contacts

async fn contact_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    let c = st
        .contacts
        .get(&id)
        .ok_or_else(|| e400("Contact not found"))?;
    Ok(respond(200, json!({"contact": c})))
}

async fn contact_create(State(s): S, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, &create_fields(), &["locationId"]))?;
    check(contact_checks(&body))?;
    s.location(body["locationId"].as_str())?;
    let map = body.as_object().cloned().unwrap_or_default();
    if !s.config.allow_duplicates {
        if let Some((id, field)) = st.duplicate_of(&map, None) {
            return Err(duplicate(&id, field));
        }
    }
    let c = st.new_contact(&s.config.location_id, &map);
    s.emit("ContactCreate", &c);
    Ok(respond(201, json!({"contact": c})))
}

async fn contact_update(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, CONTACT_FIELDS, &[]))?;
    check(contact_checks(&body))?;
    let map = body.as_object().cloned().unwrap_or_default();
    st.has_contact(&id).map_err(e400)?;
    if !s.config.allow_duplicates {
        if let Some((other, field)) = st.duplicate_of(&map, Some(&id)) {
            return Err(duplicate(&other, field));
        }
    }
    let c = st.update_contact(&id, &map).map_err(e400)?;
    s.emit("ContactUpdate", &c);
    Ok(respond(200, json!({"succeded": true, "contact": c})))
}

async fn contact_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.delete_contact(&id).map_err(e400)?;
    Ok(succeded(200))
}

async fn contact_upsert(State(s): S, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, &upsert_fields(), &["locationId"]))?;
    check(contact_checks(&body))?;
    s.location(body["locationId"].as_str())?;
    let mut map = body.as_object().cloned().unwrap_or_default();
    let always_new =
        s.config.allow_duplicates && body["createNewIfDuplicateAllowed"] == json!(true);
    let existing = if always_new {
        None
    } else {
        st.duplicate_of(&map, None).map(|(id, _)| id)
    };
    let trace = {
        let r = random_id(32).to_lowercase();
        format!(
            "{}-{}-{}-{}-{}",
            &r[..8],
            &r[8..12],
            &r[12..16],
            &r[16..20],
            &r[20..]
        )
    };
    let (new, c) = match existing {
        Some(id) => {
            // Upsert drops `gender` on existing contacts (GitHub issue #313).
            map.remove("gender");
            (false, st.update_contact(&id, &map).map_err(e400)?)
        }
        None => (true, st.new_contact(&s.config.location_id, &map)),
    };
    s.emit(
        if new {
            "ContactCreate"
        } else {
            "ContactUpdate"
        },
        &c,
    );
    Ok(respond(
        200,
        json!({"new": new, "contact": c, "traceId": trace}),
    ))
}

async fn contacts_duplicate(State(s): S, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    s.location(req.q("locationId"))?;
    let (email, number) = (req.q("email"), req.q("number"));
    if email.is_none() && number.is_none() {
        return Err(e400("Pass at least one of number, email query parameter"));
    }
    let mut probe = Map::new();
    if let Some(e) = email {
        probe.insert("email".into(), json!(e));
    }
    if let Some(n) = number {
        probe.insert("phone".into(), json!(n));
    }
    let found = st
        .duplicate_of(&probe, None)
        .and_then(|(id, _)| st.contacts.get(&id).cloned());
    Ok(respond(200, json!({"contact": found})))
}

async fn contacts_list(State(s): S, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    s.location(req.q("locationId"))?;
    let limit = parse_limit(req.q("limit"), 20, 100).map_err(|m| e422(vec![m]))?;
    let after = parse_start_after(req.q("startAfter")).map_err(|m| e422(vec![m]))?;
    let page = cursor_page(
        st.matching(req.q("query")),
        "dateAdded",
        false,
        limit,
        after,
        req.q("startAfterId"),
    );
    let next = page.more.then(|| {
        let last = page.items.last().cloned().unwrap_or_default();
        let mut params = vec![
            ("locationId", s.config.location_id.clone()),
            ("limit", limit.to_string()),
        ];
        if let Some(q) = req.q("query") {
            params.push(("query", q.to_string()));
        }
        params.push(("startAfter", ms_of(&last, "dateAdded").to_string()));
        params.push(("startAfterId", id_of(&last).to_string()));
        next_url(&req, "/contacts/", &params)
    });
    let meta = page_meta(&page, "dateAdded", limit, next);
    Ok(respond(
        200,
        json!({"contacts": page.items, "count": page.total, "meta": meta}),
    ))
}

const SEARCH_FIELDS: &[(&str, Ty)] = &[
    ("locationId", Ty::Str),
    ("page", Ty::Num),
    ("pageLimit", Ty::Num),
    ("searchAfter", Ty::Arr),
    ("filters", Ty::Arr),
    ("sort", Ty::Arr),
    ("query", Ty::Str),
];

const OPERATORS: &[&str] = &[
    "eq",
    "not_eq",
    "contains",
    "not_contains",
    "exists",
    "not_exists",
    "range",
];

async fn contacts_search(State(s): S, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, SEARCH_FIELDS, &["locationId", "pageLimit"]))?;
    let mut errors = vec![];
    let page_limit = body["pageLimit"].as_u64().unwrap_or(0);
    if !(1..=500).contains(&page_limit) {
        errors.push("pageLimit must not be greater than 500 and not less than 1".to_string());
    }
    let page = body.get("page").map_or(Some(1), Value::as_u64).unwrap_or(0);
    if page < 1 {
        errors.push("page must not be less than 1".into());
    }
    if body["query"]
        .as_str()
        .is_some_and(|q| q.chars().count() > 75)
    {
        errors.push("query must be shorter than or equal to 75 characters".into());
    }
    for f in body["filters"].as_array().into_iter().flatten() {
        filter_errors(f, &mut errors);
    }
    check(errors)?;
    s.location(body["locationId"].as_str())?;
    if body.get("searchAfter").is_none() && page * page_limit > 10_000 {
        return Err(e400(
            "Only the first 10000 records can be paged with page; use searchAfter",
        ));
    }
    let filters = body["filters"].as_array().cloned().unwrap_or_default();
    let mut list: Vec<Value> = st
        .matching(body["query"].as_str())
        .into_iter()
        .filter(|c| filters.iter().all(|f| filter_matches(c, f)))
        .collect();
    let sort = body["sort"].as_array().cloned().unwrap_or_default();
    list.sort_by(|a, b| {
        let by_fields = sort.iter().fold(std::cmp::Ordering::Equal, |acc, s| {
            acc.then_with(|| {
                let field = s["field"].as_str().unwrap_or("");
                let o = cmp_values(&a[field], &b[field]).unwrap_or(std::cmp::Ordering::Equal);
                if s["direction"].as_str() == Some("desc") {
                    o.reverse()
                } else {
                    o
                }
            })
        });
        let default = || (ms_of(b, "dateAdded"), id_of(b)).cmp(&(ms_of(a, "dateAdded"), id_of(a)));
        if sort.is_empty() {
            default()
        } else {
            by_fields.then_with(|| id_of(a).cmp(id_of(b)))
        }
    });
    let total = list.len();
    let start = match body.get("searchAfter").and_then(Value::as_array) {
        Some(after) => {
            let id = after.last().and_then(Value::as_str).unwrap_or("");
            list.iter()
                .position(|c| id_of(c) == id)
                .map(|i| i + 1)
                .ok_or_else(|| e400("searchAfter is invalid"))?
        }
        None => ((page - 1) * page_limit) as usize,
    };
    let contacts: Vec<Value> = list
        .into_iter()
        .skip(start)
        .take(page_limit as usize)
        .map(|mut c| {
            let key = json!([ms_of(&c, "dateAdded"), id_of(&c)]);
            c["searchAfter"] = key;
            c
        })
        .collect();
    Ok(respond(200, json!({"contacts": contacts, "total": total})))
}

fn filter_errors(f: &Value, errors: &mut Vec<String>) {
    if f.get("group").is_some() {
        for sub in f["filters"].as_array().into_iter().flatten() {
            filter_errors(sub, errors);
        }
    } else if !f["field"].is_string() {
        errors.push("filters.field must be a string".into());
    } else if !f["operator"]
        .as_str()
        .is_some_and(|o| OPERATORS.contains(&o))
    {
        errors.push(format!(
            "filters.operator must be one of the following values: {}",
            OPERATORS.join(", ")
        ));
    }
}

fn filter_matches(c: &Value, f: &Value) -> bool {
    if let Some(group) = f.get("group").and_then(Value::as_str) {
        let subs = f["filters"].as_array().cloned().unwrap_or_default();
        return if group.eq_ignore_ascii_case("or") {
            subs.iter().any(|x| filter_matches(c, x))
        } else {
            subs.iter().all(|x| filter_matches(c, x))
        };
    }
    let have = &c[f["field"].as_str().unwrap_or("")];
    let want = &f["value"];
    let present = |v: &Value| !(v.is_null() || v == "" || v.as_array().is_some_and(Vec::is_empty));
    match f["operator"].as_str().unwrap_or("") {
        "eq" => value_eq(have, want),
        "not_eq" => !value_eq(have, want),
        "contains" => value_contains(have, want),
        "not_contains" => !value_contains(have, want),
        "exists" => present(have),
        "not_exists" => !present(have),
        "range" => {
            let bound = |k: &str, ok: fn(std::cmp::Ordering) -> bool| {
                want.get(k)
                    .is_none_or(|b| cmp_values(have, b).is_some_and(ok))
            };
            bound("gte", |o| o.is_ge())
                && bound("gt", |o| o.is_gt())
                && bound("lte", |o| o.is_le())
                && bound("lt", |o| o.is_lt())
        }
        _ => false,
    }
}

fn value_eq(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Array(items), _) => items.iter().any(|i| value_eq(i, want)),
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        _ => cmp_values(have, want) == Some(std::cmp::Ordering::Equal) || have == want,
    }
}

fn value_contains(have: &Value, want: &Value) -> bool {
    let needle = match want {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    };
    match have {
        Value::Array(items) => items.iter().any(|i| value_contains(i, want)),
        Value::String(s) => s.to_lowercase().contains(&needle),
        _ => false,
    }
}

/// Numbers numerically, ISO dates against epoch ms, strings case-insensitively.
fn cmp_values(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::Number(y)) => (parse_ms(x)? as f64).partial_cmp(&y.as_f64()?),
        (Value::Number(x), Value::String(y)) => x.as_f64()?.partial_cmp(&(parse_ms(y)? as f64)),
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

async fn contacts_by_business(State(s): S, Path(business): Path<String>, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    s.location(req.q("locationId"))?;
    let number = |name: &str, default: usize| -> Result<usize, Response> {
        req.q(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| e422(vec![format!("{name} must be a number string")]))
        })
    };
    let (limit, skip) = (number("limit", 25)?, number("skip", 0)?);
    let list: Vec<Value> = st
        .matching(req.q("query"))
        .into_iter()
        .filter(|c| c.get("businessId").and_then(Value::as_str) == Some(business.as_str()))
        .collect();
    let total = list.len();
    let contacts: Vec<Value> = list.into_iter().skip(skip).take(limit).collect();
    Ok(respond(200, json!({"contacts": contacts, "count": total})))
}

async fn bulk_business(State(s): S, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    let mut errors = validate(
        &body,
        &[
            ("locationId", Ty::Str),
            ("ids", Ty::Arr),
            ("businessId", Ty::NullStr),
        ],
        &["locationId", "ids"],
    );
    if body.get("businessId").is_none() {
        errors.push("businessId must be a string".into());
    }
    check(errors)?;
    s.location(body["locationId"].as_str())?;
    let now = st.stamp();
    let mut done = vec![];
    for id in string_list(body.get("ids")) {
        if let Ok(c) = st.contact_mut(&id) {
            c.insert("businessId".into(), body["businessId"].clone());
            c.insert("dateUpdated".into(), json!(now));
            done.push(id);
        }
    }
    Ok(respond(200, json!({"success": true, "ids": done})))
}

async fn bulk_tags(State(s): S, Path(kind): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    let fields = [
        ("contacts", Ty::Arr),
        ("tags", Ty::Arr),
        ("locationId", Ty::Str),
        ("removeAllTags", Ty::Bool),
    ];
    let mut errors = validate(&body, &fields, &["contacts", "tags", "locationId"]);
    if kind != "add" && kind != "remove" {
        errors.push("type must be one of the following values: add, remove".into());
    }
    if kind == "add" && body["removeAllTags"] == json!(true) {
        errors.push("removeAllTags can only be used with type remove".into());
    }
    check(errors)?;
    s.location(body["locationId"].as_str())?;
    let tags = string_list(body.get("tags"));
    let mut responses = vec![];
    for id in string_list(body.get("contacts")) {
        let error = |message: &str| json!({"contactId": id, "message": message, "type": "error"});
        if id.len() != 20 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            responses.push(error("contact id is not a valid firebase id"));
            continue;
        }
        let Some(old) = st.contacts.get(&id).map(|c| string_list(c.get("tags"))) else {
            responses.push(error(if st.deleted.contains(&id) {
                "contact is deleted"
            } else {
                "contact not found"
            }));
            continue;
        };
        let (added, removed): (Vec<String>, Vec<String>) = if kind == "add" {
            let new = st.add_tags(&id, &tags).unwrap_or_default();
            (
                new.into_iter().filter(|t| !old.contains(t)).collect(),
                vec![],
            )
        } else {
            let to_remove = if body["removeAllTags"] == json!(true) {
                old.clone()
            } else {
                tags.clone()
            };
            let new = st.remove_tags(&id, &to_remove).unwrap_or_default();
            (
                vec![],
                old.iter()
                    .filter(|t| !new.contains(t))
                    .cloned()
                    .collect::<Vec<String>>(),
            )
        };
        responses.push(json!({
            "contactId": id, "message": "Tags updated", "type": "success",
            "oldTags": old, "tagsAdded": added, "tagsRemoved": removed,
        }));
    }
    let errors = responses.iter().filter(|r| r["type"] == "error").count();
    Ok(respond(
        201,
        json!({"succeded": errors == 0, "errorCount": errors, "responses": responses}),
    ))
}

// ------------------------------------------------------ v2 handlers: tasks

const TASK_FIELDS: &[(&str, Ty)] = &[
    ("title", Ty::Str),
    ("body", Ty::NullStr),
    ("dueDate", Ty::Str),
    ("completed", Ty::Bool),
    ("assignedTo", Ty::NullStr),
];

fn due_date_errors(body: &Value) -> Vec<String> {
    match body.get("dueDate").and_then(Value::as_str) {
        Some(d) if parse_iso(d).is_none() => {
            vec!["dueDate must be a valid ISO 8601 date string".into()]
        }
        _ => vec![],
    }
}

/// Copies task fields, `dueDate` normalised to ISO with milliseconds.
fn apply_task(t: &mut Map<String, Value>, body: &Map<String, Value>) {
    for (k, v) in body {
        let v = match k.as_str() {
            "dueDate" => v
                .as_str()
                .and_then(parse_iso)
                .map(|d| json!(iso_ms(d.timestamp_millis())))
                .unwrap_or(v.clone()),
            _ => v.clone(),
        };
        t.insert(k.clone(), v);
    }
}

async fn tasks_list(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    let tasks: Vec<&Value> = st.tasks.values().filter(|t| belongs(t, &cid)).collect();
    Ok(respond(200, json!({"tasks": tasks})))
}

async fn task_create(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(
        &body,
        TASK_FIELDS,
        &["title", "dueDate", "completed"],
    ))?;
    check(due_date_errors(&body))?;
    st.has_contact(&cid).map_err(e400)?;
    let id = random_id(20);
    let mut t = Map::new();
    t.insert("id".into(), json!(id));
    t.insert("contactId".into(), json!(cid));
    apply_task(&mut t, body.as_object().unwrap_or(&Map::new()));
    let t = Value::Object(t);
    st.tasks.insert(id, t.clone());
    Ok(respond(201, json!({"task": t})))
}

async fn task_get(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let t = st.task_mut(&cid, &tid).map_err(e400)?;
    Ok(respond(200, json!({"task": t})))
}

async fn task_update(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, TASK_FIELDS, &[]))?;
    check(due_date_errors(&body))?;
    let t = st.task_mut(&cid, &tid).map_err(e400)?;
    apply_task(t, body.as_object().unwrap_or(&Map::new()));
    Ok(respond(200, json!({"task": t})))
}

async fn task_completed(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, &[("completed", Ty::Bool)], &["completed"]))?;
    let t = st.task_mut(&cid, &tid).map_err(e400)?;
    t.insert("completed".into(), body["completed"].clone());
    Ok(respond(200, json!({"task": t})))
}

async fn task_delete(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    if !St::remove_child(&mut st.tasks, &cid, &tid) {
        return Err(e400("Task not found"));
    }
    Ok(succeded(200))
}

// ------------------------------------------------------ v2 handlers: notes

const NOTE_FIELDS: &[(&str, Ty)] = &[
    ("body", Ty::Str),
    ("userId", Ty::Str),
    ("title", Ty::Str),
    ("color", Ty::Str),
    ("pinned", Ty::Bool),
];

async fn notes_list(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    let notes: Vec<&Value> = st.notes.values().filter(|n| belongs(n, &cid)).collect();
    Ok(respond(200, json!({"notes": notes})))
}

async fn note_create(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, NOTE_FIELDS, &["body"]))?;
    st.has_contact(&cid).map_err(e400)?;
    let note = new_note(&mut st, &cid, body.as_object().unwrap_or(&Map::new()));
    Ok(respond(201, json!({"note": note})))
}

fn new_note(st: &mut St, cid: &str, body: &Map<String, Value>) -> Value {
    let id = random_id(20);
    let now = st.stamp();
    let mut n = body.clone();
    n.insert("id".into(), json!(id));
    n.insert("contactId".into(), json!(cid));
    n.insert("dateAdded".into(), json!(now));
    let n = Value::Object(n);
    st.notes.insert(id, n.clone());
    n
}

async fn note_get(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let n = st.note_mut(&cid, &nid).map_err(e400)?;
    Ok(respond(200, json!({"note": n})))
}

async fn note_update(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    check(validate(&body, NOTE_FIELDS, &[]))?;
    let n = st.note_mut(&cid, &nid).map_err(e400)?;
    n.extend(body.as_object().cloned().unwrap_or_default());
    Ok(respond(200, json!({"note": n})))
}

async fn note_delete(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    if !St::remove_child(&mut st.notes, &cid, &nid) {
        return Err(e400("Note not found"));
    }
    Ok(succeded(200))
}

// ------------------------------------------ v2 handlers: appointments

async fn appointments_list(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    let events: Vec<&Value> = st
        .appointments
        .values()
        .filter(|a| belongs(a, &cid))
        .collect();
    Ok(respond(200, json!({"events": events})))
}

const APPOINTMENT_FIELDS: &[(&str, Ty)] = &[
    ("calendarId", Ty::Str),
    ("locationId", Ty::Str),
    ("contactId", Ty::Str),
    ("startTime", Ty::Str),
    ("endTime", Ty::Str),
    ("title", Ty::Str),
    ("appointmentStatus", Ty::Str),
    ("assignedUserId", Ty::Str),
    ("address", Ty::Str),
    ("ignoreDateRange", Ty::Bool),
    ("toNotify", Ty::Bool),
];

const APPOINTMENT_STATUSES: &[&str] = &[
    "confirmed",
    "new",
    "showed",
    "noshow",
    "cancelled",
    "invalid",
];

async fn appointment_create(State(s): S, req: Req) -> Out {
    let mut st = s.v2(&req, CALENDARS_VERSION)?;
    let body = req.body().map_err(e400)?;
    // The calendars API takes more optional fields than the catalog uses:
    // unknown ones are ignored rather than rejected.
    let known: Map<String, Value> = body
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| APPOINTMENT_FIELDS.iter().any(|(f, _)| f == k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let known = Value::Object(known);
    let mut errors = validate(
        &known,
        APPOINTMENT_FIELDS,
        &["calendarId", "locationId", "contactId", "startTime"],
    );
    for field in ["startTime", "endTime"] {
        if known[field]
            .as_str()
            .is_some_and(|t| DateTime::parse_from_rfc3339(t).is_err())
        {
            errors.push(format!("{field} must be a valid ISO 8601 date string"));
        }
    }
    if known["appointmentStatus"]
        .as_str()
        .is_some_and(|a| !APPOINTMENT_STATUSES.contains(&a))
    {
        errors.push(format!(
            "appointmentStatus must be one of the following values: {}",
            APPOINTMENT_STATUSES.join(", ")
        ));
    }
    check(errors)?;
    s.location(known["locationId"].as_str())?;
    let cid = known["contactId"].as_str().unwrap_or_default().to_string();
    st.has_contact(&cid).map_err(e400)?;
    let start = DateTime::parse_from_rfc3339(known["startTime"].as_str().unwrap_or_default())
        .map_err(|e| e400(e.to_string()))?;
    let end = match known["endTime"].as_str() {
        Some(e) => e.to_string(),
        None => (start + chrono::TimeDelta::minutes(30)).to_rfc3339(),
    };
    let now = st.stamp();
    let id = random_id(20);
    let a = json!({
        "id": id,
        "calendarId": known["calendarId"],
        "locationId": s.config.location_id,
        "contactId": cid,
        "title": known.get("title").cloned().unwrap_or(json!("Appointment")),
        "status": "booked",
        "appointmentStatus": known.get("appointmentStatus").cloned().unwrap_or(json!("confirmed")),
        "assignedUserId": known.get("assignedUserId").cloned().unwrap_or(Value::Null),
        "address": known.get("address").cloned().unwrap_or(json!("")),
        "notes": "",
        "startTime": known["startTime"],
        "endTime": end,
        "groupId": "",
        "users": [],
        "assignedResources": [],
        "isRecurring": false,
        "dateAdded": now,
        "dateUpdated": now,
    });
    st.appointments.insert(id, a.clone());
    Ok(respond(201, a))
}

// ------------------------------------ v2 handlers: tags, followers, campaigns

async fn tags_add(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let tags = strings(&req.body().map_err(e400)?, "tags")?;
    let all = st.add_tags(&cid, &tags).map_err(e400)?;
    Ok(respond(201, json!({"tags": all})))
}

async fn tags_remove(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let tags = strings(&req.body().map_err(e400)?, "tags")?;
    let all = st.remove_tags(&cid, &tags).map_err(e400)?;
    Ok(respond(200, json!({"tags": all})))
}

async fn followers_add(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let followers = strings(&req.body().map_err(e400)?, "followers")?;
    let c = st.contact_mut(&cid).map_err(e400)?;
    let mut all = string_list(c.get("followers"));
    let mut added = vec![];
    for f in followers {
        if !all.contains(&f) {
            all.push(f.clone());
            added.push(f);
        }
    }
    c.insert("followers".into(), json!(all));
    Ok(respond(
        201,
        json!({"followers": all, "followersAdded": added}),
    ))
}

async fn followers_remove(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let followers = strings(&req.body().map_err(e400)?, "followers")?;
    let c = st.contact_mut(&cid).map_err(e400)?;
    let (removed, kept): (Vec<String>, Vec<String>) = string_list(c.get("followers"))
        .into_iter()
        .partition(|f| followers.contains(f));
    c.insert("followers".into(), json!(kept));
    Ok(respond(
        200,
        json!({"followers": kept, "followersRemoved": removed}),
    ))
}

async fn campaign_add(State(s): S, Path((cid, campaign)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    st.campaigns.entry(cid).or_default().insert(campaign);
    Ok(succeded(201))
}

async fn campaign_remove(
    State(s): S,
    Path((cid, campaign)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    st.campaigns.entry(cid).or_default().remove(&campaign);
    Ok(succeded(200))
}

async fn campaigns_remove_all(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    st.campaigns.remove(&cid);
    Ok(succeded(200))
}

async fn workflow_add(State(s): S, Path((cid, workflow)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    let body = req.body().map_err(e400)?;
    let mut errors = validate(&body, &[("eventStartTime", Ty::Str)], &[]);
    if body["eventStartTime"]
        .as_str()
        .is_some_and(|t| parse_iso(t).is_none())
    {
        errors.push("eventStartTime must be a valid ISO 8601 date string".into());
    }
    check(errors)?;
    st.has_contact(&cid).map_err(e400)?;
    st.workflows.entry(cid).or_default().insert(workflow);
    Ok(succeded(200))
}

async fn workflow_remove(
    State(s): S,
    Path((cid, workflow)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.v2(&req, VERSION)?;
    st.has_contact(&cid).map_err(e400)?;
    st.workflows.entry(cid).or_default().remove(&workflow);
    Ok(succeded(200))
}

// --------------------------------------------------------- v1 handlers

/// The v1 view of a stored contact.
fn v1_contact(c: &Value) -> Value {
    let mut m = c.as_object().cloned().unwrap_or_default();
    if let Some(name) = m.remove("name") {
        m.insert("contactName".into(), name);
    }
    if let Some(fields) = m.remove("customFields") {
        m.insert("customField".into(), fields);
    }
    for k in [
        "firstNameLowerCase",
        "lastNameLowerCase",
        "fullNameLowerCase",
        "followers",
    ] {
        m.remove(k);
    }
    Value::Object(m)
}

fn v1_task(t: &Value) -> Value {
    let mut m = Map::new();
    for (from, to) in [
        ("id", "id"),
        ("title", "title"),
        ("body", "description"),
        ("assignedTo", "assignedTo"),
        ("dueDate", "dueDate"),
        ("completed", "isCompleted"),
    ] {
        if let Some(v) = t.get(from) {
            m.insert(to.into(), v.clone());
        }
    }
    Value::Object(m)
}

fn v1_note(n: &Value) -> Value {
    let mut m = Map::new();
    for (from, to) in [
        ("id", "id"),
        ("body", "body"),
        ("userId", "createdBy"),
        ("dateAdded", "createdAt"),
    ] {
        if let Some(v) = n.get(from) {
            m.insert(to.into(), v.clone());
        }
    }
    Value::Object(m)
}

const V1_CONTACT_FIELDS: &[&str] = &[
    "email",
    "phone",
    "firstName",
    "lastName",
    "name",
    "dateOfBirth",
    "address1",
    "city",
    "state",
    "country",
    "postalCode",
    "companyName",
    "website",
    "timezone",
    "dnd",
    "tags",
    "source",
    "assignedTo",
];

/// A v1 contact body in v2 form (`customField` map -> `customFields`);
/// v1 ignores unknown fields.
fn v1_contact_body(body: &Value) -> Result<Map<String, Value>, Response> {
    let mut errors = Map::new();
    if body
        .get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| !is_email(e))
    {
        v1_rule(
            &mut errors,
            "email",
            "The email must be a valid email address.",
            "email",
        );
    }
    if body
        .get("tags")
        .is_some_and(|t| !t.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
    {
        v1_rule(
            &mut errors,
            "tags",
            "The tags must be an array of strings.",
            "array",
        );
    }
    if body
        .get("dateOfBirth")
        .and_then(Value::as_str)
        .is_some_and(|d| parse_dob(d).is_none())
    {
        v1_rule(
            &mut errors,
            "dateOfBirth",
            "The date of birth is not a valid date.",
            "date",
        );
    }
    v1_422(errors)?;
    let mut map: Map<String, Value> = V1_CONTACT_FIELDS
        .iter()
        .filter_map(|k| body.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let custom: Vec<Value> = match body.get("customField") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(id, v)| json!({"id": id, "field_value": v}))
            .collect(),
        Some(Value::Array(items)) => items.clone(),
        _ => vec![],
    };
    if !custom.is_empty() {
        map.insert("customFields".into(), Value::Array(custom));
    }
    Ok(map)
}

async fn v1_contacts_list(State(s): S, req: Req) -> Out {
    let st = s.v1(&req)?;
    let mut errors = Map::new();
    let limit = parse_limit(req.q("limit"), 20, 100).unwrap_or_else(|m| {
        v1_rule(&mut errors, "limit", &format!("The {m}."), "max");
        20
    });
    let field = match req.q("sortBy").unwrap_or("date_added") {
        "date_added" => "dateAdded",
        "date_updated" => "dateUpdated",
        _ => {
            v1_rule(
                &mut errors,
                "sortBy",
                "The selected sort by is invalid.",
                "in",
            );
            "dateAdded"
        }
    };
    let asc = match req.q("order").unwrap_or("desc") {
        "asc" => true,
        "desc" => false,
        _ => {
            v1_rule(&mut errors, "order", "The selected order is invalid.", "in");
            false
        }
    };
    let after = parse_start_after(req.q("startAfter")).unwrap_or_else(|_| {
        v1_rule(
            &mut errors,
            "startAfter",
            "The start after must be a number.",
            "numeric",
        );
        None
    });
    v1_422(errors)?;
    let page = cursor_page(
        st.matching(req.q("query")),
        field,
        asc,
        limit,
        after,
        req.q("startAfterId"),
    );
    let next = page.more.then(|| {
        let last = page.items.last().cloned().unwrap_or_default();
        let mut params = vec![("limit", limit.to_string())];
        for k in ["query", "sortBy", "order"] {
            if let Some(v) = req.q(k) {
                params.push((k, v.to_string()));
            }
        }
        params.push(("startAfter", ms_of(&last, field).to_string()));
        params.push(("startAfterId", id_of(&last).to_string()));
        next_url(&req, "/v1/contacts/", &params)
    });
    let meta = page_meta(&page, field, limit, next);
    let contacts: Vec<Value> = page.items.iter().map(v1_contact).collect();
    Ok(respond(200, json!({"contacts": contacts, "meta": meta})))
}

async fn v1_contact_create(State(s): S, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let body = req.body().map_err(v1_400)?;
    let has = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    if !has("email") && !has("phone") {
        let mut errors = Map::new();
        v1_rule(
            &mut errors,
            "email or phone",
            "The email or phone field is mandatory.",
            "required",
        );
        v1_422(errors)?;
    }
    let map = v1_contact_body(&body)?;
    let c = match st
        .duplicate_of(&map, None)
        .filter(|_| !s.config.allow_duplicates)
    {
        Some((id, _)) => st.update_contact(&id, &map).map_err(v1_400)?,
        None => st.new_contact(&s.config.location_id, &map),
    };
    Ok(respond(200, json!({"contact": v1_contact(&c)})))
}

async fn v1_lookup(State(s): S, req: Req) -> Out {
    let st = s.v1(&req)?;
    let (email, phone) = (req.q("email"), req.q("phone"));
    if email.is_none() && phone.is_none() {
        let mut errors = Map::new();
        v1_rule(
            &mut errors,
            "email or phone",
            "The email or phone field is mandatory.",
            "required",
        );
        v1_422(errors)?;
    }
    let by_email: Vec<Value> = email
        .map(|e| {
            let e = e.to_lowercase();
            st.contacts
                .values()
                .filter(|c| c.get("emailLowerCase").and_then(Value::as_str) == Some(&e))
                .map(v1_contact)
                .collect()
        })
        .unwrap_or_default();
    let found = if !by_email.is_empty() {
        by_email
    } else {
        phone
            .map(|p| {
                let p = normalize_phone(p);
                st.contacts
                    .values()
                    .filter(|c| c.get("phone").and_then(Value::as_str) == Some(&p))
                    .map(v1_contact)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(respond(200, json!({"contacts": found})))
}

async fn v1_contact_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.v1(&req)?;
    let c = st
        .contacts
        .get(&id)
        .ok_or_else(|| v1_400("Contact not found"))?;
    Ok(respond(200, json!({"contact": v1_contact(c)})))
}

async fn v1_contact_update(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let map = v1_contact_body(&req.body().map_err(v1_400)?)?;
    let c = st.update_contact(&id, &map).map_err(v1_400)?;
    Ok(respond(200, json!({"contact": v1_contact(&c)})))
}

async fn v1_contact_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    st.delete_contact(&id).map_err(v1_400)?;
    Ok(empty_ok())
}

/// A v1 task body (`description`, `status`) in v2 form (`body`, `completed`).
fn v1_task_body(body: &Value, require: bool) -> Result<Map<String, Value>, Response> {
    let mut errors = Map::new();
    for (field, label) in [("title", "title"), ("dueDate", "due date")] {
        match body.get(field) {
            Some(Value::String(v)) if !v.is_empty() => {}
            None | Some(Value::Null) if !require => {}
            _ => v1_rule(
                &mut errors,
                field,
                &format!("The {label} field is mandatory."),
                "required",
            ),
        }
    }
    if body
        .get("dueDate")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.is_empty() && parse_iso(d).is_none())
    {
        v1_rule(
            &mut errors,
            "dueDate",
            "The due date is not a valid date.",
            "date",
        );
    }
    let status = body.get("status").and_then(Value::as_str);
    if body
        .get("status")
        .is_some_and(|s| !matches!(s.as_str(), Some("completed" | "incompleted")))
    {
        v1_rule(
            &mut errors,
            "status",
            "The selected status is invalid.",
            "in",
        );
    }
    v1_422(errors)?;
    let mut map = Map::new();
    for (from, to) in [
        ("title", "title"),
        ("dueDate", "dueDate"),
        ("description", "body"),
        ("assignedTo", "assignedTo"),
    ] {
        if let Some(v) = body.get(from) {
            map.insert(to.into(), v.clone());
        }
    }
    if let Some(status) = status {
        map.insert("completed".into(), json!(status == "completed"));
    }
    Ok(map)
}

async fn v1_tasks_list(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    let tasks: Vec<Value> = st
        .tasks
        .values()
        .filter(|t| belongs(t, &cid))
        .map(v1_task)
        .collect();
    Ok(respond(200, json!({"tasks": tasks})))
}

async fn v1_task_create(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let mut map = v1_task_body(&req.body().map_err(v1_400)?, true)?;
    st.has_contact(&cid).map_err(v1_400)?;
    map.entry("completed").or_insert(json!(false));
    let id = random_id(20);
    let mut t = Map::new();
    t.insert("id".into(), json!(id));
    t.insert("contactId".into(), json!(cid));
    apply_task(&mut t, &map);
    let t = Value::Object(t);
    st.tasks.insert(id, t.clone());
    Ok(respond(200, v1_task(&t)))
}

async fn v1_task_get(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let t = st.task_mut(&cid, &tid).map_err(v1_400)?;
    Ok(respond(200, v1_task(&Value::Object(t.clone()))))
}

async fn v1_task_update(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let map = v1_task_body(&req.body().map_err(v1_400)?, true)?;
    let t = st.task_mut(&cid, &tid).map_err(v1_400)?;
    apply_task(t, &map);
    Ok(respond(200, v1_task(&Value::Object(t.clone()))))
}

async fn v1_task_status(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let body = req.body().map_err(v1_400)?;
    let mut errors = Map::new();
    match body.get("status").and_then(Value::as_str) {
        Some("completed" | "incompleted") => {}
        None => v1_rule(
            &mut errors,
            "status",
            "The status field is mandatory.",
            "required",
        ),
        Some(_) => v1_rule(
            &mut errors,
            "status",
            "The selected status is invalid.",
            "in",
        ),
    }
    v1_422(errors)?;
    let t = st.task_mut(&cid, &tid).map_err(v1_400)?;
    t.insert("completed".into(), json!(body["status"] == "completed"));
    Ok(respond(200, v1_task(&Value::Object(t.clone()))))
}

async fn v1_task_delete(State(s): S, Path((cid, tid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    if !St::remove_child(&mut st.tasks, &cid, &tid) {
        return Err(v1_400("Task not found"));
    }
    Ok(empty_ok())
}

fn v1_note_body(body: &Value) -> Result<Map<String, Value>, Response> {
    let mut errors = Map::new();
    if body
        .get("body")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        v1_rule(
            &mut errors,
            "body",
            "The body field is mandatory.",
            "required",
        );
    }
    v1_422(errors)?;
    Ok(["body", "userId"]
        .iter()
        .filter_map(|k| body.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect())
}

async fn v1_notes_list(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    let notes: Vec<Value> = st
        .notes
        .values()
        .filter(|n| belongs(n, &cid))
        .map(v1_note)
        .collect();
    Ok(respond(200, json!({"notes": notes})))
}

async fn v1_note_create(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let map = v1_note_body(&req.body().map_err(v1_400)?)?;
    st.has_contact(&cid).map_err(v1_400)?;
    let note = new_note(&mut st, &cid, &map);
    Ok(respond(200, v1_note(&note)))
}

async fn v1_note_get(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let n = st.note_mut(&cid, &nid).map_err(v1_400)?;
    Ok(respond(200, v1_note(&Value::Object(n.clone()))))
}

async fn v1_note_update(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let map = v1_note_body(&req.body().map_err(v1_400)?)?;
    let n = st.note_mut(&cid, &nid).map_err(v1_400)?;
    n.extend(map);
    Ok(respond(200, v1_note(&Value::Object(n.clone()))))
}

async fn v1_note_delete(State(s): S, Path((cid, nid)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    if !St::remove_child(&mut st.notes, &cid, &nid) {
        return Err(v1_400("Note not found"));
    }
    Ok(empty_ok())
}

async fn v1_appointments(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    let list: Vec<&Value> = st
        .appointments
        .values()
        .filter(|a| belongs(a, &cid))
        .collect();
    Ok(respond(200, json!({"appointments": list})))
}

fn v1_tags(body: &Value) -> Result<Vec<String>, Response> {
    match body.get("tags").and_then(Value::as_array) {
        Some(tags) if tags.iter().all(Value::is_string) => Ok(string_list(body.get("tags"))),
        _ => {
            let mut errors = Map::new();
            v1_rule(
                &mut errors,
                "tags",
                "The tags field is mandatory.",
                "required",
            );
            v1_422(errors).map(|_| vec![])
        }
    }
}

async fn v1_tags_add(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let tags = v1_tags(&req.body().map_err(v1_400)?)?;
    let all = st.add_tags(&cid, &tags).map_err(v1_400)?;
    Ok(respond(200, json!({"tags": all})))
}

async fn v1_tags_remove(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    let tags = v1_tags(&req.body().map_err(v1_400)?)?;
    let all = st.remove_tags(&cid, &tags).map_err(v1_400)?;
    Ok(respond(200, json!({"tags": all})))
}

async fn v1_campaign_add(
    State(s): S,
    Path((cid, campaign)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    st.campaigns.entry(cid).or_default().insert(campaign);
    Ok(empty_ok())
}

async fn v1_campaign_remove(
    State(s): S,
    Path((cid, campaign)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    st.campaigns.entry(cid).or_default().remove(&campaign);
    Ok(empty_ok())
}

async fn v1_campaigns_remove_all(State(s): S, Path(cid): Path<String>, req: Req) -> Out {
    let mut st = s.v1(&req)?;
    st.has_contact(&cid).map_err(v1_400)?;
    st.campaigns.remove(&cid);
    Ok(empty_ok())
}

async fn v1_workflow_add(
    State(s): S,
    Path((cid, workflow)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.v1(&req)?;
    let body = req.body().map_err(v1_400)?;
    if body
        .get("eventStartTime")
        .and_then(Value::as_str)
        .is_some_and(|t| parse_iso(t).is_none())
    {
        let mut errors = Map::new();
        v1_rule(
            &mut errors,
            "eventStartTime",
            "The event start time is not a valid date.",
            "date",
        );
        v1_422(errors)?;
    }
    st.has_contact(&cid).map_err(v1_400)?;
    st.workflows.entry(cid).or_default().insert(workflow);
    Ok(empty_ok())
}
