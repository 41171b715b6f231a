use std::time::Duration;

use tollgate_redis::{ResultCache, TierHit};

use crate::{Backend, Ctx, pattern_suite};

pattern_suite!(a_lookup_answers_from_the_most_specific_tier_held_in_one_round_trip);

async fn a_lookup_answers_from_the_most_specific_tier_held_in_one_round_trip(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    // Written through one connection, read through another, as two replicas would.
    let (writer, reader) = (
        ResultCache::new(ctx.conn_for(0), ctx.keys.clone()),
        ResultCache::new(ctx.conn_for(1), ctx.keys.clone()),
    );
    let tiers = ["u1001:ctx_abc", "precomp:u1001", "popular:electronics"];
    let hour = Duration::from_secs(3600);
    assert_eq!(reader.lookup("recs", &tiers).await.unwrap(), None);
    writer
        .put("recs", "popular:electronics", b"[1,2,3]", hour)
        .await
        .unwrap();
    assert_eq!(
        reader.lookup("recs", &tiers).await.unwrap(),
        Some(TierHit {
            tier: 2,
            value: b"[1,2,3]".to_vec()
        })
    );
    writer
        .put("recs", "precomp:u1001", b"[7]", hour)
        .await
        .unwrap();
    writer
        .put("recs", "u1001:ctx_abc", b"[9]", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        reader.lookup("recs", &tiers).await.unwrap().unwrap().tier,
        0
    );
    // The most specific expires on its own TTL; the next tier answers.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hit = reader.lookup("recs", &tiers).await.unwrap().unwrap();
    assert_eq!((hit.tier, hit.value.as_slice()), (1, &b"[7]"[..]));
    // Another cache's keys are its own.
    assert_eq!(reader.lookup("other", &tiers).await.unwrap(), None);
    assert!(writer.delete("recs", "precomp:u1001").await.unwrap());
    assert_eq!(
        reader.lookup("recs", &tiers).await.unwrap().unwrap().tier,
        2
    );
    // Bad input is refused before Redis.
    assert!(reader.lookup("recs", &[]).await.is_err());
    assert!(writer.put("recs", "k", b"v", Duration::ZERO).await.is_err());
}
