//! Checking out a server connection for what a statement needs (a replica by the balancing
//! policy when one qualifies, else the primary), preparing it for the client (settings, a
//! deferred BEGIN), and read-your-writes after a transaction that wrote.

use std::time::{Duration, Instant};

use super::super::statements::inject_query;
use super::super::{Loop, CLEANUP_TIMEOUT};
use super::Want;
use crate::config::{ReadYourWrites, Role};
use crate::health::{now_ms, parse_lsn};
use crate::pool::{Balance, Checkout, PoolError, ReadPolicy};
use crate::protocol::{sqlstate, PgError};
use crate::shard::ShardId;

/// How often a write waiting for a primary looks again.
const PRIMARY_POLL: Duration = Duration::from_millis(20);

/// The error a client gets when no server connection could be checked out.
fn pool_error(e: PoolError) -> PgError {
    match e {
        PoolError::Timeout(_) => PgError::error(sqlstate::TOO_MANY_CONNECTIONS, e.to_string())
            .with_hint("all server connections stayed busy; retry, or raise pool.size"),
        PoolError::Connect(e) => PgError::error(
            sqlstate::CANNOT_CONNECT,
            format!("could not connect to server: {e}"),
        ),
        PoolError::Stale => PgError::error(sqlstate::CANNOT_CONNECT, e.to_string()),
    }
}

impl Loop<'_> {
    /// Checks out a server for `want` and prepares it for the client's next message.
    pub(in crate::session::query_loop) async fn checkout(
        &mut self,
        want: Want,
        shard: ShardId,
    ) -> Result<(), PgError> {
        if let Some(conn) = self.unpark(shard) {
            self.install(conn, shard, true);
            return Ok(());
        }
        // A transaction pinned to its shard by a savepoint fails here (twophase.rs).
        self.may_join(shard).await?;
        let (conn, on_primary) = self.acquire(want, shard).await?;
        self.routing.shard = shard;
        self.cancel_to(std::slice::from_ref(&conn));
        self.relay.reset();
        self.unsynced = false;
        tracing::trace!(client = self.login.cancel_pid, pid = conn.pid, server = %conn.addr, "checkout");
        self.server = Some(conn);
        self.routing.on_primary = on_primary;
        self.routing.retry.checked_out(
            self.login.split && want != Want::Primary && self.state.config.routing.retry_reads,
        );
        self.apply_settings();
        // The held-back BEGIN, or the open transaction's for one more shard (none outside a
        // transaction, or for a batch outside the deferred one).
        let deferred = self.txn.held_begin().is_some();
        if let Some(begin) = self.txn.on_checkout() {
            let sql = if deferred {
                begin
            } else {
                self.begin_sql(&begin)
            };
            inject_query(&sql, &mut self.relay, &mut self.to_server);
        }
        Ok(())
    }

    /// When the client's current request arrived (`health::now_ms`; no clock read).
    fn request_ms(&self) -> u64 {
        (self.login.cancel.request_ms).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `c`, marked as this client's since its request (`SHOW SERVERS`).
    fn linked(&self, c: Checkout) -> Checkout {
        use std::sync::atomic::Ordering::Relaxed;
        c.info.client.store(self.login.cancel_pid, Relaxed);
        let since = self.login.cancel.request_ms.load(Relaxed);
        c.info.request_ms.store(since, Relaxed);
        c
    }

    /// A server connection for `want`: a replica by the balancing policy when one qualifies,
    /// else the primary (waiting up to the checkout timeout while no primary is known).
    pub(in crate::session::query_loop) async fn acquire(
        &self,
        want: Want,
        shard: ShardId,
    ) -> Result<(Checkout, bool), PgError> {
        let shard_id = shard;
        let Some(shard) = self.login.shards.get(shard.index()) else {
            return Err(PgError::error(sqlstate::INTERNAL_ERROR, "no such shard"));
        };
        // A checkout waits from the request that needs it (no clock read).
        let _waiting = Waiting::mark(&self.login.cancel);
        if self.state.controls.paused(self.login.database()) && self.starts_transaction() {
            let timeout = self.state.config.proxy.pause_timeout_ms;
            (self.state.controls)
                .wait_resumed(self.login.database(), timeout)
                .await?;
        }
        let r = &self.state.config.routing;
        if want != Want::Primary && self.login.split {
            let ryw = want == Want::Read;
            let primary_only = ryw && now_ms() < self.routing.primary_until;
            let mut avoid = self.routing.retry.avoid().to_vec();
            while !primary_only && avoid.len() <= shard.servers.len() {
                let policy = ReadPolicy {
                    balance: Balance::parse(&r.load_balancing),
                    include_primary: r.include_primary,
                    max_lag_ms: r.max_replica_lag_ms,
                    min_lsn: if ryw && r.read_your_writes == ReadYourWrites::Lsn {
                        self.routing.floors.get(shard_id)
                    } else {
                        0
                    },
                    avoid: &avoid,
                };
                let Some(pool) = shard.reader(&policy) else {
                    break;
                };
                match pool.get_at(self.request_ms(), true).await {
                    Ok(c) => return Ok((self.linked(c), pool.health.is_primary())),
                    Err(PoolError::Connect(e)) => {
                        pool.health.ban(r.ban_time_ms, "connect failed");
                        tracing::warn!(server = %pool.addr(), error = %e, "read goes elsewhere");
                        avoid.push(pool.addr().to_string());
                    }
                    Err(PoolError::Stale) => {
                        tracing::warn!(server = %pool.addr(), "an idle connection went stale; the read goes elsewhere");
                        avoid.push(pool.addr().to_string());
                    }
                    Err(e) => return Err(pool_error(e)),
                }
            }
        }
        // While no server answers as the primary (a failover of `auto` servers), wait for
        // the health checker to find the new one.
        let deadline = Instant::now() + Duration::from_millis(r.failover_hold_ms);
        loop {
            if let Some(pool) = shard.primary() {
                let got = match pool.health.declared {
                    // A server of role `auto` that stops being the primary while the checkout
                    // waits (a connect to a server shutting down can hang until its timeout)
                    // is given up on: the loop looks for the new primary.
                    // Boxed: its timer would make every checkout's future bigger.
                    Role::Auto => Box::pin(get_unless_lost(pool, self.request_ms())).await,
                    _ => Some(pool.get_at(self.request_ms(), false).await),
                };
                let Some(got) = got else {
                    tracing::warn!(server = %pool.addr(), "the primary went away during a checkout");
                    continue;
                };
                match got {
                    Ok(c) => return Ok((self.linked(c), true)),
                    Err(PoolError::Connect(e))
                        if pool.health.declared == Role::Auto && Instant::now() < deadline =>
                    {
                        // Maybe a failover: wait for the health checker to find the primary.
                        tracing::warn!(server = %pool.addr(), error = %e, "primary unreachable");
                        pool.health.mark_down();
                    }
                    Err(e) => return Err(pool_error(e)),
                }
            } else if Instant::now() >= deadline {
                return Err(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!(
                        "no primary server is available for database \"{}\" (shard {})",
                        self.login.database(),
                        shard.name
                    ),
                )
                .with_hint(
                    "no server of the shard answered as a primary within \
                     routing.failover_hold_ms; the health checker is still looking",
                ));
            }
            tokio::time::sleep(PRIMARY_POLL).await;
        }
    }

    /// The client wrote on `shards` through a path that learns no WAL position (a statement
    /// on several shards, a shard left by a transaction that wrote): its reads there must
    /// still see those writes.
    pub(in crate::session::query_loop) fn wrote_on(&mut self, shards: &[ShardId]) {
        if !self.login.split {
            return;
        }
        let r = &self.state.config.routing;
        match r.read_your_writes {
            ReadYourWrites::Off => {}
            ReadYourWrites::PrimaryForMs => {
                self.routing.primary_until = now_ms() + r.read_your_writes_ms;
            }
            ReadYourWrites::Lsn => shards.iter().for_each(|s| self.routing.floors.unknown(*s)),
        }
    }

    /// Whether a checkout now starts a transaction on the servers (a paused database holds
    /// it): the client holds no server connection and has no transaction open on one (a
    /// held-back BEGIN has not reached a server yet). A transaction in flight goes on, so
    /// that the pause that waits for it ends.
    fn starts_transaction(&self) -> bool {
        self.server.is_none()
            && self.routing.parked.is_empty()
            && (self.txn.status() == crate::protocol::TxStatus::Idle
                || self.txn.held_begin().is_some())
    }

    /// After a transaction that wrote on the primary, notes what the client's next reads
    /// must see.
    pub(in crate::session::query_loop) async fn note_write(&mut self) {
        if !(self.login.split && self.routing.wrote && self.routing.on_primary) {
            return;
        }
        let r = &self.state.config.routing;
        let window = now_ms() + r.read_your_writes_ms;
        match r.read_your_writes {
            ReadYourWrites::Off => {}
            ReadYourWrites::PrimaryForMs => self.routing.primary_until = window,
            ReadYourWrites::Lsn => {
                let Some(conn) = self.server.as_deref_mut() else {
                    return;
                };
                // The insert position covers the commit record even when
                // synchronous_commit = off returns before the WAL is written.
                let sql = "SELECT pg_current_wal_insert_lsn()::text";
                match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_row(sql)).await {
                    Ok(Ok(v)) => match v.first().and_then(|s| parse_lsn(s)) {
                        Some(lsn) => self.routing.floors.raise(self.routing.shard, lsn),
                        None => self.routing.primary_until = window,
                    },
                    _ => {
                        conn.broken = true;
                        self.routing.primary_until = window;
                    }
                }
            }
        }
    }
}

/// A checkout of `pool`, unless the health checker stops taking its server for the primary
/// first (`None`).
async fn get_unless_lost(
    pool: &crate::pool::ServerPool,
    request_ms: u64,
) -> Option<Result<Checkout, PoolError>> {
    tokio::select! {
        r = pool.get_at(request_ms, false) => Some(r),
        () = lost_primary(&pool.health) => None,
    }
}

/// Completes when the health checker no longer takes `health` for the primary.
async fn lost_primary(health: &crate::health::ServerHealth) {
    while health.is_primary() {
        tokio::time::sleep(PRIMARY_POLL).await;
    }
}

/// Marks a client as waiting for a server connection (`SHOW CLIENTS`) while it lives.
struct Waiting<'a>(&'a crate::state::Cancel);

impl<'a> Waiting<'a> {
    fn mark(c: &'a crate::state::Cancel) -> Waiting<'a> {
        let since = c.request_ms.load(std::sync::atomic::Ordering::Relaxed);
        c.waiting_since_ms
            .store(since.max(1), std::sync::atomic::Ordering::Relaxed);
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting_since_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}
