//! Trigger kinds, in one place: what each is called, whether the engine
//! runs a loop for it, and how a hand-written fixture (`patchbay fire`'s
//! event file, a test case's `event`, the console's preview) becomes its
//! events — the same way for all three, and the way the server takes a
//! webhook delivery ([`crate::interpreter::event::delivery`]). Polls
//! ([`poll`]) and schedules ([`schedule`]) fire from their loops.
//!
//! A new trigger kind is a variant of [`TriggerKind`] with its validation
//! (src/recipe/validate.rs), its arms here, and its firing in a module of
//! this folder.

pub mod poll;
pub mod schedule;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::catalog::{Catalog, Split};
use crate::interpreter::event::{self, DeliveryError};
use crate::recipe::validate::TriggerKind;

impl TriggerKind {
    /// `webhook`, `poll` or `schedule`, as operators see it.
    pub fn label(&self) -> &'static str {
        match self {
            TriggerKind::Webhook(_) => "webhook",
            TriggerKind::Poll { .. } => "poll",
            TriggerKind::Every(_) | TriggerKind::Cron { .. } => "schedule",
        }
    }

    /// Whether the engine fires it from a loop of its own (polls and
    /// schedules) rather than from deliveries to the server.
    pub fn is_timed(&self) -> bool {
        !matches!(self, TriggerKind::Webhook(_))
    }
}

/// Why a fixture makes no events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixtureError {
    /// Webhook and poll triggers need a payload.
    #[error("no event given ({0})")]
    Missing(&'static str),
    /// The delivery is one the server would refuse.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// No item of the delivery is an event of the recipe's trigger.
    #[error("no item of the delivery is a {0} event")]
    NoMatch(String),
}

/// How a webhook fixture is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Exactly as the server takes a delivery (test files: a case that
    /// passes must be a delivery the server accepts).
    Delivery,
    /// A delivery or a single event (`fire`, the console's preview): a
    /// single object is a one-item delivery where the connector sends
    /// arrays (SendPulse), and an array where it sends one event per
    /// request (HighLevel) is several deliveries.
    EventOrDelivery,
}

/// The event payloads a fixture makes for a trigger of `kind`, coerced as
/// the engine coerces them:
/// - webhook: a delivery (read as `shape` says), routed as the server
///   routes it (items of other triggers are left out; at least one must
///   be this trigger's).
/// - poll: one polled record, or an array of them (a page).
/// - schedule: the object given, else the tick's own event at `now`.
pub fn fixture_events(
    catalog: &Catalog,
    kind: &TriggerKind,
    fixture: Option<Value>,
    shape: Shape,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, FixtureError> {
    match kind {
        TriggerKind::Webhook(op) => {
            let value = fixture.ok_or(FixtureError::Missing("the webhook delivery"))?;
            let splits = op
                .connector()
                .webhook
                .as_ref()
                .is_some_and(|h| h.split == Split::Array);
            let deliveries = match value {
                value if shape == Shape::Delivery => vec![value],
                Value::Object(_) if splits => vec![Value::Array(vec![value])],
                Value::Array(items) if !splits => items,
                other => vec![other],
            };
            let mut events = Vec::new();
            for d in deliveries {
                events.extend(event::for_trigger(catalog, op, d)?);
            }
            if events.is_empty() {
                return Err(FixtureError::NoMatch(op.id().to_string()));
            }
            Ok(events)
        }
        TriggerKind::Poll { op, .. } => {
            let value = fixture.ok_or(FixtureError::Missing("the polled records"))?;
            Ok(event::split(value, true)
                .into_iter()
                .map(|p| event::coerce(op, p))
                .collect())
        }
        TriggerKind::Every(_) | TriggerKind::Cron { .. } => {
            Ok(vec![fixture.unwrap_or_else(|| event::schedule_event(now))])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind_of(trigger: &str) -> TriggerKind {
        let catalog = Catalog::builtin();
        let text = format!("recipe: r\ntrigger: {trigger}\nsteps:\n  - id: s\n    action: store.put\n    with: {{ namespace: n, key: k, value: v }}\n");
        let loaded = crate::recipe::load::load_texts(&[("r.yaml".into(), text)], &catalog, None);
        assert_eq!(loaded.errors(), 0, "{:?}", loaded.diagnostics);
        loaded.recipes[0].trigger.kind.clone()
    }

    #[test]
    fn a_single_sendpulse_event_is_a_one_item_delivery_and_other_types_are_left_out() {
        let catalog = Catalog::builtin();
        let kind = kind_of("{ on: sendpulse.subscriber.added }");
        let one = json!({"event": "new_emails", "book_id": "7", "email": "a@example.com", "timestamp": "1"});
        let events = fixture_events(
            &catalog,
            &kind,
            Some(one.clone()),
            Shape::EventOrDelivery,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["book_id"], json!(7), "coerced as the server does");
        assert_eq!(
            fixture_events(
                &catalog,
                &kind,
                Some(one.clone()),
                Shape::Delivery,
                Utc::now()
            ),
            Err(FixtureError::Delivery(DeliveryError::NotArray {
                title: "SendPulse".into()
            })),
            "the server takes only arrays from SendPulse"
        );
        let other = json!({"event": "unsubscribe", "book_id": "7", "email": "a@example.com", "timestamp": "1"});
        let events = fixture_events(
            &catalog,
            &kind,
            Some(json!([one, other])),
            Shape::Delivery,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            fixture_events(
                &catalog,
                &kind,
                Some(json!([other])),
                Shape::Delivery,
                Utc::now()
            ),
            Err(FixtureError::NoMatch("sendpulse.subscriber.added".into()))
        );
        assert_eq!(
            fixture_events(&catalog, &kind, None, Shape::Delivery, Utc::now()),
            Err(FixtureError::Missing("the webhook delivery"))
        );
    }

    #[test]
    fn a_schedule_fixture_defaults_to_the_tick_event() {
        let catalog = Catalog::builtin();
        let kind = kind_of("{ every: 1h }");
        assert_eq!(kind.label(), "schedule");
        assert!(kind.is_timed());
        let now = Utc::now();
        let events = fixture_events(&catalog, &kind, None, Shape::Delivery, now).unwrap();
        assert_eq!(events, vec![event::schedule_event(now)]);
    }
}
