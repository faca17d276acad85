//! `pulse loadgen`: realistic ride, driver-location and app events from the
//! deterministic generator (`pulse_gen`), sent over HTTP through
//! pulse-client (single events or NDJSON batches, with concurrency), straight to
//! Kafka (same envelope as ingest), or written to a JSON-lines file; at a
//! target rate or as fast as possible, with a live progress line.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_client::Client;
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::Registry;
use tokio::sync::{Mutex, mpsc};

use crate::stats::{Histogram, fmt_duration, thousands};
use pulse_ingest::body::{Format, split};
use pulse_ingest::prepare::{Batch, DomainWriter, Stamp, VersionClock};
use pulse_ingest::producer::{Producer, ProducerConfig};

/// Where the events go.
pub enum Target {
    /// The ingest HTTP API.
    Http(Client),
    /// Straight to the domain topics (the same records ingest would write).
    Kafka { kafka: KafkaConfig, spec: Arc<Spec> },
    /// A JSON-lines file: `{"domain":..,"op":"insert"|"update"|"delete","id":..,"event":{..}}`.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    pub generator: GenConfig,
    /// Stop after this many events (inserts, updates and deletes together).
    pub events: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Target events per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Requests in flight (HTTP) or batches in flight (Kafka).
    pub concurrency: usize,
    /// Events per request: 1 = one POST per event; more = NDJSON batches per domain.
    /// Updates and deletes are always single requests.
    pub batch: usize,
    /// Print a progress line (on a terminal: updated in place every second).
    pub progress: bool,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        LoadgenConfig { generator: GenConfig::default(), events: Some(100_000), duration: None, rate: None, concurrency: 16, batch: 1, progress: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] pulse_ops::MetricsError),
}

impl From<pulse_ingest::producer::ProducerError> for LoadgenError {
    fn from(e: pulse_ingest::producer::ProducerError) -> LoadgenError {
        match e {
            pulse_ingest::producer::ProducerError::Kafka(e) => LoadgenError::Kafka(e),
            pulse_ingest::producer::ProducerError::Metrics(e) => LoadgenError::Metrics(e),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct LoadgenReport {
    pub events: u64,
    pub accepted: u64,
    pub failed: u64,
    pub requests: u64,
    pub elapsed: Duration,
    /// The rate asked for, if any.
    pub target_rate: Option<f64>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The first few distinct errors.
    pub errors: Vec<String>,
}

impl std::fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "loadgen: {} events in {:.2} s = {} events/s; {} accepted, {} failed; {} requests ({:.0}/s)",
            thousands(self.events),
            secs,
            thousands((self.events as f64 / secs) as u64),
            thousands(self.accepted),
            thousands(self.failed),
            thousands(self.requests),
            self.requests as f64 / secs
        )?;
        if let Some(rate) = self.target_rate
            && (self.events as f64 / secs) < rate * 0.9
        {
            writeln!(f, "  below the target rate of {} events/s: the senders were busy; raise --concurrency or --batch", thousands(rate as u64))?;
        }
        if self.requests > 0 {
            writeln!(f, "  request latency p50 {}, p99 {}, max {}", fmt_duration(self.p50), fmt_duration(self.p99), fmt_duration(self.max))?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

/// One unit of work for a sender.
enum Work {
    Insert { domain: GenDomain, body: Bytes, events: usize, ndjson: bool },
    Update { domain: GenDomain, id: String, body: Bytes },
    Delete { domain: GenDomain, id: String },
}

impl Work {
    fn events(&self) -> usize {
        match self {
            Work::Insert { events, .. } => *events,
            _ => 1,
        }
    }
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    requests: AtomicU64,
    latency: Histogram,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 5 && !errors.contains(&e) {
            errors.push(e);
        }
    }
}

/// Runs the load generator until its event count or duration is reached, or `shutdown`.
pub async fn run(target: Target, cfg: LoadgenConfig, shutdown: Shutdown) -> Result<LoadgenReport, LoadgenError> {
    if cfg.events.is_none() && cfg.duration.is_none() && cfg.rate.is_none() {
        tracing::info!("loadgen: no --events, --duration or --rate: sending as fast as possible until interrupted");
    }
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let progress = cfg.progress.then(|| spawn_progress(counters.clone(), done.clone(), started));
    let result = match target {
        Target::File(path) => write_file(&path, &cfg, &counters, &shutdown).await,
        Target::Http(client) => send(Sender::Http(client), &cfg, &counters, &shutdown).await,
        Target::Kafka { kafka, spec } => {
            let producer = Producer::new(
                &kafka,
                &ProducerConfig { timeout: Duration::from_secs(30), max_in_flight: 500_000, linger: Duration::from_millis(5) },
                &Registry::new(),
            )?;
            let mut writers = Vec::new();
            for d in [GenDomain::Rides, GenDomain::DriverLocations, GenDomain::AppEvents] {
                let domain = spec.domain(d.name()).ok_or_else(|| missing_domain(d))?;
                writers.push(DomainWriter::new(domain));
            }
            let r = send(
                Sender::Kafka { producer: producer.clone(), writers: Arc::new(writers), clock: Arc::new(VersionClock::default()) },
                &cfg,
                &counters,
                &shutdown,
            )
            .await;
            let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
            r
        }
    };
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    result?;
    Ok(LoadgenReport {
        events: counters.events.load(Ordering::Relaxed),
        accepted: counters.accepted.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        requests: counters.requests.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        target_rate: cfg.rate,
        p50: counters.latency.quantile(0.5),
        p99: counters.latency.quantile(0.99),
        max: counters.latency.max(),
        errors: counters.errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

fn missing_domain(d: GenDomain) -> LoadgenError {
    LoadgenError::Config(format!("the generator writes the default spec's domains (rides, driver_locations, app_events); the spec has no `{}`", d.name()))
}

/// Paces the generator: `sent` events should not be ahead of `rate` × elapsed.
struct Pacer {
    start: Instant,
    rate: Option<f64>,
    sent: u64,
}

impl Pacer {
    async fn pace(&mut self, events: usize) {
        self.sent += events as u64;
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(self.sent as f64 / rate.max(0.001));
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }
}

/// Produces work items from the generator until a limit is reached.
async fn generate(cfg: LoadgenConfig, tx: mpsc::Sender<Work>, shutdown: Shutdown) {
    let started = Instant::now();
    let mut pacer = Pacer { start: started, rate: cfg.rate, sent: 0 };
    let mut generator = Generator::new(cfg.generator.clone());
    let batch = cfg.batch.max(1);
    let mut pending: [(Vec<u8>, usize); 3] = Default::default();
    let mut total = 0u64;
    let limit = cfg.events.unwrap_or(u64::MAX);
    let deadline = cfg.duration.map(|d| started + d);
    while total < limit && !shutdown.is_triggered() && deadline.is_none_or(|d| Instant::now() < d) {
        let Some(op) = generator.next() else { break };
        total += 1;
        let work = match op {
            GenOp::Insert { domain, json } if batch == 1 => Some(Work::Insert { domain, body: Bytes::from(json), events: 1, ndjson: false }),
            GenOp::Insert { domain, json } => {
                let (buf, n) = &mut pending[domain as usize];
                buf.extend_from_slice(json.as_bytes());
                buf.push(b'\n');
                *n += 1;
                if *n >= batch || total >= limit {
                    let events = std::mem::take(n);
                    Some(Work::Insert { domain, body: Bytes::from(std::mem::take(buf)), events, ndjson: true })
                } else {
                    None
                }
            }
            GenOp::Update { domain, id, json } => Some(Work::Update { domain, id, body: Bytes::from(json) }),
            GenOp::Delete { domain, id } => Some(Work::Delete { domain, id }),
        };
        if let Some(w) = work {
            let n = w.events();
            if tx.send(w).await.is_err() {
                return;
            }
            pacer.pace(n).await;
        }
    }
    // Send what is left in partial batches.
    for (i, (buf, n)) in pending.iter_mut().enumerate() {
        if *n > 0 {
            let domain = [GenDomain::Rides, GenDomain::DriverLocations, GenDomain::AppEvents][i];
            let _ = tx.send(Work::Insert { domain, body: Bytes::from(std::mem::take(buf)), events: std::mem::take(n), ndjson: true }).await;
        }
    }
}

#[derive(Clone)]
enum Sender {
    Http(Client),
    Kafka { producer: Producer, writers: Arc<Vec<DomainWriter>>, clock: Arc<VersionClock> },
}

impl Sender {
    async fn send(&self, work: Work) -> Result<(), String> {
        match self {
            Sender::Http(client) => {
                let r = match work {
                    Work::Insert { domain, body, ndjson: false, .. } => client.track_json(domain.name(), body).await,
                    Work::Insert { domain, body, ndjson: true, .. } => client.track_ndjson(domain.name(), body).await,
                    Work::Update { domain, id, body } => client.update_json(domain.name(), &id, body).await,
                    Work::Delete { domain, id } => client.delete(domain.name(), &id).await,
                };
                r.map(|_| ()).map_err(|e| e.to_string())
            }
            Sender::Kafka { producer, writers, clock } => {
                let mut batch = Batch::default();
                let (writer, prepared) = match work {
                    Work::Insert { domain, body, ndjson, events } => {
                        let w = &writers[domain as usize];
                        let mut items = Vec::new();
                        let format = if ndjson { Format::Ndjson } else { Format::Json };
                        split(format, &body, usize::MAX, &mut items).map_err(|e| format!("{e:?}"))?;
                        let stamp = Stamp::new(clock, events);
                        (w, w.prepare_inserts(&body, &items, stamp, usize::MAX, &mut batch))
                    }
                    Work::Update { domain, id, body } => {
                        let w = &writers[domain as usize];
                        (w, w.prepare_replace(&body, &id, Stamp::new(clock, 1), usize::MAX, &mut batch))
                    }
                    Work::Delete { domain, id } => {
                        let w = &writers[domain as usize];
                        (w, w.prepare_delete(&id, Stamp::new(clock, 1), &mut batch))
                    }
                };
                prepared.map_err(|d| format!("generated event rejected: {d:?}"))?;
                producer.send(writer.topic(), &batch).await.map_err(|e| e.to_string())
            }
        }
    }
}

async fn send(sender: Sender, cfg: &LoadgenConfig, counters: &Arc<Counters>, shutdown: &Shutdown) -> Result<(), LoadgenError> {
    let concurrency = cfg.concurrency.max(1);
    let (tx, rx) = mpsc::channel::<Work>(concurrency * 4);
    let rx = Arc::new(Mutex::new(rx));
    let generator = tokio::spawn(generate(cfg.clone(), tx, shutdown.clone()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (rx, sender, counters) = (rx.clone(), sender.clone(), counters.clone());
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(work) = next else { break };
                    let n = work.events() as u64;
                    let t0 = Instant::now();
                    let r = sender.send(work).await;
                    counters.latency.record(t0.elapsed());
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    counters.events.fetch_add(n, Ordering::Relaxed);
                    match r {
                        Ok(()) => counters.accepted.fetch_add(n, Ordering::Relaxed),
                        Err(e) => {
                            counters.error(e);
                            counters.failed.fetch_add(n, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let _ = generator.await;
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

async fn write_file(path: &PathBuf, cfg: &LoadgenConfig, counters: &Counters, shutdown: &Shutdown) -> Result<(), LoadgenError> {
    let io = |source| LoadgenError::File { path: path.clone(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let started = Instant::now();
    let mut pacer = Pacer { start: started, rate: cfg.rate, sent: 0 };
    let limit = cfg.events.unwrap_or(u64::MAX);
    let deadline = cfg.duration.map(|d| started + d);
    let mut n = 0u64;
    for op in Generator::new(cfg.generator.clone()) {
        if n >= limit || shutdown.is_triggered() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        n += 1;
        let line = match &op {
            GenOp::Insert { domain, json } => format!("{{\"domain\":\"{}\",\"op\":\"insert\",\"event\":{json}}}\n", domain.name()),
            GenOp::Update { domain, id, json } => {
                format!("{{\"domain\":\"{}\",\"op\":\"update\",\"id\":{},\"event\":{json}}}\n", domain.name(), serde_json::Value::from(id.as_str()))
            }
            GenOp::Delete { domain, id } => format!("{{\"domain\":\"{}\",\"op\":\"delete\",\"id\":{}}}\n", domain.name(), serde_json::Value::from(id.as_str())),
        };
        out.write_all(line.as_bytes()).map_err(io)?;
        counters.events.fetch_add(1, Ordering::Relaxed);
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if cfg.rate.is_some() {
            pacer.pace(1).await;
        } else if n.is_multiple_of(4096) {
            tokio::task::yield_now().await;
        }
    }
    out.flush().map_err(io)?;
    Ok(())
}

/// Prints the rate while the run goes on: in place on a terminal, a line every 5 s otherwise.
fn spawn_progress(counters: Arc<Counters>, done: Arc<AtomicBool>, started: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let every = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
        let mut last = (Instant::now(), 0u64);
        loop {
            let finished = done.load(Ordering::Relaxed);
            if !finished {
                tokio::time::sleep(every).await;
            }
            let now = Instant::now();
            let events = counters.events.load(Ordering::Relaxed);
            let rate = (events - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-6);
            last = (now, events);
            let line = format!(
                "[{:>6.1} s] {} events, {} events/s now, {} failed, p99 {}",
                started.elapsed().as_secs_f64(),
                thousands(events),
                thousands(rate as u64),
                thousands(counters.failed.load(Ordering::Relaxed)),
                fmt_duration(counters.latency.quantile(0.99))
            );
            if tty {
                let bar = progress_bar(rate, 24);
                eprint!("\r\x1b[2K{bar} {line}");
                if finished {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
            if finished || done.load(Ordering::Relaxed) && !tty {
                break;
            }
        }
    })
}

/// A bar whose length follows the rate on a log scale (10 → 1 M events/s).
fn progress_bar(rate: f64, width: usize) -> String {
    let fill = ((rate.max(1.0).log10() - 1.0) / 5.0).clamp(0.0, 1.0);
    let n = (fill * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(n), "-".repeat(width - n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_a_jsonl_file() {
        let path = std::env::temp_dir().join(format!("pulse-loadgen-{}.jsonl", std::process::id()));
        let cfg = LoadgenConfig { events: Some(2_000), progress: false, ..LoadgenConfig::default() };
        let report = run(Target::File(path.clone()), cfg, Shutdown::new()).await.expect("run");
        assert_eq!(report.events, 2_000);
        let text = std::fs::read_to_string(&path).expect("file");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
        assert_eq!(lines.len(), 2_000);
        let ops: std::collections::HashSet<&str> = lines.iter().filter_map(|l| l["op"].as_str()).collect();
        assert!(ops.contains("insert") && ops.contains("update") && ops.contains("delete"), "{ops:?}");
        assert!(lines.iter().any(|l| l["domain"] == "driver_locations"));
    }

    #[tokio::test]
    async fn paces_to_the_target_rate() {
        let path = std::env::temp_dir().join(format!("pulse-loadgen-rate-{}.jsonl", std::process::id()));
        let cfg = LoadgenConfig { events: Some(300), rate: Some(1000.0), progress: false, ..LoadgenConfig::default() };
        let report = run(Target::File(path.clone()), cfg, Shutdown::new()).await.expect("run");
        let _ = std::fs::remove_file(&path);
        assert!(report.elapsed >= Duration::from_millis(280), "{:?}", report.elapsed);
    }

    #[test]
    fn bar_grows_with_the_rate() {
        assert_eq!(progress_bar(1.0, 10), "[----------]");
        assert_eq!(progress_bar(1e6, 10), "[##########]");
    }
}
