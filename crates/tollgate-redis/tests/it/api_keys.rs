use tollgate_redis::{ApiKeys, Error};

use crate::{Backend, Ctx, pattern_suite};

pattern_suite!(keys_authenticate_until_revoked);

async fn keys_authenticate_until_revoked(b: Backend) {
    let ctx = Ctx::new(b, 1).await;
    let store = ApiKeys::new(ctx.redis(), ctx.keys.clone());
    let (record, secret) = store
        .create("ci", "free", None, serde_json::json!({"rpm": 5}))
        .await
        .unwrap();
    assert!(secret.starts_with("tg-") && secret.len() > 40);
    assert_eq!(record.tenant, record.id);
    assert_eq!(
        store.authenticate(&secret).await.unwrap().unwrap().id,
        record.id
    );
    assert_eq!(store.authenticate("tg-wrong").await.unwrap(), None);
    let (second, _) = store
        .create("other", "free", Some("acme"), serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(second.tenant, "acme");
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|r| !r.prefix.is_empty() && !serde_json::to_string(r).unwrap().contains(&secret))
    );
    store.revoke(&record.id).await.unwrap();
    assert_eq!(store.authenticate(&secret).await.unwrap(), None);
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == record.id && r.revoked)
    );
    assert!(matches!(
        store.revoke("key_nope").await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        store
            .create(" ", "free", None, serde_json::Value::Null)
            .await,
        Err(Error::InvalidArgument(_))
    ));
}
