//! The durable records, as they travel through the outbox and land in the database.
//!
//! Every record has a key of its own and a version, so writing it twice (a writer that died
//! after its commit and before its acknowledgement) changes nothing: rows that are written once
//! (session messages, usage) are inserted if absent (a message replaces only a message of the
//! session's earlier life at its place, an older one); rows that change (responses, sessions)
//! are replaced only by a higher version. A deletion is a tombstone with the highest version, so a
//! late copy of an older version cannot bring a deleted row back.

use serde::{Deserialize, Serialize};

/// One durable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Response(ResponseRow),
    Session(SessionRow),
    SessionMessage(SessionMessageRow),
    Usage(UsageRow),
}

impl Record {
    /// The record's identity: two records with the same key are versions of one row.
    pub fn key(&self) -> String {
        match self {
            Record::Response(r) => format!("r:{}", r.id),
            Record::Session(s) => format!("s:{}", s.id),
            Record::SessionMessage(m) => format!("m:{}:{}", m.session_id, m.seq),
            Record::Usage(u) => format!("u:{}", u.id),
        }
    }

    fn version(&self) -> i64 {
        match self {
            Record::Response(r) => r.version,
            Record::Session(s) => s.version,
            // A message's place may hold one of the session's earlier life: the newer wins.
            Record::SessionMessage(m) => m.created_ms,
            Record::Usage(_) => 0,
        }
    }

    /// Keeps, for each key, only the highest version (the last one of equal versions).
    pub fn latest(records: Vec<Record>) -> Vec<Record> {
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        let mut out: Vec<Record> = Vec::with_capacity(records.len());
        for record in records {
            match by_key.get(&record.key()) {
                Some(&i) if out[i].version() > record.version() => {}
                Some(&i) => out[i] = record,
                None => {
                    by_key.insert(record.key(), out.len());
                    out.push(record);
                }
            }
        }
        out
    }
}

/// The version of a deletion: above every real version.
pub const DELETED: i64 = i64::MAX;

/// A stored response (the Responses API). `body` is the gateway's JSON of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRow {
    pub id: String,
    pub owner: String,
    /// 1 when created; higher when its conversation was summarized; [`DELETED`] once deleted.
    pub version: i64,
    pub created_ms: i64,
    /// Empty for a deletion.
    pub body: String,
}

impl ResponseRow {
    pub fn is_deleted(&self) -> bool {
        self.version == DELETED
    }
}

/// A session's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub owner: String,
    pub system: Option<String>,
    /// A summary of the messages up to `summary_seq`, if the session was summarized.
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub summary_seq: i64,
    pub created_ms: i64,
    /// The time of the write (ms): later writes win.
    pub version: i64,
    pub deleted: bool,
}

/// One message of a session, numbered from 1 in the order it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMessageRow {
    pub session_id: String,
    pub seq: i64,
    pub owner: String,
    pub created_ms: i64,
    pub tokens: i64,
    /// The message in the OpenAI format (JSON).
    pub message: String,
}

/// What one request used and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "UsageWire", into = "UsageWire")]
pub struct UsageRow {
    pub id: String,
    /// The API key (`open` or `master` without one).
    pub key_id: String,
    pub tenant: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Cost in billionths of a dollar.
    pub cost_nanos: i64,
    /// How it was answered.
    pub served: Served,
    pub created_ms: i64,
}

/// A usage record as the outbox carries it: `cached` as every version of tollgate wrote it,
/// and `served` beside it, so a replica that does not know `served` yet (during an upgrade)
/// still reads the record, and a record without it reads as an exact hit or an upstream answer.
#[derive(Serialize, Deserialize)]
struct UsageWire {
    id: String,
    key_id: String,
    tenant: String,
    model: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_nanos: i64,
    cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served: Option<Served>,
    created_ms: i64,
}

impl From<UsageWire> for UsageRow {
    fn from(w: UsageWire) -> Self {
        UsageRow {
            id: w.id,
            key_id: w.key_id,
            tenant: w.tenant,
            model: w.model,
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            cost_nanos: w.cost_nanos,
            served: w.served.unwrap_or(if w.cached {
                Served::Exact
            } else {
                Served::Upstream
            }),
            created_ms: w.created_ms,
        }
    }
}

impl From<UsageRow> for UsageWire {
    fn from(u: UsageRow) -> Self {
        UsageWire {
            id: u.id,
            key_id: u.key_id,
            tenant: u.tenant,
            model: u.model,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cost_nanos: u.cost_nanos,
            cached: u.served.cached(),
            served: Some(u.served),
            created_ms: u.created_ms,
        }
    }
}

/// How a request was answered; the `cached` column keeps it as a number (0 to 3; rows written
/// before the kinds were told apart hold 1 for every answer from the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    /// By the upstream (it cost what it cost).
    Upstream,
    /// From the exact cache.
    Exact,
    /// From the semantic cache.
    Semantic,
    /// From another request's answer, streamed to both (a coalesced follower).
    Coalesced,
}

impl Served {
    /// The `cached` column's value.
    pub fn code(self) -> i64 {
        match self {
            Served::Upstream => 0,
            Served::Exact => 1,
            Served::Semantic => 2,
            Served::Coalesced => 3,
        }
    }

    /// The kind a `cached` column's value stands for (an unknown one: from the cache).
    pub fn from_code(code: i64) -> Served {
        match code {
            0 => Served::Upstream,
            2 => Served::Semantic,
            3 => Served::Coalesced,
            _ => Served::Exact,
        }
    }

    /// Answered without the upstream (no cost).
    pub fn cached(self) -> bool {
        self != Served::Upstream
    }

    pub fn name(self) -> &'static str {
        match self {
            Served::Upstream => "upstream",
            Served::Exact => "exact",
            Served::Semantic => "semantic",
            Served::Coalesced => "coalesced",
        }
    }
}

/// Requests of one model over one step of a timeline (see [`crate::Database::timeline`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// The step's start (Unix milliseconds, a multiple of the step).
    pub start_ms: i64,
    pub model: String,
    pub requests: i64,
    pub exact: i64,
    pub semantic: i64,
    pub coalesced: i64,
    /// Tokens of the answers the exact and semantic caches gave (what they saved).
    pub hit_prompt_tokens: i64,
    pub hit_completion_tokens: i64,
    /// What the upstream answers cost, in billionths of a dollar.
    pub cost_nanos: i64,
}

/// Spend of one key on one model over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    pub key_id: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str, version: i64) -> Record {
        Record::Response(ResponseRow {
            id: id.into(),
            owner: "k".into(),
            version,
            created_ms: 1,
            body: format!("v{version}"),
        })
    }

    #[test]
    fn latest_keeps_the_highest_version_of_each_row_in_first_seen_order() {
        let kept = Record::latest(vec![
            response("a", 1),
            response("b", 1),
            response("a", DELETED),
            response("a", 2),
        ]);
        assert_eq!(kept, vec![response("a", DELETED), response("b", 1)]);
    }
}
