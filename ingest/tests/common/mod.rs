//! What only the ingest tests share: event bodies as producers send them and
//! librdkafka's partitioner. The server, HTTP requests and reading a topic
//! back are the test kit's (`pulse_testkit::{ingest, http, topic}`).
#![allow(dead_code)]

/// librdkafka's default partitioner (`consistent_random`): CRC32 of the key modulo the partitions.
pub fn expected_partition(key: &str, partitions: i32) -> i32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in key.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    ((!crc) % partitions as u32) as i32
}

/// Now, as producers write it: event times must be near ingest's clock.
pub fn now_rfc3339() -> String {
    pulse_model::decode::format_rfc3339_ms(pulse_model::now_ms())
}

pub fn ride(ride_id: &str, event_type: &str) -> String {
    format!(
        r#"{{"event_type":"{event_type}","ride_id":"{ride_id}","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","timestamp":"{ts}"}}"#,
        ts = now_rfc3339()
    )
}

pub fn driver(driver_id: &str) -> String {
    format!(r#"{{"driver_id":"{driver_id}","city":"Paris","lat":48.85,"lng":2.35,"status":"available","timestamp":{ts}}}"#, ts = pulse_model::now_ms())
}

pub fn app_event(id: Option<&str>, name: &str) -> String {
    let id = id.map(|i| format!(r#""event_id":"{i}","#)).unwrap_or_default();
    format!(r#"{{{id}"session_id":"s-1","event_name":"{name}","latency_ms":42.5,"timestamp":"{ts}"}}"#, ts = now_rfc3339())
}
