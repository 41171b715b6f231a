//! Binding and serving, with graceful shutdown: on the shutdown signal the listener stops
//! accepting and in-flight requests finish, up to a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{AppState, app};
use crate::task::AbortOnDrop;

/// Applies registry changes as they are announced, and polls its version twice a second in case
/// an announcement was missed (a subscription lost while Redis was away): every instance applies
/// a change within a second.
pub async fn keep_registry_in_sync(gw: AppState) {
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut watch = match gw.registry.watch().await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(error = %e, "registry announcements unavailable; polling");
                None
            }
        };
        loop {
            tokio::select! {
                msg = async { match watch.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                    if msg.is_none() {
                        break; // The subscription closed: subscribe again.
                    }
                }
                _ = poll.tick() => {}
            }
            if let Err(e) = gw.sync_registry().await {
                tracing::debug!(error = %e, "registry sync failed; retrying");
            }
            if watch.is_none() {
                break;
            }
        }
    }
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
