//! The outbox and the database, on a real redis-server and real SQLite and PostgreSQL databases.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use std::time::{Duration, Instant};

use sqlx::Row;
use tollgate_db::{
    DELETED, Database, Outbox, OutboxConfig, Record, ResponseRow, SessionMessageRow, SessionRow,
    UsageRow,
};
use tollgate_redis::{Keys, Redis, RedisConfig};
use tollgate_testkit::{TestDatabase, shared_redis, unique_prefix};

async fn redis() -> (Redis, Keys) {
    let redis = Redis::connect(&RedisConfig::new(shared_redis().url()))
        .await
        .unwrap();
    (redis, Keys::new(unique_prefix()).unwrap())
}

fn usage(id: usize) -> Record {
    Record::Usage(UsageRow {
        id: format!("u{id}"),
        key_id: "key_a".into(),
        tenant: "t".into(),
        model: if id.is_multiple_of(2) {
            "m/even"
        } else {
            "m/odd"
        }
        .into(),
        prompt_tokens: 10,
        completion_tokens: id as i64,
        cost_nanos: 1_000,
        served: tollgate_db::Served::Upstream,
        created_ms: 1_000 + id as i64,
    })
}

fn response(id: &str, version: i64, body: &str) -> Record {
    Record::Response(ResponseRow {
        id: id.into(),
        owner: "key_a".into(),
        version,
        created_ms: 5,
        body: body.into(),
    })
}

async fn count(db: &Database, table: &str) -> i64 {
    sqlx::query(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

#[tokio::test]
async fn writing_twice_changes_nothing_and_versions_only_go_up() {
    for fresh in TestDatabase::both() {
        let db = Database::connect(&fresh.url()).await.unwrap();
        // Migrations are idempotent: a second gateway starting on the same database is fine.
        let again = Database::connect(&fresh.url()).await.unwrap();
        let batch = vec![
            usage(1),
            usage(2),
            response("r1", 1, "first"),
            Record::SessionMessage(SessionMessageRow {
                session_id: "s".into(),
                seq: 1,
                owner: "key_a".into(),
                created_ms: 1,
                tokens: 3,
                message: r#"{"role":"user","content":"hi"}"#.into(),
            }),
        ];
        db.write(batch.clone()).await.unwrap();
        again.write(batch).await.unwrap();
        assert_eq!(count(&db, "usage_records").await, 2);
        assert_eq!(count(&db, "session_messages").await, 1);

        // A summarized version replaces the first; a late copy of the first does not.
        db.write(vec![response("r1", 2, "summarized")])
            .await
            .unwrap();
        db.write(vec![response("r1", 1, "first")]).await.unwrap();
        assert_eq!(db.response("r1").await.unwrap().unwrap().body, "summarized");
        // Deleted stays deleted, whatever arrives after.
        db.write(vec![response("r1", DELETED, "")]).await.unwrap();
        db.write(vec![response("r1", 2, "summarized")])
            .await
            .unwrap();
        assert!(db.response("r1").await.unwrap().unwrap().is_deleted());

        // Spend adds up per key and model.
        let spend = db.spend(Some("key_a"), 0).await.unwrap();
        assert_eq!(spend.len(), 2, "{spend:?}");
        assert_eq!(spend[0].model, "m/even");
        assert_eq!(spend[0].completion_tokens, 2);
        assert_eq!(spend[1].cost_nanos, 1_000);
        assert!(db.spend(Some("key_b"), 0).await.unwrap().is_empty());

        // Sessions: the latest metadata wins; a deletion removes the messages written before it.
        let session = |version: i64, deleted: bool| {
            Record::Session(SessionRow {
                id: "s".into(),
                owner: "key_a".into(),
                system: Some("be brief".into()),
                summary: None,
                summary_seq: 0,
                created_ms: 1,
                version,
                deleted,
            })
        };
        db.write(vec![session(10, false)]).await.unwrap();
        assert_eq!(
            db.session_messages("s", 10).await.unwrap()[0].message,
            r#"{"role":"user","content":"hi"}"#
        );
        db.write(vec![session(20, true), session(15, false)])
            .await
            .unwrap();
        assert!(db.session("s").await.unwrap().unwrap().deleted);
        assert!(db.session_messages("s", 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn writers_killed_before_and_after_their_commit_leave_every_record_exactly_once() {
    for fresh in TestDatabase::both() {
        let db = Database::connect(&fresh.url()).await.unwrap();
        let (redis, keys) = redis().await;
        let config = OutboxConfig {
            batch: 50,
            claim_idle: Duration::from_millis(300),
            block: Duration::from_millis(100),
            linger: Duration::ZERO,
        };
        let outbox = Outbox::new(redis, keys, &config, None);
        // 600 requests' records, 3 records each (some rows repeat across entries, as retried
        // requests do).
        let mut expected = std::collections::BTreeSet::new();
        for i in 0..600 {
            let records = vec![usage(3 * i), usage(3 * i + 1), usage(3 * i + 2)];
            for r in &records {
                expected.insert(r.key());
            }
            outbox.push(records).await.unwrap();
        }
        assert_eq!(outbox.backlog().await.unwrap(), 600);

        // Writer A commits a batch and dies before acknowledging it.
        let mut a = outbox.writer(db.clone(), "a").await.unwrap();
        let mut taken = a.take().await.unwrap();
        assert_eq!(taken.records(), 150);
        a.commit(&mut taken).await.unwrap();
        drop((a, taken));
        // Writer B reads a batch and dies before committing it.
        let mut b = outbox.writer(db.clone(), "b").await.unwrap();
        let taken = b.take().await.unwrap();
        assert_eq!(taken.records(), 150);
        drop((b, taken));

        // Writer C, started afterwards, drains everything, taking over A's and B's entries.
        let mut c = outbox.writer(db.clone(), "c").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while outbox.backlog().await.unwrap() > 0 {
            assert!(Instant::now() < deadline, "the outbox did not drain");
            c.step().await.unwrap();
        }
        assert_eq!(count(&db, "usage_records").await, 1800);
        let ids: std::collections::BTreeSet<String> = db
            .usage("key_a")
            .await
            .unwrap()
            .into_iter()
            .map(|u| format!("u:{}", u.id))
            .collect();
        assert_eq!(ids, expected);
    }
}

/// Pushes made while an entry is on its way to Redis go together in the next one: fewer entries
/// than pushes, each push's records in one entry, every record written once.
#[tokio::test]
async fn concurrent_pushes_share_entries_and_every_record_lands_once() {
    let sqlite = TestDatabase::sqlite();
    let db = Database::connect(&sqlite.url()).await.unwrap();
    let (redis, keys) = redis().await;
    let outbox = Outbox::new(redis, keys, &OutboxConfig::default(), None);
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..400 {
        let outbox = outbox.clone();
        pushes.spawn(async move { outbox.push(vec![usage(2 * i), usage(2 * i + 1)]).await });
    }
    while let Some(push) = pushes.join_next().await {
        push.unwrap().unwrap();
    }
    let entries = outbox.backlog().await.unwrap();
    assert!(
        (1..400).contains(&entries),
        "400 concurrent pushes made {entries} entries"
    );
    let mut writer = outbox.writer(db.clone(), "w").await.unwrap();
    let mut written = 0;
    while outbox.backlog().await.unwrap() > 0 {
        written += writer.step().await.unwrap();
    }
    assert_eq!(written, 800);
    assert_eq!(count(&db, "usage_records").await, 800);
}

/// Records sent without waiting are in the outbox once `flushed` returns, and records queued
/// before others are written before them; a flush with nothing queued returns at once.
#[tokio::test]
async fn a_flush_returns_once_everything_queued_before_it_is_in_the_outbox() {
    let sqlite = TestDatabase::sqlite();
    let db = Database::connect(&sqlite.url()).await.unwrap();
    let (redis, keys) = redis().await;
    // One entry per read, to see which entry holds what.
    let config = OutboxConfig {
        batch: 1,
        ..OutboxConfig::default()
    };
    let outbox = Outbox::new(redis, keys, &config, None);
    outbox.flushed().await;
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    // Queued now, written later: the first is queued before the 99 sent after it.
    let first = outbox.enqueue(vec![usage(0)]);
    for i in 1..100 {
        outbox.send(vec![usage(i)]);
    }
    outbox.flushed().await;
    assert!(outbox.backlog().await.unwrap() >= 1);
    let mut writer = outbox.writer(db.clone(), "w").await.unwrap();
    let mut entry = writer.take().await.unwrap();
    writer.commit(&mut entry).await.unwrap();
    let mut total = entry.records();
    writer.ack(entry).await.unwrap();
    let written: Vec<String> = db
        .usage("key_a")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert!(
        written.iter().any(|id| id == "u0"),
        "the record queued first is in the first entry: {written:?}"
    );
    while outbox.backlog().await.unwrap() > 0 {
        total += writer.step().await.unwrap();
    }
    assert_eq!(
        total, 100,
        "everything sent before the flush is in the outbox"
    );
    first.await.unwrap();
}

/// A record the database refuses does not take the others of its entry with it: they land, and
/// the entry goes to the dead letters with the refused record named.
#[tokio::test]
async fn a_refused_record_is_dead_lettered_and_the_rest_of_its_entry_lands() {
    let postgres = TestDatabase::Postgres(tollgate_testkit::PostgresDb::create());
    let db = Database::connect(&postgres.url()).await.unwrap();
    let (redis, keys) = redis().await;
    let config = OutboxConfig {
        block: Duration::from_millis(100),
        ..OutboxConfig::default()
    };
    let outbox = Outbox::new(redis.clone(), keys.clone(), &config, None);
    // PostgreSQL refuses a NUL byte in text.
    let mut bad = usage(5);
    if let Record::Usage(row) = &mut bad {
        row.model = "m/\0bad".into();
    }
    outbox
        .push(vec![usage(1), usage(2), bad, usage(3)])
        .await
        .unwrap();
    let mut writer = outbox.writer(db.clone(), "w").await.unwrap();
    let mut taken = writer.take().await.unwrap();
    writer.commit(&mut taken).await.unwrap();
    writer.ack(taken).await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    assert_eq!(count(&db, "usage_records").await, 3);
    let bus = tollgate_redis::EventBus::new(redis, keys, tollgate_redis::EventConfig::default());
    let dead = bus.dead_letters("outbox", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let reason =
        String::from_utf8_lossy(dead[0].field("tg_reason").unwrap_or_default()).into_owned();
    assert!(reason.contains("u:u5"), "{reason}");
}

#[tokio::test]
async fn with_redis_gone_records_go_straight_to_the_database() {
    let sqlite = TestDatabase::sqlite();
    let db = Database::connect(&sqlite.url()).await.unwrap();
    let mut server = tollgate_testkit::RedisServer::start();
    let redis = Redis::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(300),
    })
    .await
    .unwrap();
    let outbox = Outbox::new(
        redis,
        Keys::new(unique_prefix()).unwrap(),
        &OutboxConfig::default(),
        Some(db.clone()),
    );
    server.kill();
    outbox.push(vec![usage(7)]).await.unwrap();
    assert_eq!(count(&db, "usage_records").await, 1);
    // Many at once: whatever queued behind a failed attempt goes to the database together, so
    // none waits for more than one more failed attempt.
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..600 {
        let outbox = outbox.clone();
        pushes.spawn(async move { outbox.push(vec![usage(100 + i)]).await });
    }
    while let Some(push) = pushes.join_next().await {
        push.unwrap().unwrap();
    }
    assert_eq!(count(&db, "usage_records").await, 601);
}

#[tokio::test]
async fn bad_database_urls_are_refused_with_the_reason() {
    let err = Database::connect("mysql://x").await.unwrap_err();
    assert!(err.to_string().contains("sqlite: or postgres://"), "{err}");
    assert!(Database::connect("sqlite:").await.is_err());
}

/// A session id is claimed once, by one owner, for life: a second claim (from any connection)
/// learns the first owner, and no later write of the session, its deletion included, changes
/// the owner or touches the owner's row.
#[tokio::test]
async fn a_session_id_is_claimed_once_and_no_write_changes_its_owner() {
    for fresh in TestDatabase::both() {
        let first = Database::connect(&fresh.url()).await.unwrap();
        let second = Database::connect(&fresh.url()).await.unwrap();
        let (a, b) = tokio::join!(
            first.claim_session("s", "key_a", 1),
            second.claim_session("s", "key_b", 1)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b, "two owners for one id");
        let holder = a;
        let other = if holder == "key_a" { "key_b" } else { "key_a" };
        assert_eq!(first.claim_session("s", other, 2).await.unwrap(), holder);
        let session = |owner: &str, version: i64, deleted: bool| {
            Record::Session(SessionRow {
                id: "s".into(),
                owner: owner.into(),
                system: Some(format!("{owner}'s")),
                summary: None,
                summary_seq: 0,
                created_ms: 1,
                version,
                deleted,
            })
        };
        first
            .write(vec![session(&holder, 10, false)])
            .await
            .unwrap();
        first.write(vec![session(other, 20, false)]).await.unwrap();
        first.write(vec![session(other, 30, true)]).await.unwrap();
        let row = second.session("s").await.unwrap().unwrap();
        assert_eq!(row.owner, holder);
        assert_eq!(row.system.as_deref(), Some(format!("{holder}'s").as_str()));
        assert!(!row.deleted);
        assert_eq!(row.version, 10);
        let response = |owner: &str, version: i64| {
            Record::Response(ResponseRow {
                id: "r".into(),
                owner: owner.into(),
                version,
                created_ms: 5,
                body: owner.into(),
            })
        };
        first.write(vec![response("key_a", 1)]).await.unwrap();
        first.write(vec![response("key_b", 2)]).await.unwrap();
        let row = second.response("r").await.unwrap().unwrap();
        assert_eq!((row.owner.as_str(), row.body.as_str()), ("key_a", "key_a"));
    }
}

/// Replicas on one Redis must share one database: the outbox is bound to the first database
/// that asks, and another database is refused (its writers would take the first one's records).
#[tokio::test]
async fn an_outbox_is_bound_to_one_database_and_refuses_another() {
    let (redis, keys) = redis().await;
    let (one, two) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    let first = Database::connect(&one.url()).await.unwrap();
    let same = Database::connect(&one.url()).await.unwrap();
    let other = Database::connect(&two.url()).await.unwrap();
    assert_eq!(
        first.identity().await.unwrap(),
        same.identity().await.unwrap()
    );
    let config = OutboxConfig::default();
    let outbox =
        |db: &Database| Outbox::new(redis.clone(), keys.clone(), &config, Some(db.clone()));
    outbox(&first).bind(&first).await.unwrap();
    outbox(&same).bind(&same).await.unwrap();
    let refused = outbox(&other).bind(&other).await.unwrap_err().to_string();
    assert!(refused.contains("another database"), "{refused}");
}

#[tokio::test]
async fn a_timeline_counts_each_kind_of_answer_per_step_and_model() {
    use tollgate_db::Served;
    for fresh in TestDatabase::both() {
        let db = Database::connect(&fresh.url()).await.unwrap();
        let row = |id: &str, tenant: &str, model: &str, served: Served, at: i64| {
            Record::Usage(UsageRow {
                id: id.into(),
                key_id: "key_a".into(),
                tenant: tenant.into(),
                model: model.into(),
                prompt_tokens: 10,
                completion_tokens: 5,
                cost_nanos: if served.cached() { 0 } else { 700 },
                served,
                created_ms: at,
            })
        };
        db.write(vec![
            row("a", "t1", "m/a", Served::Upstream, 60_000),
            row("b", "t1", "m/a", Served::Exact, 60_500),
            row("c", "t1", "m/a", Served::Semantic, 119_999),
            row("d", "t1", "m/a", Served::Coalesced, 119_999),
            row("e", "t2", "m/b", Served::Upstream, 120_000),
            // Before the window.
            row("f", "t1", "m/a", Served::Upstream, 59_999),
        ])
        .await
        .unwrap();
        let all = db.timeline(None, 60_000, 60_000).await.unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        let first = &all[0];
        assert_eq!((first.start_ms, first.model.as_str()), (60_000, "m/a"));
        assert_eq!(
            (first.requests, first.exact, first.semantic, first.coalesced),
            (4, 1, 1, 1)
        );
        // Only the exact and semantic hits' tokens: what the cache saved.
        assert_eq!(
            (first.hit_prompt_tokens, first.hit_completion_tokens),
            (20, 10)
        );
        assert_eq!(first.cost_nanos, 700);
        assert_eq!((all[1].start_ms, all[1].model.as_str()), (120_000, "m/b"));
        assert_eq!((all[1].requests, all[1].exact), (1, 0));
        // One tenant's.
        let t2 = db.timeline(Some("t2"), 0, 60_000).await.unwrap();
        assert_eq!(t2.len(), 1);
        assert_eq!(t2[0].model, "m/b");
        // The kind comes back from the column.
        let back = db.usage("key_a").await.unwrap();
        let kinds: Vec<Served> = back.iter().map(|u| u.served).collect();
        assert!(kinds.contains(&Served::Semantic) && kinds.contains(&Served::Coalesced));
    }
    // A record written before the kinds were told apart reads as before, and a record written
    // now still carries the `cached` flag a replica not upgraded yet reads.
    let old = r#"{"kind":"usage","id":"u","key_id":"k","tenant":"t","model":"m","prompt_tokens":1,"completion_tokens":1,"cost_nanos":0,"cached":true,"created_ms":1}"#;
    let Record::Usage(mut u) = serde_json::from_str::<Record>(old).unwrap() else {
        panic!("not a usage record");
    };
    assert_eq!(u.served, Served::Exact);
    u.served = Served::Semantic;
    let now: serde_json::Value = serde_json::to_value(Record::Usage(u.clone())).unwrap();
    assert_eq!(
        (&now["cached"], &now["served"]),
        (&serde_json::json!(true), &serde_json::json!("semantic"))
    );
    assert_eq!(
        serde_json::from_value::<Record>(now).unwrap(),
        Record::Usage(u)
    );
}

#[tokio::test]
async fn a_deleted_session_keeps_none_of_its_messages_and_its_next_life_loses_none() {
    let message = |seq: i64, created_ms: i64, text: &str| {
        Record::SessionMessage(SessionMessageRow {
            session_id: "s".into(),
            seq,
            owner: "key_a".into(),
            created_ms,
            tokens: 1,
            message: format!(r#"{{"role":"user","content":"{text}"}}"#),
        })
    };
    let tombstone = |version: i64| {
        Record::Session(SessionRow {
            id: "s".into(),
            owner: "key_a".into(),
            system: None,
            summary: None,
            summary_seq: 0,
            created_ms: 0,
            version,
            deleted: true,
        })
    };
    let texts = |db: Database| async move {
        let rows = db.session_messages("s", 100).await.unwrap();
        rows.iter()
            .map(|m| (m.seq, m.message.clone()))
            .collect::<Vec<_>>()
    };
    for fresh in TestDatabase::both() {
        let db = Database::connect(&fresh.url()).await.unwrap();
        // A message and the session's deletion in one batch: the message goes too.
        db.write(vec![message(1, 100, "old one"), tombstone(200)])
            .await
            .unwrap();
        assert!(texts(db.clone()).await.is_empty());

        // The old life's messages still in the database when the next life's, numbered from 1
        // again, arrive (the deletion written by a slower writer): the new ones take their
        // places, and the deletion, arriving last, takes only the old ones.
        db.write(vec![
            message(1, 100, "old one"),
            message(2, 110, "old two"),
            message(3, 120, "old three"),
        ])
        .await
        .unwrap();
        db.write(vec![message(1, 300, "new one"), message(2, 310, "new two")])
            .await
            .unwrap();
        // Written again (a writer that died before its acknowledgement): nothing changes, and
        // an old copy arriving late does not take a place back.
        db.write(vec![message(1, 300, "new one"), message(1, 100, "old one")])
            .await
            .unwrap();
        db.write(vec![tombstone(200)]).await.unwrap();
        let want = vec![
            (1, r#"{"role":"user","content":"new one"}"#.to_owned()),
            (2, r#"{"role":"user","content":"new two"}"#.to_owned()),
        ];
        assert_eq!(texts(db.clone()).await, want);
        // In one batch, the newer of two messages at one place wins, in either order.
        db.write(vec![
            message(3, 330, "new three"),
            message(3, 120, "old three"),
        ])
        .await
        .unwrap();
        assert_eq!(texts(db.clone()).await.len(), 3);
        // Deleted again: a message from before the deletion that arrives after it does not
        // stay; one from after it does.
        db.write(vec![tombstone(400)]).await.unwrap();
        db.write(vec![message(4, 340, "late"), message(5, 500, "next life")])
            .await
            .unwrap();
        assert_eq!(
            texts(db.clone()).await,
            vec![(5, r#"{"role":"user","content":"next life"}"#.to_owned())]
        );
        // A conversation's end and its next life in one batch (a busy writer reads both at
        // once): the next life's row is the one kept, and the end still takes the old messages.
        let next_life = Record::Session(SessionRow {
            id: "s".into(),
            owner: "key_a".into(),
            system: None,
            summary: None,
            summary_seq: 0,
            created_ms: 700,
            version: 700,
            deleted: false,
        });
        db.write(vec![
            tombstone(600),
            next_life,
            message(6, 700, "after the end"),
        ])
        .await
        .unwrap();
        assert_eq!(
            texts(db.clone()).await,
            vec![(6, r#"{"role":"user","content":"after the end"}"#.to_owned())]
        );
        let session = db.session("s").await.unwrap().unwrap();
        assert!(!session.deleted && session.version == 700, "{session:?}");
    }
}
