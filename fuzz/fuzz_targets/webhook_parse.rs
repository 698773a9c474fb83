//! A Partner Center webhook's body and the certificate it points to are attacker-controlled
//! until verified: the payload parser, the PEM/DER splitter and the issuer reader must never
//! panic on them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_microsoft::webhook::{WebhookEvent, certificates_from_pem_or_der, issuer_organizations};

fuzz_target!(|data: &[u8]| {
    let _ = WebhookEvent::parse(data);
    for der in certificates_from_pem_or_der(data) {
        let _ = issuer_organizations(&der);
    }
    let _ = issuer_organizations(data);
});
