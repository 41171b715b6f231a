//! Long conversations, summarized in the background: response chains (below) and sessions
//! ([`summarize_session_if_long`]).
//!
//! When a stored response's conversation passes `[summaries] token_budget` tokens, a task asks
//! `[summaries] model` (the local SmolLM2 by default) to summarize the older turns, together
//! with the summary they may already carry. The most recent turns, up to `keep_recent_tokens`,
//! stay word for word. The record is then replaced (version + 1, in Redis and the database), and
//! the next request of the chain sends: its instructions, the summary, the recent turns, its
//! input. A request that arrives before the summary is written sends the whole conversation, as
//! it would have without summaries. Summaries are the gateway's own calls: charged to no key.

use std::sync::Arc;

use futures::StreamExt;
use tollgate_core::{Aggregator, ChatMessage, ChatRequest};

use crate::response_store::{Context, StoredRecord};
use crate::state::Gateway;

/// Tokens of a context (its summary and its turns).
pub fn tokens_of(gw: &Gateway, context: &Context) -> u64 {
    let summary = context.summary.as_deref().map_or(0, |s| {
        u64::from(gw.counter.count_message(&ChatMessage::summary(s)))
    });
    summary
        + context
            .messages
            .iter()
            .map(|m| u64::from(gw.counter.count_message(m)))
            .sum::<u64>()
}

/// Where the recent turns begin: the newest turns within `keep` tokens, and at least the last
/// two (the last question and its answer).
fn recent_start(gw: &Gateway, messages: &[ChatMessage], keep: u64) -> usize {
    let mut tokens = 0;
    let mut start = messages.len();
    while start > 0 {
        let t = u64::from(gw.counter.count_message(&messages[start - 1]));
        if messages.len() - start >= 2 && tokens + t > keep {
            break;
        }
        tokens += t;
        start -= 1;
    }
    start
}

/// Starts summarizing the record's conversation when it is over budget (once per response).
pub fn summarize_response_if_long(gw: &Arc<Gateway>, id: &str, record: StoredRecord) {
    let config = &gw.config.summaries;
    if !config.enabled || record.context.tokens <= u64::from(config.token_budget) {
        return;
    }
    let start = recent_start(
        gw,
        &record.context.messages,
        u64::from(config.keep_recent_tokens),
    );
    if start == 0 {
        return;
    }
    let first = gw
        .summarizing
        .lock()
        .is_ok_and(|mut busy| busy.insert(id.to_owned()));
    if !first {
        return;
    }
    let (gw, id) = (gw.clone(), id.to_owned());
    tokio::spawn(async move {
        let mut record = record;
        let old = &record.context.messages[..start];
        match summarize(&gw, record.context.summary.as_deref(), old).await {
            Ok(summary) => {
                let recent = record.context.messages.split_off(start);
                record.context = Context {
                    summary: Some(summary),
                    messages: recent,
                    tokens: 0,
                };
                record.context.tokens = tokens_of(&gw, &record.context);
                record.version += 1;
                match record.row(&id) {
                    Ok(row) => match gw.responses.replace(&id, row.body.as_bytes()).await {
                        // Deleted meanwhile: leave it deleted.
                        Ok(false) => {}
                        Ok(true) | Err(_) => {
                            persist_summary(&gw, row, record.context.tokens).await;
                        }
                    },
                    Err(e) => tracing::error!(error = %e, "a summarized response does not encode"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not summarize a long conversation; it is sent whole");
            }
        }
        if let Ok(mut busy) = gw.summarizing.lock() {
            busy.remove(&id);
        }
    });
}

/// The database's copy of a summarized record (the Redis copy was replaced in place, keeping
/// its TTL).
async fn persist_summary(gw: &Gateway, row: tollgate_db::ResponseRow, tokens: u64) {
    let id = row.id.clone();
    crate::accounting::submit(gw, vec![tollgate_db::Record::Response(row)]).await;
    tracing::debug!(id, tokens, "conversation summarized");
}

/// Starts summarizing a session whose messages after its summary passed the budget (once per
/// session at a time). The summary goes into the session's metadata; prompts then carry the
/// summary in place of the messages it covers, and `GET /v1/sessions/{id}/messages` still shows
/// every message.
pub fn summarize_session_if_long(gw: &Arc<Gateway>, id: &str, owner: &str, pending_tokens: u64) {
    let config = &gw.config.summaries;
    if !config.enabled || pending_tokens <= u64::from(config.token_budget) {
        return;
    }
    let busy_key = format!("s:{id}");
    let first = gw
        .summarizing
        .lock()
        .is_ok_and(|mut busy| busy.insert(busy_key.clone()));
    if !first {
        return;
    }
    let (gw, id, owner) = (gw.clone(), id.to_owned(), owner.to_owned());
    tokio::spawn(async move {
        if let Err(e) = summarize_session(&gw, &id, &owner).await {
            tracing::warn!(error = %e, "could not summarize a long session; it is cut to its token budget");
        }
        if let Ok(mut busy) = gw.summarizing.lock() {
            busy.remove(&busy_key);
        }
    });
}

async fn summarize_session(gw: &Gateway, id: &str, owner: &str) -> Result<(), String> {
    let pending = gw
        .sessions
        .unsummarized(id, owner)
        .await
        .map_err(|e| e.to_string())?;
    let messages: Vec<ChatMessage> = pending.messages.iter().map(|(_, m, _)| m.clone()).collect();
    let start = recent_start(
        gw,
        &messages,
        u64::from(gw.config.summaries.keep_recent_tokens),
    );
    if start == 0 {
        return Ok(());
    }
    let summary = summarize(gw, pending.summary.as_deref(), &messages[..start]).await?;
    let upto = &pending.messages[start - 1].0;
    let tokens: u64 = pending.messages[..start]
        .iter()
        .map(|(_, _, t)| u64::from(*t))
        .sum();
    gw.sessions
        .set_summary(id, owner, &summary, upto, tokens)
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(id, "session summarized");
    Ok(())
}

/// Asks the summary model for a summary of `turns` (after `previous`, an earlier summary).
pub async fn summarize(
    gw: &Gateway,
    previous: Option<&str>,
    turns: &[ChatMessage],
) -> Result<String, String> {
    let config = &gw.config.summaries;
    let mut transcript = String::new();
    if let Some(p) = previous {
        transcript.push_str("Earlier summary: ");
        transcript.push_str(p);
        transcript.push_str("\n\n");
    }
    for m in turns {
        let who = match m.role.as_str() {
            "assistant" => "Assistant",
            "user" => "User",
            _ => "Note",
        };
        transcript.push_str(&format!("{who}: {}\n", m.text_content()));
    }
    let request = serde_json::json!({
        "model": config.model,
        "messages": [
            {"role": "system", "content": "You summarize conversations in a few sentences. Keep names, numbers, facts, decisions and open questions. Write only the summary."},
            {"role": "user", "content": format!("{transcript}\nSummarize the conversation above.")},
        ],
        "temperature": 0,
        "max_tokens": config.max_tokens,
    });
    let request: ChatRequest = serde_json::from_value(request).map_err(|e| e.to_string())?;
    let routed = gw
        .router()
        .chat_stream(&request)
        .await
        .map_err(|e| e.to_string())?;
    let mut aggregator = Aggregator::default();
    let mut stream = routed.stream;
    while let Some(chunk) = stream.next().await {
        aggregator.push(&chunk.map_err(|e| e.to_string())?);
    }
    let text = aggregator
        .finish()
        .choices
        .first()
        .map(|c| c.message.text_content())
        .unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return Err("the summary model answered nothing".into());
    }
    Ok(text.to_owned())
}
