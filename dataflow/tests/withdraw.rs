//! A window that ends empty (its only event deleted) has no final: the live
//! revisions emitted while it held the event are withdrawn from the metric
//! table, and the topic carries a final row marked `deleted` for its key.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_job, topic_rows};
use pulse_clickhouse::migrate;
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::decode::format_rfc3339_ms;
use pulse_testkit::stack_clickhouse;
use pulse_testkit::unique_spec;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn app(id: &str, name: &str, time: i64, version: u64) -> String {
    format!(r#"{{"event_id":"{id}","session_id":"s","event_name":"{name}","latency_ms":5,"timestamp":"{}","_version":{version}}}"#, format_rfc3339_ms(time))
}

#[test]
fn an_emptied_window_is_withdrawn_not_finalised_as_zeros() {
    let Some(ch) = stack_clickhouse("pulse_df_withdraw") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(migrate(&ch, &spec)).expect("migrate");
    let topic = spec.domain("app_events").expect("app_events").topic.clone();
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let send = |key: &str, payload: String| {
        producer.send(BaseRecord::to(&topic).key(key).payload(&payload)).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    };
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), "df-withdraw");
    let t0 = pulse_model::now_ms() - 20 * 60_000;
    // A steady event keeps the watermark moving; "lonely" has one event, seen live.
    send("keep-0", app("keep-0", "steady", t0, 1));
    send("lonely-1", app("lonely-1", "lonely", t0 + 1_000, 2));
    let count = |sql: &str| rt.block_on(ch.client().query(sql).fetch_one::<u64>()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("SELECT count() FROM event_metrics WHERE event_name = 'lonely'") == 0 {
        assert!(Instant::now() < deadline, "no live revision of the lonely window");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Deleted; then time moves on far enough to close every window holding it.
    send("lonely-1", r#"{"event_id":"lonely-1","_deleted":true,"_version":3}"#.to_string());
    std::thread::sleep(Duration::from_millis(500));
    for i in 1..=12 {
        send(&format!("keep-{i}"), app(&format!("keep-{i}"), "steady", t0 + i * 60_000, 3 + i as u64));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("SELECT count() FROM event_metrics FINAL WHERE event_name = 'steady' AND final") < 5 {
        assert!(Instant::now() < deadline, "the steady windows never closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.trigger();
    job.join().expect("job");

    assert_eq!(count("SELECT count() FROM event_metrics WHERE event_name = 'lonely'"), 0, "the lonely window's rows are withdrawn");
    let rows = topic_rows(&kafka, &spec.pipeline.aggregated_topic);
    let lonely: Vec<_> = rows.iter().filter(|(_, _, _, v)| v["event_name"] == "lonely").collect();
    assert!(lonely.iter().any(|(_, f, _, v)| !f && v["events"] == 1), "seen live first: {lonely:?}");
    let finals: Vec<_> = lonely.iter().filter(|(_, f, _, _)| *f).collect();
    assert!(!finals.is_empty(), "{lonely:?}");
    for (key, _, _, v) in &finals {
        assert_eq!(v["deleted"], true, "{key}: an emptied window's final is a deletion: {v}");
        assert!(v["events"].is_null(), "{v}");
    }
    assert!(rows.iter().all(|(_, f, _, v)| !f || v["deleted"] == true || v["events"].as_u64().is_some_and(|n| n > 0)), "no final counts zero events");
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
