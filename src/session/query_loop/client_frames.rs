//! Client messages in the query loop: reads each complete message from the client, answers
//! or drops what needs no server, and carries out the routing decision for the rest (hold it,
//! refuse it, fan it out, commit across shards, or send it to a checked-out server).

use std::ops::ControlFlow;

use super::routing::{Step, Want};
use super::{twophase, End, Loop, MAX_NAMED_STATEMENTS, MAX_OWED};
use crate::config::PoolMode;
use crate::protocol::{
    self, query_text, split_frame, sqlstate, Frame, FrameError, PgError, TxStatus,
};
use crate::session::machine::ready::starts_transaction;
use crate::session::machine::sync::OnClient;
use crate::session::machine::txn::Txn;
use crate::shard::ShardId;

/// What the client-message loop does once a routing step was carried out.
enum Next {
    /// Go on with the client's next message.
    Continue,
    /// Stop handling client messages for now; `Some` ends the session.
    Stop(Option<End>),
    /// Send the message to a server connection for this want, on this shard.
    Send(Frame, Want, ShardId),
}

/// True if a Query body's SQL text (up to its NUL) is valid UTF-8.
fn query_is_utf8(body: &[u8]) -> bool {
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).is_ok()
}

impl Loop<'_> {
    /// Moves complete client messages to `to_server`, checking out a server when needed.
    pub(super) async fn handle_client_frames(&mut self) -> Option<End> {
        let max = self.state.config.proxy.max_message_size;
        self.held = false;
        loop {
            let frame = match self.next_client_frame(max) {
                ControlFlow::Continue(frame) => frame,
                ControlFlow::Break(end) => return end,
            };
            self.meter.query_shape = None;
            if self.handled_before_routing(&frame) {
                continue;
            }
            // Transaction control across shards is checked first (twophase.rs).
            let step = match self.guard_txn(&frame).await {
                Some(step) => step,
                None => self.plan(&frame),
            };
            match self.take_step(step, frame, max).await {
                Next::Continue => {}
                Next::Stop(end) => return end,
                Next::Send(frame, want, shard) => {
                    if let Some(end) = self.send_to_server(frame, want, shard).await {
                        return Some(end);
                    }
                }
            }
        }
    }

    /// The client's next message to handle (a held or replayed one first). `Break(None)`:
    /// none for now (the output is full, or no complete message has arrived);
    /// `Break(Some(..))`: the session ends (Terminate, an invalid message, a limit).
    fn next_client_frame(&mut self, max: usize) -> ControlFlow<Option<End>, Frame> {
        // A client whose output is not moving is not read: its memory stays bounded.
        if self.client_gone {
            return ControlFlow::Break(Some(End::ClientGone));
        }
        self.client_blocked = self.output_full();
        if self.client_blocked {
            return ControlFlow::Break(None);
        }
        if let Some(e) = self.over_limits() {
            return ControlFlow::Break(Some(self.fatal(e)));
        }
        let next = match self.routing.pending.pop_front() {
            Some(f) => Ok(Some(f)),
            None => split_frame(&mut self.from_client, max),
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => return ControlFlow::Break(None),
            Err(e) => {
                let code = match e {
                    FrameError::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    FrameError::BadLength(_) => sqlstate::PROTOCOL_VIOLATION,
                };
                let e = PgError::fatal(code, format!("invalid message from client: {e}"));
                return ControlFlow::Break(Some(self.fatal(e)));
            }
        };
        let tag = frame.tag;
        if tag == b'X' {
            return ControlFlow::Break(Some(End::Terminate));
        }
        if matches!(tag, b'Q' | b'S' | b'F') {
            // The request arrived with the last bytes read: no clock read here.
            let (cancel, at) = (&self.login.cancel, self.last_activity.into_std());
            self.meter.request(|| {
                let ms = crate::health::ms_at(at);
                cancel
                    .request_ms
                    .store(ms, std::sync::atomic::Ordering::Relaxed);
                at
            });
        }
        if !matches!(
            tag,
            b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f'
        ) {
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid frontend message type {tag}"),
            );
            return ControlFlow::Break(Some(self.fatal(e)));
        }
        ControlFlow::Continue(frame)
    }

    /// Handles a client message that is not routed: dropped up to a Sync after an error,
    /// refused (SQL text that is not UTF-8, a transaction block in statement mode), a
    /// `shardgate.*` command, or answered without a server. True if the message was consumed.
    fn handled_before_routing(&mut self, frame: &Frame) -> bool {
        let tag = frame.tag;
        if tag == b'Q' {
            // A simple Query drops the unnamed statement, as in Postgres.
            self.client.unnamed_parse = None;
        }
        match self.skip.on_client(tag) {
            OnClient::Handle => {}
            OnClient::Drop => return true,
            OnClient::AnswerReady => {
                self.ready_for_client(self.txn.status());
                return true;
            }
        }
        if tag == b'Q' && !self.state.config.proxy.failpoints.is_empty() {
            self.failpoint(frame);
        }
        if tag == b'Q' && !query_is_utf8(frame.body()) {
            if let Some(e) = self.non_utf8_query() {
                e.encode(&mut self.to_client);
                self.ready_for_client(self.txn.status());
                return true;
            }
        }
        if tag == b'Q' && self.proxy_command(frame) {
            return true;
        }
        if self.server.is_none() && self.managed && self.answer_locally(frame) {
            return true;
        }
        if self.server.is_none() {
            if matches!(tag, b'd' | b'c' | b'f') {
                // COPY data after the COPY already failed: the server would ignore it too.
                return true;
            }
            if self.login.pool_mode == PoolMode::Statement
                && tag == b'Q'
                && starts_transaction(query_text(frame.body()))
            {
                self.refuse_transaction();
                return true;
            }
        }
        false
    }

    /// Carries out the routing decision `step` for a client message.
    async fn take_step(&mut self, step: Step, frame: Frame, max: usize) -> Next {
        let tag = frame.tag;
        match step {
            Step::Handled => Next::Continue,
            Step::Hold => {
                self.routing.pending.push_front(frame);
                self.client_blocked = true;
                self.held = true;
                Next::Stop(None)
            }
            Step::Refuse(e) => {
                e.encode(&mut self.to_client);
                self.end_refused(tag);
                Next::Continue
            }
            Step::NeedInput => Next::Stop(self.wait_for_batch(frame, max)),
            Step::FanOutBatch(shards) => match self.fan_out_batch(frame, &shards).await {
                Some(end) => Next::Stop(Some(end)),
                None => Next::Continue,
            },
            Step::Pipeline(shards) => match self.pipeline(frame, &shards).await {
                Some(end) => Next::Stop(Some(end)),
                None => Next::Continue,
            },
            Step::FanOut(facts, shards) => match self.fan_out(&frame, &facts, &shards).await {
                Some(end) => Next::Stop(Some(end)),
                None => Next::Continue,
            },
            Step::Switch(want, shard) => match self.switch_shard(want, shard).await {
                Ok(()) => Next::Send(frame, want, shard),
                Err(e) => {
                    // The transaction cannot continue: fail it like Postgres would.
                    e.encode(&mut self.to_client);
                    self.txn.fail();
                    self.end_refused(tag);
                    Next::Continue
                }
            },
            Step::Commit | Step::CommitBatch => self.commit_across_shards(frame).await,
            Step::Go(want, shard) => Next::Send(frame, want, shard),
        }
    }

    /// Ends the answer to a refused message whose error is already in `to_client`: a simple Query
    /// gets its ReadyForQuery; in the extended protocol the rest of the batch is skipped up to
    /// its Sync, which gets it.
    fn end_refused(&mut self, tag: u8) {
        if !self.skip.refused(tag) {
            self.ready_for_client(self.txn.status());
        }
    }

    /// Keeps the start of an extended-protocol batch until its Sync arrives, within a bound
    /// on what the batch may take; Some when the bound ends the session.
    fn wait_for_batch(&mut self, frame: Frame, max: usize) -> Option<End> {
        self.routing.pending.push_front(frame);
        // The batch waits for its Sync; what it may take is bounded.
        let held: usize = self.routing.pending.iter().map(|f| f.bytes.len()).sum();
        let cap = max.max(1 << 20);
        if held + self.from_client.len() > cap {
            let e = PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("an extended-protocol batch for several shards exceeds {cap} bytes before its Sync"),
            );
            return Some(self.fatal(e));
        }
        None
    }

    /// COMMIT of a transaction across shards, as a simple Query or an extended-protocol batch
    /// starting with `frame`: commits every participant and answers the client.
    async fn commit_across_shards(&mut self, frame: Frame) -> Next {
        let batch = matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H');
        let result = match self.commit_all().await {
            Ok(tag) => Ok(tag),
            Err(twophase::CommitError::Client(e)) => Err(e),
            Err(twophase::CommitError::Crash) => return Next::Stop(Some(End::Fatal)),
        };
        self.txn = Txn::Idle;
        self.routing.released();
        if batch {
            self.answer_batch(frame, result);
        } else {
            match result {
                Ok(tag) => protocol::command_complete(&mut self.to_client, tag),
                Err(e) => e.encode(&mut self.to_client),
            }
            self.ready_for_client(TxStatus::Idle);
        }
        Next::Continue
    }

    /// Sends a client message to the server connection, first checking one out for `want`
    /// on `shard` if the client holds none; Some when the session ends.
    async fn send_to_server(&mut self, frame: Frame, want: Want, shard: ShardId) -> Option<End> {
        let tag = frame.tag;
        if self.server.is_none() {
            if let Err(e) = self.checkout(want, shard).await {
                e.encode(&mut self.to_client);
                if !self.skip.refused(tag) {
                    self.ready_for_client(self.txn.status());
                }
                return None;
            }
        }
        self.routing.retry.record(&frame);
        let before = self.to_client.len();
        if let Some(end) = self.route(frame) {
            return Some(end);
        }

        if self.to_client.len() > before {
            self.routing.retry.answered();
        }
        None
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

    /// Testing only: the `panic` failpoint makes a Query containing `shardgate_failpoint_panic`
    /// panic the session, wherever it is (e.g. holding a connection in a transaction).
    fn failpoint(&self, frame: &Frame) {
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

    /// Refuses a transaction block in statement mode (the client stays outside a transaction).
    pub(super) fn refuse_transaction(&mut self) {
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "transaction blocks are not allowed in statement pooling mode",
        )
        .with_hint("use a database in transaction or session pool mode")
        .encode(&mut self.to_client);
        self.ready_for_client(TxStatus::Idle);
    }
}
