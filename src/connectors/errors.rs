//! Step errors and the classification of API answers into error kinds,
//! driven by each connector's `errors:` rules.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{ConnectorDef, ErrorKind};

/// A failed operation call, as `error` / `steps.<id>.error` in recipes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}", kind = kind.as_str())]
pub struct StepError {
    /// The kind (`conflict`, `rate_limited`, ...).
    pub kind: ErrorKind,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The API's own message when it gave one.
    pub message: String,
    /// The parsed response body, or null.
    pub body: Value,
}

impl StepError {
    /// An error without an HTTP answer.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StepError {
        StepError {
            kind,
            status: None,
            message: message.into(),
            body: Value::Null,
        }
    }

    /// The error as the JSON object templates see.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "status": self.status,
            "message": self.message,
            "body": self.body,
        })
    }
}

/// The kind a bare status maps to when no rule matches.
pub fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 | 410 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        422 => ErrorKind::Unprocessable,
        429 => ErrorKind::RateLimited,
        408 => ErrorKind::Timeout,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    }
}

/// Classifies a non-2xx answer (or a 2xx whose body says it failed, such
/// as SendPulse's `error_code`) with the connector's rules.
pub fn classify(connector: &ConnectorDef, status: u16, body_text: &str) -> StepError {
    let body: Value = serde_json::from_str(body_text).unwrap_or(Value::Null);
    let message = message_of(connector, &body, body_text, status);
    let lower = message.to_lowercase();
    let kind = connector
        .errors
        .rules
        .iter()
        .find(|r| {
            r.status.is_none_or(|s| s == status)
                && r.body_has
                    .as_ref()
                    .is_none_or(|p| lookup(&body, p).is_some_and(|v| !v.is_null()))
                && r.body_equals
                    .as_ref()
                    .is_none_or(|e| lookup(&body, &e.path) == Some(&e.value))
                && r.message_contains
                    .as_ref()
                    .is_none_or(|m| lower.contains(&m.to_lowercase()))
        })
        .map(|r| r.kind)
        .unwrap_or_else(|| kind_for_status(status));
    StepError {
        kind,
        status: Some(status),
        message,
        body: if body.is_null() && !body_text.is_empty() {
            Value::String(truncate(body_text, 2000))
        } else {
            body
        },
    }
}

/// The API's message: the first configured body path that has one (arrays
/// joined with `; `), else text from an HTML or plain body, else the status.
fn message_of(connector: &ConnectorDef, body: &Value, text: &str, status: u16) -> String {
    for path in &connector.errors.message {
        match lookup(body, path) {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(Value::Array(items)) if !items.is_empty() => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect();
                return parts.join("; ");
            }
            _ => {}
        }
    }
    // Field-keyed validation maps (HighLevel v1 422): `{"email": {"message": "..."}}`.
    if let Some(obj) = body.as_object() {
        let parts: Vec<String> = obj
            .iter()
            .filter_map(|(k, v)| {
                v.get("message")
                    .and_then(Value::as_str)
                    .map(|m| format!("{k}: {m}"))
            })
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    if body.is_null() && !text.trim().is_empty() {
        let plain = strip_html(text);
        if !plain.is_empty() {
            return format!("HTTP {status}: {}", truncate(&plain, 200));
        }
    }
    format!("HTTP {status}")
}

/// A dotted path (`meta.contactId`, `data.message`) into a JSON value.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The text of an HTML page: its `<title>` if any, else the tags removed.
fn strip_html(text: &str) -> String {
    let lower = text.to_lowercase();
    if let (Some(a), Some(b)) = (lower.find("<title>"), lower.find("</title>")) {
        if a + 7 <= b {
            return text[a + 7..b].trim().to_string();
        }
    }
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn ghl() -> ConnectorDef {
        Catalog::builtin().connector("ghl").unwrap().clone()
    }

    fn sendpulse() -> ConnectorDef {
        Catalog::builtin().connector("sendpulse").unwrap().clone()
    }

    #[test]
    fn ghl_duplicate_contact_is_a_conflict() {
        let e = classify(
            &ghl(),
            400,
            r#"{"statusCode":400,"message":"This location does not allow duplicated contacts.","meta":{"contactId":"abc","matchingField":"email"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(
            e.message,
            "This location does not allow duplicated contacts."
        );
        assert_eq!(e.body["meta"]["contactId"], "abc");
    }

    #[test]
    fn ghl_unknown_contact_is_not_found_and_plain_400_is_bad_request() {
        assert_eq!(
            classify(
                &ghl(),
                400,
                r#"{"statusCode":400,"message":"Contact not found"}"#
            )
            .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(&ghl(), 400, r#"{"statusCode":400,"message":"Bad Request"}"#).kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn ghl_422_message_array_is_joined() {
        let e = classify(
            &ghl(),
            422,
            r#"{"statusCode":422,"message":["property gender should not exist","email must be an email"],"error":"Unprocessable Entity"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Unprocessable);
        assert_eq!(
            e.message,
            "property gender should not exist; email must be an email"
        );
    }

    #[test]
    fn v1_field_keyed_422_lists_fields() {
        let v1 = Catalog::builtin().connector("ghl_v1").unwrap().clone();
        let e = classify(
            &v1,
            422,
            r#"{"email or phone": {"message": "The email or phone field is mandatory.", "rule": "required"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::Unprocessable);
        assert_eq!(
            e.message,
            "email or phone: The email or phone field is mandatory."
        );
    }

    #[test]
    fn sendpulse_error_codes_map_to_kinds() {
        let e = classify(
            &sendpulse(),
            429,
            r#"{"message":"More than 10 requests per second","error_code":2020202020}"#,
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        let e = classify(
            &sendpulse(),
            400,
            r#"{"message":"Book not found","error_code":213}"#,
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.message, "Book not found");
    }

    #[test]
    fn html_error_pages_give_their_title() {
        let e = classify(
            &ghl(),
            502,
            "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        );
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.message, "HTTP 502: 502 Bad Gateway");
        let e = classify(&ghl(), 403, "<p>Forbidden <b>here</b></p>");
        assert_eq!(e.message, "HTTP 403: Forbidden here");
    }
}
