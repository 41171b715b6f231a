//! Wire types and pure logic shared by every tollgate crate. No I/O, no async, no Redis.
//!
//! # Layout
//! - [`chat`]: the chat-completions wire format, chunk folding and replay.
//! - [`message`]: chat messages in the OpenAI wire format.
//! - [`cache_key`]: the canonical form and hash of a request, used as the exact-cache key.
//! - [`tokens`]: token counting behind a trait (an estimate by default).
//! - [`responses`]: the Responses API's input items, tools and tool choice as chat.
//! - [`messages`]: Anthropic's Messages API as chat, and chat answers as Messages answers.
//! - [`semantic_checks`]: differences between near questions that change the answer.

pub mod cache_key;
pub mod chat;
pub mod message;
pub mod messages;
pub mod responses;
pub mod semantic_checks;
pub mod tokens;

pub use cache_key::{CacheKeyError, Normalization, request_hash};
pub use chat::{
    Aggregator, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, InvalidRequest,
    Usage,
};
pub use message::ChatMessage;
pub use tokens::{ApproxTokenCounter, TokenCounter};
