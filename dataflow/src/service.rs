//! `pulse dataflow` as a service: timely workers (and processes) reading Kafka,
//! an async runtime delivering their rows, the operations endpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pulse_clickhouse::{ClickHouseConfig, Writer, WriterMetrics};
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::{MetricsError, ServiceContext};
use rdkafka::producer::FutureProducer;

use crate::job::{NoSource, RecordSource, WorkerConfig, WorkerSummary, run_worker};
use crate::kafka::KafkaSource;
use crate::kafka::Resume;
use crate::lease::Lease;
use crate::metrics::JobMetrics;
use crate::output::{Output, report_stats};
use crate::progress;
use pulse_clickhouse::schema::PROGRESS_TABLE;

/// Where the timely workers run.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// `workers` threads in this process.
    Process { workers: usize },
    /// Timely's cluster mode: `workers` threads in each of the processes listed
    /// in `addresses` (host:port), this one being number `process`.
    Cluster { workers: usize, process: usize, addresses: Vec<String> },
}

impl Cluster {
    fn timely_config(&self) -> timely::Config {
        match self {
            Cluster::Process { workers } => timely::Config::process((*workers).max(1)),
            Cluster::Cluster { workers, process, addresses } => timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: (*workers).max(1),
                    process: *process,
                    addresses: addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataflowConfig {
    pub group: String,
    pub cluster: Cluster,
    pub instance: String,
    pub stats_interval: Duration,
    /// Overrides of the spec's emit interval / idle timeout (tests).
    pub emit_interval: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// `/health` fails when no epoch has completed for this long.
    pub stall_timeout: Duration,
    /// The consumer group's lease expires when not renewed for this long (see `lease`).
    pub lease_ttl: Duration,
    /// Topic metadata is read again this often: partitions added while the job runs are picked up.
    pub metadata_interval: Duration,
}

impl Default for DataflowConfig {
    fn default() -> Self {
        DataflowConfig {
            group: "pulse-dataflow".into(),
            cluster: Cluster::Process { workers: 1 },
            instance: "dataflow".into(),
            stats_interval: Duration::from_secs(10),
            emit_interval: None,
            idle_timeout: None,
            stall_timeout: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(10),
            metadata_interval: crate::kafka::METADATA_INTERVAL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("timely: {0}")]
    Timely(String),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading the job's progress from ClickHouse table {table} (run `pulse migrate`): {source}")]
    Progress { table: &'static str, source: clickhouse::error::Error },
    #[error(
        "domain `{domain}`: consumer group `{group}` has committed offsets but Pulse has no record of the job's progress \
         (no row in ClickHouse table {table}, no watermark in the commit metadata); resuming would re-finalise closed \
         windows from the few records it replays. Restore the table, or start from scratch with a new group \
         (--group / PULSE_DATAFLOW_GROUP) or with the group's offsets reset to the earliest"
    )]
    UnknownProgress { domain: String, group: String, table: &'static str },
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    #[error("rebuilding a new or changed metric from the raw tables: {0}")]
    Rebuild(crate::backfill::BackfillError),
    #[error("another instance took consumer group `{0}` over; this one stopped committing and ended")]
    Fenced(String),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Runs the job until `ctx.shutdown` fires (then drains the current epoch, waits
/// for its rows to be durable, commits and returns). Blocks the calling thread;
/// `ctx.rt` runs the outputs and the operations server (on `ctx.metrics_addr`, when set).
pub fn run(
    spec: Arc<Spec>,
    kafka: &KafkaConfig,
    clickhouse: &ClickHouseConfig,
    cfg: DataflowConfig,
    ctx: ServiceContext,
) -> Result<Vec<WorkerSummary>, DataflowError> {
    let (shutdown, rt) = (ctx.shutdown.clone(), &ctx.rt);
    let metrics = JobMetrics::new(&ctx.registry)?;
    {
        // Alive while epochs complete: a worker that stopped making progress fails /health.
        let (completed, stall_ms) = (metrics.epoch_completed_ms.clone(), i64::try_from(cfg.stall_timeout.as_millis()).unwrap_or(i64::MAX));
        ctx.ready.set_liveness(move || {
            let last = completed.get();
            let silent = crate::graph::now_ms() - last;
            if last > 0 && silent > stall_ms { Err(format!("no epoch has completed for {} s", silent / 1000)) } else { Ok(()) }
        });
    }
    let writer = Writer::new(clickhouse, WriterMetrics::new(&ctx.registry)?);
    let producer: FutureProducer = kafka.reliable_producer().create()?;
    let mut output = Output::new(Arc::clone(&spec), writer.clone(), clickhouse, producer, metrics.clone(), shutdown.clone(), &cfg.group);
    let holding = Arc::new(AtomicBool::new(false));
    ctx.spawn_ops_server("dataflow");
    rt.spawn(report_stats(
        Arc::clone(&spec),
        writer.clone(),
        clickhouse.database.clone(),
        metrics.clone(),
        cfg.instance.clone(),
        cfg.stats_interval,
        shutdown.clone(),
    ));
    {
        let (writer, holding) = (writer.clone(), Arc::clone(&holding));
        // Ready once it holds the group and ClickHouse answers (waiting for the lease is not ready).
        ctx.spawn_readiness(Duration::from_secs(2), move || {
            let (writer, holding) = (writer.clone(), Arc::clone(&holding));
            async move { holding.load(Ordering::Acquire) && writer.ping().await }
        });
    }

    // One instance of the job per consumer group: wait for the group's lease, then
    // keep it. In cluster mode process 0 holds it for the job (the others wait
    // for process 0 to connect, and end with it).
    let lease = match cfg.cluster {
        Cluster::Cluster { process, .. } if process != 0 => None,
        _ => Some(rt.block_on(Lease::acquire(clickhouse, &writer, &cfg.group, &cfg.instance, cfg.lease_ttl, &shutdown))?),
    };
    if let Some(lease) = &lease {
        output.fence = Arc::clone(&lease.fenced);
        rt.spawn(lease.clone().keep(shutdown.clone()));
    }
    holding.store(true, Ordering::Release);
    // Where the job got to, as recorded with its outputs (not only in commit metadata).
    let progress = rt
        .block_on(progress::load(writer.client(), &clickhouse.database, &cfg.group, &spec))
        .map_err(|source| DataflowError::Progress { table: PROGRESS_TABLE, source })?;
    for (d, p) in spec.domains.iter().zip(&progress) {
        tracing::info!(domain = %d.name, group = %cfg.group, closed = ?p, "recorded progress");
    }
    // Alert rules: their state as recorded with the job's outputs (only process 0
    // could not know the groups of the others: every process evaluates its own groups).
    if !spec.alerts.is_empty() {
        let stage = rt
            .block_on(crate::alerts::AlertStage::start(
                &output,
                matches!(cfg.cluster, Cluster::Process { .. }),
                match &cfg.cluster {
                    Cluster::Process { workers } | Cluster::Cluster { workers, .. } => *workers,
                },
            ))
            .map_err(|source| DataflowError::Progress { table: pulse_clickhouse::schema::ALERTS_TABLE, source })?;
        output.alerts = Some(stage);
    }
    let revision_floor = rt
        .block_on(progress::revision_floor(writer.client(), &clickhouse.database, &spec))
        .map_err(|source| DataflowError::Progress { table: "metric tables", source })?;
    // Each metric resumes from its own progress; one that is new or whose
    // definition changed is first rebuilt from the raw tables up to where its
    // domain got (in cluster mode, process 0 does it for the job).
    let starts = rt
        .block_on(progress::metric_starts(writer.client(), &clickhouse.database, &cfg.group, &spec))
        .map_err(|source| DataflowError::Progress { table: PROGRESS_TABLE, source })?;
    let mut metric_floor = Vec::with_capacity(spec.metrics.len());
    let rebuilds_here = lease.is_some();
    for (m, (metric, start)) in spec.metrics.iter().zip(&starts).enumerate() {
        let floor = match *start {
            progress::MetricStart::Fresh => {
                tracing::info!(metric = %metric.name, "no recorded progress: starting from the committed offsets");
                crate::types::WM_START
            }
            progress::MetricStart::Resume(closed) => {
                tracing::info!(metric = %metric.name, final_below = closed, "resuming (definition unchanged)");
                closed
            }
            progress::MetricStart::Rebuild(closed) => {
                // Windows [s, s + size) with s + size <= closed, within the metric's retention.
                let (from, to) = (closed.saturating_sub(metric.retention.ms()), closed.saturating_sub(metric.window.ms()).saturating_add(1));
                if rebuilds_here {
                    let written = rt
                        .block_on(crate::backfill::backfill(
                            &spec,
                            m,
                            clickhouse,
                            &writer,
                            Some(&output.producer),
                            (from, to),
                            revision_floor.saturating_add(1),
                        ))
                        .map_err(DataflowError::Rebuild)?;
                    tracing::info!(metric = %metric.name, windows = written, from, to, "new or changed definition: closed windows rebuilt from the raw tables");
                }
                closed
            }
        };
        metric_floor.push(floor);
    }
    let derived_seed = Arc::new(derived_start(&spec, clickhouse, &output, rebuilds_here, revision_floor, &mut metric_floor, rt)?);
    // The workers poll this flag; the shutdown signal sets it.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, shutdown) = (Arc::clone(&stop), shutdown.clone());
        rt.spawn(async move {
            shutdown.wait().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let summaries: Arc<Mutex<Vec<WorkerSummary>>> = Arc::new(Mutex::new(Vec::new()));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let (summaries2, errors2) = (Arc::clone(&summaries), Arc::clone(&errors));
    let kafka = kafka.clone();
    let rt2 = rt.clone();
    let group = cfg.group.clone();
    let fence = Arc::clone(&output.fence);
    let emit_interval = cfg.emit_interval;
    let idle_timeout = cfg.idle_timeout;
    let metadata_interval = cfg.metadata_interval;
    if matches!(cfg.cluster, Cluster::Cluster { .. }) {
        end_process_when_a_peer_is_lost();
    }
    let guards = timely::execute(cfg.cluster.timely_config(), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        // Every worker must build the dataflow, even one whose source failed: it then
        // reads nothing and the stop flag drains the job.
        let fail = |e: String| {
            tracing::error!(worker = index, "cannot start: {e}");
            if let Ok(mut errs) = errors2.lock() {
                errs.push(e);
            }
            stop.store(true, Ordering::Relaxed);
        };
        let (mut source, start): (Box<dyn RecordSource>, Vec<i64>) =
            match KafkaSource::new(&kafka, &group, &spec, index, peers, Some(output.metrics.lag.clone())) {
                Ok((s, resume)) => match resume_from(&spec, &group, &resume, &progress) {
                    Ok(start) => (Box::new(s.with_fence(Arc::clone(&fence)).with_metadata_interval(metadata_interval)), start),
                    Err(e) => {
                        fail(e.to_string());
                        (Box::new(NoSource), Vec::new())
                    }
                },
                Err(e) => {
                    fail(e.to_string());
                    (Box::new(NoSource), Vec::new())
                }
            };
        let mut sink = output.spawn(&rt2);
        let mut wcfg = WorkerConfig::live(&spec);
        wcfg.start = start;
        wcfg.revision_floor = revision_floor;
        wcfg.metric_floor = metric_floor.clone();
        wcfg.derived_seed = Arc::clone(&derived_seed);
        if let Some(e) = emit_interval {
            wcfg.emit_interval = e;
        }
        if let Some(i) = idle_timeout {
            wcfg.idle_timeout = Some(i);
        }
        let summary = run_worker(worker, Arc::clone(&spec), source.as_mut(), &mut sink, &wcfg, &output.metrics, &stop);
        if let Ok(mut s) = summaries2.lock() {
            s.push(summary);
        }
    })
    .map_err(DataflowError::Timely)?;
    // A worker that panicked fails the whole job (an orchestrator restarts it whole).
    let failed: Vec<String> = guards.join().into_iter().filter_map(Result::err).collect();
    if let Some(lease) = &lease {
        if lease.is_fenced() {
            return Err(DataflowError::Fenced(cfg.group.clone()));
        }
        rt.block_on(lease.release());
    }
    if let Some(e) = failed.first() {
        return Err(DataflowError::Timely(format!("{} worker(s) failed: {e}", failed.len())));
    }
    if let Some(e) = errors.lock().ok().and_then(|e| e.first().cloned()) {
        return Err(DataflowError::Timely(e));
    }
    let out = summaries.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(out)
}

/// Where each derived metric starts. Windows every input closed are final:
/// those its own progress does not cover yet are rebuilt from the inputs'
/// stored finals (process 0 writes them). Windows only some inputs closed get
/// those inputs' stored finals as the join's seed (returned); the others'
/// windows come again from their rebuilt stores.
fn derived_start(
    spec: &Spec,
    clickhouse: &ClickHouseConfig,
    output: &Output,
    rebuilds_here: bool,
    revision_floor: u64,
    metric_floor: &mut [i64],
    rt: &tokio::runtime::Handle,
) -> Result<Vec<crate::derived::InputRow>, DataflowError> {
    let mut seed = Vec::new();
    for (d, plan) in crate::derived::DerivedPlan::all(spec).iter().enumerate() {
        let size = plan.size;
        let all_closed = crate::derived::limit(plan, |m| metric_floor[m]);
        let own = metric_floor[plan.metric];
        // Windows every input closed and the derived metric did not: rebuilt (none
        // when an input or the derived metric has no progress yet).
        if own > crate::types::WM_START && all_closed > crate::types::WM_START && own < all_closed {
            if rebuilds_here {
                let range = (own.saturating_sub(size).saturating_add(1), all_closed.saturating_sub(size).saturating_add(1));
                let written = rt
                    .block_on(crate::backfill::backfill(
                        spec,
                        plan.metric,
                        clickhouse,
                        &output.writer,
                        Some(&output.producer),
                        range,
                        revision_floor.saturating_add(1),
                    ))
                    .map_err(DataflowError::Rebuild)?;
                tracing::info!(metric = %spec.metrics[plan.metric].name, windows = written, "windows every input closed: rebuilt from the inputs' finals");
            }
            metric_floor[plan.metric] = all_closed;
        }
        let own = metric_floor[plan.metric];
        for (position, &input) in plan.inputs.iter().enumerate() {
            // Windows this input closed and the derived metric did not (even when the
            // derived metric or another input has no progress yet), within the retention.
            let reached = metric_floor[input];
            if reached <= own || reached <= crate::types::WM_START {
                continue;
            }
            let oldest = own.max(reached.saturating_sub(spec.metrics[plan.metric].retention.ms()));
            let (from, to) = (oldest.saturating_sub(size).saturating_add(1), reached.saturating_sub(size).saturating_add(1));
            let rows = rt.block_on(crate::backfill::stored_finals(spec, input, clickhouse, from, to)).map_err(DataflowError::Rebuild)?;
            tracing::info!(metric = %spec.metrics[plan.metric].name, input = %spec.metrics[input].name, windows = rows.len(), "seeding the join with the input's finals");
            seed.extend(rows.iter().map(|r| plan.input_row(d, position, r)));
        }
    }
    Ok(seed)
}

/// In cluster mode, a process that loses a peer (it died, or its connection
/// broke) cannot go on: timely's communication threads panic, and its workers
/// would wait for the lost peer forever. The process then ends with a non-zero
/// exit and a clear log line, so that the orchestrator restarts the job's
/// processes and they resume from the committed offsets and recorded progress.
fn end_process_when_a_peer_is_lost() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let thread = std::thread::current().name().unwrap_or_default().to_string();
            if thread.starts_with("timely:") {
                tracing::error!(thread, "lost a peer process of the timely cluster ({info}); ending this process (exit 70) so that the job restarts whole");
                std::process::exit(70);
            }
        }));
    });
}

/// The closed watermark per domain to resume from: the furthest of the recorded
/// progress and the commit metadata. Committed offsets with neither are an error:
/// the windows they passed may be final already, and nothing says which.
fn resume_from(spec: &Spec, group: &str, resume: &Resume, progress: &[Option<i64>]) -> Result<Vec<i64>, DataflowError> {
    spec.domains
        .iter()
        .enumerate()
        .map(|(d, domain)| {
            let recorded = progress.get(d).copied().flatten();
            if resume.committed[d] && !resume.from_metadata[d] && recorded.is_none() {
                return Err(DataflowError::UnknownProgress { domain: domain.name.clone(), group: group.to_string(), table: PROGRESS_TABLE });
            }
            Ok(resume.start[d].max(recorded.unwrap_or(crate::types::WM_START)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WM_START;

    #[test]
    fn resumes_from_the_furthest_known_progress_and_refuses_to_guess() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let spec = Spec::load(&path).expect("spec");
        let fresh = Resume { start: vec![WM_START; 3], from_metadata: vec![false; 3], committed: vec![false; 3] };
        assert_eq!(resume_from(&spec, "g", &fresh, &[None, None, None]).expect("a new group"), vec![WM_START; 3]);
        // The broker dropped the commit metadata: the recorded progress says where to resume.
        let no_metadata = Resume { start: vec![WM_START; 3], from_metadata: vec![false; 3], committed: vec![true, false, false] };
        assert_eq!(resume_from(&spec, "g", &no_metadata, &[Some(500), None, None]).expect("recorded")[0], 500);
        // Both known: the furthest wins (each was written only once its finals were durable).
        let both = Resume { start: vec![700, WM_START, WM_START], from_metadata: vec![true, false, false], committed: vec![true, false, false] };
        assert_eq!(resume_from(&spec, "g", &both, &[Some(500), None, None]).expect("both")[0], 700);
        // Committed offsets and nothing known: a clear error naming the way out.
        let e = resume_from(&spec, "g", &no_metadata, &[None, None, None]).expect_err("unknown progress");
        assert!(matches!(&e, DataflowError::UnknownProgress { domain, .. } if domain == "rides"), "{e}");
        assert!(e.to_string().contains("--group"), "{e}");
    }
}
