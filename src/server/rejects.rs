//! Rejected webhook deliveries: every one is counted by reason (for
//! `/metrics`), and only a rate-limited sample is written to the store, so
//! a flood of requests with bad tokens or made-up connection names costs
//! the engine no store write each. The counters are per process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::verify::VerifyError;

/// The longest connection name recorded or logged (names come from URLs).
pub const MAX_NAME_CHARS: usize = 64;

/// The longest reason message recorded.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// Rejections recorded in the store per minute, at most (a burst may use
/// them at once); the rest are only counted.
pub const RECORDED_PER_MINUTE: u32 = 60;

/// Why a delivery was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No such connection (or its connector is gone).
    UnknownConnection,
    /// The connection's connector takes no webhooks.
    NoWebhooks,
    /// Missing or wrong token, signature or timestamp.
    Unauthorized,
    /// The connection has no secret and did not say `webhook_auth: none`.
    NotConfigured,
    /// Over the body limit.
    TooLarge,
    /// The body did not arrive in time.
    Timeout,
    /// Not JSON.
    Malformed,
    /// JSON of the wrong shape for the connector.
    BadDelivery,
    /// More events than the connection's `max_events`.
    TooManyEvents,
}

impl Reason {
    /// Every reason, in the order of the counters.
    pub const ALL: [Reason; 9] = [
        Reason::UnknownConnection,
        Reason::NoWebhooks,
        Reason::Unauthorized,
        Reason::NotConfigured,
        Reason::TooLarge,
        Reason::Timeout,
        Reason::Malformed,
        Reason::BadDelivery,
        Reason::TooManyEvents,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownConnection => "unknown_connection",
            Reason::NoWebhooks => "no_webhooks",
            Reason::Unauthorized => "unauthorized",
            Reason::NotConfigured => "not_configured",
            Reason::TooLarge => "too_large",
            Reason::Timeout => "timeout",
            Reason::Malformed => "malformed",
            Reason::BadDelivery => "bad_delivery",
            Reason::TooManyEvents => "too_many_events",
        }
    }

    /// The reason of a failed check.
    pub fn of(e: &VerifyError) -> Reason {
        match e {
            VerifyError::Unauthorized(_) => Reason::Unauthorized,
            VerifyError::NotConfigured { .. } | VerifyError::NoCheck { .. } => {
                Reason::NotConfigured
            }
        }
    }
}

static COUNTS: [AtomicU64; Reason::ALL.len()] = [const { AtomicU64::new(0) }; Reason::ALL.len()];
static UNRECORDED: AtomicU64 = AtomicU64::new(0);

/// A token bucket: (tokens left, when last refilled).
static BUCKET: Mutex<Option<(f64, Instant)>> = Mutex::new(None);

/// Counts one rejection.
pub fn count(reason: Reason) {
    COUNTS[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// Whether this rejection is recorded in the store (the sample); counts
/// it as unrecorded otherwise.
pub fn sample() -> bool {
    let mut b = BUCKET.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let cap = f64::from(RECORDED_PER_MINUTE);
    let (tokens, at) = b.get_or_insert((cap, now));
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * cap / 60.0).min(cap);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        drop(b);
        UNRECORDED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// The counters: (reason label, count) for each reason, then the number of
/// rejections not recorded in the store.
pub fn snapshot() -> (Vec<(&'static str, u64)>, u64) {
    (
        Reason::ALL
            .iter()
            .map(|r| (r.as_str(), COUNTS[*r as usize].load(Ordering::Relaxed)))
            .collect(),
        UNRECORDED.load(Ordering::Relaxed),
    )
}

/// A string cut to `max` characters, with `…` when it was longer.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééééé", 2), "éé…");
        assert_eq!(
            truncate(&"x".repeat(10_000), MAX_NAME_CHARS)
                .chars()
                .count(),
            MAX_NAME_CHARS + 1
        );
    }

    #[test]
    fn only_a_bounded_sample_is_recorded() {
        let recorded = (0..1000).filter(|_| sample()).count();
        assert!(recorded <= RECORDED_PER_MINUTE as usize + 1, "{recorded}");
        assert!(snapshot().1 >= 1000 - recorded as u64);
    }
}
