//! The durable records, as they travel through the outbox and land in the database.
//!
//! Every record has a key of its own and a version, so writing it twice (a writer that died
//! after its commit and before its acknowledgement) changes nothing: rows that are written once
//! (session messages, usage) are inserted if absent (a message replaces only a message of the
//! session's earlier life at its place, an older one); rows that change (responses, sessions)
//! are replaced only by a higher version. A deletion is a tombstone with the highest version, so a
//! late copy of an older version cannot bring a deleted row back.

use serde::{Deserialize, Serialize};

/// One durable record: a JSON object whose `kind` names it, beside its row's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Response(ResponseRow),
    Session(SessionRow),
    SessionMessage(SessionMessageRow),
    Usage(UsageRow),
}

/// The kinds of record (the `kind` field).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Response,
    Session,
    SessionMessage,
    Usage,
}

impl Kind {
    /// The record of this kind whose row `fields` holds.
    fn record<'de, D: serde::Deserializer<'de>>(self, fields: D) -> Result<Record, D::Error> {
        Ok(match self {
            Kind::Response => Record::Response(ResponseRow::deserialize(fields)?),
            Kind::Session => Record::Session(SessionRow::deserialize(fields)?),
            Kind::SessionMessage => Record::SessionMessage(SessionMessageRow::deserialize(fields)?),
            Kind::Usage => Record::Usage(UsageRow::deserialize(fields)?),
        })
    }
}

/// Read as serde's internally tagged enums are, but without buffering every field first when
/// `kind` comes first (as [`Record`]'s `Serialize` writes it): the outbox's writers read every
/// record of every request back.
impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Record;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record: an object with its kind")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Record, A::Error> {
                use serde::de::Error;
                let Some(first) = map.next_key::<String>()? else {
                    return Err(A::Error::missing_field("kind"));
                };
                if first == "kind" {
                    let kind: Kind = map.next_value()?;
                    return kind.record(serde::de::value::MapAccessDeserializer::new(map));
                }
                // `kind` elsewhere: every field buffered, then read.
                let mut fields = serde_json::Map::new();
                fields.insert(first, map.next_value()?);
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    fields.insert(name, value);
                }
                let kind = fields
                    .remove("kind")
                    .ok_or_else(|| A::Error::missing_field("kind"))?;
                let kind = Kind::deserialize(kind).map_err(A::Error::custom)?;
                kind.record(serde_json::Value::Object(fields))
                    .map_err(A::Error::custom)
            }
        }
        deserializer.deserialize_map(Fields)
    }
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
        use std::collections::hash_map::Entry;
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        let mut out: Vec<Record> = Vec::with_capacity(records.len());
        for record in records {
            match by_key.entry(record.key()) {
                Entry::Occupied(at) if out[*at.get()].version() > record.version() => {}
                Entry::Occupied(at) => out[*at.get()] = record,
                Entry::Vacant(at) => {
                    at.insert(out.len());
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

    /// One record of each kind.
    fn one_of_each() -> Vec<Record> {
        vec![
            response("r1", 2),
            Record::Session(SessionRow {
                id: "s1".into(),
                owner: "k".into(),
                system: Some("be brief".into()),
                summary: None,
                summary_seq: 0,
                created_ms: 5,
                version: 6,
                deleted: false,
            }),
            Record::SessionMessage(SessionMessageRow {
                session_id: "s1".into(),
                seq: 1,
                owner: "k".into(),
                created_ms: 7,
                tokens: 3,
                message: r#"{"role":"user","content":"h\u00e9"}"#.into(),
            }),
            Record::Usage(UsageRow {
                id: "use_1".into(),
                key_id: "key".into(),
                tenant: "acme".into(),
                model: "m".into(),
                prompt_tokens: 10,
                completion_tokens: 20,
                cost_nanos: 30,
                served: Served::Semantic,
                created_ms: 8,
            }),
        ]
    }

    #[test]
    fn records_read_back_as_written_with_their_kind_anywhere_in_the_object() {
        let records = one_of_each();
        let json = serde_json::to_vec(&records).unwrap();
        assert!(json.starts_with(br#"[{"kind":"response","#));
        let read: Vec<Record> = serde_json::from_slice(&json).unwrap();
        assert_eq!(read, records);
        // The same objects with their keys in another order (another writer's JSON).
        let shuffled: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
        let reordered = serde_json::to_string(&shuffled).unwrap();
        assert!(!reordered.starts_with(r#"[{"kind""#), "{reordered}");
        let read: Vec<Record> = serde_json::from_str(&reordered).unwrap();
        assert_eq!(read, records);
    }

    #[test]
    fn a_record_without_a_known_kind_is_refused() {
        for bad in [
            r#"{"id":"x","owner":"k","version":1,"created_ms":1,"body":""}"#,
            r#"{"kind":"invoice","id":"x"}"#,
            r#"{"id":"x","kind":"invoice"}"#,
            r#"{"kind":"response","id":"x"}"#,
            r#"{}"#,
            r#"[1]"#,
        ] {
            assert!(serde_json::from_str::<Record>(bad).is_err(), "{bad}");
        }
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
