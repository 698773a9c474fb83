//! The token endpoint's answer, whatever the network delivered: any status and body must parse
//! to a token or a typed error (never panic), and an AADSTS error must classify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_microsoft::entra::{EntraError, parse_token_response};

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Every status from 100 to 599, so success and error paths are both reached.
    let status = 100 + u16::from_le_bytes(*status) % 500;
    match parse_token_response(status, None, body) {
        Ok(token) => assert!((200..300).contains(&status), "a token from http {status}: {token:?}"),
        Err(EntraError::Aadsts(error)) => {
            let _ = error.kind();
            let _ = error.to_string();
        }
        Err(other) => {
            let _ = other.is_transient();
        }
    }
});
