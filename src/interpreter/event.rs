//! Event payloads as recipes see them: declared payload fields coerced to
//! their types (SendPulse sends every value as a string) and present (null
//! when the delivery lacks them), so `event.book_id == vars.leads_book`
//! compares numbers and `event.startAt and ...` never reads an undefined.
//! [`delivery`] turns a webhook delivery into events for the server,
//! `patchbay fire` and `patchbay test` alike, so the three agree.

use serde_json::{Map, Value};

use crate::catalog::{Catalog, ConnectorDef, OpKind, OpRef, Split, ValueType};

/// Why a webhook delivery is not taken. The messages are the server's
/// answers, so `fire` and `test` say what `patchbay run` would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// An array-splitting connector (SendPulse) was sent something else.
    #[error("{title} deliveries are a JSON array of events")]
    NotArray {
        /// The connector's title.
        title: String,
    },
    /// An item lacks the field naming its type: no trigger takes it.
    #[error("item {item} of the delivery has no `{field}` field naming its event type, so no trigger takes it")]
    Untyped {
        /// 1-based position in the delivery.
        item: usize,
        /// The connector's type field (`event`, `type`).
        field: String,
    },
}

/// Why one item of a delivery is no trigger's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The connector names event types and the item has no type field.
    Untyped,
    /// No webhook trigger of the connector has the item's type.
    UnknownType,
}

/// One item of a delivery: the trigger it fires and its coerced payload.
pub type Item = Result<(OpRef, Value), Unmatched>;

/// A webhook delivery to `connector` as events: split per its catalog
/// entry (SendPulse: one event per array item; HighLevel, `http.webhook`:
/// the body is one event), each item's type matched to a webhook trigger,
/// payloads coerced. Lazy and moving: this is the server's hot path.
pub fn delivery<'a>(
    catalog: &'a Catalog,
    connector: &'a ConnectorDef,
    body: Value,
) -> Result<impl ExactSizeIterator<Item = Item> + 'a, DeliveryError> {
    let hook = connector.webhook.as_ref();
    let array = hook.is_some_and(|h| h.split == Split::Array);
    if array && !body.is_array() {
        return Err(DeliveryError::NotArray {
            title: connector.title.clone(),
        });
    }
    let type_field = hook.and_then(|h| h.type_field.as_deref());
    Ok(split(body, array).into_iter().map(move |payload| {
        let op = trigger_of(catalog, &connector.connector, type_field, &payload)?;
        let payload = coerce(&op, payload);
        Ok((op, payload))
    }))
}

/// The webhook trigger an item fires: the one whose event type is the
/// item's type field, or the connector's untyped one when it has no field.
fn trigger_of(
    catalog: &Catalog,
    connector: &str,
    type_field: Option<&str>,
    payload: &Value,
) -> Result<OpRef, Unmatched> {
    let ty = match type_field {
        None => None,
        Some(f) => Some(
            payload
                .get(f)
                .and_then(Value::as_str)
                .ok_or(Unmatched::Untyped)?,
        ),
    };
    catalog
        .operations_of(connector)
        .find(|o| o.def().kind == OpKind::Webhook && o.def().event_type.as_deref() == ty)
        .ok_or(Unmatched::UnknownType)
}

/// The events of a delivery that fire `op`, routed as the server routes
/// them (items of other triggers are left out). For `fire` and `test`: a
/// file written by hand with an untyped item is a mistake, so an error.
pub fn for_trigger(
    catalog: &Catalog,
    op: &OpRef,
    body: Value,
) -> Result<Vec<Value>, DeliveryError> {
    let connector = op.connector();
    let mut events = Vec::new();
    for (i, item) in delivery(catalog, connector, body)?.enumerate() {
        match item {
            Ok((o, payload)) if o.name() == op.name() => events.push(payload),
            Ok(_) | Err(Unmatched::UnknownType) => {}
            Err(Unmatched::Untyped) => {
                return Err(DeliveryError::Untyped {
                    item: i + 1,
                    field: connector
                        .webhook
                        .as_ref()
                        .and_then(|h| h.type_field.clone())
                        .unwrap_or_default(),
                })
            }
        }
    }
    Ok(events)
}

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

    fn ops(cat: &Catalog, connector: &str, body: Value) -> Vec<Result<(String, Value), Unmatched>> {
        let def = cat.connector(connector).unwrap();
        delivery(cat, def, body)
            .unwrap()
            .map(|i| i.map(|(op, p)| (op.id().to_string(), p)))
            .collect()
    }

    #[test]
    fn a_sendpulse_delivery_is_one_coerced_event_per_item_routed_by_type() {
        let cat = Catalog::builtin();
        let got = ops(
            &cat,
            "sendpulse",
            json!([
                {"event": "new_emails", "book_id": "1"},
                {"event": "unsubscribe", "book_id": "1"},
                {"book_id": "1"},
                {"event": "no_such_event"}
            ]),
        );
        let Ok((op, payload)) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            (op.as_str(), &payload["book_id"]),
            ("sendpulse.subscriber.added", &json!(1))
        );
        assert!(matches!(&got[1], Ok((op, _)) if op == "sendpulse.subscriber.unsubscribed"));
        assert_eq!(got[2], Err(Unmatched::Untyped));
        assert_eq!(got[3], Err(Unmatched::UnknownType));
    }

    #[test]
    fn a_sendpulse_delivery_that_is_not_an_array_is_refused() {
        let cat = Catalog::builtin();
        let def = cat.connector("sendpulse").unwrap();
        let err = delivery(&cat, def, json!({"event": "new_emails"})).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("SendPulse deliveries are a JSON array of events")
        );
    }

    #[test]
    fn a_highlevel_delivery_is_one_event_named_by_its_type() {
        let cat = Catalog::builtin();
        let got = ops(&cat, "ghl", json!({"type": "ContactCreate", "id": "c1"}));
        assert!(
            matches!(&got[..], [Ok((op, _))] if op == "ghl.contact.created"),
            "{got:?}"
        );
        assert_eq!(
            ops(&cat, "ghl", json!({"id": "c1"})),
            vec![Err(Unmatched::Untyped)]
        );
    }

    #[test]
    fn an_http_webhook_body_is_the_event_as_is() {
        let cat = Catalog::builtin();
        let body = json!([{"any": "thing"}]);
        assert_eq!(
            ops(&cat, "http", body.clone()),
            vec![Ok(("http.webhook".to_string(), body))]
        );
    }

    #[test]
    fn for_trigger_keeps_its_own_items_and_refuses_untyped_ones() {
        let cat = Catalog::builtin();
        let op = cat.op("sendpulse.subscriber.added").unwrap();
        let events = for_trigger(
            &cat,
            &op,
            json!([{"event": "unsubscribe", "email": "a"}, {"event": "new_emails", "email": "b"}]),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["email"], json!("b"));
        assert_eq!(
            for_trigger(&cat, &op, json!([{"event": "new_emails"}, {"email": "c"}]))
                .unwrap_err()
                .to_string(),
            "item 2 of the delivery has no `event` field naming its event type, so no trigger takes it"
        );
    }
}
