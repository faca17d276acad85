//! `pulse ingest`, `pulse loadgen` and `pulse bench ingest`: flags (each with
//! its PULSE_* variable) and their wiring to pulse-ingest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use pulse_bench::loadgen::{LoadgenConfig, Target};
use pulse_gen::{CITIES, GenConfig};
use pulse_ingest::{ApiKeys, IngestConfig};
use pulse_ops::{ServiceContext, Shutdown};

use crate::cli::{Global, KafkaArgs};
use crate::services::runtime;

/// `pulse ingest`: the HTTP write API.
#[derive(Args, Clone)]
pub struct IngestArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub http: crate::cli::HttpArgs,
    /// Address of the write API (also serves /health, /ready, /metrics).
    #[arg(long, env = "PULSE_INGEST_ADDR", default_value = pulse_ingest::config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Write API keys, comma-separated: `KEY` (every domain) or `KEY:domain|domain`; required unless --insecure.
    #[arg(long = "api-keys", env = "PULSE_INGEST_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Serve without API keys (anyone may write; a warning is logged). Never in production.
    #[arg(long, env = "PULSE_INSECURE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// Events per second per API key (token bucket; 429 beyond); 0 = unlimited.
    #[arg(long, env = "PULSE_INGEST_RATE_LIMIT", default_value_t = pulse_ingest::config::DEFAULT_RATE_LIMIT)]
    pub rate_limit: f64,
    /// Token bucket size in events (default: one second's worth).
    #[arg(long, env = "PULSE_INGEST_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "PULSE_INGEST_MAX_BODY", default_value_t = pulse_ingest::config::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Most events in one request (413 beyond).
    #[arg(long, env = "PULSE_INGEST_MAX_BATCH", default_value_t = pulse_ingest::config::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Largest encoded event in bytes (must fit the broker's message.max.bytes).
    #[arg(long, env = "PULSE_INGEST_MAX_EVENT_BYTES", default_value_t = 1_000_000)]
    pub max_event_bytes: usize,
    /// How long a request waits for room in the producer and Kafka's acknowledgements before 503.
    #[arg(long, env = "PULSE_INGEST_PRODUCE_TIMEOUT_MS", default_value_t = 5_000)]
    pub produce_timeout_ms: u64,
    /// Events awaiting Kafka's acknowledgement, over all requests.
    #[arg(long, env = "PULSE_INGEST_MAX_IN_FLIGHT", default_value_t = 200_000)]
    pub max_in_flight: usize,
    /// Producer linger (librdkafka linger.ms), fractions allowed.
    #[arg(long, env = "PULSE_INGEST_LINGER_MS", default_value_t = 1.0)]
    pub linger_ms: f64,
    /// Retry-After seconds of 503 answers.
    #[arg(long, env = "PULSE_INGEST_RETRY_AFTER", default_value_t = 1)]
    pub retry_after: u64,
    /// Create missing topics (like `pulse topics`) before serving.
    #[arg(long, env = "PULSE_INGEST_CREATE_TOPICS", default_value_t = false, action = clap::ArgAction::Set)]
    pub create_topics: bool,
}

impl IngestArgs {
    /// The settings; an error when keys are missing (without --insecure) or malformed.
    pub fn config(&self, spec: &pulse_model::Spec) -> anyhow::Result<IngestConfig> {
        let keys = ApiKeys::parse(self.api_keys.as_deref().unwrap_or_default()).context("PULSE_INGEST_API_KEYS")?;
        let domains: Vec<&str> = spec.domains.iter().map(|d| d.name.as_str()).collect();
        keys.check_scopes(&domains).context("PULSE_INGEST_API_KEYS")?;
        crate::services::require_keys("ingest", keys.len(), self.insecure, pulse_ingest::config::INGEST_KEYS_ENV)?;
        Ok(IngestConfig {
            addr: self.addr,
            max_body: self.max_body.max(1),
            max_batch: self.max_batch.max(1),
            max_event_bytes: self.max_event_bytes.max(1),
            keys,
            rate_limit: (self.rate_limit > 0.0).then_some(self.rate_limit),
            rate_burst: self.rate_burst,
            produce_timeout: Duration::from_millis(self.produce_timeout_ms.max(100)),
            max_in_flight: self.max_in_flight.max(1),
            linger: Duration::from_secs_f64(self.linger_ms.max(0.0) / 1000.0),
            retry_after_secs: self.retry_after.max(1),
            http: self.http.limits(),
            ..IngestConfig::default()
        })
    }
}

pub fn ingest(global: &Global, args: &IngestArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let kafka = args.kafka.config();
    let cfg = args.config(&spec)?;
    runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        if args.create_topics {
            let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = kafka.client().create().context("kafka admin client")?;
            let report = pulse_kafka::ensure_topics(&admin, &pulse_kafka::plan_topics(&spec)).await.context("creating topics")?;
            for d in &report.drift {
                tracing::warn!("topic drift: {d}");
            }
        }
        pulse_ingest::run(spec, &kafka, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown)).await?;
        tracing::info!("ingest stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadgenMode {
    /// Through the ingest HTTP API (pulse-client).
    Http,
    /// Straight to the Kafka topics.
    Kafka,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadgenDomain {
    All,
    Rides,
    DriverLocations,
    AppEvents,
}

/// `pulse loadgen`: realistic events over HTTP, to Kafka, or into a file.
#[derive(Args, Clone)]
pub struct LoadgenArgs {
    /// Where to send: the ingest API or straight to Kafka.
    #[arg(long, value_enum, env = "PULSE_LOADGEN_MODE", default_value = "http")]
    pub mode: LoadgenMode,
    /// Ingest base URL (http mode).
    #[arg(long, env = "PULSE_INGEST_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
    /// API key sent as a bearer token (http mode).
    #[arg(long = "api-key", env = "PULSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Write the events as JSON lines to this file instead of sending them.
    #[arg(long, env = "PULSE_LOADGEN_FILE")]
    pub file: Option<PathBuf>,
    /// Events to send (inserts, updates, deletes); 0 = no limit.
    #[arg(long, env = "PULSE_LOADGEN_EVENTS", default_value_t = 100_000)]
    pub events: u64,
    /// Stop after this long (e.g. 90s, 10m).
    #[arg(long, env = "PULSE_LOADGEN_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Target events per second; 0 = as fast as possible.
    #[arg(long, env = "PULSE_LOADGEN_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Requests in flight.
    /// Events per second of event time (how fast the events' timestamps advance);
    /// defaults to --rate, or 5,000 when sending as fast as possible.
    #[arg(long, env = "PULSE_LOADGEN_EVENT_RATE")]
    pub event_rate: Option<f64>,
    /// Start the events' timestamps this long before now (e.g. 10m).
    #[arg(long, env = "PULSE_LOADGEN_START_AGO", value_parser = parse_duration)]
    pub start_ago: Option<Duration>,
    #[arg(long, env = "PULSE_LOADGEN_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Events per request: 1 = one POST per event, more = NDJSON batches.
    #[arg(long, env = "PULSE_LOADGEN_BATCH", default_value_t = 1)]
    pub batch: usize,
    /// Only this domain.
    #[arg(long, value_enum, env = "PULSE_LOADGEN_DOMAIN", default_value = "all")]
    pub domain: LoadgenDomain,
    /// Shares of rides, driver locations and app events, e.g. 0.6,0.25,0.15.
    #[arg(long, env = "PULSE_LOADGEN_MIX", value_parser = parse_mix)]
    pub mix: Option<[f64; 3]>,
    /// Generator seed (the same seed gives the same events).
    #[arg(long, env = "PULSE_LOADGEN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Number of cities (at most 20).
    #[arg(long, env = "PULSE_LOADGEN_CITIES", default_value_t = 20)]
    pub cities: usize,
    #[arg(long, env = "PULSE_LOADGEN_USERS", default_value_t = 100_000)]
    pub users: u64,
    #[arg(long, env = "PULSE_LOADGEN_DRIVERS", default_value_t = 5_000)]
    pub drivers: u64,
    /// Out-of-order spread of event times.
    #[arg(long, env = "PULSE_LOADGEN_DISORDER", value_parser = parse_duration, default_value = "2s")]
    pub disorder: Duration,
    /// Share of events sent late (behind every window's lateness).
    #[arg(long, env = "PULSE_LOADGEN_LATE_FRACTION", default_value_t = 0.001)]
    pub late_fraction: f64,
    #[arg(long, env = "PULSE_LOADGEN_LATE_BY", value_parser = parse_duration, default_value = "10m")]
    pub late_by: Duration,
    /// Normal share of requested rides that get cancelled.
    #[arg(long, env = "PULSE_LOADGEN_CANCEL_RATE", default_value_t = 0.12)]
    pub cancel_rate: f64,
    /// City whose cancellations surge (one of the generator's cities, e.g. Paris).
    #[arg(long, env = "PULSE_LOADGEN_SURGE_CITY")]
    pub surge_city: Option<String>,
    /// When the surge starts, after the run's start.
    #[arg(long, env = "PULSE_LOADGEN_SURGE_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub surge_after: Duration,
    /// Cancellation rate in the surging city.
    #[arg(long, env = "PULSE_LOADGEN_SURGE_CANCEL_RATE", default_value_t = 0.45)]
    pub surge_cancel_rate: f64,
    /// Retries of overload answers (429/503) per request.
    #[arg(long, env = "PULSE_LOADGEN_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// No progress line.
    #[arg(long, env = "PULSE_LOADGEN_QUIET", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub quiet: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    pulse_model::parse_duration(s).map(|m| m.as_std())
}

fn parse_mix(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<f64> = s.split(',').map(|p| p.trim().parse::<f64>().map_err(|e| format!("`{p}`: {e}"))).collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [a, b, c] if *a >= 0.0 && *b >= 0.0 && *c >= 0.0 && a + b + c > 0.0 => Ok([*a, *b, *c]),
        _ => Err("expected three non-negative shares: rides,driver_locations,app_events".into()),
    }
}

impl LoadgenArgs {
    pub fn config(&self) -> anyhow::Result<LoadgenConfig> {
        let surge_city = match &self.surge_city {
            None => None,
            Some(name) => Some(
                CITIES
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(name))
                    .with_context(|| format!("unknown surge city `{name}`; one of: {}", CITIES.join(", ")))?,
            ),
        };
        let mix = match self.domain {
            LoadgenDomain::All => self.mix.unwrap_or(GenConfig::default().mix),
            LoadgenDomain::Rides => [1.0, 0.0, 0.0],
            LoadgenDomain::DriverLocations => [0.0, 1.0, 0.0],
            LoadgenDomain::AppEvents => [0.0, 0.0, 1.0],
        };
        let rate = (self.rate > 0.0).then_some(self.rate);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let generator = GenConfig {
            seed: self.seed,
            start_ms: now - self.start_ago.map_or(0, |d| d.as_millis() as i64),
            // Event time advances with the target rate (or a realistic 5,000/s when unlimited).
            rate: self.event_rate.filter(|r| *r > 0.0).or(rate).unwrap_or(5_000.0),
            mix,
            cities: self.cities.clamp(1, CITIES.len()),
            users: self.users.max(1),
            drivers: self.drivers.max(1),
            disorder_ms: self.disorder.as_millis() as i64,
            late_fraction: self.late_fraction.clamp(0.0, 1.0),
            late_by_ms: self.late_by.as_millis() as i64,
            surge_after_ms: surge_city.map(|_| self.surge_after.as_millis() as i64),
            surge_city: surge_city.unwrap_or(0),
            surge_cancel_rate: self.surge_cancel_rate.clamp(0.0, 1.0),
            cancel_rate: self.cancel_rate.clamp(0.0, 1.0),
            ..GenConfig::default()
        };
        Ok(LoadgenConfig {
            generator,
            events: (self.events > 0).then_some(self.events),
            duration: self.duration,
            rate,
            concurrency: self.concurrency.max(1),
            batch: self.batch.max(1),
            progress: !self.quiet,
        })
    }
}

pub fn loadgen(global: &Global, args: &LoadgenArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let target = match (&args.file, args.mode) {
        (Some(path), _) => Target::File(path.clone()),
        (None, LoadgenMode::Http) => {
            let client_cfg = pulse_client::ClientConfig { max_retries: args.max_retries, ..pulse_client::ClientConfig::default() };
            Target::Http(pulse_client::Client::with_config(&args.url, None, args.api_key.as_deref(), client_cfg)?)
        }
        (None, LoadgenMode::Kafka) => Target::Kafka { kafka: args.kafka.config(), spec: Arc::new(global.load_spec()?) },
    };
    runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        if let Target::Http(client) = &target {
            client.wait_until_ready(Duration::from_secs(30)).await.with_context(|| format!("ingest at {} is not ready", args.url))?;
        }
        let report = pulse_bench::loadgen::run(target, cfg, shutdown).await?;
        print!("{report}");
        Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// `pulse bench ingest`: the Go reference scenario plus batched throughput.
#[derive(Args, Clone)]
pub struct BenchIngestArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Single-event inserts (app events).
    #[arg(long, env = "PULSE_BENCH_INSERTS", default_value_t = 500_000)]
    pub inserts: usize,
    /// Single-event updates (PUT) of inserted events.
    #[arg(long, env = "PULSE_BENCH_UPDATES", default_value_t = 200_000)]
    pub updates: usize,
    /// Single-event deletes of inserted events.
    #[arg(long, env = "PULSE_BENCH_DELETES", default_value_t = 200_000)]
    pub deletes: usize,
    /// Concurrent single-event requests.
    #[arg(long, env = "PULSE_BENCH_CONCURRENCY", default_value_t = 100)]
    pub concurrency: usize,
    /// Ride events of the batched NDJSON phase (0 = skip).
    #[arg(long, env = "PULSE_BENCH_BATCH_EVENTS", default_value_t = 1_000_000)]
    pub batch_events: usize,
    /// Events per NDJSON request.
    #[arg(long, env = "PULSE_BENCH_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,
    /// Concurrent NDJSON requests.
    #[arg(long, env = "PULSE_BENCH_BATCH_CONCURRENCY", default_value_t = 8)]
    pub batch_concurrency: usize,
    /// Bench a running ingest server instead of an in-process one on fresh topics.
    #[arg(long, env = "PULSE_BENCH_URL")]
    pub url: Option<String>,
    #[arg(long = "api-key", env = "PULSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Keep the bench topics afterwards.
    #[arg(long, default_value_t = false)]
    pub keep_topics: bool,
    /// Producer linger of the in-process server (ms).
    #[arg(long, env = "PULSE_INGEST_LINGER_MS", default_value_t = 1.0)]
    pub linger_ms: f64,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "PULSE_BENCH_THREADS")]
    pub threads: Option<usize>,
}

pub fn bench(global: &Global, args: BenchIngestArgs) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let kafka = args.kafka.config();
    let ingest_cfg = IngestConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        linger: Duration::from_secs_f64(args.linger_ms.max(0.0) / 1000.0),
        ..IngestConfig::default()
    };
    let cfg = pulse_bench::ingest::BenchConfig {
        inserts: args.inserts,
        updates: args.updates,
        deletes: args.deletes,
        concurrency: args.concurrency.max(1),
        batch_events: args.batch_events,
        batch_size: args.batch_size.max(1),
        batch_concurrency: args.batch_concurrency.max(1),
        url: args.url.clone(),
        api_key: args.api_key.clone(),
        keep_topics: args.keep_topics,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("cannot start the async runtime")?;
    let report = rt.block_on(pulse_bench::ingest::run(&spec, &kafka, ingest_cfg, cfg))?;
    print!("{report}");
    let failed = report.phases.iter().any(|p| p.errors > 0) || report.on_kafka.is_some_and(|(on, want)| on as u64 != want);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
