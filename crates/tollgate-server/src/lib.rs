//! The tollgate HTTP gateway.
//!
//! # Layout
//! - [`app`]: `app(state) -> Router`, the whole HTTP surface; tests call it without a socket.
//! - [`handlers`]: thin HTTP handlers; [`chat`]: the chat request path, callable without HTTP.
//! - [`auth`], [`limits`]: who is calling, and the rate limits of the request path.
//! - [`accounting`]: usage, spend and budgets; durable records sent to the outbox.
//! - [`responses`]: the Responses API over the chat path; [`summaries`]: long conversations
//!   summarized in the background.
//! - [`config`]: defaults → file → environment, every problem reported at once.
//! - [`state`]: the gateway's shared state, built from the configuration.
//! - [`error`]: `ApiError`, every failure as an OpenAI-shaped JSON error with its status.
//! - [`sse`], [`metrics`]: server-sent events out, Prometheus metrics.
//! - [`tokens`]: token counting with OpenAI's encoding.
//! - [`embedded`]: the private `redis-server` child tollgate runs when no Redis URL is given.
//! - [`serve`]: binds, serves, and drains on shutdown.

pub mod accounting;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod embedded;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod metrics;
pub mod responses;
pub mod serve;
pub mod sessions;
pub mod sse;
pub mod state;
pub mod summaries;
pub mod tokens;
pub mod vectors;

pub use app::app;
pub use config::Config;
pub use error::ApiError;
pub use state::{AppState, Gateway};
