//! Everything that touches ClickHouse writes: the schema derived from the spec
//! (`schema`), migrations (`migrate`), the batched, retrying writer (`writer`),
//! and `pulse sink`, which moves raw events from Kafka into ClickHouse (`service`).

pub mod config;
pub mod migrate;
pub mod schema;
pub mod service;
pub mod testing;
pub mod verify;
pub mod writer;

pub use config::ClickHouseConfig;
pub use migrate::{MigrateError, MigrationReport, migrate};
pub use writer::{WriteError, Writer, WriterMetrics};
