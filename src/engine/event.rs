//! Event payloads as recipes see them: declared payload fields coerced to
//! their types (SendPulse sends every value as a string) and present (null
//! when the delivery lacks them), so `event.book_id == vars.leads_book`
//! compares numbers and `event.startAt and ...` never reads an undefined.

use serde_json::{Map, Value};

use crate::catalog::{OpRef, ValueType};

/// Coerces a trigger payload by the operation's declared fields.
pub fn coerce(op: &OpRef, payload: Value) -> Value {
    let Value::Object(mut m) = payload else {
        return payload;
    };
    for (name, field) in &op.def().payload {
        let v = m.remove(name).unwrap_or(Value::Null);
        m.insert(name.clone(), coerce_value(field.ty, v));
    }
    Value::Object(m)
}

/// One value to a declared type; values that do not convert stay as they are.
pub fn coerce_value(ty: ValueType, v: Value) -> Value {
    let Value::String(s) = &v else { return v };
    let t = s.trim();
    match ty {
        ValueType::Integer => t.parse::<i64>().map(Value::from).unwrap_or(v),
        ValueType::Number => t
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| {
                t.parse::<f64>().map(|f| {
                    serde_json::Number::from_f64(f)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                })
            })
            .unwrap_or(v),
        ValueType::Boolean => match t {
            "true" | "1" => Value::Bool(true),
            "false" | "0" | "" => Value::Bool(false),
            _ => v,
        },
        ValueType::Object | ValueType::Array if t.starts_with(['{', '[']) => {
            serde_json::from_str(t).unwrap_or(v)
        }
        _ => v,
    }
}

/// Splits a webhook delivery into event payloads: a JSON array is one
/// event per item, anything else one event.
pub fn split(body: Value, array: bool) -> Vec<Value> {
    match (body, array) {
        (Value::Array(items), true) => items,
        (other, _) => vec![other],
    }
}

/// An empty object, for schedules.
pub fn schedule_event(at: chrono::DateTime<chrono::Utc>) -> Value {
    let mut m = Map::new();
    m.insert("scheduled_at".into(), Value::String(at.to_rfc3339()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use serde_json::json;

    #[test]
    fn sendpulse_string_values_become_typed_and_missing_fields_null() {
        let cat = Catalog::builtin();
        let op = cat.op("sendpulse.subscriber.added").unwrap();
        let e = coerce(
            &op,
            json!({"event": "new_emails", "book_id": "490686", "email": "a@b.c", "timestamp": "1496827422"}),
        );
        assert_eq!(e["book_id"], json!(490686));
        assert_eq!(e["timestamp"], json!(1496827422));
        assert_eq!(e["email"], json!("a@b.c"));
        assert_eq!(e["variables"], Value::Null);
    }

    #[test]
    fn values_that_do_not_convert_are_kept() {
        assert_eq!(coerce_value(ValueType::Integer, json!("abc")), json!("abc"));
        assert_eq!(
            coerce_value(ValueType::Object, json!("{\"a\":1}")),
            json!({"a": 1})
        );
    }
}
