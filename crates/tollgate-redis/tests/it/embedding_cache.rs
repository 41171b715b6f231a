use std::time::Duration;

use tollgate_redis::EmbeddingCache;

use crate::{Backend, Ctx, pattern_suite};

pattern_suite!(
    batches_keep_order_and_only_misses_are_missing,
    versions_do_not_share_vectors
);

async fn batches_keep_order_and_only_misses_are_missing(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let cache = EmbeddingCache::new(
        ctx.redis(),
        ctx.keys.clone(),
        "local/all-minilm-l6-v2",
        "1",
        Duration::from_secs(60),
    )
    .unwrap();
    let v1 = [0.25f32, -1.5, 3.0e-8, f32::MAX];
    let v3 = [1.0f32; 384];
    cache
        .set_many(&[("first", &v1), ("third", &v3)])
        .await
        .unwrap();
    let got = cache
        .get_many(&["first", "second", "third", "first"])
        .await
        .unwrap();
    assert_eq!(got[0].as_deref(), Some(&v1[..]));
    assert_eq!(got[1], None);
    assert_eq!(got[2].as_deref(), Some(&v3[..]));
    assert_eq!(got[3].as_deref(), Some(&v1[..]));
    assert!(cache.get_many(&[]).await.unwrap().is_empty());
}

async fn versions_do_not_share_vectors(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let v1 = EmbeddingCache::new(
        ctx.redis(),
        ctx.keys.clone(),
        "m",
        "1",
        Duration::from_secs(60),
    )
    .unwrap();
    let v2 = EmbeddingCache::new(
        ctx.redis(),
        ctx.keys.clone(),
        "m",
        "2",
        Duration::from_secs(60),
    )
    .unwrap();
    v1.set_many(&[("text", &[1.0f32, 2.0][..])]).await.unwrap();
    assert_eq!(v2.get_many(&["text"]).await.unwrap(), vec![None]);
}
