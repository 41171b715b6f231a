//! Session history: a request naming a session (`x-tollgate-session-id`) is sent with the
//! session's history before its own messages, and its exchange is recorded once answered.

use std::sync::Arc;

use tollgate_core::{ChatCompletion, ChatMessage, ChatRequest};
use tracing::Instrument;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::Gateway;

/// What to write to the session when the answer is complete.
#[derive(Debug, Clone)]
pub(crate) struct SessionWrite {
    id: String,
    owner: String,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The request's `chat` span: a streamed answer is recorded after the handler returned,
    /// and its `session write` span still belongs to the request's trace.
    span: tracing::Span,
}

impl SessionWrite {
    /// Appends the request's messages and the answer to the session: in Redis before the answer
    /// ends, then in the database through the outbox (and a summary when it grew too long).
    pub(crate) async fn record(self, gw: &Arc<Gateway>, completion: &ChatCompletion) {
        let mut messages = self.messages;
        if let Some(choice) = completion.choices.first() {
            messages.push(choice.message.clone());
        }
        // Awaited before the answer ends, so the session's next turn (on any replica) has this
        // one in its history; the durable copy follows.
        let span = tracing::info_span!(
            target: "otel",
            parent: &self.span,
            "session write",
            "tollgate.session_id" = %self.id,
            "tollgate.messages" = messages.len(),
        );
        match gw
            .sessions
            .append_or_create_logged(&self.id, &self.owner, self.system.as_deref(), &messages)
            .instrument(span)
            .await
        {
            Ok(written) => {
                crate::summaries::summarize_session_if_long(
                    gw,
                    &self.id,
                    &self.owner,
                    written.pending_tokens,
                );
                let gw = gw.clone();
                tokio::spawn(async move {
                    crate::sessions::record_write(&gw, &self.id, &self.owner, &written, &messages)
                        .await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record the exchange in its session");
            }
        }
    }
}

/// Prepends the session's history to the request; returns what to record afterwards.
pub(super) async fn with_history(
    gw: &Gateway,
    principal: &Principal,
    id: &str,
    req: &mut ChatRequest,
) -> Result<SessionWrite, ApiError> {
    let is_system = |m: &ChatMessage| m.role == "system" || m.role == "developer";
    let system = req
        .messages
        .iter()
        .find(|m| is_system(m))
        .map(ChatMessage::text_content);
    let span = tracing::info_span!(
        target: "otel",
        "session history",
        "tollgate.session_id" = id,
        "tollgate.history_messages" = tracing::field::Empty,
    );
    let history = crate::sessions::history_for_request(
        gw,
        id,
        &principal.subject,
        system.as_deref(),
        gw.config.sessions.history_token_budget,
    )
    .instrument(span.clone())
    .await?;
    span.record("tollgate.history_messages", history.len());
    let new: Vec<ChatMessage> = req
        .messages
        .iter()
        .filter(|m| !is_system(m))
        .cloned()
        .collect();
    if history.first().is_some_and(is_system) {
        // The session's system prompt stands; the request's own is dropped.
        req.messages.retain(|m| !is_system(m));
    }
    let mut messages = history;
    messages.append(&mut req.messages);
    req.messages = messages;
    Ok(SessionWrite {
        id: id.to_owned(),
        owner: principal.subject.clone(),
        system,
        messages: new,
        span: tracing::Span::current(),
    })
}
