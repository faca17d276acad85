//! `pulse bench api`: read latency per endpoint over real HTTP.
//!
//! Loads a fresh database with generated raw rides (10 M by default) and app
//! events — the generator's JSON decoded and encoded to RowBinary by the sink's
//! own `RawTable::encode`, inserted in large batches — plus metric rows for every
//! window of the period, starts the API in-process, and measures p50/p99 of each
//! endpoint at a given concurrency. ClickHouse's share of the time is reported
//! from the API's own query metrics (round trip seen by the API, and the elapsed
//! time ClickHouse reports in `X-ClickHouse-Summary`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pulse_clickhouse::schema::{Provenance, metric_table, raw_table};
use pulse_clickhouse::{ClickHouseConfig, Writer, WriterMetrics};
use pulse_gen::{CITIES, GenConfig, GenDomain, GenOp, Generator};
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::{Decoder, Spec};
use pulse_ops::prometheus::Registry;
use pulse_ops::prometheus::proto::MetricFamily;
use pulse_ops::{ServiceContext, Shutdown};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

use pulse_api::{Api, ApiConfig};
use pulse_client::encode_segment;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Raw ride rows to load.
    pub rides: usize,
    /// App events to load (with updates and deletes).
    pub app_events: usize,
    /// Sessions the app events are drawn from, uniformly.
    pub sessions: u64,
    /// Event time the data covers, ending now.
    pub span: Duration,
    /// Rows per INSERT.
    pub batch_rows: usize,
    /// Measured requests per endpoint.
    pub requests: usize,
    /// Requests in flight at once; each endpoint is measured at each of these.
    pub concurrency: Vec<usize>,
    /// Use this database as it is when it already holds the rides (skips loading).
    pub reuse: bool,
    /// Merge the tables (OPTIMIZE ... FINAL) after loading.
    pub optimize: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            rides: 10_000_000,
            app_events: 500_000,
            sessions: 20_000,
            span: Duration::from_secs(2 * 86_400),
            batch_rows: 1_000_000,
            requests: 500,
            concurrency: vec![1, 4],
            reuse: false,
            optimize: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Write(#[from] pulse_clickhouse::WriteError),
    #[error(transparent)]
    Migrate(#[from] pulse_clickhouse::MigrateError),
    #[error("api: {0}")]
    Api(#[from] pulse_api::ApiError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Metrics(#[from] pulse_ops::MetricsError),
}

/// Latency figures of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointFigures {
    pub name: &'static str,
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_sec: f64,
    /// Mean ClickHouse round trip (as the API saw it) and mean ClickHouse-reported elapsed time.
    pub ch_round_trip_ms: Option<f64>,
    pub ch_elapsed_ms: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub database: String,
    pub rides: u64,
    pub app_events: u64,
    pub metric_rows: u64,
    /// Active parts of the raw tables before measuring (rides, app_events): a `FINAL`
    /// read merges the parts whose key ranges overlap, so more parts cost more.
    pub parts: (u64, u64),
    /// Seconds spent loading (None when an existing database was reused) and merging.
    pub load_secs: Option<f64>,
    pub optimize_secs: Option<f64>,
    pub endpoints: Vec<EndpointFigures>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bench api: database {} — {} rides, {} app events, {} metric rows", self.database, self.rides, self.app_events, self.metric_rows)?;
        writeln!(f, "  active parts: rides {}, app_events {}", self.parts.0, self.parts.1)?;
        if let Some(s) = self.load_secs {
            writeln!(f, "  loaded in {s:.1} s ({:.0} rows/s)", (self.rides + self.app_events + self.metric_rows) as f64 / s.max(0.001))?;
        }
        if let Some(s) = self.optimize_secs {
            writeln!(f, "  merged (OPTIMIZE TABLE ... FINAL) in {s:.1} s")?;
        }
        writeln!(
            f,
            "  latency over real HTTP at the given concurrency; CH rt = mean ClickHouse round trip seen by the API, CH exec = mean elapsed ClickHouse reports"
        )?;
        writeln!(
            f,
            "  {:<40} {:>4} {:>5} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>10}",
            "endpoint", "conc", "reqs", "errors", "p50 ms", "p99 ms", "max ms", "req/s", "CH rt ms", "CH exec ms"
        )?;
        for e in &self.endpoints {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
            writeln!(
                f,
                "  {:<40} {:>4} {:>5} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>7.0} {:>8} {:>10}",
                e.name,
                e.concurrency,
                e.requests,
                e.errors,
                e.p50_ms,
                e.p99_ms,
                e.max_ms,
                e.requests_per_sec,
                opt(e.ch_round_trip_ms),
                opt(e.ch_elapsed_ms)
            )?;
        }
        Ok(())
    }
}

use pulse_model::now_ms;

async fn scalar(ch: &ClickHouseConfig, sql: &str) -> Result<u64, BenchError> {
    Ok(ch.client().query(sql).fetch_one::<u64>().await?)
}

/// Loads, measures, and reports. `ch.database` is the database to use (created).
pub async fn run(spec: Arc<Spec>, ch: &ClickHouseConfig, cfg: &BenchConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<BenchReport, BenchError> {
    pulse_clickhouse::migrate(ch, &spec).await?;
    let db = pulse_clickhouse::schema::ident(&ch.database);
    let have = scalar(ch, &format!("SELECT count() FROM {db}.rides")).await?;
    let (mut load_secs, mut optimize_secs) = (None, None);
    if !(cfg.reuse && have >= cfg.rides as u64) {
        let t0 = Instant::now();
        for t in ["rides", "app_events", "city_metrics", "city_supply"] {
            ch.client().query(&format!("TRUNCATE TABLE {db}.{}", pulse_clickhouse::schema::ident(t))).execute().await?;
        }
        load_raw(&spec, ch, cfg, GenDomain::Rides, cfg.rides, progress).await?;
        load_raw(&spec, ch, cfg, GenDomain::AppEvents, cfg.app_events, progress).await?;
        load_metrics(&spec, ch, cfg).await?;
        load_secs = Some(t0.elapsed().as_secs_f64());
        if cfg.optimize {
            progress("merging parts (OPTIMIZE TABLE ... FINAL)");
            let t1 = Instant::now();
            for t in ["rides", "app_events", "city_metrics", "city_supply"] {
                ch.client().query(&format!("OPTIMIZE TABLE {db}.{} FINAL", pulse_clickhouse::schema::ident(t))).execute().await?;
            }
            optimize_secs = Some(t1.elapsed().as_secs_f64());
        }
    }
    let rides = scalar(ch, &format!("SELECT count() FROM {db}.rides")).await?;
    let app_events = scalar(ch, &format!("SELECT count() FROM {db}.app_events")).await?;
    let metric_rows =
        scalar(ch, &format!("SELECT count() FROM {db}.city_metrics")).await? + scalar(ch, &format!("SELECT count() FROM {db}.city_supply")).await?;
    let parts = |table: &str| {
        format!("SELECT count() FROM system.parts WHERE database = {} AND table = '{table}' AND active", pulse_clickhouse::schema::string_literal(&ch.database))
    };
    let parts = (scalar(ch, &parts("rides")).await?, scalar(ch, &parts("app_events")).await?);

    // Inputs for the requests: a sample of event ids, ride ids and app event ids.
    progress("sampling ids");
    let ids: Vec<(String, String)> =
        ch.client().query(&format!("SELECT event_id, ride_id FROM {db}.rides WHERE cityHash64(event_id) % 5000 = 17 LIMIT 2000")).fetch_all().await?;
    let app_ids: Vec<String> =
        ch.client().query(&format!("SELECT event_id FROM {db}.app_events WHERE cityHash64(event_id) % 500 = 17 LIMIT 2000")).fetch_all().await?;
    if ids.is_empty() || app_ids.is_empty() {
        return Err(BenchError::Other("no rows to sample: the load failed".into()));
    }

    // The API, in-process on a real socket.
    let registry = Registry::new();
    let shutdown = Shutdown::new();
    let ctx = ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone()).with_registry(registry.clone());
    let api = Api::new(Arc::clone(&spec), &ClickHouseConfig { timeout: Duration::from_secs(30), ..ch.clone() }, ApiConfig::default(), ctx)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(pulse_api::serve(api, listener));

    let hour_ago = pulse_api::params::rfc3339(now_ms() - 3_600_000).unwrap_or_default();
    let mut rng = SmallRng::seed_from_u64(7);
    type Gen = Box<dyn FnMut(&mut SmallRng) -> String + Send>;
    let ids = Arc::new(ids);
    let app_ids = Arc::new(app_ids);
    let plan: Vec<(&'static str, &'static str, usize, Gen)> = vec![
        ("GET /v1/events/rides/{id}", "event_by_id", cfg.requests, {
            let ids = Arc::clone(&ids);
            Box::new(move |r| format!("/v1/events/rides/{}", encode_segment(&ids[r.random_range(0..ids.len())].0)))
        }),
        ("GET /v1/events/app_events/{id}", "event_by_id", cfg.requests, {
            let ids = Arc::clone(&app_ids);
            Box::new(move |r| format!("/v1/events/app_events/{}", encode_segment(&ids[r.random_range(0..ids.len())])))
        }),
        ("GET /v1/events/rides?key=", "timeline", cfg.requests, {
            let ids = Arc::clone(&ids);
            Box::new(move |r| format!("/v1/events/rides?key={}", encode_segment(&ids[r.random_range(0..ids.len())].1)))
        }),
        ("GET /v1/metrics/city_metrics/latest", "metric_latest", cfg.requests, Box::new(|_| "/v1/metrics/city_metrics/latest".to_string())),
        ("GET /v1/metrics/city_metrics?city=&from=", "metric_rows", cfg.requests, {
            let from = encode_segment(&hour_ago);
            Box::new(move |r| format!("/v1/metrics/city_metrics?city={}&from={from}", CITIES[r.random_range(0..CITIES.len())]))
        }),
        ("GET /v1/analytics/cities?since=1h", "analytics_cities", cfg.requests.div_ceil(5), Box::new(|_| "/v1/analytics/cities?since=1h".to_string())),
        ("GET /v1/analytics/errors?days=7", "analytics_errors", cfg.requests.div_ceil(5), Box::new(|_| "/v1/analytics/errors?days=7".to_string())),
        ("GET /v1/analytics/latency?limit=10", "analytics_latency", cfg.requests.div_ceil(5), Box::new(|_| "/v1/analytics/latency?limit=10".to_string())),
        (
            "GET /v1/analytics/sessions/top-errors",
            "analytics_top_errors",
            cfg.requests.div_ceil(5),
            Box::new(|_| "/v1/analytics/sessions/top-errors?limit=10".to_string()),
        ),
    ];
    let client: HyperClient<HttpConnector, Empty<Bytes>> = HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut endpoints = Vec::new();
    for (name, label, n, mut gen_path) in plan {
        for &concurrency in &cfg.concurrency {
            progress(&format!("measuring {name} at concurrency {concurrency}"));
            // Warm up (connections, caches), then measure.
            for _ in 0..3 {
                let _ = request(&client, &format!("{base}{}", gen_path(&mut rng))).await;
            }
            let before = query_stats(&registry, label);
            let paths: Vec<String> = (0..n).map(|_| gen_path(&mut rng)).collect();
            let queue = Arc::new(std::sync::Mutex::new(paths));
            let t0 = Instant::now();
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (queue, client, base) = (Arc::clone(&queue), client.clone(), base.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut errors = 0;
                        loop {
                            let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                            let Some(path) = next else { break };
                            let started = Instant::now();
                            match request(&client, &format!("{base}{path}")).await {
                                Ok(200) => lat.push(started.elapsed().as_secs_f64() * 1000.0),
                                _ => errors += 1,
                            }
                        }
                        (lat, errors)
                    })
                })
                .collect();
            let mut lat = Vec::new();
            let mut errors = 0;
            for w in workers {
                let (l, e) = w.await.map_err(|e| BenchError::Other(e.to_string()))?;
                lat.extend(l);
                errors += e;
            }
            let wall = t0.elapsed().as_secs_f64();
            let after = query_stats(&registry, label);
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1] }
            };
            let delta = |i: usize| {
                let count = after[i].1 - before[i].1;
                (count > 0).then(|| (after[i].0 - before[i].0) / count as f64 * 1000.0)
            };
            endpoints.push(EndpointFigures {
                name,
                concurrency,
                requests: lat.len() + errors,
                errors,
                p50_ms: pct(0.50),
                p99_ms: pct(0.99),
                max_ms: lat.last().copied().unwrap_or(f64::NAN),
                requests_per_sec: (lat.len() + errors) as f64 / wall.max(0.001),
                ch_round_trip_ms: delta(0),
                ch_elapsed_ms: delta(1),
            });
        }
    }
    shutdown.trigger();
    let _ = server.await;
    Ok(BenchReport { database: ch.database.clone(), rides, app_events, metric_rows, parts, load_secs, optimize_secs, endpoints })
}

/// (sum seconds, count) of the API's ClickHouse round-trip and ClickHouse-elapsed histograms for `label`.
fn query_stats(registry: &Registry, label: &str) -> [(f64, u64); 2] {
    let families: Vec<MetricFamily> = registry.gather();
    let get = |name: &str| {
        families
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "query" && l.value() == label))
            .map(|m| (m.get_histogram().get_sample_sum(), m.get_histogram().get_sample_count()))
            .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    [get("pulse_api_clickhouse_query_seconds"), get("pulse_api_clickhouse_elapsed_seconds")]
}

async fn request(client: &HyperClient<HttpConnector, Empty<Bytes>>, url: &str) -> Result<u16, String> {
    let req = hyper::Request::get(url).body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

/// Generates `n` events of one domain over the period and inserts them in batches;
/// generation runs on a blocking thread while the previous batch is inserted.
async fn load_raw(spec: &Spec, ch: &ClickHouseConfig, cfg: &BenchConfig, gd: GenDomain, n: usize, progress: &(dyn Fn(&str) + Sync)) -> Result<(), BenchError> {
    if n == 0 {
        return Ok(());
    }
    let domain = spec.domain(gd.name()).ok_or_else(|| BenchError::Other(format!("the spec has no domain {}", gd.name())))?.clone();
    let span_ms = cfg.span.as_millis().max(1) as i64;
    let gen_cfg = GenConfig {
        seed: 42 + gd as u64,
        start_ms: now_ms() - span_ms,
        rate: n as f64 / (span_ms as f64 / 1000.0),
        disorder_ms: 5_000,
        sessions: cfg.sessions.max(1),
        ..GenConfig::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Bytes, usize)>(2);
    let batch_rows = cfg.batch_rows.max(1000);
    let producer = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let table = raw_table(&domain);
        let decoder = Decoder::new(&domain);
        let partitions = domain.partitions.max(1) as u64;
        let mut offsets = vec![0i64; partitions as usize];
        let mut buf = BytesMut::with_capacity(batch_rows * 160);
        let mut rows = 0;
        let mut version = 0u64;
        for op in Generator::new(gen_cfg).only(gd).take(n) {
            version += 1;
            let (key, json) = match op {
                GenOp::Insert { json, .. } | GenOp::Update { json, .. } => {
                    let key = key_of(&json, gd);
                    let json = if gd == GenDomain::AppEvents { format!("{},\"_version\":{version}}}", &json[..json.len() - 1]) } else { json };
                    (key, json)
                }
                GenOp::Delete { id, .. } => (id.clone(), format!("{{\"event_id\":\"{id}\",\"_deleted\":true,\"_version\":{version}}}")),
            };
            let ev = decoder.decode(json.as_bytes()).map_err(|e| format!("generated event rejected: {e}"))?;
            let partition = xxhash(&key) % partitions;
            let offset = &mut offsets[partition as usize];
            let at = Provenance { topic: &domain.topic, partition: partition as i32, offset: *offset, timestamp_ms: ev.time + 40 };
            *offset += 1;
            table.encode(&ev, &at, &mut buf);
            rows += 1;
            if rows == batch_rows {
                if tx.blocking_send((buf.split().freeze(), rows)).is_err() {
                    return Ok(());
                }
                rows = 0;
            }
        }
        if rows > 0 {
            let _ = tx.blocking_send((buf.split().freeze(), rows));
        }
        Ok(())
    });
    let table = raw_table(spec.domain(gd.name()).ok_or_else(|| BenchError::Other("domain".into()))?);
    let sql = table.table.insert_sql(&ch.database);
    let writer = Writer::new(&ClickHouseConfig { timeout: Duration::from_secs(600), ..ch.clone() }, WriterMetrics::new(&Registry::new())?);
    let mut done = 0;
    let t0 = Instant::now();
    while let Some((body, rows)) = rx.recv().await {
        writer.insert(&table.table.name, &sql, body, rows, &Shutdown::new()).await?;
        done += rows;
        progress(&format!("{}: {done} of {n} rows ({:.0} rows/s)", gd.name(), done as f64 / t0.elapsed().as_secs_f64().max(0.001)));
    }
    producer.await.map_err(|e| BenchError::Other(e.to_string()))?.map_err(BenchError::Other)
}

fn key_of(json: &str, gd: GenDomain) -> String {
    let field = match gd {
        GenDomain::Rides => "\"ride_id\":\"",
        GenDomain::DriverLocations => "\"driver_id\":\"",
        GenDomain::AppEvents => "\"event_id\":\"",
    };
    json.split_once(field).and_then(|(_, rest)| rest.split_once('"')).map(|(k, _)| k.to_string()).unwrap_or_default()
}

fn xxhash(s: &str) -> u64 {
    // FNV-1a: a stable spread over partitions is all that is needed here.
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Metric rows for every 1-minute window start of the period and every city:
/// a live revision and (for windows that closed) the final one.
async fn load_metrics(spec: &Spec, ch: &ClickHouseConfig, cfg: &BenchConfig) -> Result<(), BenchError> {
    let writer = Writer::new(&ClickHouseConfig { timeout: Duration::from_secs(600), ..ch.clone() }, WriterMetrics::new(&Registry::new())?);
    let now = now_ms();
    let span_ms = cfg.span.as_millis() as i64;
    let mut rng = SmallRng::seed_from_u64(3);
    for name in ["city_metrics", "city_supply"] {
        let Some(metric) = spec.metric(name) else {
            continue;
        };
        let index = spec.metrics.iter().position(|m| m.name == name).unwrap_or(0);
        let table = metric_table(spec, metric);
        let slide = metric.slide.ms().max(1);
        let window = metric.window.ms();
        let mut buf = BytesMut::new();
        let mut per_city: HashMap<&str, u64> = HashMap::new();
        let first = (now - span_ms) / slide * slide;
        let mut ws = first;
        while ws <= now {
            for city in CITIES {
                let requests: u64 = rng.random_range(50..400);
                let cancellations = (requests as f64 * rng.random_range(0.05..0.4)) as u64;
                let values: Vec<AggValue> = metric
                    .aggregates
                    .iter()
                    .map(|a| match a.name.as_str() {
                        "requests" => AggValue::Count(requests),
                        "cancellations" => AggValue::Count(cancellations),
                        "completions" => AggValue::Count(requests - cancellations - requests / 10),
                        "cancellation_rate" => AggValue::Float(Some(cancellations as f64 / requests as f64)),
                        "avg_fare" => AggValue::Float(Some(rng.random_range(12.0..40.0))),
                        _ if pulse_clickhouse::schema::is_count(&a.kind) => AggValue::Count(rng.random_range(10..2000)),
                        _ => AggValue::Float(Some(rng.random_range(0.0..1.0))),
                    })
                    .collect();
                let closed = ws + window + metric.lateness.ms() < now;
                let revisions: &[bool] = if closed { &[false, true] } else { &[false] };
                for &is_final in revisions {
                    let rev = per_city.entry(city).or_default();
                    *rev += 1;
                    let row = MetricRow {
                        metric: index,
                        group: vec![GroupValue::Str(city.into())],
                        window_start: ws,
                        window_end: ws + window,
                        values: values.clone(),
                        is_final,
                        revision: *rev,
                        emitted_at: ws + window,
                        deleted: false,
                    };
                    table.encode(&row, &mut buf);
                }
            }
            ws += slide;
        }
        writer.insert_once(&table.table.insert_sql(&ch.database), buf.freeze()).await?;
    }
    Ok(())
}
