//! Poll triggers: one list call past the cursor, each new record one
//! event, the cursor moved by compare-and-set with the events.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::OpRef;
use crate::engine::Service;
use crate::interpreter::{self, event};
use crate::recipe::validate::ValidRecipe;
use crate::template::{self};

impl Service {
    /// One poll: records past the cursor become events; the cursor moves
    /// in the same transaction by compare-and-set, so a record is enqueued
    /// once even when several engines poll. How many runs were queued.
    pub async fn poll_once(&self, recipe: &Arc<ValidRecipe>, op: &OpRef) -> Result<usize, String> {
        let poll = op.def().poll.clone().ok_or("poll trigger without `poll`")?;
        let cursor_name = format!("poll:{}", recipe.name);
        let stored = self
            .store
            .cursor(&cursor_name)
            .await
            .map_err(|e| e.to_string())?;
        let cursor = stored.as_deref().map(PollCursor::parse);
        let list = self
            .catalog()
            .op(&format!("{}.{}", op.connector().connector, poll.operation))
            .ok_or("poll list operation missing")?;
        let mut input: serde_json::Map<String, Value> = poll.inputs.clone().into_iter().collect();
        if let Some(w) = &recipe.trigger.with {
            let ctx = template::to_value(&serde_json::json!({ "vars": recipe.vars }));
            if let Value::Object(m) = interpreter::render(w, &ctx).map_err(|e| e.0)? {
                input.extend(m);
            }
        }
        if let Some(c) = &cursor {
            let at = format_cursor(&c.at, poll.cursor_format.as_deref());
            let value = match &poll.cursor_value {
                Some(shape) => with_cursor(shape, &at),
                // An input declared as a number gets a number (`startAfter`
                // in epoch ms), not the digits as a string.
                None => match list.def().inputs.get(&poll.cursor_input).map(|i| i.ty) {
                    Some(
                        crate::catalog::ValueType::Integer | crate::catalog::ValueType::Number,
                    ) => serde_json::from_str::<serde_json::Number>(&at)
                        .map(Value::Number)
                        .unwrap_or(Value::String(at)),
                    _ => Value::String(at),
                },
            };
            input.insert(poll.cursor_input.clone(), value);
        }
        let out = self
            .runtime
            .call(&list, recipe.trigger.connection.as_deref(), &input, None)
            .await
            .map_err(|f| format!("{}: {}", f.error.kind.as_str(), f.error.message))?;
        let records = match out.output {
            Value::Array(items) => items,
            other => match crate::jsonpath::compile(&poll.records)
                .ok()
                .and_then(|p| p.first(&other))
            {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
        };
        let connection = recipe.trigger.connection.clone().unwrap_or_default();
        let mut next = cursor.clone().unwrap_or_default();
        let mut events = Vec::new();
        let only = [recipe.clone()];
        for rec in records {
            let Some(stamp) = rec.get(&poll.cursor_field).map(scalar_text) else {
                continue;
            };
            let id = rec.get(&poll.id_field).map(scalar_text).unwrap_or_default();
            // The API filters at its own granularity: drop what was seen.
            if cursor.as_ref().is_some_and(|c| c.seen(&stamp, &id)) {
                continue;
            }
            next.advance(&stamp, &id);
            let mut ev = self.event_for(op, &connection, event::coerce(op, rec), &only);
            ev.dedupe_key = Some(format!("poll:{}:{stamp}:{id}", recipe.name));
            events.push(ev);
        }
        if events.is_empty() {
            return Ok(0);
        }
        let stored = self
            .store
            .ingest_with_cursor(&cursor_name, stored.as_deref(), &next.to_text(), events)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stored.runs as usize)
    }
}

/// `shape` with every string `{{ cursor }}` replaced by the cursor.
fn with_cursor(shape: &Value, cursor: &str) -> Value {
    match shape {
        Value::String(s) if s.trim() == "{{ cursor }}" => Value::String(cursor.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_cursor(v, cursor)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), with_cursor(v, cursor)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A string value as it is, any other as JSON text.
fn scalar_text(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// Where a poll stands: the newest stamp seen and the ids seen at that
/// stamp. Records of one second share a stamp, and one created in the
/// same second as the last poll's newest must still count as new: a
/// stamp alone (`<=`) would drop it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollCursor {
    /// The newest stamp seen.
    pub at: String,
    /// Ids of the records seen at `at`.
    pub ids: Vec<String>,
}

impl PollCursor {
    /// Reads a stored cursor; a bare stamp (stores written before ids were
    /// kept) has no ids.
    pub fn parse(text: &str) -> PollCursor {
        serde_json::from_str(text).unwrap_or_else(|_| PollCursor {
            at: text.to_string(),
            ids: Vec::new(),
        })
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("cursors serialize")
    }

    /// Whether a record with this stamp and id was seen already.
    pub fn seen(&self, stamp: &str, id: &str) -> bool {
        match compare_stamps(stamp, &self.at) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.ids.iter().any(|i| i == id),
            std::cmp::Ordering::Greater => false,
        }
    }

    /// Takes a new record into account.
    pub fn advance(&mut self, stamp: &str, id: &str) {
        match compare_stamps(stamp, &self.at) {
            _ if self.at.is_empty() => {
                self.at = stamp.to_string();
                self.ids = vec![id.to_string()];
            }
            std::cmp::Ordering::Greater => {
                self.at = stamp.to_string();
                self.ids = vec![id.to_string()];
            }
            std::cmp::Ordering::Equal => self.ids.push(id.to_string()),
            std::cmp::Ordering::Less => {}
        }
    }
}

/// Compares two cursor stamps as what they are: numbers as numbers, times
/// as instants (whatever their offset or precision), anything else as text.
pub fn compare_stamps(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.total_cmp(&y);
    }
    let time = |s: &str| crate::template::parse_time(&minijinja::Value::from(s));
    if let (Some(x), Some(y)) = (time(a), time(b)) {
        return x.cmp(&y);
    }
    a.cmp(b)
}

/// The cursor as the list call wants it (`%Y-%m-%d %H:%M` for SendPulse).
fn format_cursor(cursor: &str, format: Option<&str>) -> String {
    let Some(f) = format else {
        return cursor.to_string();
    };
    match crate::template::parse_time(&minijinja::Value::from(cursor)) {
        Some(t) => t.format(f).to_string(),
        None => cursor.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stamped_in_the_second_of_the_cursor_is_new_unless_its_id_was_seen() {
        let mut c = PollCursor::default();
        c.advance("2026-11-01 10:00:05", "1");
        c.advance("2026-11-01 10:00:05", "2");
        assert!(c.seen("2026-11-01 10:00:05", "1"));
        assert!(!c.seen("2026-11-01 10:00:05", "3"), "same second, new id");
        assert!(c.seen("2026-11-01 10:00:04", "9"));
        assert!(!c.seen("2026-11-01 10:00:06", "1"));
        let back = PollCursor::parse(&c.to_text());
        assert_eq!(back, c);
        // A cursor stored as a bare stamp by an older version.
        assert_eq!(PollCursor::parse("1700000000").at, "1700000000");
    }

    #[test]
    fn stamps_compare_as_numbers_and_instants_not_as_text() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_stamps("9", "10"), Less, "9 < 10, though '9' > '10'");
        assert_eq!(
            compare_stamps("2026-11-01T10:00:00+02:00", "2026-11-01T09:00:00Z"),
            Less,
            "08:00 UTC is before 09:00 UTC"
        );
        assert_eq!(
            compare_stamps("2026-11-01T09:00:00.000Z", "2026-11-01T09:00:00Z"),
            Equal
        );
    }

    #[test]
    fn the_cursor_goes_where_the_search_filter_says() {
        let shape = serde_json::json!([{"field": "dateAdded", "operator": "range", "value": {"gte": "{{ cursor }}"}}]);
        assert_eq!(
            with_cursor(&shape, "2026-12-01T10:00:00.200Z"),
            serde_json::json!([{"field": "dateAdded", "operator": "range", "value": {"gte": "2026-12-01T10:00:00.200Z"}}])
        );
    }
}
