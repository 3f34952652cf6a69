//! Statements that run on several shards (simple protocol, outside transactions): reads
//! merged exactly as one database would answer ([`crate::fanout`]), multi-row INSERTs split by
//! key, and writes, schema changes and maintenance run everywhere with their counts summed.
//!
//! One server connection per shard is checked out, the client's settings applied, the
//! statement sent to all of them at once and, through the stream driver, every answer read to
//! its ReadyForQuery before anything goes to the client (`machine::sum_writes`): an error on
//! any shard is the answer (its first ErrorResponse), never a partial result presented as
//! success. (A write that failed on one shard may have
//! succeeded on another; transactions across shards need two-phase commit.)

use bytes::{Bytes, BytesMut};

use super::fanout_stream::ShardConns;
use super::routing::Want;
use super::{End, Loop, CLEANUP_TIMEOUT};
use crate::fanout::MergeError;
use crate::pool::Checkout;
use crate::protocol::{query_text, sqlstate, Frame, PgError, TxStatus};
use crate::session::client_state::settings_effect;
use crate::session::handshake::cancel_all;
use crate::session::machine::shard_stream::ShardStream;
use crate::session::machine::sum_writes::SumWrites;
use crate::shard::ShardId;
use crate::sql::analyze::shard::Command;
use crate::sql::hints::RouteFacts;

/// What each shard runs.
pub(super) type Work = Vec<(ShardId, String)>;

/// Puts the SQL text of the `i`th shard's work into a request.
pub(super) type Encode<'a> = &'a (dyn Fn(usize, &str, &mut BytesMut) + Sync);

/// The merged answer of several shards: notices, then an ErrorResponse or the rows and
/// CommandComplete; and a ParameterDescription if the shards were asked for one.
pub(super) struct FanOutAnswer {
    pub out: BytesMut,
    pub param_desc: Option<Bytes>,
}

fn merge_error(e: MergeError) -> PgError {
    e.to_pg_error()
}

impl Loop<'_> {
    /// Makes a CancelRequest of the client reach every one of `conns` (and nothing else).
    pub(super) fn cancel_to(&self, conns: &[Checkout]) {
        // Refilled in place: the slot keeps its capacity across checkouts.
        let mut slot = super::lock(&self.login.cancel.slot);
        slot.clear();
        slot.extend(conns.iter().map(|c| c.cancel_target()));
    }

    /// The client left while `conns` worked for it: the statement is cancelled on each of them
    /// and they are closed; the session ends.
    pub(super) async fn abandon(&mut self, conns: &mut [Checkout]) -> PgError {
        let targets: Vec<_> = conns.iter().map(|c| c.cancel_target()).collect();
        conns.iter_mut().for_each(|c| c.broken = true);
        self.client_gone = true;
        tracing::info!(user = %self.login.user(), client = self.login.cancel_pid, shards = conns.len(), "client gone during a statement on several shards; cancelling it");
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cancel_all(&targets)).await;
        PgError::error(
            sqlstate::CONNECTION_FAILURE,
            "client gone during a statement on several shards",
        )
    }

    /// Runs `frame` (a Query) on `shards` and answers the client.
    pub(super) async fn fan_out(
        &mut self,
        frame: &Frame,
        facts: &RouteFacts,
        shards: &[ShardId],
    ) -> Option<End> {
        let sql = query_text(frame.body()).to_string();
        if self.noting() {
            self.meter.pending.arrived(self.last_activity.into_std());
            self.meter.pending.query(facts.shape.clone(), shards.len());
        }
        match self.fan_out_inner(&sql, facts, shards).await {
            Ok(out) => {
                self.relay.answered = crate::fanout::answered_in(&out);
                self.to_client.extend_from_slice(&out);
            }
            Err(e) => {
                self.meter.pending.failed();
                e.encode(&mut self.to_client);
            }
        }
        self.ready_for_client(self.txn.status());
        None
    }

    async fn fan_out_inner(
        &mut self,
        sql: &str,
        facts: &RouteFacts,
        shards: &[ShardId],
    ) -> Result<BytesMut, PgError> {
        let command = facts.shard_command();
        // What each shard runs, and how the answers combine.
        let per_shard: Work = match command {
            Command::Select => {
                let q = self
                    .state
                    .fan_out_plans
                    .plan(sql, &|_| None)
                    .map_err(merge_error)?;
                let want = if facts.reads() {
                    Want::Read
                } else {
                    Want::Primary
                };
                self.stream_read(q, shards, want).await?;
                return Ok(BytesMut::new());
            }
            Command::Copy => {
                let copy = facts.analysis.shard.as_ref().and_then(|f| f.copy.clone());
                return match copy {
                    Some(c) if c.from_stdin => {
                        let r = self.copy_in(sql, &c, shards).await;
                        super::lock(&self.login.cancel.slot).clear();
                        r
                    }
                    Some(c) if c.to_stdout => self.copy_out(sql, shards).await,
                    _ => Err(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY of a sharded table to or from a file on several shards",
                    )
                    .with_hint("use COPY ... FROM STDIN / TO STDOUT")),
                };
            }
            Command::Insert
                if shards.len() < self.login.shards.len() || self.is_split_insert(facts) =>
            {
                self.split_insert(sql, facts)?
            }
            _ => shards.iter().map(|s| (*s, sql.to_string())).collect(),
        };
        let one_copy = self.one_copy(facts);
        let atomic = is_write(command);
        let answer = self
            .run_on_shards(per_shard, facts.reads(), one_copy, atomic, &|_, sql, b| {
                let _ = postgres_protocol::message::frontend::query(sql, b);
            })
            .await?;
        Ok(answer.out)
    }

    /// Whether a write's answer is one shard's (a write to a replicated table: every shard
    /// holds a copy).
    pub(super) fn one_copy(&self, facts: &RouteFacts) -> bool {
        match (&self.login.shard_map, &facts.analysis.shard) {
            (Some(map), Some(f)) => map.writes_replicated(f, &facts.analysis.tables),
            _ => false,
        }
    }

    /// Runs each shard's SQL (asked as `encode` puts it) on one connection per shard, all at
    /// once, through the stream driver, and sums the answers ([`SumWrites`]; with `one_copy`,
    /// answers as the first shard did): writes, schema changes and maintenance. Any shard's
    /// error is the answer. (Reads stream instead: see `fanout_stream.rs`.)
    pub(super) async fn run_on_shards(
        &mut self,
        per_shard: Work,
        reads: bool,
        one_copy: bool,
        atomic: bool,
        encode: Encode<'_>,
    ) -> Result<FanOutAnswer, PgError> {
        let want = if reads { Want::Read } else { Want::Primary };
        let targets: Vec<ShardId> = per_shard.iter().map(|(s, _)| *s).collect();
        let (mut conns, in_txn) = self.shard_conns(&targets, want).await?;
        // A write on several shards outside a transaction runs in one implicit transaction
        // per shard, committed only when every shard succeeded: a statement that fails on
        // one shard leaves no row behind on another.
        let implicit = atomic && !in_txn && conns.len() > 1;
        if implicit {
            begin_implicit(&mut conns).await?;
        }
        let outgoing = per_shard
            .iter()
            .enumerate()
            .map(|(i, (_, text))| {
                let mut b = BytesMut::new();
                encode(i, text, &mut b);
                b.freeze()
            })
            .collect();
        let machine = SumWrites::new(
            conns.len(),
            one_copy,
            self.state.config.proxy.max_fanout_bytes,
        );
        let texts: Vec<&str> = per_shard.iter().map(|(_, t)| t.as_str()).collect();
        let on = ShardConns {
            ends_in_txn: in_txn || implicit,
            ..ShardConns::new(&targets, conns, in_txn)
        };
        let (machine, mut conns) = self.run_stream(on, outgoing, machine, &texts).await?;
        let failed = machine.progress().failed();
        if in_txn {
            self.end_shard_statement(&targets, conns, true, failed);
        } else if implicit {
            let commit = !failed && !conns.iter().any(|c| c.broken);
            let commit_error = finish_implicit(&mut conns, commit).await;
            drop(conns);
            if let Some(e) = commit_error {
                return Err(e);
            }
        }
        let summed = machine.answer();
        Ok(FanOutAnswer {
            out: summed.out,
            param_desc: summed.param_desc,
        })
    }

    /// What statements `texts` that ran on `conns` may have done that the proxy did not see:
    /// settings changed go with no client (the connections are reset before reuse), and a
    /// schema change makes statements prepared from now on new ones (see `StatementCache`).
    pub(super) fn note_effects<'t>(
        &self,
        conns: &mut [Checkout],
        texts: impl Iterator<Item = &'t str>,
    ) {
        use crate::config::SettingsReadBack;
        let read_back = self.state.config.pool.settings_read_back;
        let (mut unknown, mut ddl) = (read_back == SettingsReadBack::Always, false);
        for e in texts.map(settings_effect) {
            unknown |= e.opaque || e.writes && read_back == SettingsReadBack::Auto;
            ddl |= e.ddl;
        }
        if unknown {
            conns.iter_mut().for_each(|c| c.settings_unknown = true);
        }
        if ddl {
            self.state.statements.bump_generation();
        }
    }

    pub(super) fn is_split_insert(&self, facts: &RouteFacts) -> bool {
        facts
            .analysis
            .shard
            .as_ref()
            .and_then(|f| f.insert.as_ref())
            .is_some_and(|i| i.rows.len() > 1)
            && self
                .login
                .shard_map
                .as_ref()
                .zip(facts.analysis.shard.as_ref())
                .is_some_and(|(m, f)| {
                    f.insert
                        .as_ref()
                        .is_some_and(|i| m.sharded(&i.table).is_some())
                })
    }

    /// A multi-row INSERT into a sharded table: one INSERT per shard with that shard's rows.
    fn split_insert(&self, sql: &str, facts: &RouteFacts) -> Result<Work, PgError> {
        let (Some(map), Some(sf)) = (&self.login.shard_map, &facts.analysis.shard) else {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "not a sharded INSERT",
            ));
        };
        let rows = map.insert_row_shards(sf, &facts.literals, None)?;
        let parts = crate::sql::analyze::split_insert(sql, &rows).map_err(|e| {
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("cannot split this INSERT by shard: {e}"),
            )
        })?;
        Ok(parts)
    }
}

/// INSERT, UPDATE and DELETE: on several shards outside a transaction they run in an
/// implicit transaction on each shard (see [`Loop::run_on_shards`]).
pub(super) fn is_write(c: Command) -> bool {
    matches!(c, Command::Insert | Command::Update | Command::Delete)
}

/// Opens an implicit transaction on each of `conns`, for a write on several shards outside
/// a transaction; on a failure every connection is closed (which ends what was opened).
pub(super) async fn begin_implicit(conns: &mut [Checkout]) -> Result<(), PgError> {
    let begun = futures_util::future::join_all(conns.iter_mut().map(|c| c.run("BEGIN"))).await;
    if begun
        .iter()
        .all(|r| matches!(r, Ok(TxStatus::InTransaction)))
    {
        return Ok(());
    }
    conns.iter_mut().for_each(|c| c.broken = true);
    Err(PgError::error(
        sqlstate::CONNECTION_FAILURE,
        "could not start the statement on every shard",
    ))
}

/// Ends the implicit transactions of a write on several shards: COMMIT on each shard in
/// order if `commit`, else ROLLBACK everywhere. A COMMIT that fails rolls back the shards not
/// committed yet; the error says whether earlier shards had committed (one-phase commit: a
/// shard failing inside its COMMIT after another committed is the one window left; with
/// `two_phase_commit` use an explicit transaction to close it).
pub(super) async fn finish_implicit(conns: &mut [Checkout], commit: bool) -> Option<PgError> {
    let mut committed = 0;
    let mut error = None;
    for c in conns.iter_mut() {
        if c.broken {
            continue;
        }
        let sql = if commit && error.is_none() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        match c.run(sql).await {
            Ok(TxStatus::Idle) => {
                if sql == "COMMIT" {
                    committed += 1;
                }
            }
            Ok(_) | Err(_) => {
                c.broken = true;
                if sql == "COMMIT" && error.is_none() {
                    error = Some(if committed == 0 {
                        PgError::error(
                            sqlstate::CONNECTION_FAILURE,
                            "the statement could not commit on a shard; it was rolled back \
                             on every shard",
                        )
                    } else {
                        PgError::error(
                            sqlstate::T_R_STATEMENT_COMPLETION_UNKNOWN,
                            format!(
                                "the statement committed on {committed} shard(s) but its \
                                 COMMIT failed on another; its outcome there is unknown"
                            ),
                        )
                    });
                }
            }
        }
    }
    error
}
