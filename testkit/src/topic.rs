//! Kafka in tests: writing records with a producer that may be full, and
//! reading a topic back (every record with its partition, offset, key and JSON
//! value, or just how many there are).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pulse_kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::stack::unique_name;

/// How long the topic must stay quiet, once every partition reached its
/// end, before the reader stops.
const QUIET: Duration = Duration::from_secs(1);
/// How long reading may take in all.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Queues `record` on `producer`, waiting while its queue is full (a test
/// producing faster than the broker takes). Panics on any other error.
pub fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(producer: &ThreadedProducer<DefaultProducerContext>, mut record: BaseRecord<'_, K, P>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("producing to Kafka: {e}"),
        }
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: serde_json::Value,
}

/// Every record of `topic` (values must be JSON), from each partition's
/// low watermark on, in offset order within each partition.
///
/// Reads up to the high watermarks, then on until the topic has been quiet
/// for a second: a broker's "latest offset" may trail what it acknowledged
/// (Tansu 0.6 answers the start of a partition's last batch plus one, so the
/// rest of that batch follows the offset it calls the end). Panics when that
/// takes over a minute.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = kafka.consumer(&unique_name("verify")).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for (p, (lo, hi)) in watermarks(&consumer, topic) {
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo)).expect("offset");
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet_since = Instant::now();
    while !ends.is_empty() || quiet_since.elapsed() < QUIET {
        assert!(Instant::now() < deadline, "reading {topic} timed out after {} records; partitions short of their end: {ends:?}", out.len());
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
        quiet_since = Instant::now();
        let (partition, offset) = (msg.partition(), msg.offset());
        let value = serde_json::from_slice(msg.payload().unwrap_or_default()).unwrap_or_else(|e| panic!("{topic}/{partition}@{offset} is not JSON: {e}"));
        out.push(Record { partition, offset, key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()), value });
        if ends.get(&partition).is_some_and(|&hi| offset + 1 >= hi) {
            ends.remove(&partition);
        }
    }
    out
}

/// Number of records in `topic`: the sum of high less low watermarks. Exact
/// on librdkafka's mock cluster; on the local broker (see [`read_topic`]) it
/// can fall short, count `read_topic(..).len()` there.
pub fn count_topic(kafka: &KafkaConfig, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka.consumer(&unique_name("count")).create().expect("consumer");
    watermarks(&consumer, topic).into_iter().map(|(_, (lo, hi))| hi - lo).sum()
}

/// The latest row of each key of an aggregated topic: the value with the
/// highest `revision` field (of equal ones, the first read).
pub fn latest_by_key(records: Vec<Record>) -> HashMap<String, serde_json::Value> {
    let mut latest: HashMap<String, (u64, serde_json::Value)> = HashMap::new();
    for r in records {
        let revision = r.value["revision"].as_u64().unwrap_or(0);
        let key = r.key.unwrap_or_default();
        if latest.get(&key).is_none_or(|(seen, _)| *seen < revision) {
            latest.insert(key, (revision, r.value));
        }
    }
    latest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// (low, high) watermarks of each partition of `topic`.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Vec<(i32, (i64, i64))> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = md.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    partitions.into_iter().map(|p| (p, consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks"))).collect()
}
