//! Read/write splitting in the query loop: which server a statement (or an extended-protocol
//! batch up to its Sync) needs, choosing and checking out that server, deferred `BEGIN`,
//! read-your-writes, proxy settings (`SET shardgate.target`) and the transparent retry of a
//! read whose server failed before any byte reached the client.
//!
//! Decisions are made only at routing points: a simple Query, or the first message of an
//! extended-protocol batch. Inside a transaction everything sticks to the server the
//! transaction started on. When the next statement needs the primary while the client still
//! holds a replica connection with responses outstanding, the statement is held back until
//! the replica connection is released, so pipelined statements keep their order.

use bytes::BytesMut;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::statements::inject_query;
use super::{lock, Loop, CLEANUP_TIMEOUT};
use crate::config::{ReadYourWrites, Role};
use crate::health::{now_ms, parse_lsn};
use crate::pool::{Balance, Checkout, PoolError, ReadPolicy};
use crate::protocol::{
    self, bind_names, error_fields, error_severity, param_oids, parse_body, query_text, sqlstate,
    target, Frame, PgError,
};
use crate::shard::route::{Params, Route};
use crate::sql::hints::{self, RouteFacts, Target};
use crate::sql::Kind;
use crate::state::Prepared;

/// Most frames a read keeps for a retry; a larger request is not retried.
const MAX_REPLAY_BYTES: usize = 1024 * 1024;
/// A read is retried on at most this many other servers.
const MAX_RETRIES: u32 = 3;
/// How often a write waiting for a primary looks again.
const PRIMARY_POLL: Duration = Duration::from_millis(20);

/// The server a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// The primary.
    Primary,
    /// A read: a replica that satisfies read-your-writes, else the primary.
    Read,
    /// A replica because a hint or `SET shardgate.target` says so (no read-your-writes).
    Replica,
}

impl Want {
    /// The want of a batch holding statements that want `self` and `other`.
    fn and(self, other: Want) -> Want {
        match (self, other) {
            (Want::Primary, _) | (_, Want::Primary) => Want::Primary,
            (Want::Replica, _) | (_, Want::Replica) => Want::Replica,
            _ => Want::Read,
        }
    }
}

/// What to do with a client message at a routing point.
pub(super) enum Step {
    /// The proxy answered it.
    Handled,
    /// Keep it until the current server connection is released.
    Hold,
    /// Send it, checking out a server of this shard for this want if none is held.
    Go(Want, usize),
    /// Run it on these shards and merge (simple Query).
    FanOut(RouteFacts, Vec<usize>),
    /// Run the extended-protocol batch it starts on these shards and merge.
    FanOutBatch(Vec<usize>),
    /// Wait for more of the client's batch.
    NeedInput,
    /// Answer with this error.
    Refuse(PgError),
    /// Continue the open transaction on another shard.
    Switch(Want, usize),
    /// COMMIT (a simple Query) of a transaction across shards.
    Commit,
    /// COMMIT as an extended-protocol batch, across shards.
    CommitBatch,
}

/// What an extended-protocol batch needs (see `Loop::batch_want`).
struct BatchPlan {
    want: Want,
    writes: bool,
    route: Result<Route, PgError>,
    /// The batch only commits.
    only_commit: bool,
    /// The batch only begins a transaction: its text, and whether it is READ ONLY.
    only_begin: Option<(String, bool)>,
    /// Its Sync has arrived.
    complete: bool,
    /// It binds or calls something (not only Parse, Describe, Close).
    executes: bool,
    /// It holds a Flush.
    flush: bool,
}

/// Routing state of one client.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// The current server connection takes writes.
    pub on_primary: bool,
    /// `BEGIN` answered by the proxy and not yet sent: its text and whether it is READ ONLY.
    pub pending_begin: Option<(String, bool)>,
    /// The `BEGIN` sent ahead of the current checkout's first statement.
    injected_begin: Option<(String, bool)>,
    /// Frames to handle before those in `cin`: held back, or replayed after a failure.
    pub pending: VecDeque<Frame>,
    /// Frames sent since a read's checkout, for a retry on another server.
    replay: Vec<Frame>,
    replay_bytes: usize,
    /// The frames since checkout may be replayed: a read, and nothing reached the client.
    pub retryable: bool,
    /// Servers that failed the current request.
    avoid: Vec<String>,
    retries: u32,
    /// A statement that may write was sent since checkout.
    pub wrote: bool,
    /// `SET shardgate.target`: None = auto.
    pub target: Option<Target>,
    /// Read-your-writes: WAL position after the client's last write.
    min_lsn: u64,
    /// Read-your-writes: reads go to the primary until this `now_ms()`.
    primary_until: u64,
    /// Facts of the last unnamed statement Parsed (for a later Bind without a Parse).
    unnamed: Option<RouteFacts>,
    /// Shard of the current server connection.
    pub shard: usize,
    /// `SET shardgate.shard`.
    pub session_shard: Option<usize>,
    /// Connections of the open transaction on shards other than the current one.
    pub parked: Vec<(usize, Checkout)>,
    /// The BEGIN of the open transaction (sent to each further shard it reaches).
    pub txn_begin: Option<String>,
    /// The current server connection serves a batch that executes nothing (Parse,
    /// Describe) while the client's BEGIN waits for its first statement: it stays outside
    /// the transaction and is released after the batch.
    pub outside_txn: bool,
    /// Transaction control across shards (savepoints, a refused transaction).
    pub guard: super::twophase::TxnGuard,
}

impl Routing {
    /// Forgets what belonged to the released server connection.
    pub fn released(&mut self) {
        self.injected_begin = None;
        self.txn_begin = None;
        self.replay.clear();
        self.replay_bytes = 0;
        self.retryable = false;
        self.avoid.clear();
        self.retries = 0;
        self.wrote = false;
        self.outside_txn = false;
        self.guard.pinned = false;
        self.guard.sets.clear();
        self.guard.abort_at_ready = false;
    }

    /// Records a frame about to be sent, for a possible retry.
    pub fn record(&mut self, frame: &Frame) {
        if !self.retryable {
            return;
        }
        let replayable = match frame.tag {
            b'Q' | b'B' | b'E' | b'D' | b'S' | b'H' => true,
            // A named Parse or Close changes the client's statement map.
            b'P' => parse_body(frame.body()).is_some_and(|p| p.name.is_empty()),
            _ => false,
        };
        self.replay_bytes += frame.bytes.len();
        if !replayable || self.replay_bytes > MAX_REPLAY_BYTES {
            self.retryable = false;
            self.replay.clear();
            return;
        }
        self.replay.push(frame.clone());
    }
}

/// What to do with a retryable read's server input (see `Loop::read_hold`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadHold {
    /// Forward it.
    Go,
    /// Keep it back until the answer is complete, so a failure can still be hidden.
    Wait,
    /// The server said goodbye before answering in full: retry elsewhere.
    Dying,
}

/// Most server bytes a retryable read keeps back while waiting for its ReadyForQuery.
const HOLD_BYTES: usize = 64 * 1024;

/// Looks through the complete messages of `buf` (from a message boundary) for the end of an
/// answer or a server's goodbye: an ErrorResponse of severity FATAL or PANIC, or the
/// NoticeResponse with SQLSTATE class 57P (operator intervention) that Postgres sends when it
/// is shut down or crashes (`WARNING_CLIENT_ONLY`).
fn scan_answer(buf: &[u8]) -> Option<ReadHold> {
    let mut pos = 0;
    while buf.len() >= pos + 5 {
        let tag = buf[pos];
        let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
        if len < 4 {
            return Some(ReadHold::Go); // the relay reports the bad length
        }
        let end = pos + 1 + len as usize;
        if buf.len() < end {
            return None;
        }
        let body = &buf[pos + 5..end];
        match tag {
            b'E' if matches!(error_severity(body), "FATAL" | "PANIC") => {
                return Some(ReadHold::Dying)
            }
            b'N' if error_fields(body).0.starts_with("57P") => return Some(ReadHold::Dying),
            // The end of an answer, or the server waits for the client (COPY).
            b'Z' | b'G' | b'W' => return Some(ReadHold::Go),
            _ => {}
        }
        pos = end;
    }
    None
}

fn pool_error(e: PoolError) -> PgError {
    match e {
        PoolError::Timeout(_) => PgError::error(sqlstate::TOO_MANY_CONNECTIONS, e.to_string())
            .with_hint("all server connections stayed busy; retry, or raise pool.size"),
        PoolError::Connect(e) => PgError::error(
            sqlstate::CANNOT_CONNECT,
            format!("could not connect to server: {e}"),
        ),
    }
}

impl Loop<'_> {
    /// Routing facts of a query text, through the shape cache.
    pub(super) fn facts_of(&self, sql: &str) -> RouteFacts {
        let (analysis, literals) = self.state.analysis.analyze(sql);
        RouteFacts::from_parts(analysis, literals, sql)
    }

    /// Routing facts of a pooled statement, found once.
    fn stmt_facts<'p>(&self, stmt: &'p Prepared) -> &'p RouteFacts {
        stmt.route.get_or_init(|| {
            let mut f = self.facts_of(stmt.query());
            if let Some(p) = parse_body(&stmt.parse[5..]) {
                f.param_types = param_oids(p.rest);
            }
            f
        })
    }

    /// The server a statement with these facts needs.
    fn want(&self, f: &RouteFacts) -> Want {
        match f.hints.target.or(self.rt.target) {
            Some(Target::Primary) => Want::Primary,
            Some(Target::Replica) => Want::Replica,
            None if f.reads() => Want::Read,
            None => Want::Primary,
        }
    }

    /// The shard route of a statement: hints, `SET shardgate.shard`, then the router.
    /// `Route::Any` for databases without sharding.
    fn shard_route(&self, f: &RouteFacts, params: Option<&Params<'_>>) -> Result<Route, PgError> {
        let Some(map) = &self.login.shard_map else {
            return Ok(Route::Any);
        };
        if let Some(name) = &f.hints.shard {
            return map.shard_named(name).map(Route::One).ok_or_else(|| {
                PgError::error(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("unknown shard \"{name}\" in hint"),
                )
                .with_hint(format!("shards: {}", map.names.join(", ")))
            });
        }
        if let Some(key) = &f.hints.key {
            let ty = f
                .analysis
                .tables
                .iter()
                .find_map(|t| map.sharded(t).map(|(_, ty)| *ty))
                .unwrap_or(crate::config::KeyType::Bigint);
            return map
                .shard_of_text(ty, key.as_bytes())
                .map(Route::One)
                .map_err(|e| PgError::error(e.sqlstate(), e.to_string()));
        }
        if let Some(s) = self.rt.session_shard {
            return Ok(Route::One(s));
        }
        match &f.analysis.shard {
            Some(facts) => map.route(facts, &f.analysis.tables, &f.literals, params),
            None if f.statements > 1
                && f.analysis.tables.iter().any(|t| map.sharded(t).is_some()) =>
            {
                Err(PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "several statements in one query on a sharded database",
                )
                .with_hint("send one statement per query so each can be routed by its key"))
            }
            // Maintenance and schema statements sqlparser cannot parse (VACUUM, CLUSTER,
            // REINDEX, ...) still belong on every shard.
            None if f.maintenance => Ok(Route::All),
            None => Ok(Route::Any),
        }
    }

    /// What a batch of extended-protocol messages starting with `first` needs, looking ahead
    /// (without consuming) up to its Sync: a replica only if every statement it executes
    /// reads (a Parse alone runs nothing; Parse and Describe of reads work on a hot standby,
    /// those of writes go to the primary, where the statement will run), and the
    /// one shard all its statements route to. A batch whose Sync has not arrived yet goes to
    /// the primary.
    fn batch_want(&mut self, first: &Frame) -> BatchPlan {
        let mut commits = 0;
        let mut others = 0;
        let mut begin: Option<(String, bool)> = None;
        // SQL text of the statements parsed in this batch, by name.
        let mut texts: Vec<(String, String)> = Vec::new();
        let mut want: Option<Want> = None;
        let mut writes = false;
        let mut route = Ok(Route::Any);
        let mut unnamed = self.rt.unnamed.clone();
        // Named statements parsed earlier in this batch.
        let mut parsed: Vec<(String, RouteFacts)> = Vec::new();
        let mut complete = false;
        let mut flush = false;
        let mut executes = false;
        // A statement prepared or described here will run on the primary: describe it there
        // too (a replica may not have replayed the DDL it needs yet).
        let mut prepares_write = false;
        {
            let mut visit = |tag: u8, body: &[u8]| -> bool {
                let facts = match tag {
                    b'D' => {
                        if let Some((b'S', name)) = target(body) {
                            prepares_write |= match parsed.iter().rev().find(|p| p.0 == name) {
                                Some(p) => p.1.writes(),
                                None if name.is_empty() => {
                                    unnamed.as_ref().is_some_and(RouteFacts::writes)
                                }
                                None => self
                                    .client
                                    .named
                                    .get(name)
                                    .is_some_and(|stmt| self.stmt_facts(stmt).writes()),
                            };
                        }
                        return true;
                    }
                    b'P' => {
                        if let Some(p) = parse_body(body) {
                            let mut f = self.facts_of(p.query);
                            f.param_types = param_oids(p.rest);
                            prepares_write |= f.writes();
                            texts.push((p.name.to_string(), p.query.to_string()));
                            if p.name.is_empty() {
                                unnamed = Some(f);
                            } else {
                                parsed.push((p.name.to_string(), f));
                            }
                        }
                        return true;
                    }
                    b'B' => match bind_names(body).inspect(|_| executes = true) {
                        Some((_, "", _)) => unnamed.clone(),
                        Some((_, name, _)) => parsed
                            .iter()
                            .rev()
                            .find(|p| p.0 == name)
                            .map(|p| p.1.clone())
                            .or_else(|| {
                                self.client
                                    .named
                                    .get(name)
                                    .map(|stmt| self.stmt_facts(stmt).clone())
                            }),
                        None => None,
                    },
                    b'F' => {
                        executes = true;
                        want = Some(Want::Primary);
                        writes = true;
                        return true;
                    }
                    b'S' => {
                        complete = true;
                        return false;
                    }
                    b'Q' => return false,
                    b'H' => {
                        flush = true;
                        return true;
                    }
                    _ => return true,
                };
                let (w, wr) = match &facts {
                    Some(f) => (self.want(f), f.writes()),
                    None => (Want::Primary, true),
                };
                match &facts {
                    Some(f) if f.kind == Kind::Commit && f.statements == 1 => commits += 1,
                    Some(f) if f.statements == 1 && matches!(f.kind, Kind::Begin { .. }) => {
                        // Deferred like a simple BEGIN if its text is known.
                        let name = bind_names(body).map(|b| b.1).unwrap_or_default();
                        let text = texts
                            .iter()
                            .rev()
                            .find(|t| t.0 == name)
                            .map(|t| t.1.clone())
                            .or_else(|| {
                                (!name.is_empty())
                                    .then(|| self.client.named.get(name))
                                    .flatten()
                                    .map(|s| s.query().to_string())
                            });
                        match (text, f.kind) {
                            (Some(t), Kind::Begin { read_only }) if begin.is_none() => {
                                begin = Some((t, read_only))
                            }
                            _ => others += 1,
                        }
                    }
                    _ => others += 1,
                }
                if let (Some(f), Ok(prev)) = (&facts, &route) {
                    let params = Params::from_bind(body).map(|mut p| {
                        p.types = f.param_types.clone();
                        p
                    });
                    route = match (prev.clone(), self.shard_route(f, params.as_ref())) {
                        (_, Err(e)) => Err(e),
                        (Route::Any, r) => r,
                        (p, Ok(Route::Any)) => Ok(p),
                        (p, Ok(r)) if p == r => Ok(p),
                        _ => Err(PgError::error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "statements of one extended-protocol batch route to different shards",
                        )
                        .with_hint("Sync between statements for different shard keys")),
                    };
                }
                want = Some(want.map_or(w, |x| x.and(w)));
                writes |= wr;
                true
            };
            let mut go = visit(first.tag, first.body());
            for f in &self.rt.pending {
                if !go {
                    break;
                }
                go = visit(f.tag, f.body());
            }
            let mut rest: &[u8] = &self.cin;
            while go && rest.len() >= 5 {
                let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
                let end = len as usize + 1;
                if len < 4 || rest.len() < end {
                    break;
                }
                go = visit(rest[0], &rest[5..end]);
                rest = &rest[end..];
            }
        }
        self.rt.unnamed = unnamed;
        let only_commit = complete && commits > 0 && others == 0 && begin.is_none();
        let only_begin = begin.filter(|_| complete && commits == 0 && others == 0);
        BatchPlan {
            want: if complete {
                want.unwrap_or(if prepares_write {
                    Want::Primary
                } else {
                    Want::Read
                })
            } else {
                Want::Primary
            },
            writes: writes || !complete,
            route,
            only_commit,
            only_begin,
            complete,
            executes,
            flush,
        }
    }

    /// Decides what to do with a client message at a routing point (reads to replicas,
    /// statements to shards).
    pub(super) fn plan(&mut self, frame: &Frame) -> Step {
        if !self.login.split && self.login.shard_map.is_none() {
            return Step::Go(Want::Primary, 0);
        }
        let extended_start =
            !self.unsynced && matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F');
        let mut only_begin = None;
        let mut prepare_only = false;
        let (want, writes, facts, route, only_commit) = if frame.tag == b'Q' {
            let f = self.facts_of(query_text(frame.body()));
            let route = self.shard_route(&f, None);
            let commit = f.kind == Kind::Commit && f.statements == 1;
            (self.want(&f), f.writes(), Some(f), route, commit)
        } else if extended_start {
            let b = self.batch_want(frame);
            if matches!(b.route, Ok(Route::Many(_) | Route::All)) && !b.complete {
                // Several shards: the whole batch is needed before anything is sent.
                if b.flush {
                    return Step::Refuse(PgError::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "a statement for several shards must be followed by Sync, not Flush",
                    ));
                }
                return Step::NeedInput;
            }
            if self.login.shard_map.is_some() && !b.complete && !b.flush {
                // Sharded: a batch is routed by its Binds, which may not have arrived yet
                // (a long Parse and its Bind in separate reads). Routing the part that has
                // would send the rest to that shard too: wait for the Sync.
                return Step::NeedInput;
            }
            only_begin = b.only_begin;
            prepare_only = b.complete && !b.executes;
            (b.want, b.writes, None, b.route, b.only_commit)
        } else {
            return Step::Go(Want::Primary, self.rt.shard);
        };
        let multi_shard = !self.rt.parked.is_empty();
        if multi_shard && only_commit {
            // Never let a COMMIT reach just one participant: wait until the current
            // connection has answered everything, then commit them all.
            if self.server.is_some() && !self.relay.idle() {
                return Step::Hold;
            }
            return if frame.tag == b'Q' {
                Step::Commit
            } else {
                Step::CommitBatch
            };
        }
        let route = match route {
            Ok(r) => r,
            Err(e) => return Step::Refuse(e),
        };
        let in_transaction = self.status != b'I' || self.rt.pending_begin.is_some();
        let two_phase = self
            .login
            .shard_map
            .as_ref()
            .is_some_and(|m| m.two_phase_commit);
        let busy = self.server.is_some() && (!self.relay.idle() || self.unsynced);
        let shard = match route {
            Route::Any => None,
            Route::One(s) => Some(s),
            Route::Many(_) | Route::All if in_transaction && !two_phase => {
                return Step::Refuse(
                    self.cross_shard_transaction("this statement needs several shards"),
                );
            }
            Route::Many(_) | Route::All if busy => return Step::Hold,
            Route::Many(_) | Route::All if self.server.is_some() && !in_transaction => {
                return self.hold_or_refuse();
            }
            Route::Many(v) => {
                let Some(f) = facts else {
                    return Step::FanOutBatch(v);
                };
                return Step::FanOut(f, v);
            }
            Route::All => {
                let n = self.login.shards.len();
                let Some(f) = facts else {
                    return Step::FanOutBatch((0..n).collect());
                };
                return Step::FanOut(f, (0..n).collect());
            }
        };
        self.rt.wrote |= writes;
        if self.server.is_some() {
            if let Some(s) = shard.filter(|s| *s != self.rt.shard) {
                if !in_transaction {
                    return self.hold_or_refuse();
                }
                if !two_phase {
                    return Step::Refuse(
                        self.cross_shard_transaction("this statement belongs to another shard"),
                    );
                }
                if busy {
                    return if self.unsynced {
                        Step::Refuse(self.cross_shard_transaction(
                            "an extended-protocol batch cannot change shards before its Sync",
                        ))
                    } else {
                        Step::Hold
                    };
                }
                return Step::Switch(want, s);
            }
            // Inside a transaction (or a batch) everything stays where it is. Outside one, a
            // statement for the primary waits until a replica connection is released.
            let busy = !self.relay.idle();
            if !in_transaction && want == Want::Primary && !self.rt.on_primary && busy {
                return Step::Hold;
            }
            return Step::Go(want, self.rt.shard);
        }
        let shard = shard.or(self.rt.parked.first().map(|p| p.0));
        let shard = shard.unwrap_or(0);
        let single = |k: Kind| {
            facts
                .as_ref()
                .is_some_and(|f| f.statements == 1 && f.kind == k)
        };
        if prepare_only && self.rt.pending_begin.is_some() && self.status == b'T' {
            self.rt.outside_txn = true;
            return Step::Go(want, shard);
        }
        self.rt.outside_txn = false;
        if self.status == b'E'
            && !self.rt.parked.is_empty()
            && !(single(Kind::Commit) || single(Kind::Rollback))
        {
            // The transaction failed (a statement on several shards): its connections may not
            // know, so nothing more runs in it until its end, as in Postgres.
            return Step::Refuse(super::twophase::aborted_transaction());
        }
        if let Some((_, read_only)) = &self.rt.pending_begin {
            if single(Kind::Commit) || single(Kind::Rollback) {
                // Nothing ran in the transaction: answer without a server.
                let tag = if single(Kind::Commit) {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                self.rt.pending_begin = None;
                protocol::command_complete(&mut self.cout, tag);
                self.status = b'I';
                protocol::ready_for_query(&mut self.cout, b'I');
                return Step::Handled;
            }
            let read_only = *read_only
                || facts
                    .as_ref()
                    .is_some_and(|f| f.kind == Kind::SetTransactionReadOnly);
            let hinted = facts
                .as_ref()
                .and_then(|f| f.hints.target)
                .or(self.rt.target);
            return Step::Go(
                match hinted {
                    Some(Target::Primary) => Want::Primary,
                    Some(Target::Replica) => Want::Replica,
                    None if read_only => Want::Read,
                    None => Want::Primary,
                },
                shard,
            );
        }
        if let Some(begin) = only_begin.filter(|_| self.status == b'I') {
            // An extended-protocol BEGIN is deferred too: answered here, up to its Sync.
            self.rt.pending_begin = Some(begin);
            self.status = b'T';
            self.answer_batch(frame.clone(), Ok("BEGIN"));
            return Step::Handled;
        }
        if let Some(f) = &facts {
            if let (Kind::Begin { read_only }, 1) = (f.kind, f.statements) {
                // Defer BEGIN: the transaction's first statement (or a SET TRANSACTION READ
                // ONLY) decides where it runs.
                self.rt.pending_begin = Some((query_text(frame.body()).to_string(), read_only));
                protocol::command_complete(&mut self.cout, "BEGIN");
                self.status = b'T';
                protocol::ready_for_query(&mut self.cout, b'T');
                return Step::Handled;
            }
        }
        Step::Go(want, shard)
    }

    /// Outside a transaction, waits for the current server connection to be released; a
    /// client that cannot release it (pinned, or mid-batch) gets an error.
    fn hold_or_refuse(&self) -> Step {
        if !self.relay.idle() {
            return Step::Hold;
        }
        Step::Refuse(self.cross_shard_transaction("this statement belongs to another shard"))
    }

    fn cross_shard_transaction(&self, what: &str) -> PgError {
        let name = self
            .login
            .shard_map
            .as_ref()
            .and_then(|m| m.names.get(self.rt.shard).cloned())
            .unwrap_or_default();
        PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what}, but the transaction (or pinned session) runs on shard {name}"),
        )
        .with_hint(
            "keep each transaction on one shard key; transactions across shards \
             (two_phase_commit) are not supported yet",
        )
    }

    /// Answers `SET/RESET/SHOW shardgate.*`; false if the query is not one of those.
    pub(super) fn proxy_command(&mut self, frame: &Frame) -> bool {
        let Some(cmd) = hints::command(query_text(frame.body())) else {
            return false;
        };
        let mut b = BytesMut::new();
        match cmd {
            hints::Command::Set { name, value } if name == "target" => {
                let value = value.map(|v| v.to_ascii_lowercase());
                match value.as_deref() {
                    None | Some("auto") => self.rt.target = None,
                    Some("primary") => self.rt.target = Some(Target::Primary),
                    Some("replica") => self.rt.target = Some(Target::Replica),
                    Some(other) => {
                        PgError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!(
                                "invalid value for parameter \"shardgate.target\": \"{other}\""
                            ),
                        )
                        .with_hint("Available values: primary, replica, auto.")
                        .encode(&mut b);
                    }
                }
                if b.is_empty() {
                    protocol::command_complete(&mut b, "SET");
                }
            }
            hints::Command::Show { name } if name == "target" => {
                let v = match self.rt.target {
                    None => "auto",
                    Some(Target::Primary) => "primary",
                    Some(Target::Replica) => "replica",
                };
                protocol::show_result(&mut b, "shardgate.target", v);
            }
            hints::Command::Set { name, value } if name == "shard" => match value {
                None => {
                    self.rt.session_shard = None;
                    protocol::command_complete(&mut b, "SET");
                }
                Some(v) => match self
                    .login
                    .shard_map
                    .as_ref()
                    .and_then(|m| m.shard_named(&v))
                {
                    Some(i) => {
                        self.rt.session_shard = Some(i);
                        protocol::command_complete(&mut b, "SET");
                    }
                    None => {
                        let known = self
                            .login
                            .shard_map
                            .as_ref()
                            .map(|m| m.names.join(", "))
                            .unwrap_or_else(|| "none: the database is not sharded".into());
                        PgError::error(
                            sqlstate::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"shardgate.shard\": \"{v}\""),
                        )
                        .with_hint(format!(
                            "shards: {known}; RESET shardgate.shard routes by key again"
                        ))
                        .encode(&mut b);
                    }
                },
            },
            hints::Command::Show { name } if name == "shard" => {
                let v = match (self.rt.session_shard, &self.login.shard_map) {
                    (Some(i), Some(m)) => m.names.get(i).cloned().unwrap_or_default(),
                    _ => "auto".to_string(),
                };
                protocol::show_result(&mut b, "shardgate.shard", &v);
            }
            hints::Command::Set { name, .. } | hints::Command::Show { name } => {
                PgError::error(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("unrecognized configuration parameter \"shardgate.{name}\""),
                )
                .with_hint("The proxy knows shardgate.target and shardgate.shard.")
                .encode(&mut b);
            }
        }
        protocol::ready_for_query(&mut b, self.status);
        if self.server.is_some() {
            // After the responses still owed by the server.
            self.relay
                .push(super::Expect::SyntheticReady(b.freeze(), self.status));
            self.relay.emit_synthetic(&mut self.cout, &mut self.events);
        } else {
            self.cout.extend_from_slice(&b);
        }
        true
    }

    /// Checks out a server for `want` and prepares it for the client's next message.
    pub(super) async fn checkout(&mut self, want: Want, shard: usize) -> Result<(), PgError> {
        if let Some(conn) = self.unpark(shard) {
            self.install(conn, shard, true);
            return Ok(());
        }
        // A transaction pinned to its shard by a savepoint fails here (twophase.rs).
        self.may_join(shard).await?;
        let outside_txn = std::mem::take(&mut self.rt.outside_txn);
        let (conn, on_primary) = self.acquire(want, shard).await?;
        self.rt.outside_txn = outside_txn;
        self.rt.shard = shard;
        self.cancel_to(std::slice::from_ref(&conn));
        self.relay.reset();
        self.unsynced = false;
        tracing::trace!(client = self.login.cancel_pid, pid = conn.pid, server = %conn.addr, "checkout");
        self.server = Some(conn);
        self.rt.on_primary = on_primary;
        self.rt.retryable =
            self.login.split && want != Want::Primary && self.state.config.routing.retry_reads;
        self.rt.replay.clear();
        self.rt.replay_bytes = 0;
        self.apply_settings();
        if self.rt.outside_txn {
            // Prepares for a transaction that has not begun yet: no BEGIN here.
        } else if let Some(begin) = self.rt.pending_begin.take() {
            inject_query(&begin.0, &mut self.relay, &mut self.sout);
            self.rt.txn_begin = Some(begin.0.clone());
            self.rt.injected_begin = Some(begin);
        } else if self.status != b'I' {
            // A transaction across shards reaching one more shard.
            let begin = self.begin_sql(self.rt.txn_begin.as_deref().unwrap_or("BEGIN"));
            inject_query(&begin, &mut self.relay, &mut self.sout);
        }
        Ok(())
    }

    /// A server connection for `want`: a replica by the balancing policy when one qualifies,
    /// else the primary (waiting up to the checkout timeout while no primary is known).
    pub(super) async fn acquire(
        &self,
        want: Want,
        shard: usize,
    ) -> Result<(Checkout, bool), PgError> {
        let Some(shard) = self.login.shards.get(shard) else {
            return Err(PgError::error(sqlstate::INTERNAL_ERROR, "no such shard"));
        };
        let r = &self.state.config.routing;
        if want != Want::Primary && self.login.split {
            let ryw = want == Want::Read;
            let primary_only = ryw && now_ms() < self.rt.primary_until;
            let mut avoid = self.rt.avoid.clone();
            while !primary_only && avoid.len() <= shard.servers.len() {
                let policy = ReadPolicy {
                    balance: Balance::parse(&r.load_balancing),
                    include_primary: r.include_primary,
                    max_lag_ms: r.max_replica_lag_ms,
                    min_lsn: if ryw && r.read_your_writes == ReadYourWrites::Lsn {
                        self.rt.min_lsn
                    } else {
                        0
                    },
                    avoid: &avoid,
                };
                let Some(pool) = shard.reader(&policy) else {
                    break;
                };
                match pool.get().await {
                    Ok(c) => return Ok((c, pool.health.is_primary())),
                    Err(PoolError::Connect(e)) => {
                        pool.health.ban(r.ban_time_ms, "connect failed");
                        tracing::warn!(server = %pool.addr(), error = %e, "read goes elsewhere");
                        avoid.push(pool.addr().to_string());
                    }
                    Err(e) => return Err(pool_error(e)),
                }
            }
        }
        let deadline =
            Instant::now() + Duration::from_millis(self.state.config.pool.checkout_timeout_ms);
        loop {
            if let Some(pool) = shard.primary() {
                match pool.get().await {
                    Ok(c) => return Ok((c, true)),
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
                        self.login.database, shard.name
                    ),
                )
                .with_hint(
                    "no server of the shard answered as a primary within \
                     pool.checkout_timeout_ms; the health checker is still looking",
                ));
            }
            tokio::time::sleep(PRIMARY_POLL).await;
        }
    }

    /// After a transaction that wrote on the primary, notes what the client's next reads
    /// must see.
    pub(super) async fn note_write(&mut self) {
        if !(self.login.split && self.rt.wrote && self.rt.on_primary) {
            return;
        }
        let r = &self.state.config.routing;
        let window = now_ms() + r.read_your_writes_ms;
        match r.read_your_writes {
            ReadYourWrites::Off => {}
            ReadYourWrites::PrimaryForMs => self.rt.primary_until = window,
            ReadYourWrites::Lsn => {
                let Some(conn) = self.server.as_deref_mut() else {
                    return;
                };
                // The insert position covers the commit record even when
                // synchronous_commit = off returns before the WAL is written.
                let sql = "SELECT pg_current_wal_insert_lsn()::text";
                match tokio::time::timeout(CLEANUP_TIMEOUT, conn.query_row(sql)).await {
                    Ok(Ok(v)) => match v.first().and_then(|s| parse_lsn(s)) {
                        Some(lsn) => self.rt.min_lsn = self.rt.min_lsn.max(lsn),
                        None => self.rt.primary_until = window,
                    },
                    _ => {
                        conn.broken = true;
                        self.rt.primary_until = window;
                    }
                }
            }
        }
    }

    /// Whether a failure of the current server can be hidden by retrying elsewhere.
    fn can_retry(&self) -> bool {
        self.rt.retryable && self.rt.retries < MAX_RETRIES && self.server.is_some()
    }

    /// The server connection failed: retry the read elsewhere if nothing reached the client
    /// yet (returns None), else tell the client and close.
    pub(super) fn lost(&mut self, what: &str) -> Option<super::End> {
        if !self.can_retry() {
            return Some(self.server_lost(what));
        }
        let Some(mut conn) = self.server.take() else {
            return Some(self.server_lost(what));
        };
        conn.broken = true;
        let addr = conn.addr.clone();
        drop(conn);
        let ban_ms = self.state.config.routing.ban_time_ms;
        for pool in self.login.shards.iter().flat_map(|s| s.servers.iter()) {
            if pool.addr() == addr {
                pool.health.ban(ban_ms, what);
            }
        }
        tracing::info!(server = %addr, "{what}; retrying the read on another server");
        lock(&self.login.cancel_slot).clear();
        self.relay.reset();
        self.sout.clear();
        self.events.clear();
        self.unsynced = false;
        self.rt.retries += 1;
        self.rt.retryable = false;
        self.rt.avoid.push(addr);
        for f in self.rt.replay.drain(..).rev() {
            self.rt.pending.push_front(f);
        }
        self.rt.replay_bytes = 0;
        if let Some(begin) = self.rt.injected_begin.take() {
            self.rt.pending_begin = Some(begin);
        }
        None
    }

    /// For a read that can still be retried: forward the server's input only once the
    /// answer is complete (up to `HOLD_BYTES`), so that a server dying mid-answer (a notice
    /// already sent, or rows without their ReadyForQuery) never shows on the client.
    pub(super) fn read_hold(&self) -> ReadHold {
        if !self.rt.retryable {
            return ReadHold::Go;
        }
        let Some(conn) = self.server.as_deref() else {
            return ReadHold::Go;
        };
        let skip = self.relay.mid_message();
        let Some(buf) = conn.inbuf.get(skip..).filter(|b| !b.is_empty()) else {
            return ReadHold::Go;
        };
        match scan_answer(buf) {
            Some(h) => h,
            // Hold only while a ReadyForQuery is owed: after a Flush the client waits for
            // what has come so far.
            None if buf.len() < HOLD_BYTES && self.relay.owed_ready() > 0 => ReadHold::Wait,
            None => ReadHold::Go,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{scan_answer, ReadHold};
    use crate::protocol::{self, PgError};
    use bytes::BytesMut;

    fn notice(code: &str) -> Vec<u8> {
        // A NoticeResponse is an ErrorResponse with another tag.
        let mut b = BytesMut::new();
        PgError::error("00000", "x").encode(&mut b);
        let mut v = b.to_vec();
        v[0] = b'N';
        let at = v.windows(6).position(|w| w == b"C00000").unwrap();
        v[at + 1..at + 6].copy_from_slice(code.as_bytes());
        v
    }

    #[test]
    fn scan_finds_the_end_of_an_answer_or_a_goodbye() {
        let mut answer = BytesMut::new();
        protocol::command_complete(&mut answer, "SELECT 1");
        // Incomplete: no ReadyForQuery yet, or a message cut short.
        assert_eq!(scan_answer(&answer), None);
        assert_eq!(scan_answer(&answer[..7]), None);
        let mut done = answer.clone();
        protocol::ready_for_query(&mut done, b'I');
        assert_eq!(scan_answer(&done), Some(ReadHold::Go));
        // An ordinary notice or error keeps waiting; a shutdown notice or FATAL is a goodbye.
        let mut v = answer.to_vec();
        v.extend(notice("01000"));
        PgError::error("42601", "syntax").encode(&mut answer);
        v.extend_from_slice(&answer);
        assert_eq!(scan_answer(&v), None);
        let mut dying = v.clone();
        dying.extend(notice("57P01"));
        assert_eq!(scan_answer(&dying), Some(ReadHold::Dying));
        let mut fatal = BytesMut::from(&v[..]);
        PgError::fatal("57P01", "bye").encode(&mut fatal);
        assert_eq!(scan_answer(&fatal), Some(ReadHold::Dying));
        // COPY waits for the client: forward.
        assert_eq!(scan_answer(b"G\0\0\0\x07\0\0\0"), Some(ReadHold::Go));
        assert_eq!(scan_answer(b"X\0\0\0\x02"), Some(ReadHold::Go));
    }
}
