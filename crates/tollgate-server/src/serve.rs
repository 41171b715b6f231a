//! Binding and serving, with graceful shutdown: on the shutdown signal the listener stops
//! accepting and in-flight requests finish, up to a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::{AppState, app};

/// Serves until `shutdown` resolves, then drains in-flight requests for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
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
