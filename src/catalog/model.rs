//! The connector file format: what one YAML file in the catalog declares.
//!
//! The JSON Schema in `schemas/connector.schema.json` is generated from
//! these types (`patchbay schema --connector`).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One connector: an external system described as data.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDef {
    /// Short name used in operation ids (`ghl` in `ghl.contacts.create`).
    pub connector: String,
    /// Human title.
    pub title: String,
    /// What the connector talks to.
    #[serde(default)]
    pub description: String,
    /// Base URL of the API; a connection's `base_url` overrides it.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Built-in connectors run inside the engine and need no connection.
    #[serde(default)]
    pub builtin: bool,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: Auth,
    /// Headers sent on every request (`Version: 2021-07-28`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Fields a connection of this connector has, by name.
    #[serde(default)]
    pub connection: IndexMap<String, ConnectionField>,
    /// Client-side rate limits: every window must have room for a request.
    #[serde(default)]
    pub rate_limits: Vec<RateWindow>,
    /// At most this many requests in flight per connection.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Response header that tells how many requests remain in the window.
    #[serde(default)]
    pub remaining_header: Option<String>,
    /// Request timeout, e.g. `30s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retry policy for steps that do not set one.
    #[serde(default)]
    pub retry: Option<RetryDefaults>,
    /// How error answers map to error kinds.
    #[serde(default)]
    pub errors: ErrorRules,
    /// How webhook deliveries to `/hooks/{connection}` become events.
    #[serde(default)]
    pub webhook: Option<WebhookDef>,
    /// Operations by id without the connector prefix (`contacts.create`).
    pub operations: IndexMap<String, LazyOperation>,
}

/// An operation read on first use: a process that validates one recipe
/// needs a handful of the catalog's operations, and deserializing all of
/// them was most of its start-up time (docs/performance.md).
#[derive(Debug)]
pub struct LazyOperation {
    raw: std::borrow::Cow<'static, str>,
    parsed: std::sync::OnceLock<OperationDef>,
}

impl LazyOperation {
    /// An operation from JSON embedded in the binary.
    pub fn from_static(json: &'static str) -> LazyOperation {
        LazyOperation {
            raw: std::borrow::Cow::Borrowed(json),
            parsed: std::sync::OnceLock::new(),
        }
    }

    /// The declaration. Built-in connectors are checked by the test suite
    /// and override files eagerly at load, so this cannot fail.
    pub fn get(&self) -> &OperationDef {
        self.parsed.get_or_init(|| {
            serde_json::from_str(&self.raw)
                .unwrap_or_else(|e| panic!("operation declaration invalid: {e}"))
        })
    }

    /// Parses with the JSON path of the first problem.
    pub fn try_parse(
        &self,
    ) -> Result<&OperationDef, serde_path_to_error::Error<serde_json::Error>> {
        if let Some(p) = self.parsed.get() {
            return Ok(p);
        }
        let mut de = serde_json::Deserializer::from_str(&self.raw);
        let def: OperationDef = serde_path_to_error::deserialize(&mut de)?;
        Ok(self.parsed.get_or_init(|| def))
    }
}

impl Clone for LazyOperation {
    fn clone(&self) -> Self {
        LazyOperation {
            raw: self.raw.clone(),
            parsed: self.parsed.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for LazyOperation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(LazyOperation {
            raw: std::borrow::Cow::Owned(raw.get().to_string()),
            parsed: std::sync::OnceLock::new(),
        })
    }
}

impl Serialize for LazyOperation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl JsonSchema for LazyOperation {
    fn inline_schema() -> bool {
        OperationDef::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        OperationDef::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        OperationDef::json_schema(g)
    }
}

/// One field of a connection.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionField {
    /// A secret: redacted in every output, only from env or file.
    #[serde(default)]
    pub secret: bool,
    /// The connection must set it.
    #[serde(default)]
    pub required: bool,
    /// What it is.
    #[serde(default)]
    pub description: String,
}

/// Authentication scheme.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Bearer <token>`; optionally refreshed with OAuth2.
    Bearer {
        /// Connection field holding the token.
        token: String,
        /// OAuth2 refresh-token flow, used when the connection has a refresh token.
        #[serde(default)]
        refresh: Option<OAuthRefresh>,
    },
    /// An API key in a header.
    ApiKeyHeader {
        /// Header name.
        header: String,
        /// Connection field holding the key.
        key: String,
    },
    /// OAuth2 client credentials; the token is cached until shortly before expiry.
    Oauth2ClientCredentials {
        /// Token endpoint, relative to the base URL or absolute.
        token_url: String,
        /// `json` or `form` request body.
        #[serde(default)]
        encoding: Encoding,
        /// Connection field with the client id.
        client_id: String,
        /// Connection field with the client secret.
        client_secret: String,
        /// Connection field with a static API key that replaces the flow when set.
        #[serde(default)]
        static_token: Option<String>,
    },
}

/// The OAuth2 refresh-token flow of a bearer connector.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthRefresh {
    /// Token endpoint.
    pub token_url: String,
    /// `json` or `form`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Connection field with the refresh token.
    pub refresh_token: String,
    /// Connection field with the client id.
    pub client_id: String,
    /// Connection field with the client secret.
    pub client_secret: String,
}

/// Body encoding of token requests and operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `application/json`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

impl Encoding {
    /// Whether this is the default, JSON (left out when serialized).
    pub fn is_json(&self) -> bool {
        *self == Encoding::Json
    }
}

/// One rate-limit window.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length, e.g. `10s`.
    pub per: String,
}

/// Connector-wide retry defaults.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDefaults {
    /// Total attempts including the first.
    pub attempts: u32,
    /// First backoff, e.g. `1s`.
    pub backoff: String,
    /// Backoff cap.
    pub max_backoff: String,
}

/// Error classification of one connector.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRules {
    /// Dotted body paths tried in order for the error message; arrays are joined.
    #[serde(default)]
    pub message: Vec<String>,
    /// Rules tried in order before the status-code defaults.
    #[serde(default)]
    pub rules: Vec<ErrorRule>,
}

/// One error rule: all given conditions must hold.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// HTTP status to match.
    #[serde(default)]
    pub status: Option<u16>,
    /// Dotted body path that must be present and not null.
    #[serde(default)]
    pub body_has: Option<String>,
    /// Dotted body path and the value it must equal.
    #[serde(default)]
    pub body_equals: Option<BodyEquals>,
    /// Case-insensitive text the error message must contain.
    #[serde(default)]
    pub message_contains: Option<String>,
    /// The kind the error gets.
    pub kind: ErrorKind,
}

/// A body path and a value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyEquals {
    /// Dotted path.
    pub path: String,
    /// Expected value.
    pub value: Value,
}

/// Kinds of step errors, as `error.kind` in recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404 or an API's not-found answer.
    NotFound,
    /// 409 or an API's duplicate answer.
    Conflict,
    /// 422.
    Unprocessable,
    /// 429 or an API's too-many-requests code.
    RateLimited,
    /// 5xx.
    Server,
    /// No answer in time.
    Timeout,
    /// Connection failed or was reset.
    Network,
    /// A template failed to render.
    Template,
    /// The rendered input does not fit the operation.
    InvalidInput,
}

impl ErrorKind {
    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Unprocessable,
        ErrorKind::RateLimited,
        ErrorKind::Server,
        ErrorKind::Timeout,
        ErrorKind::Network,
        ErrorKind::Template,
        ErrorKind::InvalidInput,
    ];

    /// The snake_case name used in recipes.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unprocessable => "unprocessable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::Template => "template",
            ErrorKind::InvalidInput => "invalid_input",
        }
    }

    /// Whether a retry may help.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Network
        )
    }
}

/// How deliveries to a connection's webhook URL become events.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// `array`: the body is a JSON array, one event per item; `single`: one event.
    pub split: Split,
    /// Event field that names the event type (`event`, `type`); none = one type.
    #[serde(default)]
    pub type_field: Option<String>,
    /// How deliveries are authenticated.
    #[serde(default)]
    pub verify: WebhookVerify,
    /// Every value arrives as a string; coerce declared payload fields.
    #[serde(default)]
    pub string_values: bool,
}

/// Delivery split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// A JSON array of events.
    Array,
    /// One JSON object.
    Single,
}

impl WebhookVerify {
    /// The connection field holding the secret or key deliveries are
    /// checked with; `None` when the connector checks nothing.
    pub fn field(&self) -> Option<&str> {
        match self {
            WebhookVerify::None => None,
            WebhookVerify::Token { token } => Some(token),
            WebhookVerify::Hmac { secret, .. } => Some(secret),
            WebhookVerify::Ed25519 { public_key, .. } => Some(public_key),
        }
    }
}

/// Webhook authentication.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookVerify {
    /// Nothing to check.
    #[default]
    None,
    /// A shared token as `?token=` or `X-Patchbay-Token`.
    Token {
        /// Connection field with the token.
        token: String,
    },
    /// Ed25519 signature over the raw body.
    Ed25519 {
        /// Header with the base64 signature.
        header: String,
        /// Connection field with the public key (SPKI DER, base64).
        public_key: String,
        /// Payload field with the ISO timestamp checked for freshness.
        timestamp_field: String,
        /// Payload field deduplicated on.
        id_field: String,
        /// Maximum age, e.g. `5m`.
        max_age: String,
        /// A deprecated RSA signature accepted when a delivery carries no
        /// `header` (HighLevel's `x-wh-signature`); the same timestamp and
        /// id checks apply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        legacy: Option<LegacyRsa>,
    },
    /// HMAC-SHA256 of the raw body in a header, hex or `sha256=` hex.
    Hmac {
        /// Header with the signature.
        header: String,
        /// Connection field with the shared secret.
        secret: String,
        /// Header with a Unix time (seconds); when a delivery carries it,
        /// the signature covers `{timestamp}.{body}` and the time must be
        /// within `max_age` (replay protection).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp_header: Option<String>,
        /// The replay window for `timestamp_header`, e.g. `5m` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_age: Option<String>,
    },
}

/// A deprecated RSA PKCS#1 v1.5 SHA-256 signature of the raw body.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyRsa {
    /// Header with the base64 signature (`x-wh-signature`).
    pub header: String,
    /// Connection field with the RSA public key (PEM, or base64 DER); the
    /// connection may leave it unset to use `default_public_key`.
    pub public_key: String,
    /// The public key (PEM) used when the connection sets none: the one the
    /// sender publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_public_key: Option<String>,
}

/// What an operation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Called by a step.
    #[default]
    Action,
    /// Fired by a webhook delivery.
    Webhook,
    /// Fired by polling a list operation.
    Poll,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

impl Method {
    /// The method name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One operation of a connector.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationDef {
    /// Action, webhook trigger or poll trigger.
    #[serde(default)]
    pub kind: OpKind,
    /// One-line title.
    pub title: String,
    /// Longer notes.
    #[serde(default)]
    pub description: String,
    /// HTTP method (HTTP actions).
    #[serde(default)]
    pub method: Option<Method>,
    /// Path template with `{param}`s, relative to the base URL (HTTP actions).
    #[serde(default)]
    pub path: Option<String>,
    /// Built-in implementation for operations that are not an HTTP call
    /// (`store.put`, `http.request`).
    #[serde(default)]
    pub native: Option<String>,
    /// OAuth scope the operation needs.
    #[serde(default)]
    pub scope: Option<String>,
    /// Success status the API answers, for documentation and the emulators.
    #[serde(default)]
    pub success: Option<u16>,
    /// Inputs by name, in declaration order.
    #[serde(default)]
    pub inputs: IndexMap<String, InputDef>,
    /// How the body inputs are sent: a JSON object (the default) or
    /// `form`, `application/x-www-form-urlencoded` fields (scalars, or lists
    /// of scalars as repeated fields).
    #[serde(default, skip_serializing_if = "Encoding::is_json")]
    pub body_encoding: Encoding,
    /// JSONPath of the step output in the response body; `$` when absent.
    #[serde(default)]
    pub output: Option<String>,
    /// Input that takes a list, filled from `for_each` items with `batch_size`.
    #[serde(default)]
    pub batch_input: Option<String>,
    /// Pagination of list operations.
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// Event type value for webhook triggers (`new_emails`, `ContactCreate`).
    #[serde(default)]
    pub event_type: Option<String>,
    /// Template giving an event's dedupe key.
    #[serde(default)]
    pub dedupe_key: Option<String>,
    /// Template giving the key events are ordered by.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// Known payload fields of trigger events, with types for coercion.
    #[serde(default)]
    pub payload: IndexMap<String, FieldDef>,
    /// How a poll trigger lists records.
    #[serde(default)]
    pub poll: Option<PollDef>,
}

/// Where an input goes in the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputLocation {
    /// A `{param}` of the path, percent-encoded.
    Path,
    /// A query parameter.
    Query,
    /// A key of the JSON body.
    #[default]
    Body,
    /// The whole JSON body (for APIs whose body is an array).
    BodyRoot,
    /// A request header.
    Header,
}

/// Value types of inputs and payload fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// Text.
    String,
    /// Whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` / `false`.
    Boolean,
    /// A list.
    Array,
    /// A mapping.
    Object,
    /// Anything.
    #[default]
    Any,
}

impl ValueType {
    /// The type's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Array => "array",
            ValueType::Object => "object",
            ValueType::Any => "any",
        }
    }

    /// Whether a JSON value has this type (null never does).
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ValueType::String => v.is_string(),
            ValueType::Integer => v.is_i64() || v.is_u64(),
            ValueType::Number => v.is_number(),
            ValueType::Boolean => v.is_boolean(),
            ValueType::Array => v.is_array(),
            ValueType::Object => v.is_object(),
            ValueType::Any => true,
        }
    }
}

/// One input of an operation.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    /// Value type.
    #[serde(default, rename = "type")]
    pub ty: ValueType,
    /// Where it goes.
    #[serde(default, rename = "in")]
    pub location: InputLocation,
    /// Must be mapped (or filled from the connection).
    #[serde(default)]
    pub required: bool,
    /// The name on the wire when it differs from the input name.
    #[serde(default)]
    pub wire_name: Option<String>,
    /// Filled from this connection field; recipes do not map it.
    #[serde(default)]
    pub from_connection: Option<String>,
    /// Value used when the recipe does not map it.
    #[serde(default)]
    pub default: Option<Value>,
    /// Allowed values.
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    /// Null is an accepted value.
    #[serde(default)]
    pub nullable: bool,
    /// How the value is written on the wire when the API wants another form
    /// than the one recipes give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<ValueEncoding>,
    /// What it is.
    #[serde(default)]
    pub description: String,
}

/// Wire forms of an input's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueEncoding {
    /// A list of strings sent as one string: the base64 of the items joined
    /// with commas (SendPulse's blacklist `emails`). An item may not
    /// contain a comma.
    Base64CommaList,
}

impl ValueEncoding {
    /// The name in connector files.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueEncoding::Base64CommaList => "base64_comma_list",
        }
    }
}

/// One payload field of a trigger.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// Value type the engine coerces string values to.
    #[serde(default, rename = "type")]
    pub ty: ValueType,
    /// What it is.
    #[serde(default)]
    pub description: String,
}

/// Pagination styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PageStyle {
    /// Inputs filled from fields of the previous response.
    Cursor,
    /// A limit and an offset input.
    Offset,
    /// A page-number input.
    Page,
}

/// How a list operation pages.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    /// Style.
    pub style: PageStyle,
    /// JSONPath of the items in a page.
    pub items: String,
    /// Input with the page size.
    #[serde(default)]
    pub limit_input: Option<String>,
    /// Page size used when the recipe sets none.
    #[serde(default)]
    pub page_size: Option<u64>,
    /// Offset input (offset style).
    #[serde(default)]
    pub offset_input: Option<String>,
    /// Page-number input (page style).
    #[serde(default)]
    pub page_input: Option<String>,
    /// Cursor style: input name -> JSONPath in the previous response.
    #[serde(default)]
    pub cursor: IndexMap<String, String>,
    /// Stop after this many pages.
    #[serde(default)]
    pub max_pages: Option<u32>,
}

/// How a poll trigger finds new records.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollDef {
    /// The list action called (same connector), e.g. `crm.tasks.list`.
    pub operation: String,
    /// JSONPath of the records in a response.
    pub records: String,
    /// Record field holding the record's id.
    pub id_field: String,
    /// Record field compared with the cursor (an update time).
    pub cursor_field: String,
    /// Input of the list action that receives the cursor.
    pub cursor_input: String,
    /// chrono format of the cursor input (`%Y-%m-%d %H:%M`); raw value when absent.
    #[serde(default)]
    pub cursor_format: Option<String>,
    /// The value of `cursor_input` when the cursor sits inside it (a search
    /// filter): every string `{{ cursor }}` in it becomes the formatted
    /// cursor. Without it the input is the cursor itself.
    #[serde(default)]
    pub cursor_value: Option<Value>,
    /// Fixed inputs of the list call.
    #[serde(default)]
    pub inputs: IndexMap<String, Value>,
}
