use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_redis::{Error, EventBus, EventConfig, StartAt};

use crate::{Backend, Ctx, pattern_suite};

fn bus(ctx: &Ctx, i: usize, config: EventConfig) -> EventBus {
    EventBus::new(ctx.conn_for(i), ctx.keys.clone(), config)
}

fn quick() -> EventConfig {
    EventConfig {
        claim_idle: Duration::from_millis(200),
        block: Duration::from_millis(100),
        ..EventConfig::default()
    }
}

pattern_suite!(
    three_consumers_process_ten_thousand_events_once_each,
    a_killed_consumers_pending_entries_are_processed_by_another,
    a_poison_message_lands_in_the_dead_letter_stream_after_n_tries,
    a_stream_is_bound_to_the_first_sink_from_any_connection,
);

/// Several connections bind one stream at once: one sink wins, every caller learns which.
async fn a_stream_is_bound_to_the_first_sink_from_any_connection(b: Backend) {
    let ctx = Ctx::new(b, 3).await;
    let binds = (0..3).map(|i| {
        let bus = bus(&ctx, i, quick());
        async move { bus.bind_sink("outbox", &format!("db_{i}")).await.unwrap() }
    });
    let bound = futures::future::join_all(binds).await;
    assert!(bound.iter().all(|s| s == &bound[0]), "{bound:?}");
    let again = bus(&ctx, 1, quick())
        .bind_sink("outbox", "db_9")
        .await
        .unwrap();
    assert_eq!(again, bound[0]);
}

/// The happy path: no consumer dies, so nothing may be taken over. A claim idle time only a dead
/// consumer reaches (200 ms is reached by a live one on a loaded machine, and its entries are
/// then rightly delivered again: at least once).
fn no_takeover() -> EventConfig {
    EventConfig {
        claim_idle: Duration::from_secs(60),
        ..quick()
    }
}

async fn three_consumers_process_ten_thousand_events_once_each(b: Backend) {
    let ctx = Ctx::new(b, 3).await;
    let publisher = bus(&ctx, 0, no_takeover());
    publisher
        .create_group("orders", "billing", StartAt::Beginning)
        .await
        .unwrap();
    // Creating it again is fine.
    publisher
        .create_group("orders", "billing", StartAt::Beginning)
        .await
        .unwrap();
    let mut publishing = Vec::new();
    for p in 0..4 {
        let publisher = bus(&ctx, p % 3, no_takeover());
        publishing.push(tokio::spawn(async move {
            for i in 0..2500 {
                publisher
                    .publish("orders", &[("n", format!("{}", p * 2500 + i).as_bytes())])
                    .await
                    .unwrap();
            }
        }));
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let duplicates = Arc::new(Mutex::new(0u64));
    let mut consumers = Vec::new();
    for c in 0..3 {
        let bus = bus(&ctx, c, no_takeover());
        let (seen, duplicates) = (seen.clone(), duplicates.clone());
        consumers.push(tokio::spawn(async move {
            let mut consumer = bus
                .consumer("orders", "billing", &format!("worker-{c}"))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.lock().unwrap().len() < 10_000 && Instant::now() < deadline {
                consumer
                    .process(|e| {
                        let n = String::from_utf8(e.field("n").unwrap().to_vec()).unwrap();
                        if !seen.lock().unwrap().insert(n) {
                            *duplicates.lock().unwrap() += 1;
                        }
                        async { Ok::<_, String>(()) }
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in publishing.into_iter().chain(consumers) {
        t.await.unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 10_000, "none lost");
    assert_eq!(*duplicates.lock().unwrap(), 0, "none processed twice");
    assert_eq!(
        publisher.pending("orders", "billing").await.unwrap(),
        0,
        "all acknowledged"
    );
}

async fn a_killed_consumers_pending_entries_are_processed_by_another(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let events = bus(&ctx, 0, quick());
    events
        .create_group("jobs", "g", StartAt::New)
        .await
        .unwrap();
    for i in 0..10 {
        events
            .publish("jobs", &[("job", format!("j{i}").as_bytes())])
            .await
            .unwrap();
    }
    // The first consumer takes the work and dies before acknowledging any of it.
    let taken: Vec<String> = {
        let mut doomed = events.consumer("jobs", "g", "doomed").await.unwrap();
        doomed
            .next()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(taken.len(), 10);
    assert_eq!(events.pending("jobs", "g").await.unwrap(), 10);
    let mut survivor = bus(&ctx, 1, quick())
        .consumer("jobs", "g", "survivor")
        .await
        .unwrap();
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < 10 && Instant::now() < deadline {
        for e in survivor.next().await.unwrap() {
            assert_eq!(e.deliveries, 2, "a second delivery: {e:?}");
            survivor.ack(&e.id).await.unwrap();
            done.push(e.id);
        }
    }
    assert_eq!(
        done, taken,
        "the survivor processed exactly what the dead consumer left, in order"
    );
    assert_eq!(events.pending("jobs", "g").await.unwrap(), 0);
}

async fn a_poison_message_lands_in_the_dead_letter_stream_after_n_tries(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let config = EventConfig {
        max_deliveries: 3,
        claim_idle: Duration::from_millis(100),
        ..quick()
    };
    let events = bus(&ctx, 0, config);
    events
        .create_group("mail", "senders", StartAt::Beginning)
        .await
        .unwrap();
    for body in ["hello", "poison", "bye"] {
        events
            .publish("mail", &[("body", body.as_bytes()), ("to", b"a@b.c")])
            .await
            .unwrap();
    }
    let mut consumer = events.consumer("mail", "senders", "w1").await.unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.dead_letters("mail", 10).await.unwrap().is_empty() && Instant::now() < deadline {
        let attempts = attempts.clone();
        consumer
            .process(move |e| {
                let poison = e.field("body") == Some(&b"poison"[..]);
                attempts.lock().unwrap().push((
                    String::from_utf8_lossy(e.field("body").unwrap()).into_owned(),
                    e.deliveries,
                ));
                async move { if poison { Err("cannot send") } else { Ok(()) } }
            })
            .await
            .unwrap();
    }
    let dead = events.dead_letters("mail", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].field("body"), Some(&b"poison"[..]));
    assert_eq!(
        dead[0].field("to"),
        Some(&b"a@b.c"[..]),
        "the original fields travel with it"
    );
    assert_eq!(dead[0].field("tg_deliveries"), Some(&b"3"[..]));
    assert_eq!(dead[0].field("tg_reason"), Some(&b"cannot send"[..]));
    let attempts = attempts.lock().unwrap().clone();
    let poison_tries: Vec<u64> = attempts
        .iter()
        .filter(|(b, _)| b == "poison")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(poison_tries, vec![1, 2, 3]);
    assert_eq!(
        attempts.iter().filter(|(b, _)| b != "poison").count(),
        2,
        "the others were handled once each"
    );
    assert_eq!(events.pending("mail", "senders").await.unwrap(), 0);
}

#[tokio::test]
async fn an_event_needs_a_field() {
    let ctx = Ctx::new(Backend::Single, 1).await;
    let events = bus(&ctx, 0, quick());
    assert!(matches!(
        events.publish("s", &[]).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        events.publish("", &[("a", b"b")]).await,
        Err(Error::InvalidArgument(_))
    ));
}

mod blocking {
    use std::time::Duration;

    use tollgate_redis::{EventBus, EventConfig};

    use crate::{Backend, Ctx, pattern_suite};

    pattern_suite!(a_blocking_read_longer_than_the_client_default_waits_it_out);

    /// redis-rs cuts responses after 500 ms by default; blocking reads must not be cut short.
    async fn a_blocking_read_longer_than_the_client_default_waits_it_out(b: Backend) {
        let ctx = Ctx::new(b, 1).await;
        let bus = EventBus::new(ctx.redis(), ctx.keys.clone(), EventConfig::default());
        bus.publish("quiet", &[("k", b"v")]).await.unwrap();
        let block = Duration::from_millis(1500);
        let mut conn = bus.reader(block).await.unwrap();
        let got = bus.read(&mut conn, "quiet", "$", 10, block).await.unwrap();
        assert!(got.is_empty());
    }
}
