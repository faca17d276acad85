//! Command-line surface: global options (each with its PULSE_* variable) and subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pulse_model::Spec;

#[derive(Parser)]
#[command(name = "pulse", version, about = "Real-time event analytics: HTTP/Kafka in, windowed metrics and raw events out to ClickHouse")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Pipeline spec file.
    #[arg(long, global = true, env = "PULSE_SPEC", default_value = "pulse.toml")]
    pub spec: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,pulse_dataflow=debug`.
    #[arg(long, global = true, env = "PULSE_LOG", default_value = "info")]
    pub log: String,
}

impl Global {
    pub fn load_spec(&self) -> anyhow::Result<Spec> {
        load_spec(&self.spec)
    }
}

pub fn load_spec(path: &Path) -> anyhow::Result<Spec> {
    Spec::load(path).map_err(|e| anyhow::anyhow!("invalid spec:\n{e}"))
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate a spec; prints every error as FILE:LINE: message.
    Check(CheckArgs),
    /// Create or verify every Kafka topic of the spec (idempotent; reports drift it cannot fix).
    Topics(TopicsArgs),
    /// Apply the spec's ClickHouse schema (idempotent; additive changes only).
    Migrate(MigrateArgs),
    /// Consume the domain topics and store every raw event in ClickHouse.
    Sink(crate::services::SinkArgs),
    /// Run the timely/differential job: windowed metrics to Kafka and ClickHouse.
    Dataflow(crate::dataflow_cmd::DataflowArgs),
    /// Recompute a metric's closed windows over the raw tables and write them as finals.
    Backfill(crate::backfill::BackfillArgs),
    /// The whole pipeline in one process, with a load generator and a live table.
    Demo(crate::demo::DemoArgs),
    /// Measure Pulse's throughput.
    Bench(crate::bench::BenchArgs),
    /// Serve the HTTP write API: validated events into their domain's Kafka topic.
    Ingest(crate::ingest_cmd::IngestArgs),
    /// Generate realistic events: over HTTP, straight to Kafka, or into a JSON-lines file.
    Loadgen(crate::ingest_cmd::LoadgenArgs),
    /// Serve the read API (events, metrics, analytics, live streams) and the live page.
    Api(crate::api_cmd::ApiArgs),
}

/// Kafka connection (librdkafka properties pass through as PULSE_KAFKA_<PROPERTY>).
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers.
    #[arg(long = "kafka-brokers", env = "PULSE_KAFKA_BROKERS", default_value = pulse_kafka::config::DEFAULT_BROKERS)]
    pub brokers: String,
}

impl KafkaArgs {
    pub fn config(&self) -> pulse_kafka::KafkaConfig {
        pulse_kafka::KafkaConfig::from_env(self.brokers.clone())
    }
}

/// Limits of an HTTP service (ingest, api).
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Time a client has to send its request head; a connection still sending it is closed.
    #[arg(long, env = "PULSE_HTTP_HEADER_TIMEOUT", value_parser = crate::ingest_cmd::parse_duration, default_value = "10s")]
    pub header_timeout: std::time::Duration,
    /// Time a client has to send its request body (408 after that).
    #[arg(long, env = "PULSE_HTTP_BODY_TIMEOUT", value_parser = crate::ingest_cmd::parse_duration, default_value = "30s")]
    pub body_timeout: std::time::Duration,
    /// Open connections at most; the next ones get 503 with Retry-After.
    #[arg(long, env = "PULSE_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
}

impl HttpArgs {
    pub fn limits(&self) -> pulse_ops::http::HttpLimits {
        pulse_ops::http::HttpLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections.max(1),
            ..pulse_ops::http::HttpLimits::default()
        }
    }
}

/// ClickHouse connection.
#[derive(Args, Clone, Debug)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP URL.
    #[arg(long = "clickhouse-url", env = "PULSE_CLICKHOUSE_URL", default_value = pulse_clickhouse::config::DEFAULT_URL)]
    pub url: String,
    /// Database holding Pulse's tables.
    #[arg(long = "clickhouse-database", env = "PULSE_CLICKHOUSE_DATABASE", default_value = pulse_clickhouse::config::DEFAULT_DATABASE)]
    pub database: String,
    /// ClickHouse user (the server's default user when unset).
    #[arg(long = "clickhouse-user", env = "PULSE_CLICKHOUSE_USER")]
    pub user: Option<String>,
    /// ClickHouse password (never logged).
    #[arg(long = "clickhouse-password", env = "PULSE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Compress INSERT bodies with LZ4.
    #[arg(long = "clickhouse-compress", env = "PULSE_CLICKHOUSE_COMPRESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub compress: bool,
    /// Timeout of one query or insert, in seconds.
    #[arg(long = "clickhouse-timeout", env = "PULSE_CLICKHOUSE_TIMEOUT", default_value_t = 30)]
    pub timeout_secs: u64,
}

impl ClickHouseArgs {
    pub fn config(&self) -> pulse_clickhouse::ClickHouseConfig {
        pulse_clickhouse::ClickHouseConfig {
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            compress: self.compress,
            timeout: std::time::Duration::from_secs(self.timeout_secs.max(1)),
        }
    }
}

#[derive(Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Only report differences; change nothing.
    #[arg(long)]
    pub check: bool,
    /// How long to wait for the brokers to answer before giving up (first boots race).
    #[arg(long, env = "PULSE_WAIT", value_parser = crate::ingest_cmd::parse_duration, default_value = "120s")]
    pub wait: std::time::Duration,
}

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Print the statements that would run; apply nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for ClickHouse to answer before giving up (first boots race).
    #[arg(long, env = "PULSE_WAIT", value_parser = crate::ingest_cmd::parse_duration, default_value = "120s")]
    pub wait: std::time::Duration,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Spec file to check (defaults to --spec / PULSE_SPEC).
    pub file: Option<PathBuf>,
}

pub fn check(global: &Global, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let file = args.file.as_ref().unwrap_or(&global.spec);
    match Spec::load(file) {
        Ok(spec) => {
            println!("{}: ok ({} domains, {} metrics)", file.display(), spec.domains.len(), spec.metrics.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn init_tracing(filter: &str) {
    pulse_ops::init_tracing(filter);
}
