//! The trust boundary end to end, as producers break it: separate `pulse
//! ingest`, `pulse sink` and `pulse dataflow` processes against the local
//! broker (Tansu) and ClickHouse, while ordinary rides keep flowing.
//!
//! Over HTTP, rides dated 2099, a batch spread over 150 days and hostile
//! values are refused with 400 naming the event, the field and the bound.
//! Straight to Kafka, the same records (and one whose broker timestamp is
//! itself in 2099) are dead-lettered by the sink and by the dataflow with their
//! reason. Afterwards every good ride is stored and counted exactly once (a
//! client's retries included), no event was late, the watermark never left
//! the present, and no window of 2099 or of last winter exists.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pulse_kafka::dead_letter::{DeadLetter, H_SOURCE_TOPIC, H_STAGE};
use pulse_model::decode::format_rfc3339_ms;
use pulse_testkit::{stack_brokers, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use support::procs::{Deployment, metric, rows, wait_ready};

const YEAR_2099: i64 = 4_070_908_800_000;
const DAY: i64 = 86_400_000;

fn ride(id: &str, city: &str, fare: &str, time: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"requested","ride_id":"{id}","city":"{city}","estimated_fare":{fare},"user_id":"u-{id}","timestamp":"{}"}}"#,
        format_rfc3339_ms(time)
    )
}

#[test]
fn hostile_producers_neither_stall_nor_skew_the_pipeline() {
    let Some(brokers) = stack_brokers() else { return };
    let d = Deployment::new("pulse-trust", &brokers);
    let (spec, ch, kafka) = (&d.spec, &d.ch, &d.kafka);
    let (ingest_port, dataflow_metrics) = (d.ingest_port, d.dataflow_metrics_port);
    let rides_topic = spec.domain("rides").expect("rides").topic.clone();
    let mut ingest = d.start("ingest", &["ingest"]);
    let sink = d.start("sink", &["sink"]);
    let mut dataflow = d.start("dataflow", &["dataflow", "-w", "2"]);
    wait_ready(&format!("http://127.0.0.1:{ingest_port}/ready"), &mut ingest);
    wait_ready(&format!("http://127.0.0.1:{dataflow_metrics}/health"), &mut dataflow);
    let ingest_http = d.ingest();
    let post = move |body: &str| {
        let a = ingest_http.blocking("POST", "/v1/events/rides", &[("content-type", "application/x-ndjson")], body.to_string()).expect("POST");
        (a.status, a.text)
    };

    // Ordinary traffic all along: two cities, 20 rides every 200 ms.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (acked, stop, post) = (Arc::clone(&acked), Arc::clone(&stop), post.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = pulse_model::now_ms();
                let body: String = (0..20).map(|i| ride(&format!("ok-{n}-{i}"), if i % 2 == 0 { "Lima" } else { "Oslo" }, "12.5", now) + "\n").collect();
                let (code, answer) = post(&body);
                assert_eq!(code, 202, "{answer}");
                acked.fetch_add(20, Ordering::Relaxed);
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // 1. Over HTTP: refused whole, with the event index, the field and the bound.
    let now = pulse_model::now_ms();
    let future: String = (0..200).map(|i| ride(&unique_name("f"), "Paris", "9", YEAR_2099 + i) + "\n").collect();
    let (code, answer) = post(&future);
    assert_eq!(code, 400, "{answer}");
    let details: serde_json::Value = serde_json::from_str(&answer).expect("JSON error");
    let first = &details["details"][0];
    assert_eq!((first["index"].as_u64(), first["field"].as_str()), (Some(0), Some("timestamp")), "{answer}");
    assert!(first["reason"].as_str().is_some_and(|r| r.contains("max_future")), "{answer}");
    let spread: String = (0..150).map(|d| ride(&unique_name("s"), "Paris", "9", 1_767_225_600_000 + d * DAY) + "\n").collect();
    let (code, answer) = post(&spread);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("max_age"), "{answer}");
    for (what, body) in [
        ("negative fare", ride("h1", "Paris", "-5", now)),
        ("huge fare", ride("h2", "Paris", "1e308", now)),
        ("64 KiB city", ride("h3", &"x".repeat(65_536), "9", now)),
        ("bidi city", ride("h4", "Par\\u202eis", "9", now)),
        ("newline id", ride("h5\\n", "Paris", "9", now)),
        ("a day ahead", ride("h6", "Paris", "9", now + DAY)),
        ("1900", ride("h7", "Paris", "9", -2_208_988_800_000)),
    ] {
        let (code, answer) = post(&body);
        assert_eq!(code, 400, "{what}: {answer}");
    }

    // 2. Straight to Kafka: the same records, a record whose broker timestamp is
    // itself in 2099, and a client's retries (each Retryville ride twice).
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let mut hostile = 0;
    for i in 0..200 {
        let id = unique_name("kf");
        producer.send(BaseRecord::to(&rides_topic).key(&id).payload(&ride(&id, "Paris", "9", YEAR_2099 + i))).map_err(|(e, _)| e).expect("send");
        hostile += 1;
    }
    for d in 0..150 {
        let id = unique_name("ks");
        producer.send(BaseRecord::to(&rides_topic).key(&id).payload(&ride(&id, "Paris", "9", 1_767_225_600_000 + d * DAY))).map_err(|(e, _)| e).expect("send");
        hostile += 1;
    }
    let id = unique_name("kt");
    producer.send(BaseRecord::to(&rides_topic).key(&id).payload(&ride(&id, "Paris", "9", YEAR_2099)).timestamp(YEAR_2099)).map_err(|(e, _)| e).expect("send");
    let id = unique_name("kn");
    producer.send(BaseRecord::to(&rides_topic).key(&id).payload(&ride(&id, "Paris", "-5", now))).map_err(|(e, _)| e).expect("send");
    hostile += 2;
    let retry_time = pulse_model::now_ms();
    for _attempt in 0..2 {
        for i in 0..30 {
            let id = format!("retry-{i}");
            producer.send(BaseRecord::to(&rides_topic).key(&id).payload(&ride(&id, "Retryville", "10", retry_time))).map_err(|(e, _)| e).expect("send");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    // 3. Every good ride stored exactly once; nothing hostile stored.
    let good = acked.load(Ordering::Relaxed) + 30;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = &rows(&rt, ch, "SELECT count() AS n, countIf(city = 'Paris') AS paris FROM rides FINAL")[0];
        if c["n"].as_u64() == Some(good) {
            assert_eq!(c["paris"].as_u64(), Some(0), "a refused ride was stored");
            break;
        }
        assert!(Instant::now() < deadline, "rides FINAL holds {}, expected {good}", c["n"]);
        std::thread::sleep(Duration::from_millis(500));
    }

    // 4. Each hostile record dead-lettered by the sink and by the dataflow, with its reason.
    let consumer: BaseConsumer = kafka.consumer(&unique_name("trust-dlq")).create().expect("consumer");
    let md = consumer.fetch_metadata(Some(&spec.pipeline.dead_letter_topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().first().map(|t| t.partitions().len()).into_iter().flat_map(|n| 0..n as i32) {
        tpl.add_partition_offset(&spec.pipeline.dead_letter_topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut by_stage: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while by_stage.values().map(Vec::len).min().unwrap_or(0) < hostile || by_stage.len() < 2 {
        assert!(Instant::now() < deadline, "dead letters so far: {:?}", by_stage.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>());
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else { continue };
        let Some(headers) = msg.headers() else { continue };
        if DeadLetter::header(headers, H_SOURCE_TOPIC).as_deref() != Some(rides_topic.as_str()) {
            continue;
        }
        let stage = DeadLetter::header(headers, H_STAGE).unwrap_or_default();
        let reason = DeadLetter::header(headers, pulse_kafka::dead_letter::H_REASON).unwrap_or_default();
        by_stage.entry(stage).or_default().push(reason);
    }
    for (stage, reasons) in &by_stage {
        assert_eq!(reasons.len(), hostile, "{stage}: {reasons:?}");
        let count = |needle: &str| reasons.iter().filter(|r| r.contains(needle)).count();
        assert_eq!(count("max_future"), 201, "{stage}: {reasons:?}");
        assert_eq!(count("max_age"), 150, "{stage}: {reasons:?}");
        assert_eq!(count("broker timestamp"), 351, "{stage}: every time verdict names its clock: {reasons:?}");
        assert_eq!(count("minimum"), 1, "{stage}: {reasons:?}");
    }

    // 5. The dataflow: nothing late, the watermark in the present, retries counted once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let retried = loop {
        let r = rows(&rt, ch, "SELECT max(total_events) AS n FROM city_metrics FINAL WHERE city = 'Retryville'");
        if let Some(n) = r.first().and_then(|r| r["n"].as_u64()).filter(|n| *n > 0) {
            break n;
        }
        assert!(Instant::now() < deadline, "Retryville never reached city_metrics");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(retried, 30, "each of the 30 retried rides counts once");
    let metrics = d.dataflow_ops().blocking_get("/metrics").expect("dataflow metrics").text;
    assert_eq!(metric(&metrics, "pulse_late_events_total{domain=\"rides\"}"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "pulse_dataflow_events_total{domain=\"rides\",outcome=\"duplicate\"}"), 30.0, "{metrics}");
    let wm = metric(&metrics, "pulse_watermark_ms{domain=\"rides\"}") as i64;
    let wall = pulse_model::now_ms();
    assert!(wm > wall - 120_000 && wm <= wall + 300_000, "rides watermark {wm} vs wall clock {wall}");
    let span = &rows(
        &rt,
        ch,
        "SELECT toUnixTimestamp64Milli(min(window_start)) AS lo, toUnixTimestamp64Milli(max(window_start)) AS hi, countIf(city = 'Paris') AS paris FROM city_metrics",
    )[0];
    assert_eq!(span["paris"].as_u64(), Some(0), "a refused ride reached a window");
    let (lo, hi) = (span["lo"].as_i64().unwrap_or(0), span["hi"].as_i64().unwrap_or(0));
    assert!(lo > now - 3_600_000 && hi < wall + 300_000, "windows from {lo} to {hi}, now {wall}");
    // Cities keep advancing: the ordinary traffic's newest window is of the present.
    let lima = &rows(&rt, ch, "SELECT toUnixTimestamp64Milli(max(window_end)) AS t, sum(total_events) AS n FROM city_metrics FINAL WHERE city = 'Lima'")[0];
    assert!(lima["t"].as_i64().unwrap_or(0) > wall - 120_000, "Lima's newest window: {lima}");

    drop((sink, dataflow, ingest));
    d.remove(&rt);
}
