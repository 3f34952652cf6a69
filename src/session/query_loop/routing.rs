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

use super::Loop;
use crate::pool::Checkout;
use crate::protocol::{
    self, param_oids, parse_body, query_text, sqlstate, Frame, PgError, TxStatus,
};
use crate::session::machine::plan::{self, CrossShard, Decision, Form, Held, Standing, Statement};
use crate::session::machine::txn::{Begin, Txn};
use crate::shard::route::{Params, Route};
use crate::shard::ShardId;
use crate::sql::hints::RouteFacts;
use crate::sql::Kind;
use crate::state::Prepared;

mod batch;
mod checkout;
mod proxy_command;
mod retry;

pub(super) use crate::session::machine::retry::ReadHold;
use crate::session::machine::retry::ReadRetry;

pub(super) use crate::session::machine::plan::Want;

/// What to do with a client message at a routing point.
pub(super) enum Step {
    /// The proxy answered it.
    Handled,
    /// Keep it until the current server connection is released.
    Hold,
    /// Send it, checking out a server of this shard for this want if none is held.
    Go(Want, ShardId),
    /// Run it on these shards and merge (simple Query).
    FanOut(RouteFacts, Vec<ShardId>),
    /// Run the extended-protocol batch it starts on these shards and merge.
    FanOutBatch(Vec<ShardId>),
    /// Run the statements of the extended-protocol batch it starts, each on its own one of
    /// these shards.
    Pipeline(Vec<ShardId>),
    /// Wait for more of the client's batch.
    NeedInput,
    /// Answer with this error.
    Refuse(PgError),
    /// Continue the open transaction on another shard.
    Switch(Want, ShardId),
    /// COMMIT (a simple Query) of a transaction across shards.
    Commit,
    /// COMMIT as an extended-protocol batch, across shards.
    CommitBatch,
}

/// What the query loop knows of a planned message beyond its [`Statement`].
enum Known {
    /// A simple Query's routing facts.
    Query(RouteFacts),
    /// An extended-protocol batch; `begin`: the text of its lone BEGIN.
    Batch { begin: Option<String> },
}

/// Routing state of one client.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// The current server connection takes writes.
    pub on_primary: bool,
    /// Frames to handle before those in `from_client`: held back, or replayed after a failure.
    pub pending: VecDeque<Frame>,
    /// The transparent retry of a read.
    pub retry: ReadRetry,
    /// A statement that may write was sent since checkout.
    pub wrote: bool,
    /// `SET shardgate.target`: None = auto.
    pub target: Option<Want>,
    /// Read-your-writes: per shard, the WAL position a replica must have replayed (each
    /// shard's positions are its own: never compared across shards).
    floors: ReadFloors,
    /// Read-your-writes: reads go to the primary until this `now_ms()`.
    primary_until: u64,
    /// Facts of the last unnamed statement Parsed (for a later Bind without a Parse).
    /// Boxed: most idle clients have none, and it is the biggest part of their routing state.
    unnamed: Option<Box<RouteFacts>>,
    /// Shard of the current server connection.
    pub shard: ShardId,
    /// `SET shardgate.shard`.
    pub session_shard: Option<ShardId>,
    /// Connections of the open transaction on shards other than the current one.
    pub parked: Vec<(ShardId, Checkout)>,
    /// Transaction control across shards (savepoints, a refused transaction).
    pub guard: super::twophase::TxnGuard,
}

/// Read-your-writes per shard (see [`Routing::floors`]): 0 none, [`ReadFloors::UNKNOWN`]:
/// the client wrote there through a path that learnt no WAL position (a statement on several
/// shards, a transaction across shards), so its reads there go to the primary until a later
/// write on that shard tells a position (which covers the earlier write).
#[derive(Debug, Default)]
pub(super) struct ReadFloors(Vec<u64>);

impl ReadFloors {
    const UNKNOWN: u64 = u64::MAX;

    /// The position reads on `shard` need (0: none).
    pub fn get(&self, shard: ShardId) -> u64 {
        self.0.get(shard.index()).copied().unwrap_or(0)
    }

    fn slot(&mut self, shard: ShardId) -> &mut u64 {
        let i = shard.index();
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        &mut self.0[i]
    }

    /// The primary of `shard` was at `lsn` after the client's write.
    pub fn raise(&mut self, shard: ShardId, lsn: u64) {
        let f = self.slot(shard);
        *f = if *f == Self::UNKNOWN {
            lsn
        } else {
            (*f).max(lsn)
        };
    }

    /// The client wrote on `shard` and no position is known.
    pub fn unknown(&mut self, shard: ShardId) {
        *self.slot(shard) = Self::UNKNOWN;
    }
}

impl Routing {
    /// Forgets what belonged to the released server connection.
    pub fn released(&mut self) {
        self.retry.released();
        self.wrote = false;
        self.guard.pinned = false;
        self.guard.sets.clear();
        self.guard.abort_at_ready = false;
    }
}

impl Loop<'_> {
    /// Routing facts of a query text, through the shape cache.
    pub(super) fn facts_of(&self, sql: &str) -> RouteFacts {
        let queries = Some(&*self.state.queries).filter(|q| q.enabled());
        let (analysis, literals, shape) = self.state.analysis.analyze_noting(sql, queries);
        let mut f = RouteFacts::from_parts(analysis, literals, sql);
        f.shape = shape;
        f
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
    pub(super) fn want(&self, f: &RouteFacts) -> Want {
        Want::of(f.hints.target.or(self.routing.target), f.reads())
    }

    /// The shard route of a statement: hints, `SET shardgate.shard`, then the router.
    /// `Route::Any` for databases without sharding.
    pub(super) fn shard_route(
        &self,
        f: &RouteFacts,
        params: Option<&Params<'_>>,
    ) -> Result<Route, PgError> {
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
        if let Some(s) = self.routing.session_shard {
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
    /// statements to shards): gathers where the client stands and what the message needs,
    /// lets [`plan::decide`] decide, and carries out what the decision changes here.
    pub(super) fn plan(&mut self, frame: &Frame) -> Step {
        if !self.login.split && self.login.shard_map.is_none() {
            return Step::Go(Want::Primary, ShardId::new(0));
        }
        let Some((stmt, known)) = self.statement_of(frame) else {
            return Step::Go(Want::Primary, self.routing.shard);
        };
        let at = self.standing();
        let plan = plan::decide(&at, stmt);
        self.routing.wrote |= plan.wrote;
        if self.server.is_none() {
            self.txn
                .set_outside(matches!(plan.decision, Decision::GoOutsideTransaction(..)));
        }
        match plan.decision {
            Decision::Go(want, shard) | Decision::GoOutsideTransaction(want, shard) => {
                Step::Go(want, shard)
            }
            Decision::Hold => Step::Hold,
            Decision::NeedInput => Step::NeedInput,
            Decision::FanOut(shards) => match known {
                Known::Query(f) => Step::FanOut(f, shards),
                Known::Batch { .. } => Step::FanOutBatch(shards),
            },
            Decision::Pipeline(shards) => Step::Pipeline(shards),
            Decision::Switch(want, shard) => Step::Switch(want, shard),
            Decision::Commit if frame.tag == b'Q' => Step::Commit,
            Decision::Commit => Step::CommitBatch,
            Decision::DeferBegin { read_only } => {
                let text = match known {
                    Known::Batch { begin: Some(text) } => text,
                    _ => query_text(frame.body()).to_string(),
                };
                self.defer_begin(frame, text, read_only)
            }
            Decision::EndEmpty(tag) => {
                protocol::command_complete(&mut self.to_client, tag);
                self.txn = Txn::Idle;
                self.ready_for_client(TxStatus::Idle);
                Step::Handled
            }
            Decision::RefuseAborted => Step::Refuse(super::twophase::aborted_transaction()),
            Decision::RefuseCrossShard(why) => Step::Refuse(self.cross_shard_transaction(why)),
            Decision::Refuse(e) => Step::Refuse(e),
        }
    }

    /// Where the client stands, for [`plan::decide`].
    fn standing(&self) -> Standing {
        let held = self.server.as_ref().map(|_| Held {
            shard: self.routing.shard,
            on_primary: self.routing.on_primary,
            owes: !self.relay.idle(),
            unsynced: self.unsynced,
        });
        let map = self.login.shard_map.as_ref();
        Standing {
            status: self.txn.status(),
            deferred_begin: self.txn.held_begin().map(|b| b.read_only),
            held,
            parked: self.routing.parked.first().map(|p| p.0),
            two_phase: map.is_some_and(|m| m.two_phase_commit),
            target: self.routing.target,
            sharded: map.is_some(),
            shards: self.login.shards.len(),
        }
    }

    /// What a client message at a routing point needs, for [`plan::decide`] (and the routing
    /// facts of a simple Query): a simple Query by its routing facts, the first message of an
    /// extended-protocol batch by looking ahead up to its Sync. None for a message in the
    /// middle of a batch (it goes where the batch went).
    fn statement_of(&mut self, frame: &Frame) -> Option<(Statement, Known)> {
        if frame.tag == b'Q' {
            let f = self.facts_of(query_text(frame.body()));
            self.meter.query_shape = Some(f.shape.clone());
            let single = (f.statements == 1).then_some(f.kind);
            let stmt = Statement {
                want: self.want(&f),
                writes: f.writes(),
                route: self.shard_route(&f, None),
                only_commit: single == Some(Kind::Commit),
                form: Form::Simple {
                    single,
                    hint: f.hints.target,
                },
            };
            return Some((stmt, Known::Query(f)));
        }
        let extended_start =
            !self.unsynced && matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F');
        if !extended_start {
            return None;
        }
        let b = self.batch_want(frame);
        let (begin, only_begin) = b.only_begin.unzip();
        let stmt = Statement {
            want: b.want,
            writes: b.writes,
            route: b.route,
            only_commit: b.only_commit,
            form: Form::Batch {
                complete: b.complete,
                flush: b.flush,
                only_begin,
                prepare_only: b.complete && !b.executes,
                split: b.split,
            },
        };
        Some((stmt, Known::Batch { begin }))
    }

    /// Answers a BEGIN without a server (simple Query, or a batch up to its Sync): the
    /// transaction's first statement decides where it runs.
    fn defer_begin(&mut self, frame: &Frame, text: String, read_only: bool) -> Step {
        self.txn = Txn::deferred(Begin { text, read_only });
        if frame.tag == b'Q' {
            protocol::command_complete(&mut self.to_client, "BEGIN");
            self.ready_for_client(TxStatus::InTransaction);
        } else {
            self.answer_batch(frame.clone(), Ok("BEGIN"));
        }
        Step::Handled
    }

    fn cross_shard_transaction(&self, why: CrossShard) -> PgError {
        let name = self
            .login
            .shard_map
            .as_ref()
            .and_then(|m| m.names.get(self.routing.shard.index()).cloned())
            .unwrap_or_default();
        plan::cross_shard(why, &name)
    }
}
