//! Everything Pulse does with ClickHouse, shared by the services that reach it
//! (`pulse sink`, `pulse dataflow`, `pulse api`, `pulse migrate`): connection
//! settings (`config`), the tables derived from the spec and how a row becomes
//! RowBinary (`schema`), migrations (`migrate`), the batched, retrying writer
//! (`writer`) and the SQL recomputation of a metric's windows (`recompute`).

pub mod config;
pub mod migrate;
pub mod recompute;
pub mod schema;
pub mod writer;

pub use config::ClickHouseConfig;
pub use migrate::{MigrateError, MigrationReport, migrate};
pub use writer::{WriteError, Writer, WriterMetrics};
