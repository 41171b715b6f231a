//! Binding and serving, with every connection bounded (header time, idle time, how many) and
//! graceful shutdown: on the shutdown signal the listener stops accepting and in-flight
//! requests finish, up to a deadline. The background work of a serving instance (the registry,
//! key revocations, the outbox writer) runs here.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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

/// Raises the soft limit on open files to the hard limit (a busy gateway holds a descriptor per
/// connection, and the usual soft limit is 1024). Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open files limit");
            None
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for at most `drain`.
///
/// Every connection is bounded: its request headers must arrive within
/// `server.idle_timeout_seconds` (so an idle keep-alive connection is closed after that long
/// too), and at most `server.max_connections` are open at once; past that a new connection gets
/// a 503 and is closed. A failed accept (out of descriptors) waits a moment and goes on.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let _registry = AbortOnDrop::spawn(keep_registry_in_sync(state.clone()));
    let _keys = AbortOnDrop::spawn(keep_keys_fresh(state.clone()));
    let _writer = AbortOnDrop::spawn(write_outbox(state.clone()));
    let idle = Duration::from_secs(state.config.server.idle_timeout_seconds.max(1));
    let open = Arc::new(Semaphore::new(state.config.server.max_connections.max(1)));
    let service = TowerToHyperService::new(app(state));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; going on");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, a response written in two segments waits ~40 ms for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp));
            continue;
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .keep_alive(true)
            .serve_connection(TokioIo::new(tcp), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "in-flight requests did not finish within the drain deadline"
        );
    }
    Ok(())
}

/// Answers a connection past `server.max_connections` with a 503 (OpenAI-shaped, with
/// `retry-after`) and closes it.
async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    tracing::warn!("connection refused: server.max_connections reached");
    let body = serde_json::json!({"error": {
        "message": "too many connections: retry shortly", "type": "service_unavailable",
        "param": null, "code": "too_many_connections"}})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(answer.as_bytes())).await;
    let _ = tcp.shutdown().await;
}
