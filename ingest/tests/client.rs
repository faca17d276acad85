//! pulse-client against a real ingest server (mock Kafka cluster): the typed
//! write surface, chunked batches and the typed errors.

use std::time::Duration;

use pulse_client::{Client, ClientConfig, Error};
use pulse_ingest::{ApiKeys, IngestConfig};
use pulse_testkit::ingest::{Server, test_config};
use pulse_testkit::{count_topic, read_topic, unique_spec};
use rdkafka::mocking::MockCluster;
use serde_json::json;

fn ride(i: usize) -> serde_json::Value {
    json!({"event_type": "requested", "ride_id": format!("r-{i}"), "city": "Lagos", "estimated_fare": 7.25,
           "user_id": "u-1", "timestamp": pulse_model::now_ms()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_writes_and_errors() {
    let spec = unique_spec();
    let mock = MockCluster::new(1).expect("mock cluster");
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(&spec)).expect("topics");
    let brokers = mock.bootstrap_servers();
    let cfg = IngestConfig { keys: ApiKeys::new(["secret"]), ..test_config() };
    let server = Server::start(&brokers, spec.clone(), cfg).await;
    let cc = ClientConfig { batch_size: 7, ..ClientConfig::default() };
    let client = Client::with_config(&server.url, Some("http://127.0.0.1:1"), Some("secret"), cc.clone()).expect("client");
    client.wait_until_ready(Duration::from_secs(10)).await.expect("ready");
    assert_eq!(client.health().await.expect("health").status, "ok");

    let one = client.track("rides", &ride(0)).await.expect("track");
    assert_eq!(one.accepted, 1);
    let events: Vec<_> = (1..=20).map(ride).collect();
    let many = client.track_batch("rides", &events).await.expect("batch");
    assert_eq!((many.accepted, many.ids.len()), (20, 20));
    assert_eq!(count_topic(&server.kafka, &server.topic("rides")), 21);

    // A bad event in the third chunk: the first two chunks are stored, the error says so
    // and indexes the whole slice.
    let mut events: Vec<_> = (0..20).map(ride).collect();
    events[15]["estimated_fare"] = json!("free");
    match client.track_batch("rides", &events).await {
        Err(Error::Partial { accepted, source }) => {
            assert_eq!(accepted.accepted, 14);
            let d = source.details();
            assert_eq!((d.len(), d[0].index, d[0].field.as_deref()), (1, 15, Some("estimated_fare")), "{source}");
        }
        other => panic!("expected Partial, got {other:?}"),
    }
    assert_eq!(count_topic(&server.kafka, &server.topic("rides")), 35);
    match client.track("rides", &json!({"ride_id": "x"})).await {
        Err(e @ Error::Validation { .. }) => assert!(e.details()[0].field.is_some() && e.status() == Some(400)),
        other => panic!("expected Validation, got {other:?}"),
    }

    // Updates and deletes.
    let app = json!({"event_id": "a-1", "session_id": "s", "event_name": "login", "latency_ms": 3, "timestamp": pulse_model::now_ms()});
    client.track("app_events", &app).await.expect("insert");
    let mut changed = app.clone();
    changed["latency_ms"] = json!(5);
    assert_eq!(client.update("app_events", "a-1", &changed).await.expect("update").ids, vec!["a-1"]);
    assert_eq!(client.delete("app_events", "a-1").await.expect("delete").ids, vec!["a-1"]);
    // Ids with characters that need escaping in a path.
    assert_eq!(client.delete("app_events", "a/1 ?#").await.expect("delete odd id").ids, vec!["a/1 ?#"]);
    let recs = read_topic(&server.kafka, &server.topic("app_events"));
    assert_eq!(recs.len(), 4);
    assert_eq!(recs.iter().filter(|r| r.key.as_deref() == Some("a/1 ?#")).count(), 1);

    assert!(matches!(client.update("rides", "r-1", &ride(1)).await, Err(Error::MethodNotAllowed(_))));
    assert!(matches!(client.track("trucks", &ride(1)).await, Err(Error::NotFound(m)) if m.contains("trucks")));
    let wrong = Client::new(&server.url, None, Some("guess")).expect("client");
    assert!(matches!(wrong.track("rides", &ride(1)).await, Err(Error::Unauthorized(_))));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_retried_after_retry_after() {
    let spec = unique_spec();
    let mock = MockCluster::new(1).expect("mock cluster");
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(&spec)).expect("topics");
    let brokers = mock.bootstrap_servers();
    let cfg = IngestConfig { rate_limit: Some(5.0), ..test_config() };
    let server = Server::start(&brokers, spec.clone(), cfg).await;
    let patient = Client::with_config(&server.url, None, None, ClientConfig { max_retries: 3, ..ClientConfig::default() }).expect("client");
    let impatient = Client::with_config(&server.url, None, None, ClientConfig { max_retries: 0, ..ClientConfig::default() }).expect("client");
    let five: Vec<_> = (0..5).map(ride).collect();
    patient.track_batch("rides", &five).await.expect("within the limit");
    match impatient.track("rides", &ride(9)).await {
        Err(Error::Overloaded { status: 429, retry_after: Some(d), .. }) => assert!(d >= Duration::from_secs(1)),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    let t0 = std::time::Instant::now();
    patient.track("rides", &ride(10)).await.expect("accepted after waiting");
    assert!(t0.elapsed() >= Duration::from_millis(900), "waited for Retry-After: {:?}", t0.elapsed());
    assert_eq!(count_topic(&server.kafka, &server.topic("rides")), 6);
    server.stop().await;
}
