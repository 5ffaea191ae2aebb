//! The one retry loop of every operation call (catalog operations and
//! `http.request`, live or canned): backoff with full jitter, and
//! `Retry-After`, by one rule ([`next_wait`]).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::{Failure, StepError};

/// Retry settings with defaults applied: what a step's `retry:` (or its
/// connector's default) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first.
    pub attempts: u32,
    /// First backoff.
    pub backoff: Duration,
    /// Backoff cap.
    pub max_backoff: Duration,
}

/// An attempt's error plus the wait the API asked for.
pub(crate) struct AttemptError {
    pub error: StepError,
    pub retry_after: Option<Duration>,
}

impl From<StepError> for AttemptError {
    fn from(error: StepError) -> Self {
        AttemptError {
            error,
            retry_after: None,
        }
    }
}

/// The wait before the attempt after failed attempt `attempt` (1-based),
/// or `None` when the call fails now: the error is not retryable, the
/// attempts are used up, or the API asked for a wait beyond
/// [`MAX_RETRY_AFTER`] (the step fails with the API's answer rather than
/// park for hours). A `Retry-After` is honoured as given; without one,
/// the backoff is jittered.
pub fn next_wait(
    policy: &RetryPolicy,
    attempt: u32,
    error: &StepError,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    if !error.kind.is_retryable() || attempt >= policy.attempts {
        return None;
    }
    match retry_after {
        Some(ra) if ra > MAX_RETRY_AFTER => None,
        Some(ra) => Some(ra),
        None => Some(jittered(policy, attempt)),
    }
}

/// Runs `attempt` (given its 1-based number) until it succeeds or
/// [`next_wait`] says stop; `before_retry` sees each error that is
/// retried and the wait. The output and the attempts made.
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
    mut before_retry: impl FnMut(&StepError, Duration),
) -> Result<(T, u32), Failure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt(n).await {
            Ok(v) => return Ok((v, n)),
            Err(e) => match next_wait(policy, n, &e.error, e.retry_after) {
                Some(wait) => {
                    before_retry(&e.error, wait);
                    tokio::time::sleep(wait).await;
                }
                None => {
                    return Err(Failure {
                        error: e.error,
                        attempts: n,
                    })
                }
            },
        }
    }
}

/// The `Retry-After` of a response, if any.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

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

    #[test]
    fn one_rule_for_retry_after_honoured_up_to_the_cap_and_beyond_it_the_call_fails() {
        use crate::catalog::ErrorKind;
        let p = policy();
        let limited = StepError::new(ErrorKind::RateLimited, "slow down");
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(next_wait(&p, 1, &limited, secs(30)), secs(30));
        assert_eq!(
            next_wait(&p, 1, &limited, Some(MAX_RETRY_AFTER)),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(next_wait(&p, 1, &limited, Some(MAX_RETRY_AFTER * 2)), None);
        assert!(next_wait(&p, 1, &limited, None).unwrap() <= ceiling(&p, 1));
        assert_eq!(
            next_wait(&p, p.attempts, &limited, secs(1)),
            None,
            "attempts used up"
        );
        let bad = StepError::new(ErrorKind::BadRequest, "no");
        assert_eq!(next_wait(&p, 1, &bad, secs(1)), None, "not retryable");
    }
}
