//! Client-side rate limiting per connection: sliding windows (every window
//! must have room), so a burst is throttled instead of collecting 429s; the
//! API's `X-RateLimit-Remaining` pulls the local view down when the server
//! counted more (other clients of the same account).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One window: at most `max` requests in any span of `per`.
#[derive(Debug)]
struct Window {
    max: usize,
    per: Duration,
    /// Start times of the requests in the current span, oldest first.
    log: VecDeque<Instant>,
}

/// A sliding-window limiter over one or more windows.
#[derive(Debug)]
pub struct RateLimiter {
    windows: Mutex<Vec<Window>>,
}

impl RateLimiter {
    /// A limiter with `(max, per)` windows; none means unlimited.
    pub fn new(windows: &[(u32, Duration)]) -> RateLimiter {
        RateLimiter {
            windows: Mutex::new(
                windows
                    .iter()
                    .map(|(max, per)| Window {
                        max: (*max).max(1) as usize,
                        per: *per,
                        log: VecDeque::new(),
                    })
                    .collect(),
            ),
        }
    }

    /// Waits until every window has room for one of `share` engines
    /// spending the same budget (a window of `max` gives each engine
    /// `max / share`, at least one), then takes a slot in each.
    pub async fn acquire(&self, share: usize) {
        loop {
            let wait = {
                let mut ws = self.windows.lock().expect("limiter lock");
                let now = Instant::now();
                let mut wait = Duration::ZERO;
                for w in ws.iter_mut() {
                    while w
                        .log
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= w.per)
                    {
                        w.log.pop_front();
                    }
                    if w.log.len() >= (w.max / share.max(1)).max(1) {
                        let oldest = *w.log.front().expect("full window");
                        wait = wait.max(w.per - now.duration_since(oldest));
                    }
                }
                if wait.is_zero() {
                    for w in ws.iter_mut() {
                        w.log.push_back(now);
                    }
                    return;
                }
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The server says only `remaining` requests are left in a window of
    /// length `per` (or the first window): count the difference as used now.
    pub fn observe_remaining(&self, remaining: usize, per: Option<Duration>) {
        let mut ws = self.windows.lock().expect("limiter lock");
        let now = Instant::now();
        let Some(w) = ws
            .iter_mut()
            .find(|w| per.is_none_or(|p| p == w.per))
            .or(None)
        else {
            return;
        };
        let used_by_server = w.max.saturating_sub(remaining);
        while w.log.len() < used_by_server {
            w.log.push_back(now);
        }
    }

    /// Blocks every window until `per` from now (an API answered 429).
    pub fn back_off(&self, until: Duration) {
        let mut ws = self.windows.lock().expect("limiter lock");
        let now = Instant::now();
        for w in ws.iter_mut() {
            // Filling the log with entries that expire at `now + until`.
            let at = now + until.min(w.per);
            let stamp = at.checked_sub(w.per).unwrap_or(now);
            w.log.clear();
            for _ in 0..w.max {
                w.log.push_back(stamp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_in_any_window() {
        let l = std::sync::Arc::new(RateLimiter::new(&[
            (10, Duration::from_secs(1)),
            (25, Duration::from_secs(10)),
        ]));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..60 {
            l.acquire(1).await;
            times.push(start.elapsed());
        }
        for (i, t) in times.iter().enumerate() {
            let in_1s = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            let in_10s = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(10))
                .count();
            assert!(
                in_1s <= 10 && in_10s <= 25,
                "at {t:?}: {in_1s} in 1s, {in_10s} in 10s"
            );
        }
        // 60 requests at 25 per 10 s need at least 20 s.
        assert!(times[59] >= Duration::from_secs(20), "{:?}", times[59]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_of_three_spends_a_third_of_each_window() {
        let l = RateLimiter::new(&[(30, Duration::from_secs(10))]);
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire(3).await;
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        l.acquire(3).await;
        assert!(
            start.elapsed() >= Duration::from_secs(9),
            "the 11th request of a third of 30 waits for the window: {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_remaining_slows_us_down() {
        let l = RateLimiter::new(&[(100, Duration::from_secs(10))]);
        l.acquire(1).await;
        l.observe_remaining(0, None);
        let t = Instant::now();
        l.acquire(1).await;
        assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    }
}
