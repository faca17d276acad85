//! `pulse bench ...`: throughput figures measured on the real code paths.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use pulse_model::generate::{GenConfig, GenDomain, GenOp, Generator};
use pulse_model::{Decoder, process};

use crate::cli::Global;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
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
        BenchWhat::Dataflow(args) => crate::dataflow_cmd::bench(global, &args),
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
        let ev = decoder
            .decode(json.as_bytes())
            .map_err(|e| anyhow::anyhow!("generated event rejected: {e}: {json}"))?;
        checksum = checksum.wrapping_add(ev.time);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (process::cpu_seconds().unwrap_or(0.0) - cpu0).max(wall.min(0.01));
    println!("bench decode: domain={domain} events={} bytes={bytes} (avg {:.0} B/event)", inputs.len(), bytes as f64 / inputs.len().max(1) as f64);
    println!("  wall {wall:.3} s, cpu {cpu:.2} s");
    println!("  {:.0} events/s wall, {:.0} events per CPU-second, {:.0} MB/s", inputs.len() as f64 / wall, inputs.len() as f64 / cpu, bytes as f64 / wall / 1e6);
    tracing::debug!(checksum, "decode checksum");
    Ok(ExitCode::SUCCESS)
}
