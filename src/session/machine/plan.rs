//! The routing decision at a routing point (a simple Query, or the first message of an
//! extended-protocol batch), without I/O: given where the client stands (its transaction,
//! the server connection it holds, the shards its transaction reached) and what the
//! statement needs (a server, a shard route), say whether it goes to a server, waits, fans
//! out, switches the transaction to another shard, commits across shards, is answered by
//! the proxy (a deferred BEGIN, the end of a transaction nothing ran in) or is refused.
//!
//! The query loop gathers the inputs ([`Standing`], [`Statement`]) and carries the
//! [`Decision`] out; every rule is here, once, and unit-tested in `plan_tests.rs`.

use crate::protocol::{sqlstate, PgError, TxStatus};
use crate::shard::route::Route;
use crate::sql::Kind;

pub use crate::shard::ShardId;

pub use crate::sql::hints::Want;

impl Want {
    /// The server for a statement: the hint's or session's target, else a replica for a
    /// read and the primary for anything else.
    pub fn of(target: Option<Want>, reads: bool) -> Want {
        match target {
            Some(t) => t,
            None if reads => Want::Read,
            None => Want::Primary,
        }
    }

    /// The want of a batch holding statements that want `self` and `other`.
    pub fn and(self, other: Want) -> Want {
        match (self, other) {
            (Want::Primary, _) | (_, Want::Primary) => Want::Primary,
            (Want::Replica, _) | (_, Want::Replica) => Want::Replica,
            _ => Want::Read,
        }
    }
}

/// The server connection a client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its shard.
    pub shard: ShardId,
    /// It is the primary of that shard.
    pub on_primary: bool,
    /// It owes the client answers.
    pub owes: bool,
    /// Extended-protocol messages sent to it await their Sync.
    pub unsynced: bool,
}

impl Held {
    fn busy(&self) -> bool {
        self.owes || self.unsynced
    }
}

/// Where the client stands when a statement is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The transaction status last reported to the client.
    pub status: TxStatus,
    /// A BEGIN the proxy answered waits for its first statement: whether it was READ ONLY.
    pub deferred_begin: Option<bool>,
    /// The server connection the client holds.
    pub held: Option<Held>,
    /// The first shard other than the held one the open transaction reached (its
    /// connection is parked there).
    pub parked: Option<ShardId>,
    /// Transactions may span shards (`two_phase_commit`).
    pub two_phase: bool,
    /// `SET shardgate.target`.
    pub target: Option<Want>,
    /// The database is sharded (statements are routed by shard key).
    pub sharded: bool,
    /// Shards of the database (1 without sharding).
    pub shards: usize,
}

impl Standing {
    fn in_transaction(&self) -> bool {
        self.status != TxStatus::Idle || self.deferred_begin.is_some()
    }

    fn busy(&self) -> bool {
        self.held.is_some_and(|h| h.busy())
    }
}

/// How the statement arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A simple Query: `single` is its kind when it holds one statement; `hint` the target
    /// its hint names.
    Simple {
        /// The kind of its only statement (None for several statements).
        single: Option<Kind>,
        /// The target a hint in the text names.
        hint: Option<Want>,
    },
    /// An extended-protocol batch, as far as it has arrived.
    Batch {
        /// Its Sync has arrived.
        complete: bool,
        /// It holds a Flush.
        flush: bool,
        /// It only begins a transaction: whether that BEGIN is READ ONLY.
        only_begin: Option<bool>,
        /// Complete and it executes nothing (Parse, Describe, Close).
        prepare_only: bool,
        /// Its statements route to different shards, each to one (its route is
        /// `Route::Many` of those shards): a pipeline across shards.
        split: bool,
    },
}

/// What a statement (or a batch up to its Sync) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The server it needs.
    pub want: Want,
    /// It may write.
    pub writes: bool,
    /// Its shard route (`Route::Any` without sharding).
    pub route: Result<Route, PgError>,
    /// It only commits.
    pub only_commit: bool,
    /// How it arrived.
    pub form: Form,
}

/// Why a statement is refused for the shard its transaction runs on (see [`cross_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossShard {
    /// It needs several shards.
    NeedsSeveral,
    /// It belongs to another shard.
    OtherShard,
    /// An extended-protocol batch would change shards before its Sync.
    MidBatch,
}

/// What to do with the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it, checking out a server of this shard for this want if none is held.
    Go(Want, ShardId),
    /// Send it on a connection checked out outside the deferred transaction (a batch that
    /// executes nothing while the client's BEGIN waits): released after the batch.
    GoOutsideTransaction(Want, ShardId),
    /// Keep it until the current server connection has answered (or is released).
    Hold,
    /// Wait for more of the client's batch.
    NeedInput,
    /// Run it on these shards and merge.
    FanOut(Vec<ShardId>),
    /// Run the batch's statements in order, each on its own one of these shards, with one
    /// Sync for the client (a pipeline across shards).
    Pipeline(Vec<ShardId>),
    /// Continue the open transaction on another shard.
    Switch(Want, ShardId),
    /// COMMIT of a transaction across shards.
    Commit,
    /// Answer BEGIN without a server and wait for the transaction's first statement;
    /// `read_only`: it was READ ONLY.
    DeferBegin {
        /// The BEGIN was READ ONLY.
        read_only: bool,
    },
    /// The transaction nothing ran in ends: answer this tag (COMMIT or ROLLBACK) and go idle.
    EndEmpty(&'static str),
    /// The transaction failed across shards: nothing more runs in it (25P02).
    RefuseAborted,
    /// The statement cannot run where the transaction runs (0A000).
    RefuseCrossShard(CrossShard),
    /// Answer with this error.
    Refuse(PgError),
}

/// The outcome of [`decide`]: the decision, and whether the statement counts as a write of
/// the client's current server connection (read-your-writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub decision: Decision,
    /// The statement may write and runs on one shard.
    pub wrote: bool,
}

/// Decides what to do with `stmt` for a client standing at `at`.
pub fn decide(at: &Standing, stmt: Statement) -> Plan {
    let decision = |decision| Plan {
        decision,
        wrote: false,
    };
    if let Form::Batch {
        complete: false,
        flush,
        ..
    } = stmt.form
    {
        if let Ok(Route::Many(_) | Route::All) = stmt.route {
            // Several shards: the whole batch is needed before anything is sent.
            return decision(if flush {
                Decision::Refuse(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a statement for several shards must be followed by Sync, not Flush",
                ))
            } else {
                Decision::NeedInput
            });
        }
        if at.sharded && !flush {
            // Sharded: a batch is routed by its Binds, which may not have arrived yet.
            // Routing the part that has would send the rest to that shard too.
            return decision(Decision::NeedInput);
        }
    }
    if at.parked.is_some() && stmt.only_commit {
        // Never let a COMMIT reach just one participant: wait until the current
        // connection has answered everything, then commit them all.
        if at.held.is_some_and(|h| h.owes) {
            return decision(Decision::Hold);
        }
        return decision(Decision::Commit);
    }
    let shard = match stmt.route {
        Err(e) => return decision(Decision::Refuse(e)),
        Ok(Route::Any) => None,
        Ok(Route::One(s)) => Some(s),
        Ok(Route::Many(shards)) if matches!(stmt.form, Form::Batch { split: true, .. }) => {
            return decision(several(at, Decision::Pipeline(shards)))
        }
        Ok(Route::Many(shards)) => return decision(several(at, Decision::FanOut(shards))),
        Ok(Route::All) => {
            return decision(several(
                at,
                Decision::FanOut((0..at.shards).map(ShardId::new).collect()),
            ))
        }
    };
    let decision = match at.held {
        Some(held) => on_held(at, held, stmt.want, shard),
        None => checkout(at, &stmt, shard.or(at.parked).unwrap_or(ShardId::new(0))),
    };
    Plan {
        decision,
        wrote: stmt.writes,
    }
}

/// A statement (or a pipeline) for several shards: `run` (fanned out, or pipelined) when the
/// client holds no server connection outside a transaction (or the transaction spans shards
/// with two-phase commit), else held or refused.
fn several(at: &Standing, run: Decision) -> Decision {
    if at.in_transaction() && !at.two_phase {
        return Decision::RefuseCrossShard(CrossShard::NeedsSeveral);
    }
    if at.busy() {
        return Decision::Hold;
    }
    if let Some(held) = at.held.filter(|_| !at.in_transaction()) {
        return hold_or_refuse(held);
    }
    run
}

/// A statement for one shard (or any) while the client holds a server connection: it goes
/// there, or the open transaction switches to its shard, or it waits or is refused.
fn on_held(at: &Standing, held: Held, want: Want, shard: Option<ShardId>) -> Decision {
    let in_transaction = at.in_transaction();
    if let Some(s) = shard.filter(|s| *s != held.shard) {
        if !in_transaction {
            return hold_or_refuse(held);
        }
        if !at.two_phase {
            return Decision::RefuseCrossShard(CrossShard::OtherShard);
        }
        if held.unsynced {
            return Decision::RefuseCrossShard(CrossShard::MidBatch);
        }
        if held.owes {
            return Decision::Hold;
        }
        return Decision::Switch(want, s);
    }
    // Inside a transaction (or a batch) everything stays where it is. Outside one, a
    // statement for the primary waits until a replica connection is released.
    if !in_transaction && want == Want::Primary && !held.on_primary && held.owes {
        return Decision::Hold;
    }
    Decision::Go(want, held.shard)
}

/// Outside a transaction, waits for the held server connection to be released; a client
/// that cannot release it (pinned, or mid-batch) is refused.
fn hold_or_refuse(held: Held) -> Decision {
    if held.owes {
        return Decision::Hold;
    }
    Decision::RefuseCrossShard(CrossShard::OtherShard)
}

/// A statement for `shard` while the client holds no server connection: checked out for,
/// unless it is a BEGIN (deferred: answered here) or ends a transaction nothing ran in.
fn checkout(at: &Standing, stmt: &Statement, shard: ShardId) -> Decision {
    let (single, hint) = match stmt.form {
        Form::Simple { single, hint } => (single, hint),
        Form::Batch { .. } => (None, None),
    };
    let ends = matches!(single, Some(Kind::Commit | Kind::Rollback));
    if let Form::Batch {
        prepare_only: true, ..
    } = stmt.form
    {
        if at.deferred_begin.is_some() && at.status == TxStatus::InTransaction {
            return Decision::GoOutsideTransaction(stmt.want, shard);
        }
    }
    if at.status == TxStatus::Failed && at.parked.is_some() && !ends {
        // The transaction failed (a statement on several shards): its connections may not
        // know, so nothing more runs in it until its end, as in Postgres.
        return Decision::RefuseAborted;
    }
    if let Some(read_only) = at.deferred_begin {
        if ends {
            // Nothing ran in the transaction: answer without a server.
            let tag = if single == Some(Kind::Commit) {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            return Decision::EndEmpty(tag);
        }
        // The first statement decides which server of the shard the transaction runs on.
        let read_only = read_only || single == Some(Kind::SetTransactionReadOnly);
        return Decision::Go(Want::of(hint.or(at.target), read_only), shard);
    }
    // BEGIN is deferred: the transaction's first statement (or a SET TRANSACTION READ ONLY)
    // decides where it runs.
    if let Form::Batch {
        only_begin: Some(read_only),
        ..
    } = stmt.form
    {
        if at.status == TxStatus::Idle {
            return Decision::DeferBegin { read_only };
        }
    }
    if let Some(Kind::Begin { read_only }) = single {
        return Decision::DeferBegin { read_only };
    }
    Decision::Go(stmt.want, shard)
}

/// The error for a statement refused for where the transaction runs (`shard_name`).
pub fn cross_shard(why: CrossShard, shard_name: &str) -> PgError {
    let what = match why {
        CrossShard::NeedsSeveral => "this statement needs several shards",
        CrossShard::OtherShard => "this statement belongs to another shard",
        CrossShard::MidBatch => "an extended-protocol batch cannot change shards before its Sync",
    };
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("{what}, but the transaction (or pinned session) runs on shard {shard_name}"),
    )
    .with_hint(
        "keep each transaction on one shard key; transactions across shards \
         (two_phase_commit) are not supported yet",
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
