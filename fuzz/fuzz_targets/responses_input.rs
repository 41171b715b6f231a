//! The Responses API's `input`: any JSON is either refused with a message naming the parameter,
//! or becomes at least one chat message with a known role.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::responses::input_messages;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match input_messages(&input) {
        Ok(messages) => {
            assert!(!messages.is_empty());
            for m in &messages {
                assert!(["user", "assistant", "system", "developer"].contains(&m.role.as_str()));
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(e.param.as_deref().is_some_and(|p| p.starts_with("input")));
        }
    }
});
