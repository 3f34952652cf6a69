//! The I/O driver of a read streamed from several shards: the decisions are
//! [`FanOutRead`]'s; this loop owns the sockets. It reads a shard only while the merge wants
//! it and the client's output is under its cap (a slow client slows the shards, it does not
//! grow the proxy), writes merged rows to the client as it takes them, watches the client
//! (a client that leaves has the statement cancelled on every shard), and routes the
//! client's CancelRequest to every shard through the cancel slot.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::task::JoinHandle;

use super::routing::Want;
use super::{reserve, Loop, BUF_CAP, CLEANUP_TIMEOUT};
use crate::pool::Checkout;
use crate::protocol::{split_frame, sqlstate, PgError};
use crate::session::handshake::cancel_all;
use crate::session::machine::fan_out_read::FanOutRead;
use crate::session::machine::shard_stream::{ShardEnd, ShardStream, Step};
use crate::shard::ShardId;
use crate::sql::analyze::fanout::FanOutQuery;

/// Bytes waiting to go to one shard above which the client's messages are not taken (a slow
/// shard slows the client's COPY; the proxy does not buffer it).
const SHARD_BACKLOG: usize = 256 * 1024;

/// The connections a statement on several shards runs on.
pub(super) struct ShardConns<'s> {
    /// The shards, in connection order.
    pub shards: &'s [ShardId],
    pub conns: Vec<Checkout>,
    /// The connections are in the client's transaction.
    pub in_txn: bool,
    /// Each connection's last ReadyForQuery must be in a transaction block (else not): one
    /// that is not as expected is closed.
    pub ends_in_txn: bool,
}

impl<'s> ShardConns<'s> {
    /// `conns` of `shards`, ending as they are (`in_txn`).
    pub fn new(shards: &'s [ShardId], conns: Vec<Checkout>, in_txn: bool) -> ShardConns<'s> {
        ShardConns {
            shards,
            conns,
            in_txn,
            ends_in_txn: in_txn,
        }
    }
}

/// Why the driver stopped before every shard answered.
enum Stop {
    ClientGone,
    Stalled,
}

/// What happened on a shard connection.
enum ShardIo {
    /// Shard `i` read: bytes taken, or the error.
    Read(usize, std::io::Result<usize>),
    /// Shard `i` written to: bytes sent, or the error.
    Wrote(usize, std::io::Result<usize>),
}

/// Writes what is `outgoing` to its shard, or reads from the first of `conns` (from `start`
/// on, round robin) marked `readable` that has bytes, whichever can go first: a shard's
/// request goes out while the answers of the others (and its own) are read, so neither
/// side waits for the other however large the request.
async fn shard_io(
    conns: &mut [Checkout],
    readable: &[bool],
    outgoing: &[BytesMut],
    start: usize,
) -> ShardIo {
    let n = conns.len();
    std::future::poll_fn(|cx| {
        for (i, out) in outgoing.iter().enumerate() {
            if out.is_empty() {
                continue;
            }
            if let Poll::Ready(r) = Pin::new(&mut conns[i].wr).poll_write(cx, out) {
                return Poll::Ready(ShardIo::Wrote(i, r));
            }
        }
        for k in 0..n {
            let i = (start + k) % n;
            if !readable[i] {
                continue;
            }
            let conn = &mut *conns[i];
            reserve(&mut conn.inbuf);
            let polled = tokio_util::io::poll_read_buf(Pin::new(&mut conn.rd), cx, &mut conn.inbuf);
            if let Poll::Ready(r) = polled {
                return Poll::Ready(ShardIo::Read(i, r));
            }
        }
        Poll::Pending
    })
    .await
}

impl Loop<'_> {
    /// Runs read `q` (a simple Query) on `shards` and streams the merged answer into the
    /// client's output (without the ReadyForQuery, which is the caller's).
    pub(super) async fn stream_read(
        &mut self,
        q: FanOutQuery,
        shards: &[ShardId],
        want: Want,
    ) -> Result<(), PgError> {
        let mut request = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(&q.shard_sql, &mut request);
        let cap = self.state.config.proxy.max_fanout_bytes;
        let machine = FanOutRead::new(q.spec, shards.len(), cap);
        self.stream_fan_out(shards, want, request.freeze(), machine, &q.shard_sql)
            .await
            .map(|_| ())
    }

    /// Sends `request` (the statement `sql`) to every one of `shards` and runs `machine` over
    /// their answers, streaming the client's messages into its output. Returns the machine at
    /// its end (the caller reads how it went).
    pub(super) async fn stream_fan_out<M: ShardStream>(
        &mut self,
        shards: &[ShardId],
        want: Want,
        request: Bytes,
        machine: M,
        sql: &str,
    ) -> Result<M, PgError> {
        let (conns, in_txn) = self.shard_conns(shards, want).await?;
        let outgoing = vec![request; shards.len()];
        let on = ShardConns::new(shards, conns, in_txn);
        let (machine, conns) = self.run_stream(on, outgoing, machine, &[sql]).await?;
        self.end_shard_statement(shards, conns, in_txn, machine.progress().failed());
        Ok(machine)
    }

    /// Sends each connection of `on` its request in `outgoing` (the statements `texts`) and
    /// runs `machine` over their answers, streaming the client's messages into its output.
    /// Returns the machine and the connections, for the caller to end the statement; on an
    /// error the statement is ended here.
    pub(super) async fn run_stream<M: ShardStream>(
        &mut self,
        on: ShardConns<'_>,
        outgoing: Vec<Bytes>,
        mut machine: M,
        texts: &[&str],
    ) -> Result<(M, Vec<Checkout>), PgError> {
        let ShardConns {
            shards,
            mut conns,
            in_txn,
            ends_in_txn,
        } = on;
        // The proxy's own statements on the shards take their unnamed statements.
        conns.iter_mut().for_each(|c| {
            c.at_rest = false;
            c.unnamed_owner = 0;
        });
        if machine.cancellable() {
            self.cancel_to(&conns);
        }
        let mut cancel = None;
        let mut outgoing: Vec<BytesMut> = outgoing.into_iter().map(BytesMut::from).collect();
        let driven = self
            .drive(&mut machine, &mut conns, &mut outgoing, &mut cancel)
            .await;
        super::lock(&self.login.cancel.slot).clear();
        match driven {
            Ok(()) => {}
            Err(Stop::ClientGone) => return Err(self.abandon(&mut conns).await),
            Err(Stop::Stalled) => {
                conns.iter_mut().for_each(|c| c.broken = true);
                self.end_shard_statement(shards, conns, in_txn, true);
                return Err(PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "a statement on several shards stalled",
                ));
            }
        }
        // A cancel still in flight could stop a connection's next statement: the connections
        // are not reused before the servers have taken it.
        if let Some(c) = cancel {
            if tokio::time::timeout(CLEANUP_TIMEOUT, c).await.is_err() {
                conns.iter_mut().for_each(|c| c.broken = true);
            }
        }
        for (i, c) in conns.iter_mut().enumerate() {
            if !machine.ends_well(i, ends_in_txn) {
                c.broken = true;
            }
        }
        self.note_effects(&mut conns, texts.iter().copied());
        Ok((machine, conns))
    }

    /// Inside a transaction the connections stay with it (failed if `failed`); outside, they
    /// go back to their pools (or are closed when broken).
    pub(super) fn end_shard_statement(
        &mut self,
        shards: &[ShardId],
        conns: Vec<Checkout>,
        in_txn: bool,
        failed: bool,
    ) {
        if in_txn {
            if failed {
                self.txn.fail();
            }
            self.park_all(shards, conns);
        }
    }

    /// Passes `machine` the messages already read from the shards while it wants them and the
    /// client's output has room, until none is left that it wants (a message of one shard
    /// can make it want another's, read before).
    fn take_buffered<M: ShardStream>(
        &mut self,
        machine: &mut M,
        conns: &mut [Checkout],
        cancel: &mut Option<JoinHandle<()>>,
    ) {
        let mut moved = true;
        while moved {
            moved = false;
            for i in 0..conns.len() {
                while machine.wants(i) && (machine.discarding() || self.to_client.len() < BUF_CAP) {
                    let step = match conns[i].buffered_frame() {
                        Ok(Some(f)) => machine.on_message(i, f, &mut self.to_client),
                        Ok(None) => break,
                        Err(_) => machine.on_lost(i, &mut self.to_client),
                    };
                    moved = true;
                    react(step, i, machine, conns, cancel);
                }
            }
        }
    }

    /// Passes `machine` the client's messages already read while it wants them and no shard
    /// has more than [`SHARD_BACKLOG`] bytes waiting to go out. Returns whether the machine
    /// waits for more of the client's input (it wants the client and there is room).
    fn take_client<M: ShardStream>(
        &mut self,
        machine: &mut M,
        conns: &mut [Checkout],
        outgoing: &mut [BytesMut],
        cancel: &mut Option<JoinHandle<()>>,
    ) -> bool {
        let max = self.state.config.proxy.max_message_size;
        loop {
            if !machine.wants_client() {
                return false;
            }
            machine.take_outgoing(outgoing);
            if outgoing.iter().any(|o| o.len() >= SHARD_BACKLOG) {
                return false;
            }
            let step = match split_frame(&mut self.from_client, max) {
                Ok(Some(f)) => machine.on_client(f, &mut self.to_client),
                Ok(None) => return true,
                Err(e) => machine.on_client_garbled(
                    PgError::error(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                    &mut self.to_client,
                ),
            };
            debug_assert_ne!(step, Step::Broken, "a client message breaks no shard");
            react(step, 0, machine, conns, cancel);
        }
    }

    /// Moves messages from the shards through `machine` to the client until every shard is at
    /// ReadyForQuery.
    async fn drive<M: ShardStream>(
        &mut self,
        machine: &mut M,
        conns: &mut [Checkout],
        outgoing: &mut [BytesMut],
        cancel: &mut Option<JoinHandle<()>>,
    ) -> Result<(), Stop> {
        let mut start = 0;
        let mut readable = vec![false; conns.len()];
        let client_cancel = self.login.cancel.clone();
        let signal = &client_cancel.signal;
        let mut cancels_seen = signal.count();
        let mut client = ClientSide::Open;
        let mut timer = machine
            .patience()
            .map(|t| (t, Box::pin(tokio::time::sleep(t))));
        loop {
            // Registered before the count is read: a CancelRequest in between is not missed.
            let cancelled = signal.notified();
            tokio::pin!(cancelled);
            cancelled.as_mut().enable();
            if signal.count() != cancels_seen && machine.cancellable() {
                cancels_seen = signal.count();
                let step = machine.on_cancel_requested();
                react(step, 0, machine, conns, cancel);
            }
            self.take_buffered(machine, conns, cancel);
            let client_room =
                client == ClientSide::Open && self.take_client(machine, conns, outgoing, cancel);
            machine.take_outgoing(outgoing);
            if machine.finished() {
                return Ok(());
            }
            if client == ClientSide::Open && self.try_flush().is_err() {
                client = self.client_left(machine)?;
            }
            let room = machine.discarding() || self.to_client.len() < BUF_CAP;
            for (i, r) in readable.iter_mut().enumerate() {
                *r = room && machine.wants(i) && !conns[i].has_buffered_frame();
            }
            let any = readable.iter().any(|r| *r) || outgoing.iter().any(|o| !o.is_empty());
            // The client is read for its pipelined messages while they fit, and, while the
            // machine takes its messages, for the rest of the one partly read.
            let read_client =
                client == ClientSide::Open && (self.from_client.len() < BUF_CAP || client_room);
            let write_client = client == ClientSide::Open && !self.to_client.is_empty();
            if client_room {
                reserve(&mut self.from_client);
            }
            if !any && !client_room && !write_client {
                // No shard is wanted and nothing is owed to the client: a machine that can
                // no longer move (the select below would wait only for the client).
                return Err(Stop::Stalled);
            }
            tokio::select! {
                r = self.client_reader.read_buf(&mut self.from_client), if read_client => match r {
                    Ok(n @ 1..) => {
                        self.meter.counts.received += n as u64;
                        self.last_activity = tokio::time::Instant::now();
                    }
                    _ => client = self.client_left(machine)?,
                },
                r = tokio::io::AsyncWriteExt::write(&mut self.client_writer, &self.to_client), if write_client => match r {
                    Ok(n) => self.sent(n),
                    Err(_) => client = self.client_left(machine)?,
                },
                io = shard_io(conns, &readable, outgoing, start), if any => {
                    // The last bytes read (idle timeouts, and the time of the answer).
                    self.last_activity = tokio::time::Instant::now();
                    if let Some((t, sleep)) = timer.as_mut() {
                        sleep.as_mut().reset(self.last_activity + *t);
                    }
                    self.on_shard_io(io, machine, conns, outgoing, cancel, &mut start);
                }
                () = expired(&mut timer), if any => {
                    // Nothing from the shards for the machine's patience: every shard that
                    // still owes an answer is given up.
                    for i in 0..conns.len() {
                        if machine.wants(i) || !outgoing[i].is_empty() {
                            conns[i].broken = true;
                            outgoing[i].clear();
                            let step = machine.on_lost(i, &mut self.to_client);
                            react(step, i, machine, conns, cancel);
                        }
                    }
                    if let Some((t, sleep)) = timer.as_mut() {
                        sleep.as_mut().reset(tokio::time::Instant::now() + *t);
                    }
                }
                () = &mut cancelled => {}
            }
        }
    }

    /// The client left (or its socket failed): a machine that outlives it goes on without
    /// the client; any other stops.
    fn client_left<M: ShardStream>(&mut self, machine: &M) -> Result<ClientSide, Stop> {
        if !machine.outlives_client() {
            return Err(Stop::ClientGone);
        }
        self.client_gone = true;
        self.to_client.clear();
        Ok(ClientSide::Gone)
    }

    /// Carries out what `io` did on a shard connection (from `shard_io`).
    fn on_shard_io<M: ShardStream>(
        &mut self,
        io: ShardIo,
        machine: &mut M,
        conns: &mut [Checkout],
        outgoing: &mut [BytesMut],
        cancel: &mut Option<JoinHandle<()>>,
        start: &mut usize,
    ) {
        let (i, r) = match io {
            ShardIo::Read(i, r) => {
                *start = i + 1;
                (i, r)
            }
            ShardIo::Wrote(i, r) => {
                if let Ok(n) = r {
                    bytes::Buf::advance(&mut outgoing[i], n);
                    if outgoing[i].is_empty() {
                        // Written out: reuse the buffer from its start.
                        outgoing[i].clear();
                    }
                }
                (i, r)
            }
        };
        if !matches!(r, Ok(n) if n > 0) {
            conns[i].broken = true;
            outgoing[i].clear();
            let step = machine.on_lost(i, &mut self.to_client);
            react(step, i, machine, conns, cancel);
        }
    }
}

/// Whether the driver still talks to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientSide {
    Open,
    /// It left; the machine goes on without it.
    Gone,
}

/// Waits for the patience timer, if the machine has one (else forever).
async fn expired(timer: &mut Option<(Duration, Pin<Box<tokio::time::Sleep>>)>) {
    match timer.as_mut() {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Carries out `step`, taken after a message of shard `i`.
fn react<M: ShardStream>(
    step: Step,
    i: usize,
    machine: &M,
    conns: &mut [Checkout],
    cancel: &mut Option<JoinHandle<()>>,
) {
    match step {
        Step::Continue => return,
        Step::Broken => conns[i].broken = true,
        Step::CancelOthers => {}
    }
    if cancel.is_some() || !machine.cancellable() {
        return;
    }
    let targets: Vec<_> = conns
        .iter()
        .zip(machine.progress().shard_ends())
        .filter(|(_, end)| !matches!(end, ShardEnd::Ready(_)))
        .map(|(c, _)| c.cancel_target())
        .collect();
    if !targets.is_empty() {
        *cancel = Some(tokio::spawn(async move { cancel_all(&targets).await }));
    }
}
