//! `pulse loadgen` over HTTP (through pulse-client, single events and NDJSON
//! batches) and straight to Kafka, against the mock cluster.

use std::time::Duration;

use pulse_bench::loadgen::{LoadgenConfig, Target, run};
use pulse_gen::GenConfig;
use pulse_kafka::KafkaConfig;
use pulse_ops::Shutdown;
use pulse_testkit::ingest::{Server, test_config};
use pulse_testkit::{count_topic, read_topic, unique_spec};
use rdkafka::mocking::MockCluster;

fn total(kafka: &KafkaConfig, server_topics: &[String]) -> i64 {
    server_topics.iter().map(|t| count_topic(kafka, t)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_over_http_and_straight_to_kafka() {
    let spec = unique_spec();
    let mock = MockCluster::new(1).expect("mock cluster");
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(&spec)).expect("topics");
    let brokers = mock.bootstrap_servers();
    let server = Server::start(&brokers, spec.clone(), test_config()).await;
    let topics: Vec<String> = ["rides", "driver_locations", "app_events"].iter().map(|d| server.topic(d)).collect();
    let generator = GenConfig { late_fraction: 0.01, surge_after_ms: Some(0), surge_city: 3, ..GenConfig::default() };

    // Single events, then NDJSON batches, over HTTP.
    let client = pulse_client::Client::new(&server.url, None, None).expect("client");
    let cfg = LoadgenConfig { generator: generator.clone(), events: Some(1_500), concurrency: 8, batch: 1, progress: false, ..LoadgenConfig::default() };
    let report = run(Target::Http(client.clone()), cfg, Shutdown::new()).await.expect("loadgen");
    assert_eq!((report.events, report.accepted, report.failed), (1_500, 1_500, 0), "{report}");
    assert_eq!(total(&server.kafka, &topics), 1_500);
    let cfg = LoadgenConfig {
        generator: GenConfig { seed: 7, ..generator.clone() },
        events: Some(5_000),
        concurrency: 4,
        batch: 100,
        progress: false,
        ..LoadgenConfig::default()
    };
    let report = run(Target::Http(client), cfg, Shutdown::new()).await.expect("loadgen");
    assert_eq!((report.events, report.failed), (5_000, 0), "{report}");
    assert!(report.requests < 1_000, "batched: {report}");
    assert_eq!(total(&server.kafka, &topics), 6_500);

    // Straight to Kafka, at a target rate: same record format as ingest.
    let cfg = LoadgenConfig {
        generator: GenConfig { seed: 9, ..generator },
        events: Some(1_000),
        rate: Some(4_000.0),
        concurrency: 2,
        batch: 50,
        progress: false,
        ..LoadgenConfig::default()
    };
    let report = run(Target::Kafka { kafka: server.kafka.clone(), spec: spec.clone() }, cfg, Shutdown::new()).await.expect("loadgen");
    assert_eq!((report.events, report.failed), (1_000, 0), "{report}");
    assert!(report.elapsed >= Duration::from_millis(200), "paced: {report}");
    assert_eq!(total(&server.kafka, &topics), 7_500);
    let app = read_topic(&server.kafka, &server.topic("app_events"));
    assert!(app.iter().all(|r| r.value["_version"].is_u64() && r.value["ingested_at"].is_string() && r.key.as_deref() == r.value["event_id"].as_str()));
    assert!(app.iter().any(|r| r.value["_deleted"] == true), "the generator deletes some app events");
    server.stop().await;
}
