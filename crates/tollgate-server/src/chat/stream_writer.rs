//! The token-stream writer: where a generation's chunks are written to Redis, so followers,
//! resuming clients and other instances can read them.
//!
//! One task per generation writes what accumulated while the previous write was in flight, in
//! one batch; between chunks (a slow first token) it beats, so readers know the generation lives.
//! Writes are best effort: the first failure is logged and stops them, never the generation.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tollgate_redis::EventKind;

/// Writes a generation's chunks to its token stream from a task of its own, batching what
/// accumulates while a write is in flight; errors are logged once and stop the writes, never
/// the generation.
pub(super) struct StreamWriter {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

enum WriterMsg {
    Chunk(Arc<str>),
    /// The terminal entry; the sender is told once it is written (or could not be).
    End(EventKind, Vec<u8>, oneshot::Sender<()>),
}

impl StreamWriter {
    pub(super) fn spawn(
        streams: tollgate_redis::TokenStreams,
        id: String,
        meta: Vec<u8>,
        beat: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<WriterMsg>();
        tokio::spawn(async move {
            let mut producer = match streams.create(&id, &meta).await {
                Ok(p) => {
                    // Operators see it among the running generations until it ends.
                    if let Err(e) = streams.mark_live(&id).await {
                        tracing::debug!(error = %e, "could not list a running generation");
                    }
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token stream unavailable; streaming to this client only");
                    None
                }
            };
            let mut broken = producer.is_none();
            let mut batch: Vec<Arc<str>> = Vec::new();
            // Between chunks (a slow first token), beats show readers the generation lives.
            let mut beats = tokio::time::interval(beat);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => m,
                        None => break,
                    },
                    _ = beats.tick() => {
                        if let Some(p) = producer.as_ref().filter(|_| !broken) {
                            let _ = p.heartbeat().await;
                        }
                        continue;
                    }
                };
                let mut end = None;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        WriterMsg::Chunk(c) => batch.push(c),
                        WriterMsg::End(kind, data, written) => {
                            end = Some((kind, data, written));
                            break;
                        }
                    }
                    next = rx.try_recv().ok();
                }
                if let Some(producer) = producer.as_mut().filter(|_| !broken && !batch.is_empty()) {
                    let refs: Vec<&[u8]> = batch.iter().map(|c| c.as_bytes()).collect();
                    if let Err(e) = producer.push_many(&refs).await {
                        tracing::warn!(error = %e, "token stream write failed; this stream is no longer resumable");
                        broken = true;
                    }
                }
                batch.clear();
                if let Some((kind, data, written)) = end {
                    if let Some(producer) = producer.take().filter(|_| !broken) {
                        let result = match kind {
                            EventKind::Error => producer.fail(&data).await,
                            _ => producer.finish(&data).await,
                        };
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "could not end the token stream");
                        }
                    }
                    let _ = written.send(());
                    let _ = streams.mark_done(&id).await;
                    return;
                }
            }
            // The generation went away without an end.
            if producer.is_some() {
                let _ = streams.mark_done(&id).await;
            }
        });
        StreamWriter { tx }
    }

    pub(super) fn chunk(&self, json: Arc<str>) {
        let _ = self.tx.send(WriterMsg::Chunk(json));
    }

    /// Writes the terminal entry after everything queued, and waits (at most `wait`) until the
    /// stream is complete in Redis.
    pub(super) async fn end(self, kind: EventKind, data: Vec<u8>, wait: Duration) {
        let (written, done) = oneshot::channel();
        if self.tx.send(WriterMsg::End(kind, data, written)).is_ok() {
            let _ = tokio::time::timeout(wait, done).await;
        }
    }
}
