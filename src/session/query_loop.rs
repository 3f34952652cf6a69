//! The query loop of a logged-in client: forwards client messages to a pooled server connection
//! and server replies back, byte for byte, and decides at each ReadyForQuery whether the server
//! connection goes back to the pool (transaction and statement modes).
//!
//! Invariants:
//! - The [`Relay`] queue holds one entry per message sent to the server that gets a response;
//!   `unsynced` is set while extended-protocol messages await their Sync. A server connection is
//!   released only when the queue is empty, nothing awaits a Sync and the status is `I`.
//! - In transaction and statement modes, named statements are renamed to pooled `sg_N` names
//!   and prepared on whichever server connection needs them; SET/RESET, SQL-level PREPARE and
//!   DISCARD/DEALLOCATE are tracked so the client's session follows it (see `client_state`).
//! - A server connection leaves this loop idle and outside a transaction, or flagged broken so
//!   the pool closes it. Nothing the previous client did is visible to the next.

use bytes::{Buf, BytesMut};
use std::future::pending;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::client_state::{
    read_all_settings_sql, read_back_sql, reported_not_settable, settings_from_rows, setup_sql,
    ClientState,
};
use super::relay::{Event, Expect, Relay};
use super::Login;
use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::pool::Checkout;
use crate::protocol::{self, query_text, split_frame, sqlstate, FrameError, PgError};
use crate::state::{CancelTarget, ProxyState};
use std::sync::Arc;

mod copy;
mod fanout;
mod fanout_batch;
mod fanout_stream;
mod routing;
mod statements;
mod twophase;

use routing::{ReadHold, Routing, Step};

/// Above this many buffered bytes in one direction, stop reading from the sender.
const BUF_CAP: usize = 256 * 1024;
/// Most responses a client may have outstanding on its server connection.
const MAX_OWED: usize = 65_536;
/// Most named prepared statements one client may hold.
const MAX_NAMED_STATEMENTS: usize = 10_000;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// What the injected query that applies a client's settings is called (its failure closes
/// the server connection).
const APPLY_SETTINGS: &str = "apply client settings";
/// Time allowed to roll back or reset a server connection a client left behind.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed its socket (or a write to it failed).
    ClientGone,
    /// The client sent Terminate.
    Terminate,
    /// The proxy sent a FATAL error (in `cout`) and closes the connection.
    Fatal,
    /// Proxy shutdown; a FATAL 57P01 is in `cout`.
    Shutdown,
}

struct Loop<'a> {
    state: &'a ProxyState,
    login: Login,
    crd: OwnedReadHalf,
    cwr: OwnedWriteHalf,
    /// Bytes from the client not yet handled.
    cin: BytesMut,
    /// Bytes for the client.
    cout: BytesMut,
    /// Bytes for the server.
    sout: BytesMut,
    server: Option<Checkout>,
    relay: Relay,
    events: Vec<Event>,
    client: ClientState,
    /// Transaction or statement mode: statements and settings are managed across connections.
    managed: bool,
    unsynced: bool,
    /// Last transaction status reported to the client.
    status: u8,
    /// After a failed checkout in the extended protocol: drop messages until Sync.
    skip_until_sync: bool,
    /// After an error the proxy made up in the extended protocol: drop messages until Sync,
    /// then forward the Sync.
    discard_until_sync: bool,
    /// Client frames wait because the output is full (see `output_full`) or a frame is held.
    client_blocked: bool,
    /// A frame waits in `rt.pending` for the server to answer what was sent before.
    held: bool,
    /// Last bytes read from the client or the server (idle timeouts count from here).
    last_activity: tokio::time::Instant,
    shutting_down: bool,
    /// The client closed its connection while the proxy waited on shards for it.
    client_gone: bool,
    /// Read/write split state.
    rt: Routing,
}

/// Runs the loop until the client leaves, then cleans up its server connection.
pub(super) async fn run(
    crd: OwnedReadHalf,
    cwr: OwnedWriteHalf,
    cin: BytesMut,
    login: Login,
    state: &ProxyState,
    mut shutdown: watch::Receiver<bool>,
) {
    let managed = login.pool_mode != PoolMode::Session;
    let client = ClientState::from_startup(&login.params);
    let mut l = Loop {
        state,
        login,
        crd,
        cwr,
        cin,
        cout: BytesMut::new(),
        sout: BytesMut::new(),
        server: None,
        relay: Relay::default(),
        events: Vec::new(),
        client,
        managed,
        unsynced: false,
        status: b'I',
        skip_until_sync: false,
        discard_until_sync: false,
        client_blocked: false,
        held: false,
        last_activity: tokio::time::Instant::now(),
        shutting_down: *shutdown.borrow(),
        client_gone: false,
        rt: Routing::default(),
    };
    let end = l.main(&mut shutdown).await;
    l.finish(end).await;
}

async fn read_opt(
    rd: Option<&mut OwnedReadHalf>,
    buf: Option<&mut BytesMut>,
) -> std::io::Result<usize> {
    match (rd, buf) {
        (Some(rd), Some(buf)) => rd.read_buf(buf).await,
        _ => pending().await,
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => pending().await,
    }
}

/// The idle timeout (ms) that applies while it is the client's turn to speak (`settled`: the
/// server owes nothing); `status` tells which one.
fn idle_limit(p: &crate::config::ProxyConfig, status: u8, settled: bool) -> Option<u64> {
    let ms = match status {
        _ if !settled => 0,
        b'I' => p.client_idle_timeout_ms,
        _ => p.idle_transaction_timeout_ms,
    };
    (ms > 0).then_some(ms)
}

/// The error a client gets when its idle timeout strikes.
fn idle_error(status: u8) -> PgError {
    if status == b'I' {
        PgError::fatal(
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to client idle timeout",
        )
    } else {
        PgError::fatal(
            sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            "terminating connection due to idle-in-transaction timeout",
        )
    }
}

async fn write_opt(wr: Option<&mut OwnedWriteHalf>, buf: &[u8]) -> std::io::Result<usize> {
    match wr {
        Some(wr) if !buf.is_empty() => wr.write(buf).await,
        _ => pending().await,
    }
}

/// Makes room to read into `buf`: small for idle clients (thousands of them should cost
/// little memory), doubling up to `READ_CHUNK` while data keeps coming.
fn reserve(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    if spare < 512 {
        buf.reserve(buf.capacity().clamp(2048, READ_CHUNK));
    }
}

/// True if a Query body's SQL text (up to its NUL) is valid UTF-8.
fn query_is_utf8(body: &[u8]) -> bool {
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).is_ok()
}

/// True if a simple-protocol query opens a transaction block (statement mode refuses those).
fn starts_transaction(sql: &str) -> bool {
    let s = sql.trim_start().as_bytes();
    let word = |w: &str| {
        s.len() >= w.len()
            && s[..w.len()].eq_ignore_ascii_case(w.as_bytes())
            && s.get(w.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_')
    };
    word("begin") || word("start")
}

impl Loop<'_> {
    async fn main(&mut self, shutdown: &mut watch::Receiver<bool>) -> End {
        loop {
            if let Some(end) = self.handle_client_frames().await {
                return end;
            }
            if !self.events.is_empty() {
                // Responses the proxy made up itself (e.g. a refused query) may have finished
                // the transaction without a byte from the server.
                if let Some(end) = self.handle_server_input().await {
                    return end;
                }
            }
            if self.shutting_down {
                let idle = match &self.server {
                    None => true,
                    Some(_) => self.relay.idle() && !self.unsynced && self.status == b'I',
                };
                if idle {
                    PgError::fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .encode(&mut self.cout);
                    return End::Shutdown;
                }
            }
            // Write eagerly: most of the time the socket takes everything at once, which saves a
            // trip through the select below.
            if let Err(end) = self.try_flush() {
                return end;
            }
            if self.client_blocked && !self.held && !self.output_full() {
                // The flush made room: the client's next messages (maybe already read, like
                // the Sync after a large Parse) must be handled before waiting for anything.
                continue;
            }
            reserve(&mut self.cin);
            let (srd, swr, sin) = match self.server.as_deref_mut() {
                Some(ServerConn { rd, wr, inbuf, .. }) => {
                    reserve(inbuf);
                    (Some(rd), Some(wr), Some(inbuf))
                }
                None => (None, None, None),
            };
            let read_server = srd.is_some() && self.cout.len() < BUF_CAP;
            let idle_limit = idle_limit(
                &self.state.config.proxy,
                self.status,
                self.relay.idle() && !self.unsynced && self.sout.is_empty(),
            );
            tokio::select! {
                r = self.crd.read_buf(&mut self.cin), if !self.client_blocked => {
                    if !matches!(r, Ok(n) if n > 0) {
                        if let Err(e) = &r {
                            tracing::warn!(user = %self.login.user, "client connection lost: {e}");
                        }
                        return End::ClientGone;
                    }
                    self.last_activity = tokio::time::Instant::now();
                }
                _ = sleep_opt(idle_limit.map(|ms| self.last_activity + Duration::from_millis(ms))) => {
                    return self.fatal(idle_error(self.status));
                }
                r = read_opt(srd, sin), if read_server => {
                    self.last_activity = tokio::time::Instant::now();
                    if !matches!(r, Ok(n) if n > 0) {
                        if let Some(end) = self.lost("server closed the connection unexpectedly") {
                            return end;
                        }
                    }
                }
                r = self.cwr.write(&self.cout), if !self.cout.is_empty() => match r {
                    Ok(n) => self.cout.advance(n),
                    Err(e) => {
                        tracing::warn!(user = %self.login.user, "client connection lost: {e}");
                        return End::ClientGone;
                    }
                },
                r = write_opt(swr, &self.sout), if !self.sout.is_empty() => match r {
                    Ok(n) => {
                        self.sout.advance(n);
                        if let Some(c) = self.server.as_deref_mut() {
                            c.at_rest = false;
                        }
                    }
                    Err(_) => {
                        if let Some(end) = self.lost("could not send data to server") {
                            return end;
                        }
                    }
                },
                _ = shutdown.changed(), if !self.shutting_down => self.shutting_down = true,
            }
            if let Some(end) = self.handle_server_input().await {
                return end;
            }
        }
    }

    /// Ends the session with a FATAL error to the client, logged with its cause.
    fn fatal(&mut self, e: PgError) -> End {
        tracing::warn!(user = %self.login.user, client = self.login.cancel_pid, code = e.code, "closing the client connection: {}", e.message);
        e.encode(&mut self.cout);
        End::Fatal
    }

    /// SQL text that is not UTF-8 (a client_encoding other than UTF8) cannot be read by the
    /// proxy's scanners: routing it would be a guess, so a database that routes refuses it; on
    /// a plain pooled database it runs, but the client keeps its server connection (whatever
    /// the text did to the session stays with it) as with other untracked session state.
    fn non_utf8_query(&mut self) -> Option<PgError> {
        let routes = self.login.split || self.login.shard_map.is_some();
        if routes {
            return Some(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "SQL text that is not valid UTF-8 cannot be routed",
                )
                .with_hint("connect with client_encoding UTF8"),
            );
        }
        if self.managed {
            return self.pin("SQL text that is not UTF-8").err();
        }
        None
    }

    /// Per-client bounds on what the proxy keeps for a client: answers owed by the server
    /// (a pipeline that never reads), and named prepared statements.
    fn over_limits(&self) -> Option<PgError> {
        let what = if self.relay.len() > MAX_OWED {
            format!("more than {MAX_OWED} messages await an answer; read the answers (or Sync) before sending more")
        } else if self.client.named.len() > MAX_NAMED_STATEMENTS {
            format!("more than {MAX_NAMED_STATEMENTS} prepared statements on one connection; close some")
        } else {
            return None;
        };
        Some(PgError::fatal(sqlstate::PROGRAM_LIMIT_EXCEEDED, what))
    }

    /// Output towards the server or the client is at its cap: reading more from the client
    /// waits until it moves.
    fn output_full(&self) -> bool {
        self.sout.len() >= BUF_CAP || self.cout.len() >= BUF_CAP
    }

    /// Writes pending output in both directions without waiting.
    fn try_flush(&mut self) -> Result<(), End> {
        if !self.sout.is_empty() {
            if let Some(conn) = self.server.as_deref_mut() {
                match conn.wr.try_write(&self.sout) {
                    Ok(n) => {
                        self.sout.advance(n);
                        conn.at_rest = false;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        if let Some(end) = self.lost("could not send data to server") {
                            return Err(end);
                        }
                    }
                }
            }
        }
        if !self.cout.is_empty() {
            match self.cwr.try_write(&self.cout) {
                Ok(n) => self.cout.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::ClientGone),
            }
        }
        Ok(())
    }

    /// The server connection failed mid-protocol: tell the client and close.
    fn server_lost(&mut self, what: &str) -> End {
        let addr = match self.server.as_deref_mut() {
            Some(c) => {
                c.broken = true;
                c.addr.clone()
            }
            None => String::new(),
        };
        tracing::warn!(server = %addr, "{what}");
        PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{what} ({addr})"))
            .encode(&mut self.cout);
        End::Fatal
    }

    /// Moves complete client messages to `sout`, checking out a server when needed.
    async fn handle_client_frames(&mut self) -> Option<End> {
        let max = self.state.config.proxy.max_message_size;
        self.held = false;
        loop {
            // A client whose output is not moving is not read: its memory stays bounded.
            if self.client_gone {
                return Some(End::ClientGone);
            }
            self.client_blocked = self.output_full();
            if self.client_blocked {
                return None;
            }
            if let Some(e) = self.over_limits() {
                return Some(self.fatal(e));
            }
            let next = match self.rt.pending.pop_front() {
                Some(f) => Ok(Some(f)),
                None => split_frame(&mut self.cin, max),
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    let code = match e {
                        FrameError::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        FrameError::BadLength(_) => sqlstate::PROTOCOL_VIOLATION,
                    };
                    let e = PgError::fatal(code, format!("invalid message from client: {e}"));
                    return Some(self.fatal(e));
                }
            };
            let tag = frame.tag;
            if tag == b'X' {
                return Some(End::Terminate);
            }
            if !matches!(
                tag,
                b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f'
            ) {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {tag}"),
                );
                return Some(self.fatal(e));
            }
            if self.skip_until_sync {
                if tag == b'S' {
                    self.skip_until_sync = false;
                    protocol::ready_for_query(&mut self.cout, self.status);
                }
                continue;
            }
            if self.discard_until_sync && tag != b'S' {
                continue;
            }
            if tag == b'Q' && !self.state.config.proxy.failpoints.is_empty() {
                self.failpoint(&frame);
            }
            if tag == b'Q' && !query_is_utf8(frame.body()) {
                if let Some(e) = self.non_utf8_query() {
                    e.encode(&mut self.cout);
                    protocol::ready_for_query(&mut self.cout, self.status);
                    continue;
                }
            }
            if tag == b'Q' && self.proxy_command(&frame) {
                continue;
            }
            if self.server.is_none() && self.managed && self.answer_locally(&frame) {
                continue;
            }
            if self.server.is_none() {
                if matches!(tag, b'd' | b'c' | b'f') {
                    // COPY data after the COPY already failed: the server would ignore it too.
                    continue;
                }
                if self.login.pool_mode == PoolMode::Statement
                    && tag == b'Q'
                    && starts_transaction(query_text(frame.body()))
                {
                    self.refuse_transaction();
                    continue;
                }
            }
            // Transaction control across shards is checked first (twophase.rs).
            let step = match self.guard_txn(&frame).await {
                Some(step) => step,
                None => self.plan(&frame),
            };
            let (want, shard) = match step {
                Step::Handled => continue,
                Step::Hold => {
                    self.rt.pending.push_front(frame);
                    self.client_blocked = true;
                    self.held = true;
                    return None;
                }
                Step::Refuse(e) => {
                    e.encode(&mut self.cout);
                    if tag == b'Q' {
                        protocol::ready_for_query(&mut self.cout, self.status);
                    } else {
                        self.skip_until_sync = true;
                    }
                    continue;
                }
                Step::NeedInput => {
                    self.rt.pending.push_front(frame);
                    // The batch waits for its Sync; what it may take is bounded.
                    let held: usize = self.rt.pending.iter().map(|f| f.bytes.len()).sum();
                    let cap = max.max(1 << 20);
                    if held + self.cin.len() > cap {
                        let e = PgError::fatal(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!("an extended-protocol batch for several shards exceeds {cap} bytes before its Sync"),
                        );
                        return Some(self.fatal(e));
                    }
                    return None;
                }
                Step::FanOutBatch(shards) => {
                    if let Some(end) = self.fan_out_batch(frame, &shards).await {
                        return Some(end);
                    }
                    continue;
                }
                Step::FanOut(facts, shards) => {
                    if let Some(end) = self.fan_out(&frame, &facts, &shards).await {
                        return Some(end);
                    }
                    continue;
                }
                Step::Switch(want, shard) => {
                    if let Err(e) = self.switch_shard(want, shard).await {
                        // The transaction cannot continue: fail it like Postgres would.
                        e.encode(&mut self.cout);
                        self.status = b'E';
                        if tag == b'Q' {
                            protocol::ready_for_query(&mut self.cout, self.status);
                        } else {
                            self.skip_until_sync = true;
                        }
                        continue;
                    }
                    (want, shard)
                }
                Step::Commit | Step::CommitBatch => {
                    let batch = matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H');
                    let result = match self.commit_all().await {
                        Ok(tag) => Ok(tag),
                        Err(twophase::CommitError::Client(e)) => Err(e),
                        Err(twophase::CommitError::Crash) => return Some(End::Fatal),
                    };
                    self.status = b'I';
                    self.rt.released();
                    if batch {
                        self.answer_batch(frame, result);
                    } else {
                        match result {
                            Ok(tag) => protocol::command_complete(&mut self.cout, tag),
                            Err(e) => e.encode(&mut self.cout),
                        }
                        protocol::ready_for_query(&mut self.cout, b'I');
                    }
                    continue;
                }
                Step::Go(want, shard) => (want, shard),
            };
            if self.server.is_none() {
                if let Err(e) = self.checkout(want, shard).await {
                    e.encode(&mut self.cout);
                    if matches!(tag, b'Q' | b'F' | b'S') {
                        protocol::ready_for_query(&mut self.cout, self.status);
                    } else {
                        self.skip_until_sync = true;
                    }
                    continue;
                }
            }
            self.rt.record(&frame);
            let before = self.cout.len();
            if let Some(end) = self.route(frame) {
                return Some(end);
            }

            if self.cout.len() > before {
                self.rt.retryable = false;
            }
        }
    }

    /// Testing only: the `panic` failpoint makes a Query containing `shardgate_failpoint_panic`
    /// panic the session, wherever it is (e.g. holding a connection in a transaction).
    fn failpoint(&self, frame: &protocol::Frame) {
        let armed = self
            .state
            .config
            .proxy
            .failpoints
            .iter()
            .any(|f| f == "panic");
        if armed && memchr::memmem::find(frame.body(), b"shardgate_failpoint_panic").is_some() {
            panic!("failpoint: panic");
        }
    }

    fn refuse_transaction(&mut self) {
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "transaction blocks are not allowed in statement pooling mode",
        )
        .with_hint("use a database in transaction or session pool mode")
        .encode(&mut self.cout);
        protocol::ready_for_query(&mut self.cout, b'I');
    }

    /// Makes the server connection's settings match the client's, ahead of its messages.
    fn apply_settings(&mut self) {
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        if let Some(sql) = setup_sql(&self.client.settings, conn) {
            let _ = postgres_protocol::message::frontend::query(&sql, &mut self.sout);
            self.relay.push(Expect::InjectedQuery(APPLY_SETTINGS));
            conn.settings = self.client.settings.clone();
        }
    }

    /// At the end of a transaction, reads back the settings the client changed in it (the
    /// server knows whether they survived a rollback) so they follow the client. After a
    /// transaction that may have changed settings the SQL does not name, reads every setting
    /// of the session and resets the server connection (one round trip either way).
    async fn read_back_settings(&mut self) {
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        // After writes (triggers may set something): reset before the next use, in the same
        // write as the next client's settings; no round trip now.
        conn.settings_unknown |= std::mem::take(&mut self.client.wrote);
        if std::mem::take(&mut self.client.opaque) {
            let mut names: Vec<String> = self.client.settings.keys().cloned().collect();
            names.extend(std::mem::take(&mut self.client.dirty));
            let refs: Vec<&String> = names.iter().collect();
            let sql = read_all_settings_sql(&refs);
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_rows(&sql)).await {
                Ok(Ok((rows, b'I'))) => {
                    self.client.settings = settings_from_rows(rows);
                    // RESET ALL: the connection is back at its defaults.
                    conn.settings.clear();
                    conn.settings_unknown = false;
                }
                _ => {
                    tracing::warn!(user = %self.login.user, "could not read back session settings; closing the server connection");
                    conn.broken = true;
                }
            }
            return;
        }
        if self.client.dirty.is_empty() {
            return;
        }
        let names: Vec<String> = std::mem::take(&mut self.client.dirty).into_iter().collect();
        let refs: Vec<&String> = names.iter().collect();
        let sql = read_back_sql(&refs);
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_row(&sql)).await {
            Ok(Ok(values)) if values.len() == names.len() => {
                for (k, v) in names.into_iter().zip(values) {
                    conn.settings.insert(k.clone(), v.clone());
                    self.client.settings.insert(k, v);
                }
            }
            _ => {
                tracing::warn!(user = %self.login.user, "could not read back session settings; closing the server connection");
                conn.broken = true;
            }
        }
    }

    /// Returns the server connection to the pool.
    async fn release(&mut self) {
        // What the client is owed goes out before the round trips below.
        if self.try_flush().is_err() {
            if let Some(c) = self.server.as_deref_mut() {
                c.broken = true;
            }
        }
        if !self.rt.parked.is_empty() {
            // The transaction ended on its current shard (ROLLBACK, or COMMIT after an
            // error): the others roll back too.
            self.release_parked().await;
        }
        self.note_write().await;
        if self.managed {
            self.read_back_settings().await;
        }
        self.rt.released();
        if let Some(mut c) = self.server.take() {
            tracing::trace!(client = self.login.cancel_pid, pid = c.pid, status = %(self.status as char), "release");
            lock(&self.login.cancel_slot).clear();
            if !c.inbuf.is_empty() {
                // Asynchronous messages after ReadyForQuery belong to this client's session.
                c.broken = true;
            }
            drop(c);
        }
    }

    fn releasable(&self) -> bool {
        self.managed
            && self.client.pinned.is_none()
            && self.relay.idle()
            && !self.unsynced
            && (self.status == b'I' || self.rt.outside_txn)
    }

    /// Forwards what the server sent through the relay, handling each ReadyForQuery.
    async fn handle_server_input(&mut self) -> Option<End> {
        let statement_mode = self.login.pool_mode == PoolMode::Statement;
        match self.read_hold() {
            ReadHold::Go => {}
            ReadHold::Wait => return None,
            ReadHold::Dying => return self.lost("server terminated the connection"),
        }
        let conn = self.server.as_deref_mut()?;
        // In statement mode a ReadyForQuery that opens a transaction is not forwarded.
        let before = self.cout.len();
        if let Err(e) = self
            .relay
            .process(&mut conn.inbuf, &mut self.cout, &mut self.events)
        {
            return Some(self.server_lost(&format!("invalid data from server: {e}")));
        }
        if self.cout.len() > before {
            self.rt.retryable = false;
        }
        let events = std::mem::take(&mut self.events);
        // The server's own status after the last ReadyForQuery of this input (the client may
        // be shown another one, see below).
        let mut server_status = None;
        for ev in &events {
            match ev {
                Event::Ready(status) => {
                    server_status = Some(*status);
                    self.status = *status;
                    if *status == b'I' && std::mem::take(&mut self.client.ddl) {
                        // The schema changed: statements prepared from now on are new ones.
                        self.state.statements.bump_generation();
                    }
                    if self.rt.guard.abort_at_ready && self.relay.idle() {
                        // The end of a batch in which transaction control was refused
                        // (twophase.rs): the transaction fails everywhere.
                        self.abort_refused_batch(before).await;
                        continue;
                    }
                    if self.rt.outside_txn && *status == b'I' {
                        // A Parse/Describe batch while the client's BEGIN waits: the client
                        // is still in its transaction.
                        let from = before.min(self.cout.len());
                        let z = [b'Z', 0, 0, 0, 5, b'I'];
                        if let Some(at) = self.cout[from..].windows(6).rposition(|w| w == z) {
                            let at = from + at + 5;
                            self.cout[at] = b'T';
                        }
                        self.status = b'T';
                    }
                    if statement_mode && *status != b'I' && self.relay.idle() {
                        // The client opened a transaction: undo it instead of pinning the
                        // connection. The ReadyForQuery just forwarded is the last 6 bytes.
                        let cut = self.cout.len().saturating_sub(6).max(before);
                        self.cout.truncate(cut);
                        let conn = self.server.as_deref_mut()?;
                        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.run("ROLLBACK")).await {
                            Ok(Ok(b'I')) => server_status = Some(b'I'),
                            _ => conn.broken = true,
                        }
                        self.status = b'I';
                        self.refuse_transaction();
                    }
                }
                Event::ParseFailed { stmt, client_name } => {
                    if let Some(conn) = self.server.as_deref_mut() {
                        conn.prepared.pop(&stmt.id);
                    }
                    if let Some(n) = client_name {
                        if self
                            .client
                            .named
                            .get(n)
                            .is_some_and(|s| Arc::ptr_eq(s, stmt))
                        {
                            self.client.named.remove(n);
                        }
                    }
                }
                Event::InjectedFailed(what) => {
                    // The connection's state is not what the proxy believes (e.g. the client's
                    // settings were not applied): it must never be reused.
                    tracing::warn!(user = %self.login.user, "{what} query failed on the server; the server connection will be closed");
                    if let Some(conn) = self.server.as_deref_mut() {
                        conn.broken = true;
                    }
                }
                Event::StalePlan => {
                    // Statements prepared on this connection no longer match the schema (DDL
                    // the proxy did not see): new Parses get new statements, and this
                    // connection (with its stale statements) is closed at release.
                    self.state.statements.bump_generation();
                    if let Some(conn) = self.server.as_deref_mut() {
                        conn.broken = true;
                    }
                }
                Event::ParameterStatus(name) => match name {
                    // A reported setting changed (by a trigger, a function, ...): read it back.
                    Some(n) if reported_not_settable(n) => {}
                    Some(n) if crate::sql::scan::is_setting_name(n) => {
                        self.client.dirty.insert(n.to_ascii_lowercase());
                    }
                    _ => self.client.opaque = true,
                },
            }
        }
        self.events = events;
        self.events.clear();
        if let (Some(status), Some(conn)) = (server_status, self.server.as_deref_mut()) {
            conn.at_rest = status == b'I'
                && self.relay.idle()
                && !self.unsynced
                && self.sout.is_empty()
                && conn.inbuf.is_empty();
        }
        if self.releasable() {
            self.release().await;
        }
        None
    }

    /// Flushes what is owed to the client and leaves the server connection clean or broken.
    async fn finish(mut self, end: End) {
        if end == End::Fatal {
            // The proxy closes this client's connection: say why (the FATAL it was sent).
            tracing::warn!(
                user = %self.login.user,
                "closing the client connection: {}",
                fatal_message(&self.cout).unwrap_or("fatal error")
            );
        }
        if matches!(end, End::Fatal | End::Shutdown) && !self.cout.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.cwr.write_all(&self.cout)).await;
        }
        let _ = self.cwr.shutdown().await;
        for (_, mut c) in std::mem::take(&mut self.rt.parked) {
            // Closing the connection rolls its part of the transaction back.
            c.broken = true;
        }
        let Some(mut conn) = self.server.take() else {
            return;
        };
        lock(&self.login.cancel_slot).clear();
        if conn.broken {
            return;
        }
        if !self.relay.idle() || self.unsynced {
            // The client left mid-query: stop the query and close the connection, which makes
            // Postgres roll back and release its locks.
            if self.relay.owed_ready() > 0 {
                let (addr, pid, secret) = (conn.addr.clone(), conn.pid, conn.secret.clone());
                tokio::spawn(async move {
                    let _ = ServerConn::cancel(&addr, pid, &secret).await;
                });
            }
            conn.broken = true;
            return;
        }
        let status = self.status;
        // A pinned client may leave advisory locks, LISTENs or temp tables behind: reset like a
        // session-mode client (DISCARD ALL releases all of those); without a reset query,
        // close the connection instead.
        let pinned = self.client.pinned.is_some();
        let reset = if self.login.pool_mode == PoolMode::Session || pinned {
            self.state.config.proxy.server_reset_query.clone()
        } else {
            String::new()
        };
        if pinned && reset.is_empty() {
            conn.broken = true;
            return;
        }
        let cleanup = async {
            if status != b'I' {
                conn.run("ROLLBACK").await?;
            }
            if !reset.is_empty() {
                conn.run(&reset).await
            } else {
                Ok(b'I')
            }
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
            Ok(Ok(b'I')) if conn.inbuf.is_empty() => {
                if !reset.is_empty() {
                    // DISCARD ALL (or the configured reset) dropped statements and settings.
                    conn.prepared.clear();
                    conn.sql_prepared.clear();
                    conn.settings.clear();
                }
            }
            _ => conn.broken = true,
        }
        if end == End::ClientGone {
            tracing::debug!(user = %self.login.user, "client vanished; server connection cleaned up");
        }
    }
}

/// The message of the last ErrorResponse in `out` (what a closing session sent).
fn fatal_message(out: &[u8]) -> Option<&str> {
    let mut rest = out;
    let mut found = None;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]).max(4) as usize;
        let end = (len + 1).min(rest.len());
        if rest[0] == b'E' {
            let mut fields = &rest[5..end];
            while let Some((&t, tail)) = fields.split_first() {
                let Some(z) = tail.iter().position(|&b| b == 0) else {
                    break;
                };
                if t == b'M' {
                    found = std::str::from_utf8(&tail[..z]).ok();
                }
                fields = &tail[z + 1..];
            }
        }
        rest = &rest[end..];
    }
    found
}

fn lock(slot: &crate::state::CancelSlot) -> std::sync::MutexGuard<'_, Vec<CancelTarget>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::{fatal_message, starts_transaction};

    #[test]
    fn the_cause_of_a_closed_connection_is_read_from_its_fatal() {
        let mut out = bytes::BytesMut::new();
        crate::protocol::ready_for_query(&mut out, b'I');
        crate::protocol::PgError::fatal("08006", "server closed the connection").encode(&mut out);
        assert_eq!(fatal_message(&out), Some("server closed the connection"));
        assert_eq!(fatal_message(b"E\0\0"), None);
    }

    #[test]
    fn detects_transaction_starts() {
        assert!(starts_transaction("BEGIN"));
        assert!(starts_transaction("  begin isolation level serializable"));
        assert!(starts_transaction("START TRANSACTION;"));
        assert!(!starts_transaction("beginning"));
        assert!(!starts_transaction("select 1"));
    }
}
