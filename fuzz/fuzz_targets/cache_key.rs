//! The canonical cache key of any JSON body: never panics, is the same for the same body parsed
//! again, and is the same whatever the order of the body's object members.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::cache_key::Normalization;
use tollgate_core::request_hash;

fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for normalization in [
        Normalization::default(),
        Normalization {
            trim: true,
            collapse_whitespace: true,
            case_fold: true,
        },
    ] {
        let first = request_hash(&body, normalization);
        let text = serde_json::to_string(&body).expect("serializes");
        let again: Value = serde_json::from_str(&text).expect("parses again");
        assert_eq!(first, request_hash(&again, normalization));
        assert_eq!(first, request_hash(&reversed(&body), normalization));
    }
});
