//! `pulse demo`: the whole pipeline in one process. Kafka is librdkafka's
//! in-process mock cluster (or `--kafka` brokers), ClickHouse the local stack's
//! (or `--clickhouse-url`); ingest on :8081, api on :8080, sink, dataflow and a
//! load generator with a cancellation surge in one city after a minute. The
//! terminal shows the newest window per city, refreshed every second.

use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::{CITIES, GenConfig};
use pulse_kafka::KafkaConfig;
use pulse_model::{Spec, parse_duration};
use pulse_ops::prometheus::Registry;
use pulse_ops::{ServiceContext, Shutdown};
use pulse_testkit::{Pipeline, PipelineConfig};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde::Deserialize;

use crate::cli::{ClickHouseArgs, Global};

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Use these Kafka brokers instead of the embedded mock cluster.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Stop after this long (e.g. 2m); runs until Ctrl-C otherwise.
    #[arg(long)]
    pub duration: Option<String>,
    /// Events per second the load generator sends (all domains together).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Send nothing: feed the pipeline yourself (e.g. with curl).
    #[arg(long)]
    pub no_load: bool,
    /// City whose riders start cancelling 45% of their rides.
    #[arg(long, default_value = "Paris")]
    pub surge_city: String,
    /// When the surge starts.
    #[arg(long, default_value = "60s")]
    pub surge_after: String,
    /// How long the surge lasts (then the city's alert resolves); `0s`: for ever.
    #[arg(long, default_value = "10m")]
    pub surge_for: String,
    /// Override the alert rules' `for` (e.g. 1m for a quick demo; the spec's otherwise).
    #[arg(long)]
    pub alert_for: Option<String>,
    /// Address of the demo's own alert receiver (an Alertmanager-format webhook that
    /// prints what it gets); ignored when PULSE_ALERT_WEBHOOK_URL is set.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub alert_receiver: SocketAddr,
    /// Write API address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub ingest_addr: SocketAddr,
    /// Read API and live page address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api_addr: SocketAddr,
    /// Print a summary line every 10 s instead of the live table.
    #[arg(long)]
    pub quiet: bool,
    /// Measure freshness: probe rides (in a city named "Probe") timed from ingest's
    /// acknowledgement to the first revision counting them; figures at the end.
    #[arg(long)]
    pub freshness: bool,
}

/// The newest window of a city, as the table shows it.
#[derive(Debug, Deserialize, clickhouse::Row)]
struct CityRow {
    city: String,
    requests: u64,
    completions: u64,
    cancellations: u64,
    cancellation_rate: Option<f64>,
    avg_fare: Option<f64>,
    unique_riders: u64,
    active_drivers: u64,
}

pub fn demo(global: &Global, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let mut spec = global.load_spec()?;
    let ch = args.clickhouse.config();
    let duration = args.duration.as_deref().map(parse_duration).transpose().map_err(|e| anyhow::anyhow!("--duration: {e}"))?.map(|d| d.as_std());
    let surge_after = parse_duration(&args.surge_after).map_err(|e| anyhow::anyhow!("--surge-after: {e}"))?;
    let surge_city =
        CITIES.iter().position(|c| c.eq_ignore_ascii_case(&args.surge_city)).with_context(|| format!("--surge-city must be one of {}", CITIES.join(", ")))?;
    let surge_for = parse_duration(&args.surge_for).map_err(|e| anyhow::anyhow!("--surge-for: {e}"))?;
    let rt = crate::services::runtime()?;
    let shutdown = Shutdown::new();
    rt.block_on(async { shutdown.on_signals() });

    // Alerts: the spec's rules (optionally a shorter `for`), delivered to
    // PULSE_ALERT_WEBHOOK_URL or else to the demo's own receiver.
    if let Some(f) = &args.alert_for {
        let f = parse_duration(f).map_err(|e| anyhow::anyhow!("--alert-for: {e}"))?;
        for a in &mut spec.alerts {
            let window = spec.metrics[a.metric].window;
            a.for_ = f;
            a.resolve_after = pulse_model::Millis(f.ms() + window.ms());
        }
    }
    let external_webhook = std::env::var(pulse_dataflow::alerts::WEBHOOK_ENV).ok().filter(|u| !u.trim().is_empty());
    let receiver = match &external_webhook {
        Some(_) => None,
        None => {
            let r = rt.block_on(receiver::Receiver::start(args.alert_receiver)).context("starting the demo's alert receiver")?;
            for a in &mut spec.alerts {
                a.webhook = Some(r.url.clone());
            }
            Some(r)
        }
    };
    let spec = Arc::new(spec);

    // Kafka: embedded (the pipeline creates the topics on the mock) or external (topics through the admin API).
    let external_kafka = match &args.kafka {
        None => None,
        Some(brokers) => {
            let kafka = KafkaConfig::from_env(brokers.clone());
            rt.block_on(async {
                let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
                pulse_kafka::ensure_topics(&admin, &pulse_kafka::plan_topics(&spec)).await.map_err(anyhow::Error::from)
            })?;
            Some(kafka)
        }
    };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec))
        .with_context(|| format!("migrating ClickHouse at {} (is it up? `scripts/stack up clickhouse`)", ch.url))?;

    // Keys of this run: one to write, one to read (secure by default, like `pulse ingest` and `pulse api`).
    let write_key = pulse_ops::auth::generate_key().context("generating the demo's write key")?;
    let read_key = pulse_ops::auth::generate_key().context("generating the demo's read key")?;

    // The services.
    let dataflow_registry = Registry::new();
    let services = PipelineConfig {
        kafka: external_kafka,
        ingest: Some(pulse_ingest::IngestConfig {
            addr: args.ingest_addr,
            keys: pulse_ingest::ApiKeys::new([&write_key]),
            rate_limit: Some(pulse_ingest::config::DEFAULT_RATE_LIMIT),
            ..Default::default()
        }),
        sink: Some(Default::default()),
        dataflow: Some((DataflowConfig { cluster: Cluster::Process { workers: 1 }, ..Default::default() }, dataflow_registry.clone())),
        api: Some(crate::api_cmd::embedded_config(&spec, pulse_api::auth::ApiKeys::new([&read_key]), args.api_addr)?),
    };
    let pipeline = Pipeline::start(rt.handle(), &spec, &ch, services, shutdown.clone())?;
    let kafka = pipeline.kafka.clone();

    let load_task = (!args.no_load).then(|| {
        let generator = GenConfig {
            start_ms: pulse_model::now_ms(),
            rate: args.rate,
            surge_after_ms: Some(surge_after.ms()),
            surge_city,
            disorder_ms: 2_000,
            ..GenConfig::default()
        };
        // The surge ends: a second phase of load (another seed, so new ride ids) without it.
        let surge_ends = (surge_for.ms() > 0).then(|| Duration::from_millis((surge_after.ms() + surge_for.ms()).max(0) as u64));
        let first_duration = match (surge_ends, duration) {
            (Some(e), Some(d)) => Some(e.min(d)),
            (e, d) => e.or(d),
        };
        let cfg = pulse_bench::loadgen::LoadgenConfig {
            generator: generator.clone(),
            events: None,
            duration: first_duration,
            rate: Some(args.rate),
            concurrency: 8,
            batch: 50,
            progress: false,
        };
        let url = format!("http://{}", args.ingest_addr);
        let (shutdown, key, rate) = (shutdown.clone(), write_key.clone(), args.rate);
        rt.spawn(async move {
            let client = pulse_client::Client::new(&url, None, Some(&key))?;
            client.wait_until_ready(Duration::from_secs(30)).await?;
            let report = pulse_bench::loadgen::run(pulse_bench::loadgen::Target::Http(client.clone()), cfg, shutdown.clone()).await?;
            let Some(ends) = surge_ends else { return Ok(report) };
            if shutdown.is_triggered() || duration.is_some_and(|d| d <= ends) {
                return Ok(report);
            }
            print!("{report}");
            println!("demo: the surge ends; its alert resolves once the windows show it");
            let after = GenConfig { start_ms: pulse_model::now_ms(), seed: generator.seed.wrapping_add(1), surge_after_ms: None, ..generator };
            let rest = duration.map(|d| d.saturating_sub(ends));
            let cfg = pulse_bench::loadgen::LoadgenConfig {
                generator: after,
                events: None,
                duration: rest,
                rate: Some(rate),
                concurrency: 8,
                batch: 50,
                progress: false,
            };
            pulse_bench::loadgen::run(pulse_bench::loadgen::Target::Http(client), cfg, shutdown).await.map_err(anyhow::Error::from)
        })
    });

    // The freshness probes send without a key: they get a loopback-only ingest of their own, on an ephemeral port.
    let freshness = if args.freshness {
        let ctx = ServiceContext::new(rt.handle().clone(), shutdown.clone());
        let probe_ingest = pulse_ingest::Ingest::new(Arc::clone(&spec), &kafka, pulse_ingest::IngestConfig::default(), ctx)?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding the probes' ingest")?;
        let url = format!("http://{}", listener.local_addr()?);
        rt.spawn(pulse_ingest::serve(probe_ingest, listener));
        Some(crate::freshness::Freshness::start(&rt, &url, &kafka, &spec.pipeline.aggregated_topic, &shutdown))
    } else {
        None
    };
    println!(
        "Pulse demo: write API http://{}  read API + live page http://{}/  ClickHouse {} (database {})",
        args.ingest_addr, args.api_addr, ch.url, ch.database
    );
    println!("Keys of this run (new at every start): write {write_key}  read {read_key}");
    println!("  curl -H 'Authorization: Bearer {write_key}' -H 'Content-Type: application/json' http://{}/v1/events/rides -d @ride.json", args.ingest_addr);
    println!("  curl -H 'Authorization: Bearer {read_key}' http://{}/v1/metrics/city_metrics/latest", args.api_addr);
    println!("  live page: http://{}/ (paste the read key)", args.api_addr);
    for a in &spec.alerts {
        let to = match (&external_webhook, &receiver) {
            (Some(url), _) => format!("webhook {url} (PULSE_ALERT_WEBHOOK_URL)"),
            (None, Some(r)) => format!("webhook {} (the demo's receiver: deliveries are printed)", r.url),
            (None, None) => "no webhook".to_string(),
        };
        println!(
            "Alert `{}` ({} {} {} for {}): {to}; topic {}; table {}.pulse_alerts; GET http://{}/v1/alerts",
            a.name,
            spec.metrics[a.metric].aggregates[a.condition.aggregate].name,
            a.condition.op.symbol(),
            a.condition.value,
            a.for_,
            spec.pipeline.alerts_topic,
            ch.database,
            args.api_addr
        );
    }
    println!("Ctrl-C stops everything.");
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal() && !args.quiet;
    let client = ch.client();
    let mut last_events = 0.0;
    let mut last_at = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    while !shutdown.is_triggered() {
        if duration.is_some_and(|d| started.elapsed() >= d) {
            shutdown.trigger();
            break;
        }
        rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => {}
            }
        });
        let rows: Vec<CityRow> = rt.block_on(newest_windows(&client)).unwrap_or_default();
        let figures = Figures::read(&dataflow_registry, &spec);
        let now = Instant::now();
        let rate = (figures.events - last_events) / now.duration_since(last_at).as_secs_f64().max(0.001);
        (last_events, last_at) = (figures.events, now);
        if tty {
            print!("\x1b[2J\x1b[H");
            println!("Pulse demo: newest 5-minute window per city (live revisions, final when closed)   up {:.0}s", started.elapsed().as_secs_f64());
            println!("write http://{}   read http://{}   live page http://{}/   Ctrl-C stops", args.ingest_addr, args.api_addr, args.api_addr);
            println!("write key {write_key}   read key {read_key}\n");
            println!(
                "{:<11} {:>9} {:>11} {:>13} {:>10} {:>9} {:>8} {:>8}",
                "city", "requests", "completions", "cancellations", "cancel %", "avg fare", "riders", "drivers"
            );
            for r in &rows {
                let rate = r.cancellation_rate.unwrap_or(0.0);
                let mark = if rate > 0.3 { "  << above 30%" } else { "" };
                println!(
                    "{:<11} {:>9} {:>11} {:>13} {:>9.1}% {:>9.2} {:>8} {:>8}{mark}",
                    r.city,
                    r.requests,
                    r.completions,
                    r.cancellations,
                    rate * 100.0,
                    r.avg_fare.unwrap_or(0.0),
                    r.unique_riders,
                    r.active_drivers
                );
            }
            println!(
                "\npipeline: {:.0} events/s into the dataflow, watermark delay {:.1} s, late events {}, windows final {}",
                rate, figures.watermark_delay, figures.late, figures.finals
            );
            if let Some(r) = &receiver {
                let (active, recent) = r.snapshot();
                println!("\nalerts firing: {}", if active.is_empty() { "none".to_string() } else { active.join(", ") });
                for line in recent.iter().rev().take(5).rev() {
                    println!("  {line}");
                }
            }
            let _ = std::io::stdout().flush();
        } else if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let hot: Vec<String> = rows.iter().filter(|r| r.cancellation_rate.unwrap_or(0.0) > 0.3).map(|r| r.city.clone()).collect();
            let firing = receiver.as_ref().map(|r| r.snapshot().0).unwrap_or_default();
            println!(
                "[{:>4.0}s] {} cities, {:.0} events/s, watermark delay {:.1} s, late {}, finals {}, above 30%: {:?}, alerts firing: {:?}",
                started.elapsed().as_secs_f64(),
                rows.len(),
                rate,
                figures.watermark_delay,
                figures.late,
                figures.finals,
                hot,
                firing
            );
        }
    }
    println!("stopping: draining the pipeline");
    if let Some(task) = load_task {
        match rt.block_on(task) {
            Ok(Ok(report)) => print!("{report}"),
            Ok(Err(e)) => eprintln!("load generator: {e:#}"),
            Err(e) => eprintln!("load generator: {e}"),
        }
    }
    if let Some(f) = freshness {
        println!("{}", f.finish(&rt));
    }
    if let Some(r) = &receiver {
        println!("{}", r.summary());
    }
    if let Err(e) = pipeline.stop() {
        eprintln!("demo: {e}");
    }
    println!("dataflow: {:.0} events counted", Figures::read(&dataflow_registry, &spec).events);
    let peak = pulse_model::process::peak_rss_bytes().unwrap_or(0);
    println!("peak RSS {:.0} MB", peak as f64 / 1e6);
    Ok(ExitCode::SUCCESS)
}

async fn newest_windows(client: &clickhouse::Client) -> Result<Vec<CityRow>, clickhouse::error::Error> {
    client
        .query(
            // argMax of a tuple keeps each newest row whole (argMax alone skips NULLs).
            "SELECT m.city AS city, tupleElement(m.newest, 1) AS requests, tupleElement(m.newest, 2) AS completions,
                    tupleElement(m.newest, 3) AS cancellations, tupleElement(m.newest, 4) AS cancellation_rate,
                    tupleElement(m.newest, 5) AS avg_fare, tupleElement(m.newest, 6) AS unique_riders, s.active_drivers AS active_drivers
             FROM (SELECT city, max(window_start) AS ws,
                          argMax((requests, completions, cancellations, cancellation_rate, avg_fare, unique_riders), window_start) AS newest
                   FROM city_metrics FINAL GROUP BY city) AS m
             LEFT JOIN (SELECT city, window_start AS ws, active_drivers FROM city_supply FINAL) AS s ON s.city = m.city AND s.ws = m.ws
             ORDER BY m.city",
        )
        .fetch_all()
        .await
}

/// Pipeline figures read off the dataflow's metrics.
struct Figures {
    events: f64,
    late: u64,
    finals: i64,
    watermark_delay: f64,
}

impl Figures {
    fn read(registry: &Registry, spec: &Spec) -> Figures {
        let mut f = Figures { events: 0.0, late: 0, finals: 0, watermark_delay: 0.0 };
        for family in registry.gather() {
            for m in family.get_metric() {
                let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
                match family.name() {
                    "pulse_dataflow_events_total" if label("outcome").as_deref() == Some("counted") => f.events += m.get_counter().get_value(),
                    "pulse_late_events_total" => f.late += m.get_counter().get_value() as u64,
                    "pulse_windows_final_total" => f.finals = m.get_gauge().get_value() as i64,
                    "pulse_watermark_delay_seconds" if label("domain").as_deref() == spec.domains.first().map(|d| d.name.as_str()) => {
                        f.watermark_delay = m.get_gauge().get_value();
                    }
                    _ => {}
                }
            }
        }
        f
    }
}

/// The demo's alert receiver: an Alertmanager-format webhook endpoint that
/// prints each notification and times it from the row that decided it (the
/// `x-pulse-row-emitted-at` header) to its arrival.
mod receiver {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::routing::post;

    #[derive(Default)]
    struct State {
        /// city (group) -> "rule since startsAt"
        active: BTreeMap<String, String>,
        log: Vec<String>,
        latencies_ms: Vec<i64>,
        received: usize,
    }

    pub struct Receiver {
        pub url: String,
        state: Arc<Mutex<State>>,
    }

    impl Receiver {
        pub async fn start(addr: SocketAddr) -> std::io::Result<Receiver> {
            let state: Arc<Mutex<State>> = Arc::default();
            let st = Arc::clone(&state);
            let app = Router::new().route(
                "/alerts",
                post(move |headers: HeaderMap, body: axum::body::Bytes| {
                    let st = Arc::clone(&st);
                    async move {
                        let now = pulse_model::now_ms();
                        let emitted = headers.get(pulse_alert::webhook::ROW_EMITTED_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
                        let Ok(msg) = serde_json::from_slice::<pulse_alert::WebhookMessage>(&body) else {
                            return axum::http::StatusCode::BAD_REQUEST;
                        };
                        let mut s = match st.lock() {
                            Ok(s) => s,
                            Err(p) => p.into_inner(),
                        };
                        s.received += 1;
                        if let Some(e) = emitted.filter(|e| *e > 0) {
                            s.latencies_ms.push(now - e);
                        }
                        for a in &msg.alerts {
                            let group: Vec<String> = a
                                .labels
                                .iter()
                                .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "metric" | "severity" | "team"))
                                .map(|(_, v)| v.clone())
                                .collect();
                            let group = group.join(",");
                            let name = a.labels.get("alertname").cloned().unwrap_or_default();
                            let summary = a.annotations.get("summary").cloned().unwrap_or_default();
                            let latency = emitted.map(|e| format!(" ({} ms after its row)", now - e)).unwrap_or_default();
                            let line = format!("{} {} {name} {group}: {summary}{latency}", chrono_now(now), a.status.to_uppercase());
                            println!("alert receiver: {line}");
                            if a.status == "firing" {
                                s.active.insert(group, format!("{name} since {}", a.starts_at));
                            } else {
                                s.active.remove(&group);
                            }
                            s.log.push(line);
                        }
                        axum::http::StatusCode::OK
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let url = format!("http://{}/alerts", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("demo alert receiver: {e}");
                }
            });
            Ok(Receiver { url, state })
        }

        /// (active alerts as "group (rule since ...)", the log of deliveries)
        pub fn snapshot(&self) -> (Vec<String>, Vec<String>) {
            let s = match self.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            (s.active.iter().map(|(g, what)| format!("{g} ({what})")).collect(), s.log.clone())
        }

        pub fn summary(&self) -> String {
            let s = match self.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let mut l = s.latencies_ms.clone();
            l.sort_unstable();
            let pct = |q: f64| l.get(((l.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
            if l.is_empty() {
                format!("alerts: {} notifications received", s.received)
            } else {
                format!(
                    "alerts: {} notifications received; from the row that decided each to the receiver: p50 {} ms, p99 {} ms, max {} ms",
                    s.received,
                    pct(0.5),
                    pct(0.99),
                    l[l.len() - 1]
                )
            }
        }
    }

    fn chrono_now(ms: i64) -> String {
        pulse_alert::payload::rfc3339_ms(ms)
    }
}
