//! Transactions across shards (`two_phase_commit = true`): the transaction's connection to
//! each shard it touched stays checked out ("parked") while statements run on another
//! shard; COMMIT prepares every participant (PREPARE TRANSACTION, ascending shard order, the
//! first one — the coordinator — recording the decision in its log table inside its own
//! transaction) and then commits the coordinator (the decision) and the others (COMMIT
//! PREPARED, retried on fresh connections). If any participant cannot prepare, all are
//! rolled back and the client gets an error. Once all have prepared, the outcome is commit:
//! the client is told COMMIT (with a WARNING for a participant left to recovery), and
//! [`crate::shard::recovery`] follows the log after a crash.
//!
//! Transaction control that would reach only one participant is refused (0A000) in a
//! transaction with two or more participants, and the transaction is rolled back on every
//! participant: COMMIT/ROLLBACK among other statements (one Query or one extended batch),
//! COMMIT/ROLLBACK AND CHAIN, SAVEPOINT, ROLLBACK TO, RELEASE, PREPARE TRANSACTION and COMMIT
//! / ROLLBACK PREPARED. The client is then in a failed transaction block ('E') as after any
//! error in Postgres: everything but COMMIT/ROLLBACK gets 25P02, and those answer ROLLBACK.
//! A transaction with one participant may use savepoints; from its first savepoint on it
//! stays on that shard (a statement for another shard is refused the same way), since a
//! savepoint exists on one server only.

use super::routing::Want;
use super::statements::inject_query;
use super::{lock, Loop};
use crate::pool::Checkout;
use crate::protocol::{self, empty_message, parse_body, PgError};
use crate::shard::ShardId;

mod commit;
mod guard;
pub(super) use commit::CommitError;
pub(super) use guard::aborted_transaction;

pub(super) use guard::TxnGuard;

impl Loop<'_> {
    /// Makes `conn` the current server connection of shard `shard`.
    pub(super) fn install(&mut self, conn: Checkout, shard: ShardId, on_primary: bool) {
        self.cancel_to(std::slice::from_ref(&conn));
        self.relay.reset();
        self.unsynced = false;
        self.server = Some(conn);
        self.routing.shard = shard;
        self.routing.on_primary = on_primary;
    }

    /// Takes the parked connection of `shard`, if the transaction has one.
    pub(super) fn unpark(&mut self, shard: ShardId) -> Option<Checkout> {
        let pos = self.routing.parked.iter().position(|(s, _)| *s == shard)?;
        Some(self.routing.parked.remove(pos).1)
    }

    /// Moves an open transaction to `shard`: parks the current connection and continues on
    /// the shard's parked one, or on a new one where the transaction's BEGIN is sent first.
    pub(super) async fn switch_shard(&mut self, want: Want, shard: ShardId) -> Result<(), PgError> {
        self.may_join(shard).await?;
        if let Some(conn) = self.server.take() {
            if self.routing.wrote {
                self.wrote_on(&[self.routing.shard]);
            }
            self.routing.parked.push((self.routing.shard, conn));
        }
        lock(&self.login.cancel.slot).clear();
        if let Some(conn) = self.unpark(shard) {
            self.install(conn, shard, true);
            return Ok(());
        }
        let (conn, on_primary) = match self.acquire(want, shard).await {
            Ok(c) => c,
            Err(e) => {
                // The transaction cannot continue: it fails everywhere, as in Postgres.
                self.abort_everywhere().await;
                return Err(e);
            }
        };
        self.install(conn, shard, on_primary);
        self.apply_settings();
        let begin = self.begin_sql(&self.txn.further_begin());
        inject_query(&begin, &mut self.relay, &mut self.to_server);
        Ok(())
    }

    fn shard_name(&self, s: ShardId) -> String {
        self.login
            .shard_map
            .as_ref()
            .and_then(|m| m.names.get(s.index()).cloned())
            .unwrap_or_else(|| s.to_string())
    }

    /// Rolls back and returns the parked connections of a transaction that ended on its
    /// current shard (ROLLBACK, or COMMIT of a failed transaction).
    pub(super) async fn release_parked(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.routing.parked) {
            c.settings_unknown |= self.client.opaque || self.client.wrote;
            if c.run("ROLLBACK").await.is_err() {
                c.broken = true;
            }
        }
    }

    /// Answers an extended-protocol batch of one statement the proxy ran or deferred itself
    /// (COMMIT across shards, BEGIN), up to and including its Sync: ParseComplete,
    /// BindComplete, NoData, the tag (or the error), ReadyForQuery with the current status.
    pub(super) fn answer_batch(&mut self, first: protocol::Frame, result: Result<&str, PgError>) {
        let mut failed = false;
        for f in self.take_batch(first) {
            match f.tag {
                b'P' if !failed => {
                    if let Some(p) = parse_body(f.body()) {
                        if !p.name.is_empty() {
                            let stmt = self.state.statements.get_or_insert(p.rest);
                            self.client.named.insert(p.name.to_string(), stmt);
                        }
                    }
                    self.to_client.extend_from_slice(&empty_message(b'1'));
                }
                b'B' if !failed => self.to_client.extend_from_slice(&empty_message(b'2')),
                b'D' if !failed => {
                    if f.body().first() == Some(&b'S') {
                        // ParameterDescription with no parameters.
                        self.to_client.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                    }
                    self.to_client.extend_from_slice(&empty_message(b'n'));
                }
                b'E' if !failed => match &result {
                    Ok(tag) => protocol::command_complete(&mut self.to_client, tag),
                    Err(e) => {
                        e.encode(&mut self.to_client);
                        failed = true;
                    }
                },
                b'C' if !failed => self.to_client.extend_from_slice(&empty_message(b'3')),
                b'S' => self.ready_for_client(self.txn.status()),
                _ => {}
            }
        }
    }
}
