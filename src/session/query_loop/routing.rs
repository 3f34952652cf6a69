//! Read/write splitting in the query loop: which server a statement (or an extended-protocol
//! batch up to its Sync) needs, choosing and checking out that server, deferred `BEGIN`,
//! read-your-writes, proxy settings (`SET shardgate.target`) and the transparent retry of a
//! read whose server failed before any byte reached the client.
//!
//! Decisions are made only at routing points: a simple Query, or the first message of an
//! extended-protocol batch. Inside a transaction everything sticks to the server the
//! transaction started on. When the next statement needs the primary while the client still
//! holds a replica connection with responses outstanding, the statement is held back until
//! the replica connection is released, so pipelined statements keep their order.
//!
//! This file plans each message; the look-ahead through an extended-protocol batch is in
//! `batch`, checkout and read-your-writes in `checkout`, `SET/SHOW shardgate.*` in
//! `proxy_command`, and the retry of a failed read in `retry`.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use super::Loop;
use crate::pool::Checkout;
use crate::protocol::{
    self, param_oids, parse_body, query_text, sqlstate, Frame, PgError, TxStatus,
};
use crate::shard::route::{Params, Route};
use crate::sql::hints::{RouteFacts, Target};
use crate::sql::Kind;
use crate::state::Prepared;

mod batch;
mod checkout;
mod proxy_command;
mod retry;

pub(super) use retry::ReadHold;

/// Most frames a read keeps for a retry; a larger request is not retried.
const MAX_REPLAY_BYTES: usize = 1024 * 1024;

/// The server a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// The primary.
    Primary,
    /// A read: a replica that satisfies read-your-writes, else the primary.
    Read,
    /// A replica because a hint or `SET shardgate.target` says so (no read-your-writes).
    Replica,
}

impl Want {
    /// The want of a batch holding statements that want `self` and `other`.
    fn and(self, other: Want) -> Want {
        match (self, other) {
            (Want::Primary, _) | (_, Want::Primary) => Want::Primary,
            (Want::Replica, _) | (_, Want::Replica) => Want::Replica,
            _ => Want::Read,
        }
    }
}

/// What to do with a client message at a routing point.
pub(super) enum Step {
    /// The proxy answered it.
    Handled,
    /// Keep it until the current server connection is released.
    Hold,
    /// Send it, checking out a server of this shard for this want if none is held.
    Go(Want, usize),
    /// Run it on these shards and merge (simple Query).
    FanOut(RouteFacts, Vec<usize>),
    /// Run the extended-protocol batch it starts on these shards and merge.
    FanOutBatch(Vec<usize>),
    /// Wait for more of the client's batch.
    NeedInput,
    /// Answer with this error.
    Refuse(PgError),
    /// Continue the open transaction on another shard.
    Switch(Want, usize),
    /// COMMIT (a simple Query) of a transaction across shards.
    Commit,
    /// COMMIT as an extended-protocol batch, across shards.
    CommitBatch,
}

/// What a client message at a routing point needs (see `Loop::needs_of`).
struct Needs {
    want: Want,
    writes: bool,
    /// Routing facts of a simple Query (None for an extended-protocol batch).
    facts: Option<RouteFacts>,
    /// It only commits.
    only_commit: bool,
    /// A batch that only begins a transaction: its text, and whether it is READ ONLY.
    only_begin: Option<(String, bool)>,
    /// A complete batch that executes nothing (Parse, Describe).
    prepare_only: bool,
}

/// Where the client stands when a statement is planned (see `Loop::plan`).
#[derive(Clone, Copy)]
struct Standing {
    /// In a transaction, or a BEGIN the proxy answered waits for its first statement.
    in_transaction: bool,
    /// Transactions may span shards (`two_phase_commit`).
    two_phase: bool,
    /// The current server connection owes answers or awaits a Sync.
    busy: bool,
}

/// Routing state of one client.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// The current server connection takes writes.
    pub on_primary: bool,
    /// `BEGIN` answered by the proxy and not yet sent: its text and whether it is READ ONLY.
    pub pending_begin: Option<(String, bool)>,
    /// The `BEGIN` sent ahead of the current checkout's first statement.
    injected_begin: Option<(String, bool)>,
    /// Frames to handle before those in `cin`: held back, or replayed after a failure.
    pub pending: VecDeque<Frame>,
    /// Frames sent since a read's checkout, for a retry on another server.
    replay: Vec<Frame>,
    replay_bytes: usize,
    /// The frames since checkout may be replayed: a read, and nothing reached the client.
    pub retryable: bool,
    /// Servers that failed the current request.
    avoid: Vec<String>,
    retries: u32,
    /// A statement that may write was sent since checkout.
    pub wrote: bool,
    /// `SET shardgate.target`: None = auto.
    pub target: Option<Target>,
    /// Read-your-writes: WAL position after the client's last write.
    min_lsn: u64,
    /// Read-your-writes: reads go to the primary until this `now_ms()`.
    primary_until: u64,
    /// Facts of the last unnamed statement Parsed (for a later Bind without a Parse).
    unnamed: Option<RouteFacts>,
    /// Shard of the current server connection.
    pub shard: usize,
    /// `SET shardgate.shard`.
    pub session_shard: Option<usize>,
    /// Connections of the open transaction on shards other than the current one.
    pub parked: Vec<(usize, Checkout)>,
    /// The BEGIN of the open transaction (sent to each further shard it reaches).
    pub txn_begin: Option<String>,
    /// The current server connection serves a batch that executes nothing (Parse,
    /// Describe) while the client's BEGIN waits for its first statement: it stays outside
    /// the transaction and is released after the batch.
    pub outside_txn: bool,
    /// Transaction control across shards (savepoints, a refused transaction).
    pub guard: super::twophase::TxnGuard,
}

impl Routing {
    /// Forgets what belonged to the released server connection.
    pub fn released(&mut self) {
        self.injected_begin = None;
        self.txn_begin = None;
        self.replay.clear();
        self.replay_bytes = 0;
        self.retryable = false;
        self.avoid.clear();
        self.retries = 0;
        self.wrote = false;
        self.outside_txn = false;
        self.guard.pinned = false;
        self.guard.sets.clear();
        self.guard.abort_at_ready = false;
    }

    /// Records a frame about to be sent, for a possible retry.
    pub fn record(&mut self, frame: &Frame) {
        if !self.retryable {
            return;
        }
        let replayable = match frame.tag {
            b'Q' | b'B' | b'E' | b'D' | b'S' | b'H' => true,
            // A named Parse or Close changes the client's statement map.
            b'P' => parse_body(frame.body()).is_some_and(|p| p.name.is_empty()),
            _ => false,
        };
        self.replay_bytes += frame.bytes.len();
        if !replayable || self.replay_bytes > MAX_REPLAY_BYTES {
            self.retryable = false;
            self.replay.clear();
            return;
        }
        self.replay.push(frame.clone());
    }
}

impl Loop<'_> {
    /// Routing facts of a query text, through the shape cache.
    pub(super) fn facts_of(&self, sql: &str) -> RouteFacts {
        let (analysis, literals) = self.state.analysis.analyze(sql);
        RouteFacts::from_parts(analysis, literals, sql)
    }

    /// Routing facts of a pooled statement, found once.
    fn stmt_facts<'p>(&self, stmt: &'p Prepared) -> &'p RouteFacts {
        stmt.route.get_or_init(|| {
            let mut f = self.facts_of(stmt.query());
            if let Some(p) = parse_body(&stmt.parse[5..]) {
                f.param_types = param_oids(p.rest);
            }
            f
        })
    }

    /// The server a statement with these facts needs.
    fn want(&self, f: &RouteFacts) -> Want {
        match f.hints.target.or(self.rt.target) {
            Some(Target::Primary) => Want::Primary,
            Some(Target::Replica) => Want::Replica,
            None if f.reads() => Want::Read,
            None => Want::Primary,
        }
    }

    /// The shard route of a statement: hints, `SET shardgate.shard`, then the router.
    /// `Route::Any` for databases without sharding.
    fn shard_route(&self, f: &RouteFacts, params: Option<&Params<'_>>) -> Result<Route, PgError> {
        let Some(map) = &self.login.shard_map else {
            return Ok(Route::Any);
        };
        if let Some(name) = &f.hints.shard {
            return map.shard_named(name).map(Route::One).ok_or_else(|| {
                PgError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("unknown shard \"{name}\" in hint"),
                )
                .with_hint(format!("shards: {}", map.names.join(", ")))
            });
        }
        if let Some(key) = &f.hints.key {
            let ty = f
                .analysis
                .tables
                .iter()
                .find_map(|t| map.sharded(t).map(|(_, ty)| *ty))
                .unwrap_or(crate::config::KeyType::Bigint);
            return map
                .shard_of_text(ty, key.as_bytes())
                .map(Route::One)
                .map_err(|e| PgError::error(e.sqlstate(), e.to_string()));
        }
        if let Some(s) = self.rt.session_shard {
            return Ok(Route::One(s));
        }
        match &f.analysis.shard {
            Some(facts) => map.route(facts, &f.analysis.tables, &f.literals, params),
            None if f.statements > 1
                && f.analysis.tables.iter().any(|t| map.sharded(t).is_some()) =>
            {
                Err(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "several statements in one query on a sharded database",
                )
                .with_hint("send one statement per query so each can be routed by its key"))
            }
            // Maintenance and schema statements sqlparser cannot parse (VACUUM, CLUSTER,
            // REINDEX, ...) still belong on every shard.
            None if f.maintenance => Ok(Route::All),
            None => Ok(Route::Any),
        }
    }

    /// Decides what to do with a client message at a routing point (reads to replicas,
    /// statements to shards).
    pub(super) fn plan(&mut self, frame: &Frame) -> Step {
        if !self.login.split && self.login.shard_map.is_none() {
            return Step::Go(Want::Primary, 0);
        }
        let (needs, route) = match self.needs_of(frame) {
            ControlFlow::Continue(needs) => needs,
            ControlFlow::Break(step) => return step,
        };
        let multi_shard = !self.rt.parked.is_empty();
        if multi_shard && needs.only_commit {
            // Never let a COMMIT reach just one participant: wait until the current
            // connection has answered everything, then commit them all.
            if self.server.is_some() && !self.relay.idle() {
                return Step::Hold;
            }
            return if frame.tag == b'Q' {
                Step::Commit
            } else {
                Step::CommitBatch
            };
        }
        let route = match route {
            Ok(r) => r,
            Err(e) => return Step::Refuse(e),
        };
        let standing = Standing {
            in_transaction: self.status != TxStatus::Idle || self.rt.pending_begin.is_some(),
            two_phase: self
                .login
                .shard_map
                .as_ref()
                .is_some_and(|m| m.two_phase_commit),
            busy: self.server.is_some() && (!self.relay.idle() || self.unsynced),
        };
        let shard = match route {
            Route::Any => None,
            Route::One(s) => Some(s),
            Route::Many(shards) => return self.plan_fan_out(shards, needs.facts, standing),
            Route::All => {
                let n = self.login.shards.len();
                return self.plan_fan_out((0..n).collect(), needs.facts, standing);
            }
        };
        self.rt.wrote |= needs.writes;
        if self.server.is_some() {
            return self.plan_on_current_server(needs.want, shard, standing);
        }
        let shard = shard.or(self.rt.parked.first().map(|p| p.0));
        let shard = shard.unwrap_or(0);
        self.plan_checkout(frame, shard, needs)
    }

    /// What a client message at a routing point needs, and its shard route: a simple Query
    /// by its routing facts, the first message of an extended-protocol batch by looking ahead
    /// up to its Sync. `Break`: the step to take right away (wait for more of the batch,
    /// refuse a Flush, or send a message in the middle of a batch where the batch went).
    fn needs_of(&mut self, frame: &Frame) -> ControlFlow<Step, (Needs, Result<Route, PgError>)> {
        let extended_start =
            !self.unsynced && matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F');
        if frame.tag == b'Q' {
            let f = self.facts_of(query_text(frame.body()));
            let route = self.shard_route(&f, None);
            let commit = f.kind == Kind::Commit && f.statements == 1;
            let needs = Needs {
                want: self.want(&f),
                writes: f.writes(),
                facts: Some(f),
                only_commit: commit,
                only_begin: None,
                prepare_only: false,
            };
            return ControlFlow::Continue((needs, route));
        }
        if !extended_start {
            return ControlFlow::Break(Step::Go(Want::Primary, self.rt.shard));
        }
        let b = self.batch_want(frame);
        if matches!(b.route, Ok(Route::Many(_) | Route::All)) && !b.complete {
            // Several shards: the whole batch is needed before anything is sent.
            if b.flush {
                return ControlFlow::Break(Step::Refuse(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a statement for several shards must be followed by Sync, not Flush",
                )));
            }
            return ControlFlow::Break(Step::NeedInput);
        }
        if self.login.shard_map.is_some() && !b.complete && !b.flush {
            // Sharded: a batch is routed by its Binds, which may not have arrived yet
            // (a long Parse and its Bind in separate reads). Routing the part that has
            // would send the rest to that shard too: wait for the Sync.
            return ControlFlow::Break(Step::NeedInput);
        }
        let needs = Needs {
            want: b.want,
            writes: b.writes,
            facts: None,
            only_commit: b.only_commit,
            only_begin: b.only_begin,
            prepare_only: b.complete && !b.executes,
        };
        ControlFlow::Continue((needs, b.route))
    }

    /// A statement (or batch) for several shards: fanned out to `shards` when the client
    /// holds no server connection outside a transaction (or the transaction spans shards
    /// with two-phase commit), else held or refused.
    fn plan_fan_out(
        &self,
        shards: Vec<usize>,
        facts: Option<RouteFacts>,
        standing: Standing,
    ) -> Step {
        if standing.in_transaction && !standing.two_phase {
            return Step::Refuse(
                self.cross_shard_transaction("this statement needs several shards"),
            );
        }
        if standing.busy {
            return Step::Hold;
        }
        if self.server.is_some() && !standing.in_transaction {
            return self.hold_or_refuse();
        }
        match facts {
            None => Step::FanOutBatch(shards),
            Some(f) => Step::FanOut(f, shards),
        }
    }

    /// A statement for one shard (or any) while the client holds a server connection: it
    /// goes there, or the open transaction switches to its shard, or it waits or is refused.
    fn plan_on_current_server(&self, want: Want, shard: Option<usize>, standing: Standing) -> Step {
        if let Some(s) = shard.filter(|s| *s != self.rt.shard) {
            if !standing.in_transaction {
                return self.hold_or_refuse();
            }
            if !standing.two_phase {
                return Step::Refuse(
                    self.cross_shard_transaction("this statement belongs to another shard"),
                );
            }
            if standing.busy {
                return if self.unsynced {
                    Step::Refuse(self.cross_shard_transaction(
                        "an extended-protocol batch cannot change shards before its Sync",
                    ))
                } else {
                    Step::Hold
                };
            }
            return Step::Switch(want, s);
        }
        // Inside a transaction (or a batch) everything stays where it is. Outside one, a
        // statement for the primary waits until a replica connection is released.
        let busy = !self.relay.idle();
        if !standing.in_transaction && want == Want::Primary && !self.rt.on_primary && busy {
            return Step::Hold;
        }
        Step::Go(want, self.rt.shard)
    }

    /// A statement for `shard` while the client holds no server connection: checked out for,
    /// unless it is a BEGIN (deferred: answered here) or ends a transaction nothing ran in.
    fn plan_checkout(&mut self, frame: &Frame, shard: usize, needs: Needs) -> Step {
        let want = needs.want;
        let facts = needs.facts.as_ref();
        let single = |k: Kind| facts.is_some_and(|f| f.statements == 1 && f.kind == k);
        if needs.prepare_only
            && self.rt.pending_begin.is_some()
            && self.status == TxStatus::InTransaction
        {
            self.rt.outside_txn = true;
            return Step::Go(want, shard);
        }
        self.rt.outside_txn = false;
        if self.status == TxStatus::Failed
            && !self.rt.parked.is_empty()
            && !(single(Kind::Commit) || single(Kind::Rollback))
        {
            // The transaction failed (a statement on several shards): its connections may not
            // know, so nothing more runs in it until its end, as in Postgres.
            return Step::Refuse(super::twophase::aborted_transaction());
        }
        if let Some(read_only) = self.rt.pending_begin.as_ref().map(|b| b.1) {
            return self.plan_after_deferred_begin(facts, read_only, shard);
        }
        if let Some(begin) = needs.only_begin.filter(|_| self.status == TxStatus::Idle) {
            // An extended-protocol BEGIN is deferred too: answered here, up to its Sync.
            self.rt.pending_begin = Some(begin);
            self.status = TxStatus::InTransaction;
            self.answer_batch(frame.clone(), Ok("BEGIN"));
            return Step::Handled;
        }
        if let Some(f) = facts {
            if let (Kind::Begin { read_only }, 1) = (f.kind, f.statements) {
                // Defer BEGIN: the transaction's first statement (or a SET TRANSACTION READ
                // ONLY) decides where it runs.
                self.rt.pending_begin = Some((query_text(frame.body()).to_string(), read_only));
                protocol::command_complete(&mut self.cout, "BEGIN");
                self.status = TxStatus::InTransaction;
                protocol::ready_for_query(&mut self.cout, TxStatus::InTransaction);
                return Step::Handled;
            }
        }
        Step::Go(want, shard)
    }

    /// The first statement after a BEGIN the proxy answered and has not sent (`read_only`:
    /// the BEGIN said READ ONLY): a lone COMMIT or ROLLBACK is answered here; anything else
    /// decides which server of `shard` the transaction runs on.
    fn plan_after_deferred_begin(
        &mut self,
        facts: Option<&RouteFacts>,
        read_only: bool,
        shard: usize,
    ) -> Step {
        let single = |k: Kind| facts.is_some_and(|f| f.statements == 1 && f.kind == k);
        if single(Kind::Commit) || single(Kind::Rollback) {
            // Nothing ran in the transaction: answer without a server.
            let tag = if single(Kind::Commit) {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            self.rt.pending_begin = None;
            protocol::command_complete(&mut self.cout, tag);
            self.status = TxStatus::Idle;
            protocol::ready_for_query(&mut self.cout, TxStatus::Idle);
            return Step::Handled;
        }
        let read_only = read_only || facts.is_some_and(|f| f.kind == Kind::SetTransactionReadOnly);
        let hinted = facts.and_then(|f| f.hints.target).or(self.rt.target);
        Step::Go(
            match hinted {
                Some(Target::Primary) => Want::Primary,
                Some(Target::Replica) => Want::Replica,
                None if read_only => Want::Read,
                None => Want::Primary,
            },
            shard,
        )
    }

    /// Outside a transaction, waits for the current server connection to be released; a
    /// client that cannot release it (pinned, or mid-batch) gets an error.
    fn hold_or_refuse(&self) -> Step {
        if !self.relay.idle() {
            return Step::Hold;
        }
        Step::Refuse(self.cross_shard_transaction("this statement belongs to another shard"))
    }

    fn cross_shard_transaction(&self, what: &str) -> PgError {
        let name = self
            .login
            .shard_map
            .as_ref()
            .and_then(|m| m.names.get(self.rt.shard).cloned())
            .unwrap_or_default();
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what}, but the transaction (or pinned session) runs on shard {name}"),
        )
        .with_hint(
            "keep each transaction on one shard key; transactions across shards \
             (two_phase_commit) are not supported yet",
        )
    }
}
