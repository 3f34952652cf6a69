//! One client connection: the first packet (SSL/GSS refusal, cancel, startup), authentication,
//! then the query loop that forwards messages to pooled server connections.

pub(crate) mod client_state;
mod console;
mod handshake;
pub(crate) mod machine;
mod query_loop;
pub(crate) mod relay;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::protocol::PgError;
use crate::state::{Admitted, ProxyState};

pub(crate) use handshake::cancel_all;
pub use handshake::Login;
pub use query_loop::{Wake, TICK};

/// A client the accept loop handed over: its socket, and the channel of the loop's ticks.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub wake: watch::Receiver<Wake>,
}

/// Runs one client connection to completion. Errors are reported to the client and logged here,
/// where the task ends. Every client is one such task, as big as its largest state (see
/// `server::tests::a_client_task_is_small`): what it needs only for a while is boxed.
pub async fn run(accepted: Box<Accepted>, mut state: Admitted) {
    let Accepted { stream, mut wake } = *accepted;
    // Boxed: the login's state is needed only until login, not for the client's lifetime.
    let Some(session) = Box::pin(log_in(stream, &state)).await else {
        return;
    };
    let mut detached = query_loop::run(session, &mut wake).await;
    // After a reload the session goes on under the state in force (see `Loop::renews`).
    while let Some(d) = detached {
        if let Some(current) = state.controls.current() {
            state.renew(current);
        }
        detached = query_loop::run(d.attach(&state), &mut wake).await;
    }
}

/// The handshake, up to the client's login (`None`: it ended, answered and logged); then the
/// logged-in client's session.
async fn log_in(stream: TcpStream, state: &ProxyState) -> Option<Box<query_loop::Loop<'_>>> {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(1024);
    match handshake::handshake(&mut rd, &mut wr, &mut inbuf, state).await {
        Ok(Some(handshake::Arrival::Console(login))) => {
            console::run(rd, wr, inbuf, state, login).await;
            None
        }
        Ok(Some(handshake::Arrival::Client(login))) => {
            if state.config.proxy.log_connections {
                tracing::info!(%peer, user = %login.user(), database = %login.database(), "client logged in");
            }
            let client = query_loop::ClientConn {
                reader: rd,
                writer: wr,
                from_client: inbuf,
            };
            // A shutdown that began during the login: the session starts by ending.
            Some(query_loop::new(client, login, state, state.shutdown.rung()))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::info!(%peer, error = %e, "client login failed");
            let mut out = BytesMut::new();
            e.encode(&mut out);
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            None
        }
    }
}

/// Unregisters a session's cancel key when dropped.
pub(crate) struct CancelKeyGuard<'a> {
    pub state: &'a ProxyState,
    pub pid: i32,
}

impl Drop for CancelKeyGuard<'_> {
    fn drop(&mut self) {
        self.state.cancels.unregister(self.pid);
    }
}

/// Answers a client that arrives while the proxy is at `max_client_connections`: reads its
/// startup packet (refusing TLS), then sends SQLSTATE 53300 and closes.
pub async fn refuse_too_many(stream: TcpStream) {
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::new();
    let err = PgError::fatal(
        crate::protocol::sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    let fut = handshake::read_until_startup(&mut rd, &mut wr, &mut inbuf);
    if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_secs(5), fut).await {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
}
