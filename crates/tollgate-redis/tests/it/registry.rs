use std::time::Duration;

use tollgate_redis::{
    Arm, DeploymentEntry, DeploymentStatus, Error, Experiment, ModelEntry, Registry,
};

use crate::{Backend, Ctx, pattern_suite};

fn entry(name: &str) -> ModelEntry {
    let d = |n: &str| DeploymentEntry {
        name: n.into(),
        model: format!("mock/{n}"),
        weight: 1,
        status: DeploymentStatus::Active,
        version: None,
    };
    ModelEntry {
        name: name.into(),
        deployments: vec![d("stable"), d("canary")],
        experiment: Some(Experiment {
            name: "rollout".into(),
            arms: vec![
                Arm {
                    deployment: "stable".into(),
                    percent: 95.0,
                },
                Arm {
                    deployment: "canary".into(),
                    percent: 5.0,
                },
            ],
        }),
    }
}

pattern_suite!(changes_are_versioned_and_announced_to_every_watcher);

async fn changes_are_versioned_and_announced_to_every_watcher(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let writer = Registry::new(ctx.conn_for(0), ctx.keys.clone());
    let reader = Registry::new(ctx.conn_for(1), ctx.keys.clone());
    let mut watch = reader.watch().await.unwrap();
    assert_eq!(reader.version().await.unwrap(), 0);
    assert_eq!(writer.put(&entry("chat")).await.unwrap(), 1);
    assert_eq!(writer.put(&entry("summary")).await.unwrap(), 2);
    for expected in ["1", "2"] {
        let msg = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg, expected.as_bytes());
    }
    let (version, models) = reader.load().await.unwrap();
    assert_eq!(version, 2);
    assert_eq!(models, vec![entry("chat"), entry("summary")]);
    assert_eq!(writer.delete("summary").await.unwrap(), 3);
    assert!(matches!(
        writer.delete("summary").await,
        Err(Error::NotFound)
    ));
    assert_eq!(reader.load().await.unwrap().1.len(), 1);
    let mut bad = entry("bad");
    bad.deployments.clear();
    assert!(matches!(
        writer.put(&bad).await,
        Err(Error::InvalidArgument(_))
    ));
}
