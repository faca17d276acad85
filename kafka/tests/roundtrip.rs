//! Keyed lz4 messages through a consumer group with manual commits, against
//! librdkafka's mock cluster and against the local stack's Tansu broker.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use pulse_kafka::KafkaConfig;
use pulse_kafka::testing::{stack_brokers, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const MESSAGES: usize = 2_000;
const PARTITIONS: i32 = 4;

async fn produce(cfg: &KafkaConfig, topic: &str, one_per_batch: bool) -> BTreeMap<i32, Vec<(String, i64)>> {
    let mut pcfg = cfg.reliable_producer();
    if one_per_batch {
        pcfg.set("batch.num.messages", "1");
    }
    let producer: FutureProducer = pcfg.create().expect("producer");
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
        if msg.payload() == Some(b"tail".as_slice()) {
            continue;
        }
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

/// `tansu`: works around two limits of Tansu 0.6. It hands a partition's last
/// batch to consumers only once more data follows it (so one more message per
/// partition, which the checks ignore, follows the messages), and a fetch that
/// starts inside a record batch resumes at the next batch (so every message is
/// its own batch, and a committed offset never falls inside one).
async fn roundtrip(cfg: KafkaConfig, topic: &str, tansu: bool) {
    let sent = produce(&cfg, topic, tansu).await;
    if tansu {
        let producer: FutureProducer = cfg.reliable_producer().create().expect("producer");
        for p in 0..PARTITIONS {
            producer
                .send(FutureRecord::to(topic).partition(p).key("tail").payload("tail"), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("tail acknowledged");
        }
    }
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
    roundtrip(KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() }, &topic, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_keyed_lz4_group_manual_commit() {
    let Some(brokers) = stack_brokers() else { return };
    let cfg = KafkaConfig { brokers, properties: Vec::new() };
    let admin: AdminClient<DefaultClientContext> = cfg.client().create().expect("admin");
    let topic = unique_name("roundtrip");
    let results = admin.create_topics([&NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()).await.expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    roundtrip(cfg, &topic, true).await;
}
