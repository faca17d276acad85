//! `pulse sink` against Kafka (librdkafka's mock cluster, reached over TCP) and
//! the local ClickHouse: typed round trip with updates, deletes and a poison
//! record; SIGKILL mid-stream; broker faults (leader moves, failing fetches, a
//! broker down); ClickHouse down for 30 s mid-stream. In every case each event
//! ends up in its raw table exactly once (read with FINAL).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
use pulse_kafka::dead_letter::{H_REASON, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC};
use pulse_kafka::{DeadLetter, KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::Spec;
use pulse_ops::{ServiceContext, Shutdown};
use pulse_sink::service::{SinkConfig, run};
use pulse_testkit::{PrivateClickHouse, stack_clickhouse};
use pulse_testkit::{stack_brokers, unique_name, unique_spec, unique_spec_text};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// What was produced, for the expectations.
#[derive(Default)]
struct Produced {
    /// Records per immutable domain (each is a distinct event).
    immutable: HashMap<&'static str, u64>,
    /// App event ids alive at the end (inserted or updated last, not deleted).
    alive: BTreeSet<String>,
}

fn produce(kafka: &KafkaConfig, spec: &Spec, n: usize, seed: u64, out: &mut Produced) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let cfg = GenConfig { seed, update_fraction: 0.05, delete_fraction: 0.03, ..GenConfig::default() };
    let mut version = seed * 10_000_000;
    for op in Generator::new(cfg).take(n) {
        version += 1;
        // App event ids are unique to each seed (the generator numbers them from 1).
        let unique = |s: String| s.replace("app-", &format!("app{seed}-"));
        let (key, json) = op.kafka_record(version);
        let (key, json) = (unique(key), unique(json));
        match &op {
            GenOp::Insert { domain: GenDomain::AppEvents, .. } | GenOp::Update { .. } => {
                out.alive.insert(key.clone());
            }
            GenOp::Insert { domain, .. } => *out.immutable.entry(domain.name()).or_default() += 1,
            GenOp::Delete { .. } => {
                out.alive.remove(&key);
            }
        }
        let topic = &spec.domain(op.domain().name()).expect("domain").topic;
        pulse_testkit::send(&producer, BaseRecord::to(topic).key(&key).payload(&json));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn count(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, sql: &str) -> u64 {
    rt.block_on(ch.client().query(sql).fetch_one::<u64>()).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until every produced event is in its table exactly once.
fn assert_exactly_once(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, produced: &Produced, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let rides = count(rt, ch, "SELECT count() FROM rides FINAL");
        let drivers = count(rt, ch, "SELECT count() FROM driver_locations FINAL");
        let apps = count(rt, ch, "SELECT count() FROM app_events FINAL");
        let want = (produced.immutable["rides"], produced.immutable["driver_locations"], produced.alive.len() as u64);
        if (rides, drivers, apps) == want {
            // And the surviving app events are exactly the alive ones.
            let ids: Vec<String> = rt.block_on(ch.client().query("SELECT event_id FROM app_events FINAL ORDER BY event_id").fetch_all()).expect("ids");
            assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), produced.alive);
            return;
        }
        assert!(Instant::now() < deadline, "FINAL counts {:?}, expected {want:?}", (rides, drivers, apps));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn round_trip_updates_deletes_and_a_poison_record() {
    let Some(ch) = stack_clickhouse("pulse_sink_rt") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
    let mut produced = Produced::default();
    produce(&kafka, &spec, 5_000, 1, &mut produced);
    // A poison record in the middle of the rides topic.
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let rides = &spec.domain("rides").expect("rides").topic;
    producer.send(BaseRecord::to(rides).key("poison").payload("{\"event_type\": \"requested\", \"ride_id\": ")).map_err(|(e, _)| e).expect("send");
    producer.flush(Duration::from_secs(10)).expect("flush");
    produce(&kafka, &spec, 5_000, 2, &mut produced);

    let shutdown = Shutdown::new();
    let cfg = SinkConfig { batch_rows: 1_000, batch_delay: Duration::from_millis(200), ..SinkConfig::default() };
    let sink = {
        let (spec, kafka, ch, shutdown) = (Arc::clone(&spec), kafka.clone(), ch.clone(), shutdown.clone());
        rt.spawn(async move { run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown)).await })
    };
    assert_exactly_once(&rt, &ch, &produced, Duration::from_secs(60));

    // Types survive: an update is the latest version, a delete hides the event.
    let (ms, version): (f64, u64) =
        rt.block_on(ch.client().query("SELECT latency_ms, version FROM app_events FINAL ORDER BY version DESC LIMIT 1").fetch_one()).expect("latest app event");
    assert!(ms > 0.0 && version > 20_000_000);
    let deleted = count(&rt, &ch, "SELECT count() FROM app_events WHERE is_deleted = 1");
    assert!(deleted > 0, "tombstones are stored");

    // The poison record went to the dead-letter topic with where it came from and why.
    let consumer: BaseConsumer = kafka.consumer("dlq-reader").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..pulse_kafka::topics::DEAD_LETTER_PARTITIONS {
        tpl.add_partition_offset(&spec.pipeline.dead_letter_topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        assert!(Instant::now() < deadline, "no dead letter");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("headers");
            break (
                DeadLetter::header(headers, H_SOURCE_TOPIC),
                DeadLetter::header(headers, H_SOURCE_PARTITION),
                DeadLetter::header(headers, H_SOURCE_OFFSET),
                DeadLetter::header(headers, H_REASON),
                m.payload().map(<[u8]>::to_vec),
            );
        }
    };
    assert_eq!(dead.0.as_deref(), Some(rides.as_str()));
    assert!(dead.1.is_some() && dead.2.is_some());
    assert!(dead.3.as_deref().is_some_and(|r| r.contains("JSON")), "reason: {:?}", dead.3);
    assert_eq!(dead.4.as_deref(), Some(&b"{\"event_type\": \"requested\", \"ride_id\": "[..]));

    shutdown.trigger();
    let summary = rt.block_on(sink).expect("join").expect("sink");
    assert_eq!(summary.dead_lettered, 1);
    let _ = rt.block_on(ch.server_client().query(&format!("DROP DATABASE `{}`", ch.database)).execute());
}

/// Child mode of the kill test: a sink process.
#[test]
fn child() {
    let Ok(spec_path) = std::env::var("PULSE_SINK_CHILD_SPEC") else { return };
    pulse_testkit::exit_with_parent();
    let spec = Arc::new(Spec::load(Path::new(&spec_path)).unwrap_or_else(|e| panic!("{e}")));
    let kafka = KafkaConfig { brokers: std::env::var("PULSE_SINK_CHILD_BROKERS").expect("brokers"), properties: Vec::new() };
    let ch = ClickHouseConfig {
        url: std::env::var("PULSE_CLICKHOUSE_URL").expect("url"),
        database: std::env::var("PULSE_SINK_CHILD_DATABASE").expect("database"),
        ..ClickHouseConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let cfg = SinkConfig { batch_rows: 5_000, batch_delay: Duration::from_millis(300), ..SinkConfig::default() };
    rt.block_on(run(spec, &kafka, &ch, cfg, ServiceContext::new(rt.handle().clone(), Shutdown::new()))).expect("sink");
}

#[test]
/// SIGKILL at 5 random points of a million-event stream, restarting each time.
fn sigkill_mid_stream_loses_and_duplicates_nothing() {
    if std::env::var("PULSE_SINK_CHILD_SPEC").is_ok() {
        return;
    }
    let Some(ch) = stack_clickhouse("pulse_sink_kill") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock");
    let dir = std::env::temp_dir().join(unique_name("pulse-sink-kill"));
    std::fs::create_dir_all(&dir).expect("dir");
    let spec_path = dir.join("pulse.toml");
    std::fs::write(&spec_path, unique_spec_text()).expect("spec");
    let spec = Arc::new(Spec::load(&spec_path).expect("spec"));
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
    let spawn = || -> Child {
        Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
            .env("PULSE_SINK_CHILD_SPEC", &spec_path)
            .env("PULSE_SINK_CHILD_BROKERS", &kafka.brokers)
            .env("PULSE_SINK_CHILD_DATABASE", &ch.database)
            .env("PULSE_CLICKHOUSE_URL", &ch.url)
            .spawn()
            .expect("child")
    };
    let mut produced = Produced::default();
    produce(&kafka, &spec, 1_000_000, 3, &mut produced);
    let mut child = spawn();
    let mut rng_state = std::process::id() as u64;
    let mut mid_stream = 0;
    for _ in 0..5 {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(800 + (rng_state >> 33) % 1500));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let stored = count(&rt, &ch, "SELECT count() FROM rides FINAL");
        eprintln!("kill: {stored} of {} rides stored", produced.immutable["rides"]);
        mid_stream += usize::from(stored < produced.immutable["rides"]);
        child = spawn();
    }
    assert!(mid_stream >= 3, "the kills should land while the stream is stored ({mid_stream} did)");
    assert_exactly_once(&rt, &ch, &produced, Duration::from_secs(300));
    let raw = count(&rt, &ch, "SELECT count() FROM rides");
    eprintln!("rides: {} produced, {raw} raw rows before merges (replays collapse under FINAL)", produced.immutable["rides"]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = rt.block_on(ch.server_client().query(&format!("DROP DATABASE `{}`", ch.database)).execute());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clickhouse_down_for_30_seconds_mid_stream() {
    if std::env::var("PULSE_SINK_CHILD_SPEC").is_ok() || stack_brokers().is_none() {
        return;
    }
    let port = pulse_testkit::free_port();
    let mut server = PrivateClickHouse::new(port);
    server.start();
    let ch = ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        database: "pulse_outage".into(),
        timeout: Duration::from_secs(5),
        ..ClickHouseConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");

    let shutdown = Shutdown::new();
    let cfg = SinkConfig { batch_rows: 2_000, batch_delay: Duration::from_millis(200), ..SinkConfig::default() };
    let sink = {
        let (spec, kafka, ch, shutdown) = (Arc::clone(&spec), kafka.clone(), ch.clone(), shutdown.clone());
        rt.spawn(async move { run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown)).await })
    };
    let mut produced = Produced::default();
    produce(&kafka, &spec, 20_000, 4, &mut produced);
    std::thread::sleep(Duration::from_millis(700));
    server.stop();
    // Events keep coming while ClickHouse is away.
    produce(&kafka, &spec, 20_000, 5, &mut produced);
    std::thread::sleep(Duration::from_secs(30));
    assert!(!sink.is_finished(), "the sink must wait, not exit");
    server.start();
    assert_exactly_once(&rt, &ch, &produced, Duration::from_secs(90));
    shutdown.trigger();
    rt.block_on(sink).expect("join").expect("sink");
}

#[test]
fn broker_faults_mid_stream_pause_and_resume_exactly_once() {
    if std::env::var("PULSE_SINK_CHILD_SPEC").is_ok() {
        return;
    }
    let Some(ch) = stack_clickhouse("pulse_sink_faults") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(3).expect("mock");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
    let shutdown = Shutdown::new();
    let cfg = SinkConfig { batch_rows: 2_000, batch_delay: Duration::from_millis(200), ..SinkConfig::default() };
    let sink = {
        let (spec, kafka, ch, shutdown) = (Arc::clone(&spec), kafka.clone(), ch.clone(), shutdown.clone());
        rt.spawn(async move { run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown)).await })
    };
    let mut produced = Produced::default();
    produce(&kafka, &spec, 20_000, 6, &mut produced);
    // Faults while the sink consumes: every leader moves, fetches fail for a
    // while, then a broker is down for 3 s; more events arrive meanwhile.
    for d in &spec.domains {
        for p in 0..d.partitions {
            mock.partition_leader(&d.topic, p, Some(1 + (p + 2) % 3)).expect("leader change");
        }
    }
    mock.request_errors(rdkafka::types::RDKafkaApiKey::Fetch, &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 20]);
    produce(&kafka, &spec, 10_000, 7, &mut produced);
    mock.broker_down(3).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    mock.broker_up(3).expect("broker up");
    produce(&kafka, &spec, 10_000, 8, &mut produced);
    assert_exactly_once(&rt, &ch, &produced, Duration::from_secs(90));
    assert!(!sink.is_finished(), "the sink rides out the faults");
    shutdown.trigger();
    rt.block_on(sink).expect("join").expect("sink");
    let _ = rt.block_on(ch.server_client().query(&format!("DROP DATABASE `{}`", ch.database)).execute());
}
