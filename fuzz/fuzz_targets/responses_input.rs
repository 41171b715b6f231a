//! The Responses API's `input`, `tools` and `tool_choice`: any JSON is either refused with a
//! message naming the parameter, or becomes chat messages with a known role, chat function tools
//! with a name, or a chat tool choice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::responses::{chat_tool_choice, chat_tools, input_messages};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match input_messages(&input) {
        Ok(messages) => {
            assert!(!messages.is_empty());
            for m in &messages {
                assert!(
                    ["user", "assistant", "system", "developer", "tool"].contains(&m.role.as_str())
                );
                if m.role == "tool" {
                    assert!(m.extra.get("tool_call_id").is_some_and(|id| id.is_string()));
                }
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(e.param.as_deref().is_some_and(|p| p.starts_with("input")));
        }
    }
    if let Some(tools) = input.as_array() {
        match chat_tools(tools) {
            Ok(chat) => {
                assert_eq!(chat.len(), tools.len());
                for tool in &chat {
                    assert_eq!(tool["type"], "function");
                    assert!(
                        tool["function"]["name"]
                            .as_str()
                            .is_some_and(|n| !n.is_empty())
                    );
                }
            }
            Err(e) => assert!(e.param.as_deref().is_some_and(|p| p.starts_with("tools["))),
        }
    }
    match chat_tool_choice(&input) {
        Ok(choice) => assert!(choice.is_string() || choice["type"] == "function"),
        Err(e) => assert!(
            e.param
                .as_deref()
                .is_some_and(|p| p.starts_with("tool_choice"))
        ),
    }
});
