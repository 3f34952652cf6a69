//! Connections made with tokio-postgres (health checks, 2PC recovery, shard tools) go through
//! [`pg_connect`]: the server's authentication requests are watched on the way in, and a
//! request for a cleartext password ends the connection before tokio-postgres can answer it,
//! unless `pool.allow_cleartext_server_password` allows it. (tokio-postgres itself already
//! refuses a SCRAM exchange without the server's final message.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Watches the server's messages up to the end of authentication.
#[derive(Debug, Default)]
struct AuthWatch {
    /// Tag, length and request code of the current message, as far as received.
    head: Vec<u8>,
    /// Bytes of the current message left to skip.
    skip: usize,
    /// Authentication is over (or the server sent something else): stop looking.
    done: bool,
}

impl AuthWatch {
    /// Looks at bytes from the server; an error if they ask for a cleartext password.
    fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !self.done && !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if self.head.len() == 5 && self.head[0] != b'R' {
                self.done = true;
            } else if self.head.len() == 9 {
                let len = crate::protocol::peek_header(&self.head).map_or(0, |(_, l)| l);
                let code =
                    i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
                if code == 3 {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "server asks for a cleartext password; refused (set \
                         pool.allow_cleartext_server_password = true to allow it)",
                    ));
                }
                if code == 0 || len < 8 {
                    self.done = true;
                }
                self.skip = (len.max(8) - 8) as usize;
                self.head.clear();
            }
        }
        Ok(())
    }
}

/// A TCP stream whose incoming authentication requests are checked (see the module docs).
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    watch: Option<AuthWatch>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(w)) = (&r, this.watch.as_mut()) {
            w.feed(&buf.filled()[before..])?;
            if w.done {
                this.watch = None;
            }
        }
        r
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A tokio-postgres connection from `config` (its first TCP host and port, its connect
/// timeout, no TLS) that never answers a cleartext password request unless `allow_cleartext`.
pub async fn pg_connect(
    config: &tokio_postgres::Config,
    allow_cleartext: bool,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<GuardedStream, tokio_postgres::tls::NoTlsStream>,
    ),
    String,
> {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err("no TCP host configured".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let connect = async {
        let inner = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let _ = inner.set_nodelay(true);
        let stream = GuardedStream {
            inner,
            watch: (!allow_cleartext).then(AuthWatch::default),
        };
        config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(d) => format!("{} ({})", d.message(), d.code().code()),
                None => e.to_string(),
            })
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!("{host}:{port}: connection timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::AuthWatch;

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as i32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    #[test]
    fn cleartext_requests_are_refused_however_the_bytes_arrive() {
        // SASL offer, then (a server downgrading) cleartext: refused even byte by byte.
        let mut bytes = auth(10, b"SCRAM-SHA-256\0\0");
        bytes.extend(auth(3, b""));
        for chunk in [1, 3, bytes.len()] {
            let mut w = AuthWatch::default();
            let r: Result<Vec<()>, _> = bytes.chunks(chunk).map(|c| w.feed(c)).collect();
            assert!(r.is_err(), "chunk {chunk}");
        }
        // md5, then AuthenticationOk, then anything (a later 'R'-looking byte is not looked at)
        let mut ok = auth(5, b"salt");
        ok.extend(auth(0, b""));
        ok.extend(auth(3, b""));
        let mut w = AuthWatch::default();
        for c in ok.chunks(2) {
            w.feed(c).unwrap();
        }
        assert!(w.done);
        // garbage never panics
        let mut w = AuthWatch::default();
        let _ = w.feed(b"R\xff\xff\xff\xff\0\0\0\0R\0\0\0\0\0");
    }
}
