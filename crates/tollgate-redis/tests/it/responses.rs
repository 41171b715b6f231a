use std::time::Duration;

use tollgate_redis::{
    Budget, ResponseStore, SpendLedger, SpendPeriod, StoredResponse, WindowBudget,
};

use crate::{Backend, Ctx, pattern_suite};

pattern_suite!(
    a_deleted_response_stays_deleted_and_a_restore_never_overwrites,
    spend_adds_up_per_model_and_budgets_refuse_once_spent,
    spend_over_a_window_adds_up_across_replicas_and_each_alert_goes_out_once,
);

async fn a_deleted_response_stays_deleted_and_a_restore_never_overwrites(b: Backend) {
    let ctx = Ctx::new(b, 2).await;
    let (a, other) = (
        ResponseStore::new(ctx.conn_for(0), ctx.keys.clone(), Duration::from_secs(60)),
        ResponseStore::new(ctx.conn_for(1), ctx.keys.clone(), Duration::from_secs(60)),
    );
    assert_eq!(a.get("resp_1").await.unwrap(), StoredResponse::Missing);
    a.put("resp_1", b"v1").await.unwrap();
    assert_eq!(
        other.get("resp_1").await.unwrap(),
        StoredResponse::Found(b"v1".to_vec())
    );
    // A copy from the database does not replace what Redis has.
    other.restore("resp_1", b"old").await.unwrap();
    assert_eq!(
        a.get("resp_1").await.unwrap(),
        StoredResponse::Found(b"v1".to_vec())
    );
    assert!(other.replace("resp_1", b"v2").await.unwrap());
    assert!(!other.replace("resp_missing", b"v2").await.unwrap());
    a.delete("resp_1").await.unwrap();
    assert_eq!(other.get("resp_1").await.unwrap(), StoredResponse::Deleted);
    // Neither a restore nor a summary brings it back.
    other.restore("resp_1", b"v2").await.unwrap();
    assert!(!other.replace("resp_1", b"v3").await.unwrap());
    assert_eq!(a.get("resp_1").await.unwrap(), StoredResponse::Deleted);
}

async fn spend_adds_up_per_model_and_budgets_refuse_once_spent(b: Backend) {
    let ctx = Ctx::new(b, 3).await;
    let ledgers: Vec<SpendLedger> = (0..3)
        .map(|i| SpendLedger::new(ctx.conn_for(i), ctx.keys.clone()))
        .collect();
    let now = 1_796_083_199_000; // 2026-11-30T23:59:59Z
    let budget = Budget {
        period: SpendPeriod::Day,
        limit_nanos: 1_000,
    };
    // Charged from three connections at once, as three replicas would.
    let mut tasks = Vec::new();
    for (i, ledger) in ledgers.iter().enumerate() {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let model = if i == 0 { "m/a" } else { "m/b" };
                ledger.charge("key_1", model, 3, now).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let day = ledgers[0]
        .spend("key_1", SpendPeriod::Day, now)
        .await
        .unwrap();
    assert_eq!(day.total_nanos, 900);
    assert_eq!(day.models["m/a"], 300);
    assert_eq!(day.models["m/b"], 600);
    assert_eq!(
        ledgers[1]
            .spend("key_1", SpendPeriod::Month, now)
            .await
            .unwrap()
            .total_nanos,
        900
    );
    assert_eq!(
        ledgers[2].check("key_1", &[budget], now).await.unwrap(),
        None
    );
    ledgers[0].charge("key_1", "m/a", 100, now).await.unwrap();
    let spent = ledgers[2]
        .check("key_1", &[budget], now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(spent.spent_nanos, 1_000);
    assert_eq!(spent.resets_in, Duration::from_secs(1));
    // The next day starts at zero; the month goes on.
    let tomorrow = now + 1_000;
    assert_eq!(
        ledgers[1]
            .check("key_1", &[budget], tomorrow)
            .await
            .unwrap(),
        None
    );
    let month = Budget {
        period: SpendPeriod::Month,
        limit_nanos: 1_000,
    };
    assert_eq!(
        ledgers[1]
            .check("key_1", &[month], now)
            .await
            .unwrap()
            .unwrap()
            .budget,
        month
    );
    // Another key spent nothing.
    assert_eq!(
        ledgers[0]
            .spend("key_2", SpendPeriod::Day, now)
            .await
            .unwrap()
            .total_nanos,
        0
    );
}

async fn spend_over_a_window_adds_up_across_replicas_and_each_alert_goes_out_once(b: Backend) {
    let ctx = Ctx::new(b, 3).await;
    let ledgers: Vec<SpendLedger> = (0..3)
        .map(|i| SpendLedger::new(ctx.conn_for(i), ctx.keys.clone()))
        .collect();
    let budgets = [
        WindowBudget {
            window: Duration::from_secs(3600),
            limit_nanos: 10_000,
            alert_at: vec![0.5, 0.9],
        },
        WindowBudget {
            window: Duration::from_secs(60),
            limit_nanos: 1_000_000,
            alert_at: vec![],
        },
    ];
    // 30 charges of 300 from three connections at once, as three replicas would: 9,000 spent,
    // past half the hourly budget (one alert, whoever crossed it) and at 0.9 of it (another).
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (ledger, budgets) = (ledgers[i % 3].clone(), budgets.clone());
        tasks.push(tokio::spawn(async move {
            ledger.windows("key-w", &budgets, 300).await.unwrap().1
        }));
    }
    let mut alerts = Vec::new();
    for t in tasks {
        alerts.extend(t.await.unwrap());
    }
    let mut shares: Vec<f64> = alerts.iter().map(|a| a.share).collect();
    shares.sort_by(f64::total_cmp);
    assert_eq!(shares, [0.5, 0.9], "{alerts:?}");
    assert!(alerts.iter().all(|a| a.budget == 0));
    let (spends, none) = ledgers[0].windows("key-w", &budgets, 0).await.unwrap();
    assert!(none.is_empty(), "a read sets nothing off");
    assert_eq!(spends[0].spent_nanos, 9_000);
    assert_eq!(spends[1].spent_nanos, 9_000);
    assert!(spends[0].frees_in <= Duration::from_secs(3600));
    assert!(spends[1].frees_in <= Duration::from_secs(60));
    // Further charges cross nothing new: no alert repeats within the window.
    for ledger in &ledgers {
        assert!(
            ledger
                .windows("key-w", &budgets, 10)
                .await
                .unwrap()
                .1
                .is_empty()
        );
    }
    // Another key's windows are its own.
    let (other, _) = ledgers[1].windows("key-x", &budgets, 0).await.unwrap();
    assert_eq!(other[0].spent_nanos, 0);
}
