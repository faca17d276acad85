//! Keyed lz4 messages through a consumer group with manual commits, against
//! librdkafka's mock cluster and against the local stack's Tansu broker; and
//! a consumer that starts inside a producer's batch reads from its offset (the
//! stack builds Tansu with a fix of that: scripts/tansu/).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use pulse_kafka::KafkaConfig;
use pulse_testkit::{stack_brokers, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const MESSAGES: usize = 2_000;
const PARTITIONS: i32 = 4;

async fn produce(cfg: &KafkaConfig, topic: &str) -> BTreeMap<i32, Vec<(String, i64)>> {
    let producer: FutureProducer = cfg.reliable_producer().create().expect("producer");
    let mut sent: BTreeMap<i32, Vec<(String, i64)>> = BTreeMap::new();
    let futures: Vec<_> = (0..MESSAGES)
        .map(|i| {
            let key = format!("ride-{}", i % 97);
            let payload = format!("{{\"n\":{i}}}");
            let producer = producer.clone();
            let topic = topic.to_string();
            async move {
                let delivery = producer
                    .send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("acknowledged");
                (key, delivery.partition, delivery.offset)
            }
        })
        .collect();
    for (key, partition, offset) in futures::future::join_all(futures).await {
        sent.entry(partition).or_default().push((key, offset));
    }
    sent
}

/// Consumes until `want` messages arrived; commits the offsets of the first `commit` of them.
fn consume(cfg: &KafkaConfig, group: &str, topic: &str, want: usize, commit: usize) -> Vec<(i32, i64, String, String)> {
    let consumer: BaseConsumer = cfg.consumer(group).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg.expect("message");
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let payload = String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned();
        got.push((msg.partition(), msg.offset(), key, payload));
        if got.len() == commit {
            // Commit the next offset to read for every partition seen so far.
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for (p, o, ..) in &got {
                let e = next.entry(*p).or_insert(0);
                *e = (*e).max(o + 1);
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next {
                tpl.add_partition_offset(topic, p, Offset::Offset(o)).expect("offset");
            }
            consumer.commit(&tpl, CommitMode::Sync).expect("commit");
        }
    }
    got
}

/// Half the messages are read and committed by one member of a group (the
/// producer batched them, so the committed offsets fall inside batches), the
/// rest by the next member, from the committed offsets.
async fn roundtrip(cfg: KafkaConfig, topic: &str) {
    let sent = produce(&cfg, topic).await;
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), MESSAGES);
    assert!(sent.len() > 1, "keys spread over partitions: {:?}", sent.keys());
    // The same key always lands on the same partition.
    let mut key_partition = BTreeMap::new();
    for (p, msgs) in &sent {
        for (k, _) in msgs {
            assert_eq!(*key_partition.entry(k.clone()).or_insert(*p), *p, "key {k} on two partitions");
        }
    }

    let group = unique_name("group");
    let cfg2 = cfg.clone();
    let topic2 = topic.to_string();
    let group2 = group.clone();
    let first = tokio::task::spawn_blocking(move || consume(&cfg2, &group2, &topic2, MESSAGES / 2, MESSAGES / 2)).await.expect("consumer thread");
    assert_eq!(first.len(), MESSAGES / 2);
    for (p, _, k, _) in &first {
        assert_eq!(key_partition[k], *p);
    }

    // A new member of the same group resumes from the committed offsets: it sees
    // exactly the messages the first one had not committed.
    let cfg3 = cfg.clone();
    let topic3 = topic.to_string();
    let rest = tokio::task::spawn_blocking(move || consume(&cfg3, &group, &topic3, MESSAGES - MESSAGES / 2, usize::MAX)).await.expect("consumer thread");
    let seen: HashSet<(i32, i64)> = first.iter().chain(&rest).map(|(p, o, ..)| (*p, *o)).collect();
    assert_eq!(first.len() + rest.len(), MESSAGES, "no message twice");
    assert_eq!(seen.len(), MESSAGES, "every message once");
    let payloads: HashSet<&str> = first.iter().chain(&rest).map(|m| m.3.as_str()).collect();
    assert_eq!(payloads.len(), MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_cluster_keyed_lz4_group_manual_commit() {
    let mock = MockCluster::new(3).expect("mock cluster");
    let topic = unique_name("roundtrip");
    mock.create_topic(&topic, PARTITIONS, 1).expect("topic");
    roundtrip(KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() }, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_keyed_lz4_group_manual_commit() {
    let Some(brokers) = stack_brokers() else { return };
    let cfg = KafkaConfig { brokers, properties: Vec::new() };
    let admin: AdminClient<DefaultClientContext> = cfg.client().create().expect("admin");
    let topic = unique_name("roundtrip");
    let results = admin.create_topics([&NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()).await.expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    roundtrip(cfg, &topic).await;
}

/// A consumer assigned at an offset inside a batch, or inside the partition's
/// last batch, reads from that offset on: none of the batch is skipped, and
/// nothing more needs to follow it. (Tansu 0.6.0 as published serves the
/// batches that start after the offset, and nothing from inside the last one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_serves_a_fetch_from_inside_a_batch() {
    let Some(brokers) = stack_brokers() else { return };
    let cfg = KafkaConfig { brokers, properties: Vec::new() };
    let admin: AdminClient<DefaultClientContext> = cfg.client().create().expect("admin");
    let topic = unique_name("mid-batch");
    let results = admin.create_topics([&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Three batches of 300 (one flush each, so the producer batches them).
    let producer: FutureProducer = cfg.reliable_producer().set("linger.ms", "100").create().expect("producer");
    for batch in 0..3 {
        let sends: Vec<_> = (0..300)
            .map(|i| {
                let payload = format!("{batch}-{i}");
                let (producer, topic) = (producer.clone(), topic.clone());
                async move { producer.send(FutureRecord::<(), _>::to(&topic).partition(0).payload(&payload), Duration::from_secs(10)).await.map_err(|(e, _)| e) }
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.expect("acknowledged");
        }
    }
    let starts = [0i64, 1, 150, 299, 300, 301, 450, 600, 601, 750, 899];
    let firsts = tokio::task::spawn_blocking(move || {
        starts
            .iter()
            .map(|&start| {
                let consumer: BaseConsumer = cfg.consumer(&unique_name("mid-batch")).create().expect("consumer");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, 0, Offset::Offset(start)).expect("offset");
                consumer.assign(&tpl).expect("assign");
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut first = None;
                while first.is_none() && Instant::now() < deadline {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        first = Some(m.offset());
                    }
                }
                (start, first)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("consumer thread");
    for (start, first) in firsts {
        assert_eq!(first, Some(start), "a consumer assigned at offset {start} first read {first:?}");
    }
}
