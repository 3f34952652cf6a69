//! Transaction control in transactions across shards: the statements that would reach one
//! participant only are refused (see the parent module's docs), the transaction is rolled
//! back on every participant, and the proxy answers for the failed transaction block until
//! the client ends it. Savepoints and setting changes (`SET`, `SET LOCAL`, `RESET`,
//! `set_config`) pin a one-shard transaction to its shard: a setting changed on one server
//! only would make the other shards answer under other settings, and the connections the
//! transaction leaves behind would differ from what the proxy knows of them.

use bytes::BytesMut;

use super::super::routing::Step;
use super::super::{lock, Loop, CLEANUP_TIMEOUT};
use crate::protocol::{
    self, bind_names, empty_message, parse_body, query_text, sqlstate, Frame, PgError, TxStatus,
};
use crate::session::machine::txn::Txn;
use crate::session::relay::Expect;
use crate::shard::ShardId;
use crate::sql::scan::split_statements;

mod control;

use control::transaction_scoped;
pub(super) use control::{control, Control};

/// Transaction-control state of one client (see the module docs).
#[derive(Debug, Default)]
pub(in crate::session::query_loop) struct TxnGuard {
    /// A savepoint was set or a session setting changed in the open transaction: it stays
    /// on its shard.
    pub pinned: bool,
    /// The transaction-scoped SETs of the open one-shard transaction, sent after its BEGIN
    /// to each further shard it reaches.
    pub sets: Vec<String>,
    /// Refused in the middle of an extended-protocol batch: at the batch's ReadyForQuery,
    /// roll back everywhere and report 'E'.
    pub abort_at_ready: bool,
    /// The control statement of the unnamed statement last parsed.
    unnamed: Option<Control>,
    /// In a failed transaction: the control statement of the portal last bound.
    portal: Option<Control>,
    /// Frames of the current extended batch already checked at its start.
    checked: usize,
}

fn refusal(what: &str) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "{what} in a transaction across shards; the transaction was rolled back on every shard"
        ),
    )
    .with_hint(
        "send COMMIT or ROLLBACK as a statement of its own; savepoints, SET, AND CHAIN and \
         PREPARE TRANSACTION work only in transactions that stay on one shard (SET before \
         BEGIN applies to every shard)",
    )
}

/// What is refused about the control statements `found` (see [`refusal`]).
fn refused_control(found: &[Control]) -> &'static str {
    match found.iter().find(|c| !c.ends()) {
        Some(Control::Chain) => "COMMIT/ROLLBACK AND CHAIN is not supported",
        Some(Control::Savepoint | Control::RollbackTo | Control::Release) => {
            "savepoints are not supported"
        }
        Some(Control::Prepare | Control::Prepared) => {
            "PREPARE TRANSACTION and COMMIT/ROLLBACK PREPARED are not supported"
        }
        Some(Control::Set) => "changing a setting (SET, RESET, set_config) is not supported",
        _ => "COMMIT or ROLLBACK together with other statements is not supported",
    }
}

impl Loop<'_> {
    fn two_phase(&self) -> bool {
        self.login
            .shard_map
            .as_ref()
            .is_some_and(|m| m.two_phase_commit)
    }

    /// The shards the open transaction has a connection to.
    fn participants(&self) -> Vec<ShardId> {
        let mut v: Vec<ShardId> = self.routing.parked.iter().map(|(s, _)| *s).collect();
        if self.server.is_some() && !self.txn.outside() && !v.contains(&self.routing.shard) {
            v.push(self.routing.shard);
        }
        v
    }

    /// Whether `shard` may join the open transaction. A transaction that set a savepoint
    /// stays on its shard: otherwise it fails (rolled back everywhere) with 0A000.
    pub(in crate::session::query_loop) async fn may_join(
        &mut self,
        shard: ShardId,
    ) -> Result<(), PgError> {
        if self.txn.status() == TxStatus::Failed {
            // The transaction failed on some shard: as in Postgres, nothing more runs in it
            // (the connection this needs may not know it failed); the block's end rolls back
            // every shard.
            return Err(aborted_transaction());
        }
        if !self.routing.guard.pinned || !self.two_phase() {
            return Ok(());
        }
        let parts = self.participants();
        if parts.is_empty() || parts.contains(&shard) {
            return Ok(());
        }
        self.abort_everywhere().await;
        Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a transaction that set a savepoint or changed a setting cannot reach another \
             shard; it was rolled back",
        )
        .with_hint(
            "savepoints and settings changed in a transaction exist on one shard only: keep \
             such a transaction on one shard key, or SET before BEGIN",
        ))
    }

    /// The control statement a Bind runs.
    fn bound_control(&self, body: &[u8]) -> Option<Control> {
        let (_, name, _) = bind_names(body)?;
        if name.is_empty() {
            return self.routing.guard.unnamed;
        }
        self.client.named.get(name).and_then(|s| control(s.query()))
    }

    /// Transaction control in a transaction across shards (see the module docs), checked
    /// before a client message is routed: `Some` is what to do instead of routing it.
    pub(in crate::session::query_loop) async fn guard_txn(
        &mut self,
        frame: &Frame,
    ) -> Option<Step> {
        if self.txn == Txn::Aborted {
            return Some(self.answer_failed(frame));
        }
        if !self.two_phase() {
            return None;
        }
        let tag = frame.tag;
        let batch_start =
            !self.unsynced && matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F');
        let mid_batch = self.unsynced && !batch_start;
        if tag == b'P' && (mid_batch || !self.in_txn()) {
            // Frames checked with their batch are not looked at again (but their unnamed
            // statement is remembered for a later Bind).
            if let Some(p) = parse_body(frame.body()) {
                if p.name.is_empty() {
                    self.routing.guard.unnamed = control(p.query);
                }
            }
        }
        if !self.in_txn() {
            self.note_pins_outside_txn(frame);
            return None;
        }
        let mut texts = Vec::new();
        let (found, executes) = if tag == b'Q' {
            let stmts = split_statements(query_text(frame.body()));
            let found: Vec<Control> = stmts.iter().filter_map(|s| control(s)).collect();
            texts = stmts;
            (found, texts.len())
        } else if batch_start {
            self.batch_controls(frame)
        } else if mid_batch {
            if self.routing.guard.checked > 0 {
                self.routing.guard.checked -= 1;
                return None;
            }
            match tag {
                b'B' => (self.bound_control(frame.body()).into_iter().collect(), 2),
                _ => return None,
            }
        } else {
            return None;
        };
        if found.is_empty() {
            return None;
        }
        if self.participants().len() < 2 {
            if tag == b'Q' {
                self.note_pins(&texts);
            } else if found.iter().any(|c| c.pins()) {
                self.routing.guard.pinned = true;
            }
            return None;
        }
        let only_scoped_sets = tag == b'Q'
            && texts.iter().all(|s| match control(s) {
                None => true,
                Some(c) => c == Control::Set && transaction_scoped(s),
            });
        if only_scoped_sets && self.txn.status() != TxStatus::Failed {
            if self.server.is_some() && !self.relay.idle() {
                return Some(Step::Hold);
            }
            return self.set_everywhere(&texts).await;
        }
        if found.len() == 1 && executes == 1 && found[0].ends() {
            // A COMMIT or ROLLBACK of its own: handled for all participants by the router.
            return None;
        }
        self.refuse_control(refused_control(&found), mid_batch)
            .await
    }

    /// Outside a transaction: a Query that opens one (`BEGIN; SET ...`) may pin it already.
    fn note_pins_outside_txn(&mut self, frame: &Frame) {
        // `BEGIN; SET ...` in one Query pins the transaction it opens.
        self.routing.guard.pinned = false;
        self.routing.guard.sets.clear();
        if frame.tag == b'Q' {
            let stmts = split_statements(query_text(frame.body()));
            let begins = |s: &&str| {
                matches!(
                    crate::sql::scan::leading_words(s, 1)
                        .first()
                        .map(String::as_str),
                    Some("begin" | "start")
                )
            };
            let opened: Vec<&str> = stmts.into_iter().skip_while(|s| !begins(s)).collect();
            self.note_pins(&opened);
        }
    }

    /// Refuses transaction control (`what` is refused) in a transaction with two or more
    /// participants, which is rolled back everywhere: in the middle of an extended-protocol
    /// batch (`mid_batch`) in place of the message's answer, else once the answers owed
    /// for earlier statements are out.
    async fn refuse_control(&mut self, what: &str, mid_batch: bool) -> Option<Step> {
        if mid_batch {
            // Earlier messages of the batch are on the server already: answer this one
            // with the error in its place, and fail the transaction at the batch's end.
            let mut b = BytesMut::new();
            refusal(what).encode(&mut b);
            self.relay.push(Expect::Synthetic(b.freeze()));
            self.relay
                .emit_synthetic(&mut self.to_client, &mut self.events);
            self.skip.errored_mid_batch();
            self.routing.guard.abort_at_ready = true;
            return Some(Step::Handled);
        }
        if self.server.is_some() && !self.relay.idle() {
            // Answers to earlier statements are owed first.
            return Some(Step::Hold);
        }
        self.abort_everywhere().await;
        Some(Step::Refuse(refusal(what)))
    }

    /// Statements of a one-shard transaction that keep it on its shard: a transaction-scoped
    /// SET (`SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`) is instead sent again, after
    /// the BEGIN, to each further shard the transaction reaches; anything else that
    /// [`Control::pins`] pins it.
    fn note_pins(&mut self, stmts: &[&str]) {
        for stmt in stmts {
            match control(stmt) {
                Some(Control::Set) if transaction_scoped(stmt) => {
                    self.routing.guard.sets.push((*stmt).to_string());
                }
                Some(c) if c.pins() => self.routing.guard.pinned = true,
                _ => {}
            }
        }
    }

    /// `SET LOCAL` / `SET TRANSACTION` / `SET CONSTRAINTS` in a transaction with two or more
    /// participants: made on every parked participant now (the current one gets the client's
    /// Query as usual) and on every shard the transaction reaches later. A parked participant
    /// that refuses it fails the transaction everywhere (0A000 with its message).
    async fn set_everywhere(&mut self, stmts: &[&str]) -> Option<Step> {
        let sets: Vec<String> = stmts
            .iter()
            .filter(|s| control(s) == Some(Control::Set))
            .map(|s| (*s).to_string())
            .collect();
        let sql = sets.join("; ");
        let mut failure = None;
        for (shard, c) in self.routing.parked.iter_mut() {
            match tokio::time::timeout(CLEANUP_TIMEOUT, c.run(&sql)).await {
                Ok(Ok(TxStatus::InTransaction)) => {}
                Ok(Ok(_)) => failure = Some((*shard, "the transaction ended there".to_string())),
                Ok(Err(e)) => failure = Some((*shard, e.to_string())),
                Err(_) => {
                    c.broken = true;
                    failure = Some((*shard, "no answer".to_string()));
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some((shard, why)) = failure {
            let name = self.shard_name(shard);
            self.abort_everywhere().await;
            return Some(Step::Refuse(
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "the setting could not be made on shard {name} ({why}); the \
                         transaction was rolled back on every shard"
                    ),
                )
                .with_hint("SET LOCAL must be valid on every shard the transaction reaches"),
            ));
        }
        self.routing.guard.sets.extend(sets);
        None
    }

    /// The BEGIN that opens the transaction on a further shard, with the transaction-scoped
    /// settings it made so far.
    pub(in crate::session::query_loop) fn begin_sql(&self, begin: &str) -> String {
        let mut sql = begin.to_string();
        for set in &self.routing.guard.sets {
            sql.push_str("; ");
            sql.push_str(set);
        }
        sql
    }

    fn in_txn(&self) -> bool {
        self.txn.in_block() || !self.routing.parked.is_empty()
    }

    /// The control statements of an extended batch starting at `first` (as far as it has
    /// arrived), and how many statements it executes. Remembers how many frames were seen.
    fn batch_controls(&mut self, first: &Frame) -> (Vec<Control>, usize) {
        let mut found = Vec::new();
        let mut executes = 0;
        let mut unnamed = self.routing.guard.unnamed;
        let mut seen = 0usize;
        let mut parsed: Vec<(String, Option<Control>)> = Vec::new();
        let mut visit = |tag: u8, body: &[u8]| -> bool {
            match tag {
                b'P' => {
                    if let Some(p) = parse_body(body) {
                        if p.name.is_empty() {
                            unnamed = control(p.query);
                        } else {
                            parsed.push((p.name.to_string(), control(p.query)));
                        }
                    }
                }
                b'B' => {
                    executes += 1;
                    let c = match bind_names(body) {
                        Some((_, "", _)) => unnamed,
                        Some((_, name, _)) => match parsed.iter().rev().find(|p| p.0 == name) {
                            Some(p) => p.1,
                            None => self.client.named.get(name).and_then(|s| control(s.query())),
                        },
                        None => None,
                    };
                    found.extend(c);
                }
                b'F' => executes += 1,
                b'S' | b'Q' => return false,
                _ => {}
            }
            true
        };
        let mut go = visit(first.tag, first.body());
        for f in &self.routing.pending {
            if !go {
                break;
            }
            seen += 1;
            go = visit(f.tag, f.body());
        }
        for (tag, body) in crate::protocol::whole_messages(&self.from_client) {
            if !go {
                break;
            }
            seen += 1;
            go = visit(tag, body);
        }
        self.routing.guard.unnamed = unnamed;
        // The Sync itself (if seen) is not checked again either way.
        self.routing.guard.checked = seen;
        (found, executes)
    }

    /// Rolls the open transaction back on every participant and leaves the client in a
    /// failed transaction block without a server connection.
    pub(in crate::session::query_loop) async fn abort_everywhere(&mut self) {
        lock(&self.login.cancel.slot).clear();
        for (_, mut c) in std::mem::take(&mut self.routing.parked) {
            match tokio::time::timeout(CLEANUP_TIMEOUT, c.run("ROLLBACK")).await {
                Ok(Ok(TxStatus::Idle)) => {}
                _ => c.broken = true,
            }
        }
        let clean = self.relay.idle() && !self.unsynced;
        if let Some(c) = self.server.as_deref_mut() {
            if !clean {
                // Closing the connection rolls its part back.
                c.broken = true;
            } else {
                match tokio::time::timeout(CLEANUP_TIMEOUT, c.run("ROLLBACK")).await {
                    Ok(Ok(TxStatus::Idle)) => {}
                    _ => c.broken = true,
                }
            }
        }
        if self.server.as_ref().is_some_and(|c| !c.broken) {
            // Settings changed in the transaction are undone: learn what survived.
            self.read_back_settings().await;
        }
        self.server = None;
        self.relay.reset();
        self.unsynced = false;
        self.routing.released();
        self.txn = Txn::Aborted;
    }

    /// After a refusal in the middle of a batch, at its ReadyForQuery: the transaction fails
    /// everywhere (the client's ReadyForQuery then says `E`).
    pub(in crate::session::query_loop) async fn abort_refused_batch(&mut self) {
        self.routing.guard.abort_at_ready = false;
        self.abort_everywhere().await;
    }

    /// Answers a client message in a failed transaction block the proxy keeps (see
    /// [`Txn::Aborted`]): COMMIT and ROLLBACK end it (tag ROLLBACK), anything else gets
    /// 25P02 like Postgres.
    fn answer_failed(&mut self, frame: &Frame) -> Step {
        let aborted = || {
            PgError::error(
                sqlstate::IN_FAILED_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
            .with_hint("the proxy rolled the transaction back on every shard; send ROLLBACK")
        };
        let ends = |c: Option<Control>| c.is_some_and(Control::ends);
        match frame.tag {
            b'Q' => {
                let stmts = split_statements(query_text(frame.body()));
                if stmts.len() == 1 && ends(control(stmts[0])) {
                    protocol::command_complete(&mut self.to_client, "ROLLBACK");
                    self.end_failed();
                } else if stmts.is_empty() {
                    self.to_client.extend_from_slice(&empty_message(b'I'));
                } else {
                    aborted().encode(&mut self.to_client);
                }
                self.ready_for_client(self.txn.status());
                Step::Handled
            }
            b'P' => {
                let Some(p) = parse_body(frame.body()) else {
                    return Step::Refuse(aborted());
                };
                let c = control(p.query);
                if !ends(c) {
                    return Step::Refuse(aborted());
                }
                if p.name.is_empty() {
                    self.routing.guard.unnamed = c;
                } else {
                    let stmt = self.state.statements.get_or_insert(p.rest);
                    self.client.named.insert(p.name.to_string(), stmt);
                }
                self.to_client.extend_from_slice(&empty_message(b'1'));
                Step::Handled
            }
            b'B' => {
                let c = self.bound_control(frame.body());
                if !ends(c) {
                    return Step::Refuse(aborted());
                }
                self.routing.guard.portal = c;
                self.to_client.extend_from_slice(&empty_message(b'2'));
                Step::Handled
            }
            b'D' => {
                if frame.body().first() == Some(&b'S') {
                    // ParameterDescription with no parameters.
                    self.to_client.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                }
                self.to_client.extend_from_slice(&empty_message(b'n'));
                Step::Handled
            }
            b'E' => {
                if !ends(self.routing.guard.portal.take()) {
                    return Step::Refuse(aborted());
                }
                protocol::command_complete(&mut self.to_client, "ROLLBACK");
                self.end_failed();
                Step::Handled
            }
            b'C' => {
                self.to_client.extend_from_slice(&empty_message(b'3'));
                Step::Handled
            }
            b'S' => {
                self.ready_for_client(self.txn.status());
                Step::Handled
            }
            b'F' => Step::Refuse(aborted()),
            _ => Step::Handled,
        }
    }

    fn end_failed(&mut self) {
        self.routing.guard = Default::default();
        self.txn = Txn::Idle;
    }
}

/// What a statement in a failed transaction gets, as from Postgres.
pub(in crate::session::query_loop) fn aborted_transaction() -> PgError {
    PgError::error(
        sqlstate::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

#[cfg(test)]
mod tests;
