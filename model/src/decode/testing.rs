//! Helpers shared by the decoder's tests.

pub(super) use crate::spec::testing::default_spec as spec;

pub(super) const RIDE: &str = r#"{"event_type":"requested","ride_id":"r-1","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","pickup":{"lat":52.5,"lng":13.4},"timestamp":"2026-11-24T10:15:00.250Z"}"#;
