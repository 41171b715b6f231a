use std::time::Duration;

use tollgate_redis::{Channels, Error, EventKind, StreamConfig, TokenStreams};

use crate::{Backend, Ctx, pattern_suite};

fn streams(ctx: &Ctx, i: usize, config: StreamConfig) -> TokenStreams {
    TokenStreams::new(ctx.conn_for(i), ctx.keys.clone(), config)
}

const BLOCK: Duration = Duration::from_secs(5);

pattern_suite!(
    a_read_from_a_middle_id_returns_exactly_the_rest_in_order,
    a_reader_on_another_connection_follows_a_live_stream_to_the_end,
    a_resumed_reader_loses_and_repeats_nothing,
    an_id_used_twice_is_a_conflict,
    a_missing_stream_is_not_found,
    trimmed_entries_are_reported_not_skipped,
    finished_streams_expire,
    pubsub_reaches_current_subscribers,
    a_stream_whose_producer_died_is_reported_abandoned_not_waited_on,
    running_generations_are_listed_from_any_connection_until_they_end,
);

async fn running_generations_are_listed_from_any_connection_until_they_end(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (writer, operator) = (
        streams(&ctx, 0, StreamConfig::default()),
        streams(&ctx, 1, StreamConfig::default()),
    );
    for id in ["g1", "g2"] {
        writer.create(id, b"{}").await.unwrap();
        writer.mark_live(id).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let live: Vec<String> = operator
        .live(10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(live, ["g2", "g1"], "newest first");
    writer.mark_done("g2").await.unwrap();
    let live = operator.live(10).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].0, "g1");
    assert!(live[0].1 > 1_700_000_000_000, "a start time in ms");
}

async fn a_stream_whose_producer_died_is_reported_abandoned_not_waited_on(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let config = StreamConfig {
        producer_timeout: Duration::from_millis(400),
        ..StreamConfig::default()
    };
    let (writer, reader) = (streams(&ctx, 0, config.clone()), streams(&ctx, 1, config));
    let mut p = writer.create("dies", b"").await.unwrap();
    p.push(b"a").await.unwrap();
    let mut r = reader.reader("dies").await.unwrap();
    // Alive: beats keep a reader waiting, however slow the next chunk.
    for _ in 0..4 {
        p.heartbeat().await.unwrap();
        assert!(
            r.read(2, Duration::from_millis(150))
                .await
                .unwrap()
                .is_empty()
        );
    }
    p.push(b"b").await.unwrap();
    // The producer dies (no end, no beat): readers get what was written, then Abandoned.
    drop(p);
    let got = r.read(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(got.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        r.read(3, Duration::from_millis(100)).await,
        Err(Error::Abandoned)
    ));
    // A finished stream is never abandoned, whatever its producer does after.
    let mut done = writer.create("done", b"").await.unwrap();
    done.push(b"x").await.unwrap();
    done.finish(b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut r = reader.reader("done").await.unwrap();
    assert!(
        r.read(3, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    let events: Vec<EventKind> = r
        .read(0, BLOCK)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(events.last(), Some(&EventKind::Done));
}

async fn a_read_from_a_middle_id_returns_exactly_the_rest_in_order(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = streams(&ctx, 0, StreamConfig::default());
    let mut p = s.create("gen-1", b"meta").await.unwrap();
    for i in 0..50 {
        p.push(format!("tok{i}").as_bytes()).await.unwrap();
    }
    p.finish(b"").await.unwrap();
    let mut reader = s.reader("gen-1").await.unwrap();
    // seq 1 is start, tok{i} is seq i + 2: after 26 come tok25..tok49 and done.
    let events = reader.read(26, BLOCK).await.unwrap();
    assert_eq!(events.len(), 26);
    for (i, e) in events.iter().take(25).enumerate() {
        assert_eq!(e.seq, 27 + i as u64);
        assert_eq!(e.kind, EventKind::Chunk);
        assert_eq!(e.data, format!("tok{}", 25 + i).into_bytes());
    }
    assert_eq!(events[25].kind, EventKind::Done);
}

async fn a_reader_on_another_connection_follows_a_live_stream_to_the_end(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let producer_side = streams(&ctx, 0, StreamConfig::default());
    let reader_side = streams(&ctx, 1, StreamConfig::default());
    // The reader starts before the producer has written anything but the start entry.
    let mut p = producer_side.create("live", b"m").await.unwrap();
    let mut follower = reader_side.reader("live").await.unwrap().follow(0, BLOCK);
    let producing = tokio::spawn(async move {
        for i in 0..30 {
            p.push(format!("{i}").as_bytes()).await.unwrap();
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        p.fail(b"upstream went away").await.unwrap();
    });
    let mut seen = Vec::new();
    while let Some(e) = follower.next().await.unwrap() {
        seen.push(e);
    }
    producing.await.unwrap();
    assert_eq!(seen.len(), 32);
    assert_eq!(seen[0].kind, EventKind::Start);
    assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let last = seen.last().unwrap();
    assert_eq!(
        (last.kind, last.data.as_slice()),
        (EventKind::Error, &b"upstream went away"[..])
    );
}

async fn a_resumed_reader_loses_and_repeats_nothing(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let s = streams(&ctx, 0, StreamConfig::default());
    let mut p = s.create("resume", b"").await.unwrap();
    let chunks: Vec<Vec<u8>> = (0..40).map(|i| format!("c{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    p.push_many(&refs[..20]).await.unwrap();
    // A client reads some, then its connection drops; it comes back elsewhere with its last id.
    let mut first = streams(&ctx, 0, StreamConfig::default())
        .reader("resume")
        .await
        .unwrap()
        .follow(0, BLOCK);
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(first.next().await.unwrap().unwrap());
    }
    let last_event_id = first.position();
    drop(first);
    p.push_many(&refs[20..]).await.unwrap();
    p.finish(b"").await.unwrap();
    let mut second = streams(&ctx, 1, StreamConfig::default())
        .reader("resume")
        .await
        .unwrap()
        .follow(last_event_id, BLOCK);
    while let Some(e) = second.next().await.unwrap() {
        got.push(e);
    }
    let data: Vec<Vec<u8>> = got
        .iter()
        .filter(|e| e.kind == EventKind::Chunk)
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(data, chunks);
}

async fn an_id_used_twice_is_a_conflict(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = streams(&ctx, 0, StreamConfig::default());
    let _p = s.create("dup", b"").await.unwrap();
    assert!(matches!(
        s.create("dup", b"").await,
        Err(Error::Conflict(_))
    ));
}

async fn a_missing_stream_is_not_found(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = streams(&ctx, 0, StreamConfig::default());
    let mut r = s.reader("never-created").await.unwrap();
    assert!(matches!(
        r.read(0, Duration::from_millis(50)).await,
        Err(Error::NotFound)
    ));
}

async fn trimmed_entries_are_reported_not_skipped(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let s = streams(
        &ctx,
        0,
        StreamConfig {
            max_len: 10,
            ..StreamConfig::default()
        },
    );
    let mut p = s.create("bounded", b"").await.unwrap();
    for i in 0..1000 {
        p.push(format!("{i}").as_bytes()).await.unwrap();
    }
    let mut r = s.reader("bounded").await.unwrap();
    match r.read(0, BLOCK).await {
        Err(Error::Trimmed {
            requested: 0,
            oldest,
        }) => assert!(oldest > 1),
        other => panic!("expected Trimmed, got {other:?}"),
    }
    // Reading from a kept position still works.
    let tail = r.read(1000, BLOCK).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].seq, 1001);
}

async fn finished_streams_expire(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let config = StreamConfig {
        ttl_after_end: Duration::from_millis(200),
        ..StreamConfig::default()
    };
    let s = streams(&ctx, 0, config);
    let mut p = s.create("short", b"").await.unwrap();
    p.push(b"x").await.unwrap();
    p.finish(b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut r = s.reader("short").await.unwrap();
    assert!(matches!(
        r.read(0, Duration::from_millis(50)).await,
        Err(Error::NotFound)
    ));
}

async fn pubsub_reaches_current_subscribers(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let subscriber = Channels::new(ctx.conn_for(0), ctx.keys.clone());
    let publisher = Channels::new(ctx.conn_for(1), ctx.keys.clone());
    let mut sub_a = subscriber.subscribe("model-changes").await.unwrap();
    let mut sub_b = subscriber.subscribe("model-changes").await.unwrap();
    for i in 0..5 {
        publisher
            .publish("model-changes", format!("m{i}").as_bytes())
            .await
            .unwrap();
    }
    for sub in [&mut sub_a, &mut sub_b] {
        for i in 0..5 {
            let msg = tokio::time::timeout(BLOCK, sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(msg, format!("m{i}").into_bytes());
        }
    }
}
