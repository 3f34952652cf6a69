//! The accept loop: client-connection limit, one task per client, graceful shutdown.
//!
//! `run` takes an already bound listener so tests can bind port 0. Shutdown: the listener stops,
//! every session is told through a watch channel; idle clients are closed at once, clients in a
//! transaction may finish it within `shutdown_timeout_ms`, then everything is closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::state::ProxyState;

/// Serves clients on `listener` until `shutdown` completes, then drains sessions.
pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) {
    let max = state.config.proxy.max_client_connections;
    let limit = Arc::new(Semaphore::new(max));
    let (tx, rx) = watch::channel(false);
    let sessions = tokio::task::JoinSet::new();
    let mut sessions = sessions;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let state = state.clone();
                        let rx = rx.clone();
                        sessions.spawn(async move {
                            crate::session::run(stream, state, rx).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        sessions.spawn(crate::session::refuse_too_many(stream));
                    }
                }
            }
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        // Its server connections were closed by their guards, its cancel key
                        // unregistered; this is still a bug worth a loud line.
                        tracing::error!(error = %e, "a client session panicked");
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(clients = max - limit.available_permits(), "shutting down");
    let _ = tx.send(true);
    let grace = Duration::from_millis(state.config.proxy.shutdown_timeout_ms);
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = sessions.len(),
            "shutdown timeout reached; cancelling running statements and closing remaining connections"
        );
        // Closing a server connection does not stop a statement that is still running on it
        // (a fan-out, a COPY, a long query): cancel them first, so that the servers are not
        // left working for clients that are gone.
        let running = state.cancels.running();
        let _ = tokio::time::timeout(Duration::from_secs(2), crate::session::cancel_all(&running))
            .await;
        sessions.shutdown().await;
    }
    tracing::info!("shutdown complete");
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
