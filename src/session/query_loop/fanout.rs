//! Statements that run on several shards (simple protocol, outside transactions): reads
//! merged exactly as one database would answer ([`crate::fanout`]), multi-row INSERTs split by
//! key, and writes, schema changes and maintenance run everywhere with their counts summed.
//!
//! One server connection per shard is checked out, the client's settings applied, the
//! statement sent to all of them at once and every answer read to its ReadyForQuery before
//! anything goes to the client: an error on any shard is the answer (its first ErrorResponse),
//! never a partial result presented as success. (A write that failed on one shard may have
//! succeeded on another; transactions across shards need two-phase commit.)

use bytes::{Bytes, BytesMut};

use super::routing::Want;
use std::future::Future;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use super::{End, Loop, BUF_CAP, CLEANUP_TIMEOUT};
use crate::backend::{BackendError, Exchanged};
use crate::fanout::{CommandTag, MergeError, ShardResult};
use crate::pool::Checkout;
use crate::protocol::{self, query_text, sqlstate, Frame, PgError, TxStatus};
use crate::session::client_state::settings_effect;
use crate::session::handshake::cancel_all;
use crate::session::machine::fan_out_read::too_large;
use crate::sql::analyze::shard::Command;
use crate::sql::hints::RouteFacts;

/// What each shard runs.
pub(super) type Work = Vec<(usize, String)>;

/// Puts the SQL text of the `i`th shard's work into a request.
pub(super) type Encode<'a> = &'a (dyn Fn(usize, &str, &mut BytesMut) + Sync);

/// The shards' answers to a statement, sorted (see `Loop::collect_answers`).
struct Collected {
    results: Vec<ShardResult>,
    /// Notices, for the client.
    out: BytesMut,
    /// The first ErrorResponse.
    error: Option<Bytes>,
    param_desc: Option<Bytes>,
}

/// The merged answer of several shards: notices, then an ErrorResponse or the rows and
/// CommandComplete; and a ParameterDescription if the shards were asked for one.
pub(super) struct FanOutAnswer {
    pub out: BytesMut,
    pub param_desc: Option<Bytes>,
}

fn merge_error(e: MergeError) -> PgError {
    e.to_pg_error()
}

/// Waits for `work` (answers being read on shard connections) while reading what the client
/// sends meanwhile into `cin`, up to the loop's cap (it is handled afterwards). None: the
/// client closed its connection first.
async fn while_client_stays<T>(
    crd: &mut OwnedReadHalf,
    cin: &mut BytesMut,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        let room = cin.len() < BUF_CAP;
        tokio::select! {
            biased;
            r = &mut work => return Some(r),
            r = crd.read_buf(cin), if room => {
                if !matches!(r, Ok(n) if n > 0) {
                    return None;
                }
            }
        }
    }
}

impl Loop<'_> {
    /// Makes a CancelRequest of the client reach every one of `conns` (and nothing else).
    pub(super) fn cancel_to(&self, conns: &[Checkout]) {
        // Refilled in place: the slot keeps its capacity across checkouts.
        let mut slot = super::lock(&self.login.cancel_slot);
        slot.clear();
        slot.extend(conns.iter().map(|c| c.cancel_target()));
    }

    /// Sends `requests[i]` on `conns[i]`, all at once, and reads every answer (each held up to
    /// its share of `max_fanout_bytes`) while watching the client: a CancelRequest reaches
    /// every connection meanwhile, and a client that leaves has the statement cancelled
    /// everywhere (the error; the session then ends).
    pub(super) async fn exchange_all(
        &mut self,
        conns: &mut [Checkout],
        requests: &[&[u8]],
    ) -> Result<Vec<Result<Exchanged, BackendError>>, PgError> {
        let cap = self.state.config.proxy.max_fanout_bytes / conns.len().max(1);
        self.cancel_to(conns);
        let work = futures_util::future::join_all(
            conns
                .iter_mut()
                .zip(requests)
                .map(|(c, r)| c.exchange_capped(r, cap)),
        );
        let waited = while_client_stays(&mut self.crd, &mut self.cin, work).await;
        super::lock(&self.login.cancel_slot).clear();
        match waited {
            Some(answers) => Ok(answers),
            None => Err(self.abandon(conns).await),
        }
    }

    /// The client left while `conns` worked for it: the statement is cancelled on each of them
    /// and they are closed; the session ends.
    pub(super) async fn abandon(&mut self, conns: &mut [Checkout]) -> PgError {
        let targets: Vec<_> = conns.iter().map(|c| c.cancel_target()).collect();
        conns.iter_mut().for_each(|c| c.broken = true);
        self.client_gone = true;
        tracing::info!(user = %self.login.user, client = self.login.cancel_pid, shards = conns.len(), "client gone during a statement on several shards; cancelling it");
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
        shards: &[usize],
    ) -> Option<End> {
        let sql = query_text(frame.body()).to_string();
        match self.fan_out_inner(&sql, facts, shards).await {
            Ok(out) => self.cout.extend_from_slice(&out),
            Err(e) => e.encode(&mut self.cout),
        }
        protocol::ready_for_query(&mut self.cout, self.status);
        None
    }

    async fn fan_out_inner(
        &mut self,
        sql: &str,
        facts: &RouteFacts,
        shards: &[usize],
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
                        super::lock(&self.login.cancel_slot).clear();
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
    /// once, reads every answer to its ReadyForQuery and sums the counts (with `one_copy`,
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
        let targets: Vec<usize> = per_shard.iter().map(|(s, _)| *s).collect();
        let (mut conns, in_txn) = self.shard_conns(&targets, want).await?;
        // A write on several shards outside a transaction runs in one implicit transaction
        // per shard, committed only when every shard succeeded: a statement that fails on
        // one shard leaves no row behind on another.
        let implicit = atomic && !in_txn && conns.len() > 1;
        if implicit {
            let begun =
                futures_util::future::join_all(conns.iter_mut().map(|c| c.run("BEGIN"))).await;
            if begun.iter().any(|r| !matches!(r, Ok(b'T'))) {
                for c in conns.iter_mut() {
                    c.broken = true;
                }
                return Err(PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    "could not start the statement on every shard",
                ));
            }
        }
        let requests: Vec<BytesMut> = per_shard
            .iter()
            .enumerate()
            .map(|(i, (_, text))| {
                let mut b = BytesMut::new();
                encode(i, text, &mut b);
                b
            })
            .collect();
        let requests: Vec<&[u8]> = requests.iter().map(|r| &r[..]).collect();
        let answers = self.exchange_all(&mut conns, &requests).await?;
        let collected = self.collect_answers(&mut conns, answers, in_txn || implicit)?;
        self.note_effects(&mut conns, per_shard.iter().map(|(_, t)| t.as_str()));
        if in_txn {
            self.status = if collected.error.is_some() {
                TxStatus::Failed
            } else {
                TxStatus::InTransaction
            };
            self.park_all(&targets, conns);
        } else if implicit {
            let commit = collected.error.is_none() && !conns.iter().any(|c| c.broken);
            let commit_error = finish_implicit(&mut conns, commit).await;
            drop(conns);
            if let Some(e) = commit_error {
                return Err(e);
            }
        } else {
            drop(conns);
        }
        let Collected {
            results,
            mut out,
            error,
            param_desc,
        } = collected;
        if let Some(e) = error {
            out.extend_from_slice(&e);
            return Ok(FanOutAnswer { out, param_desc });
        }
        let merged = match one_copy {
            true => sum_results(&results[..results.len().min(1)])?,
            false => sum_results(&results)?,
        };
        out.extend_from_slice(&merged);
        Ok(FanOutAnswer { out, param_desc })
    }

    /// Sorts the shards' answers into results, notices, the first error and a
    /// ParameterDescription; a connection whose status is not what `in_txn` expects, or
    /// that sent something a fan-out cannot relay, is marked broken.
    fn collect_answers(
        &self,
        conns: &mut [Checkout],
        answers: Vec<Result<Exchanged, BackendError>>,
        in_txn: bool,
    ) -> Result<Collected, PgError> {
        let mut c = Collected {
            results: Vec::with_capacity(answers.len()),
            out: BytesMut::new(),
            error: None,
            param_desc: None,
        };
        for (conn, answer) in conns.iter_mut().zip(answers) {
            let (frames, status) = match answer {
                Ok(a) if a.overflow => {
                    c.error.get_or_insert_with(|| self.too_large().freeze());
                    (Vec::new(), a.status)
                }
                Ok(a) => (a.frames, a.status),
                Err(e) => {
                    conn.broken = true;
                    return Err(PgError::error(
                        sqlstate::CONNECTION_FAILURE,
                        format!("a shard failed during the statement: {e}"),
                    ));
                }
            };
            if (status != b'I') != in_txn {
                conn.broken = true;
            }
            let mut r = ShardResult::default();
            for f in frames {
                match f.tag {
                    b'T' => r.row_description = Some(f.bytes),
                    b'D' => r.data_rows.push(f.bytes),
                    b'C' => r.command_complete = f.bytes,
                    b'E' => {
                        c.error.get_or_insert(f.bytes);
                    }
                    b'N' => c.out.extend_from_slice(&f.bytes),
                    b't' => c.param_desc = Some(f.bytes),
                    // Parse, Bind, NoData of an extended-protocol request.
                    b'1' | b'2' | b'n' => {}
                    // CopyOut/CopyIn or anything else a fan-out cannot relay.
                    b'I' | b'S' | b'A' => {}
                    _ => conn.broken = true,
                }
            }
            c.results.push(r);
        }
        Ok(c)
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

    /// The error of a fan-out whose shard answers are over `max_fanout_bytes`.
    pub(super) fn too_large(&self) -> BytesMut {
        let mut b = BytesMut::new();
        too_large(self.state.config.proxy.max_fanout_bytes).encode(&mut b);
        b
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
            Ok(b'I') => {
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

/// Answers of a write or schema change on several shards: the first RowDescription (for
/// RETURNING), every DataRow, and one CommandComplete with the counts summed.
fn sum_results(results: &[ShardResult]) -> Result<BytesMut, PgError> {
    let mut out = BytesMut::new();
    if let Some(t) = results.iter().find_map(|r| r.row_description.as_ref()) {
        out.extend_from_slice(t);
    }
    for r in results {
        for d in &r.data_rows {
            out.extend_from_slice(d);
        }
    }
    let mut total: Option<CommandTag> = None;
    for r in results {
        if r.command_complete.is_empty() {
            continue;
        }
        let tag = CommandTag::parse(&r.command_complete).map_err(|e| {
            PgError::error(
                sqlstate::INTERNAL_ERROR,
                format!("bad CommandComplete from a shard: {e}"),
            )
        })?;
        total = Some(match total {
            None => tag,
            Some(mut t) => {
                if let (Some(a), Some(b)) = (t.rows, tag.rows) {
                    t.rows = Some(a + b);
                }
                t
            }
        });
    }
    if let Some(t) = total {
        t.encode(&mut out);
    }
    Ok(out)
}
