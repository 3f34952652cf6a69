//! Which transaction-control statement (or setting change) a statement is, read from its
//! first words like Postgres's grammar: comments count as spaces.

use crate::sql::scan::{leading_words, mentions_set_config};

/// A transaction-control statement, as far as transactions across shards care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::session::query_loop) enum Control {
    /// COMMIT / END (AND NO CHAIN).
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// COMMIT / ROLLBACK AND CHAIN.
    Chain,
    /// SAVEPOINT.
    Savepoint,
    /// ROLLBACK TO [SAVEPOINT].
    RollbackTo,
    /// RELEASE [SAVEPOINT].
    Release,
    /// PREPARE TRANSACTION.
    Prepare,
    /// COMMIT PREPARED / ROLLBACK PREPARED.
    Prepared,
    /// SET / SET LOCAL / SET TRANSACTION / RESET, or a call of `set_config`: changes a
    /// setting on one server.
    Set,
}

impl Control {
    /// Whether it keeps a one-shard transaction on its shard.
    pub(super) fn pins(self) -> bool {
        matches!(
            self,
            Control::Savepoint | Control::RollbackTo | Control::Release | Control::Set
        )
    }

    pub(super) fn ends(self) -> bool {
        matches!(self, Control::Commit | Control::Rollback)
    }
}

/// `SET LOCAL`, `SET TRANSACTION` or `SET CONSTRAINTS`: a setting that ends with the
/// transaction, which can be made again on another shard's connection.
pub(super) fn transaction_scoped(stmt: &str) -> bool {
    let w = leading_words(stmt, 2);
    w.first().is_some_and(|v| v == "set")
        && w.get(1)
            .is_some_and(|v| matches!(v.as_str(), "local" | "transaction" | "constraints"))
}

/// The transaction control one statement performs, if any.
pub(in crate::session::query_loop) fn control(stmt: &str) -> Option<Control> {
    let w = leading_words(stmt, 6);
    let at = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    // COMMIT/ROLLBACK [WORK | TRANSACTION] ...
    let after = |i: usize| {
        if matches!(at(i), "work" | "transaction") {
            i + 1
        } else {
            i
        }
    };
    let chain = |i: usize| at(i) == "and" && at(i + 1) == "chain";
    match at(0) {
        "commit" if at(1) == "prepared" => Some(Control::Prepared),
        "rollback" if at(1) == "prepared" => Some(Control::Prepared),
        "commit" | "end" => Some(if chain(after(1)) {
            Control::Chain
        } else {
            Control::Commit
        }),
        "rollback" | "abort" => {
            let i = after(1);
            Some(if at(i) == "to" {
                Control::RollbackTo
            } else if chain(i) {
                Control::Chain
            } else {
                Control::Rollback
            })
        }
        "savepoint" => Some(Control::Savepoint),
        "release" => Some(Control::Release),
        "prepare" if at(1) == "transaction" => Some(Control::Prepare),
        "set" | "reset" => Some(Control::Set),
        _ if mentions_set_config(stmt) => Some(Control::Set),
        _ => None,
    }
}
