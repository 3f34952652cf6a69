//! The client's transaction as one value: where it stands (outside, a BEGIN the proxy
//! answered and holds back, open on the servers, failed, or refused and rolled back by the
//! proxy), what the client is told at ReadyForQuery, and the BEGIN a further shard gets.
//! Every change of it is one method here; the query loop owns one [`Txn`].

use crate::protocol::TxStatus;

/// A BEGIN as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Its text (sent as is to the server the transaction starts on).
    pub text: String,
    /// `BEGIN READ ONLY`: the transaction may run on a replica.
    pub read_only: bool,
}

/// Where the client's transaction stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Txn {
    /// Outside a transaction block.
    #[default]
    Idle,
    /// The proxy answered the client's BEGIN and holds it back: the transaction's first
    /// statement decides where it runs, and gets the BEGIN ahead of it. `outside`: the held
    /// connection serves a batch that executes nothing (Parse, Describe) and stays outside
    /// the transaction (it is released after the batch).
    Deferred {
        /// The client's BEGIN.
        begin: Begin,
        /// The held connection is not in the transaction.
        outside: bool,
    },
    /// Open on the servers (the held connection and any parked ones).
    Open {
        /// The BEGIN a further shard gets (None: the client's own BEGIN went to the server
        /// as part of its statements, and further shards get a plain `BEGIN`).
        begin: Option<String>,
        /// The deferred BEGIN sent ahead of the held connection's first statement: a read
        /// retried elsewhere defers it again.
        injected: Option<Begin>,
        /// An error aborted it (the client sees `E`).
        failed: bool,
    },
    /// The proxy refused a statement of a transaction across shards and rolled it back on
    /// every shard: the proxy answers the failed block (`E`) until COMMIT or ROLLBACK.
    Aborted,
}

impl Txn {
    /// A transaction that just opened with the client's BEGIN `begin` held back.
    pub fn deferred(begin: Begin) -> Txn {
        Txn::Deferred {
            begin,
            outside: false,
        }
    }

    /// An open transaction whose further shards get `begin`.
    pub fn open(begin: impl Into<String>) -> Txn {
        Txn::Open {
            begin: Some(begin.into()),
            injected: None,
            failed: false,
        }
    }

    /// What the client is told at ReadyForQuery.
    pub fn status(&self) -> TxStatus {
        match self {
            Txn::Idle => TxStatus::Idle,
            Txn::Deferred { .. } | Txn::Open { failed: false, .. } => TxStatus::InTransaction,
            Txn::Open { failed: true, .. } | Txn::Aborted => TxStatus::Failed,
        }
    }

    /// The client is in a transaction block (of any kind).
    pub fn in_block(&self) -> bool {
        *self != Txn::Idle
    }

    /// The held-back BEGIN, while the transaction is deferred.
    pub fn held_begin(&self) -> Option<&Begin> {
        match self {
            Txn::Deferred { begin, .. } => Some(begin),
            _ => None,
        }
    }

    /// The held connection serves a batch outside the deferred transaction.
    pub fn outside(&self) -> bool {
        matches!(self, Txn::Deferred { outside: true, .. })
    }

    /// A connection was checked out for the next batch: outside the deferred transaction or
    /// not (no effect unless deferred).
    pub fn set_outside(&mut self, value: bool) {
        if let Txn::Deferred { outside, .. } = self {
            *outside = value;
        }
    }

    /// The BEGIN a newly checked-out connection gets before the client's statement: the
    /// held-back one (the transaction opens, remembering it was injected), the open
    /// transaction's for a further shard, or none.
    pub fn on_checkout(&mut self) -> Option<String> {
        match self {
            Txn::Deferred { outside: true, .. } | Txn::Idle | Txn::Aborted => None,
            Txn::Deferred { begin, .. } => {
                let begin = begin.clone();
                let text = begin.text.clone();
                *self = Txn::Open {
                    begin: Some(text.clone()),
                    injected: Some(begin),
                    failed: false,
                };
                Some(text)
            }
            Txn::Open { .. } => Some(self.further_begin()),
        }
    }

    /// The BEGIN for the shards a statement of the transaction opens: the held-back one
    /// (the transaction opens on them) or the open transaction's.
    pub fn open_on_shards(&mut self) -> String {
        if let Txn::Deferred { begin, .. } = self {
            *self = Txn::open(begin.text.clone());
        }
        self.further_begin()
    }

    /// The BEGIN a further shard of the open transaction gets.
    pub fn further_begin(&self) -> String {
        match self {
            Txn::Open { begin: Some(b), .. } => b.clone(),
            Txn::Deferred { begin, .. } => begin.text.clone(),
            _ => "BEGIN".into(),
        }
    }

    /// The read whose connection got the held-back BEGIN is retried on another: the BEGIN
    /// is held back again.
    pub fn retried(&mut self) {
        if let Txn::Open {
            injected: Some(begin),
            ..
        } = self
        {
            *self = Txn::deferred(begin.clone());
        }
    }

    /// The held connection went back to the pool.
    pub fn released(&mut self) {
        match self {
            Txn::Deferred { outside, .. } => *outside = false,
            Txn::Open { injected, .. } => *injected = None,
            Txn::Idle | Txn::Aborted => {}
        }
    }

    /// A statement of the transaction failed (on a shard, or reaching one).
    pub fn fail(&mut self) {
        match self {
            Txn::Open { failed, .. } => *failed = true,
            Txn::Aborted => {}
            Txn::Idle | Txn::Deferred { .. } => {
                let begin = self.further_begin();
                *self = Txn::Open {
                    begin: Some(begin),
                    injected: None,
                    failed: true,
                };
            }
        }
    }

    /// The held server reported `status` at ReadyForQuery. A connection serving a batch
    /// outside the deferred transaction leaves it deferred; otherwise the server's status is
    /// the transaction's.
    pub fn on_server_ready(&mut self, status: TxStatus) {
        if self.outside() {
            return;
        }
        match (status, &mut *self) {
            (TxStatus::Idle, _) => *self = Txn::Idle,
            (_, Txn::Open { failed, .. }) => *failed = status == TxStatus::Failed,
            (_, Txn::Aborted) => {}
            (_, Txn::Idle | Txn::Deferred { .. }) => {
                let begin = match self {
                    Txn::Deferred { begin, .. } => Some(begin.text.clone()),
                    _ => None,
                };
                *self = Txn::Open {
                    begin,
                    injected: None,
                    failed: status == TxStatus::Failed,
                };
            }
        }
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
