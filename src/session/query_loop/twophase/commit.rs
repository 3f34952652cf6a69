//! The commit of a transaction across shards: two-phase commit with a decision log on the
//! coordinator (see the `twophase` module for the protocol), or a plain COMMIT/ROLLBACK on
//! each participant when there is nothing to make atomic.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::super::fanout_stream::ShardConns;
use super::super::routing::Want;
use super::super::{lock, Loop};
use crate::admin::events::Events;
use crate::backend::BackendError;
use crate::pool::Checkout;
use crate::protocol::{sqlstate, PgError, TxStatus};
use crate::session::machine::commit::{Commit, Finish, Outcome, STEP_PATIENCE};
use crate::shard::recovery::{self, gid};
use crate::shard::ShardId;
use crate::sql::Kind;

/// How long the commit phase keeps trying one participant's COMMIT PREPARED (and a failed
/// prepare phase its coordinator's ROLLBACK PREPARED), reconnecting as needed.
const FINISH_FOR: Duration = Duration::from_secs(10);
/// Bound on one server round trip of the commit protocol (also the rounds the stream
/// driver runs).
const STEP_TIMEOUT: Duration = STEP_PATIENCE;
/// Longest pause at the `pause_after_prepare` failpoint.
const PAUSE_MAX: Duration = Duration::from_secs(120);

/// Shards (server address and database) where the decision log table is known to exist.
static LOG_READY: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Why a commit across shards did not succeed.
pub(in crate::session::query_loop) enum CommitError {
    /// Tell the client; the transaction is rolled back everywhere.
    Client(PgError),
    /// The `after_prepare` failpoint: die as if the proxy crashed.
    Crash,
}

/// A WARNING notice for the client about a commit that recovery completes.
fn notice(message: String) -> BytesMut {
    let mut b = BytesMut::new();
    PgError {
        severity: "WARNING",
        code: sqlstate::WARNING,
        message,
        hint: Some("the commit is decided; shardgate's recovery completes it".into()),
    }
    .encode(&mut b);
    b[0] = b'N';
    b
}

/// The participants of a commit: their shards (ascending, the coordinator first) and
/// connections, in the same order.
struct Participants {
    shards: Vec<ShardId>,
    conns: Vec<Checkout>,
}

impl Participants {
    /// Participant `i`'s connection, unless it is closed.
    fn conn(&mut self, i: usize) -> Option<&mut Checkout> {
        self.conns.get_mut(i).filter(|c| !c.broken)
    }
}

/// A server error of the commit protocol as the client's error.
fn failed_at_commit(why: &str) -> CommitError {
    CommitError::Client(PgError::error(
        sqlstate::TRANSACTION_ROLLBACK,
        format!("transaction failed at COMMIT: {why}"),
    ))
}

impl Loop<'_> {
    /// Commits a transaction that ran on several shards (or rolls it back if it failed).
    /// Returns the CommandComplete tag for the client (a WARNING notice may precede it in
    /// `to_client`). The protocol's rounds run through the stream driver
    /// ([`Commit`]); what its connections could not finish is finished here on fresh ones.
    pub(in crate::session::query_loop) async fn commit_all(
        &mut self,
    ) -> Result<&'static str, CommitError> {
        let mut on = self.take_participants();
        let aborted = self.txn.status() == TxStatus::Failed;
        // A READ ONLY transaction (its BEGIN goes to every shard) has nothing to make atomic.
        let begin = self.txn.further_begin();
        let read_only = matches!(self.facts_of(&begin).kind, Kind::Begin { read_only: true });
        loop {
            if aborted || on.conns.len() <= 1 || read_only {
                let machine = Commit::one_phase(on.conns.len(), !aborted);
                let (machine, _) = self.run_commit(on, machine).await?;
                return match machine.outcome() {
                    Outcome::Ended { error: Some(e) } if !aborted => Err(failed_at_commit(&e.why)),
                    _ => Ok(if aborted { "ROLLBACK" } else { "COMMIT" }),
                };
            }
            let mask = on
                .shards
                .iter()
                .fold(0u64, |m, s| m | (1u64 << (s.index() as u64 % 64)));
            let id: u64 = rand::random();
            let coord = on.shards[0];
            let coord_addr = on.conns[0].addr.clone();
            if let Err(e) = self.ensure_log(coord, &coord_addr).await {
                return Err(self.roll_back_without_log(on, e).await);
            }
            // Phase one. The coordinator records the decision inside its own transaction.
            let gids = on.shards.iter().map(|s| gid(id, mask, *s)).collect();
            let machine = Commit::two_phase(
                gids,
                recovery::log_insert(id, mask),
                recovery::log_delete(id, mask),
            );
            let (mut machine, mut back) = self.run_commit(on, machine).await?;
            match machine.outcome().clone() {
                Outcome::Prepared => {}
                Outcome::CoordinatorReadOnly => {
                    // The coordinator's part is READ ONLY (SET TRANSACTION READ ONLY on that
                    // shard): it had nothing to commit and is rolled back. The others go on
                    // without it.
                    back.shards.remove(0);
                    back.conns.remove(0);
                    on = back;
                    continue;
                }
                Outcome::RolledBack {
                    refusal,
                    coordinator,
                } => {
                    if refusal.at == 0 && refusal.code == sqlstate::UNDEFINED_TABLE {
                        self.forget_log(&coord_addr);
                    }
                    let msg = format!(
                        "shard {}: {}",
                        self.shard_name(back.shards[refusal.at]),
                        refusal.why
                    );
                    return self.after_roll_back(back, coordinator, id, mask, msg).await;
                }
                other => return Err(self.lost_commit(&format!("{other:?}"))),
            }
            let log_key = recovery::txn_name(id, mask);
            if self.failpoint_after_prepare(&log_key).await {
                back.conns.iter_mut().for_each(|c| c.broken = true);
                return Err(CommitError::Crash);
            }
            // Phase two: the outcome is commit.
            Events::count(&self.state.events.two_phase_commits);
            machine.commit();
            let (machine, back) = self.run_commit(back, machine).await?;
            if let Outcome::Committed {
                unfinished,
                log_deleted,
            } = machine.outcome().clone()
            {
                self.after_commit(back, unfinished, log_deleted, id, mask, coord)
                    .await;
            }
            return Ok("COMMIT");
        }
    }

    /// Takes every connection of the transaction (the parked ones and the current one), in
    /// ascending shard order, for the commit protocol.
    fn take_participants(&mut self) -> Participants {
        let mut conns = std::mem::take(&mut self.routing.parked);
        if let Some(c) = self.server.take() {
            conns.push((self.routing.shard, c));
        }
        if self.client.opaque || self.client.wrote || !self.client.dirty.is_empty() {
            // No read-back here: whatever a statement set is reset before reuse (a statement
            // that names a setting is refused in a transaction across shards; see guard.rs).
            conns
                .iter_mut()
                .for_each(|(_, c)| c.settings_unknown = true);
        }
        lock(&self.login.cancel.slot).clear();
        self.relay.reset();
        conns.sort_by_key(|(s, _)| *s);
        let (shards, conns) = conns.into_iter().unzip();
        Participants { shards, conns }
    }

    /// Runs `machine`'s rounds on the participants through the stream driver (no cancel
    /// reaches them, and a client that leaves does not stop them).
    async fn run_commit(
        &mut self,
        on: Participants,
        machine: Commit,
    ) -> Result<(Commit, Participants), CommitError> {
        let Participants { shards, conns } = on;
        let outgoing = vec![bytes::Bytes::new(); conns.len()];
        let stream = ShardConns::new(&shards, conns, false);
        match self.run_stream(stream, outgoing, machine, &[]).await {
            Ok((machine, conns)) => Ok((machine, Participants { shards, conns })),
            Err(e) => Err(self.lost_commit(&e.message)),
        }
    }

    /// The commit protocol could not be carried out on its connections (they are closed):
    /// what became of the transaction is recovery's to settle.
    fn lost_commit(&self, why: &str) -> CommitError {
        tracing::warn!(error = %why, "two-phase commit stopped; left to recovery");
        CommitError::Client(
            PgError::error(
                sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                format!("transaction resolution unknown: the commit stopped ({why})"),
            )
            .with_hint("recovery commits or rolls back every shard alike; check the rows later"),
        )
    }

    /// The decision log table could not be created on the coordinator: rolls back every
    /// participant; the error for the client.
    async fn roll_back_without_log(&mut self, on: Participants, e: String) -> CommitError {
        let coord = on.shards[0];
        let machine = Commit::one_phase(on.conns.len(), false);
        if let Err(e) = self.run_commit(on, machine).await {
            return e;
        }
        CommitError::Client(
            PgError::error(
                sqlstate::TRANSACTION_ROLLBACK,
                format!(
                    "transaction rolled back: could not create the two-phase commit log \
                     {} on shard {}: {e}",
                    recovery::LOG_TABLE,
                    self.shard_name(coord)
                ),
            )
            .with_hint("the proxy's server user needs CREATE on schema public of each shard"),
        )
    }

    /// Phase two is over: finishes on fresh connections the parts whose COMMIT PREPARED did
    /// not run (`unfinished`), deletes the log row if every part committed, or warns the
    /// client that recovery completes the commit.
    async fn after_commit(
        &mut self,
        mut on: Participants,
        unfinished: Vec<(usize, String)>,
        log_deleted: bool,
        id: u64,
        mask: u64,
        coord: ShardId,
    ) {
        let mut pending = Vec::new();
        for (i, why) in unfinished {
            let s = on.shards[i];
            let name = gid(id, mask, s);
            tracing::debug!(gid = %name, error = %why, "COMMIT PREPARED failed; trying again");
            let sql = format!("COMMIT PREPARED '{name}'");
            let conn = on.conn(i);
            if let Err(e) = self.finish_part(s, conn, &sql).await {
                tracing::warn!(gid = %name, error = %e, "COMMIT PREPARED failed; left to recovery");
                pending.push(format!("shard {}: {e}", self.shard_name(s)));
            }
        }
        let log_key = recovery::txn_name(id, mask);
        if !pending.is_empty() {
            Events::count(&self.state.events.two_phase_left_to_recovery);
            let warning = notice(format!(
                "transaction {log_key} is committed, but not yet on every shard ({}); \
                 recovery completes it within about 30 s",
                pending.join("; ")
            ));
            self.to_client.extend_from_slice(&warning);
            return;
        }
        if log_deleted {
            return;
        }
        // Every participant committed: the log row has done its job.
        let del = recovery::log_delete(id, mask);
        let mut deleted = false;
        if let Some(c) = on.conn(0) {
            deleted = matches!(run_step(c, &del).await, Some(Ok(_)));
        }
        if !deleted {
            // The coordinator's connection died on the way: one try on a fresh one.
            if let Ok((mut c, _)) = self.acquire(Want::Primary, coord).await {
                deleted = matches!(run_step(&mut c, &del).await, Some(Ok(_)));
            }
        }
        if !deleted {
            tracing::debug!(gid = %log_key, "log row left to recovery");
        }
    }

    /// The prepare phase failed (`msg`) and every part was rolled back on its connection,
    /// the coordinator's as `coordinator` says. The coordinator's part must be gone before the
    /// client hears "rolled back" (a part whose PREPARE answer was lost may be prepared after
    /// all, and recovery commits a transaction whose participants are all prepared while its
    /// coordinator is).
    async fn after_roll_back(
        &mut self,
        mut on: Participants,
        coordinator: Finish,
        id: u64,
        mask: u64,
        msg: String,
    ) -> Result<&'static str, CommitError> {
        let coord = on.shards[0];
        let outcome = match coordinator {
            Finish::Done => Ok(()),
            Finish::Missing => Err(self.logged(coord).await),
            Finish::Unfinished(_) => {
                let sql = format!("ROLLBACK PREPARED '{}'", gid(id, mask, coord));
                let conn = on.conn(0);
                match self.finish_part(coord, conn, &sql).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.logged(coord).await),
                    Err(e) => Err(Err(e)),
                }
            }
        };
        let rolled_back = || {
            Events::count(&self.state.events.two_phase_aborts);
            CommitError::Client(
                PgError::error(
                    sqlstate::TRANSACTION_ROLLBACK,
                    format!("transaction rolled back: could not prepare it on {msg}"),
                )
                .with_hint("no shard committed any of its changes"),
            )
        };
        match outcome {
            Ok(()) => Err(rolled_back()),
            // Recovery found every part prepared and committed it.
            Err(Ok(logged)) if logged.contains(&recovery::txn_name(id, mask)) => Ok("COMMIT"),
            Err(Ok(_)) => Err(rolled_back()),
            Err(Err(e)) => Err(CommitError::Client(
                PgError::error(
                    sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
                    format!(
                        "transaction resolution unknown: the prepare phase failed ({msg}) and \
                         the coordinator shard {} could not be reached to roll back ({e})",
                        self.shard_name(coord)
                    ),
                )
                .with_hint(
                    "recovery commits or rolls back every shard alike; check the rows later",
                ),
            )),
        }
    }

    /// Runs `sql` (COMMIT or ROLLBACK PREPARED) for a participant until its server answers:
    /// on `conn` first, then on fresh connections, for up to [`FINISH_FOR`]. `Ok(true)`:
    /// done; `Ok(false)`: no such prepared transaction (42704); `Err`: no answer in time.
    async fn finish_part(
        &self,
        shard: ShardId,
        mut conn: Option<&mut Checkout>,
        sql: &str,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + FINISH_FOR;
        let mut delay = Duration::from_millis(20);
        let mut last = String::new();
        loop {
            let answer = match conn.take() {
                Some(c) if !c.broken => run_step(c, sql).await,
                _ => match self.acquire(Want::Primary, shard).await {
                    Ok((mut c, _)) => run_step(&mut c, sql).await,
                    Err(e) => {
                        last = e.message;
                        None
                    }
                },
            };
            match answer {
                Some(Ok(_)) => return Ok(true),
                Some(Err(BackendError::Server { code, .. }))
                    if code == sqlstate::UNDEFINED_OBJECT =>
                {
                    return Ok(false)
                }
                Some(Err(e)) => last = e.to_string(),
                None if last.is_empty() => last = "timed out".into(),
                None => {}
            }
            if Instant::now() + delay > deadline {
                return Err(last);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Makes sure the decision log table exists on `shard` (once per process and server),
    /// on a connection of its own outside the client's transaction.
    async fn ensure_log(&mut self, shard: ShardId, addr: &str) -> Result<(), String> {
        let key = format!("{addr}/{}", self.login.database());
        let known = |k: &str| {
            LOG_READY
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|s| s.contains(k))
        };
        if known(&key) {
            return Ok(());
        }
        // On a connection of its own, outside the pool: the transaction may hold every pooled
        // connection of the coordinator (`[pool] size = 1`), and the table must be committed
        // before the PREPARE that writes the decision into it.
        let pool = self
            .login
            .shards
            .get(shard.index())
            .and_then(|s| s.servers.iter().find(|p| p.addr() == addr))
            .ok_or_else(|| format!("no pool for {addr}"))?;
        let mut c = tokio::time::timeout(STEP_TIMEOUT, pool.connect_unpooled())
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(STEP_TIMEOUT, c.run(recovery::CREATE_LOG)).await {
            Ok(Ok(_)) => {}
            Ok(Err(BackendError::Server { code, .. })) if recovery::is_create_race(&code) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        }
        LOG_READY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(key);
        Ok(())
    }

    /// Forgets that the log table exists on a server (an INSERT into it failed).
    fn forget_log(&self, addr: &str) {
        let key = format!("{addr}/{}", self.login.database());
        if let Some(s) = LOG_READY.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            s.remove(&key);
        }
    }

    /// The failpoints: `after_prepare` dies as if the proxy crashed once every participant
    /// prepared; `pause_after_prepare=PATH` creates the file PATH there (holding the
    /// transaction's log key) and waits while it exists (tests kill things meanwhile).
    async fn failpoint_after_prepare(&self, name: &str) -> bool {
        let points = &self.state.config.proxy.failpoints;
        for f in points {
            if let Some(path) = f.strip_prefix("pause_after_prepare=") {
                if std::fs::write(path, name).is_ok() {
                    tracing::warn!(path, "failpoint pause_after_prepare: paused");
                    let start = Instant::now();
                    while std::path::Path::new(path).exists() && start.elapsed() < PAUSE_MAX {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        points.iter().any(|f| f == "after_prepare")
    }

    /// The log keys recorded on `shard` (a fresh connection).
    async fn logged(&mut self, shard: ShardId) -> Result<Vec<String>, String> {
        let (mut c, _) = self
            .acquire(Want::Primary, shard)
            .await
            .map_err(|e| e.message)?;
        let sql = format!(
            "SELECT coalesce(string_agg(gid, ','), '') FROM {}",
            recovery::LOG_TABLE
        );
        match tokio::time::timeout(STEP_TIMEOUT, c.query_row(&sql)).await {
            Ok(Ok(v)) => Ok(v
                .first()
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()),
            Ok(Err(e)) => {
                c.broken = true;
                Err(e.to_string())
            }
            Err(_) => {
                c.broken = true;
                Err("timed out".into())
            }
        }
    }
}

/// One round trip of the commit protocol, bounded by [`STEP_TIMEOUT`]; `None` when it timed
/// out. A connection whose round trip did not end in an answer is marked broken.
async fn run_step(c: &mut Checkout, sql: &str) -> Option<Result<TxStatus, BackendError>> {
    let r = tokio::time::timeout(STEP_TIMEOUT, c.run(sql)).await.ok();
    if !matches!(r, Some(Ok(_)) | Some(Err(BackendError::Server { .. }))) {
        c.broken = true;
    }
    r
}
