//! `pulse bench ...`: throughput figures measured on the real code paths.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use pulse_gen::{GenConfig, GenDomain, GenOp, Generator};
use pulse_model::{Decoder, process};

use crate::cli::Global;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Read latency of every API endpoint over HTTP on 10 M generated rides (p50/p99 per endpoint).
    Api(crate::api_cmd::BenchApiArgs),
    /// Ingest -> Kafka -> dataflow at a fixed rate for minutes: RSS, lag and freshness over time.
    Soak(crate::soak::SoakArgs),
    /// Kafka -> sink -> ClickHouse: rows per second into the raw tables.
    Sink(SinkBenchArgs),
    /// Replay a JSON-lines file through the dataflow (no Kafka); prints events per CPU-second and peak RSS.
    Dataflow(crate::dataflow_cmd::BenchDataflowArgs),
    /// Decode generated ride events on one thread; prints events per CPU-second.
    Decode {
        /// Number of events to decode.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Domain to generate (rides, driver_locations, app_events).
        #[arg(long, default_value = "rides")]
        domain: String,
    },
    /// The Go reference scenario over HTTP (500k inserts, 200k updates, 200k deletes at
    /// concurrency 100) plus batched NDJSON throughput; events/s and p50/p99 per phase.
    Ingest(crate::ingest_cmd::BenchIngestArgs),
}

pub fn run(global: &Global, args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Decode { events, domain } => decode(global, events, &domain),
        BenchWhat::Ingest(args) => crate::ingest_cmd::bench(global, args),
        BenchWhat::Api(args) => crate::api_cmd::bench(global, args),
        BenchWhat::Dataflow(args) => crate::dataflow_cmd::bench(global, &args),
        BenchWhat::Soak(args) => crate::soak::soak(global, &args),
        BenchWhat::Sink(args) => sink(global, &args),
    }
}

fn gen_domain(name: &str) -> anyhow::Result<GenDomain> {
    Ok(match name {
        "rides" => GenDomain::Rides,
        "driver_locations" => GenDomain::DriverLocations,
        "app_events" => GenDomain::AppEvents,
        other => anyhow::bail!("the generator has no domain `{other}` (rides, driver_locations, app_events)"),
    })
}

fn decode(global: &Global, events: usize, domain: &str) -> anyhow::Result<ExitCode> {
    let spec = global.load_spec()?;
    let dom = spec.domain(domain).with_context(|| format!("spec has no domain `{domain}`"))?;
    let decoder = Decoder::new(dom);
    let cfg = GenConfig { disorder_ms: 5_000, ..GenConfig::default() };
    let inputs: Vec<String> = Generator::new(cfg)
        .only(gen_domain(domain)?)
        .filter_map(|op| match op {
            GenOp::Insert { json, .. } | GenOp::Update { json, .. } => Some(json),
            GenOp::Delete { .. } => None,
        })
        .take(events)
        .collect();
    let bytes: usize = inputs.iter().map(String::len).sum();
    let cpu0 = process::cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let mut checksum = 0i64;
    for json in &inputs {
        let ev = decoder.decode(json.as_bytes()).map_err(|e| anyhow::anyhow!("generated event rejected: {e}: {json}"))?;
        checksum = checksum.wrapping_add(ev.time);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (process::cpu_seconds().unwrap_or(0.0) - cpu0).max(wall.min(0.01));
    println!("bench decode: domain={domain} events={} bytes={bytes} (avg {:.0} B/event)", inputs.len(), bytes as f64 / inputs.len().max(1) as f64);
    println!("  wall {wall:.3} s, cpu {cpu:.2} s");
    println!(
        "  {:.0} events/s wall, {:.0} events per CPU-second, {:.0} MB/s",
        inputs.len() as f64 / wall,
        inputs.len() as f64 / cpu,
        bytes as f64 / wall / 1e6
    );
    tracing::debug!(checksum, "decode checksum");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct SinkBenchArgs {
    #[command(flatten)]
    pub clickhouse: crate::cli::ClickHouseArgs,
    /// Events to produce (all domains, generated) before the sink starts.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Rows per insert.
    #[arg(long, default_value_t = 50_000)]
    pub batch_rows: usize,
}

/// Fills the embedded Kafka with generated events, then times `pulse sink`
/// moving all of them into a fresh ClickHouse database.
fn sink(global: &Global, args: &SinkBenchArgs) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let spec = Arc::new(global.load_spec()?);
    let mut ch = args.clickhouse.config();
    ch.database = format!("pulse_bench_sink_{}", std::process::id());
    let rt = crate::services::runtime()?;
    let mock = rdkafka::mocking::MockCluster::new(1).context("embedded Kafka")?;
    pulse_kafka::topics::create_on_mock(&mock, &pulse_kafka::plan_topics(&spec))?;
    let kafka = pulse_kafka::KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec))?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create()?;
    let mut per_domain = [0u64; 3];
    let cfg = GenConfig { update_fraction: 0.0, delete_fraction: 0.0, ..GenConfig::default() };
    for op in Generator::new(cfg).take(args.events) {
        let GenOp::Insert { domain, json } = op else { continue };
        let topic = &spec.domain(domain.name()).context("domain")?.topic;
        let key = match domain {
            GenDomain::Rides => "ride",
            GenDomain::DriverLocations => "driver",
            GenDomain::AppEvents => "app",
        };
        per_domain[domain as usize] += 1;
        let mut record = BaseRecord::to(topic).key(key).payload(&json);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let total: u64 = per_domain.iter().sum();
    println!(
        "bench sink: {total} events in Kafka ({} rides, {} driver locations, {} app events); batches of {} rows",
        per_domain[0], per_domain[1], per_domain[2], args.batch_rows
    );
    let shutdown = pulse_ops::Shutdown::new();
    let scfg = pulse_sink::service::SinkConfig { batch_rows: args.batch_rows, group: "pulse-bench-sink".into(), ..Default::default() };
    let cpu0 = process::cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    let task = {
        let (spec, kafka, ch, ctx) = (Arc::clone(&spec), kafka.clone(), ch.clone(), pulse_ops::ServiceContext::new(rt.handle().clone(), shutdown.clone()));
        rt.spawn(async move { pulse_sink::service::run(spec, &kafka, &ch, scfg, ctx).await })
    };
    let client = ch.client();
    let count_sql = "SELECT (SELECT count() FROM rides) + (SELECT count() FROM driver_locations) + (SELECT count() FROM app_events)";
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let n: u64 = rt.block_on(client.query(count_sql).fetch_one()).unwrap_or(0);
        if n >= total {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(1800), "only {n} of {total} rows after 30 minutes");
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process::cpu_seconds().unwrap_or(0.0) - cpu0;
    shutdown.trigger();
    let _ = rt.block_on(task);
    let _ = rt.block_on(client.query(&format!("DROP DATABASE IF EXISTS `{}`", ch.database)).execute());
    println!(
        "  {total} rows stored in {wall:.2} s: {:.0} rows/s; this process used {cpu:.2} CPU-s ({:.0} rows per CPU-second)",
        total as f64 / wall,
        total as f64 / cpu.max(0.001)
    );
    println!("  (ClickHouse's own time is in the other process: the chDB front-end of the local stack, or your server)");
    Ok(ExitCode::SUCCESS)
}
