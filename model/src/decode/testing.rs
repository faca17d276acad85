//! Helpers shared by the decoder's tests.

use std::path::Path;

use crate::spec::Spec;

pub(super) fn spec() -> Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
    Spec::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) const RIDE: &str = r#"{"event_type":"requested","ride_id":"r-1","city":"Berlin","estimated_fare":12.5,"user_id":"u-7","pickup":{"lat":52.5,"lng":13.4},"timestamp":"2026-11-24T10:15:00.250Z"}"#;
