//! ClickHouse down for 60 s under load: the sink and the dataflow wait and
//! retry, the read API answers 503 (with Retry-After) meanwhile and recovers;
//! afterwards every event is stored exactly once and the metric rows have
//! caught up: every final window equals ClickHouse's recomputation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_clickhouse::recompute::recompute_sql;
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_ops::{ServiceContext, Shutdown};
use pulse_testkit::PrivateClickHouse;
use pulse_testkit::{Http, stack_brokers, unique_spec};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn produce(kafka: &KafkaConfig, spec: &pulse_model::Spec, cfg: GenConfig, n: usize) -> u64 {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let mut rides = 0;
    for op in Generator::new(cfg).take(n) {
        // Rides and driver locations only: immutable, so "exactly once" is a count.
        let GenOp::Insert { domain, json } = op else { continue };
        if domain == GenDomain::AppEvents {
            continue;
        }
        rides += u64::from(domain == GenDomain::Rides);
        let topic = &spec.domain(domain.name()).expect("domain").topic;
        pulse_testkit::send(&producer, BaseRecord::to(topic).key("k").payload(&json));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    rides
}

#[test]
fn clickhouse_down_for_a_minute_under_load() {
    if stack_brokers().is_none() {
        return;
    }
    let port = pulse_testkit::free_port();
    let mut server = PrivateClickHouse::new(port);
    server.start();
    let ch = ClickHouseConfig { url: server.url(), database: "pulse".into(), timeout: Duration::from_secs(5), ..ClickHouseConfig::default() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");

    let shutdown = Shutdown::new();
    let sink = {
        let (spec, kafka, ch, shutdown) = (Arc::clone(&spec), kafka.clone(), ch.clone(), shutdown.clone());
        let cfg = pulse_sink::service::SinkConfig { batch_delay: Duration::from_millis(200), ..Default::default() };
        rt.spawn(async move { pulse_sink::service::run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown)).await })
    };
    let dataflow = {
        let (spec, kafka, ch, shutdown, handle) = (Arc::clone(&spec), kafka.clone(), ch.clone(), shutdown.clone(), rt.handle().clone());
        std::thread::spawn(move || {
            let cfg = DataflowConfig {
                cluster: Cluster::Process { workers: 1 },
                emit_interval: Some(Duration::from_millis(100)),
                idle_timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            };
            pulse_dataflow::service::run(spec, &kafka, &ch, cfg, ServiceContext::new(handle, shutdown)).expect("dataflow")
        })
    };
    let api_port = pulse_testkit::free_port();
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().expect("addr");
    let api = {
        let _guard = rt.enter();
        let listener = rt.block_on(tokio::net::TcpListener::bind(api_addr)).expect("bind");
        let cfg = pulse_api::ApiConfig { addr: api_addr, ..pulse_api::ApiConfig::default() };
        let api = pulse_api::Api::new(Arc::clone(&spec), &ch, cfg, ServiceContext::new(rt.handle().clone(), shutdown.clone())).expect("api");
        rt.spawn(pulse_api::serve(api, listener))
    };
    let api_http = Http::new(&format!("http://127.0.0.1:{api_port}"));
    // The status of a GET, 0 without an answer.
    let status = |path: &str| api_http.blocking_get(path).map_or(0, |a| a.status);

    // Ten minutes of event time before, during and after the outage.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).expect("now") - 15 * 60_000;
    let events = |seed: u64, offset_min: i64| GenConfig { seed, start_ms: start + offset_min * 60_000, rate: 40.0, disorder_ms: 2_000, ..GenConfig::default() };
    let mut rides = produce(&kafka, &spec, events(1, 0), 12_000);
    let client = ch.client();
    let count = |client: &clickhouse::Client| rt.block_on(client.query("SELECT count() FROM rides").fetch_one::<u64>());
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&client).unwrap_or(0) < rides {
        assert!(Instant::now() < deadline, "rows before the outage");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(status("/v1/metrics/city_metrics/latest"), 200);

    // Down for 60 s while events keep coming.
    server.stop();
    let down = Instant::now();
    rides += produce(&kafka, &spec, events(2, 5), 12_000);
    let mut saw_503 = false;
    while down.elapsed() < Duration::from_secs(60) {
        let latest = api_http.blocking_get("/v1/metrics/city_metrics/latest").ok();
        let code = latest.as_ref().map_or(0, |a| a.status);
        if code == 503 {
            assert!(latest.as_ref().and_then(|a| a.header("retry-after")).is_some(), "{latest:?}");
            saw_503 = true;
        }
        assert_ne!(code, 200, "the API cannot answer from a ClickHouse that is down");
        // Readiness is ClickHouse's ping every 2 s: it follows within one interval.
        if down.elapsed() > Duration::from_secs(3) {
            assert_eq!(status("/ready"), 503, "not ready while ClickHouse is down");
        }
        assert!(!sink.is_finished() && !dataflow.is_finished(), "services keep running");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(saw_503);
    server.start();
    rides += produce(&kafka, &spec, events(3, 10), 4_000);

    // Everything caught up: raw rows exactly once, finals equal SQL, the API answers again.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let raw = count(&client).unwrap_or(0);
        let distinct = rt.block_on(client.query("SELECT count() FROM rides FINAL").fetch_one::<u64>()).unwrap_or(0);
        if raw == rides && distinct == rides {
            break;
        }
        assert!(Instant::now() < deadline, "rides: {raw} raw, {distinct} distinct, {rides} produced");
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while status("/v1/metrics/city_metrics/latest") != 200 {
        assert!(Instant::now() < deadline, "the API recovers");
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = spec.metric("city_metrics").expect("metric");
    let newest = start + 11 * 60_000;
    let last_window = (newest - 30_000 - 300_000) / 60_000 * 60_000 - 60_000;
    let finals = |client: &clickhouse::Client| -> Vec<(String, i64, u64, u64)> {
        rt.block_on(
            client
                .query("SELECT city, toUnixTimestamp64Milli(window_start), total_events, unique_riders FROM city_metrics FINAL WHERE final ORDER BY city, window_start")
                .fetch_all(),
        )
        .expect("finals")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !finals(&client).iter().any(|f| f.1 >= last_window) {
        assert!(Instant::now() < deadline, "metric rows catch up after the outage");
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = finals(&client);
    let sql = recompute_sql(&spec, m, &ch.database);
    let expected: Vec<(String, i64, u64, u64)> = rt
        .block_on(
            client
                .query_raw(&format!("SELECT city, window_start, total_events, unique_riders FROM ({sql}) WHERE window_start <= {{last:Int64}}"))
                .param("from", i64::MIN / 4)
                .param("to", i64::MAX / 4)
                .param("last", got.iter().map(|f| f.1).max().unwrap_or(0))
                .fetch_all(),
        )
        .expect("recomputed");
    assert_eq!(got.len(), expected.len(), "every window final once");
    assert_eq!(got, expected, "finals equal the recomputation");

    shutdown.trigger();
    let _ = rt.block_on(sink);
    let _ = rt.block_on(api);
    let _ = dataflow.join();
}
