//! Any Partner Center fraud event (strings for booleans and counts, JSON inside strings,
//! zoneless times) parses or fails cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_microsoft::partner_center::FraudEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = FraudEvent::from_value(value);
    }
});
