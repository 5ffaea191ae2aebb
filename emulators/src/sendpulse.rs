//! SendPulse emulator: OAuth client credentials, the email service (address
//! books and subscribers) and the CRM (`/crm/v1`: contacts, notes, tags,
//! tasks), as `shared/reference/sendpulse-api.md` describes them.
//!
//! Auth: `POST /oauth/access_token` with a JSON body issues tokens that
//! expire after `token_ttl` (or on [`SendPulseEmulator::expire_tokens`]); the
//! static `api_key`, when configured, never expires. Anything else answers
//! 401 `{"message":"Unauthorized!","error_code":401}`.
//!
//! Email service: bare arrays for lists, `[book]` for one book,
//! `{"result": true}` for mutations, errors `{"message","error_code"}` with
//! the spec's texts and codes (404 + 213 "Book not found", 422 "Argument
//! emails missing", 422 "Limit is exceeded. Max count: 100", ...).
//!
//! CRM: the `{"data": …}` envelope, 201 for task creates, task comments,
//! entity links and tag attaches, 204 for deletes, notes written as `message`
//! and read back as `text`, task comments written as `message` and read back
//! as `body`. Unknown records answer 404 `{"data":{"code":404,"message":"Record not found"}}`;
//! validation errors 422 `{"message", "errors": {field: [..]}, "error_code": 422}`.
//!
//! Times: CRM `createdAt` / `updatedAt` (and the email service's dates) are
//! UTC strings `YYYY-MM-DD HH:MM:SS`, so the list filters (`updatedAtFrom`
//! `YYYY-MM-DD HH:MM`, `updateFrom` `YYYY-MM-DD`) compare by prefix and are
//! inclusive at their own granularity. Task `startAt` / `finishAt` are
//! `YYYY-MM-DD HH:MM` as written.
//!
//! Emulator choices where the reference is silent: subscriber statuses are
//! 0 "New" (active), 2 "Unsubscribed" and 4 "Waiting for confirmation"
//! (double opt-in); `POST /crm/v1/tasks/list` sorts by `updatedAt` ascending
//! unless `sort` is given; the CRM contact list sorts by id unless `sortBy`
//! is given and pages 10 by default; a task moved to the board's "Done" step
//! gets `status` 2 and an `endedAt`.
//!
//! The blacklist takes `emails` as the base64 of a comma-separated list
//! (422 when it is not, 906 "Email syntax error" for a bad address) and
//! shows in `GET /emails/{email}/campaigns` as `blacklist: true`; the
//! emulator sends no campaigns, so that is where it shows. Messenger logins
//! added through the API have no bot (`botId`, `contactId`, `chatbotUrl`
//! null, `status` 1); one messenger per contact is the main chatbot. Deals
//! are seeded ([`SendPulseEmulator::insert_crm_deal`]) and read through
//! `GET /contacts/{id}/deals` (`{"data": [...], "meta": {"total"}}`); the
//! deal endpoints themselves are not emulated.

// Handlers answer `Err(Response)` early; the size of that is irrelevant here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{NaiveDate, NaiveDateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{bearer, json as respond, random_id, Control, Emulator, RateHeaders};

/// Id of the account owner (a CRM team member, the default `responsibleId`).
pub const OWNER_ID: i64 = 7043663;
/// Id of a second CRM team member.
pub const MANAGER_ID: i64 = 7043664;

/// Settings of a SendPulse emulator.
#[derive(Debug, Clone)]
pub struct SendPulseConfig {
    /// REST API ID.
    pub client_id: String,
    /// REST API Secret.
    pub client_secret: String,
    /// A static API key accepted as a bearer token (never expires).
    pub api_key: Option<String>,
    /// Lifetime of issued tokens (`expires_in`).
    pub token_ttl: Duration,
    /// Hard rate limit, 429 `2020202020` beyond; `None` for none.
    pub rate_limit: Option<(usize, Duration)>,
    /// Address to listen on; a free port on 127.0.0.1 when `None`.
    pub listen: Option<std::net::SocketAddr>,
    /// Activated sender addresses (double opt-in `sender_email`).
    pub senders: Vec<String>,
}

impl Default for SendPulseConfig {
    fn default() -> Self {
        SendPulseConfig {
            client_id: "sp-test-client-id".into(),
            client_secret: "sp-test-client-secret".into(),
            api_key: None,
            token_ttl: Duration::from_secs(3600),
            rate_limit: Some((10, Duration::from_secs(1))),
            listen: None,
            senders: vec!["news@example.com".into()],
        }
    }
}

/// A running SendPulse emulator.
pub struct SendPulseEmulator {
    emulator: Emulator,
    shared: Arc<Shared>,
}

/// Starts a SendPulse emulator on 127.0.0.1.
pub async fn start(config: SendPulseConfig) -> std::io::Result<SendPulseEmulator> {
    let listen = config.listen;
    let control = Arc::new(Control::default());
    control.set_rate_limit(config.rate_limit);
    let st = St {
        next_book: 1_266_208,
        next_contact: 100_001,
        next_task: 200_001,
        next_id: 1,
        ..St::default()
    };
    let shared = Arc::new(Shared {
        config,
        state: Mutex::new(st),
    });
    let emulator =
        Emulator::serve(router(shared.clone()), control, RateHeaders::None, listen).await?;
    Ok(SendPulseEmulator { emulator, shared })
}

impl Deref for SendPulseEmulator {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

impl SendPulseEmulator {
    /// The underlying server (address, fault control, recorded requests).
    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SendPulseConfig {
        &self.shared.config
    }

    /// Every address book (`MailingList` shape).
    pub fn books(&self) -> Vec<Value> {
        self.shared.lock().books.values().map(Book::view).collect()
    }

    /// The subscribers of a book (`EmailContact` shape), empty when no book.
    pub fn subscribers(&self, book_id: i64) -> Vec<Value> {
        let st = self.shared.lock();
        st.books
            .get(&book_id)
            .map(|b| b.subscribers.iter().map(Sub::view).collect())
            .unwrap_or_default()
    }

    /// Every CRM contact, as `GET /crm/v1/contacts/{id}` shows it.
    pub fn crm_contacts(&self) -> Vec<Value> {
        let st = self.shared.lock();
        st.contacts.values().map(|c| st.contact_view(c)).collect()
    }

    /// Every CRM task.
    pub fn crm_tasks(&self) -> Vec<Value> {
        self.shared.lock().tasks.values().cloned().collect()
    }

    /// Expires every issued token (the static API key keeps working).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.shared.lock().tokens.values_mut() {
            *expiry = now;
        }
    }

    /// How many tokens `POST /oauth/access_token` issued.
    pub fn token_fetches(&self) -> usize {
        self.shared.lock().fetches
    }

    /// Creates an address book; its id.
    pub fn insert_book(&self, name: &str) -> i64 {
        self.shared.lock().new_book(name)
    }

    /// Creates an address book with a given id (the sandbox's, which the
    /// bundled recipes and the README name).
    pub fn insert_book_with_id(&self, id: i64, name: &str) {
        let mut st = self.shared.lock();
        // Ids handed out later must not collide with this one.
        st.next_book = st.next_book.max(id + 1);
        st.books.insert(
            id,
            Book {
                id,
                name: name.into(),
                created: now(),
                subscribers: vec![],
                variables: vec![],
            },
        );
    }

    /// Stores a CRM contact: the given fields over defaults (`responsibleId`
    /// the owner, `createdAt` / `updatedAt` now unless given); its id.
    pub fn insert_crm_contact(&self, contact: Value) -> i64 {
        let mut st = self.shared.lock();
        let mut c = st.new_contact();
        c.extend(contact.as_object().cloned().unwrap_or_default());
        let id = c["id"].as_i64().unwrap_or_default();
        st.next_contact = st.next_contact.max(id + 1);
        st.contacts.insert(id, Value::Object(c));
        id
    }

    /// Stores a CRM task: the given fields over defaults, `createdAt` /
    /// `updatedAt` now unless given; its id.
    pub fn insert_crm_task(&self, task: Value) -> i64 {
        let mut st = self.shared.lock();
        let mut t = st.new_task();
        t.extend(task.as_object().cloned().unwrap_or_default());
        let id = t["id"].as_i64().unwrap_or_default();
        st.next_task = st.next_task.max(id + 1);
        st.tasks.insert(id, Value::Object(t));
        id
    }

    /// Stores a CRM deal linked to `contacts`: the given fields over
    /// defaults (the `Deal` shape of the CRM spec); its id.
    pub fn insert_crm_deal(&self, contacts: &[i64], deal: Value) -> i64 {
        let mut st = self.shared.lock();
        let id = st.deals.keys().next_back().map_or(300_001, |last| last + 1);
        let number = st.deals.len() + 1;
        let now = now();
        let mut d = json!({
            "id": id, "pipelineId": 1, "status": 1, "stepId": 1, "responsibleId": OWNER_ID,
            "number": number, "name": format!("Deal #{number}"), "price": 0, "currency": "USD",
            "profit": 0, "hasExpense": false, "order": 0, "sourceType": null, "sourceId": null,
            "history": [], "comments": [], "attributes": [], "expiration": null,
            "attachments": null, "tasks": [], "createdAt": now, "updatedAt": now,
        });
        if let (Some(d), Some(given)) = (d.as_object_mut(), deal.as_object()) {
            d.extend(given.clone());
            d.insert("id".into(), json!(id));
        }
        st.deals.insert(id, d);
        st.deal_contacts.extend(contacts.iter().map(|c| (id, *c)));
        id
    }

    /// The blacklisted emails, as `GET /blacklist` answers them.
    pub fn blacklist(&self) -> Vec<String> {
        let st = self.shared.lock();
        st.blacklist.values().map(|(e, _)| e.clone()).collect()
    }

    /// Changes fields of a CRM task and bumps its `updatedAt` to now (or to
    /// the given `updatedAt`). False when there is no such task.
    pub fn update_crm_task(&self, id: i64, fields: Value) -> bool {
        let mut st = self.shared.lock();
        let Some(t) = st.tasks.get_mut(&id).and_then(Value::as_object_mut) else {
            return false;
        };
        t.insert("updatedAt".into(), json!(now()));
        t.extend(fields.as_object().cloned().unwrap_or_default());
        true
    }
}

// ---------------------------------------------------------------- state

struct Shared {
    config: SendPulseConfig,
    state: Mutex<St>,
}

#[derive(Default)]
struct St {
    /// Issued token -> expiry.
    tokens: HashMap<String, Instant>,
    fetches: usize,
    books: BTreeMap<i64, Book>,
    contacts: BTreeMap<i64, Value>,
    tasks: BTreeMap<i64, Value>,
    tags: BTreeMap<i64, Value>,
    /// Contact attribute definitions.
    attributes: BTreeMap<i64, Value>,
    /// Email-service webhooks, one per action.
    webhooks: BTreeMap<i64, Value>,
    /// The account's blacklist: lower-cased email -> (email, comment), in
    /// the order they were added.
    blacklist: indexmap::IndexMap<String, (String, Option<String>)>,
    /// CRM deals (only seeded: the deal endpoints are not emulated).
    deals: BTreeMap<i64, Value>,
    /// (deal, contact) links.
    deal_contacts: Vec<(i64, i64)>,
    next_book: i64,
    next_contact: i64,
    next_task: i64,
    /// Comments, phones, emails, tags, checklist items.
    next_id: i64,
}

struct Book {
    id: i64,
    name: String,
    created: String,
    subscribers: Vec<Sub>,
    /// Variable definitions (name, type), in order of first use.
    variables: Vec<(String, String)>,
}

struct Sub {
    email: String,
    status: i64,
    phone: Value,
    variables: Map<String, Value>,
    added: String,
}

const NEW: i64 = 0;
const UNSUBSCRIBED: i64 = 2;
const UNCONFIRMED: i64 = 4;

fn explain(status: i64) -> &'static str {
    match status {
        NEW => "New",
        UNSUBSCRIBED => "Unsubscribed",
        UNCONFIRMED => "Waiting for confirmation",
        _ => "Unknown",
    }
}

impl Book {
    fn view(&self) -> Value {
        let active = self.subscribers.iter().filter(|s| s.active()).count();
        json!({
            "id": self.id,
            "name": self.name,
            "all_email_qty": self.subscribers.len(),
            "active_email_qty": active,
            "inactive_email_qty": self.subscribers.len() - active,
            "creationdate": self.created,
            "status": 0,
            "status_explain": "Active",
        })
    }

    fn sub(&self, email: &str) -> Option<&Sub> {
        self.subscribers
            .iter()
            .find(|s| s.email.eq_ignore_ascii_case(email))
    }

    fn var_type(&self, name: &str) -> &str {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map_or("string", |(_, t)| t.as_str())
    }

    /// Typed `[{name, type, value}]` variables of a subscriber.
    fn typed_vars(&self, s: &Sub) -> Value {
        let vars: Vec<Value> = s
            .variables
            .iter()
            .map(|(n, v)| json!({"name": n, "type": self.var_type(n), "value": v}))
            .collect();
        Value::Array(vars)
    }

    /// Sets variables, defining new ones (number, date or string by value);
    /// `Phone` goes to the subscriber's phone.
    fn set_vars(&mut self, index: usize, vars: &Map<String, Value>) {
        for (name, value) in vars {
            if name.eq_ignore_ascii_case("phone") {
                self.subscribers[index].phone = value.clone();
                continue;
            }
            if !self.variables.iter().any(|(n, _)| n == name) {
                let ty = match value {
                    Value::Number(_) => "number",
                    Value::String(s) if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => "date",
                    _ => "string",
                };
                self.variables.push((name.clone(), ty.into()));
            }
            self.subscribers[index]
                .variables
                .insert(name.clone(), value.clone());
        }
    }
}

impl Sub {
    fn active(&self) -> bool {
        self.status == NEW
    }

    fn view(&self) -> Value {
        json!({
            "email": self.email,
            "status": self.status,
            "status_explain": explain(self.status),
            "phone": self.phone,
            "variables": self.variables,
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A valid bearer token: the static key or an unexpired issued token.
    fn authed(&self, req: &Req) -> Result<MutexGuard<'_, St>, Response> {
        let st = self.lock();
        let ok = match bearer(&req.headers) {
            Some(t) if self.config.api_key.as_deref() == Some(t) => true,
            Some(t) => st.tokens.get(t).is_some_and(|e| Instant::now() < *e),
            None => false,
        };
        if ok {
            Ok(st)
        } else {
            Err(respond(
                401,
                json!({"message": "Unauthorized!", "error_code": 401}),
            ))
        }
    }
}

impl St {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_book(&mut self, name: &str) -> i64 {
        let id = self.next_book;
        self.next_book += 1;
        let book = Book {
            id,
            name: name.into(),
            created: now(),
            subscribers: vec![],
            variables: vec![],
        };
        self.books.insert(id, book);
        id
    }

    fn book(&self, id: &str) -> Result<&Book, Response> {
        id.parse()
            .ok()
            .and_then(|id: i64| self.books.get(&id))
            .ok_or_else(book_not_found)
    }

    fn book_mut(&mut self, id: &str) -> Result<&mut Book, Response> {
        id.parse()
            .ok()
            .and_then(|id: i64| self.books.get_mut(&id))
            .ok_or_else(book_not_found)
    }

    fn new_contact(&mut self) -> Map<String, Value> {
        let id = self.next_contact;
        self.next_contact += 1;
        let now = now();
        let c = json!({
            "id": id, "userId": OWNER_ID, "sourceType": "manually", "responsibleId": OWNER_ID,
            "firstName": null, "lastName": null, "dealsQty": 0, "externalContactId": null,
            "emails": [], "phones": [], "messengers": [], "tags": [], "attributes": [],
            "comments": [], "history": [], "attachments": null,
            "createdAt": now, "updatedAt": now,
        });
        c.as_object().cloned().unwrap_or_default()
    }

    fn new_task(&mut self) -> Map<String, Value> {
        let id = self.next_task;
        self.next_task += 1;
        let now = now();
        let t = json!({
            "id": id, "name": "", "userId": OWNER_ID, "responsibleId": OWNER_ID, "parentId": null,
            "boardId": 1, "stepId": 1, "priority": 2, "order": 0, "description": "", "alert": "0",
            "repeat": 0, "startAt": null, "finishAt": null, "observers": [], "checklists": [],
            "attachments": [], "attributes": [], "comments": [], "histories": [], "tags": [],
            "deals": [], "tasks": [], "contacts": [], "subTasks": [], "status": 1, "endedAt": null,
            "createdAt": now, "updatedAt": now,
        });
        t.as_object().cloned().unwrap_or_default()
    }

    fn contact_mut(&mut self, id: &str) -> Result<&mut Map<String, Value>, Response> {
        id.parse()
            .ok()
            .and_then(|id: i64| self.contacts.get_mut(&id))
            .and_then(Value::as_object_mut)
            .ok_or_else(not_found)
    }

    fn task_mut(&mut self, id: &str) -> Result<&mut Map<String, Value>, Response> {
        id.parse()
            .ok()
            .and_then(|id: i64| self.tasks.get_mut(&id))
            .and_then(Value::as_object_mut)
            .ok_or_else(not_found)
    }

    /// A contact as the API shows it: tag objects and linked task ids.
    fn contact_view(&self, c: &Value) -> Value {
        let mut c = c.clone();
        let id = c["id"].as_i64().unwrap_or_default();
        let tags: Vec<Value> = c["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| self.tag_view(t.as_i64()?))
            .collect();
        c["tags"] = Value::Array(tags);
        c["attributes"] = self.attribute_values(&c);
        let tasks: Vec<i64> = self
            .tasks
            .values()
            .filter(|t| links(&t["contacts"], id))
            .filter_map(|t| t["id"].as_i64())
            .collect();
        c["tasks"] = json!(tasks);
        let deals = self.deal_contacts.iter().filter(|(_, x)| *x == id).count();
        c["dealsQty"] = json!(deals);
        c
    }

    /// A contact's attribute values `{id, value}` joined with their
    /// definitions, as the API shows them; values of deleted definitions
    /// are gone.
    fn attribute_values(&self, c: &Value) -> Value {
        let values = c["attributes"].as_array().into_iter().flatten();
        Value::Array(
            values
                .filter_map(|v| {
                    let mut def = self.attributes.get(&v["id"].as_i64()?)?.clone();
                    def["value"] = v["value"].clone();
                    Some(def)
                })
                .collect(),
        )
    }

    fn attribute_id(&self, id: &str) -> Result<i64, Response> {
        id.parse()
            .ok()
            .filter(|id| self.attributes.contains_key(id))
            .ok_or_else(not_found)
    }

    fn tag_view(&self, id: i64) -> Option<Value> {
        let mut tag = self.tags.get(&id)?.clone();
        let contacts = self
            .contacts
            .values()
            .filter(|c| links(&c["tags"], id))
            .count();
        let tasks = self
            .tasks
            .values()
            .filter(|t| links(&t["tags"], id))
            .count();
        tag["contactCount"] = json!(contacts);
        tag["taskCount"] = json!(tasks);
        Some(tag)
    }
}

/// Appends a history entry to a contact (`history`) or task
/// (`histories`). The reference gives the endpoints, not the entry shape:
/// `{id, action, userId, createdAt}` is the emulator's.
fn log(record: &mut Map<String, Value>, field: &str, action: &str) {
    let list = record.entry(field).or_insert(json!([]));
    if let Some(list) = list.as_array_mut() {
        let id = list.len() + 1;
        list.push(json!({"id": id, "action": action, "userId": OWNER_ID, "createdAt": now()}));
    }
}

/// Whether a JSON array of ids holds `id`.
fn links(ids: &Value, id: i64) -> bool {
    ids.as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_i64() == Some(id)))
}

fn now() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

// -------------------------------------------------------------- routes

type S = State<Arc<Shared>>;
type Out = Result<Response, Response>;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/access_token", post(oauth_token))
        .route("/user/info", get(user_info))
        // email service
        .route("/addressbooks", get(books_list).post(book_create))
        .route(
            "/addressbooks/{id}",
            get(book_get).put(book_rename).delete(book_delete),
        )
        .route("/addressbooks/{id}/variables", get(book_variables))
        .route(
            "/addressbooks/{id}/variables/{name}/{value}",
            get(find_by_variable),
        )
        .route(
            "/addressbooks/{id}/emails",
            get(subscribers_list)
                .post(subscribers_add)
                .delete(subscribers_remove),
        )
        .route("/addressbooks/{id}/emails/total", get(subscribers_total))
        .route(
            "/addressbooks/{id}/emails/unsubscribe",
            post(subscribers_unsubscribe),
        )
        .route(
            "/addressbooks/{id}/emails/variable",
            post(subscriber_variables),
        )
        .route("/addressbooks/{id}/emails/{email}", get(subscriber_get))
        .route(
            "/addressbooks/{id}/phone",
            axum::routing::put(subscriber_phone),
        )
        .route(
            "/blacklist",
            get(blacklist_get)
                .post(blacklist_add)
                .delete(blacklist_remove),
        )
        .route("/emails/{email}", get(email_books).delete(email_delete))
        .route("/emails/{email}/details", get(email_details))
        .route("/emails", post(emails_books_many))
        .route("/emails/{email}/campaigns", get(email_campaigns))
        .route(
            "/v2/email-service/webhook",
            get(webhooks_list).post(webhooks_create),
        )
        .route("/v2/email-service/webhook/", post(webhooks_create))
        .route(
            "/v2/email-service/webhook/{id}",
            get(webhook_get).put(webhook_set_url).delete(webhook_delete),
        )
        // CRM
        .route("/crm/v1/users", get(crm_users))
        .route("/crm/v1/boards", get(crm_boards))
        .route("/crm/v1/contacts", post(crm_contact_create))
        .route("/crm/v1/contacts/create", post(crm_contact_create))
        .route("/crm/v1/contacts/get-list", post(crm_contacts_list))
        .route(
            "/crm/v1/contacts/get-list-by-email",
            post(crm_contacts_by_email),
        )
        .route(
            "/crm/v1/contacts/external/{externalContactId}",
            get(crm_contact_by_external_id),
        )
        .route(
            "/crm/v1/contacts/attributes",
            get(crm_attributes_list).post(crm_attribute_create),
        )
        .route(
            "/crm/v1/contacts/attributes/{attributeId}",
            axum::routing::put(crm_attribute_update).delete(crm_attribute_delete),
        )
        .route(
            "/crm/v1/contacts/{contactId}/attributes",
            get(crm_values_get).post(crm_value_set),
        )
        .route(
            "/crm/v1/contacts/{contactId}/attributes/batch",
            post(crm_values_batch),
        )
        .route(
            "/crm/v1/contacts/{contactId}/attributes/{attributeId}",
            axum::routing::put(crm_value_update).delete(crm_value_delete),
        )
        .route(
            "/crm/v1/contacts/{contactId}",
            get(crm_contact_get)
                .put(crm_contact_update)
                .delete(crm_contact_delete),
        )
        .route("/crm/v1/contacts/{contactId}/phones", post(crm_phone_add))
        .route("/crm/v1/contacts/{contactId}/emails", post(crm_emails_add))
        .route(
            "/crm/v1/contacts/{contactId}/messengers",
            post(crm_messenger_add),
        )
        .route(
            "/crm/v1/contacts/{contactId}/messengers/{messengerId}",
            axum::routing::put(crm_messenger_update).delete(crm_messenger_delete),
        )
        .route("/crm/v1/contacts/{contactId}/deals", get(crm_contact_deals))
        .route(
            "/crm/v1/contacts/{contactId}/history",
            get(crm_contact_history),
        )
        .route("/crm/v1/tasks/{taskId}/history", get(crm_task_history))
        .route(
            "/crm/v1/contacts/{contactId}/phones/{phoneId}",
            axum::routing::put(crm_phone_update).delete(crm_phone_delete),
        )
        .route(
            "/crm/v1/contacts/{contactId}/emails/{emailId}",
            axum::routing::put(crm_email_update).delete(crm_email_delete),
        )
        .route(
            "/crm/v1/tasks/{taskId}/comments/{commentId}",
            axum::routing::put(crm_task_comment_update),
        )
        .route(
            "/crm/v1/task-contacts/{taskId}/contact/{contactId}",
            axum::routing::delete(crm_task_contact_detach),
        )
        .route(
            "/crm/v1/contacts/{contactId}/comments",
            post(crm_note_create),
        )
        .route(
            "/crm/v1/contacts/{contactId}/comments/{commentId}",
            axum::routing::put(crm_note_update).delete(crm_note_delete),
        )
        .route(
            "/crm/v1/contact-tags",
            get(crm_tags_list).post(crm_tag_create),
        )
        .route(
            "/crm/v1/contact-tags/{tagId}",
            axum::routing::put(crm_tag_rename).delete(crm_tag_delete),
        )
        .route(
            "/crm/v1/contact-tags/{tagId}/contact/{contactId}",
            post(crm_tag_attach).delete(crm_tag_detach),
        )
        .route("/crm/v1/tasks", post(crm_task_create))
        .route("/crm/v1/tasks/list", post(crm_tasks_list))
        .route(
            "/crm/v1/tasks/{taskId}",
            get(crm_task_get)
                .put(crm_task_update)
                .delete(crm_task_delete),
        )
        .route("/crm/v1/tasks/{taskId}/comments", post(crm_task_comment))
        .route(
            "/crm/v1/tasks/{taskId}/entity-attach",
            post(crm_task_attach),
        )
        .fallback(|| async { respond(404, json!({"message": "Not found", "error_code": 404})) })
        .with_state(shared)
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
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(&s.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (decode(k), decode(v))
            })
            .collect();
        Ok(Req {
            headers: parts.headers,
            query,
            raw,
        })
    }
}

impl Req {
    /// The JSON body (`{}` when empty); 400 when it is not JSON.
    fn body(&self) -> Result<Value, Response> {
        if self.raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Map::new()));
        }
        serde_json::from_slice(&self.raw)
            .map_err(|e| err(400, &format!("Invalid JSON body: {e}"), 400))
    }

    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

// -------------------------------------------------------------- errors

fn err(status: u16, message: &str, code: i64) -> Response {
    respond(status, json!({"message": message, "error_code": code}))
}

fn e422(message: &str) -> Response {
    err(422, message, 422)
}

fn book_not_found() -> Response {
    err(404, "Book not found", 213)
}

fn email_not_found() -> Response {
    err(404, "Email address not found", 502)
}

fn not_found() -> Response {
    respond(
        404,
        json!({"data": {"code": 404, "message": "Record not found"}}),
    )
}

fn crm422(field: &str, message: &str) -> Response {
    respond(
        422,
        json!({"message": message, "errors": {field: [message]}, "error_code": 422}),
    )
}

fn result_true() -> Response {
    respond(200, json!({"result": true}))
}

fn data(status: u16, value: Value) -> Response {
    respond(status, json!({"data": value}))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------- OAuth

async fn oauth_token(State(s): S, req: Req) -> Out {
    let oauth_error = |status: u16, error: &str, description: &str| {
        respond(
            status,
            json!({"error": error, "error_description": description, "message": description, "error_code": 1}),
        )
    };
    let content_type = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body: Option<Value> = serde_json::from_slice(&req.raw)
        .ok()
        .filter(Value::is_object);
    let Some(body) =
        body.filter(|_| !content_type.starts_with("application/x-www-form-urlencoded"))
    else {
        return Err(oauth_error(
            400,
            "invalid_request",
            "The token request body must be JSON (Content-Type: application/json); form-encoded bodies are not accepted.",
        ));
    };
    if body["grant_type"] != "client_credentials" {
        return Err(oauth_error(
            400,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ));
    }
    if body["client_id"] != s.config.client_id.as_str()
        || body["client_secret"] != s.config.client_secret.as_str()
    {
        return Err(oauth_error(
            401,
            "invalid_client",
            "Client authentication failed.",
        ));
    }
    let token = random_id(64);
    let mut st = s.lock();
    st.tokens
        .insert(token.clone(), Instant::now() + s.config.token_ttl);
    st.fetches += 1;
    Ok(respond(
        200,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": s.config.token_ttl.as_secs()}),
    ))
}

async fn user_info(State(s): S, req: Req) -> Out {
    drop(s.authed(&req)?);
    Ok(respond(
        200,
        json!({"id": OWNER_ID, "name": "Emulator Owner", "email": "owner@example.com", "phone": "", "country": "UA", "currency": "USD"}),
    ))
}

// ------------------------------------------------------ email service

/// `limit` (1..=100) and `offset` (>= 0) query parameters.
fn limit_offset(req: &Req, default_limit: usize) -> Result<(usize, usize), Response> {
    let int = |name: &str| -> Result<Option<i64>, Response> {
        req.q(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| e422(&format!("Argument {name} must be integer")))
            })
            .transpose()
    };
    let limit = int("limit")?.unwrap_or(default_limit as i64);
    if limit < 1 {
        return Err(e422("Argument limit must be at least 1"));
    }
    if limit > 100 {
        return Err(e422("Argument limit may not be greater than 100"));
    }
    let offset = int("offset")?.unwrap_or(0);
    if offset < 0 {
        return Err(e422("Argument offset must be at least 0"));
    }
    Ok((limit as usize, offset as usize))
}

fn flag(req: &Req, name: &str) -> Result<Option<bool>, Response> {
    match req.q(name) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(e422(&format!("Argument {name} is invalid"))),
    }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !s.contains(char::is_whitespace)
        && !domain.contains('@')
        && domain.contains('.')
}

async fn books_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let (limit, offset) = limit_offset(&req, 100)?;
    let books: Vec<Value> = st
        .books
        .values()
        .skip(offset)
        .take(limit)
        .map(Book::view)
        .collect();
    Ok(respond(200, Value::Array(books)))
}

fn book_name(body: &Value, field: &str) -> Result<String, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Err(e422(&format!("Argument {field} missing"))),
        Some(Value::String(n)) if n.trim().is_empty() => {
            Err(e422(&format!("Argument {field} missing")))
        }
        Some(Value::String(n)) => Ok(n.clone()),
        Some(_) => Err(e422(&format!("Argument {field} must be string"))),
    }
}

async fn book_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let name = book_name(&req.body()?, "bookName")?;
    if st.books.values().any(|b| b.name == name) {
        return Err(err(422, "Name already in use", 203));
    }
    let id = st.new_book(&name);
    Ok(respond(200, json!({"id": id})))
}

async fn book_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    Ok(respond(200, json!([st.book(&id)?.view()])))
}

async fn book_rename(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let book_id = st.book(&id)?.id;
    let name = book_name(&body, "name")?;
    if st.books.values().any(|b| b.name == name && b.id != book_id) {
        return Err(err(422, "Name already in use", 203));
    }
    st.book_mut(&id)?.name = name;
    Ok(result_true())
}

async fn book_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let book_id = st.book(&id)?.id;
    st.books.remove(&book_id);
    Ok(result_true())
}

async fn book_variables(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let vars: Vec<Value> = st
        .book(&id)?
        .variables
        .iter()
        .map(|(n, t)| json!({"name": n, "type": t}))
        .collect();
    Ok(respond(200, Value::Array(vars)))
}

async fn find_by_variable(
    State(s): S,
    Path((id, name, value)): Path<(String, String, String)>,
    req: Req,
) -> Out {
    let st = s.authed(&req)?;
    let book = st.book(&id)?;
    if !book.variables.iter().any(|(n, _)| *n == name) {
        return Err(err(404, "Variable not found", 299));
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let found: Vec<Value> = book
        .subscribers
        .iter()
        .filter(|s| s.variables.get(&name).is_some_and(|v| text(v) == value))
        .map(|s| json!({"email": s.email, "status": s.status, "status_explain": explain(s.status)}))
        .collect();
    Ok(respond(200, Value::Array(found)))
}

async fn subscribers_list(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let book = st.book(&id)?;
    let (limit, offset) = limit_offset(&req, 100)?;
    let desc = match req.q("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(e422("Argument order is invalid")),
    };
    let (active, not_active) = (flag(&req, "active")?, flag(&req, "not_active")?);
    let mut subs: Vec<&Sub> = book
        .subscribers
        .iter()
        .filter(|s| active != Some(true) || s.active())
        .filter(|s| not_active != Some(true) || !s.active())
        .collect();
    if desc {
        subs.reverse();
    }
    let page: Vec<Value> = subs
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(Sub::view)
        .collect();
    Ok(respond(200, Value::Array(page)))
}

async fn subscribers_total(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let book = st.book(&id)?;
    let only_active = flag(&req, "active")? == Some(true);
    let total = book
        .subscribers
        .iter()
        .filter(|s| !only_active || s.active())
        .count();
    Ok(respond(200, json!({"total": total})))
}

/// The `emails` array of a remove/unsubscribe body (strings, at most 100).
fn email_list(body: &Value, too_many: &str) -> Result<Vec<String>, Response> {
    let Some(items) = body.get("emails").filter(|v| !v.is_null()) else {
        return Err(e422("Argument emails missing"));
    };
    let Some(items) = items.as_array() else {
        return Err(e422("Argument emails is invalid"));
    };
    if items.len() > 100 {
        return Err(e422(too_many));
    }
    if items.is_empty() {
        return Err(err(422, "No emails", 303));
    }
    items
        .iter()
        .map(|e| {
            e.as_str()
                .map(str::to_string)
                .ok_or_else(|| e422("Argument emails is invalid"))
        })
        .collect()
}

async fn subscribers_add(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    st.book(&id)?;
    let body = req.body()?;
    let items = match body.get("emails") {
        None | Some(Value::Null) => return Err(e422("Argument emails missing")),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(e422("Argument emails must be array")),
    };
    if items.len() > 100 {
        return Err(e422("Limit is exceeded. Max count: 100"));
    }
    if items.is_empty() {
        return Err(err(422, "No emails", 303));
    }
    let mut parsed: Vec<(String, Map<String, Value>)> = vec![];
    for item in &items {
        let (email, vars) = match item {
            Value::String(e) => (e.clone(), Map::new()),
            Value::Object(o) => {
                let Some(email) = o.get("email").and_then(Value::as_str) else {
                    return Err(e422("Argument email is invalid"));
                };
                let vars = match o.get("variables") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(v)) => v.clone(),
                    Some(_) => return Err(e422("Argument emails.*.variables is invalid")),
                };
                (email.to_string(), vars)
            }
            _ => return Err(e422("Argument emails is invalid")),
        };
        if !is_email(&email) {
            return Err(e422("Argument email is invalid"));
        }
        parsed.push((email, vars));
    }
    for name in ["disable_webhook", "dont_update", "check_emails"] {
        if body.get(name).is_some_and(|v| !v.is_boolean()) {
            return Err(e422(&format!("Argument {name} must be boolean")));
        }
    }
    match body.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(t)) if t.iter().all(|x| x.is_i64()) => {}
        Some(Value::Array(_)) => return Err(e422("Argument tags is invalid")),
        Some(_) => return Err(e422("Argument tags must be array")),
    }
    let double_opt_in = match body.get("confirmation") {
        None | Some(Value::Null) => false,
        Some(Value::String(c)) if c == "force" => true,
        Some(Value::String(_)) => return Err(e422("Argument confirmation is invalid")),
        Some(_) => return Err(e422("Argument confirmation must be string")),
    };
    if double_opt_in {
        let Some(sender) = body.get("sender_email").and_then(Value::as_str) else {
            return Err(e422("Argument sender_email missing"));
        };
        if !is_email(sender) {
            return Err(e422("Argument sender_email is invalid"));
        }
        if !s
            .config
            .senders
            .iter()
            .any(|x| x.eq_ignore_ascii_case(sender))
        {
            return Err(err(422, "Sender not found", 1003));
        }
    }
    let dont_update = body["dont_update"] == true;
    let book = st.book_mut(&id)?;
    for (email, vars) in parsed {
        let index = match book
            .subscribers
            .iter()
            .position(|s| s.email.eq_ignore_ascii_case(&email))
        {
            Some(_) if dont_update => continue,
            Some(i) => i,
            None => {
                let status = if double_opt_in { UNCONFIRMED } else { NEW };
                book.subscribers.push(Sub {
                    email,
                    status,
                    phone: Value::Null,
                    variables: Map::new(),
                    added: now(),
                });
                book.subscribers.len() - 1
            }
        };
        book.set_vars(index, &vars);
    }
    Ok(result_true())
}

async fn subscribers_remove(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    st.book(&id)?;
    let emails = email_list(&req.body()?, "Limit is exceeded. Max count: 100")?;
    let book = st.book_mut(&id)?;
    book.subscribers
        .retain(|s| !emails.iter().any(|e| e.eq_ignore_ascii_case(&s.email)));
    Ok(result_true())
}

async fn subscribers_unsubscribe(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    st.book(&id)?;
    let emails = email_list(
        &req.body()?,
        "Argument emails may not have more than 100 items",
    )?;
    let book = st.book_mut(&id)?;
    let targets: Vec<&mut Sub> = book
        .subscribers
        .iter_mut()
        .filter(|s| s.active() && emails.iter().any(|e| e.eq_ignore_ascii_case(&s.email)))
        .collect();
    if targets.is_empty() {
        return Err(e422("Active emails not found"));
    }
    for sub in targets {
        sub.status = UNSUBSCRIBED;
    }
    Ok(result_true())
}

async fn subscriber_variables(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    st.book(&id)?;
    let body = req.body()?;
    let email = match body.get("email") {
        None | Some(Value::Null) => return Err(e422("Argument email missing")),
        Some(Value::String(e)) if is_email(e) => e.clone(),
        Some(_) => return Err(e422("Argument email is invalid")),
    };
    let vars = match body.get("variables") {
        None | Some(Value::Null) => return Err(e422("Argument variables missing")),
        Some(Value::Array(items)) => {
            let mut vars = Map::new();
            for item in items {
                let (Some(name), Some(value)) =
                    (item.get("name").and_then(Value::as_str), item.get("value"))
                else {
                    return Err(e422("Argument variables is invalid"));
                };
                vars.insert(name.to_string(), value.clone());
            }
            vars
        }
        Some(_) => return Err(e422("Argument variables is invalid")),
    };
    let book = st.book_mut(&id)?;
    let Some(index) = book
        .subscribers
        .iter()
        .position(|s| s.email.eq_ignore_ascii_case(&email))
    else {
        return Err(err(422, "Email address not found", 502));
    };
    book.set_vars(index, &vars);
    Ok(result_true())
}

async fn subscriber_get(State(s): S, Path((id, email)): Path<(String, String)>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let book = st.book(&id)?;
    let sub = book.sub(&email).ok_or_else(email_not_found)?;
    Ok(respond(
        200,
        json!({
            "email": sub.email,
            "abook_id": book.id.to_string(),
            "phone": sub.phone,
            "status": sub.status,
            "status_explain": explain(sub.status),
            "variables": book.typed_vars(sub),
        }),
    ))
}

/// A phone number as the email service takes it: digits, optionally
/// grouped with spaces, dashes, dots or parentheses, with or without a
/// leading `+`; 7 to 15 digits.
fn valid_phone(p: &str) -> bool {
    let rest = p.trim().strip_prefix('+').unwrap_or(p.trim());
    let digits = rest.chars().filter(char::is_ascii_digit).count();
    rest.chars()
        .all(|c| c.is_ascii_digit() || " -().".contains(c))
        && (7..=15).contains(&digits)
}

/// `PUT /addressbooks/{id}/phone`: the subscriber's system `Phone`.
async fn subscriber_phone(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    st.book(&id)?;
    let body = req.body()?;
    let email = match body.get("email") {
        None | Some(Value::Null) => return Err(e422("Argument email missing")),
        Some(Value::String(e)) if is_email(e) => e.clone(),
        Some(_) => return Err(e422("Email is not valid")),
    };
    let phone = match body.get("phone") {
        None | Some(Value::Null) => return Err(e422("Argument phone missing")),
        Some(Value::String(p)) if valid_phone(p) => p.clone(),
        Some(_) => return Err(e422("Phone is not valid")),
    };
    let book = st.book_mut(&id)?;
    let Some(index) = book
        .subscribers
        .iter()
        .position(|s| s.email.eq_ignore_ascii_case(&email))
    else {
        return Err(err(422, "Email address not found", 502));
    };
    book.subscribers[index].phone = json!(phone);
    Ok(result_true())
}

// ------------------------------------------------------------- blacklist

/// The `emails` of a blacklist body: the base64 of a comma-separated list.
fn blacklist_emails(body: &Value) -> Result<Vec<String>, Response> {
    use base64::Engine as _;
    let text = match body.get("emails") {
        None | Some(Value::Null) => return Err(e422("Argument emails missing")),
        Some(Value::String(t)) => t,
        Some(_) => return Err(e422("Argument emails must be string")),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| e422("Argument emails must be the base64 of a comma-separated list"))?;
    let emails: Vec<String> = decoded
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if emails.is_empty() {
        return Err(err(422, "No emails", 303));
    }
    if let Some(bad) = emails.iter().find(|e| !is_email(e)) {
        return Err(err(422, &format!("Email syntax error: {bad}"), 906));
    }
    Ok(emails)
}

async fn blacklist_get(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let emails: Vec<&String> = st.blacklist.values().map(|(e, _)| e).collect();
    Ok(respond(200, json!(emails)))
}

async fn blacklist_add(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let emails = blacklist_emails(&body)?;
    let comment = match body.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err(e422("Argument comment must be string")),
    };
    for email in emails {
        st.blacklist
            .insert(email.to_ascii_lowercase(), (email, comment.clone()));
    }
    Ok(result_true())
}

async fn blacklist_remove(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let emails = blacklist_emails(&req.body()?)?;
    for email in emails {
        st.blacklist.shift_remove(&email.to_ascii_lowercase());
    }
    Ok(result_true())
}

async fn email_books(State(s): S, Path(email): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let found: Vec<Value> = st
        .books
        .values()
        .filter_map(|b| {
            let sub = b.sub(&email)?;
            Some(json!({
                "book_id": b.id, "email": sub.email, "status": sub.status,
                "status_explain": explain(sub.status), "variables": b.typed_vars(sub),
            }))
        })
        .collect();
    if found.is_empty() {
        return Err(email_not_found());
    }
    Ok(respond(200, Value::Array(found)))
}

async fn emails_books_many(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let body = req.body()?;
    let emails = email_list(&body, "Limit is exceeded. Max count: 100")?;
    let mut out = Map::new();
    for email in emails {
        let found: Vec<Value> = st
            .books
            .values()
            .filter_map(|b| {
                let sub = b.sub(&email)?;
                Some(json!({"book_id": b.id, "status": sub.status, "variables": b.typed_vars(sub)}))
            })
            .collect();
        out.insert(email, Value::Array(found));
    }
    Ok(respond(200, Value::Object(out)))
}

async fn email_campaigns(State(s): S, Path(email): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let books: Vec<Value> = st
        .books
        .values()
        .filter(|b| b.sub(&email).is_some())
        .map(|b| json!({"id": b.id, "address_book_name": b.name}))
        .collect();
    if books.is_empty() {
        return Err(email_not_found());
    }
    // The emulator sends no campaigns: the counts are zero.
    Ok(respond(
        200,
        json!({
            "statistic": {"sent": 0, "open": 0, "link": 0},
            "addressbooks": books,
            "blacklist": st.blacklist.contains_key(&email.to_ascii_lowercase()),
        }),
    ))
}

async fn email_details(State(s): S, Path(email): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let found: Vec<Value> = st
        .books
        .values()
        .filter_map(|b| {
            let sub = b.sub(&email)?;
            Some(json!({"list_name": b.name, "list_id": b.id, "add_date": sub.added, "source": "api"}))
        })
        .collect();
    if found.is_empty() {
        return Err(email_not_found());
    }
    Ok(respond(200, Value::Array(found)))
}

async fn email_delete(State(s): S, Path(email): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let mut removed = false;
    for book in st.books.values_mut() {
        let before = book.subscribers.len();
        book.subscribers
            .retain(|s| !s.email.eq_ignore_ascii_case(&email));
        removed |= book.subscribers.len() != before;
    }
    if !removed {
        return Err(email_not_found());
    }
    Ok(result_true())
}

// ------------------------------------------------------------ CRM: misc

// ------------------------------------------------- webhook management

/// The email-service webhook actions (reference §5.1).
const WEBHOOK_ACTIONS: [&str; 10] = [
    "new_emails",
    "delete",
    "unsubscribe",
    "delivered",
    "open",
    "redirect",
    "spam",
    "hard_bounces",
    "soft_bounces",
    "task_status_update",
];

fn success(value: Value) -> Response {
    respond(200, json!({"success": true, "data": value}))
}

fn webhook_url(body: &Value) -> Result<String, Response> {
    body.get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(str::to_string)
        .ok_or_else(|| e422("Argument url must be an http(s) URL"))
}

fn webhook_id(st: &St, id: &str) -> Result<i64, Response> {
    id.parse()
        .ok()
        .filter(|id| st.webhooks.contains_key(id))
        .ok_or_else(|| err(404, "Webhook not found", 404))
}

async fn webhooks_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    Ok(success(Value::Array(
        st.webhooks.values().cloned().collect(),
    )))
}

async fn webhook_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let id = webhook_id(&st, &id)?;
    Ok(success(st.webhooks[&id].clone()))
}

async fn webhooks_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let url = webhook_url(&body)?;
    let Some(actions) = body
        .get("actions")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return Err(e422("Argument actions missing"));
    };
    let mut names = Vec::new();
    for a in actions {
        match a.as_str().filter(|a| WEBHOOK_ACTIONS.contains(a)) {
            Some(a) => names.push(a.to_string()),
            None => return Err(e422(&format!("Unknown action {a}"))),
        }
    }
    let mut rows = Vec::new();
    for action in names {
        let id = st.id();
        let row = json!({"id": id, "user_id": OWNER_ID, "url": url, "action": action});
        st.webhooks.insert(id, row.clone());
        rows.push(row);
    }
    Ok(success(Value::Array(rows)))
}

async fn webhook_set_url(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let id = webhook_id(&st, &id)?;
    let url = webhook_url(&body)?;
    if let Some(w) = st.webhooks.get_mut(&id) {
        w["url"] = json!(url);
    }
    Ok(success(json!([true])))
}

async fn webhook_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let id = webhook_id(&st, &id)?;
    st.webhooks.remove(&id);
    Ok(success(json!([true])))
}

fn users() -> Value {
    json!([
        {"id": OWNER_ID, "firstName": "Olena", "lastName": "Owner", "email": "owner@example.com", "status": 1, "isOwner": true},
        {"id": MANAGER_ID, "firstName": "Mykola", "lastName": "Manager", "email": "manager@example.com", "status": 1, "isOwner": false},
    ])
}

fn is_user(id: i64) -> bool {
    id == OWNER_ID || id == MANAGER_ID
}

/// Board 1 with its steps; step 3 ("Done") completes a task.
const DONE_STEP: i64 = 3;

fn boards() -> Value {
    json!([{
        "id": 1, "name": "Tasks",
        "steps": [
            {"id": 1, "name": "To do", "sort": 0},
            {"id": 2, "name": "In progress", "sort": 1},
            {"id": DONE_STEP, "name": "Done", "sort": 2},
        ],
    }])
}

async fn crm_users(State(s): S, req: Req) -> Out {
    drop(s.authed(&req)?);
    Ok(data(200, users()))
}

async fn crm_boards(State(s): S, req: Req) -> Out {
    drop(s.authed(&req)?);
    Ok(data(200, boards()))
}

// -------------------------------------------------------- CRM: contacts

/// `responsibleId`: required, an integer, a team member.
fn responsible(body: &Value, required: bool) -> Result<Option<i64>, Response> {
    match body.get("responsibleId") {
        None | Some(Value::Null) if required => Err(crm422(
            "responsibleId",
            "The responsible id field is required.",
        )),
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            None => Err(crm422(
                "responsibleId",
                "The responsible id must be an integer.",
            )),
            Some(id) if !is_user(id) => Err(crm422(
                "responsibleId",
                "The selected responsible id is invalid.",
            )),
            Some(id) => Ok(Some(id)),
        },
    }
}

fn optional_strings(body: &Value, fields: &[&str]) -> Result<(), Response> {
    for f in fields {
        if body.get(*f).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(crm422(f, &format!("The {f} must be a string.")));
        }
    }
    Ok(())
}

async fn crm_contact_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let responsible = responsible(&body, true)?;
    optional_strings(&body, &["firstName", "lastName", "externalContactId"])?;
    let mut c = st.new_contact();
    c.insert("responsibleId".into(), json!(responsible));
    for f in ["firstName", "lastName", "externalContactId"] {
        if let Some(v) = body.get(f) {
            c.insert(f.into(), v.clone());
        }
    }
    log(&mut c, "history", "created");
    let c = Value::Object(c);
    st.contacts
        .insert(c["id"].as_i64().unwrap_or_default(), c.clone());
    Ok(data(200, st.contact_view(&c)))
}

async fn crm_contact_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let c = Value::Object(st.contact_mut(&id)?.clone());
    Ok(data(200, st.contact_view(&c)))
}

async fn crm_contact_update(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let responsible = responsible(&body, true)?;
    optional_strings(&body, &["firstName", "lastName"])?;
    let c = st.contact_mut(&id)?;
    c.insert("responsibleId".into(), json!(responsible));
    for f in ["firstName", "lastName"] {
        if let Some(v) = body.get(f) {
            c.insert(f.into(), v.clone());
        }
    }
    log(c, "history", "updated");
    c.insert("updatedAt".into(), json!(now()));
    let c = Value::Object(c.clone());
    Ok(data(200, st.contact_view(&c)))
}

async fn crm_contact_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let cid = st
        .contact_mut(&id)?
        .get("id")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    st.contacts.remove(&cid);
    st.deal_contacts.retain(|(_, c)| *c != cid);
    for t in st.tasks.values_mut() {
        if let Some(list) = t["contacts"].as_array_mut() {
            list.retain(|x| x.as_i64() != Some(cid));
        }
    }
    Ok(no_content())
}

fn date_filter(
    body: &Value,
    field: &str,
    format: &str,
    shown: &str,
) -> Result<Option<String>, Response> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => {
            let ok = if format.contains("%H") {
                NaiveDateTime::parse_from_str(v, format).is_ok()
            } else {
                NaiveDate::parse_from_str(v, format).is_ok()
            };
            if ok {
                Ok(Some(v.clone()))
            } else {
                Err(crm422(
                    field,
                    &format!("The {field} does not match the format {shown}."),
                ))
            }
        }
        Some(_) => Err(crm422(field, &format!("The {field} must be a string."))),
    }
}

/// Whether a stored time is within inclusive bounds at the bounds' own
/// granularity (`YYYY-MM-DD` or `YYYY-MM-DD HH:MM`).
fn in_window(value: &Value, from: &Option<String>, to: &Option<String>) -> bool {
    if from.is_none() && to.is_none() {
        return true;
    }
    let Some(v) = value.as_str() else {
        return false;
    };
    let cut = |bound: &str| v.get(..bound.len()).unwrap_or(v).to_string();
    from.as_deref().is_none_or(|f| cut(f).as_str() >= f)
        && to.as_deref().is_none_or(|t| cut(t).as_str() <= t)
}

fn id_list(body: &Value, field: &str) -> Option<Vec<i64>> {
    body.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
}

fn contains_ci(hay: &Value, needle: &str) -> bool {
    hay.as_str()
        .is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
}

async fn crm_contacts_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let body = req.body()?;
    let limit = match body.get("limit") {
        None | Some(Value::Null) => 10,
        Some(v) => match v.as_u64() {
            Some(n) if n > 100 => {
                return Err(crm422("limit", "The limit may not be greater than 100."))
            }
            Some(n) => n as usize,
            None => return Err(crm422("limit", "The limit must be an integer.")),
        },
    };
    let offset = body.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let (from, to) = (
        date_filter(&body, "from", "%Y-%m-%d", "Y-m-d")?,
        date_filter(&body, "to", "%Y-%m-%d", "Y-m-d")?,
    );
    let update_from = date_filter(&body, "updateFrom", "%Y-%m-%d", "Y-m-d")?;
    let update_to = date_filter(&body, "updateTo", "%Y-%m-%d", "Y-m-d")?;
    let text = |f: &str| {
        body.get(f)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let any_of = |c: &Value, field: &str, wanted: &Option<Vec<i64>>| {
        wanted.as_ref().is_none_or(|w| {
            w.is_empty() || w.iter().any(|id| c[field] == *id || links(&c[field], *id))
        })
    };
    let (ids, responsible, tags) = (
        id_list(&body, "ids"),
        id_list(&body, "responsibleIds"),
        id_list(&body, "tagIds"),
    );
    let sources: Option<Vec<String>> = body.get("sourceType").and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect()
    });
    let mut list: Vec<&Value> = st
        .contacts
        .values()
        .filter(|c| {
            in_window(&c["createdAt"], &from, &to)
                && in_window(&c["updatedAt"], &update_from, &update_to)
        })
        .filter(|c| text("firstName").is_none_or(|n| contains_ci(&c["firstName"], n)))
        .filter(|c| text("lastName").is_none_or(|n| contains_ci(&c["lastName"], n)))
        .filter(|c| {
            text("email").is_none_or(|e| {
                c["emails"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| contains_ci(&x["email"], e))
            })
        })
        .filter(|c| {
            text("phone").is_none_or(|p| {
                c["phones"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| contains_ci(&x["phone"], p))
            })
        })
        .filter(|c| {
            any_of(c, "id", &ids)
                && any_of(c, "responsibleId", &responsible)
                && any_of(c, "tags", &tags)
        })
        .filter(|c| {
            sources.as_ref().is_none_or(|s| {
                s.is_empty()
                    || s.iter()
                        .any(|x| c["sourceType"].as_str() == Some(x.as_str()))
            })
        })
        .collect();
    if let Some(sort) = body.get("sortBy").filter(|v| v.is_object()) {
        let field = match sort["fieldName"].as_str().unwrap_or("id") {
            "created_at" => "createdAt",
            "first_name" => "firstName",
            "responsible_id" => "responsibleId",
            _ => "id",
        };
        list.sort_by(|a, b| {
            cmp_json(&a[field], &b[field]).then_with(|| cmp_json(&a["id"], &b["id"]))
        });
        if sort["direction"].as_str() == Some("desc") {
            list.reverse();
        }
    }
    let total = list.len();
    let page: Vec<Value> = list
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|c| st.contact_view(c))
        .collect();
    Ok(data(200, json!({"list": page, "total": total})))
}

fn cmp_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Less,
        (_, Value::Null) => std::cmp::Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

async fn crm_contacts_by_email(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let body = req.body()?;
    let Some(email) = body
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    else {
        return Err(crm422("email", "The email field is required."));
    };
    let full = body["isEmailFullSearch"] == true;
    let matches = |x: &Value| {
        x["email"].as_str().is_some_and(|e| {
            if full {
                e.eq_ignore_ascii_case(email)
            } else {
                contains_ci(&x["email"], email)
            }
        })
    };
    let list: Vec<Value> = st
        .contacts
        .values()
        .filter(|c| c["emails"].as_array().into_iter().flatten().any(matches))
        .map(|c| st.contact_view(c))
        .collect();
    let total = list.len();
    Ok(data(200, json!({"list": list, "total": total})))
}

async fn crm_phone_add(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let Some(phone) = body
        .get("phone")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return Err(crm422("phone", "The phone field is required."));
    };
    let phone_id = st.id();
    let c = st.contact_mut(&id)?;
    let phones = c.entry("phones").or_insert(json!([]));
    let is_main = phones.as_array().is_none_or(Vec::is_empty);
    let entry = json!({"id": phone_id, "phone": phone, "isMain": is_main});
    if let Some(list) = phones.as_array_mut() {
        list.push(entry.clone());
    }
    log(c, "history", "phone_added");
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, entry))
}

async fn crm_emails_add(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let Some(items) = body
        .get("emails")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return Err(crm422("emails", "The emails field is required."));
    };
    let mut added = vec![];
    for (i, item) in items.iter().enumerate() {
        let Some(email) = item["email"].as_str().filter(|e| is_email(e)) else {
            return Err(crm422(
                &format!("emails.{i}.email"),
                &format!("The emails.{i}.email must be a valid email address."),
            ));
        };
        added.push((email.to_string(), item["isMain"] == true));
    }
    let ids: Vec<i64> = added.iter().map(|_| st.id()).collect();
    let c = st.contact_mut(&id)?;
    let mut list = c["emails"].as_array().cloned().unwrap_or_default();
    let mut out = vec![];
    for ((email, main), eid) in added.into_iter().zip(ids) {
        let main = main || list.is_empty();
        if main {
            for e in list.iter_mut() {
                e["isMain"] = json!(false);
            }
        }
        let entry = json!({"id": eid, "email": email, "isMain": main});
        list.push(entry.clone());
        out.push(entry);
    }
    c.insert("emails".into(), Value::Array(list));
    log(c, "history", "emails_added");
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, Value::Array(out)))
}

/// Messenger types: 1 Telegram, 2 Facebook, 4 Instagram, 5 WhatsApp, 6 Viber.
const MESSENGER_TYPES: [i64; 5] = [1, 2, 4, 5, 6];

/// `typeId`, `login` and `isMainChatbot` of a messenger body (the first two
/// required on add and on update alike).
fn messenger_body(body: &Value) -> Result<(i64, String, Option<bool>), Response> {
    let type_id = match body.get("typeId") {
        None | Some(Value::Null) => return Err(crm422("typeId", "The type id field is required.")),
        Some(v) => v
            .as_i64()
            .filter(|t| MESSENGER_TYPES.contains(t))
            .ok_or_else(|| crm422("typeId", "The selected type id is invalid."))?,
    };
    let login = match body.get("login") {
        Some(Value::String(l)) if !l.trim().is_empty() => l.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(crm422("login", "The login field is required."))
        }
        Some(_) => return Err(crm422("login", "The login must be a string.")),
    };
    let main = match body.get("isMainChatbot") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(crm422(
                "isMainChatbot",
                "The is main chatbot field must be true or false.",
            ))
        }
    };
    Ok((type_id, login, main))
}

/// Only one messenger of a contact is the main chatbot.
fn demote_chatbots(c: &mut Map<String, Value>) {
    for m in c
        .get_mut("messengers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        m["isMainChatbot"] = json!(false);
    }
}

async fn crm_messenger_add(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let (type_id, login, main) = messenger_body(&body)?;
    let messenger_id = st.id();
    let c = st.contact_mut(&id)?;
    let main = main.unwrap_or(false);
    if main {
        demote_chatbots(c);
    }
    // Logins added through the API come from no chatbot: no bot, external
    // contact id or chatbot URL.
    let entry = json!({
        "id": messenger_id, "typeId": type_id, "login": login, "botId": null,
        "contactId": null, "status": 1, "chatbotUrl": null, "isMainChatbot": main,
    });
    if let Some(list) = c.entry("messengers").or_insert(json!([])).as_array_mut() {
        list.push(entry.clone());
    }
    log(c, "history", "messenger_added");
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, entry))
}

async fn crm_messenger_update(
    State(s): S,
    Path((id, messenger_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let c = st.contact_mut(&id)?;
    entry_mut(c, "messengers", &messenger_id)?;
    let (type_id, login, main) = messenger_body(&body)?;
    if main == Some(true) {
        demote_chatbots(c);
    }
    let entry = entry_mut(c, "messengers", &messenger_id)?;
    entry["typeId"] = json!(type_id);
    entry["login"] = json!(login);
    if let Some(main) = main {
        entry["isMainChatbot"] = json!(main);
    }
    let entry = entry.clone();
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, entry))
}

async fn crm_messenger_delete(
    State(s): S,
    Path((id, messenger_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    remove_entry(st.contact_mut(&id)?, "messengers", &messenger_id)?;
    Ok(no_content())
}

/// `GET /contacts/{id}/deals`: the deals list envelope, `{"data": [Deal],
/// "meta": {"total"}}`.
async fn crm_contact_deals(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let cid = st.contact_mut(&id)?["id"].as_i64().unwrap_or_default();
    let deals: Vec<Value> = st
        .deal_contacts
        .iter()
        .filter(|(_, c)| *c == cid)
        .filter_map(|(d, _)| st.deals.get(d).cloned())
        .collect();
    let total = deals.len();
    Ok(respond(
        200,
        json!({"data": deals, "meta": {"total": total}}),
    ))
}

async fn crm_contact_history(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let c = st.contact_mut(&id)?;
    Ok(data(200, c.get("history").cloned().unwrap_or(json!([]))))
}

async fn crm_task_history(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let t = st.task_mut(&id)?;
    Ok(data(200, t.get("histories").cloned().unwrap_or(json!([]))))
}

/// The entry `item_id` of a contact's `field` list (phones, emails).
fn entry_mut<'a>(
    c: &'a mut Map<String, Value>,
    field: &str,
    item_id: &str,
) -> Result<&'a mut Value, Response> {
    let id: i64 = item_id.parse().map_err(|_| not_found())?;
    c.get_mut(field)
        .and_then(Value::as_array_mut)
        .and_then(|l| l.iter_mut().find(|e| e["id"] == id))
        .ok_or_else(not_found)
}

/// Removes entry `item_id` from a contact's `field` list; the first left
/// becomes main when the main one goes.
fn remove_entry(c: &mut Map<String, Value>, field: &str, item_id: &str) -> Result<(), Response> {
    let id: i64 = item_id.parse().map_err(|_| not_found())?;
    let list = c
        .get_mut(field)
        .and_then(Value::as_array_mut)
        .ok_or_else(not_found)?;
    let at = list
        .iter()
        .position(|e| e["id"] == id)
        .ok_or_else(not_found)?;
    let was_main = list.remove(at)["isMain"] == true;
    if was_main {
        if let Some(first) = list.first_mut() {
            first["isMain"] = json!(true);
        }
    }
    c.insert("updatedAt".into(), json!(now()));
    Ok(())
}

async fn crm_phone_update(
    State(s): S,
    Path((id, phone_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let Some(phone) = body
        .get("phone")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    else {
        return Err(crm422("phone", "The phone field is required."));
    };
    let c = st.contact_mut(&id)?;
    let entry = entry_mut(c, "phones", &phone_id)?;
    entry["phone"] = json!(phone);
    let entry = entry.clone();
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, entry))
}

async fn crm_phone_delete(
    State(s): S,
    Path((id, phone_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    remove_entry(st.contact_mut(&id)?, "phones", &phone_id)?;
    Ok(no_content())
}

async fn crm_email_update(
    State(s): S,
    Path((id, email_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let Some(email) = body
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| is_email(e))
    else {
        return Err(crm422("email", "The email must be a valid email address."));
    };
    let main = body.get("isMain") == Some(&json!(true));
    let c = st.contact_mut(&id)?;
    entry_mut(c, "emails", &email_id)?;
    if main {
        for e in c["emails"].as_array_mut().into_iter().flatten() {
            e["isMain"] = json!(false);
        }
    }
    let entry = entry_mut(c, "emails", &email_id)?;
    entry["email"] = json!(email);
    if main {
        entry["isMain"] = json!(true);
    }
    let entry = entry.clone();
    c.insert("updatedAt".into(), json!(now()));
    Ok(data(200, entry))
}

async fn crm_email_delete(
    State(s): S,
    Path((id, email_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    remove_entry(st.contact_mut(&id)?, "emails", &email_id)?;
    Ok(no_content())
}

fn message(body: &Value) -> Result<String, Response> {
    match body.get("message") {
        Some(Value::String(m)) if m.chars().count() > 65_535 => Err(crm422(
            "message",
            "The message may not be greater than 65535 characters.",
        )),
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        _ => Err(crm422("message", "The message field is required.")),
    }
}

async fn crm_note_create(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let text = message(&body)?;
    let comment_id = st.id();
    let now = now();
    let comment = json!({
        "id": comment_id, "userId": OWNER_ID, "text": text, "createdAt": now, "updatedAt": now,
        "attachments": null, "childCount": 0, "childUsers": [],
    });
    let c = st.contact_mut(&id)?;
    if let Some(list) = c.entry("comments").or_insert(json!([])).as_array_mut() {
        list.push(comment.clone());
    }
    log(c, "history", "comment_added");
    c.insert("updatedAt".into(), json!(now));
    Ok(data(200, comment))
}

fn comment_mut<'a>(list: &'a mut Value, id: &str) -> Option<&'a mut Value> {
    let id: i64 = id.parse().ok()?;
    list.as_array_mut()?.iter_mut().find(|c| c["id"] == id)
}

async fn crm_note_update(
    State(s): S,
    Path((id, comment_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let text = message(&body)?;
    let now = now();
    let c = st.contact_mut(&id)?;
    let comments = c.entry("comments").or_insert(json!([]));
    let comment = comment_mut(comments, &comment_id).ok_or_else(not_found)?;
    comment["text"] = json!(text);
    comment["updatedAt"] = json!(now);
    let comment = comment.clone();
    c.insert("updatedAt".into(), json!(now));
    Ok(data(200, comment))
}

async fn crm_note_delete(
    State(s): S,
    Path((id, comment_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let c = st.contact_mut(&id)?;
    let cid: i64 = comment_id.parse().map_err(|_| not_found())?;
    let list = c
        .get_mut("comments")
        .and_then(Value::as_array_mut)
        .ok_or_else(not_found)?;
    let before = list.len();
    list.retain(|x| x["id"] != cid);
    if list.len() == before {
        return Err(not_found());
    }
    c.insert("updatedAt".into(), json!(now()));
    Ok(no_content())
}

async fn crm_tags_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let tags: Vec<Value> = st.tags.keys().filter_map(|id| st.tag_view(*id)).collect();
    Ok(data(200, Value::Array(tags)))
}

async fn crm_tag_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let name = tag_name(&st, &body, None)?.to_string();
    let id = st.id();
    st.tags.insert(
        id,
        json!({"id": id, "name": name, "colorText": "#FFFFFF", "colorBackground": "#6B7280"}),
    );
    Ok(data(200, st.tag_view(id).unwrap_or_default()))
}

fn tag_id(st: &St, id: &str) -> Result<i64, Response> {
    id.parse()
        .ok()
        .filter(|id| st.tags.contains_key(id))
        .ok_or_else(not_found)
}

async fn crm_tag_attach(State(s): S, Path((tag, id)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let tag = tag_id(&st, &tag)?;
    let c = st.contact_mut(&id)?;
    let tags = c.entry("tags").or_insert(json!([]));
    if !links(tags, tag) {
        if let Some(list) = tags.as_array_mut() {
            list.push(json!(tag));
        }
        c.insert("updatedAt".into(), json!(now()));
    }
    Ok(StatusCode::CREATED.into_response())
}

async fn crm_tag_detach(State(s): S, Path((tag, id)): Path<(String, String)>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let tag = tag_id(&st, &tag)?;
    let c = st.contact_mut(&id)?;
    if let Some(list) = c.get_mut("tags").and_then(Value::as_array_mut) {
        list.retain(|x| x.as_i64() != Some(tag));
    }
    c.insert("updatedAt".into(), json!(now()));
    Ok(no_content())
}

fn tag_name<'a>(st: &St, body: &'a Value, except: Option<i64>) -> Result<&'a str, Response> {
    let Some(name) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
    else {
        return Err(crm422("name", "The name field is required."));
    };
    if st.tags.iter().any(|(id, t)| {
        Some(*id) != except
            && t["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
    }) {
        return Err(crm422("name", "The name has already been taken."));
    }
    Ok(name)
}

async fn crm_tag_rename(State(s): S, Path(tag): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let tag = tag_id(&st, &tag)?;
    let name = tag_name(&st, &body, Some(tag))?.to_string();
    if let Some(t) = st.tags.get_mut(&tag) {
        t["name"] = json!(name);
    }
    Ok(data(200, st.tag_view(tag).unwrap_or_default()))
}

async fn crm_tag_delete(State(s): S, Path(tag): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let tag = tag_id(&st, &tag)?;
    st.tags.remove(&tag);
    let st = &mut *st;
    for r in st.contacts.values_mut().chain(st.tasks.values_mut()) {
        if let Some(list) = r["tags"].as_array_mut() {
            list.retain(|x| x.as_i64() != Some(tag));
        }
    }
    Ok(no_content())
}

// ------------------------------------------------------ CRM: attributes

async fn crm_contact_by_external_id(State(s): S, Path(ext): Path<String>, req: Req) -> Out {
    let st = s.authed(&req)?;
    let c = st
        .contacts
        .values()
        .find(|c| c["externalContactId"].as_str() == Some(ext.as_str()))
        .ok_or_else(not_found)?;
    Ok(data(200, st.contact_view(c)))
}

async fn crm_attributes_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    Ok(data(
        200,
        Value::Array(st.attributes.values().cloned().collect()),
    ))
}

fn attribute_name<'a>(st: &St, body: &'a Value, except: Option<i64>) -> Result<&'a str, Response> {
    let Some(name) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
    else {
        return Err(crm422("name", "The name field is required."));
    };
    if st
        .attributes
        .iter()
        .any(|(id, a)| Some(*id) != except && a["name"] == name)
    {
        return Err(crm422("name", "The name has already been taken."));
    }
    Ok(name)
}

async fn crm_attribute_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let name = attribute_name(&st, &body, None)?.to_string();
    let ty = match body.get("type") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_i64()
            .filter(|t| (1..=10).contains(t))
            .ok_or_else(|| crm422("type", "The type must be an integer from 1 to 10."))?,
    };
    let id = st.id();
    let def = json!({"id": id, "name": name, "type": ty, "status": 1, "mandatory": false});
    st.attributes.insert(id, def.clone());
    Ok(data(200, def))
}

async fn crm_attribute_update(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let id = st.attribute_id(&id)?;
    let name = attribute_name(&st, &body, Some(id))?.to_string();
    let def = st.attributes.get_mut(&id).ok_or_else(not_found)?;
    def["name"] = json!(name);
    Ok(data(200, def.clone()))
}

async fn crm_attribute_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let id = st.attribute_id(&id)?;
    st.attributes.remove(&id);
    for c in st.contacts.values_mut() {
        if let Some(list) = c["attributes"].as_array_mut() {
            list.retain(|v| v["id"].as_i64() != Some(id));
        }
    }
    Ok(no_content())
}

/// An attribute value as sent: a string of at most 5,500 characters.
fn attribute_value(body: &Value) -> Result<String, Response> {
    match body.get("value") {
        Some(Value::String(v)) if v.chars().count() > 5_500 => Err(crm422(
            "value",
            "The value may not be greater than 5500 characters.",
        )),
        Some(Value::String(v)) => Ok(v.clone()),
        _ => Err(crm422("value", "The value field is required.")),
    }
}

/// Sets one value on a contact (replacing any earlier one).
fn set_value(st: &mut St, contact: &str, attribute: i64, value: String) -> Result<(), Response> {
    let c = st.contact_mut(contact)?;
    let list = c.entry("attributes").or_insert(json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|v| v["id"].as_i64() != Some(attribute));
        list.push(json!({"id": attribute, "value": value}));
    }
    c.insert("updatedAt".into(), json!(now()));
    Ok(())
}

/// The contact's value of one attribute, as the API shows it.
fn value_view(st: &mut St, contact: &str, attribute: i64) -> Result<Value, Response> {
    let c = Value::Object(st.contact_mut(contact)?.clone());
    st.attribute_values(&c)
        .as_array()
        .and_then(|l| l.iter().find(|v| v["id"] == attribute).cloned())
        .ok_or_else(not_found)
}

async fn crm_values_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let c = Value::Object(st.contact_mut(&id)?.clone());
    Ok(data(200, st.attribute_values(&c)))
}

fn attribute_ref(st: &St, body: &Value) -> Result<i64, Response> {
    let id = body
        .get("attributeId")
        .and_then(Value::as_i64)
        .ok_or_else(|| crm422("attributeId", "The attribute id field is required."))?;
    if !st.attributes.contains_key(&id) {
        return Err(crm422(
            "attributeId",
            "The selected attribute id is invalid.",
        ));
    }
    Ok(id)
}

async fn crm_value_set(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let attribute = attribute_ref(&st, &body)?;
    let value = attribute_value(&body)?;
    set_value(&mut st, &id, attribute, value)?;
    Ok(data(200, value_view(&mut st, &id, attribute)?))
}

async fn crm_values_batch(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let Some(items) = body.get("attributes").and_then(Value::as_array) else {
        return Err(crm422("attributes", "The attributes field is required."));
    };
    // All checked before any is written: a batch applies whole or not at all.
    let mut checked = Vec::with_capacity(items.len());
    for item in items {
        checked.push((attribute_ref(&st, item)?, attribute_value(item)?));
    }
    let mut out = Vec::with_capacity(checked.len());
    for (attribute, value) in checked {
        set_value(&mut st, &id, attribute, value)?;
        out.push(value_view(&mut st, &id, attribute)?);
    }
    Ok(data(201, Value::Array(out)))
}

async fn crm_value_update(
    State(s): S,
    Path((id, attribute)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.contact_mut(&id)?;
    let attribute = st.attribute_id(&attribute)?;
    let value = attribute_value(&body)?;
    set_value(&mut st, &id, attribute, value)?;
    Ok(data(200, value_view(&mut st, &id, attribute)?))
}

async fn crm_value_delete(
    State(s): S,
    Path((id, attribute)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let attribute = st.attribute_id(&attribute)?;
    let c = st.contact_mut(&id)?;
    let list = c.get_mut("attributes").and_then(Value::as_array_mut);
    let Some(list) = list.filter(|l| l.iter().any(|v| v["id"] == attribute)) else {
        return Err(not_found());
    };
    list.retain(|v| v["id"] != attribute);
    c.insert("updatedAt".into(), json!(now()));
    Ok(no_content())
}

// ----------------------------------------------------------- CRM: tasks

/// Validates task fields and writes them into `t` (create or update).
fn apply_task(
    st: &St,
    t: &mut Map<String, Value>,
    body: &Value,
    creating: bool,
) -> Result<(), Response> {
    let Some(map) = body.as_object() else {
        return Err(crm422("body", "The request body must be an object."));
    };
    let int = |f: &str| -> Result<Option<i64>, Response> {
        match map.get(f) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| crm422(f, &format!("The {f} must be an integer."))),
        }
    };
    optional_strings(body, &["name", "description", "alert"])?;
    if let Some(board) = int("boardId")? {
        if board != 1 {
            return Err(crm422("boardId", "The selected board id is invalid."));
        }
    }
    if let Some(step) = int("stepId")? {
        if !(1..=DONE_STEP).contains(&step) {
            return Err(crm422("stepId", "The selected step id is invalid."));
        }
    }
    if let Some(p) = int("priority")? {
        if !(1..=3).contains(&p) {
            return Err(crm422("priority", "The selected priority is invalid."));
        }
    }
    responsible(body, false)?;
    if let Some(parent) = int("parentId")? {
        if !st.tasks.contains_key(&parent) {
            return Err(crm422("parentId", "The selected parent id is invalid."));
        }
    }
    int("sourceType")?;
    int("repeat")?;
    for f in ["startAt", "finishAt"] {
        date_filter(body, f, "%Y-%m-%d %H:%M", "Y-m-d H:i")?;
    }
    for f in [
        "observers",
        "attributes",
        "tags",
        "checklists",
        "attachments",
    ] {
        if map.get(f).is_some_and(|v| !v.is_array() && !v.is_null()) {
            return Err(crm422(f, &format!("The {f} must be an array.")));
        }
    }
    let mut fields = vec![
        "name",
        "boardId",
        "stepId",
        "responsibleId",
        "observers",
        "priority",
        "sourceType",
        "parentId",
        "description",
        "alert",
        "startAt",
        "finishAt",
        "repeatSetting",
        "attributes",
        "tags",
    ];
    if creating {
        fields.extend(["repeat", "attachments"]);
    }
    for f in fields {
        if let Some(v) = map.get(f) {
            t.insert(f.into(), v.clone());
        }
    }
    Ok(())
}

/// Links from a `connections` object, all of which must exist.
fn connect(st: &St, t: &mut Map<String, Value>, connections: &Value) -> Result<(), Response> {
    if !connections.is_object() {
        return Err(crm422("connections", "The connections must be an object."));
    }
    for (key, field) in [
        ("contactIds", "contacts"),
        ("dealIds", "deals"),
        ("taskIds", "tasks"),
        ("subTasksIds", "subTasks"),
    ] {
        let ids = id_list(connections, key).unwrap_or_default();
        for id in &ids {
            let exists = match field {
                "contacts" => st.contacts.contains_key(id),
                "tasks" | "subTasks" => st.tasks.contains_key(id),
                _ => true,
            };
            if !exists {
                return Err(crm422(
                    &format!("connections.{key}"),
                    &format!("The selected connections.{key} is invalid."),
                ));
            }
        }
        let list = t.entry(field).or_insert(json!([]));
        for id in ids {
            if !links(list, id) {
                if let Some(l) = list.as_array_mut() {
                    l.push(json!(id));
                }
            }
        }
    }
    Ok(())
}

/// `status` 2 and `endedAt` on the "Done" step, `status` 1 elsewhere.
fn set_completion(t: &mut Map<String, Value>, now: &str) {
    let done = t.get("stepId").and_then(Value::as_i64) == Some(DONE_STEP);
    let was_done = t.get("status").and_then(Value::as_i64) == Some(2);
    if done && !was_done {
        t.insert("status".into(), json!(2));
        t.insert("endedAt".into(), json!(now));
    } else if !done {
        t.insert("status".into(), json!(1));
        t.insert("endedAt".into(), Value::Null);
    }
}

async fn crm_task_create(State(s): S, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let mut t = st.new_task();
    apply_task(&st, &mut t, &body, true)?;
    if let Some(conn) = body.get("connections").filter(|c| !c.is_null()) {
        connect(&st, &mut t, conn)?;
    }
    if let Some(lists) = body.get("checklists").and_then(Value::as_array) {
        let mut out = vec![];
        for list in lists {
            let items: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| json!({"id": st.id(), "name": i["name"], "isDone": i["isDone"] == true}))
                .collect();
            out.push(json!({"id": st.id(), "name": list["name"], "items": items}));
        }
        t.insert("checklists".into(), Value::Array(out));
    }
    let now = now();
    set_completion(&mut t, &now);
    log(&mut t, "histories", "created");
    let id = t["id"].as_i64().unwrap_or_default();
    let t = Value::Object(t);
    st.tasks.insert(id, t.clone());
    Ok(data(201, t))
}

async fn crm_task_get(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    Ok(data(200, Value::Object(st.task_mut(&id)?.clone())))
}

async fn crm_task_update(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let mut t = st.task_mut(&id)?.clone();
    apply_task(&st, &mut t, &body, false)?;
    let now = now();
    t.insert("updatedAt".into(), json!(now));
    set_completion(&mut t, &now);
    log(&mut t, "histories", "updated");
    let stored = st.task_mut(&id)?;
    *stored = t.clone();
    Ok(data(200, Value::Object(t)))
}

async fn crm_task_delete(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let tid = st
        .task_mut(&id)?
        .get("id")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    st.tasks.remove(&tid);
    Ok(no_content())
}

async fn crm_task_comment(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.task_mut(&id)?;
    let text = message(&body)?;
    let comment_id = st.id();
    let now = now();
    let t = st.task_mut(&id)?;
    let comment = json!({
        "id": comment_id, "taskId": t["id"], "userId": OWNER_ID, "body": text,
        "createdAt": now, "updatedAt": now,
    });
    if let Some(list) = t.entry("comments").or_insert(json!([])).as_array_mut() {
        list.push(comment.clone());
    }
    log(t, "histories", "comment_added");
    t.insert("updatedAt".into(), json!(now));
    Ok(data(201, comment))
}

async fn crm_task_comment_update(
    State(s): S,
    Path((id, comment_id)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    st.task_mut(&id)?;
    let text = message(&body)?;
    let now = now();
    let t = st.task_mut(&id)?;
    let comments = t.entry("comments").or_insert(json!([]));
    let comment = comment_mut(comments, &comment_id).ok_or_else(not_found)?;
    comment["body"] = json!(text);
    comment["updatedAt"] = json!(now);
    let comment = comment.clone();
    t.insert("updatedAt".into(), json!(now));
    Ok(data(200, comment))
}

async fn crm_task_contact_detach(
    State(s): S,
    Path((id, contact)): Path<(String, String)>,
    req: Req,
) -> Out {
    let mut st = s.authed(&req)?;
    let cid: i64 = contact.parse().map_err(|_| not_found())?;
    let t = st.task_mut(&id)?;
    let list = t.get_mut("contacts").and_then(Value::as_array_mut);
    let Some(list) = list.filter(|l| links(&Value::Array(l.to_vec()), cid)) else {
        return Err(not_found());
    };
    list.retain(|x| x.as_i64() != Some(cid));
    t.insert("updatedAt".into(), json!(now()));
    Ok(no_content())
}

async fn crm_task_attach(State(s): S, Path(id): Path<String>, req: Req) -> Out {
    let mut st = s.authed(&req)?;
    let body = req.body()?;
    let mut t = st.task_mut(&id)?.clone();
    let Some(conn) = body.get("connections").filter(|c| !c.is_null()) else {
        return Err(crm422("connections", "The connections field is required."));
    };
    connect(&st, &mut t, conn)?;
    t.insert("updatedAt".into(), json!(now()));
    let out = json!({"tasks": t["tasks"], "deals": t["deals"], "contacts": t["contacts"], "subTasks": t["subTasks"]});
    *st.task_mut(&id)? = t;
    Ok(data(201, out))
}

async fn crm_tasks_list(State(s): S, req: Req) -> Out {
    let st = s.authed(&req)?;
    let body = req.body()?;
    let mut windows = vec![];
    for (field, key) in [
        ("startAt", "startAt"),
        ("finishAt", "finishAt"),
        ("createdAt", "createdAt"),
        ("updatedAt", "updatedAt"),
        ("endedAt", "endedAt"),
    ] {
        let from = date_filter(&body, &format!("{key}From"), "%Y-%m-%d %H:%M", "Y-m-d H:i")?;
        let to = date_filter(&body, &format!("{key}To"), "%Y-%m-%d %H:%M", "Y-m-d H:i")?;
        windows.push((field, from, to));
    }
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let number = |f: &str| body.get(f).and_then(Value::as_i64);
    let (steps, responsible, parents, observers, tags) = (
        id_list(&body, "stepId"),
        id_list(&body, "responsibleId"),
        id_list(&body, "parentId"),
        id_list(&body, "observers"),
        id_list(&body, "tags"),
    );
    let all_tags = body["tagMatch"] == "all";
    let contact = body
        .get("contacts")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    let one_of = |v: &Value, ids: &Option<Vec<i64>>| {
        ids.as_ref()
            .is_none_or(|ids| ids.is_empty() || ids.iter().any(|id| v == id || links(v, *id)))
    };
    let mut list: Vec<Value> = st
        .tasks
        .values()
        .filter(|t| {
            windows
                .iter()
                .all(|(f, from, to)| in_window(&t[*f], from, to))
        })
        .filter(|t| name.is_none_or(|n| contains_ci(&t["name"], n)))
        .filter(|t| {
            ["boardId", "priority", "status"]
                .iter()
                .all(|f| number(f).is_none_or(|n| t[*f] == n))
        })
        .filter(|t| one_of(&t["stepId"], &steps) && one_of(&t["responsibleId"], &responsible))
        .filter(|t| one_of(&t["parentId"], &parents) && one_of(&t["observers"], &observers))
        .filter(|t| {
            tags.as_ref().is_none_or(|w| {
                w.is_empty()
                    || if all_tags {
                        w.iter().all(|id| links(&t["tags"], *id))
                    } else {
                        w.iter().any(|id| links(&t["tags"], *id))
                    }
            })
        })
        .filter(|t| {
            contact.is_none_or(|c| {
                t["contacts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .any(|id| {
                        id.to_string() == c
                            || st.contacts.get(&id).is_some_and(|x| {
                                contains_ci(&x["firstName"], c) || contains_ci(&x["lastName"], c)
                            })
                    })
            })
        })
        .cloned()
        .collect();
    let (field, desc) = match body.get("sort").filter(|s| s.is_object()) {
        Some(sort) => {
            let field = match sort["field"].as_str().unwrap_or("name") {
                "created_at" => "createdAt",
                "updated_at" => "updatedAt",
                "start_at" => "startAt",
                "finish_at" => "finishAt",
                other => other,
            };
            (
                field.to_string(),
                sort["direction"].as_str() == Some("desc"),
            )
        }
        None => ("updatedAt".to_string(), false),
    };
    list.sort_by(|a, b| {
        cmp_json(&a[field.as_str()], &b[field.as_str()]).then_with(|| cmp_json(&a["id"], &b["id"]))
    });
    if desc {
        list.reverse();
    }
    Ok(data(200, Value::Array(list)))
}
