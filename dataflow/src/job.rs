//! The worker loop: reads records, feeds the dataflow in epochs, hands
//! completed epochs' rows to the output, expires ingestion state, and commits
//! offsets once the rows of the epoch that released them are durable.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pulse_kafka::DeadLetter;
use pulse_model::metric_row::MetricRow;
use pulse_model::{Decoder, LatePolicy, Spec, TimeBounds};
use timely::worker::Worker;

use crate::graph::{self, Graph};
use crate::metrics::JobMetrics;
use crate::plan::JobPlan;
use crate::state::{Accepted, IngestState};
use crate::types::{WM_END, WmReport};
use crate::watermark::{WallClock, follow_wall_clock};

/// Next offset to commit per (domain, partition).
type Offsets = Vec<((usize, i32), i64)>;

/// One record read from a source.
pub struct Record<'a> {
    pub domain: usize,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub topic: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Records were read, or may come soon.
    Active,
    /// Nothing to read right now.
    Idle,
    /// The input is finished (replays); closes every window.
    Ended,
}

/// Where a worker's records come from (its Kafka partitions, a file, memory).
pub trait RecordSource {
    /// Reads up to `max` records without blocking for long.
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus;
    /// Commits the next offset to read per (domain, partition); `closed` is the
    /// job's closed watermark per domain, stored with the offsets for restarts.
    fn commit(&mut self, offsets: &[((usize, i32), i64)], closed: &[i64]);
    /// Whether each partition is read up to its end (a partition can only be
    /// idle when it is); sources that cannot tell report nothing.
    fn caught_up(&mut self) -> Vec<((usize, i32), bool)> {
        Vec::new()
    }
    /// Whether `Record::timestamp_ms` is the broker's record timestamp (the
    /// trust boundary's reference clock); replays number records instead.
    fn broker_timestamps(&self) -> bool {
        false
    }
}

/// A source with nothing to read.
pub struct NoSource;

impl RecordSource for NoSource {
    fn poll(&mut self, _max: usize, _f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
        SourceStatus::Idle
    }
    fn commit(&mut self, _offsets: &[((usize, i32), i64)], _closed: &[i64]) {}
}

/// Where a worker's rows go.
pub trait RowSink {
    /// Hands over the rows and dead letters of every epoch up to `epoch`.
    fn send(&mut self, epoch: u64, rows: Vec<MetricRow>, dead: Vec<DeadLetter>);
    /// The last epoch whose rows (and every earlier epoch's) are durable.
    fn durable_through(&mut self) -> Option<u64>;
    /// Records the job's progress (the closed watermark per domain) durably,
    /// before offsets computed from it are committed; `false`: not recorded
    /// (shutting down), commit nothing. Called only for epochs durable on
    /// every worker, so the finals it vouches for are all durable.
    fn record_progress(&mut self, _closed: &[i64]) -> bool {
        true
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub emit_interval: Duration,
    pub idle_timeout: Option<Duration>,
    pub late_policy: LatePolicy,
    /// Stop reading when this many epochs are not yet durable (backpressure).
    pub max_pending_epochs: u64,
    /// Replays: an epoch every this many records, and each epoch starts only
    /// once the previous one completed, which makes results independent of timing.
    pub replay_epoch_records: Option<usize>,
    /// Closed watermark per domain to resume from (from committed offsets).
    pub start: Vec<i64>,
    /// Revisions continue above this (the highest one already written).
    pub revision_floor: u64,
    /// Per metric (or empty): windows ending at or below this are already final.
    pub metric_floor: Vec<i64>,
    /// Finals of input windows that derived metrics have not closed yet
    /// (windows an input closed before a restart): worker 0 hands them in.
    pub derived_seed: Arc<Vec<crate::derived::InputRow>>,
    pub max_poll: usize,
}

impl WorkerConfig {
    pub fn live(spec: &Spec) -> WorkerConfig {
        WorkerConfig {
            emit_interval: spec.pipeline.emit_interval.as_std().max(Duration::from_millis(1)),
            idle_timeout: Some(spec.pipeline.idle_timeout.as_std()),
            late_policy: spec.pipeline.late_events,
            max_pending_epochs: 50,
            replay_epoch_records: None,
            start: Vec::new(),
            revision_floor: 0,
            metric_floor: Vec::new(),
            derived_seed: Arc::default(),
            max_poll: 5_000,
        }
    }

    pub fn replay(spec: &Spec, epoch_records: usize) -> WorkerConfig {
        WorkerConfig {
            idle_timeout: None,
            replay_epoch_records: Some(epoch_records.max(1)),
            max_pending_epochs: 4,
            max_poll: 10_000,
            ..WorkerConfig::live(spec)
        }
    }
}

/// What a worker did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerSummary {
    pub records: u64,
    pub events: u64,
    pub late: u64,
    pub stale: u64,
    /// Ids already counted in an open window (retries of immutable events).
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub finals: u64,
    pub revisions: u64,
    pub epochs: u64,
    /// Window state at its largest (bytes), and the events it held then.
    pub peak_state_bytes: u64,
    pub peak_open_events: u64,
    /// Open windows then, and the bytes of sketches (`hll`, `ddsketch`) among the state's.
    pub peak_open_windows: u64,
    pub peak_sketch_bytes: u64,
}

/// Runs one worker until its source ends (and every window is closed and
/// durable) or `stop` is set (then it drains what it has and commits).
pub fn run_worker(
    worker: &mut Worker,
    spec: Arc<Spec>,
    source: &mut dyn RecordSource,
    sink: &mut dyn RowSink,
    cfg: &WorkerConfig,
    metrics: &JobMetrics,
    stop: &AtomicBool,
) -> WorkerSummary {
    let plan = Arc::new(JobPlan::new(&spec));
    let domains = spec.domains.len();
    let mut graph: Graph = graph::build(worker, Arc::clone(&plan), domains, &cfg.start, &cfg.metric_floor, cfg.revision_floor);
    let mut state = IngestState::new(Arc::clone(&spec), Arc::clone(&plan), &cfg.start);
    let decoders: Vec<Decoder> = spec.domains.iter().map(Decoder::new).collect();
    let bounds: Vec<TimeBounds> = spec.domains.iter().map(TimeBounds::of).collect();
    let judge_time = source.broker_timestamps();
    let index = worker.index();
    let replay = cfg.replay_epoch_records.is_some();
    let interval_ms = cfg.emit_interval.as_millis().max(1) as u64;
    // One epoch clock for the whole job: live epochs are numbered by the wall
    // clock (emit intervals since the Unix epoch), so that a worker that started
    // late (a slow Kafka start) joins the others' epochs instead of lagging them
    // by its start delay for good.
    let epoch_of = || -> u64 { 1 + u64::try_from(pulse_model::now_ms()).unwrap_or(0) / interval_ms };

    let mut summary = WorkerSummary::default();
    let mut epoch: u64 = if replay { 1 } else { epoch_of() };
    let first_epoch = epoch;
    graph.advance_to(epoch);
    if index == 0 {
        for r in cfg.derived_seed.iter() {
            graph.deltas.send(crate::types::Delta::Input(r.clone()));
        }
    }
    let mut in_epoch = 0usize;
    let mut adopted = true;
    let mut ended = false;
    // The last epoch that carried data (after the input ended or a stop).
    let mut final_epoch: Option<u64> = None;
    let mut stopping = false;
    let mut dead_now: Vec<DeadLetter> = Vec::new();
    let mut dead_by_epoch: VecDeque<(u64, Vec<DeadLetter>)> = VecDeque::new();
    let mut sent_through: u64 = 0;
    let mut durable_input_at: u64 = 0;
    // Per completed epoch: the offsets it allows to commit and the closed watermarks.
    let mut commits: VecDeque<(u64, Offsets, Vec<i64>)> = VecDeque::new();
    let late_to_dlq = cfg.late_policy == LatePolicy::DeadLetter;
    // Counter handles per domain, resolved once (label lookups are not free per event).
    let counter = |outcome: &str| -> Vec<_> { spec.domains.iter().map(|d| metrics.events.with_label_values(&[&d.name, outcome])).collect() };
    let (counted_c, stale_c, dead_c, dup_c) = (counter("counted"), counter("stale"), counter("dead_lettered"), counter("duplicate"));
    let late_c: Vec<_> = spec.domains.iter().map(|d| metrics.late.with_label_values(&[&d.name])).collect();

    loop {
        let now = Instant::now();
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
            tracing::info!(worker = index, "stopping: draining the current epoch");
        }
        // Every epoch below the probe's frontier is complete on every worker.
        let completed = graph.probe.with_frontier(|f| f.first().map_or(epoch, |t| t.saturating_sub(1)));

        // 1. Read, unless the input ended, we are stopping, or outputs lag behind.
        let backlogged = epoch.saturating_sub(durable_input_at.max(first_epoch)) > cfg.max_pending_epochs;
        let barrier = replay && completed + 1 < epoch;
        let mut status = SourceStatus::Idle;
        if final_epoch.is_none() && !ended && !stopping && !backlogged && !barrier {
            if !adopted {
                // The new epoch drops late data against the latest job watermark.
                let shared = graph.shared.borrow();
                for d in 0..domains {
                    state.used[d] = state.used[d].max(shared.clock.watermark(d));
                }
                adopted = true;
            }
            let budget = match cfg.replay_epoch_records {
                Some(n) => n.saturating_sub(in_epoch).clamp(1, cfg.max_poll),
                None => cfg.max_poll,
            };
            let wall_ms = pulse_model::now_ms();
            state.set_wall_clock(wall_ms);
            status = source.poll(budget, &mut |rec| {
                summary.records += 1;
                in_epoch += 1;
                let d = rec.domain;
                let decoded = match rec.payload {
                    Some(bytes) => decoders[rec.domain].decode(bytes).map_err(|e| e.to_string()),
                    None => Err("empty record (no payload)".to_string()),
                };
                // The trust boundary: an event time far from its record's broker
                // timestamp is refused here as at the sink, and never moves a watermark.
                let decoded = decoded.and_then(|ev| {
                    if judge_time { bounds[d].check_event(&ev, rec.timestamp_ms, wall_ms).map(|()| ev).map_err(|e| e.to_string()) } else { Ok(ev) }
                });
                match decoded {
                    Ok(mut ev) => {
                        // Without a version, the record's broker timestamp orders an event's
                        // versions (µs, as ingest writes them), the same rule as the raw tables.
                        if ev.version.is_none() {
                            ev.version = Some(u64::try_from(rec.timestamp_ms).unwrap_or(0).saturating_mul(1000));
                        }
                        let time = ev.time;
                        match state.offer(rec.domain, rec.partition, rec.offset, ev, now, &mut graph) {
                            Accepted::Counted => {
                                summary.events += 1;
                                counted_c[d].inc();
                            }
                            Accepted::Stale => {
                                summary.stale += 1;
                                stale_c[d].inc();
                            }
                            Accepted::Duplicate => {
                                summary.duplicates += 1;
                                dup_c[d].inc();
                            }
                            Accepted::Late => {
                                summary.late += 1;
                                late_c[d].inc();
                                if late_to_dlq {
                                    dead_now.push(dead_letter(&rec, format!("late: every window of event time {time} is closed")));
                                }
                            }
                        }
                    }
                    Err(reason) => {
                        state.advance_offset(rec.domain, rec.partition, rec.offset + 1);
                        summary.dead_lettered += 1;
                        dead_c[d].inc();
                        dead_now.push(dead_letter(&rec, reason));
                    }
                }
            });
            if status == SourceStatus::Ended {
                ended = true;
                // The last data epoch reports "nothing more will come": every window closes.
                for u in state.used.iter_mut() {
                    *u = WM_END;
                }
                tracing::debug!(worker = index, epoch, "input ended: closing every window");
            }
        }

        // 2. Epoch boundary: send the epoch's contributions and this worker's watermark report.
        let boundary = match final_epoch {
            // After the last data epoch, keep time moving with the rest of the job.
            Some(_) => completed + 1 >= epoch,
            None if ended || stopping => true,
            None => match cfg.replay_epoch_records {
                Some(n) => in_epoch >= n,
                None => epoch_of() > epoch,
            },
        };
        if boundary {
            for ((d, p), caught) in source.caught_up() {
                state.set_caught_up(d, p, caught, now);
            }
            state.flush_epoch(&mut graph);
            // A worker whose input ended has no active partition left.
            let idle = if ended { Some(Duration::ZERO) } else { cfg.idle_timeout };
            let mut report = state.report(now, idle);
            // Live: a quiet domain's watermark follows the wall clock (see `watermark`).
            if let (Some(idle), false, false) = (cfg.idle_timeout, replay, ended) {
                let wall = pulse_model::now_ms();
                let shared = graph.shared.borrow();
                for (d, wm) in report.iter_mut().enumerate() {
                    let lateness = plan.by_domain[d].iter().map(|&m| plan.metrics[m].lateness).max().unwrap_or(0);
                    let current_within = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX).saturating_add(lateness);
                    let clock = WallClock { now_ms: wall, cap: bounds[d].watermark_cap(wall), job_watermark: shared.clock.watermark(d), current_within };
                    *wm = follow_wall_clock(*wm, clock);
                }
            }
            graph.reports.send(WmReport { worker: index, epoch, domains: report });
            dead_by_epoch.push_back((epoch, std::mem::take(&mut dead_now)));
            if (ended || stopping) && final_epoch.is_none() {
                final_epoch = Some(epoch);
            }
            epoch = if replay || final_epoch.is_some() { epoch + 1 } else { epoch_of().max(epoch + 1) };
            in_epoch = 0;
            adopted = false;
            graph.advance_to(epoch);
            summary.epochs += 1;
        }

        // 3. Let the dataflow work.
        if status == SourceStatus::Active {
            worker.step();
        } else {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }

        // 4. Completed epochs: rows out, ingestion state expired, offsets to commit.
        let completed = graph.probe.with_frontier(|f| f.first().map_or(epoch, |t| t.saturating_sub(1)));
        if completed > sent_through {
            let (rows, closed, stats) = {
                let mut shared = graph.shared.borrow_mut();
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
            while dead_by_epoch.front().is_some_and(|(e, _)| *e <= completed) {
                if let Some((_, d)) = dead_by_epoch.pop_front() {
                    dead.extend(d);
                }
            }
            summary.finals = stats.finals;
            summary.revisions = stats.revisions;
            let bytes: usize = stats.state.iter().map(|s| s.bytes).sum();
            if bytes as u64 > summary.peak_state_bytes {
                summary.peak_state_bytes = bytes as u64;
                summary.peak_open_events = stats.state.iter().map(|s| s.events).sum();
                summary.peak_open_windows = stats.state.iter().map(|s| s.windows as u64).sum();
                summary.peak_sketch_bytes = stats.state.iter().map(|s| s.sketch_bytes as u64).sum();
            }
            metrics.observe_emitter(&stats, &spec.metrics, index);
            sink.send(completed, rows, dead);
            state.expire(&closed, &mut graph);
            let offsets: Vec<((usize, i32), i64)> = state.offsets.iter_mut().map(|(k, o)| (*k, o.committable(closed[k.0]))).collect();
            commits.push_back((completed, offsets, closed));
            metrics.epoch_completed_ms.set(pulse_model::now_ms());
            sent_through = completed;
            let shared = graph.shared.borrow();
            for (d, dom) in spec.domains.iter().enumerate() {
                metrics.observe_watermark(&dom.name, shared.clock.watermark(d));
            }
            metrics.retained.with_label_values(&["live_events"]).set(state.live_events() as i64);
            for ((m, (admitted, all)), overflowed) in spec.metrics.iter().zip(state.open_groups()).zip(&state.overflowed) {
                metrics.open_groups.with_label_values(&[&m.name, "admitted"]).set(admitted as i64);
                metrics.open_groups.with_label_values(&[&m.name, "all"]).set(all as i64);
                metrics.overflow.with_label_values(&[&m.name]).set(*overflowed as i64);
            }
        }

        // 5. Durability reported by the output moves the durable input's frontier.
        if let Some(d) = sink.durable_through()
            && d + 1 > durable_input_at
        {
            durable_input_at = d + 1;
            graph.durable.advance_to(durable_input_at);
        }

        // 6. Commit what every worker has made durable.
        while let Some((e, _, _)) = commits.front() {
            if graph.durable_probe.less_equal(e) {
                break;
            }
            if let Some((_, offsets, closed)) = commits.pop_front() {
                if !sink.record_progress(&closed) {
                    break;
                }
                source.commit(&offsets, &closed);
            }
        }

        // 7. Done: after the last data epoch, once what must be final is final and durable.
        if let Some(f) = final_epoch {
            let (all_closed, handed_over) = {
                let shared = graph.shared.borrow();
                (!ended || shared.clock.closed_all().iter().all(|&c| c >= WM_END), shared.rows.is_empty())
            };
            if sent_through >= f && all_closed && handed_over && commits.is_empty() && !graph.durable_probe.less_equal(&sent_through) {
                break;
            }
        }
    }
    let (probe, _durable_probe, _shared, durable) = graph.close();
    drop(durable);
    while !probe.done() {
        worker.step();
    }
    tracing::debug!(worker = index, ?summary, "worker finished");
    summary
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
