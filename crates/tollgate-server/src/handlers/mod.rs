//! The HTTP handlers, one file per API surface. Each is thin: extract (identity, parameters,
//! body), call a function the CLI and tests can call without axum, shape the answer. Helpers
//! shared by several surfaces live with what they serve (`auth`, `extract`, the logic modules),
//! never here.

pub mod cache;
pub mod chat;
pub mod conversations;
pub mod embeddings;
pub mod events;
pub mod features;
pub mod keys;
pub mod messages;
pub mod models;
pub mod ops;
pub mod responses;
pub mod results;
pub mod sessions;
pub mod streams;
pub mod ui;
pub mod vectors;
