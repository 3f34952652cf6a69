//! Server input in the query loop: forwards what the server sent through the relay, reacts
//! to each ReadyForQuery and to what the relay noticed on the way (failed Parses, injected
//! queries, stale plans, reported settings), and returns the server connection to the pool
//! once the client's transaction is over.

use std::sync::Arc;

use super::routing::ReadHold;
use super::{lock, End, Loop, CLEANUP_TIMEOUT};
use crate::config::PoolMode;
use crate::protocol::TxStatus;
use crate::session::client_state::{
    read_all_settings_sql, read_back_sql, reported_not_settable, settings_from_rows,
};
use crate::session::machine::ready::{at_ready, AtReady, Ready, Releasable};
use crate::session::machine::txn::Txn;
use crate::session::relay::Event;

impl Loop<'_> {
    /// Forwards what the server sent through the relay, handling each ReadyForQuery.
    pub(super) async fn handle_server_input(&mut self) -> Option<End> {
        let statement_mode = self.login.pool_mode == PoolMode::Statement;
        match self.read_hold() {
            ReadHold::Go => {}
            ReadHold::Wait => return None,
            ReadHold::Dying => {
                return self.retry_elsewhere("server terminated the connection", true)
            }
            ReadHold::Refused => {
                return self
                    .retry_elsewhere("the replica refused the read (retry-safe error)", false)
            }
        }
        // The server's own status after the last ReadyForQuery of this input (the client may
        // be shown another one, see `on_ready`).
        let mut server_status = None;
        // The relay stops after each ReadyForQuery for the client, which `on_ready` writes.
        loop {
            let conn = self.server.as_deref_mut()?;
            let before = self.to_client.len();
            if let Err(e) =
                self.relay
                    .process(&mut conn.inbuf, &mut self.to_client, &mut self.events)
            {
                return Some(self.server_lost(&format!("invalid data from server: {e}")));
            }
            let events = std::mem::take(&mut self.events);
            let mut ready = false;
            for ev in &events {
                match ev {
                    // Without a server connection left, the rest of the input is not looked at.
                    Event::Ready(status) => {
                        ready = true;
                        server_status = Some(self.on_ready(*status, statement_mode).await?);
                    }
                    other => self.note_server_event(other),
                }
            }
            if self.to_client.len() > before {
                self.routing.retry.answered();
            }
            self.events = events;
            self.events.clear();
            let more = self.server.as_deref().is_some_and(|c| !c.inbuf.is_empty());
            if !ready || !(more || self.relay.synthetic_due()) {
                break;
            }
        }
        if let (Some(status), Some(conn)) = (server_status, self.server.as_deref_mut()) {
            conn.at_rest = status == TxStatus::Idle
                && self.relay.idle()
                && !self.unsynced
                && self.to_server.is_empty()
                && conn.inbuf.is_empty();
        }
        if self.releasable() {
            self.release().await;
        }
        None
    }

    /// Handles the server's ReadyForQuery for the client and writes the one the client sees:
    /// the server's status, or the client's own where it differs (a Parse/Describe batch
    /// outside the client's deferred transaction is still inside it for the client; the end
    /// of a batch whose transaction control was refused fails the transaction everywhere; a
    /// transaction opened in statement mode is undone and refused). Returns the server's own
    /// status after it; None if the server connection is gone.
    async fn on_ready(&mut self, status: TxStatus, statement_mode: bool) -> Option<TxStatus> {
        let outside = self.txn.outside();
        self.txn.on_server_ready(status);
        if status == TxStatus::Idle && std::mem::take(&mut self.client.ddl) {
            // The schema changed: statements prepared from now on are new ones.
            self.state.statements.bump_generation();
        }
        let at = AtReady {
            status,
            settled: self.relay.idle(),
            abort_at_ready: self.routing.guard.abort_at_ready,
            outside_deferred: outside,
            statement_mode,
        };
        match at_ready(at) {
            // A Parse/Describe batch while the client's BEGIN waits leaves the client in its
            // transaction: `txn` says so.
            Ready::Pass | Ready::StillInTransaction => {
                self.ready_for_client(self.txn.status());
            }
            Ready::AbortRefusedBatch => {
                // The end of a batch in which transaction control was refused
                // (twophase.rs): the transaction fails everywhere.
                self.abort_refused_batch().await;
                self.ready_for_client(self.txn.status());
            }
            Ready::UndoTransaction => {
                // The client opened a transaction: undo it instead of pinning the
                // connection, and answer with the refusal and `I`.
                self.txn = Txn::Idle;
                self.refuse_transaction();
                let conn = self.server.as_deref_mut()?;
                let undone = tokio::time::timeout(CLEANUP_TIMEOUT, conn.run("ROLLBACK")).await;
                let server_status = match undone {
                    Ok(Ok(TxStatus::Idle)) => TxStatus::Idle,
                    _ => {
                        conn.broken = true;
                        status
                    }
                };
                return Some(server_status);
            }
        }
        Some(status)
    }

    /// Reacts to what the relay noticed in the server's input other than a ReadyForQuery
    /// (see `on_ready`).
    fn note_server_event(&mut self, ev: &Event) {
        match ev {
            Event::Ready(_) => {}
            // The proxy's own query ran: the client's request may run from now on.
            Event::ProxyReady => self.routing.retry.setup_answered(),
            Event::ParseFailed { stmt, client_name } => {
                if let Some(conn) = self.server.as_deref_mut() {
                    conn.prepared.pop(&stmt.id);
                }
                if let Some(n) = client_name {
                    if self
                        .client
                        .named
                        .get(n)
                        .is_some_and(|s| Arc::ptr_eq(s, stmt))
                    {
                        self.client.named.remove(n);
                    }
                }
            }
            Event::InjectedFailed(what) => {
                // The connection's state is not what the proxy believes (e.g. the client's
                // settings were not applied): it must never be reused.
                tracing::warn!(user = %self.login.user(), "{what} query failed on the server; the server connection will be closed");
                if let Some(conn) = self.server.as_deref_mut() {
                    conn.broken = true;
                }
            }
            Event::StalePlan => {
                // Statements prepared on this connection no longer match the schema (DDL
                // the proxy did not see): new Parses get new statements, and this
                // connection (with its stale statements) is closed at release.
                self.state.statements.bump_generation();
                if let Some(conn) = self.server.as_deref_mut() {
                    conn.broken = true;
                }
            }
            Event::ParameterStatus(name) => match name {
                // A reported setting changed (by a trigger, a function, ...): read it back.
                Some(n) if reported_not_settable(n) => {}
                Some(n) if crate::sql::scan::is_setting_name(n) => {
                    self.client.dirty.insert(n.to_ascii_lowercase());
                }
                _ => self.client.opaque = true,
            },
        }
    }

    /// At the end of a transaction, reads back the settings the client changed in it (the
    /// server knows whether they survived a rollback) so they follow the client. After a
    /// transaction that may have changed settings the SQL does not name, reads every setting
    /// of the session and resets the server connection (one round trip either way).
    pub(super) async fn read_back_settings(&mut self) {
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        // After writes (triggers may set something): reset before the next use, in the same
        // write as the next client's settings; no round trip now.
        conn.settings_unknown |= std::mem::take(&mut self.client.wrote);
        if std::mem::take(&mut self.client.opaque) {
            let mut names: Vec<String> = self.client.settings.keys().cloned().collect();
            names.extend(std::mem::take(&mut self.client.dirty));
            let refs: Vec<&String> = names.iter().collect();
            let sql = read_all_settings_sql(&refs);
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_rows(&sql)).await {
                Ok(Ok((rows, TxStatus::Idle))) => {
                    self.client.settings = Arc::new(settings_from_rows(rows));
                    // RESET ALL: the connection is back at its defaults.
                    conn.settings = Default::default();
                    conn.settings_unknown = false;
                }
                _ => {
                    tracing::warn!(user = %self.login.user(), "could not read back session settings; closing the server connection");
                    conn.broken = true;
                }
            }
            return;
        }
        if self.client.dirty.is_empty() {
            return;
        }
        let names: Vec<String> = std::mem::take(&mut self.client.dirty).into_iter().collect();
        let refs: Vec<&String> = names.iter().collect();
        let sql = read_back_sql(&refs);
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_row(&sql)).await {
            Ok(Ok(values)) if values.len() == names.len() => {
                for (k, v) in names.into_iter().zip(values) {
                    Arc::make_mut(&mut conn.settings).insert(k.clone(), v.clone());
                    Arc::make_mut(&mut self.client.settings).insert(k, v);
                }
            }
            _ => {
                tracing::warn!(user = %self.login.user(), "could not read back session settings; closing the server connection");
                conn.broken = true;
            }
        }
    }

    /// Returns the server connection to the pool.
    async fn release(&mut self) {
        // What the client is owed goes out before the round trips below.
        if self.try_flush().is_err() {
            if let Some(c) = self.server.as_deref_mut() {
                c.broken = true;
            }
        }
        if !self.routing.parked.is_empty() {
            // The transaction ended on its current shard (ROLLBACK, or COMMIT after an
            // error): the others roll back too.
            self.release_parked().await;
        }
        self.note_write().await;
        if self.managed {
            self.read_back_settings().await;
        }
        self.routing.released();
        self.txn.released();
        if let Some(mut c) = self.server.take() {
            tracing::trace!(client = self.login.cancel_pid, pid = c.pid, status = %(self.txn.status().byte() as char), "release");
            lock(&self.login.cancel.slot).clear();
            if !c.inbuf.is_empty() {
                // Asynchronous messages after ReadyForQuery belong to this client's session.
                c.broken = true;
            }
            drop(c);
        }
    }

    /// The server connection can go back to the pool now: a managed mode, no pinned session
    /// state, nothing owed or awaiting a Sync, and outside a transaction.
    fn releasable(&self) -> bool {
        Releasable {
            managed: self.managed,
            pinned: self.client.pinned.is_some(),
            settled: self.relay.idle(),
            unsynced: self.unsynced,
            status: self.txn.status(),
            outside_deferred: self.txn.outside(),
        }
        .now()
    }
}
