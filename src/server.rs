//! The accept loop: client-connection limit, one task per client, graceful shutdown.
//!
//! `run` takes an already bound listener so tests can bind port 0. Shutdown: the listener stops,
//! every session is told through a watch channel; idle clients are closed at once, clients in a
//! transaction may finish it within `shutdown_timeout_ms`, then everything is closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::session::{Accepted, Wake, TICK};
use crate::state::{Admitted, ProxyState};

/// Serves clients on `listener` until `shutdown` completes, then drains sessions.
pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) {
    // The state in force: each client gets the one current at its arrival (a reload swaps it).
    let live = Arc::new(arc_swap::ArcSwap::new(state));
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel(4);
    let controls = live.load().controls.clone();
    controls.serve_reloads(reload_tx);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let (wake_tx, wake_rx) = watch::channel(Wake::default());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sessions = tokio::task::JoinSet::new();
    let mut sessions = sessions;
    let _averages = AbortOnDrop(tokio::spawn(roll_stats(live.clone())));
    let _metrics = serve_metrics(&live).await;
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
                admit(&live.load_full(), stream, &wake_rx, &mut sessions);
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
            _ = tick.tick() => wake_tx.send_modify(|w| w.tick += 1),
            _ = &mut shutdown => break,
            Some(reply) = reloads.recv() => {
                let _ = reply.send(reload(&live));
            }
            Some(()) = hang_up(&mut hangup) => {
                let _ = reload(&live);
            }
            () = stop_requested(&controls) => {
                tracing::info!("SHUTDOWN from the admin console");
                break;
            }
        }
    }
    let state = live.load_full();
    let clients = state.clients.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(clients, "shutting down");
    // Out of `/readyz` first; sessions learn it too.
    state.shutdown.ring();
    wake_tx.send_modify(|w| w.shutdown = true);
    let drain = Duration::from_millis(state.config.proxy.shutdown_drain_ms);
    if !drain.is_zero() {
        // A load balancer takes until its next check to see it: whoever it sends meanwhile
        // is still served (one transaction, see `Loop::may_close`), not reset.
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "draining: still accepting while load balancers notice"
        );
        let until = tokio::time::Instant::now() + drain;
        while let Ok(Ok((stream, _))) = tokio::time::timeout_at(until, listener.accept()).await {
            admit(&state, stream, &wake_rx, &mut sessions);
        }
    }
    drop(listener);
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

/// Starts the session of an accepted client under `state`, or refuses it (53300) at
/// `max_client_connections`.
fn admit(
    state: &Arc<ProxyState>,
    stream: tokio::net::TcpStream,
    wake: &watch::Receiver<Wake>,
    sessions: &mut tokio::task::JoinSet<()>,
) {
    match Admitted::try_new(state, state.config.proxy.max_client_connections) {
        Some(admitted) => {
            let accepted = Box::new(Accepted {
                stream,
                wake: wake.clone(),
            });
            sessions.spawn(crate::session::run(accepted, admitted));
        }
        None => {
            sessions.spawn(crate::session::refuse_too_many(stream));
        }
    }
}

/// Completes when the console's `SHUTDOWN` has rung its bell.
async fn stop_requested(controls: &crate::admin::control::Controls) {
    let stop = &controls.stop;
    let rung = stop.notified();
    tokio::pin!(rung);
    rung.as_mut().enable();
    if !stop.rung() {
        rung.await;
    }
}

/// Binds the client listener on `addr`, with `SO_REUSEPORT` if `reuse_port` (then a second
/// instance can listen on the same address, and the kernel spreads new connections over
/// both: the first can stop without refusing anyone). With `net.ipv4.tcp_migrate_req = 1`,
/// Linux also hands the connections still queued on a closing listener to the other.
pub async fn bind(addr: &str, reuse_port: bool) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = match a {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        if reuse_port {
            socket.set_reuseport(true)?;
        }
        match socket.bind(a).and_then(|()| socket.listen(1024)) {
            Ok(l) => {
                if reuse_port && migrate_off() {
                    tracing::info!(
                        "listening with SO_REUSEPORT; set net.ipv4.tcp_migrate_req = 1 so that \
                         connections queued on a stopping instance move to the other one"
                    );
                }
                return Ok(l);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr}: no address"))))
}

/// Whether the kernel would drop the connections queued on a closing `SO_REUSEPORT`
/// listener (Linux's `net.ipv4.tcp_migrate_req` is 0).
fn migrate_off() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0")
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

/// The next SIGHUP (never, if the signal cannot be watched).
async fn hang_up(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the config file again (SIGHUP, the console's `RELOAD`) and, if it is valid, makes it
/// the one new clients get: what changed, or why nothing did (logged either way).
fn reload(live: &arc_swap::ArcSwap<ProxyState>) -> Result<String, String> {
    let old = live.load_full();
    let result = crate::state::reload::read(&old).map(|(new, changes)| {
        new.controls.publish(&new);
        live.store(new);
        changes
    });
    match &result {
        Ok(changes) => tracing::info!(%changes, "configuration reloaded"),
        Err(why) => {
            tracing::error!(error = %why, "reload refused; the configuration in force stays")
        }
    }
    result
}

/// Ends the periods of `SHOW STATS_AVERAGES` every `proxy.stats_period_ms`.
async fn roll_stats(live: Arc<arc_swap::ArcSwap<ProxyState>>) {
    let period = Duration::from_millis(live.load().config.proxy.stats_period_ms.max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        let state = live.load_full();
        for (name, totals, _) in crate::admin::show::database_stats(&state) {
            state.db_stats(name).roll(now, totals);
        }
    }
}

/// The metrics endpoint on `proxy.metrics_listen`, if set (a port that cannot be bound is
/// logged, and the proxy runs without it).
async fn serve_metrics(live: &Arc<arc_swap::ArcSwap<ProxyState>>) -> Option<AbortOnDrop> {
    let addr = &live.load().config.proxy.metrics_listen.clone();
    if addr.is_empty() {
        return None;
    }
    match TcpListener::bind(addr.as_str()).await {
        Ok(l) => {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                l,
                live.clone(),
            ))))
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for metrics");
            None
        }
    }
}

/// A task stopped when the accept loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client is one task whose future is as big as its largest state, whatever state it
    /// is in: an idle client costs at least this much. tokio's task cell adds 104 bytes and
    /// rounds up to 128: at most 280 bytes here keep the cell at 384.
    #[tokio::test]
    async fn a_client_task_is_small() {
        let config = crate::config::Config::parse(
            "[[users]]\nname = \"app\"\npassword = \"secret\"\n[[databases]]\nname = \"app\"\n\
             [[databases.shards]]\nname = \"s0\"\nprimary = \"127.0.0.1:1\"\n",
            "t",
        )
        .expect("config");
        let state = ProxyState::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (_wake_tx, wake) = watch::channel(Wake::default());
        let admitted = Admitted::try_new(&state, 1).expect("admitted");
        let task = crate::session::run(Box::new(Accepted { stream, wake }), admitted);
        let size = std::mem::size_of_val(&task);
        println!("client task future: {size} bytes");
        assert!(size <= 280, "client task future is {size} bytes");
    }
}
