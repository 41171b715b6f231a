//! A chat request body, as the gateway reads one: parsing and validation never panic, and a valid
//! request has a cache key that survives a round trip through its own serialization.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::cache_key::Normalization;
use tollgate_core::{ChatRequest, request_hash};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<ChatRequest>(data) else {
        return;
    };
    if req.validate().is_err() {
        return;
    }
    let body = serde_json::to_value(&req).expect("a parsed request serializes");
    let Ok(hash) = request_hash(&body, Normalization::default()) else {
        return;
    };
    let again: ChatRequest =
        serde_json::from_value(body).expect("a serialized request parses again");
    let body = serde_json::to_value(&again).expect("serializes");
    assert_eq!(
        request_hash(&body, Normalization::default()).ok(),
        Some(hash)
    );
});
