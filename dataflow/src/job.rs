//! What a worker runs on: where its records come from ([`RecordSource`]),
//! where its rows go ([`RowSink`]), its configuration, and [`run_worker`],
//! the loop whose phases are the [`Driver`]'s (see `driver`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pulse_kafka::DeadLetter;
use pulse_model::metric_row::MetricRow;
use pulse_model::{LatePolicy, Spec};
use timely::worker::Worker;

pub use crate::driver::Driver;
use crate::metrics::JobMetrics;

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
/// durable) or `stop` is set (then it drains what it has and commits). The
/// phases of the loop are [`Driver`]'s methods.
pub fn run_worker(
    worker: &mut Worker,
    spec: Arc<Spec>,
    source: &mut dyn RecordSource,
    sink: &mut dyn RowSink,
    cfg: &WorkerConfig,
    metrics: &JobMetrics,
    stop: &AtomicBool,
) -> WorkerSummary {
    let mut driver = Driver::new(worker, spec, cfg, metrics, source.broker_timestamps());
    loop {
        driver.check_stop(stop);
        let status = driver.read(source);
        driver.end_epoch(source);
        if status == SourceStatus::Active {
            worker.step();
        } else {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        driver.take_completed(sink);
        driver.note_durable(sink);
        driver.commit(source, sink);
        if driver.finished() {
            break;
        }
    }
    driver.close(worker)
}
