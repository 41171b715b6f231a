//! Binding and serving, with graceful shutdown: on the shutdown signal the listener stops
//! accepting and in-flight requests finish, up to a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{AppState, app};
use crate::task::AbortOnDrop;

/// Follows a kind of shared change: `sync` runs whenever `watch`'s subscription announces one,
/// and twice a second in case an announcement was missed (a subscription lost while Redis was
/// away), so every instance applies a change within a second.
async fn follow_changes<W, WF, S, SF>(watch: W, sync: S)
where
    W: Fn() -> WF,
    WF: Future<Output = Result<tollgate_redis::Subscription, tollgate_redis::Error>>,
    S: Fn() -> SF,
    SF: Future<Output = ()>,
{
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut subscription = match watch().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "change announcements unavailable; polling");
                None
            }
        };
        loop {
            tokio::select! {
                msg = async { match subscription.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                    if msg.is_none() {
                        break; // The subscription closed: subscribe again.
                    }
                }
                _ = poll.tick() => {}
            }
            sync().await;
            if subscription.is_none() {
                break;
            }
        }
    }
}

/// Applies model registry changes on this instance within a second of any instance's.
pub async fn keep_registry_in_sync(gw: AppState) {
    follow_changes(
        || {
            let gw = gw.clone();
            async move { gw.registry.watch().await }
        },
        || {
            let gw = gw.clone();
            async move {
                if let Err(e) = gw.sync_registry().await {
                    tracing::debug!(error = %e, "registry sync failed; retrying");
                }
            }
        },
    )
    .await;
}

/// Drops this instance's cached key lookups within a second of a revocation on any instance.
pub async fn keep_keys_fresh(gw: AppState) {
    follow_changes(
        || {
            let gw = gw.clone();
            async move { gw.api_keys.watch().await }
        },
        || {
            let gw = gw.clone();
            async move {
                if let Err(e) = gw.sync_keys().await {
                    tracing::debug!(error = %e, "key revocation check failed; retrying");
                }
            }
        },
    )
    .await;
}

/// Drains the outbox into the database, as one writer of the group (every instance runs one).
pub async fn write_outbox(gw: AppState) {
    let Some(durable) = gw.durable.clone() else {
        return;
    };
    let name = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "tollgate".into()),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    loop {
        // A writer stops at its first error; a new one recreates the group if Redis lost it.
        let error = match durable.outbox.writer(durable.db.clone(), &name).await {
            Ok(writer) => writer.run().await,
            Err(e) => e,
        };
        tracing::warn!(error = %error, "outbox writer stopped; starting again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let _registry = AbortOnDrop::spawn(keep_registry_in_sync(state.clone()));
    let _keys = AbortOnDrop::spawn(keep_keys_fresh(state.clone()));
    let _writer = AbortOnDrop::spawn(write_outbox(state.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Without TCP_NODELAY, a response written in two segments waits ~40 ms for a delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    tokio::select! {
        result = server => result,
        () = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(?drain, "in-flight requests did not finish within the drain deadline");
            Ok(())
        }
    }
}
