//! Transactions across shards (`two_phase_commit = true`): the transaction's connection to
//! each shard it touched stays checked out ("parked") while statements run on another
//! shard; COMMIT prepares every participant (PREPARE TRANSACTION, ascending shard order) and
//! only then commits them (COMMIT PREPARED); if any participant cannot prepare, all are
//! rolled back and the client gets an error. No partial commit is reported as success; a
//! crash between the phases is resolved by [`crate::shard::recovery`].

use bytes::BytesMut;

use super::routing::Want;
use super::statements::inject_query;
use super::{lock, Loop};
use crate::pool::Checkout;
use crate::protocol::{self, empty_message, parse_body, PgError};
use crate::shard::recovery::gid;
use crate::state::CancelTarget;

/// Why a commit across shards did not succeed.
pub(super) enum CommitError {
    /// Tell the client; the transaction is rolled back everywhere.
    Client(PgError),
    /// The `after_prepare` failpoint: die as if the proxy crashed.
    Crash,
}

impl Loop<'_> {
    /// Makes `conn` the current server connection of shard `shard`.
    pub(super) fn install(&mut self, conn: Checkout, shard: usize, on_primary: bool) {
        *lock(&self.login.cancel_slot) = Some(CancelTarget {
            addr: conn.addr.clone(),
            pid: conn.pid,
            secret: conn.secret.clone(),
        });
        self.relay.reset();
        self.unsynced = false;
        self.server = Some(conn);
        self.rt.shard = shard;
        self.rt.on_primary = on_primary;
    }

    /// Takes the parked connection of `shard`, if the transaction has one.
    pub(super) fn unpark(&mut self, shard: usize) -> Option<Checkout> {
        let pos = self.rt.parked.iter().position(|(s, _)| *s == shard)?;
        Some(self.rt.parked.remove(pos).1)
    }

    /// Moves an open transaction to `shard`: parks the current connection and continues on
    /// the shard's parked one, or on a new one where the transaction's BEGIN is sent first.
    pub(super) async fn switch_shard(&mut self, want: Want, shard: usize) -> Result<(), PgError> {
        if let Some(conn) = self.server.take() {
            self.rt.parked.push((self.rt.shard, conn));
        }
        *lock(&self.login.cancel_slot) = None;
        if let Some(conn) = self.unpark(shard) {
            self.install(conn, shard, true);
            return Ok(());
        }
        let (conn, on_primary) = self.acquire(want, shard).await?;
        self.install(conn, shard, on_primary);
        self.apply_settings();
        let begin = self.rt.txn_begin.clone().unwrap_or_else(|| "BEGIN".into());
        inject_query(&begin, &mut self.relay, &mut self.sout);
        Ok(())
    }

    /// Commits a transaction that ran on several shards (or rolls it back if it failed).
    /// Returns the CommandComplete tag for the client.
    pub(super) async fn commit_all(&mut self) -> Result<&'static str, CommitError> {
        let mut conns = std::mem::take(&mut self.rt.parked);
        if let Some(c) = self.server.take() {
            conns.push((self.rt.shard, c));
        }
        if self.client.opaque || self.client.wrote {
            // No read-back here: whatever a statement set unseen is reset before reuse.
            conns
                .iter_mut()
                .for_each(|(_, c)| c.settings_unknown = true);
        }
        *lock(&self.login.cancel_slot) = None;
        self.relay.reset();
        conns.sort_by_key(|(s, _)| *s);
        let aborted = self.status == b'E';
        if aborted || conns.len() == 1 {
            let sql = if aborted { "ROLLBACK" } else { "COMMIT" };
            let mut err = None;
            for (_, c) in conns.iter_mut() {
                if let Err(e) = c.run(sql).await {
                    c.broken = true;
                    err.get_or_insert(e);
                }
            }
            return match err {
                Some(e) if !aborted => Err(CommitError::Client(PgError::error(
                    "40000",
                    format!("transaction failed at COMMIT: {e}"),
                ))),
                _ => Ok(if aborted { "ROLLBACK" } else { "COMMIT" }),
            };
        }
        let mask = conns
            .iter()
            .fold(0u64, |m, (s, _)| m | (1u64 << (*s as u64 % 64)));
        let id: u64 = rand::random();
        let mut prepared = Vec::new();
        let mut failure = None;
        for (s, c) in conns.iter_mut() {
            let name = gid(id, mask, *s);
            let mut q = BytesMut::new();
            let _ = postgres_protocol::message::frontend::query(
                &format!("PREPARE TRANSACTION '{name}'"),
                &mut q,
            );
            match c.exchange(&q).await {
                Ok((frames, b'I')) => {
                    let ok = frames
                        .iter()
                        .any(|f| f.tag == b'C' && f.body().starts_with(b"PREPARE TRANSACTION"));
                    let error = frames.iter().find(|f| f.tag == b'E');
                    if ok && error.is_none() {
                        prepared.push(*s);
                        continue;
                    }
                    failure = Some(match error {
                        Some(e) => protocol::error_fields(e.body()).1,
                        None => "the transaction was rolled back".into(),
                    });
                }
                Ok(_) => failure = Some("unexpected transaction state".into()),
                Err(e) => {
                    c.broken = true;
                    failure = Some(e.to_string());
                }
            }
            let shard_name = self.shard_name(*s);
            failure = failure.map(|f| format!("shard {shard_name}: {f}"));
            break;
        }
        if let Some(msg) = failure {
            for (s, c) in conns.iter_mut() {
                let sql = if prepared.contains(s) {
                    format!("ROLLBACK PREPARED '{}'", gid(id, mask, *s))
                } else {
                    "ROLLBACK".to_string()
                };
                if c.run(&sql).await.is_err() {
                    c.broken = true;
                }
            }
            return Err(CommitError::Client(
                PgError::error(
                    "40000",
                    format!("transaction rolled back: could not prepare it on {msg}"),
                )
                .with_hint("no shard committed any of its changes"),
            ));
        }
        if self
            .state
            .config
            .proxy
            .failpoints
            .iter()
            .any(|f| f == "after_prepare")
        {
            for (_, c) in conns.iter_mut() {
                c.broken = true;
            }
            return Err(CommitError::Crash);
        }
        for (s, c) in conns.iter_mut() {
            let name = gid(id, mask, *s);
            if let Err(e) = c.run(&format!("COMMIT PREPARED '{name}'")).await {
                // The decision is commit; recovery finishes what this could not.
                tracing::warn!(gid = %name, error = %e, "COMMIT PREPARED failed; left to recovery");
                c.broken = true;
            }
        }
        Ok("COMMIT")
    }

    fn shard_name(&self, s: usize) -> String {
        self.login
            .shard_map
            .as_ref()
            .and_then(|m| m.names.get(s).cloned())
            .unwrap_or_else(|| s.to_string())
    }

    /// Rolls back and returns the parked connections of a transaction that ended on its
    /// current shard (ROLLBACK, or COMMIT of a failed transaction).
    pub(super) async fn release_parked(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.rt.parked) {
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
                    self.cout.extend_from_slice(&empty_message(b'1'));
                }
                b'B' if !failed => self.cout.extend_from_slice(&empty_message(b'2')),
                b'D' if !failed => {
                    if f.body().first() == Some(&b'S') {
                        // ParameterDescription with no parameters.
                        self.cout.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                    }
                    self.cout.extend_from_slice(&empty_message(b'n'));
                }
                b'E' if !failed => match &result {
                    Ok(tag) => protocol::command_complete(&mut self.cout, tag),
                    Err(e) => {
                        e.encode(&mut self.cout);
                        failed = true;
                    }
                },
                b'C' if !failed => self.cout.extend_from_slice(&empty_message(b'3')),
                b'S' => protocol::ready_for_query(&mut self.cout, self.status),
                _ => {}
            }
        }
    }
}
