//! The commit of a transaction across shards: two-phase commit with a decision log on the
//! coordinator (see the `twophase` module for the protocol), or a plain COMMIT/ROLLBACK on
//! each participant when there is nothing to make atomic.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::super::routing::Want;
use super::super::{lock, Loop};
use crate::backend::BackendError;
use crate::pool::Checkout;
use crate::protocol::{self, sqlstate, PgError, TxStatus};
use crate::shard::recovery::{self, gid};
use crate::shard::ShardId;
use crate::sql::Kind;

/// How long the commit phase keeps trying one participant's COMMIT PREPARED (and a failed
/// prepare phase its coordinator's ROLLBACK PREPARED), reconnecting as needed.
const FINISH_FOR: Duration = Duration::from_secs(10);
/// Bound on one server round trip of the commit protocol.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
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

/// What phase one of the commit found (see `Loop::prepare_all`).
struct PhaseOne {
    /// Shards whose part is prepared.
    prepared: Vec<ShardId>,
    /// Why a participant could not prepare (naming its shard).
    failure: Option<String>,
    /// The coordinator's part is READ ONLY and was ended by its failed log row.
    coord_read_only: bool,
}

/// Why a participant did not prepare: the SQLSTATE of its error (empty when it sent none:
/// an answer that is not a prepared transaction, or a connection that failed or timed out
/// and is closed) and what went wrong.
struct Refusal {
    code: String,
    why: String,
}

impl Refusal {
    fn without_code(why: impl Into<String>) -> Refusal {
        Refusal {
            code: String::new(),
            why: why.into(),
        }
    }
}

/// Sends `sql` (ending in PREPARE TRANSACTION) on `c` and reads its vote.
async fn prepare_one(c: &mut Checkout, sql: &str) -> Result<(), Refusal> {
    let mut q = BytesMut::new();
    let _ = postgres_protocol::message::frontend::query(sql, &mut q);
    let (frames, status) = match tokio::time::timeout(STEP_TIMEOUT, c.exchange(&q)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            c.broken = true;
            return Err(Refusal::without_code(e.to_string()));
        }
        Err(_) => {
            c.broken = true;
            return Err(Refusal::without_code("timed out"));
        }
    };
    let ok = frames
        .iter()
        .any(|f| f.tag == b'C' && f.body().starts_with(b"PREPARE TRANSACTION"));
    // A failed log row stops the query before its PREPARE.
    match frames.iter().find(|f| f.tag == b'E') {
        None if ok && status == TxStatus::Idle => Ok(()),
        Some(e) => {
            let (code, why) = protocol::error_fields(e.body());
            Err(Refusal { code, why })
        }
        None if status != TxStatus::Idle => {
            Err(Refusal::without_code("unexpected transaction state"))
        }
        None => Err(Refusal::without_code("the transaction was rolled back")),
    }
}

/// Ends the transaction on every participant without two-phase commit: ROLLBACK if it failed
/// (`aborted`), else COMMIT (one participant, or a READ ONLY transaction).
async fn end_in_one_phase(
    conns: &mut [(ShardId, Checkout)],
    aborted: bool,
) -> Result<&'static str, CommitError> {
    let sql = if aborted { "ROLLBACK" } else { "COMMIT" };
    let mut err = None;
    for (_, c) in conns.iter_mut() {
        if let Err(e) = c.run(sql).await {
            c.broken = true;
            err.get_or_insert(e);
        }
    }
    match err {
        Some(e) if !aborted => Err(CommitError::Client(PgError::error(
            sqlstate::TRANSACTION_ROLLBACK,
            format!("transaction failed at COMMIT: {e}"),
        ))),
        _ => Ok(if aborted { "ROLLBACK" } else { "COMMIT" }),
    }
}

impl Loop<'_> {
    /// Commits a transaction that ran on several shards (or rolls it back if it failed).
    /// Returns the CommandComplete tag for the client (a WARNING notice may precede it in
    /// `to_client`).
    pub(in crate::session::query_loop) async fn commit_all(
        &mut self,
    ) -> Result<&'static str, CommitError> {
        let mut conns = self.take_participants();
        let aborted = self.txn.status() == TxStatus::Failed;
        // A READ ONLY transaction (its BEGIN goes to every shard) has nothing to make atomic.
        let begin = self.txn.further_begin();
        let read_only = matches!(self.facts_of(&begin).kind, Kind::Begin { read_only: true });
        let (id, mask, coord) = loop {
            if aborted || conns.len() <= 1 || read_only {
                return end_in_one_phase(&mut conns, aborted).await;
            }
            let mask = conns
                .iter()
                .fold(0u64, |m, (s, _)| m | (1u64 << (s.index() as u64 % 64)));
            let id: u64 = rand::random();
            let coord = conns[0].0;
            let coord_addr = conns[0].1.addr.clone();
            if let Err(e) = self.ensure_log(coord, &coord_addr).await {
                return Err(self.roll_back_without_log(&mut conns, coord, e).await);
            }
            // Phase one. The coordinator records the decision inside its own transaction.
            let phase_one = self.prepare_all(&mut conns, id, mask, &coord_addr).await;
            if phase_one.coord_read_only {
                // The coordinator's part is READ ONLY (SET TRANSACTION READ ONLY on that shard):
                // it has nothing to commit, and its failed log row ended it. The others go on
                // without it.
                let (_, mut c) = conns.remove(0);
                if c.run("ROLLBACK").await.is_err() {
                    c.broken = true;
                }
                continue;
            }
            if let Some(msg) = phase_one.failure {
                return self
                    .abort_prepared(conns, &phase_one.prepared, id, mask, msg)
                    .await;
            }
            break (id, mask, coord);
        };
        let log_key = recovery::txn_name(id, mask);
        if self.failpoint_after_prepare(&log_key).await {
            for (_, c) in conns.iter_mut() {
                c.broken = true;
            }
            return Err(CommitError::Crash);
        }
        self.commit_prepared(&mut conns, id, mask, coord, &log_key)
            .await;
        Ok("COMMIT")
    }

    /// Takes every connection of the transaction (the parked ones and the current one), in
    /// ascending shard order, for the commit protocol.
    fn take_participants(&mut self) -> Vec<(ShardId, Checkout)> {
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
        conns
    }

    /// The decision log table could not be created on the coordinator `coord`: rolls back
    /// every participant; the error for the client.
    async fn roll_back_without_log(
        &self,
        conns: &mut [(ShardId, Checkout)],
        coord: ShardId,
        e: String,
    ) -> CommitError {
        for (_, c) in conns.iter_mut() {
            if c.run("ROLLBACK").await.is_err() {
                c.broken = true;
            }
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

    /// Phase one: PREPARE TRANSACTION on the coordinator (the first participant), which
    /// writes the decision into its log table in the same query, then on every other
    /// participant at once (one round trip for all of them). Every participant that answers
    /// prepared is listed, so an abort rolls back each of them; the failure named is the
    /// first in shard order.
    async fn prepare_all(
        &self,
        conns: &mut [(ShardId, Checkout)],
        id: u64,
        mask: u64,
        coord_addr: &str,
    ) -> PhaseOne {
        let mut phase = PhaseOne {
            prepared: Vec::new(),
            failure: None,
            coord_read_only: false,
        };
        let Some(((coord, first), others)) = conns.split_first_mut() else {
            return phase;
        };
        let sql = format!(
            "{}; PREPARE TRANSACTION '{}'",
            recovery::log_insert(id, mask),
            gid(id, mask, *coord)
        );
        if let Err(Refusal { code, why }) = prepare_one(first, &sql).await {
            if code == sqlstate::UNDEFINED_TABLE {
                self.forget_log(coord_addr);
            }
            phase.coord_read_only = code == sqlstate::READ_ONLY_SQL_TRANSACTION;
            phase.failure = Some(format!("shard {}: {why}", self.shard_name(*coord)));
            return phase;
        }
        phase.prepared.push(*coord);
        let votes = futures_util::future::join_all(others.iter_mut().map(|(s, c)| {
            let sql = format!("PREPARE TRANSACTION '{}'", gid(id, mask, *s));
            async move { (*s, prepare_one(c, &sql).await) }
        }))
        .await;
        for (s, vote) in votes {
            match vote {
                Ok(()) => phase.prepared.push(s),
                Err(Refusal { why, .. }) => {
                    phase
                        .failure
                        .get_or_insert_with(|| format!("shard {}: {why}", self.shard_name(s)));
                }
            }
        }
        phase
    }

    /// Phase two. Every participant voted yes: the outcome is commit. The coordinator's
    /// COMMIT PREPARED makes it durable (its log row commits with it); recovery completes
    /// whatever cannot be finished here, and the client is warned about it.
    async fn commit_prepared(
        &mut self,
        conns: &mut [(ShardId, Checkout)],
        id: u64,
        mask: u64,
        coord: ShardId,
        log_key: &str,
    ) {
        // The coordinator first: its COMMIT PREPARED makes the decision durable (an
        // unreachable coordinator is still prepared with all the others: recovery commits
        // them all, never rolls them back). Then every other participant at once.
        let Some(((first_shard, first), others)) = conns.split_first_mut() else {
            return;
        };
        let this = &*self;
        let mut results = vec![this.commit_part(*first_shard, first, id, mask).await];
        results.extend(
            futures_util::future::join_all(
                others
                    .iter_mut()
                    .map(|(s, c)| this.commit_part(*s, c, id, mask)),
            )
            .await,
        );
        let mut pending = Vec::new();
        for (s, name, result) in results {
            if let Err(e) = result {
                tracing::warn!(gid = %name, error = %e, "COMMIT PREPARED failed; left to recovery");
                pending.push(format!("shard {}: {e}", self.shard_name(s)));
            }
        }
        if pending.is_empty() {
            // Every participant committed: the log row has done its job.
            let del = recovery::log_delete(id, mask);
            let c = &mut conns[0].1;
            let mut deleted = !c.broken && matches!(run_step(c, &del).await, Some(Ok(_)));
            if !deleted {
                // The coordinator's connection died on the way: one try on a fresh one.
                if let Ok((mut c, _)) = self.acquire(Want::Primary, coord).await {
                    deleted = matches!(run_step(&mut c, &del).await, Some(Ok(_)));
                }
            }
            if !deleted {
                tracing::debug!(gid = %log_key, "log row left to recovery");
            }
        } else {
            let warning = notice(format!(
                "transaction {log_key} is committed, but not yet on every shard ({}); \
                 recovery completes it within about 30 s",
                pending.join("; ")
            ));
            self.to_client.extend_from_slice(&warning);
        }
    }

    /// COMMIT PREPARED of shard `s`'s part (see [`Loop::finish_part`]; `Ok(false)`, 42704:
    /// recovery, or an earlier attempt whose answer was lost, committed it): (shard, the
    /// part's name, the outcome).
    async fn commit_part(
        &self,
        s: ShardId,
        c: &mut Checkout,
        id: u64,
        mask: u64,
    ) -> (ShardId, String, Result<bool, String>) {
        let name = gid(id, mask, s);
        let sql = format!("COMMIT PREPARED '{name}'");
        let outcome = self.finish_part(s, Some(c), &sql).await;
        (s, name, outcome)
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
        let key = format!("{addr}/{}", self.login.database);
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
        let key = format!("{addr}/{}", self.login.database);
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

    /// The prepare phase failed: roll back every participant. The coordinator's part must
    /// be gone before the client hears "rolled back" (a part whose PREPARE answer was lost
    /// may be prepared after all, and recovery commits a transaction whose participants are
    /// all prepared while its coordinator is).
    async fn abort_prepared(
        &mut self,
        mut conns: Vec<(ShardId, Checkout)>,
        prepared: &[ShardId],
        id: u64,
        mask: u64,
        msg: String,
    ) -> Result<&'static str, CommitError> {
        let coord = conns[0].0;
        let mut outcome = Ok(());
        for (n, (s, c)) in conns.iter_mut().enumerate() {
            if !prepared.contains(s) {
                if c.broken || c.run("ROLLBACK").await.is_err() {
                    c.broken = true;
                }
                continue;
            }
            let sql = format!("ROLLBACK PREPARED '{}'", gid(id, mask, *s));
            if n == 0 {
                outcome = match self.finish_part(*s, Some(c), &sql).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.logged(coord).await.map(|l| (l, id, mask))),
                    Err(e) => Err(Err(e)),
                };
            } else if !matches!(run_step(c, &sql).await, Some(Ok(_))) {
                c.broken = true;
            }
        }
        let rolled_back = || {
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
            Err(Ok((logged, id, mask))) => {
                let name = recovery::txn_name(id, mask);
                if logged.contains(&name) {
                    // Recovery found every part prepared and committed it.
                    Ok("COMMIT")
                } else {
                    Err(rolled_back())
                }
            }
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
