//! Token counting with OpenAI's `o200k_base` encoding (the GPT-4o family's), used to estimate
//! what a request will cost before the upstream reports usage, and to cut session history to a
//! token budget. For other model families it is an estimate of the right order.

use tollgate_core::TokenCounter;

/// Counts tokens with `o200k_base`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiTokenCounter;

impl OpenAiTokenCounter {
    /// Builds the encoder now (it takes a moment), so no request waits for it.
    pub fn warm_up() {
        let _ = tiktoken_rs::o200k_base_singleton();
    }
}

impl TokenCounter for OpenAiTokenCounter {
    fn count_text(&self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        u32::try_from(
            tiktoken_rs::o200k_base_singleton()
                .encode_ordinary(text)
                .len(),
        )
        .unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::ChatMessage;

    #[test]
    fn counts_like_openai_does() {
        let c = OpenAiTokenCounter;
        // Reference counts of o200k_base (as OpenAI's tiktoken gives them).
        assert_eq!(c.count_text("hello world"), 2);
        assert_eq!(c.count_text(""), 0);
        assert!(c.count_text("Tokenization of a longer sentence, with punctuation!") > 8);
        assert_eq!(
            c.count_message(&ChatMessage::text("user", "hello world")),
            4 + 1 + 2
        );
    }
}
