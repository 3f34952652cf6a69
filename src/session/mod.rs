//! One client connection: the first packet (SSL/GSS refusal, cancel, startup), authentication,
//! then the query loop that forwards messages to pooled server connections.

pub(crate) mod client_state;
mod handshake;
pub(crate) mod machine;
mod query_loop;
pub(crate) mod relay;

use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::protocol::PgError;
use crate::state::ProxyState;

pub(crate) use handshake::cancel_all;
pub use handshake::Login;
pub use query_loop::{Signals, Wake, TICK};

/// Runs one client connection to completion. Errors are reported to the client and logged here,
/// where the task ends.
pub async fn run(stream: TcpStream, state: Arc<ProxyState>, signals: Signals) {
    // Boxed: the login's state is needed only until login, not for the client's lifetime.
    let Some(((rd, wr, inbuf, login), peer)) = Box::pin(log_in(stream, &state)).await else {
        return;
    };
    // However the session ends (a panic included), its cancel key goes away with it.
    let _cancel = CancelKeyGuard {
        state: &state,
        pid: login.cancel_pid,
    };
    let shutting_down = signals.wake.borrow().shutdown;
    let session = query_loop::new(rd, wr, inbuf, login, &state, shutting_down);
    query_loop::run(session, signals).await;
    tracing::debug!(%peer, "client disconnected");
}

/// A logged-in client: its socket's halves, what it sent after its startup packet, its login.
type LoggedIn = (OwnedReadHalf, OwnedWriteHalf, BytesMut, Login);

/// The handshake, up to the client's login (`None`: it ended, answered and logged), and the
/// client's address.
async fn log_in(stream: TcpStream, state: &ProxyState) -> Option<(LoggedIn, String)> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(1024);
    match handshake::handshake(&mut rd, &mut wr, &mut inbuf, state).await {
        Ok(Some(login)) => {
            tracing::debug!(%peer, user = %login.user, database = %login.database, "client logged in");
            Some(((rd, wr, inbuf, login), peer))
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
struct CancelKeyGuard<'a> {
    state: &'a ProxyState,
    pid: i32,
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
