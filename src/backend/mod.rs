//! One server connection: connect, authenticate to Postgres as a client, keep its parameters
//! and cancel key; small helpers to run a maintenance query and drain to ReadyForQuery.

use bytes::{BufMut, BytesMut};
use lru::LruCache;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::protocol::{error_fields, split_frame, Frame, FrameError, TxStatus};

mod guard;
pub use guard::{pg_connect, GuardedStream};

/// Where and as whom to connect. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// `host:port`.
    pub addr: String,
    /// User name on the server.
    pub user: String,
    /// Plaintext password, if the server asks for one.
    pub password: Option<String>,
    /// Database on the server.
    pub database: String,
    /// Time allowed for TCP connect plus authentication.
    pub connect_timeout: Duration,
    /// Capacity of the per-connection prepared statement set.
    pub prepared_capacity: usize,
    /// Answer a server's request for a cleartext password (`password` authentication).
    pub allow_cleartext: bool,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("connect_timeout", &self.connect_timeout)
            .field("prepared_capacity", &self.prepared_capacity)
            .field("allow_cleartext", &self.allow_cleartext)
            .finish()
    }
}

/// Why a server connection could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Socket error.
    #[error("server {addr}: {source}")]
    Io {
        /// Server address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Connect or login took too long.
    #[error("server {0}: connection timed out")]
    Timeout(String),
    /// The server sent an ErrorResponse.
    #[error("server {addr}: {code} {message}")]
    Server {
        /// Server address.
        addr: String,
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// The server sent something we did not expect.
    #[error("server {addr}: protocol error: {what}")]
    Protocol {
        /// Server address.
        addr: String,
        /// What was wrong.
        what: String,
    },
}

/// What the admin console's `SHOW SERVERS` knows of a connection, shared with its pool.
#[derive(Debug, Default)]
pub struct ConnInfo {
    /// When it was opened (`health::now_ms`).
    pub opened_ms: u64,
    /// Its local address.
    pub local: Option<std::net::SocketAddr>,
    /// The backend process id.
    pub pid: std::sync::atomic::AtomicI32,
    /// Checked out now.
    pub active: std::sync::atomic::AtomicBool,
    /// The cancel pid of the client that checked it out last (0: none).
    pub client: std::sync::atomic::AtomicI32,
    /// When it was checked out last (`health::now_ms`; 0: never).
    pub request_ms: std::sync::atomic::AtomicU64,
}

/// An authenticated server connection, idle at ReadyForQuery.
#[derive(Debug)]
pub struct ServerConn {
    /// For `SHOW SERVERS` (its pool keeps a weak reference).
    pub info: Arc<ConnInfo>,
    /// Read half of the socket.
    pub rd: OwnedReadHalf,
    /// Write half of the socket.
    pub wr: OwnedWriteHalf,
    /// Bytes read from the server not yet handled.
    pub inbuf: BytesMut,
    /// Server address (`host:port`); shared, so that a cancel target costs no copy.
    pub addr: Arc<str>,
    /// Backend process id (for cancel).
    pub pid: i32,
    /// Backend secret key (for cancel).
    pub secret: Arc<[u8]>,
    /// ParameterStatus values reported at login.
    pub params: Vec<(String, String)>,
    /// Set when the connection is in an unknown state; the pool then drops it.
    pub broken: bool,
    /// The connection sits at a message boundary right after a ReadyForQuery `I` with nothing
    /// sent since: the only state in which it may go back to the pool (see
    /// [`crate::pool::ServerManager`]). Cleared by every send, set by the reader of each
    /// ReadyForQuery.
    pub at_rest: bool,
    /// The number of the client Parse of the unnamed statement last sent on this connection
    /// (0: none, or the proxy's own): a client may Bind or Describe the unnamed statement here
    /// only if it is its current one (see `ClientState::unnamed_parse`).
    pub unnamed_owner: u64,
    /// When the connection was opened.
    pub created: Instant,
    /// Its pool's reconnect epoch when it was opened (the console's `RECONNECT` bumps the
    /// pool's; an older connection is closed instead of used or returned).
    pub epoch: u64,
    /// Proxy-named statements (by cache id) prepared on this connection, least recently used
    /// first out.
    pub prepared: LruCache<u64, ()>,
    /// SQL-level prepared statements (PREPARE name AS ...): name -> the PREPARE text.
    pub sql_prepared: HashMap<String, Arc<str>>,
    /// Settings changed from the connection's defaults, as `current_setting` reports them.
    pub settings: Arc<BTreeMap<String, String>>,
    /// A statement may have changed settings that `settings` does not show (a fan-out or a
    /// multi-shard transaction ran one): reset them all before the next use.
    pub settings_unknown: bool,
}

const MAX_SERVER_MESSAGE: usize = 1 << 30;

impl ServerConn {
    /// Whether the server sent something (or closed) while the connection sat idle in its
    /// pool: a shutdown's FATAL 57P01, a terminated backend, a failover. Such a connection is
    /// not clean and must not carry the next request. Costs no system call unless the
    /// runtime saw the socket become readable.
    pub fn stale(&mut self) -> bool {
        if !self.inbuf.is_empty() {
            return true;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if self.rd.as_ref().poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        let mut byte = [0u8; 1];
        !matches!(self.rd.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Connects, authenticates and waits for the first ReadyForQuery.
    pub async fn connect(p: &ConnectParams) -> Result<ServerConn, BackendError> {
        match tokio::time::timeout(p.connect_timeout, Self::connect_inner(p)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(p.addr.clone())),
        }
    }

    async fn connect_inner(p: &ConnectParams) -> Result<ServerConn, BackendError> {
        let io = |source| BackendError::Io {
            addr: p.addr.clone(),
            source,
        };
        let stream = TcpStream::connect(&p.addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let info = Arc::new(ConnInfo {
            opened_ms: crate::health::now_ms(),
            local: stream.local_addr().ok(),
            ..ConnInfo::default()
        });
        let (rd, wr) = stream.into_split();
        let mut conn = ServerConn {
            info,
            rd,
            wr,
            inbuf: BytesMut::with_capacity(16 * 1024),
            addr: p.addr.as_str().into(),
            pid: 0,
            secret: Arc::from(&[][..]),
            params: Vec::new(),
            broken: false,
            at_rest: false,
            unnamed_owner: 0,
            created: Instant::now(),
            epoch: 0,
            prepared: LruCache::new(
                NonZeroUsize::new(p.prepared_capacity).unwrap_or(NonZeroUsize::MIN),
            ),
            sql_prepared: HashMap::new(),
            settings: Default::default(),
            settings_unknown: false,
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", p.user.as_str()),
            ("database", p.database.as_str()),
            ("application_name", "shardgate"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut out).map_err(io)?;
        conn.send(&out).await?;
        conn.authenticate(p).await?;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                b'S' => conn.params.push(parameter_status(f.body())),
                b'K' if f.body().len() >= 8 => {
                    if let Some((pid, secret)) = key_data(f.body()) {
                        conn.pid = pid;
                        conn.info
                            .pid
                            .store(pid, std::sync::atomic::Ordering::Relaxed);
                        conn.secret = secret.into();
                    }
                }
                b'Z' => return Ok(conn),
                b'E' => return Err(conn.server_error(&f)),
                b'N' => {}
                _ => return Err(conn.protocol(format!("unexpected message '{}'", f.tag as char))),
            }
        }
    }

    /// Answers the server's authentication requests. Refuses to send a cleartext password
    /// unless allowed, and a SCRAM exchange must end with the server's proof (SASLFinal,
    /// checked) before AuthenticationOk: a server that skips it has not shown it knows the
    /// password.
    async fn authenticate(&mut self, p: &ConnectParams) -> Result<(), BackendError> {
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut server_proven = false;
        loop {
            let f = self.read_frame().await?;
            if f.tag == b'E' {
                return Err(self.server_error(&f));
            }
            let Some((code, data)) = (f.tag == b'R').then(|| auth_request(f.body())).flatten()
            else {
                return Err(self.protocol("expected an authentication request".into()));
            };
            let mut out = BytesMut::new();
            let need_password = || {
                p.password.clone().ok_or_else(|| BackendError::Protocol {
                    addr: p.addr.clone(),
                    what: format!(
                        "server asks user \"{}\" for a password but none is configured \
                         (set server_password)",
                        p.user
                    ),
                })
            };
            match code {
                0 if scram.is_some() && !server_proven => {
                    return Err(self.protocol(
                        "server ended SCRAM authentication without its final message \
                         (it did not prove it knows the password); refused"
                            .into(),
                    ))
                }
                0 => return Ok(()),
                3 if !p.allow_cleartext => {
                    return Err(self.protocol(format!(
                        "server asks for user \"{}\"'s password in cleartext; refused \
                         (set pool.allow_cleartext_server_password = true to allow it, or \
                         use scram-sha-256 or md5 in pg_hba.conf)",
                        p.user
                    )))
                }
                3 => {
                    let pw = need_password()?;
                    frontend::password_message(pw.as_bytes(), &mut out).map_err(|e| self.io(e))?;
                }
                5 if data.len() >= 4 => {
                    let pw = need_password()?;
                    let salt = [data[0], data[1], data[2], data[3]];
                    let h = md5_hash(p.user.as_bytes(), pw.as_bytes(), salt);
                    frontend::password_message(h.as_bytes(), &mut out).map_err(|e| self.io(e))?;
                }
                10 if scram.is_some() => {
                    return Err(self.protocol("a second SASL exchange".into()));
                }
                10 => {
                    let offers_scram = data
                        .split(|&b| b == 0)
                        .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(
                            self.protocol("server offers no SASL mechanism we support".into())
                        );
                    }
                    let pw = need_password()?;
                    let s =
                        sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(|e| self.io(e))?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASLContinue without SASL".into()))?;
                    s.update(data).map_err(|e| self.protocol(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut out).map_err(|e| self.io(e))?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("SASLFinal without SASL".into()))?;
                    if server_proven {
                        return Err(self.protocol("a second SASLFinal".into()));
                    }
                    s.finish(data).map_err(|e| self.protocol(e.to_string()))?;
                    server_proven = true;
                    continue;
                }
                c => return Err(self.protocol(format!("unsupported authentication request {c}"))),
            }
            self.send(&out).await?;
        }
    }

    fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            addr: self.addr.to_string(),
            source,
        }
    }

    fn protocol(&self, what: String) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.to_string(),
            what,
        }
    }

    /// The status of ReadyForQuery `f`; a malformed one is a protocol error.
    fn ready_status(&self, f: &Frame) -> Result<TxStatus, BackendError> {
        match f.body() {
            [b] => TxStatus::from_byte(*b),
            _ => None,
        }
        .ok_or_else(|| self.protocol("malformed ReadyForQuery".into()))
    }

    fn server_error(&self, f: &Frame) -> BackendError {
        let (code, message) = error_fields(f.body());
        BackendError::Server {
            addr: self.addr.to_string(),
            code,
            message,
        }
    }

    /// Writes all of `bytes` to the server.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.at_rest = false;
        let r = self.wr.write_all(bytes).await;
        r.map_err(|e| {
            self.broken = true;
            self.io(e)
        })
    }

    /// Reads one whole message from the server.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(f);
            }
            let n = self.rd.read_buf(&mut self.inbuf).await.map_err(|e| {
                self.broken = true;
                self.io(e)
            })?;
            if n == 0 {
                self.broken = true;
                return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// The next whole message already read from the server, if there is one (the I/O is the
    /// caller's: more bytes go into `inbuf`).
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, BackendError> {
        match split_frame(&mut self.inbuf, MAX_SERVER_MESSAGE) {
            Ok(Some(f)) => {
                if f.tag == b'Z' {
                    self.at_rest = f.body() == b"I" && self.inbuf.is_empty();
                }
                Ok(Some(f))
            }
            Ok(None) => Ok(None),
            Err(e @ (FrameError::BadLength(_) | FrameError::TooLarge { .. })) => {
                self.broken = true;
                Err(self.protocol(e.to_string()))
            }
        }
    }

    /// Whether `inbuf` holds a whole message (see [`ServerConn::buffered_frame`]).
    pub fn has_buffered_frame(&self) -> bool {
        crate::protocol::frame_ready(&self.inbuf)
    }

    /// Runs a simple query and reads up to ReadyForQuery, discarding the output. Returns the
    /// transaction status, or the first error the server reported.
    pub async fn run(&mut self, sql: &str) -> Result<TxStatus, BackendError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        self.drain_to_ready().await
    }

    /// Sends `bytes` (one or more client messages ending in a Query or Sync) and returns every
    /// message the server sends up to and including the next ReadyForQuery, with its status.
    /// Notices and ParameterStatus messages are included in order.
    pub async fn exchange(&mut self, bytes: &[u8]) -> Result<(Vec<Frame>, TxStatus), BackendError> {
        self.send(bytes).await?;
        let mut frames = Vec::new();
        loop {
            let f = self.read_frame().await?;
            if f.tag == b'Z' {
                return Ok((frames, self.ready_status(&f)?));
            }
            frames.push(f);
        }
    }

    /// Runs a simple query returning one row and returns its text values (NULL as "").
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<String>, BackendError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        let mut row = Vec::new();
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' if row.is_empty() => row = data_row_texts(f.body()),
                b'E' if err.is_none() => err = Some(self.server_error(&f)),
                b'Z' => {
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(row),
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs a simple query (maybe several statements) and returns the text values of every
    /// row (NULL as ""), with the final transaction status, or the first error.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<Vec<String>>, TxStatus), BackendError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => rows.push(data_row_texts(f.body())),
                b'E' if err.is_none() => err = Some(self.server_error(&f)),
                b'Z' => {
                    let status = self.ready_status(&f)?;
                    return match err {
                        Some(e) => Err(e),
                        None => Ok((rows, status)),
                    };
                }
                _ => {}
            }
        }
    }

    /// Reads and discards messages up to ReadyForQuery; returns its status or the first error.
    pub async fn drain_to_ready(&mut self) -> Result<TxStatus, BackendError> {
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'Z' => {
                    let status = self.ready_status(&f)?;
                    return match err {
                        Some(e) => Err(e),
                        None => Ok(status),
                    };
                }
                b'E' if err.is_none() => err = Some(self.server_error(&f)),
                b'G' => {
                    // COPY FROM STDIN during maintenance: refuse it.
                    let mut out = BytesMut::new();
                    let _ = frontend::copy_fail("shardgate: COPY not expected", &mut out);
                    self.send(&out).await?;
                }
                _ => {}
            }
        }
    }

    /// Where a CancelRequest for this connection's running query goes.
    pub fn cancel_target(&self) -> crate::state::CancelTarget {
        crate::state::CancelTarget {
            addr: self.addr.clone(),
            pid: self.pid,
            secret: self.secret.clone(),
        }
    }

    /// Sends a CancelRequest for this connection's running query.
    pub async fn cancel(addr: &str, pid: i32, secret: &[u8]) -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr).await?;
        let mut out = BytesMut::new();
        out.put_i32(12 + secret.len() as i32);
        out.put_i32(80877102);
        out.put_i32(pid);
        out.put_slice(secret);
        s.write_all(&out).await?;
        // The server closes the connection when done; wait briefly so the request is processed.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
        Ok(())
    }
}

/// A ParameterStatus body: (name, value); missing or non-UTF-8 parts are empty.
pub(crate) fn parameter_status(mut body: &[u8]) -> (String, String) {
    let name = crate::protocol::cstr(&mut body).unwrap_or_default();
    let value = crate::protocol::cstr(&mut body).unwrap_or_default();
    (name.to_string(), value.to_string())
}

/// A BackendKeyData body: process id and secret key (4 bytes in protocol 3.0, longer in 3.2).
pub(crate) fn key_data(body: &[u8]) -> Option<(i32, &[u8])> {
    let (pid, secret) = body.split_first_chunk::<4>()?;
    (secret.len() >= 4).then(|| (i32::from_be_bytes(*pid), secret))
}

/// An Authentication request body: its code and the data after it.
pub(crate) fn auth_request(body: &[u8]) -> Option<(i32, &[u8])> {
    let (code, data) = body.split_first_chunk::<4>()?;
    Some((i32::from_be_bytes(*code), data))
}

/// The values of a DataRow body as text (NULL as ""); a malformed row yields the values
/// before the damage.
pub(crate) fn data_row_texts(body: &[u8]) -> Vec<String> {
    let Ok((_, values)) = crate::protocol::DataRowValues::new(body) else {
        return Vec::new();
    };
    values
        .map_while(Result::ok)
        .map(|v| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
        .collect()
}
