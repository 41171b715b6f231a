//! Background tasks owned by a value: they end when their owner drops them (lease renewals, the
//! registry watcher, the outbox writer).

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// A spawned task, aborted on drop.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `future` (in the current tracing span).
    pub fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(future.in_current_span()))
    }

    /// Spawns `future` outside every span: for a task that serves the whole process though a
    /// request starts it (in the request's span, it would keep that span open, so never
    /// exported, and name the request in all its logs).
    pub fn spawn_unscoped(future: impl Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(future))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `tick` every `period`, the first time one period from now, until dropped: how leases
/// (a single-flight lease, a concurrency slot) are kept while their holder works.
pub fn every<F, Fut>(period: Duration, mut tick: F) -> AbortOnDrop
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    AbortOnDrop::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick().await;
        }
    })
}
