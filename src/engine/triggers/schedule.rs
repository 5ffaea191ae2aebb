//! Schedule and poll ticks: when a trigger fires next, and one tick per
//! cluster taken by compare-and-set.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::engine::Service;
use crate::id::{EventId, RunId};
use crate::interpreter::event;
use crate::recipe::validate::{TriggerKind, ValidRecipe};
use crate::store::{NewEvent, NewRun};

impl Service {
    /// Starts one loop per poll and schedule trigger.
    pub fn spawn_schedules(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.recipes()
            .all()
            .filter(|r| r.trigger.kind.is_timed())
            .map(|r| self.spawn_schedule(r.clone(), stop.clone()))
            .collect()
    }

    /// Starts the loop of one poll or schedule trigger.
    pub fn spawn_schedule(
        self: &Arc<Self>,
        recipe: Arc<ValidRecipe>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        tokio::spawn(async move { svc.schedule_loop(recipe, stop).await })
    }

    async fn schedule_loop(
        self: Arc<Self>,
        recipe: Arc<ValidRecipe>,
        mut stop: watch::Receiver<bool>,
    ) {
        let cursor_name = format!("schedule:{}", recipe.name);
        loop {
            let stored = match self.store.cursor(&cursor_name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(recipe = %recipe.name, error = %e, "cannot read the schedule cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let last = stored
                .as_deref()
                .and_then(|c| c.parse::<i64>().ok())
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            let now = Utc::now();
            let mut due = next_due(&recipe, last, now);
            // Overdue (every engine was down): the missed ticks fire once,
            // as the latest of them.
            for _ in 0..10_000 {
                match next_due(&recipe, Some(due), now) {
                    next if next <= now => due = next,
                    _ => break,
                }
            }
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            // The tick is the time it was due, not when this engine woke:
            // every engine sharing the store computes the same one, and the
            // cursor moves from `stored` to it once (compare-and-set), so a
            // tick fires once per cluster.
            let tick = due.timestamp_millis().to_string();
            let fired = match &recipe.trigger.kind {
                TriggerKind::Poll { op, .. } => {
                    // The tick is taken even when the poll then fails, so a
                    // failing API is retried at the interval, not in a loop.
                    match self
                        .store
                        .ingest_with_cursor(&cursor_name, stored.as_deref(), &tick, Vec::new())
                        .await
                    {
                        Ok(_) => self.poll_once(&recipe, op).await,
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => {
                    self.fire_schedule(&recipe, &cursor_name, stored.as_deref(), due)
                        .await
                }
            };
            match fired {
                Ok(runs) => self.dispatch.stored(runs),
                Err(e) if e.starts_with("store conflict") => {
                    tracing::debug!(recipe = %recipe.name, "another engine took this tick");
                }
                Err(e) => {
                    tracing::warn!(recipe = %recipe.name, error = %e, "trigger firing failed; retrying at the next tick");
                }
            }
        }
    }

    /// Enqueues a schedule's event for the tick `due` and moves its cursor
    /// from `expected` to it, atomically; how many runs were queued.
    async fn fire_schedule(
        &self,
        recipe: &Arc<ValidRecipe>,
        cursor_name: &str,
        expected: Option<&str>,
        due: DateTime<Utc>,
    ) -> Result<usize, String> {
        let tick = due.timestamp_millis().to_string();
        let ev = NewEvent {
            id: EventId::new(),
            connection: String::new(),
            operation: "schedule".into(),
            payload: event::schedule_event(due),
            dedupe_key: Some(format!("schedule:{}:{tick}", recipe.name)),
            runs: vec![NewRun {
                id: RunId::new(),
                recipe: recipe.name.clone(),
                recipe_version: recipe.version.clone(),
                ordering_key: None,
            }],
        };
        self.store
            .ingest_with_cursor(cursor_name, expected, &tick, vec![ev])
            .await
            .map(|n| n.runs as usize)
            .map_err(|e| e.to_string())
    }
}

/// When a schedule or poll fires next. Missed ticks during downtime are
/// not replayed one by one: an overdue trigger fires once, now
/// (docs/operations.md).
pub fn next_due(
    recipe: &ValidRecipe,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let Some(last) = last else { return now };
    match &recipe.trigger.kind {
        TriggerKind::Every(d) | TriggerKind::Poll { every: d, .. } => {
            last + chrono::Duration::from_std(*d).unwrap_or_default()
        }
        TriggerKind::Cron { cron, zone, .. } => {
            next_cron(cron, zone, last).unwrap_or(now + chrono::Duration::days(365))
        }
        TriggerKind::Webhook(_) => now + chrono::Duration::days(365),
    }
}

/// The first tick of `cron`, read in `zone`, strictly after `last`.
///
/// croner resolves a repeated (fall-back) wall-clock time to its earlier
/// instant even when `last` already lies past it, in the repeated hour (a
/// late fire after downtime). That tick has passed: the walk goes on from
/// the later instant of the same wall-clock time, so a time is used once
/// and an overdue tick never fires again and again.
pub fn next_cron(
    cron: &croner::Cron,
    zone: &crate::zone::Zone,
    last: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::TimeZone as _;
    let mut from = last.with_timezone(zone);
    // A tick falls in at most one fold, so two passes find it; the third
    // only guards against a zone that folds twice.
    for _ in 0..3 {
        let next = cron.find_next_occurrence(&from, false).ok()?;
        if next.with_timezone(&Utc) > last {
            return Some(next.with_timezone(&Utc));
        }
        let later = zone.from_local_datetime(&next.naive_local()).latest()?;
        if later <= from {
            return None;
        }
        from = later;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The next tick after `last`, as RFC 3339 in UTC.
    fn next(expr: &str, zone: &str, last: &str) -> String {
        let cron: croner::Cron = expr.parse().unwrap();
        let zone = Zone::parse(zone).unwrap();
        next_cron(&cron, &zone, at(last))
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    #[test]
    fn next_due_reads_cron_in_the_validated_zone() {
        let text = |tz: &str| {
            format!(
                "recipe: r\ntrigger:\n  cron: \"0 9 * * 1-5\"\n  timezone: {tz}\nsteps:\n  - id: s\n    action: http.request\n    with: {{ method: GET, url: https://example.com }}\n"
            )
        };
        let catalog = crate::catalog::Catalog::builtin();
        let last = at("2026-07-03T16:00:00Z"); // Friday, after 09:00 in all four
        for (tz, want) in [
            ("America/New_York", "2026-07-06T13:00:00+00:00"),
            ("Europe/Berlin", "2026-07-06T07:00:00+00:00"),
            ("UTC", "2026-07-06T09:00:00+00:00"),
            ("Etc/UTC", "2026-07-06T09:00:00+00:00"),
            ("\"+02:00\"", "2026-07-06T07:00:00+00:00"),
        ] {
            let loaded =
                crate::recipe::load::load_texts(&[("r.yaml".into(), text(tz))], &catalog, None);
            assert!(
                loaded.diagnostics.is_empty(),
                "{tz}: {:?}",
                loaded.diagnostics
            );
            let due = next_due(&loaded.recipes[0], Some(last), last);
            assert_eq!(due.to_rfc3339(), want, "{tz}");
        }
    }

    #[test]
    fn weekday_nine_in_berlin_follows_daylight_saving_time() {
        let weekdays = "0 9 * * 1-5";
        // Winter (CET, UTC+1): 09:00 is 08:00 UTC.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-03-26T08:00:00Z"),
            "2026-03-27T08:00:00Z"
        );
        // Over the weekend of 2026-03-29 (spring forward) into CEST
        // (UTC+2): Monday 09:00 is 07:00 UTC.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-03-27T08:00:00.120Z"),
            "2026-03-30T07:00:00Z"
        );
        // Over the weekend of 2026-10-25 (fall back) into CET again.
        assert_eq!(
            next(weekdays, "Europe/Berlin", "2026-10-23T07:00:00.080Z"),
            "2026-10-26T08:00:00Z"
        );
        // A fixed offset does not move.
        assert_eq!(
            next(weekdays, "+01:00", "2026-03-27T08:00:00Z"),
            "2026-03-30T08:00:00Z"
        );
    }

    #[test]
    fn weekday_nine_in_new_york_follows_daylight_saving_time() {
        let weekdays = "0 9 * * 1-5";
        // EST (UTC-5) -> EDT (UTC-4) on Sunday 2026-03-08.
        assert_eq!(
            next(weekdays, "America/New_York", "2026-03-06T14:00:00Z"),
            "2026-03-09T13:00:00Z"
        );
        // EDT -> EST on Sunday 2026-11-01.
        assert_eq!(
            next(weekdays, "America/New_York", "2026-10-30T13:00:00Z"),
            "2026-11-02T14:00:00Z"
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_runs_right_after_the_gap_that_day() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does
        // not exist. croner runs the job at the first valid time after the
        // gap (03:00 CEST = 01:00 UTC), the same day, once.
        let daily = "30 2 * * *";
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-03-28T01:30:00Z"),
            "2026-03-29T01:00:00Z"
        );
        // The day after is back to 02:30, now CEST (00:30 UTC).
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-03-29T01:00:00.050Z"),
            "2026-03-30T00:30:00Z"
        );
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            next(daily, "America/New_York", "2026-03-07T07:30:00Z"),
            "2026-03-08T07:00:00Z"
        );
        // Other jobs skip the times in the gap: after 01:30 CET comes
        // 03:00 CEST, 30 minutes later, and a list of hours loses 02:30.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z"),
            "2026-03-29T01:00:00Z"
        );
        assert_eq!(
            next("30 2,14 * * *", "Europe/Berlin", "2026-03-28T13:30:00Z"),
            "2026-03-29T12:30:00Z"
        );
    }

    #[test]
    fn a_time_in_the_fall_back_fold_runs_once() {
        // Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET, so 02:30
        // happens twice. The job runs at the first one (02:30 CEST =
        // 00:30 UTC) and next on the 26th, not at 02:30 CET.
        let daily = "30 2 * * *";
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-24T00:30:00Z"),
            "2026-10-25T00:30:00Z"
        );
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-25T00:30:00.200Z"),
            "2026-10-26T01:30:00Z"
        );
        // An engine that was down fires the overdue tick late, inside the
        // repeated hour (02:15 CET = 01:15 UTC): croner alone would answer
        // 02:30 CEST, in the past, and the schedule would fire in a loop
        // until 02:30 CET. The tick is skipped instead.
        let cron: croner::Cron = daily.parse().unwrap();
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        let alone = cron
            .find_next_occurrence(&at("2026-10-25T01:15:00Z").with_timezone(&berlin), false)
            .unwrap();
        assert_eq!(alone.with_timezone(&Utc), at("2026-10-25T00:30:00Z"));
        assert_eq!(
            next(daily, "Europe/Berlin", "2026-10-25T01:15:00Z"),
            "2026-10-26T01:30:00Z"
        );
        // New York, 2026-11-01: 02:00 EDT goes back to 01:00 EST.
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-10-31T05:30:00Z"),
            "2026-11-01T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-11-01T05:30:00.100Z"),
            "2026-11-02T06:30:00Z"
        );
        // An interval job walks the wall clock once: after 02:30 CEST
        // comes 03:00 CET, and the repeated hour's second pass has no tick.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z"),
            "2026-10-25T02:00:00Z"
        );
        // Fired late inside the second pass (02:10 CET), it goes on after
        // the repeated hour too: 02:30 was used by its first instance.
        assert_eq!(
            next("0,30 * * * *", "Europe/Berlin", "2026-10-25T01:10:00Z"),
            "2026-10-25T02:00:00Z"
        );
    }
}
