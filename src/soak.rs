//! `pulse bench soak`: ingest → Kafka → dataflow at a fixed rate for minutes,
//! in one process (the embedded mock cluster, or `--kafka` brokers). Every few
//! seconds it samples RSS, consumer lag and the dataflow's progress, and it
//! measures freshness (`crate::freshness`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::GenConfig;
use pulse_kafka::KafkaConfig;
use pulse_ops::Shutdown;
use pulse_ops::prometheus::Registry;
use pulse_testkit::{Pipeline, PipelineConfig};

use crate::cli::{ClickHouseArgs, Global};

#[derive(Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Events per second sent through ingest.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// Use these brokers instead of the embedded mock cluster.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
    /// Timely workers of the dataflow.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
}

pub fn soak(global: &Global, args: &SoakArgs) -> anyhow::Result<ExitCode> {
    let spec = Arc::new(global.load_spec()?);
    let ch = args.clickhouse.config();
    let rt = crate::services::runtime()?;
    let shutdown = Shutdown::new();
    rt.block_on(async { shutdown.on_signals() });
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).with_context(|| format!("migrating ClickHouse at {}", ch.url))?;
    // Ingest (keyless, on loopback) and the dataflow, on the embedded Kafka or `--kafka`.
    let registry = Registry::new();
    let dataflow = DataflowConfig { cluster: Cluster::Process { workers: args.workers }, ..Default::default() };
    let cfg = PipelineConfig {
        kafka: args.kafka.as_ref().map(|b| KafkaConfig::from_env(b.clone())),
        ingest: Some(pulse_ingest::IngestConfig { addr: ([127, 0, 0, 1], 0).into(), ..Default::default() }),
        dataflow: Some((dataflow, registry.clone())),
        ..Default::default()
    };
    let pipeline = Pipeline::start(rt.handle(), &spec, &ch, cfg, shutdown.clone())?;
    let kafka = pipeline.kafka.clone();
    let ingest_url = pipeline.ingest_url.clone().context("ingest is not running")?;

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let generator = GenConfig { start_ms: pulse_model::now_ms(), rate: args.rate, disorder_ms: 2_000, ..GenConfig::default() };
    let cfg = pulse_bench::loadgen::LoadgenConfig {
        generator,
        events: None,
        duration: Some(duration),
        rate: Some(args.rate),
        concurrency: 8,
        batch: 200,
        progress: false,
    };
    let load = {
        let (url, shutdown) = (ingest_url.clone(), shutdown.clone());
        rt.spawn(async move {
            let client = pulse_client::Client::new(&url, None, None)?;
            client.wait_until_ready(Duration::from_secs(30)).await?;
            pulse_bench::loadgen::run(pulse_bench::loadgen::Target::Http(client), cfg, shutdown).await.map_err(anyhow::Error::from)
        })
    };

    let freshness = crate::freshness::Freshness::start(&rt, &ingest_url, &kafka, &spec.pipeline.aggregated_topic, &shutdown);

    println!(
        "soak: {:.0} events/s through ingest into the dataflow for {:.1} min ({} worker(s)); a sample every {} s",
        args.rate, args.minutes, args.workers, args.every
    );
    println!("{:>6} {:>10} {:>10} {:>8} {:>10} {:>9} {:>12}", "t (s)", "events/s", "counted", "RSS MB", "lag", "wm delay", "fresh p99 s");
    let started = Instant::now();
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    let mut last = (0.0, Instant::now());
    while started.elapsed() < duration && !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_secs(args.every));
        let (counted, lag, delay) = figures(&registry);
        let rate = (counted - last.0) / last.1.elapsed().as_secs_f64().max(0.001);
        last = (counted, Instant::now());
        let rss = pulse_model::process::rss_bytes().unwrap_or(0) as f64 / 1e6;
        let p99 = freshness.quantile(0.99);
        println!("{:>6.0} {:>10.0} {:>10.0} {:>8.0} {:>10.0} {:>9.1} {:>12.3}", started.elapsed().as_secs_f64(), rate, counted, rss, lag, delay, p99);
        samples.push((rss, lag, rate));
    }
    shutdown.trigger();
    let report = rt.block_on(load).context("load generator")??;
    let fresh = freshness.finish(&rt);
    pipeline.stop().context("stopping the pipeline")?;

    let third = samples.len() / 3;
    let avg = |s: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| s.iter().map(f).sum::<f64>() / s.len().max(1) as f64;
    println!("\n{report}");
    println!(
        "sustained {:.0} events/s into the dataflow; RSS {:.0} MB in the middle third, {:.0} MB in the last third (peak {:.0} MB); lag at most {:.0}, {:.0} at the end",
        avg(&samples[third.min(samples.len())..], |s| s.2),
        avg(&samples[third..(2 * third).max(third)], |s| s.0),
        avg(&samples[(2 * third).min(samples.len())..], |s| s.0),
        pulse_model::process::peak_rss_bytes().unwrap_or(0) as f64 / 1e6,
        samples.iter().map(|s| s.1).fold(0.0, f64::max),
        samples.last().map_or(0.0, |s| s.1)
    );
    println!("{fresh}");
    Ok(ExitCode::SUCCESS)
}

/// (events counted by the dataflow, summed consumer lag, watermark delay of the first domain).
fn figures(registry: &Registry) -> (f64, f64, f64) {
    let (mut counted, mut lag, mut delay) = (0.0, 0.0, 0.0);
    for family in registry.gather() {
        for m in family.get_metric() {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
            match family.name() {
                "pulse_dataflow_events_total" if label("outcome").as_deref() == Some("counted") => counted += m.get_counter().get_value(),
                "pulse_consumer_lag" => lag += m.get_gauge().get_value(),
                "pulse_watermark_delay_seconds" if label("domain").as_deref() == Some("rides") => delay = m.get_gauge().get_value(),
                _ => {}
            }
        }
    }
    (counted, lag, delay)
}
