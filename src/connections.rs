//! Connections: named credentials and settings per connector, kept outside
//! recipes. Secret values come from the environment or files, never from
//! literals.

use indexmap::IndexMap;

use std::collections::HashMap;

use crate::catalog::{Catalog, RateWindow};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::secret::Secret;
use crate::yaml::{self, Node, NodeKind, Pos};

/// The connection setting that lets a webhook-capable connection take
/// deliveries without a secret (`webhook_auth: none`); without it, a
/// connection lacking its connector's webhook secret refuses deliveries.
pub const WEBHOOK_AUTH: &str = "webhook_auth";

/// Settings every connection may have that are whole numbers: the most
/// events one webhook delivery may hold, and the largest response body read
/// from the API.
pub const NUMERIC_SETTINGS: [&str; 2] = ["max_events", "max_response_bytes"];

/// Where a connection field's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Written in the file (non-secret fields only).
    Literal(String),
    /// `{ env: NAME }`.
    Env(String),
    /// `{ file: PATH }`, trailing newline trimmed.
    File(String),
}

impl std::fmt::Debug for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSource::Literal(_) => f.write_str("Literal(..)"),
            ValueSource::Env(n) => write!(f, "Env({n})"),
            ValueSource::File(p) => write!(f, "File({p})"),
        }
    }
}

/// One connection as declared.
#[derive(Debug, Clone)]
pub struct ConnectionDecl {
    /// Connection name (`ghl-main`).
    pub name: String,
    /// Connector name (`ghl`).
    pub connector: String,
    /// Field values by field name (`base_url` included).
    pub fields: IndexMap<String, ValueSource>,
    /// Rate-limit windows replacing the connector's (`rate_limits:`).
    pub rate_limits: Option<Vec<RateWindow>>,
    /// Concurrency cap replacing the connector's (`concurrency:`).
    pub concurrency: Option<u32>,
    /// Where the connection is declared.
    pub pos: Pos,
}

/// A connection field's value, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A non-secret setting.
    Plain(String),
    /// A secret.
    Secret(Secret),
}

impl FieldValue {
    /// The value, for building a request.
    pub fn expose(&self) -> &str {
        match self {
            FieldValue::Plain(s) => s,
            FieldValue::Secret(s) => s.expose(),
        }
    }
}

/// A connection whose values were read from the environment and files.
/// Equal when every value is (secrets included): a reload keeps the live
/// state of a connection that resolves to an equal one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConnection {
    /// Connection name.
    pub name: String,
    /// Connector name.
    pub connector: String,
    /// Values by field name.
    pub fields: HashMap<String, FieldValue>,
    /// Rate-limit override.
    pub rate_limits: Option<Vec<RateWindow>>,
    /// Concurrency override.
    pub concurrency: Option<u32>,
}

impl ResolvedConnection {
    /// A connection from values (`(field, value, secret)`), for the sandbox
    /// and tests.
    pub fn from_values(
        name: &str,
        connector: &str,
        fields: &[(&str, &str, bool)],
    ) -> ResolvedConnection {
        ResolvedConnection {
            name: name.into(),
            connector: connector.into(),
            fields: fields
                .iter()
                .map(|(k, v, secret)| {
                    let v = if *secret {
                        FieldValue::Secret(Secret::new(*v))
                    } else {
                        FieldValue::Plain(v.to_string())
                    };
                    (k.to_string(), v)
                })
                .collect(),
            rate_limits: None,
            concurrency: None,
        }
    }

    /// A field's value.
    pub fn get(&self, field: &str) -> Option<&FieldValue> {
        self.fields.get(field)
    }
}

/// A connection value that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// `{ env: NAME }` and NAME is not set.
    #[error("connection `{connection}`: environment variable `{var}` (for `{field}`) is not set")]
    MissingEnv {
        /// Connection.
        connection: String,
        /// Field.
        field: String,
        /// Variable.
        var: String,
    },
    /// A secret field read as empty (an env var set to "", an empty file):
    /// a webhook would otherwise accept any delivery, a request send no
    /// credential.
    #[error("connection `{connection}`: `{field}` is a secret and {source_desc} is empty; set a value (or leave the field out)")]
    Empty {
        /// Connection.
        connection: String,
        /// Field.
        field: String,
        /// Where the value came from, e.g. "environment variable `X`".
        source_desc: String,
    },
    /// `{ file: PATH }` and the file cannot be read.
    #[error("connection `{connection}`: cannot read `{path}` (for `{field}`): {source}")]
    File {
        /// Connection.
        connection: String,
        /// Field.
        field: String,
        /// Path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ConnectionDecl {
    /// For dry runs: values that cannot be read become placeholders
    /// (`${GHL_LOCATION_ID}`), since nothing is sent.
    pub fn resolve_or_placeholders(&self, catalog: &Catalog) -> ResolvedConnection {
        let mut fields = IndexMap::new();
        for (k, v) in &self.fields {
            let readable = match v {
                ValueSource::Env(var) => std::env::var(var).is_ok(),
                ValueSource::File(p) => std::path::Path::new(p).exists(),
                ValueSource::Literal(_) => true,
            };
            let v = match v {
                _ if readable => v.clone(),
                ValueSource::Env(var) => ValueSource::Literal(format!("${{{var}}}")),
                ValueSource::File(p) => ValueSource::Literal(format!("<contents of {p}>")),
                ValueSource::Literal(_) => v.clone(),
            };
            fields.insert(k.clone(), v);
        }
        let decl = ConnectionDecl {
            fields,
            ..self.clone()
        };
        decl.resolve(catalog).expect("placeholders always resolve")
    }

    /// Reads every value; secret fields become [`Secret`]s.
    pub fn resolve(&self, catalog: &Catalog) -> Result<ResolvedConnection, ConnectionError> {
        let connector = catalog.connector(&self.connector);
        let mut fields = HashMap::new();
        for (field, source) in &self.fields {
            let raw = match source {
                ValueSource::Literal(v) => v.clone(),
                ValueSource::Env(var) => {
                    std::env::var(var).map_err(|_| ConnectionError::MissingEnv {
                        connection: self.name.clone(),
                        field: field.clone(),
                        var: var.clone(),
                    })?
                }
                ValueSource::File(path) => crate::safefile::read_text(std::path::Path::new(path))
                    .map_err(|source| ConnectionError::File {
                        connection: self.name.clone(),
                        field: field.clone(),
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            };
            let secret = connector
                .and_then(|c| c.connection.get(field))
                .is_some_and(|f| f.secret);
            if secret && raw.trim().is_empty() {
                return Err(ConnectionError::Empty {
                    connection: self.name.clone(),
                    field: field.clone(),
                    source_desc: match source {
                        ValueSource::Env(var) => format!("environment variable `{var}`"),
                        ValueSource::File(path) => format!("file `{path}`"),
                        ValueSource::Literal(_) => "its value".into(),
                    },
                });
            }
            let value = if secret {
                FieldValue::Secret(Secret::new(raw))
            } else {
                FieldValue::Plain(raw)
            };
            fields.insert(field.clone(), value);
        }
        Ok(ResolvedConnection {
            name: self.name.clone(),
            connector: self.connector.clone(),
            fields,
            rate_limits: self.rate_limits.clone(),
            concurrency: self.concurrency,
        })
    }
}

/// All connections of a connections file.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    /// By name, in file order.
    pub by_name: IndexMap<String, ConnectionDecl>,
    /// Warnings of a file that loaded (`webhook_auth: none`).
    pub warnings: Vec<Diagnostic>,
}

impl Connections {
    /// Parses a connections file and checks it against the catalog.
    pub fn parse(
        file: &str,
        text: &str,
        catalog: &Catalog,
    ) -> Result<Connections, Vec<Diagnostic>> {
        let mut diags = Vec::new();
        let (root, dups) = yaml::parse(text)
            .map_err(|e| vec![Diagnostic::error(file, e.pos, e.code, e.message)])?;
        for d in dups {
            diags.push(Diagnostic::error(file, d.pos, d.code, d.message));
        }
        let mut out = Connections::default();
        let entries = match &root.kind {
            NodeKind::Map(m) => m.as_slice(),
            NodeKind::Null => &[],
            _ => {
                return Err(vec![Diagnostic::error(
                    file,
                    root.span.start,
                    "wrong-type",
                    "a connections file is a mapping of connection names to settings",
                )])
            }
        };
        for (k, v) in entries {
            let name = k.key_string();
            if let Some(c) = connection(file, &name, k.span.start, v, catalog, &mut diags) {
                out.by_name.insert(name, c);
            }
        }
        let (warnings, errors) = diags
            .into_iter()
            .partition(|d| d.severity == crate::diagnostic::Severity::Warning);
        let diags: Vec<Diagnostic> = errors;
        out.warnings = warnings;
        if diags.is_empty() {
            Ok(out)
        } else {
            Err(diags)
        }
    }

    /// A connection by name.
    pub fn get(&self, name: &str) -> Option<&ConnectionDecl> {
        self.by_name.get(name)
    }

    /// The connections of one connector.
    pub fn of_connector<'a>(
        &'a self,
        connector: &'a str,
    ) -> impl Iterator<Item = &'a ConnectionDecl> + 'a {
        self.by_name
            .values()
            .filter(move |c| c.connector == connector)
    }
}

fn connection(
    file: &str,
    name: &str,
    pos: Pos,
    node: &Node,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<ConnectionDecl> {
    let Some(entries) = node.as_map() else {
        diags.push(Diagnostic::error(
            file,
            node.span.start,
            "wrong-type",
            format!("connection `{name}` must be a mapping"),
        ));
        return None;
    };
    let Some(conn_node) = node.get("connector") else {
        diags.push(Diagnostic::error(
            file,
            pos,
            "missing-key",
            format!("connection `{name}` needs `connector`"),
        ));
        return None;
    };
    let connector_name = conn_node.key_string();
    let Some(connector) = catalog.connector(&connector_name) else {
        let names: Vec<&str> = catalog.connectors().map(|c| c.connector.as_str()).collect();
        diags.push(
            Diagnostic::error(
                file,
                conn_node.span.start,
                "unknown-connector",
                format!("no connector `{connector_name}` in the catalog"),
            )
            .suggest(did_you_mean(&connector_name, names.iter().copied())),
        );
        return None;
    };
    let mut fields = IndexMap::new();
    let mut rate_limits = None;
    let mut concurrency = None;
    for (k, v) in entries {
        let key = k.key_string();
        if key == "connector" {
            continue;
        }
        if key == "rate_limits" {
            match serde_json::from_value::<Vec<RateWindow>>(v.to_json()) {
                Ok(w)
                    if w.iter().all(|w| {
                        crate::duration::parse_duration(&w.per).is_ok() && w.requests > 0
                    }) =>
                {
                    rate_limits = Some(w)
                }
                _ => diags.push(Diagnostic::error(
                    file,
                    v.span.start,
                    "wrong-type",
                    "`rate_limits` must be a list of `{ requests: N, per: DURATION }`",
                )),
            }
            continue;
        }
        if key == "concurrency" {
            match v.kind {
                NodeKind::Int(n) if n > 0 && n <= u32::MAX as i64 => concurrency = Some(n as u32),
                _ => diags.push(Diagnostic::error(
                    file,
                    v.span.start,
                    "wrong-type",
                    "`concurrency` must be a whole number of at least 1",
                )),
            }
            continue;
        }
        if NUMERIC_SETTINGS.contains(&key.as_str()) {
            match v.kind {
                NodeKind::Int(n) if n > 0 => {
                    fields.insert(key, ValueSource::Literal(n.to_string()));
                }
                _ => diags.push(Diagnostic::error(
                    file,
                    v.span.start,
                    "wrong-type",
                    format!("`{key}` must be a whole number of at least 1"),
                )),
            }
            continue;
        }
        if key == WEBHOOK_AUTH {
            if connector.webhook.is_none() {
                diags.push(Diagnostic::error(
                    file,
                    k.span.start,
                    "unknown-key",
                    format!("connector `{connector_name}` receives no webhooks, so `{WEBHOOK_AUTH}` does not apply"),
                ));
            } else if v.as_str() != Some("none") {
                diags.push(Diagnostic::error(
                    file,
                    v.span.start,
                    "wrong-type",
                    format!("`{WEBHOOK_AUTH}` takes one value, `none` (deliveries are taken without authentication); leave it out to require the connector's check"),
                ));
            } else {
                diags.push(Diagnostic::warning(
                    file,
                    v.span.start,
                    "unauthenticated-webhook",
                    format!("connection `{name}` takes webhook deliveries without authentication: anyone who can reach `/hooks/{name}` can start its recipes"),
                ));
                fields.insert(key, ValueSource::Literal("none".into()));
            }
            continue;
        }
        const SETTINGS: [&str; 4] = ["base_url", "rate_limits", "concurrency", WEBHOOK_AUTH];
        let known = key == "base_url" || connector.connection.contains_key(&key);
        if !known {
            let names = connector
                .connection
                .keys()
                .map(String::as_str)
                .chain(SETTINGS)
                .chain(NUMERIC_SETTINGS);
            diags.push(
                Diagnostic::error(
                    file,
                    k.span.start,
                    "unknown-key",
                    format!("connector `{connector_name}` has no connection field `{key}`"),
                )
                .suggest(did_you_mean(&key, names)),
            );
            continue;
        }
        let secret = connector.connection.get(&key).is_some_and(|f| f.secret);
        let source = match &v.kind {
            NodeKind::Map(_) => match (
                v.get("env").and_then(Node::as_str),
                v.get("file").and_then(Node::as_str),
            ) {
                (Some(e), None) => ValueSource::Env(e.to_string()),
                (None, Some(f)) => ValueSource::File(f.to_string()),
                _ => {
                    diags.push(Diagnostic::error(
                        file,
                        v.span.start,
                        "wrong-type",
                        format!("`{key}` must be a value, `{{ env: NAME }}` or `{{ file: PATH }}`"),
                    ));
                    continue;
                }
            },
            NodeKind::Seq(_) | NodeKind::Null => {
                diags.push(Diagnostic::error(
                    file,
                    v.span.start,
                    "wrong-type",
                    format!("`{key}` must be a value, `{{ env: NAME }}` or `{{ file: PATH }}`"),
                ));
                continue;
            }
            _ if secret => {
                let mut d = Diagnostic::error(file, v.span.start, "secret-literal", format!("`{key}` is a secret: it must come from `{{ env: NAME }}` or `{{ file: PATH }}`, not a literal"));
                d.hide_source = true;
                diags.push(d);
                // Recorded anyway so the field does not also count as missing.
                fields.insert(key, ValueSource::Literal(String::new()));
                continue;
            }
            _ => ValueSource::Literal(v.key_string()),
        };
        fields.insert(key, source);
    }
    if let (Some(secret), true) = (
        connector.webhook.as_ref().and_then(|h| h.verify.field()),
        fields.contains_key(WEBHOOK_AUTH),
    ) {
        if fields.contains_key(secret) {
            diags.push(Diagnostic::error(
                file,
                pos,
                "conflicting-keys",
                format!(
                    "connection `{name}` sets both `{secret}` and `{WEBHOOK_AUTH}: none`; keep one"
                ),
            ));
        }
    }
    for (field, def) in &connector.connection {
        if def.required && !fields.contains_key(field) {
            diags.push(Diagnostic::error(
                file,
                pos,
                "missing-key",
                format!("connection `{name}` needs `{field}`"),
            ));
        }
    }
    Some(ConnectionDecl {
        name: name.to_string(),
        connector: connector_name,
        fields,
        rate_limits,
        concurrency,
        pos,
    })
}
