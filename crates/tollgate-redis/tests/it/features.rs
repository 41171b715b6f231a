use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_redis::{EntityRef, Error, EventBus, EventConfig, FeatureStore, StartAt};

use crate::{Backend, Ctx, pattern_suite};

fn features(v: Value) -> BTreeMap<String, Value> {
    serde_json::from_value(v).unwrap()
}

pattern_suite!(
    groups_are_written_whole_and_read_together,
    each_group_expires_on_its_own_ttl,
    many_entities_are_read_in_one_go,
    updates_arrive_through_the_event_bus,
);

async fn groups_are_written_whole_and_read_together(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = FeatureStore::new(ctx.redis(), ctx.keys.clone());
    let t1 = store
        .put(
            "user",
            "u1",
            "profile",
            &features(json!({"age": 31, "country": "FR"})),
            None,
        )
        .await
        .unwrap();
    store
        .put(
            "user",
            "u1",
            "activity",
            &features(json!({"clicks_7d": 12, "last": [1, 2]})),
            None,
        )
        .await
        .unwrap();
    let got = store
        .get("user", "u1", &["profile", "activity", "missing"])
        .await
        .unwrap();
    let profile = got[0].as_ref().unwrap();
    assert_eq!(
        profile.features,
        features(json!({"age": 31, "country": "FR"}))
    );
    assert_eq!(profile.updated_ms, t1);
    assert!(t1 > 1_700_000_000_000, "server clock, ms: {t1}");
    assert_eq!(got[1].as_ref().unwrap().features["last"], json!([1, 2]));
    assert_eq!(got[2], None);
    // A write replaces the whole group.
    store
        .put("user", "u1", "profile", &features(json!({"age": 32})), None)
        .await
        .unwrap();
    let again = store.get("user", "u1", &["profile"]).await.unwrap();
    assert_eq!(
        again[0].as_ref().unwrap().features,
        features(json!({"age": 32}))
    );
    for bad in [json!({}), json!({"@ts": 1}), json!({"": 1})] {
        assert!(matches!(
            store.put("user", "u1", "g", &features(bad), None).await,
            Err(Error::InvalidArgument(_))
        ));
    }
}

async fn each_group_expires_on_its_own_ttl(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = FeatureStore::new(ctx.redis(), ctx.keys.clone());
    store
        .put(
            "item",
            "i1",
            "fresh",
            &features(json!({"x": 1})),
            Some(Duration::from_millis(150)),
        )
        .await
        .unwrap();
    store
        .put("item", "i1", "static", &features(json!({"y": 2})), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = store.get("item", "i1", &["fresh", "static"]).await.unwrap();
    assert_eq!(got[0], None);
    assert!(got[1].is_some());
}

async fn many_entities_are_read_in_one_go(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = FeatureStore::new(ctx.redis(), ctx.keys.clone());
    let mut refs = Vec::new();
    for i in 0..50 {
        store
            .put(
                "user",
                &format!("u{i}"),
                "g",
                &features(json!({"i": i})),
                None,
            )
            .await
            .unwrap();
        refs.push(EntityRef {
            entity_type: "user".into(),
            entity_id: format!("u{i}"),
        });
    }
    refs.push(EntityRef {
        entity_type: "user".into(),
        entity_id: "nobody".into(),
    });
    let got = store.get_many(&refs, &["g"]).await.unwrap();
    for (i, groups) in got.iter().take(50).enumerate() {
        assert_eq!(groups[0].as_ref().unwrap().features["i"], json!(i));
    }
    assert_eq!(got[50], vec![None]);
}

async fn updates_arrive_through_the_event_bus(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = FeatureStore::new(ctx.redis(), ctx.keys.clone());
    let bus = EventBus::new(
        ctx.redis(),
        ctx.keys.clone(),
        EventConfig {
            block: Duration::from_millis(100),
            ..EventConfig::default()
        },
    );
    bus.create_group("feature-updates", "store", StartAt::Beginning)
        .await
        .unwrap();
    bus.publish(
        "feature-updates",
        &[
            ("entity_type", b"user"),
            ("entity_id", b"u7"),
            ("group", b"live"),
            ("score", b"0.93"),
            ("label", b"gold"),
        ],
    )
    .await
    .unwrap();
    bus.publish("feature-updates", &[("entity_type", b"user")])
        .await
        .unwrap();
    let mut consumer = bus
        .consumer("feature-updates", "store", "c1")
        .await
        .unwrap();
    let mut errors = Vec::new();
    let store2 = store.clone();
    consumer
        .process(|e| {
            let store = store2.clone();
            async move { store.apply_event(&e).await.map(|_| ()) }
        })
        .await
        .unwrap_or_else(|e| {
            errors.push(e);
            0
        });
    let got = store.get("user", "u7", &["live"]).await.unwrap();
    let live = got[0].as_ref().unwrap();
    assert_eq!(live.features["score"], json!(0.93));
    assert_eq!(live.features["label"], json!("gold"));
    assert!(errors.is_empty());
    // The malformed update stays pending (to be retried, then dead-lettered), not lost.
    assert_eq!(bus.pending("feature-updates", "store").await.unwrap(), 1);
}
