//! The Responses API's streaming events of a chat stream: `response.created`, `in_progress`,
//! the output item and content part, a `response.output_text.delta` per chunk with text, then
//! the `.done` events and `response.completed` (or `incomplete`). The chunks are folded by the
//! core crate's [`Aggregator`]; the record is stored before `response.completed` is sent.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tollgate_core::Aggregator;

use super::Pending;
use crate::chat::StreamItem;
use crate::response_store::Context;

/// The Responses streaming events of a chat stream, encoded.
pub(super) fn stream_events(
    pending: Pending,
    context: Context,
    items: BoxStream<'static, StreamItem>,
) -> BoxStream<'static, Bytes> {
    struct State {
        pending: Pending,
        context: Option<Context>,
        items: BoxStream<'static, StreamItem>,
        seq: u64,
        started: bool,
        aggregator: Aggregator,
        done: bool,
    }
    impl State {
        fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
            data["type"] = Value::String(kind.to_owned());
            data["sequence_number"] = Value::from(self.seq);
            self.seq += 1;
            Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
        }
    }
    let state = State {
        pending,
        context: Some(context),
        items,
        seq: 0,
        started: false,
        aggregator: Aggregator::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            let object = s.pending.object(None);
            out.push(s.event("response.created", json!({"response": object})));
            out.push(s.event("response.in_progress", json!({"response": object})));
            let mut item = s.pending.message_item("", "in_progress");
            item["content"] = json!([]);
            out.push(s.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ));
            let item_id = s.pending.message_id();
            out.push(s.event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
            return Some((Bytes::from(out.concat()), s));
        }
        loop {
            match s.items.next().await {
                Some(StreamItem::Chunk { json, .. }) => {
                    let Ok(chunk) = serde_json::from_str::<tollgate_core::ChatChunk>(&json) else {
                        continue;
                    };
                    s.aggregator.push(&chunk);
                    let delta = chunk
                        .choices
                        .first()
                        .and_then(|c| c.delta.content.clone())
                        .unwrap_or_default();
                    if delta.is_empty() {
                        continue;
                    }
                    let item_id = s.pending.message_id();
                    let event = s.event(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "delta": delta, "logprobs": []}),
                    );
                    return Some((event, s));
                }
                Some(StreamItem::Error(body)) => {
                    s.done = true;
                    let error = body.get("error").cloned().unwrap_or(Value::Null);
                    let event = s.event(
                        "error",
                        json!({"code": error.get("code").cloned().unwrap_or(Value::Null),
                               "message": error.get("message").cloned().unwrap_or(Value::Null),
                               "param": error.get("param").cloned().unwrap_or(Value::Null)}),
                    );
                    return Some((event, s));
                }
                Some(StreamItem::Done) | None => {
                    s.done = true;
                    let item_id = s.pending.message_id();
                    let text = s.aggregator.text().to_owned();
                    out.push(s.event(
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "text": text, "logprobs": []}),
                    ));
                    out.push(s.event(
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "part": {"type": "output_text", "text": text, "annotations": []}}),
                    ));
                    let item = s.pending.message_item(&text, "completed");
                    out.push(s.event(
                        "response.output_item.done",
                        json!({"output_index": 0, "item": item}),
                    ));
                    let completion = std::mem::take(&mut s.aggregator).finish();
                    let context = s.context.take().unwrap_or_default();
                    let object = s.pending.finish(context, &completion).await;
                    let kind = if object["status"] == "incomplete" {
                        "response.incomplete"
                    } else {
                        "response.completed"
                    };
                    out.push(s.event(kind, json!({"response": object})));
                    return Some((Bytes::from(out.concat()), s));
                }
            }
        }
    })
    .boxed()
}
