//! Prometheus metrics of the dataflow job.

use pulse_ops::prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use pulse_ops::{MetricsError, Registrar};

use crate::types::{WM_END, WM_START};

#[derive(Clone)]
pub struct JobMetrics {
    /// Records by domain and outcome: counted, stale, dead_lettered.
    pub events: IntCounterVec,
    pub late: IntCounterVec,
    /// Seconds between now and the job's event-time watermark, per domain.
    pub watermark_delay: GaugeVec,
    pub watermark: IntGaugeVec,
    pub finals: IntGauge,
    pub revisions: IntGauge,
    pub ignored: IntGauge,
    pub open_windows: IntGauge,
    pub retained: IntGaugeVec,
    pub state_bytes: IntGaugeVec,
    pub open_events: IntGaugeVec,
    pub rows_written: IntCounterVec,
    pub lag: IntGaugeVec,
    /// Groups with an open window on this process's workers, per metric and kind (admitted, all).
    pub open_groups: IntGaugeVec,
    /// Events counted in a metric's overflow group (`max_groups` reached).
    pub overflow: IntGaugeVec,
    /// When an epoch last completed (ms since the Unix epoch): the job's heartbeat.
    pub epoch_completed_ms: IntGauge,
}

impl JobMetrics {
    pub fn new(registry: &Registry) -> Result<JobMetrics, MetricsError> {
        let r = Registrar::new(registry);
        Ok(JobMetrics {
            events: r.int_counter_vec(
                "pulse_dataflow_events_total",
                "Records the dataflow read, by domain and outcome (counted, stale, duplicate, dead_lettered)",
                &["domain", "outcome"],
            )?,
            late: r.int_counter_vec("pulse_late_events_total", "Events whose every window was already closed", &["domain"])?,
            watermark_delay: r.gauge_vec("pulse_watermark_delay_seconds", "Wall clock minus the job's event-time watermark", &["domain"])?,
            watermark: r.int_gauge_vec("pulse_watermark_ms", "The job's event-time watermark (ms since the epoch)", &["domain"])?,
            finals: r.int_gauge("pulse_windows_final_total", "Windows emitted as final (this process)")?,
            revisions: r.int_gauge("pulse_window_revisions_total", "Live window revisions emitted (this process)")?,
            ignored: r.int_gauge("pulse_closed_window_changes_total", "Changes that reached an already closed window and were ignored")?,
            open_windows: r.int_gauge("pulse_open_windows", "Windows currently open in the emitters of this process")?,
            retained: r.int_gauge_vec("pulse_dataflow_retained", "State kept for open windows: live_events (latest versions of mutable domains)", &["kind"])?,
            state_bytes: r.int_gauge_vec(
                "pulse_dataflow_state_bytes",
                "Bytes of window state (panes, distinct values, numbers) per metric and worker",
                &["metric", "worker"],
            )?,
            open_events: r.int_gauge_vec("pulse_dataflow_open_events", "Events held in open panes per metric and worker", &["metric", "worker"])?,
            rows_written: r.int_counter_vec(
                "pulse_metric_rows_total",
                "Metric rows made durable, by metric and kind (final, revision)",
                &["metric", "kind"],
            )?,
            lag: r.consumer_lag()?,
            open_groups: r.int_gauge_vec(
                "pulse_dataflow_open_groups",
                "Groups with an open window, per metric: admitted (at most max_groups per worker) and all (overflowed ones too)",
                &["metric", "kind"],
            )?,
            epoch_completed_ms: r.int_gauge("pulse_dataflow_epoch_completed_ms", "When an epoch last completed on this process (ms since the Unix epoch)")?,
            overflow: r.int_gauge_vec(
                "pulse_dataflow_overflow_events",
                "Events counted in a metric's overflow group since start (max_groups reached)",
                &["metric"],
            )?,
        })
    }

    pub fn observe_emitter(&self, stats: &crate::emit::EmitterStats, metrics: &[pulse_model::Metric], worker: usize) {
        self.finals.set(stats.finals as i64);
        self.revisions.set(stats.revisions as i64);
        self.ignored.set(stats.ignored as i64);
        self.open_windows.set(stats.open_windows as i64);
        let worker = worker.to_string();
        for (m, size) in metrics.iter().zip(&stats.state) {
            self.state_bytes.with_label_values(&[&m.name, &worker]).set(size.bytes as i64);
            self.open_events.with_label_values(&[&m.name, &worker]).set(size.events as i64);
        }
    }

    pub fn observe_watermark(&self, domain: &str, wm: i64) {
        if wm <= WM_START || wm >= WM_END {
            return;
        }
        self.watermark.with_label_values(&[domain]).set(wm);
        let now = crate::graph::now_ms();
        self.watermark_delay.with_label_values(&[domain]).set((now - wm) as f64 / 1000.0);
    }
}
