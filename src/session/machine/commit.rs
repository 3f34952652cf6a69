//! [`Commit`]: the end of a transaction that ran on several shards, as rounds of statements
//! on its participants' connections, which the I/O driver runs like any statement on several
//! shards.
//!
//! - Two-phase: the coordinator (position 0) prepares first, writing the decision log row in
//!   the same query; then every other participant at once. With every vote yes (and the
//!   caller's go, [`Commit::commit`]), COMMIT PREPARED on the coordinator, which makes the
//!   decision durable, then on every other participant at once, then the log row is deleted.
//!   A vote no, or a participant lost before it voted, rolls back every part: the
//!   coordinator's first in importance (the caller tells the client "rolled back" only once
//!   it is gone).
//! - One-phase: COMMIT or ROLLBACK on every participant at once (a failed or READ ONLY
//!   transaction, or one with one participant).
//!
//! The machine needs no connection but its participants'. What they could not finish (a
//! participant lost in the commit round, the coordinator lost while rolling back) is in the
//! [`Outcome`], for the caller to finish on fresh connections or leave to recovery. Like a
//! server's COMMIT it runs to its end: a CancelRequest does not reach it, a client that
//! leaves does not stop it, and a participant that does not answer within
//! [`STEP_PATIENCE`] is given up (its connection closed).

use std::time::Duration;

use bytes::BytesMut;

use super::shard_stream::{Progress, ShardEnd, ShardStream, Step};
use crate::protocol::{error_fields, sqlstate, Frame, TxStatus};

/// How long one round waits for a participant's answer.
pub const STEP_PATIENCE: Duration = Duration::from_secs(5);

/// A participant's error in a round: its SQLSTATE (empty when it sent none) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The participant's position.
    pub at: usize,
    pub code: String,
    pub why: String,
}

/// How a COMMIT PREPARED or ROLLBACK PREPARED of one part went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// It ran.
    Done,
    /// No such prepared transaction (42704): recovery, or an earlier try whose answer was
    /// lost, finished it.
    Missing,
    /// It did not run (the server's error, or a lost connection): why.
    Unfinished(String),
}

/// How the commit went, once the machine has [finished](ShardStream::finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Running,
    /// Every participant is prepared: [`Commit::commit`] goes on with phase two.
    Prepared,
    /// The coordinator's part is READ ONLY (its log row was refused): it is rolled back, and
    /// the others go on without it.
    CoordinatorReadOnly,
    /// A participant could not prepare (the first in position order): every part is rolled
    /// back, the coordinator's as `coordinator` says.
    RolledBack {
        refusal: Refusal,
        coordinator: Finish,
    },
    /// The outcome is commit. `unfinished`: the parts whose COMMIT PREPARED did not run
    /// (position, why); `log_deleted`: the decision log row is gone.
    Committed {
        unfinished: Vec<(usize, String)>,
        log_deleted: bool,
    },
    /// One phase: the first participant's error, if any.
    Ended { error: Option<Refusal> },
}

/// Where the protocol is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    PrepareCoordinator,
    PrepareOthers,
    Prepared,
    CommitCoordinator,
    CommitOthers,
    DeleteLog,
    /// Rolling back after the coordinator's READ ONLY refusal.
    DropCoordinator,
    RollBack,
    /// COMMIT or ROLLBACK on every participant.
    Everywhere,
    Over,
}

/// What one participant answered in the current round.
#[derive(Debug, Clone, Default)]
struct Reply {
    /// Its last CommandComplete tag.
    tag: String,
    /// Its first error: SQLSTATE and message.
    error: Option<(String, String)>,
}

/// The end of a transaction on several shards (see the module documentation).
#[derive(Debug)]
pub struct Commit {
    progress: Progress,
    phase: Phase,
    replies: Vec<Reply>,
    /// Whether each participant was asked anything (one never asked is still in the
    /// transaction).
    asked: Vec<bool>,
    outgoing: Vec<BytesMut>,
    /// The parts' transaction names (two-phase).
    gids: Vec<String>,
    log_insert: String,
    log_delete: String,
    prepared: Vec<bool>,
    refusal: Option<Refusal>,
    /// Each part's COMMIT PREPARED or ROLLBACK PREPARED.
    finished: Vec<Option<Finish>>,
    outcome: Outcome,
}

impl Commit {
    fn new(n: usize, phase: Phase) -> Commit {
        Commit {
            progress: Progress::answered(n, TxStatus::InTransaction),
            phase,
            replies: vec![Reply::default(); n],
            asked: vec![false; n],
            outgoing: vec![BytesMut::new(); n],
            gids: Vec::new(),
            log_insert: String::new(),
            log_delete: String::new(),
            prepared: vec![false; n],
            refusal: None,
            finished: vec![None; n],
            outcome: Outcome::Running,
        }
    }

    /// Two-phase commit of the parts named `gids` (in position order, the coordinator
    /// first); `log_insert` writes the decision log row on the coordinator, `log_delete`
    /// removes it.
    pub fn two_phase(gids: Vec<String>, log_insert: String, log_delete: String) -> Commit {
        let mut m = Commit::new(gids.len(), Phase::PrepareCoordinator);
        m.gids = gids;
        m.log_insert = log_insert;
        m.log_delete = log_delete;
        if !m.gids.is_empty() {
            let sql = format!("{}; PREPARE TRANSACTION '{}'", m.log_insert, m.gids[0]);
            m.ask(0, &sql);
        }
        m.advance();
        m
    }

    /// COMMIT (`commit`) or ROLLBACK on each of `n` participants at once.
    pub fn one_phase(n: usize, commit: bool) -> Commit {
        let mut m = Commit::new(n, Phase::Everywhere);
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        (0..n).for_each(|i| m.ask(i, sql));
        m.advance();
        m
    }

    /// Phase two, after [`Outcome::Prepared`]: the outcome is commit.
    pub fn commit(&mut self) {
        if self.phase != Phase::Prepared {
            return;
        }
        self.phase = Phase::CommitCoordinator;
        self.outcome = Outcome::Running;
        let sql = format!("COMMIT PREPARED '{}'", self.gids[0]);
        self.ask(0, &sql);
        self.advance();
    }

    /// How it went.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Sends `sql` to participant `i` in this round (not to one that is lost).
    fn ask(&mut self, i: usize, sql: &str) {
        if self.progress.shard_ends()[i] == ShardEnd::Lost {
            return;
        }
        let _ = postgres_protocol::message::frontend::query(sql, &mut self.outgoing[i]);
        self.progress.restart(i);
        self.replies[i] = Reply::default();
        self.asked[i] = true;
    }

    /// Participant `i` voted yes: its PREPARE TRANSACTION ran and left it idle.
    fn vote(&self, i: usize) -> Result<(), Refusal> {
        let refuse = |code: &str, why: &str| Refusal {
            at: i,
            code: code.to_string(),
            why: why.to_string(),
        };
        let reply = &self.replies[i];
        match (self.progress.shard_ends()[i], &reply.error) {
            (_, Some((code, why))) => Err(refuse(code, why)),
            (ShardEnd::Ready(TxStatus::Idle), None)
                if reply.tag.starts_with("PREPARE TRANSACTION") =>
            {
                Ok(())
            }
            (ShardEnd::Ready(TxStatus::Idle), None) => {
                Err(refuse("", "the transaction was rolled back"))
            }
            (ShardEnd::Ready(_), None) => Err(refuse("", "unexpected transaction state")),
            (_, None) => Err(refuse("", "connection lost or timed out")),
        }
    }

    /// How participant `i`'s COMMIT PREPARED or ROLLBACK PREPARED went.
    fn finish_of(&self, i: usize) -> Finish {
        match (self.progress.shard_ends()[i], &self.replies[i].error) {
            (_, Some((code, _))) if code == sqlstate::UNDEFINED_OBJECT => Finish::Missing,
            (_, Some((_, why))) => Finish::Unfinished(why.clone()),
            (ShardEnd::Ready(_), None) => Finish::Done,
            (_, None) => Finish::Unfinished("connection lost or timed out".into()),
        }
    }

    /// The participant's error in this round, if any.
    fn error_of(&self, i: usize) -> Option<Refusal> {
        match (self.progress.shard_ends()[i], &self.replies[i].error) {
            (_, Some((code, why))) => Some(Refusal {
                at: i,
                code: code.clone(),
                why: why.clone(),
            }),
            (ShardEnd::Lost, None) => Some(Refusal {
                at: i,
                code: String::new(),
                why: "connection lost or timed out".into(),
            }),
            _ => None,
        }
    }

    fn round_over(&self) -> bool {
        self.progress.is_done()
    }

    /// Starts the next rounds while the current one is over, until one waits for answers or
    /// the machine is done (a round that asks nobody is over at once).
    fn advance(&mut self) {
        while self.round_over() && !matches!(self.phase, Phase::Prepared | Phase::Over) {
            self.next_round();
        }
    }

    /// The round of `self.phase` is over: what it found, and the next round.
    fn next_round(&mut self) {
        let n = self.replies.len();
        match self.phase {
            Phase::PrepareCoordinator => match self.vote(0) {
                Ok(()) => {
                    self.prepared[0] = true;
                    self.phase = Phase::PrepareOthers;
                    for i in 1..n {
                        let sql = format!("PREPARE TRANSACTION '{}'", self.gids[i]);
                        self.ask(i, &sql);
                    }
                }
                Err(r) if r.code == sqlstate::READ_ONLY_SQL_TRANSACTION => {
                    self.phase = Phase::DropCoordinator;
                    self.ask(0, "ROLLBACK");
                }
                Err(r) => self.roll_back(r),
            },
            Phase::PrepareOthers => {
                let mut first = None;
                for i in 1..n {
                    match self.vote(i) {
                        Ok(()) => self.prepared[i] = true,
                        Err(r) => {
                            first.get_or_insert(r);
                        }
                    }
                }
                match first {
                    None => {
                        self.phase = Phase::Prepared;
                        self.outcome = Outcome::Prepared;
                    }
                    Some(r) => self.roll_back(r),
                }
            }
            Phase::DropCoordinator => self.over(Outcome::CoordinatorReadOnly),
            Phase::RollBack => {
                let coordinator = if self.prepared[0] {
                    self.finish_of(0)
                } else {
                    Finish::Done
                };
                let refusal = self.refusal.take().unwrap_or_else(|| Refusal {
                    at: 0,
                    code: String::new(),
                    why: String::new(),
                });
                self.over(Outcome::RolledBack {
                    refusal,
                    coordinator,
                });
            }
            Phase::CommitCoordinator => {
                // Whatever the coordinator answered, the outcome is commit: unreachable, it is
                // still prepared with all the others, and recovery commits them all.
                self.finished[0] = Some(self.finish_of(0));
                self.phase = Phase::CommitOthers;
                for i in 1..n {
                    let sql = format!("COMMIT PREPARED '{}'", self.gids[i]);
                    self.ask(i, &sql);
                }
            }
            Phase::CommitOthers => {
                for i in 1..n {
                    self.finished[i] = Some(self.finish_of(i));
                }
                let all = self.unfinished().is_empty();
                if all && self.progress.shard_ends()[0] != ShardEnd::Lost {
                    self.phase = Phase::DeleteLog;
                    let sql = self.log_delete.clone();
                    self.ask(0, &sql);
                } else {
                    self.committed(false);
                }
            }
            Phase::DeleteLog => {
                let deleted = self.error_of(0).is_none();
                self.committed(deleted);
            }
            Phase::Everywhere => {
                let error = (0..n).find_map(|i| self.error_of(i));
                self.over(Outcome::Ended { error });
            }
            Phase::Prepared | Phase::Over => {}
        }
    }

    /// Rolls back every part after `refusal`: a prepared part with ROLLBACK PREPARED, one
    /// still in its transaction (or failed in it) with ROLLBACK.
    fn roll_back(&mut self, refusal: Refusal) {
        self.refusal = Some(refusal);
        self.phase = Phase::RollBack;
        for i in 0..self.replies.len() {
            if self.prepared[i] {
                let sql = format!("ROLLBACK PREPARED '{}'", self.gids[i]);
                self.ask(i, &sql);
            } else {
                self.ask(i, "ROLLBACK");
            }
        }
    }

    fn unfinished(&self) -> Vec<(usize, String)> {
        self.finished
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                Some(Finish::Unfinished(why)) => Some((i, why.clone())),
                _ => None,
            })
            .collect()
    }

    fn committed(&mut self, log_deleted: bool) {
        let unfinished = self.unfinished();
        self.over(Outcome::Committed {
            unfinished,
            log_deleted,
        });
    }

    fn over(&mut self, outcome: Outcome) {
        self.phase = Phase::Over;
        self.outcome = outcome;
    }
}

impl ShardStream for Commit {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn discarding(&self) -> bool {
        // Nothing goes to the client: the participants are read whatever its output.
        true
    }

    fn on_message(&mut self, i: usize, frame: Frame, _out: &mut BytesMut) -> Step {
        let step = match frame.tag {
            b'Z' if self.progress.ready(i, &frame) => Step::Continue,
            b'C' => {
                let body = frame.body();
                let text = body.strip_suffix(b"\0").unwrap_or(body);
                self.replies[i].tag = String::from_utf8_lossy(text).into_owned();
                return Step::Continue;
            }
            b'E' => {
                let fields = error_fields(frame.body());
                self.replies[i].error.get_or_insert(fields);
                return Step::Continue;
            }
            // Notices (a ROLLBACK outside a transaction warns) and parameter changes.
            b'N' | b'S' => return Step::Continue,
            b'Z' => self.progress.lose(i, "a malformed ReadyForQuery"),
            t => self
                .progress
                .lose(i, &format!("message type {:?}", t as char)),
        };
        self.advance();
        step
    }

    fn on_lost(&mut self, i: usize, _out: &mut BytesMut) -> Step {
        let _ = self.progress.lost(i);
        self.advance();
        Step::Continue
    }

    fn on_cancel_requested(&mut self) -> Step {
        Step::Continue
    }

    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Prepared | Phase::Over)
    }

    fn take_outgoing(&mut self, to_shards: &mut [BytesMut]) {
        for (out, to) in self.outgoing.iter_mut().zip(to_shards.iter_mut()) {
            if !out.is_empty() {
                to.extend_from_slice(out);
                out.clear();
            }
        }
    }

    fn cancellable(&self) -> bool {
        false
    }

    fn outlives_client(&self) -> bool {
        true
    }

    fn patience(&self) -> Option<Duration> {
        Some(STEP_PATIENCE)
    }

    fn ends_well(&self, i: usize, _in_txn: bool) -> bool {
        // One never asked is still in the transaction; every other ends outside one.
        let expected = if self.asked[i] {
            TxStatus::Idle
        } else {
            TxStatus::InTransaction
        };
        self.progress.shard_ends()[i] == ShardEnd::Ready(expected)
    }
}

#[cfg(test)]
#[path = "commit_tests.rs"]
mod tests;
