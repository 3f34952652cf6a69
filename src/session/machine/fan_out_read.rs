//! [`FanOutRead`]: the decisions of one read statement streamed from several shards.
//!
//! The I/O driver sends the statement to every shard, then hands each message a shard sends
//! to [`FanOutRead::on_message`] and writes what comes out to the client as the client takes
//! it. Rows go through the streaming [`Merger`] (k-way ORDER BY merge, LIMIT/OFFSET,
//! aggregates) as they arrive; the driver reads a shard only while [`FanOutRead::wants`] it
//! and the client's output has room, so memory stays bounded by the output cap plus what the
//! merge must hold (a shard far ahead of the others waits; groups of an aggregate and the
//! rows of an unordered DISTINCT count against `cap`).
//!
//! The first ErrorResponse (from a shard, the merge, or a lost shard) ends the merge: later
//! rows are discarded, the driver cancels the statement on the shards still running
//! ([`Step::CancelOthers`]), and once every shard is at ReadyForQuery the error is the last
//! thing the client gets (after any rows already sent, as a single server sends rows and then
//! the error of a statement that fails halfway).

use bytes::{Bytes, BytesMut};

use super::framing::{Extended, Framing};
use crate::fanout::{MergeError, Merger, RowDescription};
use crate::protocol::{sqlstate, Frame, PgError, TxStatus};
use crate::sql::analyze::fanout::PlanSpec;

/// Above this many bytes of rows waiting in the merge for slower shards, a shard is not read
/// until the others catch up.
pub const PAUSE_BYTES: usize = 64 * 1024;

/// What the driver does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Go on reading.
    Continue,
    /// The statement failed: cancel it on every shard still running, keep reading them to
    /// their ReadyForQuery.
    CancelOthers,
    /// The shard's connection is in an unknown state: close it, do not read it again, and
    /// cancel the statement on the other shards.
    Broken,
}

/// Where one shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardEnd {
    /// Still answering.
    Running,
    /// Sent its ReadyForQuery with this status.
    Ready(TxStatus),
    /// Its connection failed or sent something unexpected; it must be closed.
    Lost,
}

#[derive(Debug)]
enum Merge {
    /// No shard has described its columns yet.
    Waiting(PlanSpec),
    Running(Box<Merger>),
    /// An error ended it; rows are discarded.
    Failed,
}

/// One read statement on several shards, from the first message to the last ReadyForQuery.
#[derive(Debug)]
pub struct FanOutRead {
    merge: Merge,
    shards: Vec<ShardEnd>,
    error: Option<Bytes>,
    /// Bytes of rows given to a merge that keeps them (see [`Merger::accumulates`]).
    held: usize,
    cap: usize,
    /// For the extended protocol: the merge's output, framed for the client from here.
    framing: Option<Box<Framing>>,
    merged: BytesMut,
}

/// The error of a merge holding more than `cap` bytes.
pub fn too_large(cap: usize) -> PgError {
    PgError::error(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("the answers of this statement on several shards are over {cap} bytes"),
    )
    .with_hint("narrow the query (WHERE, LIMIT) or raise [proxy] max_fanout_bytes")
}

impl FanOutRead {
    /// A statement on `shards` shards merged by `spec`, holding at most `cap` bytes of rows
    /// in a merge that accumulates them.
    pub fn new(spec: PlanSpec, shards: usize, cap: usize) -> FanOutRead {
        FanOutRead {
            merge: Merge::Waiting(spec),
            shards: vec![ShardEnd::Running; shards],
            error: None,
            held: 0,
            cap,
            framing: None,
            merged: BytesMut::new(),
        }
    }

    /// The same for a client that asked through the extended protocol: the shards were asked
    /// `Parse, Describe (statement), Bind (text results), Execute, Sync`, and the client gets
    /// its own batch's answer (see [`Extended`]).
    pub fn extended(mut self, ext: Extended) -> FanOutRead {
        self.framing = Some(Box::new(Framing::new(ext)));
        self
    }

    /// Whether the client was told its Parse and Bind completed (a named statement it
    /// prepared now exists).
    pub fn parse_answered(&self) -> bool {
        self.framing.as_ref().is_some_and(|f| f.started())
    }

    /// Whether the driver should read more from shard `i` (ignoring the client's output,
    /// which the driver checks unless [`FanOutRead::discarding`]).
    pub fn wants(&self, i: usize) -> bool {
        if self.shards.get(i) != Some(&ShardEnd::Running) {
            return false;
        }
        match &self.merge {
            Merge::Running(m) => m.buffered_bytes(i) < PAUSE_BYTES,
            Merge::Waiting(_) | Merge::Failed => true,
        }
    }

    /// The statement has failed: what the shards still send is read and dropped, so reading
    /// them does not wait for the client.
    pub fn discarding(&self) -> bool {
        matches!(self.merge, Merge::Failed)
    }

    /// Every shard has answered to its ReadyForQuery (or was lost).
    pub fn is_done(&self) -> bool {
        self.shards.iter().all(|s| *s != ShardEnd::Running)
    }

    /// Where each shard is.
    pub fn shard_ends(&self) -> &[ShardEnd] {
        &self.shards
    }

    /// Whether the client gets an error for the statement.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Takes message `frame` of shard `i`; anything for the client is appended to `out`.
    pub fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        if self.shards.get(i) != Some(&ShardEnd::Running) {
            return self.lose(i, "a message after its ReadyForQuery", out);
        }
        match frame.tag {
            b'Z' => match frame.body().first().copied().and_then(TxStatus::from_byte) {
                Some(s) if frame.body().len() == 1 => {
                    self.shards[i] = ShardEnd::Ready(s);
                    self.end_if_done(out);
                    Step::Continue
                }
                _ => self.lose(i, "a malformed ReadyForQuery", out),
            },
            b'E' => self.fail(frame.bytes),
            b'N' => {
                out.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            // Settings and notifications of a statement on several shards are not relayed
            // (the driver resets the connections' settings when the statement may have
            // changed any).
            b'S' | b'A' => Step::Continue,
            b'T' | b'D' | b'C' => self.merge_message(i, frame.bytes, out),
            // Answers to the extended protocol's Parse, Bind and Describe.
            b'1' | b'2' if self.framing.is_some() => Step::Continue,
            b't' => match &mut self.framing {
                Some(f) => {
                    f.param_desc(frame.bytes);
                    Step::Continue
                }
                None => self.lose(i, "an unexpected message", out),
            },
            _ => self.lose(i, "an unexpected message", out),
        }
    }

    /// Shard `i`'s connection failed (read error, end of stream).
    pub fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step {
        if self.shards.get(i) != Some(&ShardEnd::Running) {
            return Step::Continue;
        }
        self.shards[i] = ShardEnd::Lost;
        let e = PgError::error(
            sqlstate::CONNECTION_FAILURE,
            "a shard's connection failed during the statement",
        );
        let step = self.fail(encoded(&e));
        self.end_if_done(out);
        match step {
            Step::Continue => Step::Continue,
            _ => Step::CancelOthers,
        }
    }

    /// The client sent a CancelRequest (forwarded to every shard): rows stop flowing at once,
    /// so a shard blocked writing to a slow client can take the cancel, and the statement's
    /// answer is the cancel error (also when a shard finishes before the cancel reaches it:
    /// rows have been dropped). Nothing changes once the statement has failed.
    pub fn on_cancel_requested(&mut self) -> Step {
        self.fail(encoded(&PgError::error(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to user request",
        )))
    }

    fn lose(&mut self, i: usize, what: &str, out: &mut BytesMut) -> Step {
        let e = PgError::error(
            sqlstate::PROTOCOL_VIOLATION,
            format!("shard {i} sent {what} during a statement on several shards"),
        );
        let _ = self.fail(encoded(&e));
        if let Some(s) = self.shards.get_mut(i) {
            *s = ShardEnd::Lost;
        }
        self.end_if_done(out);
        Step::Broken
    }

    /// The first error is the statement's; later ones are dropped.
    fn fail(&mut self, error: Bytes) -> Step {
        self.merge = Merge::Failed;
        if self.error.is_some() {
            return Step::Continue;
        }
        self.error = Some(error);
        Step::CancelOthers
    }

    fn merge_error(&mut self, e: &MergeError) -> Step {
        self.fail(encoded(&e.to_pg_error()))
    }

    fn merge_message(&mut self, i: usize, msg: Bytes, out: &mut BytesMut) -> Step {
        if let Merge::Waiting(spec) = &self.merge {
            let names: Vec<String> = match msg.first() {
                Some(b'T') => match RowDescription::parse(&msg) {
                    Ok(d) => d.fields.into_iter().map(|f| f.name).collect(),
                    Err(e) => {
                        let e = MergeError::Malformed {
                            shard: i,
                            reason: e.into(),
                        };
                        return self.merge_error(&e);
                    }
                },
                _ => Vec::new(),
            };
            let merger = spec
                .resolve(&names)
                .and_then(|plan| Merger::new(plan, self.shards.len()));
            match merger {
                Ok(m) => self.merge = Merge::Running(Box::new(m)),
                Err(e) => return self.merge_error(&e),
            }
        }
        let Merge::Running(m) = &mut self.merge else {
            return Step::Continue;
        };
        let row_bytes = if msg.first() == Some(&b'D') {
            msg.len()
        } else {
            0
        };
        let target = match self.framing {
            Some(_) => &mut self.merged,
            None => &mut *out,
        };
        let r = m.push(i, msg).and_then(|()| m.drain(target));
        if let Err(e) = r {
            return self.merge_error(&e);
        }
        let accumulates = m.accumulates();
        if let Some(f) = &mut self.framing {
            if let Err(e) = f.relay(&mut self.merged, out) {
                return self.fail(encoded(&e));
            }
        }
        if accumulates {
            self.held = self.held.saturating_add(row_bytes);
            if self.held > self.cap {
                return self.fail(encoded(&too_large(self.cap)));
            }
        }
        Step::Continue
    }

    /// Once every shard is at ReadyForQuery: the error, or a check that the merge completed.
    fn end_if_done(&mut self, out: &mut BytesMut) {
        if !self.is_done() {
            return;
        }
        if self.error.is_none() {
            let complete = match &self.merge {
                Merge::Running(m) => m.is_finished(),
                // Every shard answered without a row description or command tag.
                Merge::Waiting(_) => false,
                Merge::Failed => true,
            };
            if !complete {
                self.error = Some(encoded(&PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "the shards' answers to the statement are incomplete",
                )));
            }
        }
        if let Some(e) = &self.error {
            out.extend_from_slice(e);
        }
    }
}

fn encoded(e: &PgError) -> Bytes {
    let mut b = BytesMut::new();
    e.encode(&mut b);
    b.freeze()
}

#[cfg(test)]
#[path = "fan_out_read_tests.rs"]
mod tests;
