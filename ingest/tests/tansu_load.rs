//! Concurrent single-event writes through ingest into Tansu: every acknowledged
//! event must be read back, once (skipped unless `PULSE_TEST_STACK=1`).
//! Note: Tansu 0.6's high watermark can trail the records it acknowledged and
//! serves (it points at the last batch's first offset), so the reader goes on
//! past the watermarks until the topic is idle.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pulse_kafka::{KafkaConfig, ensure_topics, plan_topics};
use pulse_testkit::ingest::{Server, test_config};
use pulse_testkit::{Http, read_topic, stack_brokers, unique_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acknowledged_writes_are_all_on_tansu() {
    let Some(brokers) = stack_brokers() else { return };
    let n: usize = std::env::var("PULSE_TEST_TANSU_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let spec = unique_spec();
    let admin = KafkaConfig { brokers: brokers.clone(), properties: Vec::new() }.client().create().expect("admin");
    ensure_topics(&admin, &plan_topics(&spec)).await.expect("topics");
    let server = Server::start(&brokers, spec.clone(), test_config()).await;
    let http = Http::new(&server.url);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..50)
        .map(|_| {
            let (http, next) = (http.clone(), next.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body = format!(r#"{{"event_id":"e-{i}","session_id":"s","event_name":"login","latency_ms":1,"timestamp":{}}}"#, pulse_model::now_ms());
                    let a = http.post_json("app_events", body).await;
                    assert_eq!(a.status, 202, "{:?}", a.body);
                    ids.push(format!("e-{i}"));
                }
                ids
            })
        })
        .collect();
    let mut acked = HashSet::new();
    for w in workers {
        acked.extend(w.await.expect("worker"));
    }
    let recs = read_topic(&server.kafka, &server.topic("app_events"));
    let mut seen = HashSet::new();
    for r in &recs {
        let id = r.value["event_id"].as_str().expect("id").to_string();
        assert!(seen.insert(id.clone()), "{id} twice");
    }
    let missing: Vec<_> = acked.difference(&seen).take(10).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged events not on Tansu, e.g. {missing:?}", acked.len() - seen.len(), acked.len());
    assert_eq!(recs.len(), n);
    server.stop().await;
}
