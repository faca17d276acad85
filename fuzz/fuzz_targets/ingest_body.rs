//! Arbitrary request bodies in each accepted format through ingest's body
//! splitter and the decoder, as a request would go: never a panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulse_ingest::body::{Format, split};
use pulse_model::{Decoder, Spec};

fn decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).expect("default spec");
        Decoder::new(spec.domain("rides").expect("rides"))
    })
}

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Ndjson] {
        let mut items = Vec::new();
        if split(format, data, 10_000, &mut items).is_ok() {
            for item in &items {
                let _ = decoder().decode(&data[item.range.clone()]);
            }
        }
    }
});
