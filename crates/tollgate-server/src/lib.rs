//! The tollgate HTTP gateway.
//!
//! # Layout
//! Dependencies point one way, down this list:
//! - [`app`]: `app(state) -> Router`: the route groups (`routes.rs`: open, API key, master key)
//!   behind their authentication, and the layer stack; [`handlers`]: one thin file per API
//!   surface (extract, call, shape).
//! - [`responses`]: the Responses API over the chat path; [`chat`]: the chat request path, a
//!   folder of its stages (prepare, route, admission, answer), callable without HTTP.
//! - [`summaries`]: long conversations summarized in the background; [`response_store`] and
//!   [`sessions`]: stored responses and sessions, Redis first and the database behind;
//!   [`embeddings`]: the embedding path (cache, then model) shared by `/v1/embeddings`, the
//!   semantic cache and vector collections; [`admin`]: the operator's operations (HTTP and CLI).
//! - [`limits`]: the rate limits of a request, one script; [`accounting`]: usage, spend and
//!   budgets, durable records sent to the outbox.
//! - [`auth`]: who is calling, as extractors and the layers in front of each route group;
//!   [`extract`]: JSON bodies, path and query parameters with OpenAI-shaped rejections.
//! - [`state`]: the gateway's shared state, built from the configuration; [`local_limiter`]:
//!   the in-process stand-in while Redis is away.
//! - [`config`]: defaults → file → environment, every problem reported at once; [`error`]:
//!   `ApiError`, every failure as an OpenAI-shaped JSON error with its status; [`metrics`],
//!   [`sse`], [`tokens`] (OpenAI's token counting), [`task`] (owned background tasks).
//! - [`embedded`]: the private `redis-server` child; [`serve`]: binds, serves, and drains on
//!   shutdown.

pub mod accounting;
pub mod admin;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod embedded;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod lease_keeper;
pub mod limits;
pub mod local_limiter;
pub mod metrics;
pub mod response_store;
pub mod responses;
mod routes;
pub mod serve;
pub mod sessions;
pub mod sse;
pub mod state;
pub mod summaries;
pub mod task;
pub mod telemetry;
pub mod tokens;

pub use app::app;
pub use config::Config;
pub use error::ApiError;
pub use state::{AppState, Gateway};
