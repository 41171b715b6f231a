//! The in-process limiter that stands in while Redis is unreachable (`on_redis_error = "open"`):
//! token buckets per limit key and a concurrency count, each sized to this instance's share
//! (1 / `expected_instances`) of the limit. Pure: no Redis, no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_redis::{Check, Limit};

/// The in-process stand-in used while Redis is unreachable: token buckets per limit key, and a
/// concurrency count, each sized to this instance's share of the limit.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    state: Mutex<HashMap<String, (f64, Instant)>>,
    concurrency: Arc<Mutex<HashMap<String, u64>>>,
}

/// Holds local concurrency slots (a key's own, a model's capacity).
#[derive(Debug)]
pub struct LocalGuard {
    keys: Vec<String>,
    concurrency: Arc<Mutex<HashMap<String, u64>>>,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        let Ok(mut c) = self.concurrency.lock() else {
            return;
        };
        for k in &self.keys {
            if let Some(n) = c.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl LocalLimiter {
    pub(crate) fn check(
        &self,
        subject: &str,
        checks: &[Check],
        estimate: u64,
        share: u64,
    ) -> Result<LocalGuard, Duration> {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return Err(Duration::from_secs(1));
        };
        let mut plan = Vec::new();
        let mut concurrency = Vec::new();
        for c in checks {
            let (capacity, cost) = match c.limit {
                Limit::Gcra { limit, .. } | Limit::SlidingLog { limit, .. } => (limit, 1),
                Limit::TokenBucket { capacity, .. } => (capacity, estimate),
                Limit::Concurrency { limit, .. } => {
                    concurrency.push((
                        format!("{subject}:{}", c.key.as_str()),
                        (limit / share).max(1),
                    ));
                    continue;
                }
                _ => continue,
            };
            let capacity = (capacity as f64 / share as f64).max(1.0);
            let (level, at) = state
                .get(c.key.as_str())
                .copied()
                .unwrap_or((capacity, now));
            let level =
                (level + now.duration_since(at).as_secs_f64() * capacity / 60.0).min(capacity);
            let cost = (cost as f64).min(capacity);
            if level < cost {
                return Err(Duration::from_secs_f64((cost - level) * 60.0 / capacity));
            }
            plan.push((c.key.as_str().to_owned(), level - cost));
        }
        let mut guard = LocalGuard {
            keys: Vec::new(),
            concurrency: self.concurrency.clone(),
        };
        if !concurrency.is_empty() {
            let Ok(mut held) = self.concurrency.lock() else {
                return Err(Duration::from_secs(1));
            };
            // All slots or none.
            if concurrency
                .iter()
                .any(|(key, limit)| held.get(key).copied().unwrap_or(0) >= *limit)
            {
                return Err(Duration::from_secs(1));
            }
            for (key, _) in concurrency {
                *held.entry(key.clone()).or_insert(0) += 1;
                guard.keys.push(key);
            }
        }
        for (key, level) in plan {
            state.insert(key, (level, now));
        }
        Ok(guard)
    }
}
