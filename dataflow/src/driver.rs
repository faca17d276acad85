//! A worker's driver: the loop around the dataflow, one method per phase.
//!
//! ```text
//! loop:
//!   read          records → decoded events → ingestion state (pane changes for this epoch)
//!   end_epoch     when the epoch is due: its changes and this worker's watermark report go in
//!   step          the dataflow works (emitter, derived stage)
//!   take_completed  epochs every worker completed: rows and dead letters to the output,
//!                 ingestion state expired, offsets that epoch allows queued for commit
//!   note_durable  the output's durable epoch moves the durable input's frontier
//!   commit        epochs durable on every worker: progress recorded, then offsets committed
//!   finished      after the last data epoch, once everything is final and durable
//! ```
//!
//! Offsets are committed here and nowhere else; windows close in the emitter
//! (`emit`) from the watermarks this driver reports (`watermark`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulse_kafka::DeadLetter;
use pulse_model::metric_row::MetricRow;
use pulse_model::{Decoder, LatePolicy, Spec, TimeBounds};
use pulse_ops::prometheus::IntCounter;
use timely::worker::Worker;

use crate::graph::{self, Graph};
use crate::job::{Record, RecordSource, RowSink, SourceStatus, WorkerConfig, WorkerSummary};
use crate::metrics::JobMetrics;
use crate::plan::JobPlan;
use crate::state::{Accepted, IngestState};
use crate::types::{WM_END, WmReport};
use crate::watermark::{WallClock, follow_wall_clock};

/// Next offset to commit per (domain, partition).
type Offsets = Vec<((usize, i32), i64)>;

/// An epoch every worker completed, waiting to be durable on every worker
/// before its progress is recorded and its offsets committed.
struct PendingCommit {
    epoch: u64,
    offsets: Offsets,
    /// The job's closed watermark per domain as of that epoch.
    closed: Vec<i64>,
}

/// Per-domain event counters, resolved once (label lookups are not free per event).
struct Counters {
    counted: Vec<IntCounter>,
    stale: Vec<IntCounter>,
    dead_lettered: Vec<IntCounter>,
    duplicate: Vec<IntCounter>,
    late: Vec<IntCounter>,
}

impl Counters {
    fn new(spec: &Spec, metrics: &JobMetrics) -> Counters {
        let events = |outcome: &str| -> Vec<IntCounter> { spec.domains.iter().map(|d| metrics.events.with_label_values(&[&d.name, outcome])).collect() };
        Counters {
            counted: events("counted"),
            stale: events("stale"),
            dead_lettered: events("dead_lettered"),
            duplicate: events("duplicate"),
            late: spec.domains.iter().map(|d| metrics.late.with_label_values(&[&d.name])).collect(),
        }
    }
}

/// The epoch clock of a worker. Live epochs are numbered by the wall clock
/// (emit intervals since the Unix epoch), so that a worker that started late
/// (a slow Kafka start) joins the others' epochs instead of lagging them by
/// its start delay for good; replays number epochs 1, 2, … by record count.
struct Epochs {
    /// The epoch records are read into now.
    current: u64,
    first: u64,
    /// Records read into the current epoch.
    records: usize,
    /// Whether the current epoch took the job's latest watermark for dropping late data.
    adopted: bool,
    interval_ms: u64,
    replay: bool,
}

impl Epochs {
    fn new(cfg: &WorkerConfig) -> Epochs {
        let interval_ms = cfg.emit_interval.as_millis().max(1) as u64;
        let replay = cfg.replay_epoch_records.is_some();
        let current = if replay { 1 } else { Self::of_wall_clock(interval_ms) };
        Epochs { current, first: current, records: 0, adopted: true, interval_ms, replay }
    }

    fn of_wall_clock(interval_ms: u64) -> u64 {
        1 + u64::try_from(pulse_model::now_ms()).unwrap_or(0) / interval_ms
    }

    fn wall_clock(&self) -> u64 {
        Self::of_wall_clock(self.interval_ms)
    }
}

/// How the worker's run ends: its input ended (replays), or a stop was asked.
#[derive(Default)]
struct Ending {
    ended: bool,
    stopping: bool,
    /// The last epoch that carried data (after the input ended or a stop).
    final_epoch: Option<u64>,
}

/// One worker's loop state (see the module docs).
pub struct Driver<'a> {
    spec: Arc<Spec>,
    plan: Arc<JobPlan>,
    cfg: &'a WorkerConfig,
    metrics: &'a JobMetrics,
    index: usize,
    graph: Graph,
    state: IngestState,
    decoders: Vec<Decoder>,
    bounds: Vec<TimeBounds>,
    /// Whether records carry the broker's timestamp (the trust boundary's reference clock).
    judge_time: bool,
    counters: Counters,
    epochs: Epochs,
    ending: Ending,
    /// Dead letters of the current epoch, then per ended epoch until it completes.
    dead_now: Vec<DeadLetter>,
    dead_by_epoch: VecDeque<(u64, Vec<DeadLetter>)>,
    /// The last completed epoch whose rows went to the output.
    sent_through: u64,
    /// The durable input's frontier (the output is durable below it).
    durable_input_at: u64,
    commits: VecDeque<PendingCommit>,
    summary: WorkerSummary,
}

impl<'a> Driver<'a> {
    /// Builds the worker's dataflow and starts at its first epoch; worker 0
    /// hands in the derived metrics' seed.
    pub fn new(worker: &mut Worker, spec: Arc<Spec>, cfg: &'a WorkerConfig, metrics: &'a JobMetrics, judge_time: bool) -> Driver<'a> {
        let plan = Arc::new(JobPlan::new(&spec));
        let domains = spec.domains.len();
        let mut graph = graph::build(worker, Arc::clone(&plan), domains, &cfg.start, &cfg.metric_floor, cfg.revision_floor);
        let state = IngestState::new(Arc::clone(&spec), Arc::clone(&plan), &cfg.start);
        let epochs = Epochs::new(cfg);
        graph.advance_to(epochs.current);
        let index = worker.index();
        if index == 0 {
            for r in cfg.derived_seed.iter() {
                graph.deltas.send(crate::types::Delta::Input(r.clone()));
            }
        }
        Driver {
            decoders: spec.domains.iter().map(Decoder::new).collect(),
            bounds: spec.domains.iter().map(TimeBounds::of).collect(),
            counters: Counters::new(&spec, metrics),
            judge_time,
            spec,
            plan,
            cfg,
            metrics,
            index,
            graph,
            state,
            epochs,
            ending: Ending::default(),
            dead_now: Vec::new(),
            dead_by_epoch: VecDeque::new(),
            sent_through: 0,
            durable_input_at: 0,
            commits: VecDeque::new(),
            summary: WorkerSummary::default(),
        }
    }

    /// Every epoch below the probe's frontier is complete on every worker.
    fn completed(&self) -> u64 {
        self.graph.probe.with_frontier(|f| f.first().map_or(self.epochs.current, |t| t.saturating_sub(1)))
    }

    /// A stop was asked: the current epoch is drained and committed, nothing more is read.
    pub fn check_stop(&mut self, stop: &AtomicBool) {
        if !self.ending.stopping && stop.load(Ordering::Relaxed) {
            self.ending.stopping = true;
            tracing::info!(worker = self.index, "stopping: draining the current epoch");
        }
    }

    /// Reads records into the current epoch, unless the input ended, the
    /// worker is stopping, or outputs lag behind (backpressure); replays
    /// read an epoch only once the previous one completed.
    pub fn read(&mut self, source: &mut dyn RecordSource) -> SourceStatus {
        let backlogged = self.epochs.current.saturating_sub(self.durable_input_at.max(self.epochs.first)) > self.cfg.max_pending_epochs;
        let barrier = self.epochs.replay && self.completed() + 1 < self.epochs.current;
        if self.ending.final_epoch.is_some() || self.ending.ended || self.ending.stopping || backlogged || barrier {
            return SourceStatus::Idle;
        }
        if !self.epochs.adopted {
            // The new epoch drops late data against the latest job watermark.
            let shared = self.graph.shared.borrow();
            for (d, used) in self.state.used.iter_mut().enumerate() {
                *used = (*used).max(shared.clock.watermark(d));
            }
            self.epochs.adopted = true;
        }
        let budget = match self.cfg.replay_epoch_records {
            Some(n) => n.saturating_sub(self.epochs.records).clamp(1, self.cfg.max_poll),
            None => self.cfg.max_poll,
        };
        let wall_ms = pulse_model::now_ms();
        self.state.set_wall_clock(wall_ms);
        let now = Instant::now();
        let status = source.poll(budget, &mut |rec| self.ingest(&rec, wall_ms, now));
        if status == SourceStatus::Ended {
            self.ending.ended = true;
            // The last data epoch reports "nothing more will come": every window closes.
            for u in self.state.used.iter_mut() {
                *u = WM_END;
            }
            tracing::debug!(worker = self.index, epoch = self.epochs.current, "input ended: closing every window");
        }
        status
    }

    /// One record: decoded, judged at the trust boundary, offered to the ingestion state.
    fn ingest(&mut self, rec: &Record<'_>, wall_ms: i64, now: Instant) {
        self.summary.records += 1;
        self.epochs.records += 1;
        let d = rec.domain;
        let decoded = match rec.payload {
            Some(bytes) => self.decoders[d].decode(bytes).map_err(|e| e.to_string()),
            None => Err("empty record (no payload)".to_string()),
        };
        // The trust boundary: an event time far from its record's broker
        // timestamp is refused here as at the sink, and never moves a watermark.
        let decoded = decoded.and_then(|ev| {
            if self.judge_time { self.bounds[d].check_event(&ev, rec.timestamp_ms, wall_ms).map(|()| ev).map_err(|e| e.to_string()) } else { Ok(ev) }
        });
        let mut ev = match decoded {
            Ok(ev) => ev,
            Err(reason) => {
                self.state.advance_offset(d, rec.partition, rec.offset + 1);
                self.summary.dead_lettered += 1;
                self.counters.dead_lettered[d].inc();
                self.dead_now.push(dead_letter(rec, reason));
                return;
            }
        };
        // Without a version, the record's broker timestamp orders an event's
        // versions (µs, as ingest writes them), the same rule as the raw tables.
        if ev.version.is_none() {
            ev.version = Some(u64::try_from(rec.timestamp_ms).unwrap_or(0).saturating_mul(1000));
        }
        let time = ev.time;
        match self.state.offer(d, rec.partition, rec.offset, ev, now, &mut self.graph) {
            Accepted::Counted => {
                self.summary.events += 1;
                self.counters.counted[d].inc();
            }
            Accepted::Stale => {
                self.summary.stale += 1;
                self.counters.stale[d].inc();
            }
            Accepted::Duplicate => {
                self.summary.duplicates += 1;
                self.counters.duplicate[d].inc();
            }
            Accepted::Late => {
                self.summary.late += 1;
                self.counters.late[d].inc();
                if self.cfg.late_policy == LatePolicy::DeadLetter {
                    self.dead_now.push(dead_letter(rec, format!("late: every window of event time {time} is closed")));
                }
            }
        }
    }

    /// Whether the current epoch ends now: live, when the wall clock moved to
    /// the next emit interval; replays, after their records per epoch; after
    /// the last data epoch, in step with the rest of the job.
    fn epoch_due(&self) -> bool {
        match self.ending.final_epoch {
            Some(_) => self.completed() + 1 >= self.epochs.current,
            None if self.ending.ended || self.ending.stopping => true,
            None => match self.cfg.replay_epoch_records {
                Some(n) => self.epochs.records >= n,
                None => self.epochs.wall_clock() > self.epochs.current,
            },
        }
    }

    /// Ends the current epoch when it is due: sends its changes and this
    /// worker's watermark report, and moves every input to the next epoch.
    pub fn end_epoch(&mut self, source: &mut dyn RecordSource) {
        if !self.epoch_due() {
            return;
        }
        let now = Instant::now();
        for ((d, p), caught) in source.caught_up() {
            self.state.set_caught_up(d, p, caught, now);
        }
        self.state.flush_epoch(&mut self.graph);
        // A worker whose input ended has no active partition left.
        let idle = if self.ending.ended { Some(Duration::ZERO) } else { self.cfg.idle_timeout };
        let mut report = self.state.report(now, idle);
        // Live: a quiet domain's watermark follows the wall clock (see `watermark`).
        if let (Some(idle), false, false) = (self.cfg.idle_timeout, self.epochs.replay, self.ending.ended) {
            let wall = pulse_model::now_ms();
            let shared = self.graph.shared.borrow();
            for (d, wm) in report.iter_mut().enumerate() {
                let lateness = self.plan.by_domain[d].iter().map(|&m| self.plan.metrics[m].lateness).max().unwrap_or(0);
                let current_within = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX).saturating_add(lateness);
                let clock = WallClock { now_ms: wall, cap: self.bounds[d].watermark_cap(wall), job_watermark: shared.clock.watermark(d), current_within };
                *wm = follow_wall_clock(*wm, clock);
            }
        }
        let epoch = self.epochs.current;
        self.graph.reports.send(WmReport { worker: self.index, epoch, domains: report });
        self.dead_by_epoch.push_back((epoch, std::mem::take(&mut self.dead_now)));
        if (self.ending.ended || self.ending.stopping) && self.ending.final_epoch.is_none() {
            self.ending.final_epoch = Some(epoch);
        }
        self.epochs.current = if self.epochs.replay || self.ending.final_epoch.is_some() { epoch + 1 } else { self.epochs.wall_clock().max(epoch + 1) };
        self.epochs.records = 0;
        self.epochs.adopted = false;
        self.graph.advance_to(self.epochs.current);
        self.summary.epochs += 1;
    }

    /// Epochs every worker completed: their rows and dead letters go to the
    /// output, the ingestion state forgets what closed, and the offsets they
    /// allow wait for durability.
    pub fn take_completed(&mut self, sink: &mut dyn RowSink) {
        let completed = self.completed();
        if completed <= self.sent_through {
            return;
        }
        let (rows, closed, stats) = {
            let mut shared = self.graph.shared.borrow_mut();
            let rows: Vec<MetricRow> = std::mem::take(&mut shared.rows).into_iter().map(|(_, r)| r).collect();
            // The closed watermarks of the completed epoch (the emitter may have completed later ones).
            let mut closed = None;
            while shared.closed_at.front().is_some_and(|(t, _)| *t <= completed) {
                closed = shared.closed_at.pop_front().map(|(_, c)| c);
            }
            let closed = closed.unwrap_or_else(|| shared.clock.closed_all().to_vec());
            (rows, closed, shared.emitter_stats.clone())
        };
        let mut dead = Vec::new();
        while self.dead_by_epoch.front().is_some_and(|(e, _)| *e <= completed) {
            if let Some((_, d)) = self.dead_by_epoch.pop_front() {
                dead.extend(d);
            }
        }
        self.summary.finals = stats.finals;
        self.summary.revisions = stats.revisions;
        let bytes: usize = stats.state.iter().map(|s| s.bytes).sum();
        if bytes as u64 > self.summary.peak_state_bytes {
            self.summary.peak_state_bytes = bytes as u64;
            self.summary.peak_open_events = stats.state.iter().map(|s| s.events).sum();
            self.summary.peak_open_windows = stats.state.iter().map(|s| s.windows as u64).sum();
            self.summary.peak_sketch_bytes = stats.state.iter().map(|s| s.sketch_bytes as u64).sum();
        }
        self.metrics.observe_emitter(&stats, &self.spec.metrics, self.index);
        sink.send(completed, rows, dead);
        self.state.expire(&closed, &mut self.graph);
        let offsets: Offsets = self.state.offsets.iter_mut().map(|(k, o)| (*k, o.committable(closed[k.0]))).collect();
        self.commits.push_back(PendingCommit { epoch: completed, offsets, closed });
        self.sent_through = completed;
        self.observe();
    }

    /// The gauges a completed epoch moves.
    fn observe(&self) {
        let metrics = self.metrics;
        metrics.epoch_completed_ms.set(pulse_model::now_ms());
        let shared = self.graph.shared.borrow();
        for (d, dom) in self.spec.domains.iter().enumerate() {
            metrics.observe_watermark(&dom.name, shared.clock.watermark(d));
        }
        metrics.retained.with_label_values(&["live_events"]).set(self.state.live_events() as i64);
        for ((m, (admitted, all)), overflowed) in self.spec.metrics.iter().zip(self.state.open_groups()).zip(&self.state.overflowed) {
            metrics.open_groups.with_label_values(&[&m.name, "admitted"]).set(admitted as i64);
            metrics.open_groups.with_label_values(&[&m.name, "all"]).set(all as i64);
            metrics.overflow.with_label_values(&[&m.name]).set(*overflowed as i64);
        }
    }

    /// Durability reported by the output moves the durable input's frontier.
    pub fn note_durable(&mut self, sink: &mut dyn RowSink) {
        if let Some(d) = sink.durable_through()
            && d + 1 > self.durable_input_at
        {
            self.durable_input_at = d + 1;
            self.graph.durable.advance_to(self.durable_input_at);
        }
    }

    /// Commits what every worker has made durable: the job's progress first
    /// (ClickHouse), then the offsets (Kafka), epoch by epoch.
    pub fn commit(&mut self, source: &mut dyn RecordSource, sink: &mut dyn RowSink) {
        while let Some(next) = self.commits.front() {
            if self.graph.durable_probe.less_equal(&next.epoch) {
                break;
            }
            let Some(c) = self.commits.pop_front() else { break };
            if !sink.record_progress(&c.closed) {
                break;
            }
            source.commit(&c.offsets, &c.closed);
        }
    }

    /// Done: after the last data epoch, once what must be final is final and durable.
    pub fn finished(&self) -> bool {
        let Some(f) = self.ending.final_epoch else { return false };
        let shared = self.graph.shared.borrow();
        let all_closed = !self.ending.ended || shared.clock.closed_all().iter().all(|&c| c >= WM_END);
        let handed_over = shared.rows.is_empty();
        self.sent_through >= f && all_closed && handed_over && self.commits.is_empty() && !self.graph.durable_probe.less_equal(&self.sent_through)
    }

    /// Closes the dataflow's inputs and lets it drain; returns what the worker did.
    pub fn close(self, worker: &mut Worker) -> WorkerSummary {
        let (probe, _durable_probe, _shared, durable) = self.graph.close();
        drop(durable);
        while !probe.done() {
            worker.step();
        }
        tracing::debug!(worker = self.index, summary = ?self.summary, "worker finished");
        self.summary
    }
}

fn dead_letter(rec: &Record<'_>, reason: String) -> DeadLetter {
    DeadLetter {
        source_topic: rec.topic.to_string(),
        partition: rec.partition,
        offset: rec.offset,
        stage: "dataflow".into(),
        reason,
        key: rec.key.map(<[u8]>::to_vec),
        payload: rec.payload.map(<[u8]>::to_vec),
    }
}
