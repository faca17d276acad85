//! Kafka plumbing shared by every Pulse service: client configuration from
//! `PULSE_KAFKA_*`, topic creation and verification from the spec, and the
//! dead-letter record format.

pub mod config;
pub mod dead_letter;
pub mod topics;

pub use config::KafkaConfig;
pub use dead_letter::DeadLetter;
pub use topics::{TopicPlan, TopicReport, ensure_topics, plan_topics};

/// Errors of the Kafka plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
