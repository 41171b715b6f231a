//! The one error type of the Redis patterns, with variants named for what the caller can do.

use std::time::Duration;

/// What went wrong in a Redis pattern.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or did not answer in time. Callers degrade: a cache read is a
    /// miss, a limiter follows its fail-open/fail-closed policy. The connection heals by itself.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis answered with an error that retrying will not fix.
    #[error("redis command failed: {0}")]
    Command(#[source] redis::RedisError),
    /// A script or command answered in a shape this version does not understand.
    #[error("unexpected reply from {what}: {reason}")]
    Reply { what: &'static str, reason: String },
    /// A caller-supplied argument cannot be used (empty id, zero limit, cost above capacity...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing does not exist, or belongs to someone else (the two are not told apart, so an
    /// id never leaks whether another owner's record exists).
    #[error("not found")]
    NotFound,
    /// A write collided with an existing record (e.g. a token stream id used twice).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A reader asked for entries that the stream's length bound has already trimmed.
    #[error("entries after {requested} were trimmed; the oldest kept is {oldest}")]
    Trimmed { requested: u64, oldest: u64 },
    /// A token stream's producer stopped (its process died) before ending the stream.
    #[error("the stream's producer stopped before its end")]
    Abandoned,
    /// Waited longer than allowed (e.g. for another process's computation).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A stored value could not be decoded.
    #[error("stored value could not be decoded: {0}")]
    Decode(String),
}

impl Error {
    /// True when the error means Redis is unreachable (and so degrading is the right answer).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    pub(crate) fn reply(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Reply {
            what,
            reason: reason.into(),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || is_transient(&e)
        {
            Error::Unavailable(e)
        } else {
            Error::Command(e)
        }
    }
}

/// Server errors that say Redis cannot do its part now, not that the command is wrong: memory
/// full under `noeviction` (OOM), a replica or a failed-over master (READONLY, MASTERDOWN), a
/// failing snapshot (MISCONF), a busy script (BUSY), a server still loading (LOADING), a script
/// cache emptied (NOSCRIPT), a cluster in transition (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), too
/// few replicas (NOREPLICAS). Callers degrade on them as on a lost connection; the same command
/// succeeds once the server settles.
const DEGRADED: &[&str] = &[
    "OOM",
    "READONLY",
    "MISCONF",
    "BUSY",
    "LOADING",
    "NOSCRIPT",
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
];

/// True when `e` is one of [`DEGRADED`]: by its code, or named in its text (an error raised
/// inside a script, or inside an aborted transaction, arrives wrapped).
fn is_transient(e: &redis::RedisError) -> bool {
    if e.code().is_some_and(|code| DEGRADED.contains(&code)) {
        return true;
    }
    let text = e.to_string();
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| {
            DEGRADED.contains(&word)
                || word == "ClusterDown"
                || word == "TryAgain"
                || word == "MasterDown"
                || word == "BusyLoading"
        })
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
