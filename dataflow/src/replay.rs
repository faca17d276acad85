//! Running the job without Kafka: over records in memory (tests) or a JSON-lines
//! file (`pulse bench dataflow`), through the same decode + dataflow code, with
//! deterministic epochs. The end of the input closes every window.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use pulse_kafka::DeadLetter;
use pulse_model::Spec;
use pulse_model::metric_row::MetricRow;

use crate::job::{Record, RecordSource, RowSink, SourceStatus, WorkerConfig, WorkerSummary, run_worker};
use crate::metrics::JobMetrics;

/// One record of a replay: its domain, the partition it would be on, and its JSON.
#[derive(Debug, Clone)]
pub struct ReplayRecord {
    pub domain: usize,
    pub partition: i32,
    pub payload: Vec<u8>,
}

/// Records in memory; worker `w` of `n` reads the partitions `p` with `p % n == w`,
/// in the given order, offsets counted per partition.
pub struct MemorySource {
    records: Arc<Vec<ReplayRecord>>,
    next: usize,
    worker: usize,
    workers: usize,
    offsets: std::collections::HashMap<(usize, i32), i64>,
    topics: Vec<String>,
}

impl MemorySource {
    pub fn new(spec: &Spec, records: Arc<Vec<ReplayRecord>>, worker: usize, workers: usize) -> MemorySource {
        MemorySource {
            records,
            next: 0,
            worker,
            workers: workers.max(1),
            offsets: Default::default(),
            topics: spec.domains.iter().map(|d| d.topic.clone()).collect(),
        }
    }

    fn mine(&self, r: &ReplayRecord) -> bool {
        r.partition.rem_euclid(self.workers as i32) as usize == self.worker
    }
}

impl RecordSource for MemorySource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
        let records = Arc::clone(&self.records);
        let mut taken = 0;
        while taken < max && self.next < records.len() {
            let r = &records[self.next];
            self.next += 1;
            if !self.mine(r) {
                continue;
            }
            let offset = self.offsets.entry((r.domain, r.partition)).or_insert(0);
            f(Record {
                domain: r.domain,
                partition: r.partition,
                offset: *offset,
                // Replays order versions by position when records carry none.
                timestamp_ms: self.next as i64,
                key: None,
                payload: Some(&r.payload),
                topic: &self.topics[r.domain],
            });
            *offset += 1;
            taken += 1;
        }
        // Look ahead: ended once nothing of ours remains.
        while self.next < records.len() && !self.mine(&records[self.next]) {
            self.next += 1;
        }
        if self.next >= records.len() { SourceStatus::Ended } else { SourceStatus::Active }
    }

    fn commit(&mut self, _offsets: &[((usize, i32), i64)], _closed: &[i64]) {}
}

/// A JSON-lines file of one domain's events. Each line's partition is the hash
/// of its key value (found by a light scan), like Kafka's keyed partitioning;
/// worker `w` of `n` reads the partitions `p` with `p % n == w`.
pub struct FileSource {
    reader: BufReader<File>,
    line: Vec<u8>,
    domain: usize,
    key_pattern: Vec<u8>,
    partitions: i32,
    worker: usize,
    workers: usize,
    offsets: std::collections::HashMap<i32, i64>,
    topic: String,
    pub lines: u64,
}

impl FileSource {
    pub fn open(spec: &Spec, path: &Path, domain: usize, worker: usize, workers: usize) -> std::io::Result<FileSource> {
        let d = &spec.domains[domain];
        Ok(FileSource {
            reader: BufReader::with_capacity(1 << 20, File::open(path)?),
            line: Vec::with_capacity(512),
            domain,
            key_pattern: format!("\"{}\":", d.key_field().name).into_bytes(),
            partitions: d.partitions.max(1),
            worker,
            workers: workers.max(1),
            offsets: Default::default(),
            topic: d.topic.clone(),
            lines: 0,
        })
    }

    /// Partition of a line: hash of the text after `"key":` up to the next comma or brace.
    fn partition_of(&self, line: &[u8]) -> i32 {
        let p = &self.key_pattern;
        let value = (0..line.len().saturating_sub(p.len()))
            .find(|&i| line[i] == b'"' && line[i..].starts_with(p))
            .map(|i| {
                let rest = &line[i + p.len()..];
                let end = rest.iter().position(|&c| c == b',' || c == b'}').unwrap_or(rest.len());
                &rest[..end]
            })
            .unwrap_or(line);
        (xxhash_rust::xxh3::xxh3_64(value) % self.partitions as u64) as i32
    }
}

impl RecordSource for FileSource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
        let mut taken = 0;
        while taken < max {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return SourceStatus::Ended,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("replay input: {e}");
                    return SourceStatus::Ended;
                }
            }
            while self.line.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                continue;
            }
            self.lines += 1;
            let partition = self.partition_of(&self.line);
            if partition as usize % self.workers != self.worker {
                continue;
            }
            let offset = self.offsets.entry(partition).or_insert(0);
            let o = *offset;
            *offset += 1;
            // Replays order versions by line when records carry none.
            let line = self.lines as i64;
            f(Record { domain: self.domain, partition, offset: o, timestamp_ms: line, key: None, payload: Some(&self.line), topic: &self.topic });
            taken += 1;
        }
        SourceStatus::Active
    }

    fn commit(&mut self, _offsets: &[((usize, i32), i64)], _closed: &[i64]) {}
}

/// Keeps every row (or only finals) as it is emitted; durable at once.
#[derive(Default)]
pub struct CollectSink {
    pub rows: Vec<MetricRow>,
    pub finals_only: bool,
    pub dead: Vec<DeadLetter>,
    pub revisions: u64,
    durable: Option<u64>,
}

impl RowSink for CollectSink {
    fn send(&mut self, epoch: u64, rows: Vec<MetricRow>, dead: Vec<DeadLetter>) {
        for r in rows {
            if r.is_final || !self.finals_only {
                self.rows.push(r);
            } else {
                self.revisions += 1;
            }
        }
        self.dead.extend(dead);
        self.durable = Some(epoch);
    }

    fn durable_through(&mut self) -> Option<u64> {
        self.durable
    }
}

/// What a replay produced.
#[derive(Debug, Default)]
pub struct ReplayResult {
    pub rows: Vec<MetricRow>,
    pub dead: Vec<DeadLetter>,
    pub workers: Vec<WorkerSummary>,
    pub revisions: u64,
    pub peak_state: StateSize,
}

/// The size of the job's window state.
#[derive(Debug, Default, Clone, Copy)]
pub struct StateSize {
    pub bytes: u64,
    /// Events held in open panes, counted once per metric.
    pub open_events: u64,
    /// Open windows (over every metric), and the bytes of sketches among `bytes`.
    pub open_windows: u64,
    pub sketch_bytes: u64,
}

impl ReplayResult {
    pub fn total(&self, f: impl Fn(&WorkerSummary) -> u64) -> u64 {
        self.workers.iter().map(f).sum()
    }
}

/// The input of a replay.
#[derive(Clone)]
pub enum ReplayInput {
    Memory(Arc<Vec<ReplayRecord>>),
    File { path: PathBuf, domain: usize },
}

/// Runs a replay on `workers` timely workers in this process.
pub fn run(spec: Arc<Spec>, input: ReplayInput, workers: usize, epoch_records: usize, finals_only: bool) -> Result<ReplayResult, String> {
    let registry = pulse_ops::prometheus::Registry::new();
    let metrics = JobMetrics::new(&registry).map_err(|e| e.to_string())?;
    let out: Arc<Mutex<Vec<(WorkerSummary, CollectSink)>>> = Arc::new(Mutex::new(Vec::new()));
    let out2 = Arc::clone(&out);
    let config = timely::Config::process(workers.max(1));
    let guards = timely::execute(config, move |worker| {
        let cfg = WorkerConfig::replay(&spec, epoch_records);
        let (index, peers) = (worker.index(), worker.peers());
        let mut sink = CollectSink { finals_only, ..CollectSink::default() };
        let stop = AtomicBool::new(false);
        let summary = match &input {
            ReplayInput::Memory(records) => {
                let mut source = MemorySource::new(&spec, Arc::clone(records), index, peers);
                run_worker(worker, Arc::clone(&spec), &mut source, &mut sink, &cfg, &metrics, &stop)
            }
            ReplayInput::File { path, domain } => match FileSource::open(&spec, path, *domain, index, peers) {
                Ok(mut source) => run_worker(worker, Arc::clone(&spec), &mut source, &mut sink, &cfg, &metrics, &stop),
                Err(e) => {
                    tracing::error!("cannot open {}: {e}", path.display());
                    WorkerSummary::default()
                }
            },
        };
        if let Ok(mut o) = out2.lock() {
            o.push((summary, sink));
        }
    })?;
    drop(guards.join());
    let mut result = ReplayResult::default();
    let collected = std::mem::take(&mut *out.lock().map_err(|_| "a worker panicked".to_string())?);
    for (summary, sink) in collected {
        result.peak_state.bytes += summary.peak_state_bytes;
        result.peak_state.open_events += summary.peak_open_events;
        result.peak_state.open_windows += summary.peak_open_windows;
        result.peak_state.sketch_bytes += summary.peak_sketch_bytes;
        result.workers.push(summary);
        result.rows.extend(sink.rows);
        result.dead.extend(sink.dead);
        result.revisions += sink.revisions;
    }
    Ok(result)
}
