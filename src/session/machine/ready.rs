//! What happens at a server's ReadyForQuery, without I/O: whether the client sees the
//! status the server reported, whether the proxy must undo or abort the transaction first,
//! and whether the server connection may go back to the pool. Also the statement-mode rule
//! that refuses transaction blocks.

use crate::protocol::TxStatus;

/// Where the client stands when its server reports ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtReady {
    /// The status the server reported.
    pub status: TxStatus,
    /// Nothing more is owed by the server.
    pub settled: bool,
    /// Transaction control was refused in the middle of this batch (a transaction across
    /// shards): the transaction must fail everywhere at its end.
    pub abort_at_ready: bool,
    /// The connection serves a batch that executes nothing while the client's BEGIN waits.
    pub outside_deferred: bool,
    /// The database pools in statement mode.
    pub statement_mode: bool,
}

/// What to do at a ReadyForQuery (see [`at_ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The client sees the server's status.
    Pass,
    /// Roll the transaction back on every participant and fail it for the client.
    AbortRefusedBatch,
    /// The client still is in the transaction the proxy deferred: it sees `T`, not `I`.
    StillInTransaction,
    /// Statement mode and the client opened a transaction: roll it back on the server and
    /// answer the client with an error and `I` instead.
    UndoTransaction,
}

/// Decides what happens at a ReadyForQuery.
pub fn at_ready(r: AtReady) -> Ready {
    if r.abort_at_ready && r.settled {
        return Ready::AbortRefusedBatch;
    }
    if r.outside_deferred && r.status == TxStatus::Idle {
        return Ready::StillInTransaction;
    }
    if r.statement_mode && r.status != TxStatus::Idle && r.settled {
        return Ready::UndoTransaction;
    }
    Ready::Pass
}

/// What decides whether a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Releasable {
    /// Transaction or statement mode.
    pub managed: bool,
    /// The client's session holds state that cannot move between connections.
    pub pinned: bool,
    /// The server owes nothing.
    pub settled: bool,
    /// Extended-protocol messages await their Sync.
    pub unsynced: bool,
    /// The client's transaction status.
    pub status: TxStatus,
    /// The connection serves a batch outside the client's deferred transaction.
    pub outside_deferred: bool,
}

impl Releasable {
    /// The connection may go back to the pool now: a managed mode, no pinned session
    /// state, nothing owed or awaiting a Sync, and outside a transaction (or serving only a
    /// batch outside the deferred one).
    pub fn now(&self) -> bool {
        self.managed
            && !self.pinned
            && self.settled
            && !self.unsynced
            && (self.status == TxStatus::Idle || self.outside_deferred)
    }
}

/// True if a simple-protocol query opens a transaction block (statement mode refuses those).
pub fn starts_transaction(sql: &str) -> bool {
    let s = sql.trim_start().as_bytes();
    let word = |w: &str| {
        s.len() >= w.len()
            && s[..w.len()].eq_ignore_ascii_case(w.as_bytes())
            && s.get(w.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_')
    };
    word("begin") || word("start")
}

#[cfg(test)]
#[path = "ready_tests.rs"]
mod tests;
