//! Backoff with full jitter, and `Retry-After`.

use std::time::Duration;

use rand::Rng;

use crate::recipe::validate::RetryPolicy;

/// The longest `Retry-After` honoured; a longer one fails the step instead
/// of parking it for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The ceiling of the wait after failed attempt `attempt` (1-based):
/// `backoff * 2^(attempt-1)`, capped at `max_backoff`.
pub fn ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    policy
        .backoff
        .saturating_mul(factor)
        .min(policy.max_backoff)
}

/// Full jitter: a uniform wait in `[0, ceiling]`, so that many clients
/// failing together do not retry together.
pub fn jittered(policy: &RetryPolicy, attempt: u32) -> Duration {
    let cap = ceiling(policy, attempt);
    if cap.is_zero() {
        return cap;
    }
    let nanos = rand::rng().random_range(0..=cap.as_nanos().min(u64::MAX as u128) as u64);
    Duration::from_nanos(nanos)
}

/// Parses `Retry-After`: delay seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let c: Vec<u64> = (1..=6).map(|a| ceiling(&p, a).as_secs()).collect();
        assert_eq!(c, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let p = policy();
        let waits: Vec<Duration> = (0..200).map(|_| jittered(&p, 3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(4)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(2)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(2)));
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
