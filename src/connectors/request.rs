//! From a rendered input to an HTTP request, driven by the operation's
//! declared inputs: the input is checked first (a clear `invalid_input`
//! naming the field, before anything is sent), connection-filled inputs and
//! defaults are added, then path, query, headers and body are built.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::{Map, Value};

use super::errors::StepError;
use crate::catalog::{Encoding, ErrorKind, InputDef, InputLocation, Method, OpRef, ValueEncoding};
use crate::connections::ResolvedConnection;

/// Characters escaped in a path segment: all but RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Characters escaped in `application/x-www-form-urlencoded` (the WHATWG
/// URL standard's set; an escaped space then becomes `+`).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The content type of form bodies.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

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
    /// The body: the JSON value sent, or for a form body an object of the
    /// fields sent (text, or lists of text for repeated fields).
    pub body: Option<Value>,
    /// How `body` is written: JSON (left out when serialized) or `form`.
    #[serde(skip_serializing_if = "Encoding::is_json")]
    pub encoding: Encoding,
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

    /// The body as it goes on the wire: JSON text, or the form-encoded
    /// fields (`a=1&b=x+y`, by name). Live requests and dry runs both use
    /// this.
    pub fn body_text(&self) -> Option<String> {
        let body = self.body.as_ref()?;
        Some(match self.encoding {
            Encoding::Json => body.to_string(),
            Encoding::Form => form_encode(body),
        })
    }
}

/// A form body's fields (an object of text or lists of text) encoded as
/// `application/x-www-form-urlencoded`.
fn form_encode(body: &Value) -> String {
    let mut out = String::new();
    let mut pair = |k: &str, v: &str| {
        if !out.is_empty() {
            out.push('&');
        }
        // A literal `%20` was escaped to `%2520`: only spaces become `+`.
        let enc = |s: &str| utf8_percent_encode(s, FORM).to_string().replace("%20", "+");
        out.push_str(&enc(k));
        out.push('=');
        out.push_str(&enc(v));
    };
    if let Value::Object(m) = body {
        for (k, v) in m {
            match v {
                Value::Array(items) => items.iter().for_each(|i| pair(k, &scalar_text(i))),
                Value::Null => {}
                v => pair(k, &scalar_text(v)),
            }
        }
    }
    out
}

/// An input's value as it goes on the wire: as given, or in the form its
/// `encode` names. The error says why the value cannot be encoded.
pub fn wire_value(spec: &InputDef, value: &Value) -> Result<Value, String> {
    match (spec.encode, value) {
        (None, v) | (Some(_), v @ Value::Null) => Ok(v.clone()),
        (Some(ValueEncoding::Base64CommaList), Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(format!("every item must be a string, got {}", short(item)));
                };
                if s.contains(',') {
                    return Err(format!(
                        "item {} contains a comma, which would split it in two",
                        short(item)
                    ));
                }
                parts.push(s.as_str());
            }
            use base64::Engine as _;
            Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(parts.join(",")),
            ))
        }
        (Some(e), other) => Err(format!(
            "`{}` takes a list, got {}",
            e.as_str(),
            short(other)
        )),
    }
}

/// A form field's value: text, or a list of text (repeated fields).
fn form_value(value: &Value) -> Result<Value, String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Array(_) | Value::Object(_) => Err(format!(
                    "a form field takes text, numbers, booleans or a list of them, got {}",
                    short(value)
                )),
                i => Ok(Value::String(scalar_text(i))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(_) => Err(format!(
            "a form field takes text, numbers, booleans or a list of them, got {}",
            short(value)
        )),
        Value::Null => Ok(Value::Null),
        v => Ok(Value::String(scalar_text(v))),
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
    let form = def.body_encoding == Encoding::Form;
    for (name, spec) in &def.inputs {
        let Some(value) = input.get(name) else {
            continue;
        };
        let encoded;
        let value = if spec.encode.is_some() {
            encoded =
                wire_value(spec, value).map_err(|m| invalid(op, format!("input `{name}`: {m}")))?;
            &encoded
        } else {
            value
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
                let value = if form {
                    match form_value(value) {
                        Ok(Value::Null) => continue,
                        Ok(v) => v,
                        Err(m) => return Err(invalid(op, format!("input `{name}`: {m}"))),
                    }
                } else {
                    value.clone()
                };
                let obj = body.get_or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = obj {
                    m.insert(wire, value);
                }
            }
            InputLocation::BodyRoot if form => {
                return Err(invalid(
                    op,
                    format!("input `{name}` is the whole body, which a form body cannot be"),
                ))
            }
            InputLocation::BodyRoot => body = Some(value.clone()),
        }
    }
    // APIs that want a JSON body on a write get `{}` rather than none.
    if body.is_none() && matches!(method, Method::Post | Method::Put | Method::Patch) {
        body = Some(Value::Object(Map::new()));
    }
    if form && body.is_some() {
        headers.retain(|(k, _)| k != "content-type");
        headers.push(("content-type".into(), FORM_CONTENT_TYPE.into()));
    }
    Ok(Prepared {
        method: method.as_str(),
        url: format!("{}{url_path}", base_url.trim_end_matches('/')),
        query,
        headers,
        body,
        encoding: def.body_encoding,
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

    fn form_catalog() -> Catalog {
        let text = "connector: f\ntitle: F\noperations:\n  t.post:\n    title: T\n    method: POST\n    path: /t\n    body_encoding: form\n    inputs:\n      a: { type: string }\n      n: { type: integer }\n      tags: { type: array }\n      gone: { type: string, nullable: true }\n      meta: { type: any }\n      csv: { type: array, encode: base64_comma_list }\n";
        Catalog::builtin().with_connector(crate::catalog::parse_connector("f.yaml", text).unwrap())
    }

    #[test]
    fn a_form_body_is_its_fields_as_text_and_is_sent_encoded() {
        let cat = form_catalog();
        let op = cat.op("f.t.post").unwrap();
        let input = complete_input(
            &op,
            None,
            &obj(json!({"a": "x y&z=%20é", "n": 3, "tags": ["p", 2], "gone": null, "csv": ["a@x.io", "b@y.io"]})),
        )
        .unwrap();
        let p = prepare(&op, "http://h", &input).unwrap();
        assert_eq!(p.encoding, crate::catalog::Encoding::Form);
        assert_eq!(
            p.body,
            Some(
                json!({"a": "x y&z=%20é", "n": "3", "tags": ["p", "2"], "csv": "YUB4LmlvLGJAeS5pbw=="})
            )
        );
        assert!(p
            .headers
            .contains(&("content-type".into(), FORM_CONTENT_TYPE.into())));
        assert_eq!(
            p.body_text().unwrap(),
            "a=x+y%26z%3D%2520%C3%A9&csv=YUB4LmlvLGJAeS5pbw%3D%3D&n=3&tags=p&tags=2"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["encoding"], "form");
        // An object cannot be a form field.
        let input = complete_input(&op, None, &obj(json!({"meta": {"k": 1}}))).unwrap();
        let e = prepare(&op, "http://h", &input).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.contains("input `meta`: a form field takes"),
            "{}",
            e.message
        );
        // JSON bodies say nothing of their encoding.
        let op = cat.op("ghl.tags.add").unwrap();
        let input =
            complete_input(&op, None, &obj(json!({"contactId": "c1", "tags": ["a"]}))).unwrap();
        let p = prepare(&op, "http://h", &input).unwrap();
        assert!(serde_json::to_value(&p).unwrap().get("encoding").is_none());
        assert_eq!(p.body_text().unwrap(), r#"{"tags":["a"]}"#);
    }

    #[test]
    fn a_base64_comma_list_refuses_what_it_cannot_join() {
        let cat = form_catalog();
        let op = cat.op("f.t.post").unwrap();
        for (bad, says) in [
            (json!(["a,b@x.io"]), "contains a comma"),
            (json!([1]), "every item must be a string"),
        ] {
            let input = complete_input(&op, None, &obj(json!({ "csv": bad }))).unwrap();
            let e = prepare(&op, "http://h", &input).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput);
            assert!(e.message.contains(says), "{}", e.message);
        }
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
