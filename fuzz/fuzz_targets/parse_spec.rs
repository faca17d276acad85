//! Arbitrary text as a pipeline spec: parsed and validated or rejected with
//! located errors, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pulse_model::Spec;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = Spec::parse(Path::new("fuzz.toml"), text) {
            assert!(!errors.0.is_empty());
        }
    }
});
