//! From a rendered input to an HTTP request, driven by the operation's
//! declared inputs: the input is checked first (a clear `invalid_input`
//! naming the field, before anything is sent), connection-filled inputs and
//! defaults are added, then path, query, headers and body are built.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::{Map, Value};

use super::errors::StepError;
use crate::catalog::{ErrorKind, InputLocation, Method, OpRef};
use crate::connections::ResolvedConnection;

/// Characters escaped in a path segment: all but RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request ready to send (and to print in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    /// Method.
    pub method: &'static str,
    /// Full URL without the query.
    pub url: String,
    /// Query parameters in order.
    pub query: Vec<(String, String)>,
    /// Headers from the catalog and header inputs (auth is added on send).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
    /// Whether the connection's credentials are added when it is sent.
    pub authenticated: bool,
}

impl Prepared {
    /// The request with the values of credential headers replaced, for
    /// dry-run output and records.
    pub fn redacted(mut self) -> Prepared {
        for (k, v) in &mut self.headers {
            if super::outbound::is_sensitive_header(k) {
                *v = super::outbound::REDACTED.to_string();
            }
        }
        self
    }
}

fn invalid(op: &OpRef, msg: String) -> StepError {
    StepError::new(ErrorKind::InvalidInput, format!("{}: {msg}", op.id()))
}

/// Checks a rendered input against the operation's inputs and completes it
/// with connection values and defaults.
pub fn complete_input(
    op: &OpRef,
    conn: Option<&ResolvedConnection>,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, StepError> {
    let def = op.def();
    let mut out = Map::new();
    for (name, value) in input {
        let Some(spec) = def.inputs.get(name) else {
            return Err(invalid(op, format!("unknown input `{name}`")));
        };
        if value.is_null() {
            if spec.required && !spec.nullable {
                return Err(invalid(
                    op,
                    format!("input `{name}` is required but rendered to null"),
                ));
            }
        } else if !spec.ty.accepts(value) {
            return Err(invalid(
                op,
                format!(
                    "input `{name}` must be {}, got {}",
                    spec.ty.as_str(),
                    short(value)
                ),
            ));
        } else if let Some(allowed) = &spec.allowed {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                return Err(invalid(
                    op,
                    format!(
                        "input `{name}` must be one of {}, got {}",
                        list.join(", "),
                        short(value)
                    ),
                ));
            }
        }
        out.insert(name.clone(), value.clone());
    }
    for (name, spec) in &def.inputs {
        if out.contains_key(name) {
            continue;
        }
        if let Some(field) = &spec.from_connection {
            match conn.and_then(|c| c.get(field)) {
                Some(v) => {
                    out.insert(name.clone(), Value::String(v.expose().to_string()));
                }
                None if spec.required => {
                    return Err(invalid(op, format!("input `{name}` comes from the connection's `{field}`, which is not set")));
                }
                None => {}
            }
        } else if let Some(d) = &spec.default {
            out.insert(name.clone(), d.clone());
        } else if spec.required {
            return Err(invalid(op, format!("input `{name}` is required")));
        }
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

/// Builds the request for a completed input.
pub fn prepare(
    op: &OpRef,
    base_url: &str,
    input: &Map<String, Value>,
) -> Result<Prepared, StepError> {
    let def = op.def();
    let (Some(method), Some(path)) = (def.method, def.path.as_deref()) else {
        return Err(invalid(op, "not an HTTP operation".into()));
    };
    let mut url_path = String::with_capacity(path.len() + 16);
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        url_path.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .unwrap_or(rest.len());
        let name = &rest[open + 1..close];
        let value = input
            .get(name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| invalid(op, format!("path parameter `{name}` has no value")))?;
        let text = scalar_text(value);
        if text.is_empty() {
            return Err(invalid(op, format!("path parameter `{name}` is empty")));
        }
        if is_dot_segment(&text) {
            // `..` would climb the API's path (`/contacts/../users`); a
            // server that decodes twice makes `%2e%2e` do the same.
            return Err(invalid(
                op,
                format!("path parameter `{name}` is `.` or `..` (or an encoding of them)"),
            ));
        }
        url_path.extend(utf8_percent_encode(&text, SEGMENT));
        rest = &rest[(close + 1).min(rest.len())..];
    }
    url_path.push_str(rest);

    let mut query = Vec::new();
    let mut headers: Vec<(String, String)> = op
        .connector()
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let mut body: Option<Value> = None;
    for (name, spec) in &def.inputs {
        let Some(value) = input.get(name) else {
            continue;
        };
        let wire = spec.wire_name.clone().unwrap_or_else(|| name.clone());
        match spec.location {
            InputLocation::Path => {}
            InputLocation::Query => match value {
                Value::Null => {}
                Value::Array(items) => {
                    query.extend(items.iter().map(|i| (wire.clone(), scalar_text(i))))
                }
                v => query.push((wire, scalar_text(v))),
            },
            InputLocation::Header => {
                if !value.is_null() {
                    let key = wire.to_ascii_lowercase();
                    headers.retain(|(k, _)| *k != key);
                    headers.push((key, scalar_text(value)));
                }
            }
            InputLocation::Body => {
                let obj = body.get_or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = obj {
                    m.insert(wire, value.clone());
                }
            }
            InputLocation::BodyRoot => body = Some(value.clone()),
        }
    }
    // APIs that want a JSON body on a write get `{}` rather than none.
    if body.is_none() && matches!(method, Method::Post | Method::Put | Method::Patch) {
        body = Some(Value::Object(Map::new()));
    }
    Ok(Prepared {
        method: method.as_str(),
        url: format!("{}{url_path}", base_url.trim_end_matches('/')),
        query,
        headers,
        body,
        authenticated: !matches!(op.connector().auth, crate::catalog::Auth::None),
    })
}

/// Whether a path parameter is `.` or `..` once percent-decoded, as many
/// times as a server might decode it.
fn is_dot_segment(text: &str) -> bool {
    let mut t = std::borrow::Cow::Borrowed(text);
    for _ in 0..4 {
        if t == "." || t == ".." {
            return true;
        }
        let decoded = percent_encoding::percent_decode_str(&t).decode_utf8_lossy();
        if decoded == t {
            return false;
        }
        t = std::borrow::Cow::Owned(decoded.into_owned());
    }
    t == "." || t == ".."
}

/// A scalar as text for paths, queries and headers (strings unquoted).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn path_params_are_percent_encoded() {
        let cat = Catalog::builtin();
        let op = cat.op("sendpulse.subscribers.get").unwrap();
        let input =
            complete_input(&op, None, &obj(json!({"id": 12, "email": "a+b/c@x.com"}))).unwrap();
        let p = prepare(&op, "http://h/", &input).unwrap();
        assert_eq!(p.url, "http://h/addressbooks/12/emails/a%2Bb%2Fc%40x.com");
        assert_eq!(p.method, "GET");
        assert!(p.body.is_none());
    }

    #[test]
    fn dot_segments_in_path_params_are_invalid_input() {
        let cat = Catalog::builtin();
        let op = cat.op("ghl.contacts.get").unwrap();
        for bad in ["..", ".", "%2e%2e", "%2E.", ".%2e", "%252e%252e", "%2e"] {
            let input = complete_input(&op, None, &obj(json!({"contactId": bad}))).unwrap();
            let e = prepare(&op, "http://h", &input).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
            assert!(e.message.contains("`.` or `..`"), "{bad}: {}", e.message);
        }
        for ok in ["a..b", "...", "c.1", "%2e%2e%2f"] {
            let input = complete_input(&op, None, &obj(json!({"contactId": ok}))).unwrap();
            assert!(prepare(&op, "http://h", &input).is_ok(), "{ok}");
        }
    }

    #[test]
    fn unknown_missing_and_mistyped_inputs_are_invalid_input() {
        let cat = Catalog::builtin();
        let op = cat.op("ghl.tasks.create").unwrap();
        let e = complete_input(
            &op,
            None,
            &obj(json!({"contactId": "c", "title": "t", "dueDate": "d", "completed": "yes"})),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.message,
            "ghl.tasks.create: input `completed` must be boolean, got \"yes\""
        );
        let e = complete_input(
            &op,
            None,
            &obj(json!({"contactId": "c", "title": "t", "completed": true})),
        )
        .unwrap_err();
        assert_eq!(e.message, "ghl.tasks.create: input `dueDate` is required");
        let e = complete_input(&op, None, &obj(json!({"nope": 1}))).unwrap_err();
        assert_eq!(e.message, "ghl.tasks.create: unknown input `nope`");
    }

    #[test]
    fn delete_with_json_body_and_connection_inputs() {
        let cat = Catalog::builtin();
        let op = cat.op("ghl.tags.remove").unwrap();
        let input =
            complete_input(&op, None, &obj(json!({"contactId": "c1", "tags": ["a"]}))).unwrap();
        let p = prepare(&op, "http://h", &input).unwrap();
        assert_eq!(
            (p.method, p.url.as_str()),
            ("DELETE", "http://h/contacts/c1/tags")
        );
        assert_eq!(p.body, Some(json!({"tags": ["a"]})));
        assert!(p.headers.contains(&("version".into(), "2021-07-28".into())));
    }
}
