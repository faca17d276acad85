//! Crash consistency: the dataflow, killed with SIGKILL at 5 random points of a
//! 1,000,000-event stream and restarted each time, ends with the same final
//! windows as an uninterrupted run: none missing, none extra, equal values —
//! in ClickHouse and on the aggregated topic (latest row per key). And the same
//! stream on two timely processes (cluster mode on loopback) gives the same
//! final windows as one process.
//!
//! The job runs in child processes (this test binary re-executed in "child"
//! mode), so that it can be killed for real; Kafka is librdkafka's mock cluster
//! in this process, reached over TCP.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_dataflow::service::{Cluster, DataflowConfig, run};
use pulse_gen::{GenConfig, Generator};
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::Spec;
use pulse_ops::{ServiceContext, Shutdown};
use pulse_testkit::{stack_brokers, unique_name};
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const EVENTS: usize = 1_000_000;

/// Child mode: run the dataflow until killed (or SIGTERM).
#[test]
fn child() {
    let Ok(spec_path) = std::env::var("PULSE_CRASH_CHILD_SPEC") else { return };
    pulse_testkit::exit_with_parent();
    pulse_ops::init_tracing(&std::env::var("PULSE_LOG").unwrap_or_else(|_| "warn".into()));
    let spec = Arc::new(Spec::load(Path::new(&spec_path)).unwrap_or_else(|e| panic!("{e}")));
    let kafka = KafkaConfig { brokers: std::env::var("PULSE_CRASH_CHILD_BROKERS").expect("brokers"), properties: Vec::new() };
    let ch = ClickHouseConfig {
        url: std::env::var("PULSE_CLICKHOUSE_URL").expect("url"),
        database: std::env::var("PULSE_CRASH_CHILD_DATABASE").expect("database"),
        ..ClickHouseConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shutdown = Shutdown::new();
    {
        let s = shutdown.clone();
        rt.spawn(async move {
            s.on_signals();
        });
    }
    // "n,p,host:port;host:port" runs this child as process p of an n-process timely cluster.
    let cluster = match std::env::var("PULSE_CRASH_CHILD_CLUSTER") {
        Ok(c) => {
            let mut parts = c.splitn(3, ',');
            let n: usize = parts.next().and_then(|v| v.parse().ok()).expect("processes");
            let process: usize = parts.next().and_then(|v| v.parse().ok()).expect("process index");
            let addresses: Vec<String> = parts.next().expect("addresses").split(';').map(String::from).collect();
            assert_eq!(addresses.len(), n);
            Cluster::Cluster { workers: 1, process, addresses }
        }
        Err(_) => Cluster::Process { workers: 2 },
    };
    let cfg = DataflowConfig {
        group: std::env::var("PULSE_CRASH_CHILD_GROUP").expect("group"),
        cluster,
        emit_interval: Some(Duration::from_millis(100)),
        idle_timeout: Some(Duration::from_secs(1)),
        // A killed instance never releases the group's lease: its successor waits this long.
        lease_ttl: Duration::from_secs(2),
        ..DataflowConfig::default()
    };
    run(spec, &kafka, &ch, cfg, ServiceContext::new(rt.handle().clone(), shutdown)).expect("dataflow");
}

fn spawn_child(spec: &Path, brokers: &str, db: &str, group: &str) -> Child {
    spawn_child_in(spec, brokers, db, group, None)
}

fn spawn_child_in(spec: &Path, brokers: &str, db: &str, group: &str, cluster: Option<String>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    if let Some(c) = cluster {
        cmd.env("PULSE_CRASH_CHILD_CLUSTER", c);
    }
    cmd.args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env("PULSE_CRASH_CHILD_SPEC", spec)
        .env("PULSE_CRASH_CHILD_BROKERS", brokers)
        .env("PULSE_CRASH_CHILD_DATABASE", db)
        .env("PULSE_CRASH_CHILD_GROUP", group)
        .env("PULSE_LOG", std::env::var("PULSE_CRASH_CHILD_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()
        .expect("child process")
}

/// Final rows of every metric: (metric, group, window start) -> the row's values as text.
fn finals(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, spec: &Spec) -> BTreeMap<(String, String, i64), String> {
    let mut out = BTreeMap::new();
    for m in &spec.metrics {
        let group = &spec.metric_domain(m).fields[m.group_by[0]].name;
        let aggs: Vec<String> = m.aggregates.iter().map(|a| format!("toString(round(`{}`, 9))", a.name)).collect();
        let sql = format!(
            "SELECT toString(`{group}`), toUnixTimestamp64Milli(window_start), arrayStringConcat([{}], ',') FROM `{}` FINAL WHERE final",
            aggs.join(", "),
            m.name
        );
        let rows: Vec<(String, i64, String)> = rt.block_on(ch.client().query(&sql).fetch_all()).unwrap_or_else(|e| panic!("{sql}: {e}"));
        for (g, ws, values) in rows {
            out.insert((m.name.clone(), g, ws), values);
        }
    }
    out
}

/// Latest row per key on a topic, reduced to (final, values without the volatile fields).
fn topic_latest(kafka: &KafkaConfig, topic: &str) -> HashMap<String, (bool, serde_json::Value)> {
    let latest = pulse_testkit::latest_by_key(pulse_testkit::read_topic(kafka, topic));
    let reduce = |mut v: serde_json::Value| {
        let is_final = v["final"].as_bool().unwrap_or(false);
        if let Some(o) = v.as_object_mut() {
            for volatile in ["revision", "emitted_at"] {
                o.remove(volatile);
            }
        }
        (is_final, v)
    };
    latest.into_iter().map(|(k, v)| (k, reduce(v))).collect()
}

#[test]
fn sigkill_at_five_points_changes_no_final_window() {
    if std::env::var("PULSE_CRASH_CHILD_SPEC").is_ok() || stack_brokers().is_none() {
        return;
    }
    let url = std::env::var("PULSE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let kafka = KafkaConfig { brokers: brokers.clone(), properties: Vec::new() };

    // One set of input topics; each run writes to its own output topic and database.
    let dir = std::env::temp_dir().join(unique_name("pulse-crash"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prefix = unique_name("crash").replace('_', "-");
    let mut text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).expect("spec");
    for topic in ["ride-events", "driver-locations", "app-events"] {
        text = text.replace(&format!("topic = \"{topic}\""), &format!("topic = \"{prefix}-{topic}\""));
    }
    let mut specs = Vec::new();
    for run_name in ["reference", "crashing", "cluster"] {
        let t = text.replace("[pipeline]\n", &format!("[pipeline]\naggregated_topic = \"{prefix}-{run_name}\"\ndead_letter_topic = \"{prefix}-dlq\"\n"));
        let path = dir.join(format!("{run_name}.toml"));
        std::fs::write(&path, &t).expect("spec file");
        let spec = Spec::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let plans: Vec<_> = plan_topics(&spec).into_iter().filter(|p| run_name == "reference" || p.name.ends_with(run_name)).collect();
        create_on_mock(&mock, &plans).expect("topics");
        let ch = ClickHouseConfig { url: url.clone(), database: unique_name(&format!("pulse_crash_{run_name}")), ..ClickHouseConfig::default() };
        rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
        specs.push((path, spec, ch));
    }
    let base = &specs[0].1;

    // A million events over ~35 minutes of event time, in order up to 3 s of disorder.
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    let cfg = GenConfig { rate: 500.0, disorder_ms: 3_000, ..GenConfig::default() };
    // When the idle partitions release the watermark, every window ending 30 s (the
    // lateness) before the last event closes; a minute of margin for disorder.
    let last_window = (cfg.start_ms + (EVENTS as i64) * 2 - 30_000 - 300_000) / 60_000 * 60_000 - 60_000;
    let mut version = 0u64;
    for op in Generator::new(cfg).take(EVENTS) {
        version += 1;
        let (key, json) = op.kafka_record(version);
        let topic = &base.domain(op.domain().name()).expect("domain").topic;
        pulse_testkit::send(&producer, BaseRecord::to(topic).key(&key).payload(&json));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let settle = |ch: &ClickHouseConfig, spec: &Spec, child: &mut Child| -> BTreeMap<(String, String, i64), String> {
        // Wait until the stream's last windows are final and nothing changes any more.
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last = BTreeMap::new();
        let mut stable_since = Instant::now();
        loop {
            assert!(child.try_wait().expect("child status").is_none(), "the dataflow exited");
            std::thread::sleep(Duration::from_secs(1));
            let now = finals(&rt, ch, spec);
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if last.keys().any(|(m, _, ws)| m == "city_metrics" && *ws >= last_window) && stable_since.elapsed() > Duration::from_secs(3) {
                return last;
            }
            assert!(Instant::now() < deadline, "finals did not settle ({} rows)", last.len());
        }
    };

    // The uninterrupted run.
    let (ref_path, ref_spec, ref_ch) = &specs[0];
    let mut reference = spawn_child(ref_path, &brokers, &ref_ch.database, "crash-reference");
    let expected = settle(ref_ch, ref_spec, &mut reference);
    let _ = reference.kill();
    let _ = reference.wait();
    assert!(expected.len() > 20 * 30, "{} final windows", expected.len());

    // The same stream, killed at five random points.
    let (crash_path, crash_spec, crash_ch) = &specs[1];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(std::process::id() as u64);
    let mut child = spawn_child(crash_path, &brokers, &crash_ch.database, "crash-crashing");
    // Each kill lands at a random moment after the running instance made progress
    // (a restarted one first waits out its killed predecessor's lease), so the five
    // kills fall at five different points of the stream.
    let mut mid_stream = 0;
    let mut so_far = 0;
    for kill in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while finals(&rt, crash_ch, crash_spec).len() <= so_far && Instant::now() < deadline {
            assert!(child.try_wait().expect("child status").is_none(), "the dataflow exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A running instance closes hundreds of windows a second while it catches up.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let now = finals(&rt, crash_ch, crash_spec).len();
        eprintln!("kill {}: {now} of {} finals so far", kill + 1, expected.len());
        mid_stream += usize::from(now > so_far && now < expected.len());
        so_far = now;
        child = spawn_child(crash_path, &brokers, &crash_ch.database, "crash-crashing");
    }
    assert!(mid_stream >= 3, "the kills should land at different points while the stream is processed ({mid_stream} did)");

    // The same stream on two timely processes (one worker each) on loopback.
    let (cluster_path, cluster_spec, cluster_ch) = &specs[2];
    let ports: Vec<u16> = (0..2).map(|_| pulse_testkit::free_port()).collect();
    let hosts = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(";");
    let spawn_cluster = || -> Vec<Child> {
        (0..2).map(|p| spawn_child_in(cluster_path, &brokers, &cluster_ch.database, "crash-cluster", Some(format!("2,{p},{hosts}")))).collect()
    };
    let mut procs = spawn_cluster();
    // One process dies mid-stream: the other ends too, with a non-zero exit, and
    // the two restarted resume exactly.
    std::thread::sleep(Duration::from_millis(rng.random_range(1_500..3_000)));
    procs[1].kill().expect("SIGKILL");
    procs[1].wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = procs[0].try_wait().expect("status") {
            break status;
        }
        assert!(Instant::now() < deadline, "the surviving process went on without its peer");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "the surviving process must fail when its peer dies: {status:?}");
    eprintln!("cluster: peer killed after {} finals; survivor exited with {status:?}", finals(&rt, cluster_ch, cluster_spec).len());
    // Timely's ports may linger a moment in TIME_WAIT; its listeners reuse them.
    let mut procs = spawn_cluster();
    let two = settle(cluster_ch, cluster_spec, &mut procs[0]);
    for p in procs.iter_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert_eq!(two.len(), expected.len(), "two processes: as many final windows as one");
    assert!(two == expected, "two processes give the same final windows as one");
    let got = settle(crash_ch, crash_spec, &mut child);
    let _ = child.kill();
    let _ = child.wait();

    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (k, v) in &expected {
        assert_eq!(&got[k], v, "window {k:?}");
    }

    // On the topics: the latest row of every final window is final and equal.
    let ref_topic = topic_latest(&kafka, &ref_spec.pipeline.aggregated_topic);
    let crash_topic = topic_latest(&kafka, &crash_spec.pipeline.aggregated_topic);
    let finals_of = |t: &HashMap<String, (bool, serde_json::Value)>| -> BTreeMap<String, serde_json::Value> {
        t.iter().filter(|(_, (f, v))| *f && v["deleted"] != true).map(|(k, (_, v))| (k.clone(), v.clone())).collect()
    };
    let (a, b) = (finals_of(&ref_topic), finals_of(&crash_topic));
    assert_eq!(a.len(), expected.len(), "reference finals on the topic");
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the aggregated topics hold different windows");
    for (key, va) in &a {
        let vb = &b[key];
        for (field, x) in va.as_object().into_iter().flatten() {
            let y = &vb[field];
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{key}.{field}: {x} vs {y}"),
                _ => assert_eq!(x, y, "{key}.{field}"),
            }
        }
    }
    for (_, _, ch) in &specs {
        let _ = rt.block_on(ch.server_client().query(&format!("DROP DATABASE IF EXISTS `{}`", ch.database)).execute());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
