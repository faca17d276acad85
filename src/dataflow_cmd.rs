//! `pulse dataflow` and `pulse bench dataflow`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pulse_dataflow::replay::{self, ReplayInput};
use pulse_model::generate::{GenConfig, GenDomain, GenOp, Generator};
use pulse_model::metric_row::RowShape;
use pulse_model::process;

use crate::cli::{ClickHouseArgs, Global, KafkaArgs};

#[derive(Args, Debug)]
pub struct DataflowArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Consumer group whose committed offsets (and watermarks) the job resumes from.
    #[arg(long, env = "PULSE_DATAFLOW_GROUP", default_value = "pulse-dataflow")]
    pub group: String,
    /// Timely worker threads per process.
    #[arg(short = 'w', long, env = "PULSE_DATAFLOW_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Number of timely processes (cluster mode).
    #[arg(short = 'n', long, env = "PULSE_DATAFLOW_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process among them (0-based).
    #[arg(short = 'p', long, env = "PULSE_DATAFLOW_PROCESS", default_value_t = 0)]
    pub process: usize,
    /// File with one host:port per line, one line per process (cluster mode).
    #[arg(short = 'H', long = "hostfile", env = "PULSE_DATAFLOW_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// Address of /health, /ready and /metrics.
    #[arg(long, env = "PULSE_DATAFLOW_METRICS_ADDR", default_value = "0.0.0.0:9102")]
    pub metrics_addr: std::net::SocketAddr,
    /// `/health` fails (503) when no epoch has completed for this long: the job is stuck.
    #[arg(long, env = "PULSE_DATAFLOW_STALL_TIMEOUT", value_parser = crate::ingest_cmd::parse_duration, default_value = "60s")]
    pub stall_timeout: std::time::Duration,
    /// One job instance per consumer group: the holder renews the group's lease; a
    /// second instance waits until the holder stops or has not renewed it for this long.
    #[arg(long, env = "PULSE_DATAFLOW_LEASE_TTL", value_parser = crate::ingest_cmd::parse_duration, default_value = "10s")]
    pub lease_ttl: std::time::Duration,
    /// Apply the schema (pulse migrate) before starting.
    #[arg(long, env = "PULSE_DATAFLOW_MIGRATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub migrate: bool,
}

pub fn cluster_of(args: &DataflowArgs) -> anyhow::Result<pulse_dataflow::service::Cluster> {
    use pulse_dataflow::service::Cluster;
    if args.processes <= 1 {
        return Ok(Cluster::Process { workers: args.workers.max(1) });
    }
    let hostfile = args.hostfile.as_ref().context("cluster mode (-n > 1) needs --hostfile with one host:port per process")?;
    let text = std::fs::read_to_string(hostfile).with_context(|| format!("reading {}", hostfile.display()))?;
    let addresses: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    anyhow::ensure!(addresses.len() == args.processes, "{} lists {} processes, -n says {}", hostfile.display(), addresses.len(), args.processes);
    anyhow::ensure!(args.process < args.processes, "-p {} is not below -n {}", args.process, args.processes);
    Ok(Cluster::Cluster { workers: args.workers.max(1), process: args.process, addresses })
}

pub fn dataflow(global: &Global, args: &DataflowArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let kafka = args.kafka.config();
    let ch = args.clickhouse.config();
    let cluster = cluster_of(args)?;
    let rt = crate::services::runtime()?;
    let shutdown = pulse_ops::Shutdown::new();
    rt.block_on(async {
        shutdown.on_signals();
        if args.migrate {
            pulse_sink::migrate(&ch, &spec).await.context("migrating ClickHouse")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let cfg = pulse_dataflow::service::DataflowConfig {
        group: args.group.clone(),
        cluster,
        metrics_addr: Some(args.metrics_addr),
        instance: format!("{}-{}", crate::services::hostname(), args.process),
        stall_timeout: args.stall_timeout,
        lease_ttl: args.lease_ttl,
        ..Default::default()
    };
    let summaries =
        pulse_dataflow::service::run(spec, &kafka, &ch, cfg, pulse_ops::prometheus::Registry::new(), pulse_ops::Readiness::default(), shutdown, rt.handle())?;
    let events: u64 = summaries.iter().map(|s| s.events).sum();
    tracing::info!(events, workers = summaries.len(), "dataflow stopped");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct BenchDataflowArgs {
    /// JSON-lines file of one domain's events (see `pulse loadgen --output`).
    #[arg(long)]
    pub input: PathBuf,
    /// Domain of the events in the file.
    #[arg(long, default_value = "rides")]
    pub domain: String,
    /// Timely worker threads.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
    /// Records per epoch.
    #[arg(long, default_value_t = 100_000)]
    pub epoch_records: usize,
    /// Write every final window row here as JSON lines.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Create the input first with this many generated events when the file does not exist
    /// (20 cities, 100k users, up to 10 s disorder, 1000 events per second of event time).
    #[arg(long)]
    pub generate: Option<usize>,
}

pub fn bench(global: &Global, args: &BenchDataflowArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let domain = spec.domain_index(&args.domain).with_context(|| format!("spec has no domain `{}`", args.domain))?;
    if let Some(n) = args.generate
        && !args.input.exists()
    {
        generate(&args.input, &args.domain, n)?;
    }
    anyhow::ensure!(args.input.exists(), "{} does not exist (pass --generate N to create it)", args.input.display());
    let cpu0 = process::cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let result = replay::run(Arc::clone(&spec), ReplayInput::File { path: args.input.clone(), domain }, args.workers, args.epoch_records, true)
        .map_err(|e| anyhow::anyhow!("dataflow: {e}"))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds().unwrap_or(0.0) - cpu0;
    let records = result.total(|w| w.records);
    let events = result.total(|w| w.events);
    println!("bench dataflow: {} ({} records) on {} worker(s), {} records per epoch", args.input.display(), records, args.workers, args.epoch_records);
    println!(
        "  events counted {events}, late {}, stale {}, dead-lettered {}",
        result.total(|w| w.late),
        result.total(|w| w.stale),
        result.total(|w| w.dead_lettered)
    );
    println!("  final windows {}, live revisions {}", result.rows.len(), result.revisions);
    println!("  wall {wall:.2} s, cpu {cpu:.2} s, peak RSS {:.0} MB", process::peak_rss_bytes().unwrap_or(0) as f64 / 1e6);
    println!("  {:.0} events/s wall, {:.0} events per CPU-second", records as f64 / wall, records as f64 / cpu.max(0.001));
    if let Some(out) = &args.output {
        let shapes = RowShape::all(&spec);
        let mut rows = result.rows;
        rows.sort_by(|a, b| {
            (a.metric, a.window_start).cmp(&(b.metric, b.window_start)).then(a.group.partial_cmp(&b.group).unwrap_or(std::cmp::Ordering::Equal))
        });
        let mut w = BufWriter::new(File::create(out).with_context(|| format!("creating {}", out.display()))?);
        for r in &rows {
            writeln!(w, "{}", r.to_json(&shapes[r.metric]))?;
        }
        w.flush()?;
        println!("  final rows written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn generate(path: &PathBuf, domain: &str, n: usize) -> anyhow::Result<()> {
    let gd = match domain {
        "rides" => GenDomain::Rides,
        "driver_locations" => GenDomain::DriverLocations,
        "app_events" => GenDomain::AppEvents,
        other => anyhow::bail!("the generator has no domain `{other}`"),
    };
    let cfg = GenConfig { disorder_ms: 10_000, users: 100_000, cities: 20, ..GenConfig::default() };
    let mut w = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for op in Generator::new(cfg).only(gd).take(n) {
        match op {
            GenOp::Insert { json, .. } | GenOp::Update { json, .. } => writeln!(w, "{json}")?,
            GenOp::Delete { id, .. } => writeln!(w, "{{\"event_id\":\"{id}\",\"_deleted\":true}}")?,
        }
    }
    w.flush()?;
    eprintln!("generated {n} {domain} events into {}", path.display());
    Ok(())
}
