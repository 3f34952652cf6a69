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
mod routing;
mod statements;
mod twophase;

use routing::{ReadHold, Routing, Step};

/// Above this many buffered bytes in one direction, stop reading from the sender.
const BUF_CAP: usize = 256 * 1024;
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
    /// Client frames wait because `sout` is full.
    client_blocked: bool,
    shutting_down: bool,
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
        shutting_down: *shutdown.borrow(),
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
            reserve(&mut self.cin);
            let (srd, swr, sin) = match self.server.as_deref_mut() {
                Some(ServerConn { rd, wr, inbuf, .. }) => {
                    reserve(inbuf);
                    (Some(rd), Some(wr), Some(inbuf))
                }
                None => (None, None, None),
            };
            let read_server = srd.is_some() && self.cout.len() < BUF_CAP;
            tokio::select! {
                r = self.crd.read_buf(&mut self.cin), if !self.client_blocked => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return End::ClientGone;
                    }
                }
                r = read_opt(srd, sin), if read_server => {
                    if !matches!(r, Ok(n) if n > 0) {
                        if let Some(end) = self.lost("server closed the connection unexpectedly") {
                            return end;
                        }
                    }
                }
                r = self.cwr.write(&self.cout), if !self.cout.is_empty() => match r {
                    Ok(n) => self.cout.advance(n),
                    Err(_) => return End::ClientGone,
                },
                r = write_opt(swr, &self.sout), if !self.sout.is_empty() => match r {
                    Ok(n) => self.sout.advance(n),
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

    /// Writes pending output in both directions without waiting.
    fn try_flush(&mut self) -> Result<(), End> {
        if !self.sout.is_empty() {
            if let Some(conn) = self.server.as_deref_mut() {
                match conn.wr.try_write(&self.sout) {
                    Ok(n) => self.sout.advance(n),
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
        loop {
            self.client_blocked = self.sout.len() >= BUF_CAP;
            if self.client_blocked {
                return None;
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
                    PgError::fatal(code, format!("invalid message from client: {e}"))
                        .encode(&mut self.cout);
                    return Some(End::Fatal);
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
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {tag}"),
                )
                .encode(&mut self.cout);
                return Some(End::Fatal);
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
            let (want, shard) = match self.plan(&frame) {
                Step::Handled => continue,
                Step::Hold => {
                    self.rt.pending.push_front(frame);
                    self.client_blocked = true;
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
            *lock(&self.login.cancel_slot) = None;
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
        for ev in &events {
            match ev {
                Event::Ready(status) => {
                    self.status = *status;
                    if *status == b'I' && std::mem::take(&mut self.client.ddl) {
                        // The schema changed: statements prepared from now on are new ones.
                        self.state.statements.bump_generation();
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
                            Ok(Ok(b'I')) => {}
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
                    tracing::warn!(user = %self.login.user, "{what} query failed on the server");
                    if *what == APPLY_SETTINGS {
                        // The server connection does not have the client's settings, whatever
                        // it has instead: it must not go back to the pool as if it had.
                        if let Some(conn) = self.server.as_deref_mut() {
                            conn.broken = true;
                        }
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
        if self.releasable() {
            self.release().await;
        }
        None
    }

    /// Flushes what is owed to the client and leaves the server connection clean or broken.
    async fn finish(mut self, end: End) {
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
        *lock(&self.login.cancel_slot) = None;
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

fn lock(slot: &crate::state::CancelSlot) -> std::sync::MutexGuard<'_, Option<CancelTarget>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::starts_transaction;

    #[test]
    fn detects_transaction_starts() {
        assert!(starts_transaction("BEGIN"));
        assert!(starts_transaction("  begin isolation level serializable"));
        assert!(starts_transaction("START TRANSACTION;"));
        assert!(!starts_transaction("beginning"));
        assert!(!starts_transaction("select 1"));
    }
}
