//! Durable records for tollgate: responses, sessions and their messages, usage and spend.
//!
//! Redis answers first; the database keeps what must outlive Redis. Records reach the database
//! through an outbox in Redis ([`outbox`]) and are written idempotently ([`records`]), in SQLite
//! or PostgreSQL ([`db`]).

pub mod db;
pub mod outbox;
pub mod records;

pub use db::{Backend, Database};
pub use outbox::{Batch, Outbox, OutboxConfig, Writer};
pub use records::{
    DELETED, Record, ResponseRow, Served, SessionMessageRow, SessionRow, SpendRow, TimelineRow,
    UsageRow,
};

/// What can go wrong with durable records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox: {0}")]
    Redis(#[from] tollgate_redis::Error),
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The database refused the data itself (not a connection or server failure).
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(_)))
            || matches!(self, Error::Db(sqlx::Error::Encode(_)))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// This machine's clock, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
