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
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
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
    /// How often topic metadata is read again: partitions added while the job runs are
    /// picked up (read from their first offset) within this long.
    #[arg(long, env = "PULSE_DATAFLOW_METADATA_INTERVAL", value_parser = crate::ingest_cmd::parse_duration, default_value = "10s")]
    pub metadata_interval: std::time::Duration,
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
            pulse_clickhouse::migrate(&ch, &spec).await.context("migrating ClickHouse")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let cfg = pulse_dataflow::service::DataflowConfig {
        group: args.group.clone(),
        cluster,
        instance: format!("{}-{}", crate::services::hostname(), args.process),
        stall_timeout: args.stall_timeout,
        lease_ttl: args.lease_ttl,
        metadata_interval: args.metadata_interval,
        ..Default::default()
    };
    let ctx = pulse_ops::ServiceContext::new(rt.handle().clone(), shutdown).with_metrics_addr(Some(args.metrics_addr));
    let summaries = pulse_dataflow::service::run(spec, &kafka, &ch, cfg, ctx)?;
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
    /// Records per epoch; several (comma-separated) run one after another, each
    /// in a process of its own (so that each peak RSS is its own), and print a table.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    pub epoch_records: Vec<usize>,
    /// A live-paced run: the file's events arrive at this many events per second
    /// and the job ticks every 200 ms, so each epoch holds rate / 5 records
    /// (overrides --epoch-records; generate the file with the same --rate).
    #[arg(long)]
    pub live_rate: Option<usize>,
    /// Write every final window row here as JSON lines.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Create the input first with this many generated events when the file does not exist
    /// (20 cities, 100k users, up to 10 s disorder, --rate events per second of event time).
    #[arg(long)]
    pub generate: Option<usize>,
    /// Events per second of event time in a generated file.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Generate production-shaped data: every event from an independent random
    /// user (nearly every event a new distinct value) and RFC 3339 times with
    /// milliseconds, instead of one user per ride and epoch milliseconds; app
    /// event latencies as unrounded floats (nearly every one unique).
    #[arg(long)]
    pub realistic: bool,
    /// Users a generated file draws from (with --realistic, each event from
    /// an independent random one: 1000000000 makes nearly every event a new user).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Compute the spec's count_distinct aggregates by HyperLogLog (precision
    /// 14; on immutable domains, as the spec allows) and its quantiles by
    /// DDSketch (relative accuracy 1%), instead of exactly: compare a run with
    /// and one without.
    #[arg(long)]
    pub sketch: bool,
}

/// The spec with its count_distinct and quantile aggregates switched to sketches
/// (`hll` where the domain is immutable, `ddsketch` everywhere).
pub fn with_sketches(mut spec: pulse_model::Spec) -> pulse_model::Spec {
    use pulse_model::spec::{AggKind, AggMethod, DEFAULT_DDSKETCH_ACCURACY, DEFAULT_HLL_PRECISION};
    for m in &mut spec.metrics {
        let mutable = spec.domains.get(m.domain).is_some_and(|d| d.mutable);
        for a in &mut m.aggregates {
            match a.kind {
                AggKind::CountDistinct(_) if !mutable => a.method = AggMethod::Hll { precision: DEFAULT_HLL_PRECISION },
                AggKind::Quantile(..) => a.method = AggMethod::DdSketch { relative_accuracy: DEFAULT_DDSKETCH_ACCURACY },
                _ => {}
            }
        }
    }
    spec
}

/// What one bench configuration measured (one line a parent process parses).
struct Figures {
    epoch_records: usize,
    events_per_cpu_s: f64,
    peak_rss_mb: f64,
    state_bytes_per_event: Option<f64>,
    state_bytes_per_window: Option<f64>,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "figures epoch_records={} events_per_cpu_s={:.0} peak_rss_mb={:.0} state_bytes_per_open_event={} state_bytes_per_open_window={}",
            self.epoch_records,
            self.events_per_cpu_s,
            self.peak_rss_mb,
            self.state_bytes_per_event.map_or("n/a".to_string(), |b| format!("{b:.1}")),
            self.state_bytes_per_window.map_or("n/a".to_string(), |b| format!("{b:.0}"))
        )
    }

    fn parse(line: &str) -> Option<Figures> {
        let rest = line.strip_prefix("figures ")?;
        let field = |name: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        Some(Figures {
            epoch_records: field("epoch_records")?.parse().ok()?,
            events_per_cpu_s: field("events_per_cpu_s")?.parse().ok()?,
            peak_rss_mb: field("peak_rss_mb")?.parse().ok()?,
            state_bytes_per_event: field("state_bytes_per_open_event")?.parse().ok(),
            state_bytes_per_window: field("state_bytes_per_open_window").and_then(|v| v.parse().ok()),
        })
    }
}

pub fn bench(global: &Global, args: &BenchDataflowArgs) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let spec = Arc::new(if args.sketch { with_sketches(spec) } else { spec });
    let domain = spec.domain_index(&args.domain).with_context(|| format!("spec has no domain `{}`", args.domain))?;
    if let Some(n) = args.generate
        && !args.input.exists()
    {
        generate(&args.input, &args.domain, n, args.rate, args.realistic, args.users)?;
    }
    anyhow::ensure!(args.input.exists(), "{} does not exist (pass --generate N to create it)", args.input.display());
    let epochs: Vec<usize> = match args.live_rate {
        Some(rate) => vec![(rate / 5).max(1)],
        None => args.epoch_records.clone(),
    };
    if epochs.len() > 1 {
        return bench_each(&epochs);
    }
    let epoch_records = epochs.first().copied().unwrap_or(100_000);
    let cpu0 = process::cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let result = replay::run(Arc::clone(&spec), ReplayInput::File { path: args.input.clone(), domain }, args.workers, epoch_records, true)
        .map_err(|e| anyhow::anyhow!("dataflow: {e}"))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds().unwrap_or(0.0) - cpu0;
    let records = result.total(|w| w.records);
    let events = result.total(|w| w.events);
    let pace = args.live_rate.map_or(String::new(), |r| format!(" (live-paced: {r} events/s, 200 ms ticks)"));
    let methods = if args.sketch { "sketches (hll, ddsketch)" } else { "exact aggregates" };
    println!(
        "bench dataflow: {} ({} records) on {} worker(s), {} records per epoch{pace}, {methods}",
        args.input.display(),
        records,
        args.workers,
        epoch_records
    );
    println!(
        "  events counted {events}, late {}, stale {}, dead-lettered {}",
        result.total(|w| w.late),
        result.total(|w| w.stale),
        result.total(|w| w.dead_lettered)
    );
    println!("  final windows {}, live revisions {}", result.rows.len(), result.revisions);
    let peak_rss_mb = process::peak_rss_bytes().unwrap_or(0) as f64 / 1e6;
    println!("  wall {wall:.2} s, cpu {cpu:.2} s, peak RSS {peak_rss_mb:.0} MB");
    println!("  {:.0} events/s wall, {:.0} events per CPU-second", records as f64 / wall, records as f64 / cpu.max(0.001));
    let state = result.peak_state;
    // Open events are counted per metric (an event in two metrics counts twice).
    let per_event = (state.open_events > 0).then(|| state.bytes as f64 / state.open_events as f64);
    if let Some(b) = per_event {
        println!(
            "  window state at its peak: {} bytes for {} open events (per metric): {b:.1} bytes per open event per metric",
            state.bytes, state.open_events
        );
    }
    let per_window = (state.open_windows > 0).then(|| state.bytes as f64 / state.open_windows as f64);
    if let Some(b) = per_window {
        println!(
            "  ... and {} open windows (every metric): {b:.0} bytes per open window, of which sketches {:.0}",
            state.open_windows,
            state.sketch_bytes as f64 / state.open_windows as f64
        );
    }
    let figures = Figures {
        epoch_records,
        events_per_cpu_s: records as f64 / cpu.max(0.001),
        peak_rss_mb,
        state_bytes_per_event: per_event,
        state_bytes_per_window: per_window,
    };
    println!("{}", figures.line());
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

/// Runs each epoch size in a process of its own and prints one table.
fn bench_each(epochs: &[usize]) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the pulse binary")?;
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    let mut rows = Vec::new();
    for &n in epochs {
        let mut cmd = std::process::Command::new(&exe);
        // The same command line, one epoch size.
        let mut skip = false;
        for a in &forwarded {
            if skip {
                skip = false;
                continue;
            }
            if a == "--epoch-records" {
                skip = true;
                continue;
            }
            if a.starts_with("--epoch-records=") {
                continue;
            }
            cmd.arg(a);
        }
        cmd.arg("--epoch-records").arg(n.to_string());
        let out = cmd.stderr(std::process::Stdio::inherit()).output().context("running one bench configuration")?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        anyhow::ensure!(out.status.success(), "the run with {n} records per epoch failed");
        rows.extend(text.lines().find_map(Figures::parse));
    }
    println!();
    println!("| records per epoch | events / CPU-s | peak RSS | state bytes per open event per metric | state bytes per open window |");
    println!("|---|---|---|---|---|");
    for f in &rows {
        println!(
            "| {} | {:.2} M | {:.0} MB | {} | {} |",
            f.epoch_records,
            f.events_per_cpu_s / 1e6,
            f.peak_rss_mb,
            f.state_bytes_per_event.map_or("n/a".to_string(), |b| format!("{b:.0}")),
            f.state_bytes_per_window.map_or("n/a".to_string(), |b| format!("{b:.0}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn generate(path: &PathBuf, domain: &str, n: usize, rate: f64, realistic: bool, users: u64) -> anyhow::Result<()> {
    let gd = match domain {
        "rides" => GenDomain::Rides,
        "driver_locations" => GenDomain::DriverLocations,
        "app_events" => GenDomain::AppEvents,
        other => anyhow::bail!("the generator has no domain `{other}`"),
    };
    let cfg = GenConfig {
        disorder_ms: 10_000,
        users: users.max(1),
        cities: 20,
        rate,
        independent_users: realistic,
        rfc3339: realistic,
        float_latencies: realistic,
        ..GenConfig::default()
    };
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
