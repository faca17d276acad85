//! Subcommands that run or administer Pulse's services.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pulse_ops::{ServiceContext, Shutdown};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::cli::{ClickHouseArgs, Global, KafkaArgs, MigrateArgs, TopicsArgs};

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The secure default of the HTTP services: no keys, no start, unless `--insecure`
/// (then a warning). `variable` names where the keys go.
pub fn require_keys(service: &str, keys: usize, insecure: bool, variable: &str) -> anyhow::Result<()> {
    if keys > 0 {
        return Ok(());
    }
    anyhow::ensure!(
        insecure,
        "pulse {service} refuses to start without API keys: set {variable} (comma-separated; `KEY` or `KEY:name|name` to scope a key; \
         generate one with `openssl rand -hex 32`), or pass --insecure (PULSE_INSECURE=1) to serve without authentication on a trusted network"
    );
    tracing::warn!("pulse {service}: --insecure and no API keys: every request is served without authentication; never do this in production");
    Ok(())
}

pub fn topics(global: &Global, args: &TopicsArgs) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let plans = pulse_kafka::plan_topics(&spec);
    if args.check {
        for p in &plans {
            println!("{}: {} partitions, replication {}, {:?}", p.name, p.partitions, p.replication, p.configs);
        }
    }
    let cfg = args.kafka.config();
    let report = runtime()?.block_on(async {
        let admin: AdminClient<DefaultClientContext> = cfg.client().create().context("kafka admin client")?;
        // The brokers may still be starting (first boot of a stack): bounded retries.
        let deadline = std::time::Instant::now() + args.wait;
        loop {
            match pulse_kafka::ensure_topics(&admin, &plans).await {
                Ok(report) => return Ok(report),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!("kafka not ready, retrying: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(anyhow::Error::from(e).context(format!("reconciling topics (gave up after {:?})", args.wait))),
            }
        }
    })?;
    for t in &report.created {
        println!("created   {t}");
    }
    for t in &report.unchanged {
        println!("ok        {t}");
    }
    for t in &report.fixed {
        println!("fixed     {t}");
    }
    for t in &report.drift {
        println!("DRIFT     {t}");
    }
    Ok(if report.drift.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

pub fn migrate(global: &Global, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let cfg = args.clickhouse.config();
    runtime()?.block_on(async {
        wait_for_clickhouse(&cfg, args.wait).await?;
        if args.dry_run {
            let (statements, _) = pulse_clickhouse::migrate::plan(&cfg, &spec).await?;
            for s in statements {
                println!("{s};\n");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let report = pulse_clickhouse::migrate(&cfg, &spec).await?;
        for s in &report.applied {
            println!("applied   {}", s.lines().next().unwrap_or(s));
        }
        for t in &report.up_to_date {
            println!("ok        {t}");
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// Waits until ClickHouse answers a query (a server that is still starting, or
/// the temporary loopback-only server of a first boot, refuses connections).
pub async fn wait_for_clickhouse(cfg: &pulse_clickhouse::ClickHouseConfig, wait: Duration) -> anyhow::Result<()> {
    // The server, not the database: creating the database is what migrate is waiting to do.
    let client = cfg.server_client();
    let ping = || async { matches!(tokio::time::timeout(Duration::from_secs(3), client.query("SELECT 1").fetch_one::<u8>()).await, Ok(Ok(1))) };
    let deadline = std::time::Instant::now() + wait;
    while !ping().await {
        anyhow::ensure!(std::time::Instant::now() < deadline, "ClickHouse at {} did not answer within {wait:?}", cfg.url);
        tracing::warn!(url = %cfg.url, "ClickHouse not ready, retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[derive(Args)]
pub struct SinkArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Consumer group of the sink.
    #[arg(long, env = "PULSE_SINK_GROUP", default_value = "pulse-sink")]
    pub group: String,
    /// A batch is inserted when it holds this many rows...
    #[arg(long, env = "PULSE_SINK_BATCH_ROWS", default_value_t = 50_000)]
    pub batch_rows: usize,
    /// ...or when its oldest row has waited this many milliseconds.
    #[arg(long, env = "PULSE_SINK_BATCH_MS", default_value_t = 1000)]
    pub batch_ms: u64,
    /// Address of /health, /ready and /metrics.
    #[arg(long, env = "PULSE_SINK_METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: SocketAddr,
    /// Apply the schema (pulse migrate) before consuming.
    #[arg(long, env = "PULSE_SINK_MIGRATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

pub fn sink(global: &Global, args: &SinkArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let kafka = args.kafka.config();
    let ch = args.clickhouse.config();
    runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.on_signals();
        if args.migrate {
            pulse_clickhouse::migrate(&ch, &spec).await.context("migrating ClickHouse")?;
        }
        let cfg = pulse_sink::service::SinkConfig {
            group: args.group.clone(),
            batch_rows: args.batch_rows.max(1),
            batch_delay: Duration::from_millis(args.batch_ms.max(1)),
            instance: hostname(),
            ..Default::default()
        };
        let ctx = ServiceContext::new(tokio::runtime::Handle::current(), shutdown).with_metrics_addr(Some(args.metrics_addr));
        let summary = pulse_sink::service::run(spec, &kafka, &ch, cfg, ctx).await?;
        tracing::info!(stored = summary.stored, dead_lettered = summary.dead_lettered, "sink stopped");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pulse".into())
}
