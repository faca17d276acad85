//! `pulse sink`: moves raw events from Kafka into their ClickHouse tables
//! (`service`; batching and poison-row isolation in `service/batch.rs`). The
//! ClickHouse side it writes through is `pulse-clickhouse`.

pub mod service;
