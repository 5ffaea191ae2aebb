//! What both backends share about rows: times kept as Unix milliseconds, JSON
//! kept as text, and how long a dedupe key is remembered.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::StoreError;

/// How long a dedupe key is remembered.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Now, as stored.
pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A stored time back as an instant (the epoch if out of range).
pub(super) fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A JSON column back as a value; text that does not parse is corruption.
pub(super) fn parse_json(what: &'static str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}
