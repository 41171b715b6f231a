//! How much of the machine the semantic cache's local embedder may take from the requests it
//! serves.
//!
//! Every cacheable question the semantic cache looks up is embedded. With an in-process model
//! that is CPU taken from everything else the gateway does: it pays when lookups hit and is lost
//! when they miss. So while the gateway's own threads are busy (at least half the time over the
//! last tenth of a second), the embedder may be busy only a share of the time: the configured
//! `semantic_cache.embedder_share` when no lookup hits, rising with the recent hit rate to all
//! of it when every lookup does. On a machine with room it is never held back: a lone request
//! is always looked up. A question the pacer turns away goes on as a miss at once, like one that
//! finds every embedding slot taken (`tollgate_semantic_skipped_total{reason="paced"}`).
//!
//! The share is of wall time the embedder is busy (one or more embeddings running), measured
//! as it goes: a credit of embedder time grows at the share and is spent while it runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Embedder time that may be spent at once after a quiet spell (and owed at most).
const BURST: f64 = 0.2;
/// How often the runtime's busy time is read.
const SAMPLE: Duration = Duration::from_millis(100);
/// The share of the async workers' time above which the gateway counts as busy.
const BUSY: f64 = 0.5;
/// Lookups the hit rate is averaged over (about).
const HIT_WINDOW: f64 = 32.0;

/// The embedder's pace (see the module's note).
#[derive(Debug)]
pub struct EmbedderPacer {
    /// The share of time the embedder may be busy while nothing it looks up hits.
    floor: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Embedder time it may still spend, in seconds (negative: owed).
    credit: f64,
    /// When `credit` was last brought up to date.
    last: Instant,
    /// Embeddings running.
    active: usize,
    /// The recent share of lookups that hit.
    hit_rate: f64,
    /// Whether the gateway's threads were busy over the last sample, and that sample.
    busy: bool,
    sampled: Option<(Instant, Duration)>,
}

/// An embedding the pacer let start; its time is counted until this is dropped.
#[derive(Debug)]
pub struct Paced(Arc<EmbedderPacer>);

impl Drop for Paced {
    fn drop(&mut self) {
        self.0.end_at(Instant::now());
    }
}

impl EmbedderPacer {
    /// A pacer that lets the embedder take `floor` of the time (0 to 1) when no lookup hits.
    /// It starts as if every lookup hit: a new cache is not held back before it learned.
    pub fn new(floor: f64) -> EmbedderPacer {
        EmbedderPacer {
            floor: floor.clamp(0.0, 1.0),
            state: Mutex::new(State {
                credit: BURST,
                last: Instant::now(),
                active: 0,
                hit_rate: 1.0,
                busy: false,
                sampled: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The share of time the embedder may be busy at `hit_rate`.
    fn share(&self, hit_rate: f64) -> f64 {
        self.floor + (1.0 - self.floor) * hit_rate
    }

    /// Brings the credit up to `now`: earned at the share, spent while an embedding runs.
    fn advance(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = now;
        let spent = if state.active > 0 { elapsed } else { 0.0 };
        state.credit =
            (state.credit + elapsed * self.share(state.hit_rate) - spent).clamp(-BURST, BURST);
    }

    /// Lets an embedding start now, or not: `None` while the gateway is busy and the embedder
    /// has used up its share.
    pub fn start(self: &Arc<Self>) -> Option<Paced> {
        self.start_at(Instant::now(), runtime_busy_time)
            .then(|| Paced(self.clone()))
    }

    /// [`Self::start`] at `now`, the workers' busy time read by `busy_time` (their total and
    /// how many they are); `true` counts an embedding running until [`Self::end_at`].
    fn start_at(
        &self,
        now: Instant,
        busy_time: impl FnOnce() -> Option<(Duration, usize)>,
    ) -> bool {
        let mut state = self.lock();
        self.advance(&mut state, now);
        let due = state
            .sampled
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= SAMPLE);
        if due && let Some((total, workers)) = busy_time() {
            if let Some((at, before)) = state.sampled {
                let wall = now.saturating_duration_since(at).as_secs_f64() * workers.max(1) as f64;
                let busy = total.saturating_sub(before).as_secs_f64();
                state.busy = busy >= BUSY * wall;
            }
            state.sampled = Some((now, total));
        }
        if state.busy && state.credit <= 0.0 {
            return false;
        }
        state.active += 1;
        true
    }

    /// An embedding [`Self::start_at`] let start ended at `now`.
    fn end_at(&self, now: Instant) {
        let mut state = self.lock();
        self.advance(&mut state, now);
        state.active = state.active.saturating_sub(1);
    }

    /// Counts a lookup's outcome into the hit rate.
    pub fn looked_up(&self, hit: bool) {
        self.looked_up_at(Instant::now(), hit);
    }

    fn looked_up_at(&self, now: Instant, hit: bool) {
        let mut state = self.lock();
        self.advance(&mut state, now);
        state.hit_rate += (f64::from(u8::from(hit)) - state.hit_rate) / HIT_WINDOW;
    }
}

/// The time this runtime's workers have been busy (not parked) so far, summed, and how many
/// they are.
fn runtime_busy_time() -> Option<(Duration, usize)> {
    let metrics = tokio::runtime::Handle::try_current().ok()?.metrics();
    let workers = metrics.num_workers();
    let busy = (0..workers)
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum();
    Some((busy, workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated clock and the workers' busy time on it.
    struct Clock {
        now: Instant,
        worker_busy: Duration,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                now: Instant::now(),
                worker_busy: Duration::ZERO,
            }
        }
    }

    /// Runs an embedder that always has a question waiting, one embedding of 9 ms after
    /// another, for `seconds` of `clock`'s time, with two workers busy a share `busy` (0 to 1)
    /// of it and every lookup a hit or not; returns the share of the time it was embedding.
    fn run(pacer: &EmbedderPacer, clock: &mut Clock, busy: f64, hit: bool, seconds: f64) -> f64 {
        let (each, step) = (Duration::from_millis(9), Duration::from_millis(1));
        let (from, mut embedding) = (clock.now, Duration::ZERO);
        let pass = |clock: &mut Clock, d: Duration| {
            clock.now += d;
            clock.worker_busy += d.mul_f64(busy * 2.0);
        };
        while (clock.now - from).as_secs_f64() < seconds {
            let worker_busy = clock.worker_busy;
            if pacer.start_at(clock.now, || Some((worker_busy, 2))) {
                pass(clock, each);
                embedding += each;
                pacer.end_at(clock.now);
                pacer.looked_up_at(clock.now, hit);
            } else {
                pass(clock, step);
            }
        }
        embedding.as_secs_f64() / (clock.now - from).as_secs_f64()
    }

    #[test]
    fn an_embedder_whose_lookups_miss_takes_its_share_of_a_busy_gateway() {
        let (pacer, mut clock) = (EmbedderPacer::new(0.15), Clock::new());
        // Settle the hit rate and spend the starting credit, then measure.
        run(&pacer, &mut clock, 0.9, false, 5.0);
        let share = run(&pacer, &mut clock, 0.9, false, 20.0);
        assert!(
            (0.13..=0.17).contains(&share),
            "busy {share:.3} of the time"
        );
    }

    #[test]
    fn an_embedder_whose_lookups_hit_runs_unpaced() {
        let (pacer, mut clock) = (EmbedderPacer::new(0.15), Clock::new());
        let share = run(&pacer, &mut clock, 0.9, true, 10.0);
        assert!(share > 0.99, "busy {share:.3} of the time");
    }

    #[test]
    fn a_gateway_with_room_never_holds_its_embedder_back() {
        let (pacer, mut clock) = (EmbedderPacer::new(0.15), Clock::new());
        let share = run(&pacer, &mut clock, 0.2, false, 10.0);
        assert!(share > 0.99, "busy {share:.3} of the time");
    }

    #[test]
    fn the_share_rises_with_the_hit_rate() {
        let pacer = EmbedderPacer::new(0.2);
        assert_eq!(pacer.share(0.0), 0.2);
        assert!((pacer.share(0.5) - 0.6).abs() < 1e-12);
        assert_eq!(pacer.share(1.0), 1.0);
    }
}
