//! Any bytes read from a queue must decode to an envelope or fail cleanly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = palisade_contracts::events::v1::Envelope::decode(data) {
        // Whatever decodes must re-encode and decode to the same value.
        let again = palisade_contracts::events::v1::Envelope::decode(envelope.encode_to_vec().as_slice())
            .expect("re-encoded envelope decodes");
        assert_eq!(again, envelope);
    }
});
