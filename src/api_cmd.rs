//! `pulse api` (the read API and live page) and `pulse bench api`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pulse_api::auth::ApiKeys;
use pulse_api::config::{StreamConfig, keys_from_env, parse_list};
use pulse_api::{Api, ApiConfig};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::{ServiceContext, Shutdown};

use crate::cli::{ClickHouseArgs, Global, KafkaArgs};

#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub http: crate::cli::HttpArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address to serve on (/v1, /health, /ready, /metrics, /openapi.json, the live page at /).
    #[arg(long, env = "PULSE_API_ADDR", default_value = pulse_api::config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Origins allowed by CORS, comma-separated (`*` for any); none by default.
    #[arg(long, env = "PULSE_API_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,
    /// Serve /v1/stream (SSE) from the aggregated topic; needs Kafka.
    #[arg(long, env = "PULSE_API_STREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub stream: bool,
    /// Serve without API keys (anyone may read; a warning is logged). Never in production.
    #[arg(long, env = "PULSE_INSECURE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// Requests per second per API key (token bucket; 429 beyond); 0 = unlimited.
    #[arg(long, env = "PULSE_API_RATE_LIMIT", default_value_t = pulse_api::config::DEFAULT_RATE_LIMIT)]
    pub rate_limit: f64,
    /// Token bucket size in requests (default: two seconds' worth).
    #[arg(long, env = "PULSE_API_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// Open SSE streams at most; the next ones get 503 with Retry-After.
    #[arg(long, env = "PULSE_API_MAX_STREAMS", default_value_t = pulse_api::config::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Apply the schema (pulse migrate) before serving.
    #[arg(long, env = "PULSE_API_MIGRATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

/// Settings for the API with `keys` (whose scopes must name metrics or domains of `spec`).
fn config(spec: &Spec, keys: ApiKeys, addr: SocketAddr, cors: &str, kafka: Option<KafkaConfig>) -> anyhow::Result<ApiConfig> {
    let mut known: Vec<&str> = spec.metrics.iter().map(|m| m.name.as_str()).collect();
    known.extend(spec.domains.iter().map(|d| d.name.as_str()));
    keys.check_scopes(&known).context("PULSE_API_KEYS")?;
    Ok(ApiConfig { addr, cors_origins: parse_list(cors), keys, stream: kafka.map(StreamConfig::new), ..ApiConfig::default() })
}

pub fn api(global: &Global, args: &ApiArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let ch = args.clickhouse.config();
    let kafka = args.stream.then(|| args.kafka.config());
    let keys = keys_from_env().context("PULSE_API_KEYS")?;
    crate::services::require_keys("api", keys.len(), args.insecure, pulse_api::config::KEYS_ENV)?;
    let cfg = ApiConfig {
        http: args.http.limits(),
        rate_limit: (args.rate_limit > 0.0).then_some(args.rate_limit),
        rate_burst: args.rate_burst,
        max_streams: args.max_streams.max(1),
        ..config(&spec, keys, args.addr, &args.cors_origins, kafka)?
    };
    crate::services::runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        if args.migrate {
            pulse_clickhouse::migrate(&ch, &spec).await.context("migrating ClickHouse")?;
        }
        tracing::info!(keys = cfg.keys.len(), scoped_keys = cfg.keys.scoped(), rate_limit = ?cfg.rate_limit, max_streams = cfg.max_streams, cors = ?cfg.cors_origins, stream = cfg.stream.is_some(), clickhouse = %ch.url, database = %ch.database, "api starting");
        let listener = tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("binding {}", cfg.addr))?;
        let api = Api::new(spec, &ch, cfg, ServiceContext::new(tokio::runtime::Handle::current(), shutdown.clone()))?;
        pulse_api::serve(api, listener).await.context("serving the API")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The API's configuration inside another command (`pulse demo`), reading
/// with `keys` on `addr`, with the live stream (the embedded pipeline points it
/// at its Kafka).
pub fn embedded_config(spec: &Spec, keys: ApiKeys, addr: SocketAddr) -> anyhow::Result<ApiConfig> {
    Ok(ApiConfig {
        rate_limit: Some(pulse_api::config::DEFAULT_RATE_LIMIT),
        ..config(spec, keys, addr, &std::env::var("PULSE_API_CORS_ORIGINS").unwrap_or_default(), Some(KafkaConfig::default()))?
    })
}

#[derive(Args, Debug)]
pub struct BenchApiArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Raw ride rows to load.
    #[arg(long, default_value_t = 10_000_000)]
    pub rides: usize,
    /// App events to load (with updates and deletes).
    #[arg(long, default_value_t = 500_000)]
    pub app_events: usize,
    /// Sessions the app events are drawn from (uniformly); far more than --app-events makes nearly every event a session of its own.
    #[arg(long, default_value_t = 20_000)]
    pub sessions: u64,
    /// Hours of event time the data covers, ending now.
    #[arg(long, default_value_t = 48)]
    pub hours: u64,
    /// Measured requests per endpoint (analytics endpoints: a fifth of it).
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Requests in flight at once, comma-separated: each endpoint is measured at each.
    #[arg(long, default_value = "1,4", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Database to load into (default: a fresh pulse_bench_api_<time>, dropped afterwards unless --keep).
    #[arg(long = "database", id = "bench_database")]
    pub database: Option<String>,
    /// Keep the database (and reuse it on the next run with --database).
    #[arg(long)]
    pub keep: bool,
    /// Skip OPTIMIZE TABLE ... FINAL after loading.
    #[arg(long)]
    pub no_optimize: bool,
    /// Rows per INSERT while loading: with --no-optimize, smaller batches leave
    /// the tables in more parts, as a continuously written table is.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_rows: usize,
}

pub fn bench(global: &Global, args: BenchApiArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let reuse = args.database.is_some();
    let database = args.database.clone().unwrap_or_else(|| format!("pulse_bench_api_{}", std::process::id()));
    let ch = args.clickhouse.config().with_database(database.clone());
    let cfg = pulse_bench::api::BenchConfig {
        rides: args.rides,
        app_events: args.app_events,
        sessions: args.sessions,
        span: Duration::from_secs(args.hours.max(1) * 3600),
        requests: args.requests.max(1),
        concurrency: args.concurrency.iter().map(|&c| c.max(1)).collect(),
        reuse,
        optimize: !args.no_optimize,
        batch_rows: args.batch_rows,
    };
    let rt = crate::services::runtime()?;
    let report = rt.block_on(pulse_bench::api::run(spec, &ch, &cfg, &|msg| eprintln!("bench api: {msg}")));
    if !args.keep && !reuse {
        let drop = rt.block_on(ch.server_client().query(&format!("DROP DATABASE IF EXISTS {}", pulse_clickhouse::schema::ident(&database))).execute());
        if let Err(e) = drop {
            eprintln!("bench api: could not drop {database}: {e}");
        }
    }
    print!("{}", report?);
    Ok(ExitCode::SUCCESS)
}
