//! The Responses API's streaming events of a chat stream: `response.created` and `in_progress`;
//! then, per output item, `response.output_item.added`, its deltas
//! (`response.output_text.delta` for the message, `response.function_call_arguments.delta` for a
//! function call) and its `.done` events; then `response.completed` (or `incomplete`). The chunks
//! are folded by the core crate's [`Aggregator`]; the record is stored before
//! `response.completed` is sent.
//!
//! Without tools the message item opens at once (a client sees it before the first token); with
//! tools, items open as the model starts them, so a turn that only calls functions has no empty
//! message. Output indexes and item ids are those of the final response object.

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
    let eager = pending.req.tools.as_ref().is_none_or(Vec::is_empty);
    let state = State {
        pending,
        context: Some(context),
        items,
        seq: 0,
        started: false,
        aggregator: Aggregator::default(),
        done: false,
        eager,
        message: None,
        message_closed: false,
        calls: Vec::new(),
        next_index: 0,
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
            if s.eager {
                s.open_message(&mut out);
            }
            return Some((Bytes::from(out.concat()), s));
        }
        loop {
            match s.items.next().await {
                Some(StreamItem::Chunk { json, .. }) => {
                    let Ok(chunk) = serde_json::from_str::<tollgate_core::ChatChunk>(&json) else {
                        continue;
                    };
                    s.aggregator.push(&chunk);
                    let Some(choice) = chunk.choices.first() else {
                        continue;
                    };
                    if let Some(delta) = choice.delta.content.as_deref().filter(|d| !d.is_empty()) {
                        s.text_delta(&mut out, delta);
                    }
                    for fragment in choice.delta.tool_calls.iter().flatten() {
                        s.call_fragment(&mut out, fragment);
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Bytes::from(out.concat()), s));
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
                    let completion = std::mem::take(&mut s.aggregator).finish();
                    let message = completion.choices.first().map(|c| &c.message);
                    let text = message.map(|m| m.text_content()).unwrap_or_default();
                    let calls = message
                        .and_then(|m| m.extra.get("tool_calls"))
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    if s.message.is_none() && calls.is_empty() {
                        s.open_message(&mut out);
                    }
                    s.close_message(&mut out, &text);
                    for (k, at) in std::mem::take(&mut s.calls) {
                        let Some(call) = calls.get(k) else { continue };
                        let item = s.pending.call_item(k, call, "completed");
                        out.push(s.event(
                            "response.function_call_arguments.done",
                            json!({"item_id": item["id"], "output_index": at,
                                   "arguments": item["arguments"]}),
                        ));
                        out.push(s.event(
                            "response.output_item.done",
                            json!({"output_index": at, "item": item}),
                        ));
                    }
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

struct State {
    pending: Pending,
    context: Option<Context>,
    items: BoxStream<'static, StreamItem>,
    seq: u64,
    started: bool,
    aggregator: Aggregator,
    done: bool,
    /// Open the message item before the first token (no tools in the request).
    eager: bool,
    /// The message item's output index, once opened.
    message: Option<usize>,
    message_closed: bool,
    /// Function calls opened: (the call's index in the chat stream, its output index).
    calls: Vec<(usize, usize)>,
    next_index: usize,
}

impl State {
    fn event(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = Value::String(kind.to_owned());
        data["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    }

    fn open_message(&mut self, out: &mut Vec<Bytes>) {
        let at = self.next_index;
        self.next_index += 1;
        self.message = Some(at);
        let mut item = self.pending.message_item("", "in_progress");
        item["content"] = json!([]);
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": at, "item": item}),
        ));
        let item_id = self.pending.message_id();
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": at, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ));
    }

    fn close_message(&mut self, out: &mut Vec<Bytes>, text: &str) {
        let Some(at) = self.message.filter(|_| !self.message_closed) else {
            return;
        };
        self.message_closed = true;
        let item_id = self.pending.message_id();
        out.push(self.event(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": at, "content_index": 0,
                   "text": text, "logprobs": []}),
        ));
        out.push(self.event(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": at, "content_index": 0,
                   "part": {"type": "output_text", "text": text, "annotations": []}}),
        ));
        let item = self.pending.message_item(text, "completed");
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": at, "item": item}),
        ));
    }

    fn text_delta(&mut self, out: &mut Vec<Bytes>, delta: &str) {
        if self.message_closed {
            // Text after a function call: it is in the final object, not in an item's deltas.
            return;
        }
        if self.message.is_none() {
            self.open_message(out);
        }
        let at = self.message.unwrap_or_default();
        let item_id = self.pending.message_id();
        out.push(self.event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": at, "content_index": 0,
                   "delta": delta, "logprobs": []}),
        ));
    }

    fn call_fragment(&mut self, out: &mut Vec<Bytes>, fragment: &Value) {
        let k = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let at = match self.calls.iter().find(|(index, _)| *index == k) {
            Some((_, at)) => *at,
            None => {
                // The message, if any, is complete once the model starts calling.
                let text = self.aggregator.text().to_owned();
                self.close_message(out, &text);
                let at = self.next_index;
                self.next_index += 1;
                self.calls.push((k, at));
                let mut item = self.pending.call_item(k, fragment, "in_progress");
                item["arguments"] = Value::from("");
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": at, "item": item}),
                ));
                at
            }
        };
        let delta = fragment
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !delta.is_empty() {
            out.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": self.pending.call_item_id(k), "output_index": at,
                       "delta": delta}),
            ));
        }
    }
}
