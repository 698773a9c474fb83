//! Any Graph securityAlerts item, however malformed, parses to an alert or fails cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_microsoft::graph_alerts::SecurityAlert;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = SecurityAlert::from_value(value);
    }
});
