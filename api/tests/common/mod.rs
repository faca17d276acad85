//! Shared helpers of the API tests: an API server on a real socket, an SSE
//! reader, ClickHouse queries, and (with the local stack) a fixture that runs the real
//! pipeline pieces in-process — generated events produced to librdkafka's mock
//! cluster, `pulse sink` storing them, `pulse dataflow` computing the metrics —
//! while SSE clients listen.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pulse_api::{Api, ApiConfig};
use pulse_clickhouse::ClickHouseConfig;
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::{GenConfig, GenDomain, Generator};
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::Spec;
use pulse_ops::{ServiceContext, Shutdown};
use pulse_sink::service::SinkConfig;
use pulse_testkit::{Answer, Http, stack_clickhouse, unique_spec};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::net::TcpListener;

/// An API server on 127.0.0.1:0.
pub struct Server {
    pub url: String,
    pub api: Api,
    pub shutdown: Shutdown,
}

impl Server {
    pub async fn start(spec: Arc<Spec>, ch: &ClickHouseConfig, cfg: ApiConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = Shutdown::new();
        let api = Api::new(spec, ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone())).expect("api");
        tokio::spawn(pulse_api::serve(api.clone(), listener));
        Server { url, api, shutdown }
    }

    /// Requests to it.
    pub fn http(&self) -> Http {
        Http::new(&self.url)
    }
}

/// Reads an SSE stream into `rows` (one JSON value per `data:` event) until the task is aborted.
pub fn spawn_sse(
    url: String,
    headers: Vec<(String, String)>,
    rows: Arc<Mutex<Vec<Value>>>,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c: HyperClient<HttpConnector, Empty<Bytes>> = HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut req = hyper::Request::get(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = c.request(req.body(Empty::new()).expect("request")).await.expect("sse response");
        assert_eq!(resp.status(), StatusCode::OK, "sse status for {url}");
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(d) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str::<Value>(d.trim()) {
                            rows.lock().expect("rows").push(v);
                        }
                    } else if line.starts_with(": subscribed") || line == ":subscribed" {
                        subscribed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    })
}

pub async fn sql_scalar(ch: &ClickHouseConfig, sql: &str) -> f64 {
    let rows = pulse_testkit::json_rows(ch, sql, &[]).await;
    rows.first().and_then(|r| r.as_object()).and_then(|o| o.values().next()).and_then(Value::as_f64).unwrap_or_else(|| panic!("{sql}: no number"))
}

/// The API's RFC 3339 rendering of epoch ms.
pub fn rfc(ms: i64) -> String {
    pulse_api::params::rfc3339(ms).expect("time")
}

/// Numbers equal within float noise; null equals null.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
        _ => a == b,
    }
}

#[allow(unused_imports)]
pub use pulse_model::now_ms;

/// The shared fixture: data stored by the real sink and dataflow, an API over it,
/// and the rows SSE clients received while the dataflow ran.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub spec: Arc<Spec>,
    pub kafka: KafkaConfig,
    pub ch: ClickHouseConfig,
    pub server: Server,
    /// Every city_metrics row `/v1/stream/city_metrics` delivered.
    pub sse_all: Vec<Value>,
    /// Rows `/v1/stream/city_metrics?city=Lima` delivered.
    pub sse_lima: Vec<Value>,
    /// Records produced per domain.
    pub produced: [usize; 3],
    /// Every record produced: (domain, key, JSON).
    pub records: Vec<(GenDomain, String, String)>,
}

static FIXTURE: OnceLock<Result<Option<Fixture>, String>> = OnceLock::new();

/// The fixture, built once per test binary; `None` without the local stack.
/// A failure to build it fails every test that needs it (with its message) at once.
pub fn fixture() -> Option<&'static Fixture> {
    let built = FIXTURE.get_or_init(|| {
        std::panic::catch_unwind(build)
            .map_err(|e| e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
    });
    match built {
        Ok(f) => f.as_ref(),
        Err(e) => panic!("the test fixture could not be built: {e}"),
    }
}

/// Generated writes as Kafka records: (domain, key, JSON), app events with versions.
pub fn records(n: usize, seed: u64, start_ms: i64) -> Vec<(GenDomain, String, String)> {
    let cfg = GenConfig { seed, start_ms, rate: 40.0, disorder_ms: 2_000, sessions: 60, update_fraction: 0.05, delete_fraction: 0.03, ..GenConfig::default() };
    let mut version = 0u64;
    Generator::new(cfg)
        .take(n)
        .map(|op| {
            version += 1;
            let (key, json) = op.kafka_record(version);
            (op.domain(), key, json)
        })
        .collect()
}

pub async fn produce(spec: &Spec, kafka: &KafkaConfig, recs: &[(GenDomain, String, String)]) -> [usize; 3] {
    let producer: FutureProducer = kafka.reliable_producer().create().expect("producer");
    let mut counts = [0usize; 3];
    for chunk in recs.chunks(5_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(gd, key, json)| {
                let topic = spec.domain(gd.name()).expect("domain").topic.clone();
                let producer = producer.clone();
                async move { producer.send(FutureRecord::to(&topic).key(key).payload(json), Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("ack") }
            })
            .collect();
        futures::future::join_all(sends).await;
        for (gd, _, _) in chunk {
            counts[*gd as usize] += 1;
        }
    }
    counts
}

fn build() -> Option<Fixture> {
    let ch = stack_clickhouse("pulse_api")?;
    let ch = ClickHouseConfig { timeout: Duration::from_secs(10), ..ch };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    // The cluster lives as long as the test process.
    std::mem::forget(mock);
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");

    let stream = pulse_api::config::StreamConfig { keep_alive: Duration::from_secs(1), buffer: 1 << 16, ..pulse_api::config::StreamConfig::new(kafka.clone()) };
    let server = rt.block_on(Server::start(Arc::clone(&spec), &ch, ApiConfig { stream: Some(stream), ..ApiConfig::default() }));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.api.stream_ready() {
        assert!(Instant::now() < deadline, "the stream consumer did not get its partitions");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (all, lima) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let subscribed: Vec<Arc<std::sync::atomic::AtomicBool>> = (0..2).map(|_| Arc::default()).collect();
    let readers = rt.block_on(async {
        vec![
            spawn_sse(format!("{}/v1/stream/city_metrics", server.url), Vec::new(), Arc::clone(&all), Arc::clone(&subscribed[0])),
            spawn_sse(format!("{}/v1/stream/city_metrics?city=Lima", server.url), Vec::new(), Arc::clone(&lima), Arc::clone(&subscribed[1])),
        ]
    });
    while !subscribed.iter().all(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
        assert!(Instant::now() < deadline, "SSE clients did not subscribe");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 12,000 events at 40 per second of event time: 5 minutes, ending 3 minutes ago.
    let start_ms = now_ms() - 8 * 60_000;
    let recs = records(12_000, 11, start_ms);
    let produced = rt.block_on(produce(&spec, &kafka, &recs));

    let sink_stop = Shutdown::new();
    {
        let (spec, kafka, ch, stop) = (Arc::clone(&spec), kafka.clone(), ch.clone(), sink_stop.clone());
        let cfg = SinkConfig { batch_delay: Duration::from_millis(200), stats_interval: Duration::from_secs(1), ..SinkConfig::default() };
        rt.spawn(async move {
            if let Err(e) = pulse_sink::service::run(spec, &kafka, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), stop)).await {
                panic!("sink failed: {e}");
            }
        });
    }
    let df_stop = Shutdown::new();
    let dataflow = {
        let (spec, kafka, ch, stop, handle) = (Arc::clone(&spec), kafka.clone(), ch.clone(), df_stop.clone(), rt.handle().clone());
        std::thread::spawn(move || {
            let cfg = DataflowConfig {
                group: "api-test-df".into(),
                cluster: Cluster::Process { workers: 1 },
                emit_interval: Some(Duration::from_millis(100)),
                idle_timeout: Some(Duration::from_secs(1)),
                stats_interval: Duration::from_secs(1),
                ..DataflowConfig::default()
            };
            pulse_dataflow::service::run(spec, &kafka, &ch, cfg, ServiceContext::new(handle, stop)).expect("dataflow runs");
        })
    };

    // Wait until the sink stored every record: every ride and location, and the last
    // version of every app event (updates in one batch may collapse on insert).
    let mut last_versions: HashMap<String, u64> = HashMap::new();
    for (gd, key, json) in &recs {
        if *gd == GenDomain::AppEvents {
            let v: Value = serde_json::from_str(json).expect("json");
            let version = v["_version"].as_u64().expect("version");
            let e = last_versions.entry(key.clone()).or_default();
            *e = (*e).max(version);
        }
    }
    let want_app = (last_versions.len() as f64, last_versions.values().sum::<u64>() as f64);
    let deadline = Instant::now() + Duration::from_secs(90);
    let scalar = |sql: &str| rt.block_on(sql_scalar(&ch, &sql.replace("{db}", &format!("`{}`", ch.database))));
    loop {
        let rides = scalar("SELECT toFloat64(count()) FROM {db}.rides") as usize;
        let locations = scalar("SELECT toFloat64(count()) FROM {db}.driver_locations") as usize;
        let app = (
            scalar("SELECT toFloat64(uniqExact(event_id)) FROM {db}.app_events"),
            scalar("SELECT toFloat64(sum(v)) FROM (SELECT max(version) AS v FROM {db}.app_events GROUP BY event_id)"),
        );
        if rides >= produced[0] && locations >= produced[1] && app == want_app {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not store every record in time: {rides}/{} rides, {locations}/{} locations, app {app:?} of {want_app:?}",
            produced[0],
            produced[1]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fingerprint = || {
        rt.block_on(pulse_testkit::json_rows(
            &ch,
            &format!(
                "SELECT (SELECT count() FROM `{0}`.city_metrics) + (SELECT count() FROM `{0}`.city_supply) + (SELECT count() FROM `{0}`.event_metrics) AS n, \
                 (SELECT countIf(final) FROM `{0}`.city_metrics) AS finals",
                ch.database
            ),
            &[],
        ))
    };
    let mut last = Value::Null;
    let mut stable = 0;
    while stable < 4 {
        assert!(Instant::now() < deadline, "the metric tables did not settle in time");
        std::thread::sleep(Duration::from_millis(500));
        let now = fingerprint().pop().unwrap_or(Value::Null);
        let finals = now["finals"].as_u64().unwrap_or(0);
        stable = if now == last && finals > 0 { stable + 1 } else { 0 };
        last = now;
    }
    df_stop.trigger();
    dataflow.join().expect("dataflow thread");
    sink_stop.trigger();
    // Let the last rows reach the SSE readers, then stop them.
    std::thread::sleep(Duration::from_millis(1500));
    for r in readers {
        r.abort();
    }
    let sse_all = all.lock().expect("rows").clone();
    let sse_lima = lima.lock().expect("rows").clone();
    eprintln!("fixture: produced {produced:?}, {} SSE rows ({} for Lima), database {}", sse_all.len(), sse_lima.len(), ch.database);
    Some(Fixture { rt, spec, kafka, ch, server, sse_all, sse_lima, produced, records: recs })
}

/// Drops the databases earlier runs of these tests left (their process is gone):
/// the fixture lives until the process exits and cannot drop its own.
async fn drop_stale_databases(ch: &ClickHouseConfig) {
    let names = pulse_testkit::json_rows(ch, "SELECT name FROM system.databases WHERE startsWith(name, 'pulse_api_')", &[]).await;
    for n in names.iter().filter_map(|r| r["name"].as_str()) {
        let pid = n.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = ch.server_client().query(&format!("DROP DATABASE IF EXISTS `{n}`")).execute().await;
        }
    }
}

impl Fixture {
    pub fn get(&self, path: &str) -> Answer {
        self.rt.block_on(self.server.http().get(path))
    }

    pub fn sql(&self, sql: &str, params: &[(&str, &str)]) -> Vec<Value> {
        let sql = sql.replace("{db}", &format!("`{}`", self.ch.database));
        self.rt.block_on(pulse_testkit::json_rows(&self.ch, &sql, params))
    }
}
