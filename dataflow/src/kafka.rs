//! The Kafka source of a worker: the spec's domain partitions are spread over
//! all workers of all processes deterministically (partition i of the sorted
//! list goes to worker i mod workers), read from the group's committed
//! offsets, and committed with the job's closed watermark as metadata so that
//! a restart knows which windows are already final.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    lags: Arc<Mutex<HashMap<(String, i32), i64>>>,
    topics: Vec<String>,
    by_topic: HashMap<String, usize>,
    pub assigned: Vec<(usize, i32)>,
    /// Set when another instance took the consumer group over: commit nothing more.
    fence: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Every (domain, partition) of the spec's topics, in a stable order.
fn all_partitions(consumer: &BaseConsumer<SourceContext>, spec: &Spec) -> Result<Vec<(usize, i32)>, KafkaError> {
    let mut all = Vec::new();
    for (d, domain) in spec.domains.iter().enumerate() {
        let md = consumer.fetch_metadata(Some(&domain.topic), TIMEOUT)?;
        let count = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        if count == 0 {
            tracing::warn!(topic = %domain.topic, "topic has no partitions (does it exist? run `pulse topics`)");
        }
        all.extend((0..count).map(|p| (d, p)));
    }
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
        let all = all_partitions(&consumer, spec)?;
        let topics: Vec<String> = spec.domains.iter().map(|d| d.topic.clone()).collect();

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

        let assigned: Vec<(usize, i32)> = all.iter().enumerate().filter(|(i, _)| i % workers.max(1) == worker).map(|(_, dp)| *dp).collect();
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
        Ok((KafkaSource { consumer, lags, topics, by_topic, assigned, fence: None }, resume))
    }
}

impl KafkaSource {
    /// Commits stop once `fence` is set (see `lease`).
    pub fn with_fence(mut self, fence: Arc<std::sync::atomic::AtomicBool>) -> KafkaSource {
        self.fence = Some(fence);
        self
    }
}

impl RecordSource for KafkaSource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
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
