//! The tollgate HTTP gateway.
//!
//! # Layout
//! - [`app`]: `app(state) -> Router`, the whole HTTP surface; tests call it without a socket.
//! - [`error`]: `ApiError`, every failure as an OpenAI-shaped JSON error with its status.
//! - [`embedded`]: the private `redis-server` child tollgate runs when no Redis URL is given.
//! - [`serve`]: binds, serves, and drains on shutdown.

pub mod app;
pub mod embedded;
pub mod error;
pub mod serve;

pub use app::{AppState, app};
pub use error::ApiError;
