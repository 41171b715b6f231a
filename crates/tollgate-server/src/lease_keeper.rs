//! The concurrency slots this process holds, kept alive by one task: every held lease is renewed
//! once a third of the lease's length (`limits.concurrency_lease_seconds`), all together, while
//! its request runs. A request that ends before then (most do) costs a map insert and a remove,
//! where a task of its own per request cost a spawn, a timer and an abort. A process that dies
//! renews nothing, so its slots free themselves within one lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tollgate_redis::{Lease, RateLimiter};

use crate::task::AbortOnDrop;

/// Keeps the leases it is given until their [`Held`] is dropped.
#[derive(Debug)]
pub struct LeaseKeeper {
    shared: Arc<Shared>,
    /// Started with the first lease held (it needs the runtime); ends with the keeper.
    task: OnceLock<AbortOnDrop>,
}

#[derive(Debug)]
struct Shared {
    limiter: RateLimiter,
    period: Duration,
    next: AtomicU64,
    held: Mutex<HashMap<u64, Vec<Lease>>>,
    /// Told when leases are held after none were.
    wake: Notify,
}

/// Leases kept until this is dropped.
#[derive(Debug)]
pub struct Held {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = self.shared.held.lock() {
            held.remove(&self.id);
        }
    }
}

impl LeaseKeeper {
    /// Renews through `limiter`, every `lease / 3`.
    pub fn new(limiter: RateLimiter, lease: Duration) -> Self {
        LeaseKeeper {
            shared: Arc::new(Shared {
                limiter,
                period: (lease / 3).max(Duration::from_millis(1)),
                next: AtomicU64::new(0),
                held: Mutex::default(),
                wake: Notify::new(),
            }),
            task: OnceLock::new(),
        }
    }

    /// Keeps `leases` until the returned [`Held`] is dropped (call it from the runtime).
    pub fn hold(&self, leases: Vec<Lease>) -> Held {
        self.task
            .get_or_init(|| AbortOnDrop::spawn_unscoped(renew(self.shared.clone())));
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut held) = self.shared.held.lock() {
            held.insert(id, leases);
        }
        // A permit is stored when the task is not waiting yet: no wake-up is lost.
        self.shared.wake.notify_one();
        Held {
            shared: self.shared.clone(),
            id,
        }
    }
}

/// Renews every held lease once a period, while there are any; sleeps on `wake` otherwise.
async fn renew(shared: Arc<Shared>) {
    loop {
        let idle = shared.held.lock().map_or(true, |h| h.is_empty());
        if idle {
            shared.wake.notified().await;
            continue;
        }
        tokio::time::sleep(shared.period).await;
        let leases: Vec<Lease> = match shared.held.lock() {
            Ok(held) => held.values().flatten().cloned().collect(),
            Err(_) => continue,
        };
        // Sent at once: one round trip on the multiplexed connection, however many there are.
        let renewed = futures::future::join_all(leases.iter().map(|l| shared.limiter.renew(l)));
        for outcome in renewed.await {
            if !matches!(outcome, Ok(true)) {
                tracing::debug!(?outcome, "a concurrency lease could not be renewed");
            }
        }
    }
}
