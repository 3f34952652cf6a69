//! What becomes of the server connection a client held when its session ends, however it
//! ends (Terminate, a vanished client, a FATAL, shutdown), without I/O. A connection goes
//! back to the pool only in a state the proxy knows is clean.

use crate::protocol::TxStatus;

/// Where the session stood when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaving {
    /// The connection is already known to be broken.
    pub broken: bool,
    /// The server still owes answers (the client left mid-query).
    pub owes: bool,
    /// Of those, ReadyForQuery messages: a statement may still be running.
    pub owes_ready: bool,
    /// Extended-protocol messages await their Sync.
    pub unsynced: bool,
    /// The client's transaction status.
    pub status: TxStatus,
    /// The client's session holds state that cannot move between connections.
    pub pinned: bool,
    /// The database pools in session mode.
    pub session_mode: bool,
    /// A reset query (`server_reset_query`) is configured.
    pub has_reset_query: bool,
}

/// What to do with the connection (see [`on_leave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Close it (Postgres rolls back whatever it held).
    Close,
    /// Cancel the statement still running, then close it.
    CancelAndClose,
    /// Clean it (ROLLBACK if in a transaction, then the reset query if asked) and return it
    /// to the pool if that ends idle; close it otherwise.
    Clean {
        /// Roll back first.
        rollback: bool,
        /// Run the reset query.
        reset: bool,
    },
}

/// Decides what becomes of the held connection of a session that ended.
pub fn on_leave(at: Leaving) -> Cleanup {
    if at.broken {
        return Cleanup::Close;
    }
    if at.owes || at.unsynced {
        // The client left mid-query: stop the query and close the connection, which makes
        // Postgres roll back and release its locks.
        return if at.owes_ready {
            Cleanup::CancelAndClose
        } else {
            Cleanup::Close
        };
    }
    // A pinned client may leave advisory locks, LISTENs or temp tables behind: it is reset
    // like a session-mode client (DISCARD ALL releases all of those), or closed without a
    // reset query.
    let reset = (at.session_mode || at.pinned) && at.has_reset_query;
    if at.pinned && !at.has_reset_query {
        return Cleanup::Close;
    }
    Cleanup::Clean {
        rollback: at.status != TxStatus::Idle,
        reset,
    }
}

#[cfg(test)]
mod tests {
    use super::{on_leave, Cleanup, Leaving};
    use crate::protocol::TxStatus::{Failed, Idle, InTransaction};

    /// A transaction-mode client leaving between statements, outside a transaction.
    fn quiet() -> Leaving {
        Leaving {
            broken: false,
            owes: false,
            owes_ready: false,
            unsynced: false,
            status: Idle,
            pinned: false,
            session_mode: false,
            has_reset_query: true,
        }
    }

    macro_rules! cases {
        ($($name:ident: $at:expr => $expect:expr;)*) => {
            $(
                #[test]
                fn $name() {
                    assert_eq!(on_leave($at), $expect);
                }
            )*
        };
    }

    cases! {
        between_statements_it_goes_back_as_it_is: quiet() => Cleanup::Clean { rollback: false, reset: false };
        in_a_transaction_it_is_rolled_back: Leaving { status: InTransaction, ..quiet() } => Cleanup::Clean { rollback: true, reset: false };
        in_a_failed_transaction_it_is_rolled_back: Leaving { status: Failed, ..quiet() } => Cleanup::Clean { rollback: true, reset: false };
        mid_query_it_is_cancelled_and_closed: Leaving { owes: true, owes_ready: true, ..quiet() } => Cleanup::CancelAndClose;
        mid_copy_or_after_flush_it_is_closed: Leaving { owes: true, ..quiet() } => Cleanup::Close;
        mid_batch_before_sync_it_is_closed: Leaving { unsynced: true, ..quiet() } => Cleanup::Close;
        mid_batch_in_a_transaction_it_is_closed: Leaving { unsynced: true, status: InTransaction, ..quiet() } => Cleanup::Close;
        a_broken_connection_is_closed: Leaving { broken: true, ..quiet() } => Cleanup::Close;
        a_broken_connection_mid_query_is_just_closed: Leaving { broken: true, owes: true, owes_ready: true, ..quiet() } => Cleanup::Close;
        session_mode_is_reset: Leaving { session_mode: true, ..quiet() } => Cleanup::Clean { rollback: false, reset: true };
        session_mode_in_a_transaction_is_rolled_back_and_reset: Leaving { session_mode: true, status: InTransaction, ..quiet() } => Cleanup::Clean { rollback: true, reset: true };
        session_mode_without_a_reset_query_goes_back: Leaving { session_mode: true, has_reset_query: false, ..quiet() } => Cleanup::Clean { rollback: false, reset: false };
        a_pinned_session_is_reset: Leaving { pinned: true, ..quiet() } => Cleanup::Clean { rollback: false, reset: true };
        a_pinned_session_without_a_reset_query_is_closed: Leaving { pinned: true, has_reset_query: false, ..quiet() } => Cleanup::Close;
        a_pinned_session_mid_query_is_cancelled_and_closed: Leaving { pinned: true, owes: true, owes_ready: true, ..quiet() } => Cleanup::CancelAndClose;
    }
}
