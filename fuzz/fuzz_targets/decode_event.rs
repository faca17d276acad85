//! Arbitrary bytes as an event of each default domain: the decoder must answer
//! Ok or a DecodeError, never panic; what it accepts re-encodes and decodes equal.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulse_model::{Decoder, Spec, encode_json};

fn decoders() -> &'static (Spec, Vec<Decoder>) {
    static D: OnceLock<(Spec, Vec<Decoder>)> = OnceLock::new();
    D.get_or_init(|| {
        let spec = Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml")).expect("default spec");
        let decoders = spec.domains.iter().map(Decoder::new).collect();
        (spec, decoders)
    })
}

fuzz_target!(|data: &[u8]| {
    let (spec, decoders) = decoders();
    for (domain, decoder) in spec.domains.iter().zip(decoders) {
        if let Ok(ev) = decoder.decode(data) {
            let mut out = Vec::new();
            encode_json(domain, &ev, &mut out);
            let again = decoder.decode(&out).expect("canonical JSON of an accepted event decodes");
            assert_eq!(again, ev);
        }
    }
});
