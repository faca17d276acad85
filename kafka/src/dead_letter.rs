//! Dead-letter records: a record Pulse could not use, copied verbatim to the
//! dead-letter topic with headers naming where it came from and why.

use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const H_SOURCE_TOPIC: &str = "pulse.source.topic";
pub const H_SOURCE_PARTITION: &str = "pulse.source.partition";
pub const H_SOURCE_OFFSET: &str = "pulse.source.offset";
pub const H_REASON: &str = "pulse.reason";
pub const H_STAGE: &str = "pulse.stage";

/// A record sent to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Which service rejected it (sink, dataflow, ...).
    pub stage: String,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: H_SOURCE_TOPIC, value: Some(self.source_topic.as_bytes()) })
            .insert(Header { key: H_SOURCE_PARTITION, value: Some(partition.as_bytes()) })
            .insert(Header { key: H_SOURCE_OFFSET, value: Some(offset.as_bytes()) })
            .insert(Header { key: H_STAGE, value: Some(self.stage.as_bytes()) })
            .insert(Header { key: H_REASON, value: Some(self.reason.as_bytes()) })
    }

    /// Reads a header of a dead-letter record as text.
    pub fn header<H: Headers>(headers: &H, key: &str) -> Option<String> {
        headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
