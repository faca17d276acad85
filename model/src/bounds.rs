//! The trust boundary's clock rule: an event's time must lie within
//! `[reference - max_age, reference + max_future]` of its domain, where the
//! reference is ingest's clock when the event arrives over HTTP, and the
//! record's broker timestamp when it is read from a topic (so that a replay
//! after a restart judges a record exactly as the first read did).
//!
//! Value and string rules (numeric `min`/`max`, `max_length`, control and
//! bidi characters, NFC) are enforced by the decoder; see `decode/limits.rs`.

use std::fmt;

use crate::decode::format_rfc3339_ms;
use crate::duration::Millis;
use crate::spec::Domain;

/// A domain's accepted event-time range around a reference clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub max_future: Millis,
    pub max_age: Millis,
}

/// Why an event's time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeViolation {
    #[error("event time {} is {} ahead of the reference clock {} ({reference}); at most {max_future} ahead is accepted (`max_future`)", at(*.time), span(.time.saturating_sub(*.reference)), at(*.reference), reference = .clock)]
    Future { time: i64, reference: i64, clock: Clock, max_future: Millis },
    #[error("event time {} is {} older than the reference clock {} ({reference}); at most {max_age} old is accepted (`max_age`)", at(*.time), span(.reference.saturating_sub(*.time)), at(*.reference), reference = .clock)]
    TooOld { time: i64, reference: i64, clock: Clock, max_age: Millis },
    #[error("the record's broker timestamp {} is {} ahead of this server's clock; at most {max_future} ahead is accepted (`max_future`)", at(*.timestamp), span(.timestamp.saturating_sub(*.now)))]
    RecordInFuture { timestamp: i64, now: i64, max_future: Millis },
}

/// Which clock an event was judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Ingest's clock when the request arrived.
    Ingest,
    /// The Kafka record's timestamp.
    Broker,
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clock::Ingest => "ingest's clock",
            Clock::Broker => "the record's broker timestamp",
        })
    }
}

fn at(ms: i64) -> String {
    format_rfc3339_ms(ms)
}

/// A duration for people: `4 s`, `2.5 h`, `73.2 years`.
fn span(ms: i64) -> String {
    let s = ms as f64 / 1000.0;
    match s {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s if s < 63_072_000.0 => format!("{:.1} days", s / 86_400.0),
        s => format!("{:.1} years", s / 31_557_600.0),
    }
}

impl TimeBounds {
    pub fn of(domain: &Domain) -> TimeBounds {
        TimeBounds { max_future: domain.max_future, max_age: domain.max_age }
    }

    /// Checks an event time against a reference clock.
    pub fn check(&self, time: i64, reference: i64, clock: Clock) -> Result<(), TimeViolation> {
        if time > reference.saturating_add(self.max_future.ms()) {
            return Err(TimeViolation::Future { time, reference, clock, max_future: self.max_future });
        }
        if time < reference.saturating_sub(self.max_age.ms()) {
            return Err(TimeViolation::TooOld { time, reference, clock, max_age: self.max_age });
        }
        Ok(())
    }

    /// Checks a record read from a topic: its event time against its broker
    /// timestamp, and the broker timestamp itself (which a producer writing
    /// straight to Kafka may set) against this server's clock `now`.
    pub fn check_record(&self, time: i64, timestamp: i64, now: i64) -> Result<(), TimeViolation> {
        if timestamp > now.saturating_add(self.max_future.ms()) {
            return Err(TimeViolation::RecordInFuture { timestamp, now, max_future: self.max_future });
        }
        self.check(time, timestamp, Clock::Broker)
    }

    /// The record check for a decoded event: upserts are judged by their event
    /// time; a delete carries no event time of its own and passes.
    pub fn check_event(&self, ev: &crate::value::Event, timestamp: i64, now: i64) -> Result<(), TimeViolation> {
        match ev.op {
            crate::value::Op::Upsert => self.check_record(ev.time, timestamp, now),
            crate::value::Op::Delete => Ok(()),
        }
    }

    /// The furthest event time a watermark may reach at wall-clock `now`: a
    /// second line of defence behind the checks above.
    pub fn watermark_cap(&self, now: i64) -> i64 {
        now.saturating_add(self.max_future.ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn bounds() -> TimeBounds {
        TimeBounds { max_future: Millis(5 * MIN), max_age: Millis(7 * 24 * 60 * MIN) }
    }

    #[test]
    fn accepts_the_range_and_names_the_bound_it_refuses() {
        let now = 1_795_515_300_000;
        let b = bounds();
        assert_eq!(b.check(now, now, Clock::Ingest), Ok(()));
        assert_eq!(b.check(now + 5 * MIN, now, Clock::Ingest), Ok(()));
        assert_eq!(b.check(now - 7 * 24 * 60 * MIN, now, Clock::Ingest), Ok(()));
        let e = b.check(now + 5 * MIN + 1, now, Clock::Ingest).expect_err("ahead");
        assert!(matches!(e, TimeViolation::Future { .. }));
        assert!(e.to_string().contains("max_future"), "{e}");
        let e = b.check(now - 7 * 24 * 60 * MIN - 1, now, Clock::Broker).expect_err("old");
        assert!(matches!(e, TimeViolation::TooOld { .. }));
        assert!(e.to_string().contains("broker timestamp"), "{e}");
        // Centuries off in either direction, and the extremes of i64, never overflow.
        for t in [i64::MIN, i64::MAX, -2_208_988_800_000, 4_070_908_800_000] {
            assert!(b.check(t, now, Clock::Ingest).is_err(), "{t}");
        }
    }

    #[test]
    fn a_record_from_the_future_is_refused_whatever_its_event_time() {
        let now = 1_795_515_300_000;
        let b = bounds();
        let in_2099 = 4_070_908_800_000;
        assert!(matches!(b.check_record(in_2099, in_2099, now), Err(TimeViolation::RecordInFuture { .. })));
        assert_eq!(b.check_record(now - 1000, now - 500, now), Ok(()));
        assert_eq!(b.watermark_cap(now), now + 5 * MIN);
    }
}
