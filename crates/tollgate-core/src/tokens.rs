//! Token counting. Limits and history windows need a count before the provider reports usage;
//! the counter is a trait so the gateway can plug in a real tokenizer for the model.

use crate::chat::ChatRequest;
use crate::message::ChatMessage;

/// Counts the tokens a text or a message costs.
pub trait TokenCounter: Send + Sync + std::fmt::Debug {
    /// Tokens of a plain text.
    fn count_text(&self, text: &str) -> u32;

    /// Tokens of one chat message, including the per-message framing the chat format adds.
    fn count_message(&self, message: &ChatMessage) -> u32 {
        // OpenAI's chat format spends about 4 tokens per message on role and separators.
        4 + self.count_text(&message.role) + self.count_text(&message.text_content())
    }

    /// Tokens of a request's prompt: its messages and the tools it declares.
    fn count_prompt(&self, request: &ChatRequest) -> u64 {
        let messages: u64 = request
            .messages
            .iter()
            .map(|m| u64::from(self.count_message(m)))
            .sum();
        let tools = request
            .extra
            .get("tools")
            .map_or(0, |tools| u64::from(self.count_text(&tools.to_string())));
        messages + tools
    }
}

/// A tokenizer-free estimate: one token per 4 bytes of UTF-8, rounded up, which is close to
/// BPE tokenizers on English text and errs high on short strings.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxTokenCounter;

impl TokenCounter for ApproxTokenCounter {
    fn count_text(&self, text: &str) -> u32 {
        u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_rounds_up_and_counts_framing() {
        let c = ApproxTokenCounter;
        assert_eq!(c.count_text(""), 0);
        assert_eq!(c.count_text("abcde"), 2);
        assert_eq!(
            c.count_message(&ChatMessage::text("user", "abcd")),
            4 + 1 + 1
        );
    }

    #[test]
    fn a_prompt_counts_its_messages_and_its_tools() {
        let c = ApproxTokenCounter;
        let plain: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "abcd"}, {"role": "user", "content": "abcd"}],
        }))
        .unwrap();
        assert_eq!(c.count_prompt(&plain), 12);
        let tools = serde_json::json!([{"type": "function", "function": {"name": "abc"}}]);
        let mut with_tools = plain.clone();
        with_tools.extra.insert("tools".into(), tools.clone());
        let expected = 12 + u64::from(c.count_text(&tools.to_string()));
        assert_eq!(c.count_prompt(&with_tools), expected);
    }
}
