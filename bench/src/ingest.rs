//! `pulse bench ingest`: the reference scenario of the Go event API Pulse
//! replaces (500,000 inserts, 200,000 updates, 200,000 deletes of app events,
//! one event per request, 100 concurrent clients), then batched NDJSON
//! throughput. Requests go over real HTTP sockets through pulse-client to an
//! ingest server (in-process by default, on fresh topics; or `--url`), which
//! produces to the configured Kafka with acks=all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_client::{Client, ClientConfig};
use pulse_gen::{CITIES, GenConfig, GenDomain, GenOp, Generator};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_model::process;
use pulse_ops::{ServiceContext, Shutdown};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::stats::{Histogram, fmt_duration, thousands};
use pulse_ingest::config::IngestConfig;
use pulse_ingest::service::Ingest;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub inserts: usize,
    pub updates: usize,
    pub deletes: usize,
    /// Concurrent single-event requests.
    pub concurrency: usize,
    /// Events of the batched phase (0 = skip).
    pub batch_events: usize,
    /// Events (rides) per NDJSON request in the batched phase.
    pub batch_size: usize,
    pub batch_concurrency: usize,
    /// Bench a running ingest server instead of an in-process one.
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// Keep the bench topics (in-process mode) instead of deleting them.
    pub keep_topics: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            inserts: 500_000,
            updates: 200_000,
            deletes: 200_000,
            concurrency: 100,
            batch_events: 1_000_000,
            batch_size: 1000,
            batch_concurrency: 8,
            url: None,
            api_key: None,
            keep_topics: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Ingest(#[from] pulse_ingest::service::IngestError),
    #[error(transparent)]
    Client(#[from] pulse_client::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Figures of one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub requests: u64,
    pub events: u64,
    pub errors: u64,
    pub wall: Duration,
    pub cpu: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub first_error: Option<String>,
}

impl Phase {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub target: String,
    pub phases: Vec<Phase>,
    /// Records on the bench topics afterwards vs. events accepted (in-process mode).
    pub on_kafka: Option<(i64, u64)>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "bench ingest: {}", self.target)?;
        writeln!(
            f,
            "  {:<9} {:>9} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>7} {:>6}",
            "phase", "requests", "events", "events/s", "p50", "p99", "max", "wall", "cpu", "errors"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  {:<9} {:>9} {:>10} {:>12} {:>10} {:>10} {:>10} {:>8.2}s {:>6.1}s {:>6}",
                p.name,
                thousands(p.requests),
                thousands(p.events),
                thousands(p.events_per_sec() as u64),
                fmt_duration(p.p50),
                fmt_duration(p.p99),
                fmt_duration(p.max),
                p.wall.as_secs_f64(),
                p.cpu,
                p.errors
            )?;
            if let Some(e) = &p.first_error {
                writeln!(f, "    first error: {e}")?;
            }
        }
        writeln!(f, "  (cpu = CPU-seconds of this whole process: client, server and Kafka producer together)")?;
        if let Some((on, want)) = self.on_kafka {
            writeln!(
                f,
                "  records read back from Kafka: {} (acknowledged: {}){}",
                thousands(on as u64),
                thousands(want),
                if on as u64 == want { "" } else { "  MISMATCH" }
            )?;
        }
        Ok(())
    }
}

/// Runs the benchmark. In-process mode creates fresh topics (named after the
/// spec's with a unique prefix) on `kafka`, serves ingest on 127.0.0.1, and
/// deletes the topics afterwards unless `keep_topics`.
pub async fn run(spec: &Spec, kafka: &KafkaConfig, ingest_cfg: IngestConfig, cfg: BenchConfig) -> Result<BenchReport, BenchError> {
    let app = spec.domain(GenDomain::AppEvents.name()).ok_or_else(|| BenchError::Setup("the spec has no `app_events` domain".into()))?;
    if !app.mutable {
        return Err(BenchError::Setup("`app_events` must be mutable for the update and delete phases".into()));
    }
    let shutdown = Shutdown::new();
    let mut topics = Vec::new();
    let mut admin = None;
    let (url, target, server) = match &cfg.url {
        Some(url) => (url.clone(), format!("ingest at {url}"), None),
        None => {
            let prefix = format!("bench-{}-{}", std::process::id(), pulse_ingest::prepare::now_ms());
            let mut spec = spec.clone();
            for d in spec.domains.iter_mut() {
                d.topic = format!("{prefix}-{}", d.topic);
                topics.push(d.topic.clone());
            }
            let a: AdminClient<DefaultClientContext> = kafka.client().create()?;
            let plans: Vec<_> = pulse_kafka::plan_topics(&spec).into_iter().filter(|p| topics.contains(&p.name)).collect();
            let report = pulse_kafka::ensure_topics(&a, &plans).await.map_err(|e| BenchError::Setup(format!("creating bench topics: {e}")))?;
            tracing::info!(created = ?report.created, "bench topics");
            admin = Some(a);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| BenchError::Setup(e.to_string()))?;
            let url = format!("http://{}", listener.local_addr().map_err(|e| BenchError::Setup(e.to_string()))?);
            let ingest = Ingest::new(
                Arc::new(spec),
                kafka,
                IngestConfig { rate_limit: None, ..ingest_cfg },
                ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone()),
            )?;
            let handle = tokio::spawn(pulse_ingest::service::serve(ingest, listener));
            let target = format!("in-process ingest on {url}, Kafka {}", kafka.brokers);
            (url, target, Some(handle))
        }
    };
    let client_cfg = ClientConfig { max_retries: 0, timeout: Duration::from_secs(60), ..ClientConfig::default() };
    let client = Client::with_config(&url, None, cfg.api_key.as_deref(), client_cfg)?;
    client.wait_until_ready(Duration::from_secs(60)).await?;

    let now = pulse_ingest::prepare::now_ms();
    let app_json = |i: usize, variant: u32| -> Bytes {
        let names = ["login", "search", "view_item", "add_to_cart", "checkout", "payment", "logout", "chat"];
        let error = if i.is_multiple_of(31) { r#","error":"timeout""# } else { "" };
        Bytes::from(format!(
            r#"{{"event_id":"bench-{i}","session_id":"s-{}","event_name":"{}","input":"query {i}","output":"result {variant}","latency_ms":{}{error},"timestamp":{}}}"#,
            i % 20_000,
            names[i % names.len()],
            5 + (i * 7919 + variant as usize * 13) % 900,
            now + (i as i64 % 60_000)
        ))
    };

    let mut phases = Vec::new();
    let inserts: Arc<Vec<Bytes>> = Arc::new((0..cfg.inserts).map(|i| app_json(i, 0)).collect());
    let c = client.clone();
    phases.push(
        phase("insert", cfg.inserts, cfg.concurrency, move |i| {
            let (c, body) = (c.clone(), inserts[i].clone());
            async move { c.track_json("app_events", body).await.map(|_| 1) }
        })
        .await,
    );
    let updates: Arc<Vec<Bytes>> = Arc::new((0..cfg.updates.min(cfg.inserts)).map(|i| app_json(i, 1)).collect());
    let c = client.clone();
    phases.push(
        phase("update", updates.len(), cfg.concurrency, move |i| {
            let (c, body) = (c.clone(), updates[i].clone());
            async move { c.update_json("app_events", &format!("bench-{i}"), body).await.map(|_| 1) }
        })
        .await,
    );
    // Deletes take the last inserted events (not the updated ones).
    let deletes = cfg.deletes.min(cfg.inserts);
    let first_deleted = cfg.inserts - deletes;
    let c = client.clone();
    phases.push(
        phase("delete", deletes, cfg.concurrency, move |i| {
            let c = c.clone();
            async move { c.delete("app_events", &format!("bench-{}", first_deleted + i)).await.map(|_| 1) }
        })
        .await,
    );
    if cfg.batch_events > 0 {
        let size = cfg.batch_size.max(1);
        let mut bodies = Vec::new();
        let mut buf = Vec::new();
        let mut n = 0;
        let gen_cfg = GenConfig { start_ms: now, rate: 5_000.0, cities: CITIES.len(), ..GenConfig::default() };
        for op in Generator::new(gen_cfg).only(GenDomain::Rides).take(cfg.batch_events) {
            if let GenOp::Insert { json, .. } = op {
                buf.extend_from_slice(json.as_bytes());
                buf.push(b'\n');
                n += 1;
                if n == size {
                    bodies.push((Bytes::from(std::mem::take(&mut buf)), n as u64));
                    n = 0;
                }
            }
        }
        if n > 0 {
            bodies.push((Bytes::from(buf), n as u64));
        }
        let bodies = Arc::new(bodies);
        let c = client.clone();
        phases.push(
            phase("batched", bodies.len(), cfg.batch_concurrency, move |i| {
                let (c, (body, n)) = (c.clone(), bodies[i].clone());
                async move { c.track_ndjson("rides", body).await.map(|_| n) }
            })
            .await,
        );
    }

    let mut on_kafka = None;
    if let Some(handle) = server {
        shutdown.trigger();
        let _ = handle.await;
        let accepted: u64 = phases.iter().map(|p| p.events).sum();
        let total = tokio::task::spawn_blocking({
            let (kafka, topics) = (kafka.clone(), topics.clone());
            move || count_records(&kafka, &topics)
        })
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))??;
        on_kafka = Some((total, accepted));
        if !cfg.keep_topics
            && let Some(admin) = &admin
        {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(e) = admin.delete_topics(&names, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await {
                tracing::warn!("could not delete the bench topics: {e}");
            }
        }
    }
    Ok(BenchReport { target, phases, on_kafka })
}

/// Counts the records of `topics` by reading them (a broker's watermarks may
/// trail what it acknowledged: Tansu 0.6's do).
fn count_records(kafka: &KafkaConfig, topics: &[String]) -> Result<i64, BenchError> {
    let consumer: BaseConsumer = kafka.consumer(&format!("pulse-bench-count-{}", std::process::id())).create()?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
        let partitions = md.topics().first().map(|m| m.partitions().len()).unwrap_or(0) as i32;
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut total = 0i64;
    let mut idle = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while idle.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                total += 1;
                idle = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(total)
}

/// Runs `count` requests with `concurrency` workers; `request(i)` returns the events it carried.
async fn phase<F, Fut>(name: &'static str, count: usize, concurrency: usize, request: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, pulse_client::Error>> + Send,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let latency = Arc::new(Histogram::default());
    let events = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu0 = process::cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (request, next, latency, events, errors, first_error) =
                (request.clone(), next.clone(), latency.clone(), events.clone(), errors.clone(), first_error.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let started = Instant::now();
                    let r = request(i).await;
                    latency.record(started.elapsed());
                    match r {
                        Ok(n) => {
                            events.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            if first.is_none() {
                                *first = Some(e.to_string());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let wall = t0.elapsed();
    let cpu = process::cpu_seconds().unwrap_or(0.0) - cpu0;
    let phase = Phase {
        name,
        requests: count as u64,
        events: events.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        wall,
        cpu,
        p50: latency.quantile(0.5),
        p99: latency.quantile(0.99),
        max: latency.max(),
        first_error: first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    tracing::info!(phase = name, events = phase.events, events_per_s = phase.events_per_sec() as u64, p50 = ?phase.p50, p99 = ?phase.p99, errors = phase.errors, "bench phase done");
    phase
}
