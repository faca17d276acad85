//! The Kafka source of a worker: the spec's domain partitions are spread over
//! all workers of all processes by partition number (see [`owner`]), so every
//! worker agrees on who reads what whatever metadata it sees; read from the
//! group's committed offsets, and committed with the job's closed watermark as
//! metadata so that a restart knows which windows are already final. Topic
//! metadata is read again every `metadata_interval`: a partition added while
//! the job runs is picked up by its owner and read from its first offset.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};

use crate::job::{Record, RecordSource, SourceStatus};
use crate::types::WM_START;

const METADATA_PREFIX: &str = "pulse-closed=";
const TIMEOUT: Duration = Duration::from_secs(30);

/// Receives librdkafka's statistics: per-partition consumer lag, published as a
/// gauge and kept for the source to tell which partitions are read to their end.
pub struct SourceContext {
    lag: Option<IntGaugeVec>,
    lags: Arc<Mutex<HashMap<(String, i32), i64>>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let Ok(mut lags) = self.lags.lock() else { return };
        // Brokers the client is connected to: a partition whose leader is not one
        // of them cannot be fetched, whatever its last known offsets say.
        let up: std::collections::HashSet<i32> = stats.brokers.values().filter(|b| b.state == "UP" && b.nodeid >= 0).map(|b| b.nodeid).collect();
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                if partition < 0 {
                    continue;
                }
                // Behind the partition's end as read (not as committed): the
                // position when something was consumed, else empty partitions are 0;
                // unknown (-1) while the partition cannot be fetched.
                let fetchable = up.contains(&p.leader) && p.fetch_state == "active";
                let behind = if !fetchable {
                    -1
                } else if p.hi_offset >= 0 && p.app_offset >= 0 {
                    (p.hi_offset - p.app_offset).max(0)
                } else if p.hi_offset >= 0 && p.hi_offset == p.lo_offset {
                    0
                } else {
                    p.consumer_lag
                };
                lags.insert((topic.clone(), partition), behind);
                if let Some(g) = &self.lag
                    && p.consumer_lag >= 0
                {
                    g.with_label_values(&["dataflow", topic, &partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// How often topic metadata is read again by default (new partitions).
pub const METADATA_INTERVAL: Duration = Duration::from_secs(10);

pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    lags: Arc<Mutex<HashMap<(String, i32), i64>>>,
    topics: Vec<String>,
    by_topic: HashMap<String, usize>,
    pub assigned: Vec<(usize, i32)>,
    /// Every partition seen in the metadata so far (assigned here or not).
    known: HashSet<(usize, i32)>,
    /// Per domain, the offset of its partition 0 among all workers (see [`owner`]).
    domain_offsets: Vec<usize>,
    worker: usize,
    workers: usize,
    metadata_interval: Duration,
    last_refresh: Instant,
    /// Set when another instance took the consumer group over: commit nothing more.
    fence: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Per domain, where its partitions start in the round of all workers: the
/// partitions the spec declares for the domains before it. Only the spec goes
/// in (every process runs the same spec), never the metadata a worker saw.
pub fn domain_offsets(spec: &Spec) -> Vec<usize> {
    spec.domains
        .iter()
        .scan(0usize, |acc, d| {
            let offset = *acc;
            *acc = acc.saturating_add(usize::try_from(d.partitions).unwrap_or(0));
            Some(offset)
        })
        .collect()
}

/// The global worker (index over all workers of all processes) that reads
/// partition `partition` of domain `domain`: `(partition + domain offset) mod
/// workers`. It depends on the partition's number only, so workers that see
/// the partitions in another order, or some not yet, never disagree: a
/// partition is read by exactly one worker, once its owner has seen it.
pub fn owner(domain_offsets: &[usize], domain: usize, partition: i32, workers: usize) -> usize {
    let p = usize::try_from(partition).unwrap_or(0);
    p.wrapping_add(domain_offsets.get(domain).copied().unwrap_or(0)) % workers.max(1)
}

/// The partitions of `all` that `worker` of `workers` reads, sorted.
pub fn assignment_of(all: &[(usize, i32)], domain_offsets: &[usize], worker: usize, workers: usize) -> Vec<(usize, i32)> {
    let mut mine: Vec<(usize, i32)> = all.iter().copied().filter(|&(d, p)| owner(domain_offsets, d, p, workers) == worker).collect();
    mine.sort_unstable();
    mine.dedup();
    mine
}

/// Every (domain, partition) of the domains' topics (`topics[domain]`), sorted.
fn all_partitions(consumer: &BaseConsumer<SourceContext>, topics: &[String], timeout: Duration, warn: bool) -> Result<Vec<(usize, i32)>, KafkaError> {
    let mut all = Vec::new();
    for (d, topic) in topics.iter().enumerate() {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let ids: Vec<i32> = md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
        if ids.is_empty() && warn {
            tracing::warn!(%topic, "topic has no partitions (does it exist? run `pulse topics`)");
        }
        all.extend(ids.into_iter().map(|p| (d, p)));
    }
    all.sort_unstable();
    Ok(all)
}

/// What the group's committed offsets say about where to resume, per domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The closed watermark found in the commit metadata (`WM_START` if none).
    pub start: Vec<i64>,
    /// Whether the commit metadata carried a closed watermark.
    pub from_metadata: Vec<bool>,
    /// Whether the group has committed offsets for the domain's partitions.
    pub committed: Vec<bool>,
}

impl KafkaSource {
    /// Connects worker `worker` of `workers` and returns it with what the
    /// group's commits say about where to resume.
    pub fn new(
        kafka: &KafkaConfig,
        group: &str,
        spec: &Spec,
        worker: usize,
        workers: usize,
        lag: Option<IntGaugeVec>,
    ) -> Result<(KafkaSource, Resume), KafkaError> {
        let mut cfg = kafka.consumer(group);
        cfg.set("client.id", format!("pulse-dataflow-{worker}"));
        cfg.set("statistics.interval.ms", "1000");
        let lags = Arc::new(Mutex::new(HashMap::new()));
        let consumer: BaseConsumer<SourceContext> = cfg.create_with_context(SourceContext { lag, lags: Arc::clone(&lags) })?;
        let topics: Vec<String> = spec.domains.iter().map(|d| d.topic.clone()).collect();
        let all = all_partitions(&consumer, &topics, TIMEOUT, true)?;

        // Committed offsets (and their watermark metadata) of every partition of the job.
        let mut tpl = TopicPartitionList::new();
        for &(d, p) in &all {
            tpl.add_partition(&topics[d], p);
        }
        let committed = if all.is_empty() { TopicPartitionList::new() } else { consumer.committed_offsets(tpl, TIMEOUT)? };
        let mut resume =
            Resume { start: vec![WM_START; spec.domains.len()], from_metadata: vec![false; spec.domains.len()], committed: vec![false; spec.domains.len()] };
        let mut offsets: HashMap<(String, i32), Offset> = HashMap::new();
        for e in committed.elements() {
            offsets.insert((e.topic().to_string(), e.partition()), e.offset());
            let Some(d) = topics.iter().position(|t| t == e.topic()) else { continue };
            if matches!(e.offset(), Offset::Offset(_)) {
                resume.committed[d] = true;
            }
            if let Some(c) = e.metadata().strip_prefix(METADATA_PREFIX).and_then(|v| v.parse::<i64>().ok()) {
                // The furthest any worker got: its finals were durable before it committed.
                resume.start[d] = resume.start[d].max(c);
                resume.from_metadata[d] = true;
            }
        }

        let domain_offsets = domain_offsets(spec);
        let assigned = assignment_of(&all, &domain_offsets, worker, workers);
        let mut assignment = TopicPartitionList::new();
        for &(d, p) in &assigned {
            let offset = match offsets.get(&(topics[d].clone(), p)) {
                Some(Offset::Offset(o)) => Offset::Offset(*o),
                _ => Offset::Beginning,
            };
            assignment.add_partition_offset(&topics[d], p, offset)?;
        }
        consumer.assign(&assignment)?;
        tracing::info!(worker, partitions = assigned.len(), start = ?resume.start, "dataflow source assigned");
        let by_topic = topics.iter().enumerate().map(|(i, t)| (t.clone(), i)).collect();
        let source = KafkaSource {
            consumer,
            lags,
            topics,
            by_topic,
            assigned,
            known: all.into_iter().collect(),
            domain_offsets,
            worker,
            workers: workers.max(1),
            metadata_interval: METADATA_INTERVAL,
            last_refresh: Instant::now(),
            fence: None,
        };
        Ok((source, resume))
    }
}

impl KafkaSource {
    /// Commits stop once `fence` is set (see `lease`).
    pub fn with_fence(mut self, fence: Arc<std::sync::atomic::AtomicBool>) -> KafkaSource {
        self.fence = Some(fence);
        self
    }

    /// How often topic metadata is read again to find partitions added while the job runs.
    pub fn with_metadata_interval(mut self, interval: Duration) -> KafkaSource {
        self.metadata_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Reads the topics' metadata again and starts reading the partitions that
    /// appeared since and belong to this worker: from the group's committed
    /// offset if it has one, else from their first offset. A new partition
    /// holds its domain's watermark back until it delivers or is read to its
    /// end (it is reported by `caught_up` like every assigned partition).
    fn refresh(&mut self) {
        self.last_refresh = Instant::now();
        let timeout = self.metadata_interval.min(Duration::from_secs(5));
        let all = match all_partitions(&self.consumer, &self.topics, timeout, false) {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("reading topic metadata (new partitions are looked for again in {:?}): {e}", self.metadata_interval);
                return;
            }
        };
        let new: Vec<(usize, i32)> = all.into_iter().filter(|dp| !self.known.contains(dp)).collect();
        if new.is_empty() {
            return;
        }
        let mine = assignment_of(&new, &self.domain_offsets, self.worker, self.workers);
        if !mine.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &(d, p) in &mine {
                tpl.add_partition(&self.topics[d], p);
            }
            let committed = match self.consumer.committed_offsets(tpl, timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("reading committed offsets of new partitions (retried in {:?}): {e}", self.metadata_interval);
                    return;
                }
            };
            let mut assignment = TopicPartitionList::new();
            for &(d, p) in &mine {
                let offset = match committed.find_partition(&self.topics[d], p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                if let Err(e) = assignment.add_partition_offset(&self.topics[d], p, offset) {
                    tracing::warn!("new partition {}/{p}: {e}", self.topics[d]);
                    return;
                }
            }
            if let Err(e) = self.consumer.incremental_assign(&assignment) {
                tracing::warn!("assigning new partitions (retried in {:?}): {e}", self.metadata_interval);
                return;
            }
            self.assigned.extend(mine.iter().copied());
            self.assigned.sort_unstable();
        }
        let named: Vec<String> = new.iter().map(|&(d, p)| format!("{}/{p}", self.topics[d])).collect();
        tracing::info!(worker = self.worker, new = ?named, reading = mine.len(), "new partitions found");
        self.known.extend(new);
    }
}

impl RecordSource for KafkaSource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
        if self.last_refresh.elapsed() >= self.metadata_interval {
            self.refresh();
        }
        let mut n = 0;
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    tracing::warn!("kafka: {e}");
                    break;
                }
                Some(Ok(msg)) => {
                    let Some(&domain) = self.by_topic.get(msg.topic()) else { continue };
                    let now = crate::graph::now_ms();
                    f(Record {
                        domain,
                        partition: msg.partition(),
                        offset: msg.offset(),
                        timestamp_ms: msg.timestamp().to_millis().unwrap_or(now),
                        key: msg.key(),
                        payload: msg.payload(),
                        topic: &self.topics[domain],
                    });
                    n += 1;
                }
            }
        }
        if n > 0 { SourceStatus::Active } else { SourceStatus::Idle }
    }

    fn broker_timestamps(&self) -> bool {
        true
    }

    fn caught_up(&mut self) -> Vec<((usize, i32), bool)> {
        let Ok(lags) = self.lags.lock() else { return Vec::new() };
        self.assigned.iter().map(|&(d, p)| ((d, p), lags.get(&(self.topics[d].clone(), p)).is_some_and(|&lag| lag == 0))).collect()
    }

    fn commit(&mut self, offsets: &[((usize, i32), i64)], closed: &[i64]) {
        if self.fence.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire)) {
            tracing::warn!("another instance holds the consumer group: offsets not committed");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &((d, p), next) in offsets {
            if next <= 0 {
                continue;
            }
            let mut e = tpl.add_partition(&self.topics[d], p);
            if e.set_offset(Offset::Offset(next)).is_err() {
                continue;
            }
            e.set_metadata(format!("{METADATA_PREFIX}{}", closed.get(d).copied().unwrap_or(WM_START)));
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!("offset commit failed (will be retried with the next epoch): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_that_see_the_partitions_in_another_order_agree() {
        let offsets = vec![0, 12, 36];
        let all: Vec<(usize, i32)> = (0..3).flat_map(|d| (0..[12, 24, 12][d]).map(move |p| (d, p))).collect();
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(3, 40);
        // Worker 2 saw stale metadata: the rides topic without its last four partitions.
        let stale: Vec<(usize, i32)> = shuffled.iter().copied().filter(|&(d, p)| !(d == 0 && p >= 8)).collect();
        for workers in [1, 2, 3, 5, 7] {
            let views = [&all, &shuffled, &stale];
            let mut readers: HashMap<(usize, i32), Vec<usize>> = HashMap::new();
            for w in 0..workers {
                let a = assignment_of(views[w % views.len()], &offsets, w, workers);
                // The same worker decides the same whatever order it saw.
                assert_eq!(a, assignment_of(&all, &offsets, w, workers).into_iter().filter(|dp| views[w % views.len()].contains(dp)).collect::<Vec<_>>());
                for dp in a {
                    readers.entry(dp).or_default().push(w);
                }
            }
            for dp in &all {
                let r = readers.get(dp).cloned().unwrap_or_default();
                assert!(r.len() <= 1, "{dp:?} read by workers {r:?} of {workers}");
                let o = owner(&offsets, dp.0, dp.1, workers);
                // Every partition is read by its owner once the owner has seen it.
                assert_eq!(r.is_empty(), !views[o % views.len()].contains(dp), "{dp:?} with {workers} workers");
            }
        }
        // The domains' partitions are spread evenly: 48 partitions over 4 workers, 12 each.
        let counts: Vec<usize> = (0..4).map(|w| assignment_of(&all, &offsets, w, 4).len()).collect();
        assert_eq!(counts, vec![12; 4]);
    }

    #[test]
    fn a_partition_added_later_goes_to_the_same_worker_everywhere() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let spec = Spec::load(&path).expect("spec");
        let offsets = domain_offsets(&spec);
        assert_eq!(offsets, vec![0, 12, 36]);
        // Partition 12 of rides (added while running) belongs to one worker of 5, found by every worker alike.
        let owners: Vec<usize> = (0..5).filter(|&w| assignment_of(&[(0, 12)], &offsets, w, 5).contains(&(0, 12))).collect();
        assert_eq!(owners, vec![owner(&offsets, 0, 12, 5)]);
        assert_eq!(owners, vec![2]);
    }
}
