use tollgate_redis::{Error, VectorCollections, VectorConfig, VectorItem};
use tollgate_vector::{Condition, Filter, IndexConfig, Metadata, SearchMode};

use crate::{Backend, Ctx, pattern_suite};

pattern_suite!(
    a_write_on_one_instance_is_seen_by_the_next_search_on_another,
    filtered_search_after_reload_matches_filter_then_rank,
    an_instance_that_missed_trimmed_changes_reloads,
    concurrent_writers_on_two_instances_lose_nothing,
    a_dropped_collection_is_gone_everywhere_and_can_be_made_anew,
    bad_items_are_refused_whole,
    expired_items_are_never_ranked_and_the_next_write_purges_them,
    past_its_bound_a_collection_drops_the_items_that_expire_soonest_everywhere,
    an_instance_keeps_its_bound_of_items_in_memory_and_reloads_what_it_unloaded,
    a_number_raised_on_one_instance_is_seen_on_another_and_never_lowered,
    a_raised_floor_keeps_an_entry_from_answering_at_or_below_it_on_every_replica,
);

/// Two gateway instances: separate connections, separate in-process indexes.
fn instances(ctx: &Ctx, config: VectorConfig) -> (VectorCollections, VectorCollections) {
    (
        VectorCollections::new(ctx.conn_for(0), ctx.keys.clone(), config.clone()),
        VectorCollections::new(ctx.conn_for(1), ctx.keys.clone(), config),
    )
}

fn item(id: &str, vector: Vec<f32>, lang: &str, price: f64) -> VectorItem {
    VectorItem {
        id: id.to_owned(),
        vector,
        metadata: Metadata {
            tags: [("lang".to_owned(), lang.to_owned())].into(),
            numbers: [("price".to_owned(), price)].into(),
        },
        text: None,
        expires_at_ms: None,
    }
}

fn ids(found: &tollgate_redis::VectorSearch) -> Vec<String> {
    found.hits.iter().map(|h| h.id.clone()).collect()
}

async fn a_write_on_one_instance_is_seen_by_the_next_search_on_another(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = instances(&ctx, VectorConfig::default());
    let search = |q: Vec<f32>| other.search("docs", q, 2, Filter::default(), SearchMode::Auto);
    assert!(matches!(
        search(vec![1.0, 0.0, 0.0]).await,
        Err(Error::NotFound)
    ));
    a.upsert(
        "docs",
        &[
            item("x", vec![1.0, 0.0, 0.0], "en", 1.0),
            item("y", vec![0.0, 1.0, 0.0], "fr", 2.0),
        ],
    )
    .await
    .unwrap();
    let found = search(vec![1.0, 0.1, 0.0]).await.unwrap();
    assert_eq!(ids(&found), ["x", "y"]);
    assert!(found.exact);
    assert_eq!(found.hits[0].metadata.tags["lang"], "en");
    // Moved, then deleted: each visible at once on the other instance.
    a.upsert("docs", &[item("x", vec![0.0, 0.0, 1.0], "de", 3.0)])
        .await
        .unwrap();
    let found = search(vec![1.0, 0.1, 0.0]).await.unwrap();
    assert_eq!(ids(&found), ["y", "x"]);
    assert_eq!(found.hits[1].metadata.tags["lang"], "de");
    assert_eq!(a.delete("docs", &["y", "nope"]).await.unwrap(), 1);
    assert_eq!(ids(&search(vec![1.0, 0.1, 0.0]).await.unwrap()), ["x"]);
    let info = other.info("docs").await.unwrap();
    assert_eq!((info.dim, info.len, info.seq), (3, 1, 4));
    let stored = other.get("docs", "x").await.unwrap().unwrap();
    assert_eq!(stored.vector, vec![0.0, 0.0, 1.0]);
    assert!(other.get("docs", "y").await.unwrap().is_none());
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

async fn filtered_search_after_reload_matches_filter_then_rank(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (writer, _) = instances(&ctx, VectorConfig::default());
    let mut rng = Rng(42);
    let langs = ["en", "fr", "de"];
    let items: Vec<VectorItem> = (0..600)
        .map(|i| {
            let v: Vec<f32> = (0..16).map(|_| rng.next()).collect();
            item(
                &format!("d{i:03}"),
                v,
                langs[i % 3],
                f64::from(i as u32 % 100),
            )
        })
        .collect();
    for chunk in items.chunks(200) {
        writer.upsert("docs", chunk).await.unwrap();
    }
    // A fresh instance loads the collection from Redis on first use.
    let reader = VectorCollections::new(ctx.conn_for(1), ctx.keys.clone(), VectorConfig::default());
    for round in 0..20 {
        let q: Vec<f32> = (0..16).map(|_| rng.next()).collect();
        let (lo, hi) = (f64::from(round * 3), f64::from(round * 3 + 40));
        let filter = Filter {
            conditions: vec![
                Condition::TagIn {
                    field: "lang".into(),
                    values: vec!["en".into(), "de".into()],
                },
                Condition::Range {
                    field: "price".into(),
                    min: Some(lo),
                    max: Some(hi),
                },
            ],
        };
        let found = reader
            .search("docs", q.clone(), 7, filter, SearchMode::Auto)
            .await
            .unwrap();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mut want: Vec<(f64, &str)> = items
            .iter()
            .filter(|it| {
                it.metadata.tags["lang"] != "fr"
                    && (lo..=hi).contains(&it.metadata.numbers["price"])
            })
            .map(|it| {
                let dot: f64 = it
                    .vector
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                (dot / (norm(&it.vector) * norm(&q)), it.id.as_str())
            })
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let want: Vec<&str> = want.iter().take(7).map(|(_, id)| *id).collect();
        assert!(found.exact);
        assert_eq!(ids(&found), want, "round {round}");
    }
}

async fn an_instance_that_missed_trimmed_changes_reloads(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let config = VectorConfig {
        log_max_len: 10,
        ..VectorConfig::default()
    };
    let (a, other) = instances(&ctx, config);
    a.upsert("docs", &[item("keep", vec![1.0, 1.0], "en", 0.0)])
        .await
        .unwrap();
    assert_eq!(other.info("docs").await.unwrap().len, 1);
    // Far more changes than the log keeps: the other instance cannot replay them.
    for i in 0..600 {
        a.upsert(
            "docs",
            &[item(&format!("t{i}"), vec![1.0, i as f32], "en", 0.0)],
        )
        .await
        .unwrap();
    }
    let ids: Vec<String> = (0..500).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(a.delete("docs", &refs).await.unwrap(), 500);
    let info = other.info("docs").await.unwrap();
    assert_eq!((info.len, info.seq), (101, 1101));
    let all = other
        .search(
            "docs",
            vec![1.0, 0.0],
            1000,
            Filter::default(),
            SearchMode::Exact,
        )
        .await
        .unwrap();
    assert_eq!(all.hits.len(), 101);
    assert!(
        all.hits
            .iter()
            .all(|h| h.id == "keep" || h.id[1..].parse::<usize>().unwrap() >= 500)
    );
}

async fn concurrent_writers_on_two_instances_lose_nothing(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = instances(
        &ctx,
        VectorConfig {
            index: IndexConfig {
                graph_min_len: 100,
                ..IndexConfig::default()
            },
            ..VectorConfig::default()
        },
    );
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = if w % 2 == 0 { a.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let v = vec![1.0, w as f32, i as f32];
                store
                    .upsert("docs", &[item(&format!("w{w}-{i}"), v, "en", 0.0)])
                    .await
                    .unwrap();
                // Searches run while the others write, on both instances.
                if i % 10 == 0 {
                    store
                        .search(
                            "docs",
                            vec![1.0, 0.0, 0.0],
                            5,
                            Filter::default(),
                            SearchMode::Auto,
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for instance in [&a, &other] {
        let info = instance.info("docs").await.unwrap();
        assert_eq!((info.len, info.seq), (300, 300));
        let all = instance
            .search(
                "docs",
                vec![1.0, 0.0, 0.0],
                500,
                Filter::default(),
                SearchMode::Exact,
            )
            .await
            .unwrap();
        assert_eq!(all.hits.len(), 300);
    }
}

async fn a_dropped_collection_is_gone_everywhere_and_can_be_made_anew(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = instances(&ctx, VectorConfig::default());
    a.upsert("docs", &[item("x", vec![1.0, 0.0], "en", 0.0)])
        .await
        .unwrap();
    assert_eq!(other.info("docs").await.unwrap().len, 1);
    assert!(a.drop_collection("docs").await.unwrap());
    assert!(!a.drop_collection("docs").await.unwrap());
    assert!(matches!(other.info("docs").await, Err(Error::NotFound)));
    // The same name with another dimension is a new collection.
    a.upsert("docs", &[item("z", vec![0.0, 0.0, 1.0], "en", 0.0)])
        .await
        .unwrap();
    let found = other
        .search(
            "docs",
            vec![0.0, 0.0, 1.0],
            5,
            Filter::default(),
            SearchMode::Auto,
        )
        .await
        .unwrap();
    assert_eq!(ids(&found), ["z"]);
    assert_eq!(a.delete("nothing-here", &["x"]).await.unwrap(), 0);
}

async fn bad_items_are_refused_whole(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = VectorCollections::new(ctx.redis(), ctx.keys.clone(), VectorConfig::default());
    store
        .upsert("docs", &[item("a", vec![1.0, 0.0], "en", 0.0)])
        .await
        .unwrap();
    let invalid = |r: Result<u64, Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(store.upsert("docs", &[]).await));
    assert!(invalid(
        store
            .upsert(
                "docs",
                &[
                    item("b", vec![1.0, 0.0], "en", 0.0),
                    item("c", vec![0.0, 0.0], "en", 0.0)
                ]
            )
            .await
    ));
    assert!(invalid(
        store
            .upsert("docs", &[item("b", vec![1.0, f32::NAN], "en", 0.0)])
            .await
    ));
    assert!(invalid(
        store
            .upsert("docs", &[item("b", vec![1.0, 0.0], "en", f64::INFINITY)])
            .await
    ));
    assert!(invalid(
        store
            .upsert("docs", &[item("", vec![1.0, 0.0], "en", 0.0)])
            .await
    ));
    assert!(invalid(
        store
            .upsert(
                "docs",
                &[
                    item("b", vec![1.0, 0.0], "en", 0.0),
                    item("c", vec![1.0], "en", 0.0)
                ]
            )
            .await
    ));
    assert!(matches!(
        store
            .upsert("docs", &[item("b", vec![1.0, 0.0, 0.0], "en", 0.0)])
            .await,
        Err(Error::Conflict(_))
    ));
    // Nothing of the refused batches was stored.
    assert_eq!(store.info("docs").await.unwrap().len, 1);
    assert!(matches!(
        store
            .search(
                "docs",
                vec![1.0, 0.0, 0.0],
                1,
                Filter::default(),
                SearchMode::Auto
            )
            .await,
        Err(Error::InvalidArgument(_))
    ));
}

async fn expired_items_are_never_ranked_and_the_next_write_purges_them(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = instances(&ctx, VectorConfig::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expiring = |id: &str, v: Vec<f32>, at: u64| VectorItem {
        expires_at_ms: Some(at),
        ..item(id, v, "en", 0.0)
    };
    a.upsert(
        "cache",
        &[
            expiring("fresh", vec![1.0, 0.2], now + 60_000),
            expiring("stale", vec![1.0, 0.0], now + 300),
        ],
    )
    .await
    .unwrap();
    let found = other
        .search(
            "cache",
            vec![1.0, 0.0],
            2,
            Filter::default(),
            SearchMode::Auto,
        )
        .await
        .unwrap();
    assert_eq!(ids(&found), ["stale", "fresh"]);
    assert!(
        found
            .hits
            .iter()
            .all(|h| !h.metadata.numbers.contains_key("@exp")),
        "the expiry is internal"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // Past its expiry the nearest item is never ranked, purged or not.
    let found = other
        .search(
            "cache",
            vec![1.0, 0.0],
            2,
            Filter::default(),
            SearchMode::Exact,
        )
        .await
        .unwrap();
    assert_eq!(ids(&found), ["fresh"]);
    // The next write purges it, and every instance drops it.
    a.upsert("cache", &[expiring("new", vec![0.0, 1.0], now + 60_000)])
        .await
        .unwrap();
    assert!(a.get("cache", "stale").await.unwrap().is_none());
    assert_eq!(other.info("cache").await.unwrap().len, 2);
    // A collection whose items all expire expires with them; one durable item makes it durable.
    let meta = format!("{}{{v:cache}}:meta", ctx.keys.prefix());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&meta)
        .query_async(&mut ctx.redis().conn())
        .await
        .unwrap();
    assert!(pttl > 60_000 && pttl <= 121_000, "{pttl}");
    a.upsert("cache", &[item("kept", vec![1.0, 1.0], "en", 0.0)])
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&meta)
        .query_async(&mut ctx.redis().conn())
        .await
        .unwrap();
    assert_eq!(pttl, -1);
    // Names starting with '@' are reserved.
    let mut reserved = item("r", vec![1.0, 0.0], "en", 0.0);
    reserved.metadata.numbers.insert("@exp".into(), 1.0);
    assert!(matches!(
        a.upsert("cache", &[reserved]).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A collection bounded to 5 expiring items, written by two instances: past the bound, each
/// write drops the items that expire soonest (the oldest, for one TTL), on every instance;
/// items that never expire are not counted and never dropped.
async fn past_its_bound_a_collection_drops_the_items_that_expire_soonest_everywhere(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let config = VectorConfig {
        max_expiring_items: Some(5),
        ..VectorConfig::default()
    };
    let (a, other) = instances(&ctx, config);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expiring = |i: u64| VectorItem {
        expires_at_ms: Some(now + 60_000 + i),
        ..item(&format!("q{i}"), vec![1.0, i as f32], "en", 0.0)
    };
    a.upsert("sc", &[item("durable", vec![0.0, 1.0], "en", 0.0)])
        .await
        .unwrap();
    // Written one by one and in a batch, alternating instances.
    for i in 0..6 {
        let writer = if i % 2 == 0 { &a } else { &other };
        writer.upsert("sc", &[expiring(i)]).await.unwrap();
    }
    other
        .upsert("sc", &[expiring(6), expiring(7), expiring(8)])
        .await
        .unwrap();
    for instance in [&a, &other] {
        assert_eq!(
            instance.info("sc").await.unwrap().len,
            6,
            "5 expiring + 1 durable"
        );
        let found = instance
            .search(
                "sc",
                vec![1.0, 0.0],
                10,
                Filter::default(),
                SearchMode::Exact,
            )
            .await
            .unwrap();
        let mut kept = ids(&found);
        kept.sort();
        assert_eq!(kept, ["durable", "q4", "q5", "q6", "q7", "q8"]);
    }
    for gone in ["q0", "q3"] {
        assert!(a.get("sc", gone).await.unwrap().is_none(), "{gone}");
    }
}

/// An instance holds at most `max_loaded_items` in memory across its collections: searching
/// past it unloads those searched least recently (never the one being searched). Nothing is
/// lost: the items stay in Redis, a search of an unloaded collection loads it again, with every
/// change another instance made meanwhile.
async fn an_instance_keeps_its_bound_of_items_in_memory_and_reloads_what_it_unloaded(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let bounded = VectorConfig {
        max_loaded_items: Some(10),
        ..VectorConfig::default()
    };
    let (reader, _) = instances(&ctx, bounded);
    let (writer, _) = instances(&ctx, VectorConfig::default());
    let vector = |i: usize| vec![1.0, i as f32, 0.5];
    for c in 0..5 {
        let items: Vec<VectorItem> = (0..4)
            .map(|i| item(&format!("c{c}i{i}"), vector(i), "en", 0.0))
            .collect();
        writer.upsert(&format!("coll{c}"), &items).await.unwrap();
    }
    let nearest = |c: usize| {
        let reader = reader.clone();
        async move {
            let found = reader
                .search(
                    &format!("coll{c}"),
                    vector(2),
                    1,
                    Filter::default(),
                    SearchMode::Auto,
                )
                .await
                .unwrap();
            ids(&found)
        }
    };
    for c in 0..5 {
        assert_eq!(nearest(c).await, [format!("c{c}i2")]);
        let (collections, items) = reader.loaded();
        assert!(items <= 10, "{collections} collections, {items} items");
    }
    // Two collections of four fit: the last two searched.
    assert_eq!(reader.loaded(), (2, 8));
    // The first was unloaded; the other instance changes it; searching it loads it again.
    writer
        .upsert("coll0", &[item("c0new", vector(2), "en", 0.0)])
        .await
        .unwrap();
    writer.delete("coll0", &["c0i2"]).await.unwrap();
    assert_eq!(nearest(0).await, ["c0new"]);
    assert_eq!(reader.loaded(), (2, 8));
    assert_eq!(reader.info("coll0").await.unwrap().len, 4);
}

async fn a_number_raised_on_one_instance_is_seen_on_another_and_never_lowered(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = instances(&ctx, VectorConfig::default());
    let mut x = item("x", vec![1.0, 0.0, 0.0], "en", 1.0);
    x.text = Some("a question with \"quotes\", a / and é".into());
    x.expires_at_ms = Some(4_102_444_800_000);
    a.upsert(
        "docs",
        &[x.clone(), item("y", vec![0.0, 1.0, 0.0], "fr", 2.0)],
    )
    .await
    .unwrap();
    let number = |found: &tollgate_redis::VectorSearch| {
        found.hits[0].metadata.numbers.get("@floor").copied()
    };
    let search = || {
        other.search(
            "docs",
            vec![1.0, 0.0, 0.0],
            1,
            Filter::default(),
            SearchMode::Auto,
        )
    };
    assert_eq!(number(&search().await.unwrap()), None);
    assert_eq!(
        a.raise_number("docs", "@floor", &[("x", 0.5)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(number(&search().await.unwrap()), Some(0.5));
    // Lower: nothing changes. Higher: raised.
    assert_eq!(
        a.raise_number("docs", "@floor", &[("x", 0.25)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(number(&search().await.unwrap()), Some(0.5));
    other
        .raise_number("docs", "@floor", &[("x", 0.75)])
        .await
        .unwrap();
    assert_eq!(
        number(
            &a.search(
                "docs",
                vec![1.0, 0.0, 0.0],
                1,
                Filter::default(),
                SearchMode::Auto
            )
            .await
            .unwrap()
        ),
        Some(0.75)
    );
    // Everything else of the item is as it was.
    let stored = other.get("docs", "x").await.unwrap().unwrap();
    assert_eq!(stored.text, x.text);
    assert_eq!(stored.vector, x.vector);
    assert_eq!(stored.expires_at_ms, x.expires_at_ms);
    assert_eq!(stored.metadata.tags, x.metadata.tags);
    assert_eq!(stored.metadata.numbers["price"], 1.0);
    // An item that is gone stays gone; a collection that is not there is not made.
    a.delete("docs", &["y"]).await.unwrap();
    assert_eq!(
        a.raise_number("docs", "@floor", &[("y", 0.9)])
            .await
            .unwrap(),
        0
    );
    assert!(a.get("docs", "y").await.unwrap().is_none());
    assert_eq!(
        a.raise_number("nothing", "@floor", &[("x", 0.9)])
            .await
            .unwrap(),
        0
    );
    assert!(matches!(a.info("nothing").await, Err(Error::NotFound)));
    assert!(matches!(
        a.raise_number("docs", "@floor", &[("x", f64::NAN)]).await,
        Err(Error::InvalidArgument(_))
    ));
}

async fn a_raised_floor_keeps_an_entry_from_answering_at_or_below_it_on_every_replica(b: Backend) {
    use std::time::Duration;
    use tollgate_redis::SemanticCache;
    let ctx = Ctx::new(b, 2).await;
    let replica =
        |i: usize| SemanticCache::new(ctx.conn_for(i), &ctx.keys, VectorConfig::default()).unwrap();
    let (a, other) = (replica(0), replica(1));
    let partition = SemanticCache::partition("m", "t", "context", "embedder");
    let ttl = Duration::from_secs(60);
    a.insert(&partition, "entry", vec![1.0, 0.0], "the question", ttl)
        .await
        .unwrap();
    // A question at cosine 0.96 from the entry, and one nearer, at 0.99.
    let at = |cos: f32| vec![cos, (1.0 - cos * cos).sqrt()];
    let lookup = |cache: &SemanticCache, cos: f32| {
        let (cache, partition) = (cache.clone(), partition.clone());
        async move {
            cache
                .lookup(&partition, "the question", at(cos), 0.9)
                .await
                .unwrap()
        }
    };
    let hit = lookup(&other, 0.96).await.unwrap();
    assert_eq!(hit.request_hash, "entry");
    // Found wrong at that similarity on one replica: no replica serves it there again.
    a.raise_floor(&partition, "entry", hit.similarity)
        .await
        .unwrap();
    assert_eq!(lookup(&other, 0.96).await, None);
    assert_eq!(lookup(&a, 0.96).await, None);
    assert_eq!(lookup(&other, 0.95).await, None);
    // Nearer questions it still answers.
    assert_eq!(lookup(&other, 0.99).await.unwrap().request_hash, "entry");
}
