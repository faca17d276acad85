//! The pipeline in one process: the services' own library entry points on one
//! tokio runtime (the dataflow on a thread of its own), over librdkafka's mock
//! cluster or given brokers, and a given ClickHouse. `pulse demo`, `pulse soak`
//! and the whole-system tests start it here, each with the services it needs.

use std::net::SocketAddr;
use std::sync::Arc;

use pulse_api::{Api, ApiConfig};
use pulse_clickhouse::ClickHouseConfig;
use pulse_dataflow::service::DataflowConfig;
use pulse_ingest::{Ingest, IngestConfig};
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::Spec;
use pulse_ops::prometheus::Registry;
use pulse_ops::{ServiceContext, Shutdown};
use pulse_sink::service::SinkConfig;
use rdkafka::mocking::MockCluster;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Which services to run, each with its configuration (`None`: not started).
#[derive(Default)]
pub struct PipelineConfig {
    /// Brokers to use; `None` starts librdkafka's mock cluster with the spec's topics.
    pub kafka: Option<KafkaConfig>,
    /// The write API, served on `cfg.addr` (port 0: any free port).
    pub ingest: Option<IngestConfig>,
    pub sink: Option<SinkConfig>,
    /// The dataflow, with its metrics on this registry (to read its figures).
    pub dataflow: Option<(DataflowConfig, Registry)>,
    /// The read API, served on `cfg.addr`; its live stream, when configured,
    /// reads this pipeline's Kafka.
    pub api: Option<ApiConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("starting the embedded Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating the topics on the embedded Kafka: {0}")]
    Topics(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("starting ingest: {0}")]
    Ingest(#[from] pulse_ingest::IngestError),
    #[error("starting the API: {0}")]
    Api(#[from] pulse_api::ApiError),
    #[error("{service} failed: {message}")]
    Service { service: &'static str, message: String },
}

/// The running services. Stop with [`Pipeline::stop`] (or trigger `shutdown`).
pub struct Pipeline {
    pub kafka: KafkaConfig,
    pub shutdown: Shutdown,
    /// `http://addr` of the write API, when started.
    pub ingest_url: Option<String>,
    /// `http://addr` of the read API, when started.
    pub api_url: Option<String>,
    mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    dataflow: Option<std::thread::JoinHandle<Result<(), String>>>,
    rt: Handle,
}

impl Pipeline {
    /// Creates the topics (mock cluster only), then starts the configured
    /// services on `rt` until `shutdown` fires. ClickHouse must be migrated.
    /// On an error, the services started so far are told to stop.
    pub fn start(rt: &Handle, spec: &Arc<Spec>, ch: &ClickHouseConfig, cfg: PipelineConfig, shutdown: Shutdown) -> Result<Pipeline, PipelineError> {
        Pipeline::start_services(rt, spec, ch, cfg, shutdown.clone()).inspect_err(|_| shutdown.trigger())
    }

    fn start_services(rt: &Handle, spec: &Arc<Spec>, ch: &ClickHouseConfig, cfg: PipelineConfig, shutdown: Shutdown) -> Result<Pipeline, PipelineError> {
        let _guard = rt.enter();
        let (mock, kafka) = match cfg.kafka {
            Some(kafka) => (None, kafka),
            None => {
                let mock = MockCluster::new(1)?;
                create_on_mock(&mock, &plan_topics(spec)).map_err(|e| PipelineError::Topics(e.to_string()))?;
                let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
                (Some(mock), kafka)
            }
        };
        let ctx = || ServiceContext::new(rt.clone(), shutdown.clone());
        let bind = |addr: SocketAddr| rt.block_on(tokio::net::TcpListener::bind(addr)).map_err(|source| PipelineError::Bind { addr, source });
        let mut tasks = Vec::new();
        let mut ingest_url = None;
        if let Some(icfg) = cfg.ingest {
            let listener = bind(icfg.addr)?;
            ingest_url = Some(format!("http://{}", local(&listener, icfg.addr)));
            let ingest = Ingest::new(Arc::clone(spec), &kafka, icfg, ctx())?;
            let task = rt.spawn(async move { pulse_ingest::serve(ingest, listener).await.map_err(|e| e.to_string()) });
            tasks.push(("ingest", task));
        }
        if let Some(scfg) = cfg.sink {
            let (spec, kafka, ch, ctx) = (Arc::clone(spec), kafka.clone(), ch.clone(), ctx());
            let task = rt.spawn(async move { pulse_sink::service::run(spec, &kafka, &ch, scfg, ctx).await.map(|_| ()).map_err(|e| e.to_string()) });
            tasks.push(("sink", task));
        }
        let dataflow = cfg.dataflow.map(|(dcfg, registry)| {
            let (spec, kafka, ch, ctx) = (Arc::clone(spec), kafka.clone(), ch.clone(), ctx().with_registry(registry));
            std::thread::spawn(move || pulse_dataflow::service::run(spec, &kafka, &ch, dcfg, ctx).map(|_| ()).map_err(|e| e.to_string()))
        });
        let mut api_url = None;
        if let Some(mut acfg) = cfg.api {
            if let Some(stream) = &mut acfg.stream {
                stream.kafka = kafka.clone();
            }
            let listener = bind(acfg.addr)?;
            api_url = Some(format!("http://{}", local(&listener, acfg.addr)));
            let api = Api::new(Arc::clone(spec), ch, acfg, ctx())?;
            let task = rt.spawn(async move { pulse_api::serve(api, listener).await.map_err(|e| e.to_string()) });
            tasks.push(("api", task));
        }
        Ok(Pipeline { kafka, shutdown, ingest_url, api_url, mock, tasks, dataflow, rt: rt.clone() })
    }

    /// Whether the Kafka is librdkafka's mock cluster (its data lives in this process).
    pub fn embedded_kafka(&self) -> bool {
        self.mock.is_some()
    }

    /// Triggers the shutdown and waits for every service to drain and stop;
    /// the first failure, if any.
    pub fn stop(mut self) -> Result<(), PipelineError> {
        self.shutdown.trigger();
        self.join()
    }

    /// Waits for every service to stop (after the shutdown fired); the first failure, if any.
    pub fn join(&mut self) -> Result<(), PipelineError> {
        let mut first = None;
        for (service, task) in self.tasks.drain(..) {
            let outcome = match self.rt.block_on(task) {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            };
            if let Err(message) = outcome {
                first.get_or_insert(PipelineError::Service { service, message });
            }
        }
        if let Some(d) = self.dataflow.take() {
            let outcome = d.join().unwrap_or_else(|_| Err("the dataflow thread panicked".into()));
            if let Err(message) = outcome {
                first.get_or_insert(PipelineError::Service { service: "dataflow", message });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn local(listener: &tokio::net::TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}
