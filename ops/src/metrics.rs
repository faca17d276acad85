//! Metric registration that fails with a typed error instead of panicking: a
//! metric with an invalid name, label or bucket list, or a name the registry
//! already holds, is a programming error that a service reports at start-up.

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// A metric that could not be created or registered.
#[derive(Debug, thiserror::Error)]
#[error("metric `{name}`: {source}")]
pub struct MetricsError {
    pub name: String,
    #[source]
    pub source: prometheus::Error,
}

/// Creates metrics and registers them on one registry.
#[derive(Clone, Copy)]
pub struct Registrar<'a> {
    registry: &'a Registry,
}

impl<'a> Registrar<'a> {
    pub fn new(registry: &'a Registry) -> Registrar<'a> {
        Registrar { registry }
    }

    /// Registers `metric` (the result of creating it) under `name`.
    pub fn register<M: Collector + Clone + 'static>(&self, name: &str, metric: prometheus::Result<M>) -> Result<M, MetricsError> {
        let error = |source| MetricsError { name: name.to_string(), source };
        let metric = metric.map_err(error)?;
        self.registry.register(Box::new(metric.clone())).map_err(error)?;
        Ok(metric)
    }

    pub fn int_counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.register(name, IntCounter::new(name, help))
    }

    pub fn int_counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricsError> {
        self.register(name, Gauge::new(name, help))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
        self.register(name, GaugeVec::new(Opts::new(name, help), labels))
    }

    pub fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.register(name, IntGauge::new(name, help))
    }

    pub fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
        self.register(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    /// `pulse_consumer_lag{service, topic, partition}`: the one lag gauge every consuming service exports.
    pub fn consumer_lag(&self) -> Result<IntGaugeVec, MetricsError> {
        self.int_gauge_vec("pulse_consumer_lag", "Records behind the partition's end, per service, topic and partition", &["service", "topic", "partition"])
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, MetricsError> {
        self.register(name, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)))
    }

    pub fn histogram_vec(&self, name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]) -> Result<HistogramVec, MetricsError> {
        self.register(name, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_reports_duplicates_and_invalid_metrics() {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        let c = r.int_counter_vec("pulse_test_total", "A test counter", &["kind"]).expect("registers");
        c.with_label_values(&["a"]).inc();
        assert_eq!(registry.gather().len(), 1);
        let dup = r.int_counter_vec("pulse_test_total", "A test counter", &["kind"]).expect_err("a duplicate");
        assert_eq!(dup.name, "pulse_test_total");
        assert!(dup.to_string().contains("pulse_test_total"), "{dup}");
        assert!(r.int_gauge("not a valid name", "help").is_err());
        assert!(r.histogram("pulse_test_seconds", "help", vec![2.0, 1.0]).is_err(), "buckets must increase");
    }
}
