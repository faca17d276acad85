//! What managed Kafka clusters and other producers need from Pulse's client:
//! TLS and SASL settings passed through from `PULSE_KAFKA_*` and accepted by
//! librdkafka (a build without OpenSSL refuses them), and batches compressed
//! with gzip, snappy, lz4 or zstd read back intact.

use std::time::Duration;

use pulse_kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

#[test]
fn tls_and_sasl_settings_reach_librdkafka_and_are_accepted() {
    let vars = [
        ("PULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("PULSE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("PULSE_KAFKA_SASL_USERNAME", "pulse"),
        ("PULSE_KAFKA_SASL_PASSWORD", "secret"),
        ("PULSE_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https"),
    ];
    let cfg = KafkaConfig::from_vars("broker.example:9093", vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    for (key, value) in [("security.protocol", "SASL_SSL"), ("sasl.mechanism", "SCRAM-SHA-512"), ("ssl.endpoint.identification.algorithm", "https")] {
        assert_eq!(cfg.client().get(key), Some(value), "{key}");
        assert_eq!(cfg.consumer("g").get(key), Some(value), "{key}");
        assert_eq!(cfg.reliable_producer().get(key), Some(value), "{key}");
    }
    // librdkafka refuses SASL_SSL and SCRAM when it was built without OpenSSL.
    let consumer: Result<BaseConsumer, _> = cfg.consumer("g").create();
    assert!(consumer.is_ok(), "{:?}", consumer.err());
    let producer: Result<FutureProducer, _> = cfg.reliable_producer().create();
    assert!(producer.is_ok(), "{:?}", producer.err());
    let plain = KafkaConfig::from_vars("b:9093", [("PULSE_KAFKA_SECURITY_PROTOCOL".to_string(), "SSL".to_string())]);
    assert!(plain.client().create::<BaseConsumer>().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_every_codec_are_read_back() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        mock.create_topic(&topic, 1, 1).expect("topic");
        let mut pcfg = kafka.reliable_producer();
        pcfg.set("compression.type", codec);
        let producer: FutureProducer = pcfg.create().unwrap_or_else(|e| panic!("{codec} producer: {e}"));
        let payloads: Vec<String> = (0..200).map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50))).collect();
        for p in &payloads {
            producer
                .send(FutureRecord::to(&topic).key("k").payload(p), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
        }
        let consumer: BaseConsumer = kafka.consumer(&format!("codec-reader-{codec}")).create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning).expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < payloads.len() && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
                Some(Err(e)) => panic!("{codec}: {e}"),
                None => {}
            }
        }
        assert_eq!(got, payloads, "{codec}");
    }
}
