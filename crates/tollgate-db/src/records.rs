//! The durable records, as they travel through the outbox and land in the database.
//!
//! Every record has a key of its own and a version, so writing it twice (a writer that died
//! after its commit and before its acknowledgement) changes nothing: rows that are written once
//! (session messages, usage) are inserted if absent; rows that change (responses, sessions) are
//! replaced only by a higher version. A deletion is a tombstone with the highest version, so a
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
            Record::SessionMessage(_) | Record::Usage(_) => 0,
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
    /// Answered from the cache (no upstream cost).
    pub cached: bool,
    pub created_ms: i64,
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
