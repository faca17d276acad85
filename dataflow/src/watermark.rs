//! Event-time watermarks. Each worker tracks, per partition, the largest event
//! time it has read; it reports per domain the minimum over its active
//! partitions (a partition silent for `idle_timeout` is not active) and the
//! watermark it used to drop late data. The job's watermark of a domain is the
//! minimum over all workers' active partitions; windows close at the minimum
//! watermark any worker used, so no worker can still add to a closed window.
//!
//! A quiet domain (every partition, on every worker, read to its end and
//! silent for `idle_timeout`) follows the wall clock: each worker whose own
//! partitions of the domain are all idle offers the wall clock as the furthest
//! time seen (see [`follow_wall_clock`]), and the job's watermark of a domain
//! with no active partition is the furthest any worker offers. So its windows
//! close, and their finals appear, even when nothing arrives (at night).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::types::{DomainWm, WM_START, WmReport};

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_time: i64,
    last_activity: Instant,
    /// The source has read everything the partition holds (known from the
    /// broker's high watermark). Only a caught-up partition can be idle: one
    /// whose records cannot be fetched (a broker down) keeps holding back.
    caught_up: bool,
}

/// A worker's view of its own partitions, per domain.
#[derive(Debug, Default, Clone)]
pub struct LocalClocks {
    partitions: HashMap<(usize, i32), PartitionClock>,
}

impl LocalClocks {
    /// Records an event time read from a partition.
    pub fn observe(&mut self, domain: usize, partition: i32, time: i64, now: Instant) {
        let c = self.partitions.entry((domain, partition)).or_insert(PartitionClock { max_time: time, last_activity: now, caught_up: false });
        c.max_time = c.max_time.max(time);
        c.last_activity = now;
        c.caught_up = false;
    }

    /// Records whether the source has read a partition up to its end. The
    /// source reports every partition assigned to it, so a partition that has
    /// delivered nothing yet is known too: it holds the watermark back (at the
    /// start) until it delivers or is read to its end and idle, so that a
    /// partition fetched late at start-up does not find its events late.
    /// Idleness counts from the last moment the partition was behind or could
    /// not be fetched: after its broker comes back, the partition must stay
    /// read to its end for a whole `idle_timeout` before it stops holding back.
    pub fn set_caught_up(&mut self, domain: usize, partition: i32, caught_up: bool, now: Instant) {
        let c = self.partitions.entry((domain, partition)).or_insert(PartitionClock { max_time: WM_START, last_activity: now, caught_up });
        c.caught_up = caught_up;
        if !caught_up {
            c.last_activity = now;
        }
    }

    /// This worker's report for one domain.
    pub fn domain_wm(&self, domain: usize, used: i64, now: Instant, idle_timeout: Option<Duration>) -> DomainWm {
        let mut min_active: Option<i64> = None;
        let mut max_seen: Option<i64> = None;
        for (&(d, _), c) in &self.partitions {
            if d != domain {
                continue;
            }
            max_seen = Some(max_seen.map_or(c.max_time, |m| m.max(c.max_time)));
            let idle = idle_timeout.is_some_and(|t| t.is_zero() || (c.caught_up && now.duration_since(c.last_activity) >= t));
            if !idle {
                min_active = Some(min_active.map_or(c.max_time, |m| m.min(c.max_time)));
            }
        }
        DomainWm { min_active, max_seen, used }
    }
}

/// What a worker needs to let a quiet domain's watermark follow the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// The wall clock now (ms since the Unix epoch).
    pub now_ms: i64,
    /// The furthest a watermark of the domain may reach now (`TimeBounds::watermark_cap`).
    pub cap: i64,
    /// The job's watermark of the domain, as last agreed.
    pub job_watermark: i64,
    /// A domain counts as current when its newest event time read (or the job's
    /// watermark) is at most this far behind the wall clock: `idle_timeout`
    /// plus the largest lateness of its metrics.
    pub current_within: i64,
}

/// This worker's report for a domain once the wall clock is taken into
/// account: when all of its partitions of the domain are idle (or it has none)
/// and the domain's data is current, it offers the wall clock (never past the
/// trust boundary's cap) as the furthest time seen. The job's watermark takes
/// it only when no worker has an active partition of the domain, i.e. when the
/// whole domain is quiet. A backlog replayed from the past (its newest event
/// older than `current_within`) keeps the watermark at its newest event, so a
/// replay in parts does not find its next part late.
pub fn follow_wall_clock(wm: DomainWm, clock: WallClock) -> DomainWm {
    if wm.min_active.is_some() {
        return wm;
    }
    let newest = wm.max_seen.unwrap_or(WM_START).max(clock.job_watermark);
    if newest < clock.now_ms.saturating_sub(clock.current_within) {
        return wm;
    }
    let follow = clock.now_ms.min(clock.cap);
    DomainWm { max_seen: Some(wm.max_seen.map_or(follow, |m| m.max(follow))), ..wm }
}

/// Every worker's latest report; derives the job's watermarks.
#[derive(Debug, Clone)]
pub struct GlobalClock {
    latest: Vec<Option<WmReport>>,
    /// Job event-time watermark per domain (monotone).
    watermark: Vec<i64>,
    /// Watermark up to which windows are closed, per domain (monotone).
    closed: Vec<i64>,
    /// Last epoch folded in.
    pub epoch: Option<u64>,
}

impl GlobalClock {
    pub fn new(workers: usize, domains: usize, start: &[i64]) -> GlobalClock {
        GlobalClock {
            latest: vec![None; workers],
            watermark: (0..domains).map(|d| start.get(d).copied().unwrap_or(WM_START)).collect(),
            closed: (0..domains).map(|d| start.get(d).copied().unwrap_or(WM_START)).collect(),
            epoch: None,
        }
    }

    /// Folds in the reports of one completed epoch (every report of epochs up to
    /// and including `epoch` must have been offered before).
    pub fn complete_epoch(&mut self, epoch: u64, reports: impl IntoIterator<Item = WmReport>) {
        for r in reports {
            if let Some(slot) = self.latest.get_mut(r.worker)
                && slot.as_ref().is_none_or(|old| old.epoch <= r.epoch)
            {
                *slot = Some(r);
            }
        }
        self.epoch = Some(epoch);
        if self.latest.iter().any(Option::is_none) {
            // Until every worker has spoken, nothing can be closed.
            return;
        }
        for d in 0..self.watermark.len() {
            let reports = self.latest.iter().flatten().filter_map(|r| r.domains.get(d));
            let mut min_active: Option<i64> = None;
            let mut max_seen: Option<i64> = None;
            let mut min_used = i64::MAX;
            for wm in reports {
                if let Some(a) = wm.min_active {
                    min_active = Some(min_active.map_or(a, |m| m.min(a)));
                }
                if let Some(s) = wm.max_seen {
                    max_seen = Some(max_seen.map_or(s, |m| m.max(s)));
                }
                min_used = min_used.min(wm.used);
            }
            // The minimum over active partitions; when every partition is idle, the furthest any got.
            if let Some(w) = min_active.or(max_seen) {
                self.watermark[d] = self.watermark[d].max(w);
            }
            if min_used != i64::MAX {
                self.closed[d] = self.closed[d].max(min_used);
            }
        }
    }

    pub fn watermark(&self, domain: usize) -> i64 {
        self.watermark.get(domain).copied().unwrap_or(WM_START)
    }

    /// Windows of a metric of this domain with `end + lateness <= closed(domain)` are closed.
    pub fn closed(&self, domain: usize) -> i64 {
        self.closed.get(domain).copied().unwrap_or(WM_START)
    }

    pub fn closed_all(&self) -> &[i64] {
        &self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: usize, epoch: u64, min_active: Option<i64>, max_seen: Option<i64>, used: i64) -> WmReport {
        WmReport { worker, epoch, domains: vec![DomainWm { min_active, max_seen, used }] }
    }

    #[test]
    fn minimum_over_active_partitions_and_idle_partitions_do_not_hold_back() {
        let t0 = Instant::now();
        let mut c = LocalClocks::default();
        c.observe(0, 0, 1000, t0);
        c.observe(0, 1, 5000, t0);
        assert_eq!(c.domain_wm(0, 7, t0, None), DomainWm { min_active: Some(1000), max_seen: Some(5000), used: 7 });
        let later = t0 + Duration::from_secs(11);
        c.observe(0, 1, 6000, later);
        // Partition 0 has been silent for 11 s > 10 s, but it may hold unread records.
        assert_eq!(c.domain_wm(0, 7, later, Some(Duration::from_secs(10))).min_active, Some(1000));
        // Once it is known to be read to its end, its silence makes it idle.
        c.set_caught_up(0, 0, true, later);
        assert_eq!(c.domain_wm(0, 7, later, Some(Duration::from_secs(10))).min_active, Some(6000));
        // Behind again (its broker went away): it holds back, and once read to its
        // end it needs the whole idle timeout again.
        c.set_caught_up(0, 0, false, later);
        let back = later + Duration::from_secs(3);
        c.set_caught_up(0, 0, true, back);
        assert_eq!(c.domain_wm(0, 7, back, Some(Duration::from_secs(10))).min_active, Some(1000));
        assert_eq!(c.domain_wm(0, 7, later + Duration::from_secs(10), Some(Duration::from_secs(10))).min_active, Some(6000));
    }

    #[test]
    fn an_assigned_partition_that_delivered_nothing_holds_back_until_idle() {
        let t0 = Instant::now();
        let mut c = LocalClocks::default();
        c.set_caught_up(0, 0, false, t0);
        c.set_caught_up(0, 1, false, t0);
        c.observe(0, 0, 5000, t0);
        // Partition 1 has not been fetched yet: its events may be the oldest.
        assert_eq!(c.domain_wm(0, 7, t0, Some(Duration::from_secs(10))).min_active, Some(WM_START));
        let later = t0 + Duration::from_secs(11);
        c.observe(0, 0, 6000, later);
        assert_eq!(c.domain_wm(0, 7, later, Some(Duration::from_secs(10))).min_active, Some(WM_START), "not known to be empty");
        // Read to its end (empty) and silent for the idle timeout: no longer holds back.
        c.set_caught_up(0, 1, true, later);
        assert_eq!(c.domain_wm(0, 7, later, Some(Duration::from_secs(10))).min_active, Some(6000));
        assert_eq!(c.domain_wm(0, 7, later, Some(Duration::from_secs(10))).max_seen, Some(6000));
    }

    #[test]
    fn a_quiet_domain_follows_the_wall_clock_once_every_partition_is_idle() {
        let now = 1_795_515_300_000;
        let clock = WallClock { now_ms: now, cap: now + 300_000, job_watermark: now - 20_000, current_within: 40_000 };
        // A worker with an active partition offers nothing more.
        let active = DomainWm { min_active: Some(now - 5_000), max_seen: Some(now - 5_000), used: 0 };
        assert_eq!(follow_wall_clock(active, clock), active);
        // All of its partitions idle (or none at all): the wall clock.
        let idle = DomainWm { min_active: None, max_seen: Some(now - 12_000), used: 0 };
        assert_eq!(follow_wall_clock(idle, clock).max_seen, Some(now));
        let none = DomainWm { min_active: None, max_seen: None, used: 0 };
        assert_eq!(follow_wall_clock(none, clock).max_seen, Some(now));
        // Never past the cap, never below what it saw (events within max_future).
        assert_eq!(follow_wall_clock(idle, WallClock { cap: now - 1_000, ..clock }).max_seen, Some(now - 1_000));
        let ahead = DomainWm { min_active: None, max_seen: Some(now + 60_000), used: 0 };
        assert_eq!(follow_wall_clock(ahead, clock).max_seen, Some(now + 60_000));
        // A backlog from an hour ago stays where its events are.
        let old = DomainWm { min_active: None, max_seen: Some(now - 3_600_000), used: 0 };
        assert_eq!(follow_wall_clock(old, WallClock { job_watermark: now - 3_600_000, ..clock }), old);

        // The job follows only when no worker has an active partition of the domain.
        let mut g = GlobalClock::new(2, 1, &[]);
        let r = |worker, epoch, wm: DomainWm| WmReport { worker, epoch, domains: vec![wm] };
        g.complete_epoch(1, [r(0, 1, follow_wall_clock(idle, clock)), r(1, 1, follow_wall_clock(active, clock))]);
        assert_eq!(g.watermark(0), now - 5_000);
        g.complete_epoch(2, [r(1, 2, follow_wall_clock(DomainWm { min_active: None, ..active }, clock))]);
        assert_eq!(g.watermark(0), now);
    }

    #[test]
    fn global_watermark_needs_every_worker_and_is_monotone() {
        let mut g = GlobalClock::new(2, 1, &[]);
        g.complete_epoch(1, [report(0, 1, Some(100), Some(100), WM_START)]);
        assert_eq!(g.watermark(0), WM_START, "worker 1 has not reported");
        g.complete_epoch(2, [report(1, 2, Some(50), Some(80), 10)]);
        assert_eq!((g.watermark(0), g.closed(0)), (50, WM_START));
        g.complete_epoch(3, [report(0, 3, Some(200), Some(200), 40), report(1, 3, None, Some(90), 45)]);
        // Worker 1's partitions are idle: only worker 0's active partition counts.
        assert_eq!((g.watermark(0), g.closed(0)), (200, 40));
        g.complete_epoch(4, [report(0, 4, Some(10), Some(200), 30), report(1, 4, Some(20), Some(90), 30)]);
        assert_eq!((g.watermark(0), g.closed(0)), (200, 40), "never goes back");
    }
}
