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
pub use super::shard_stream::Step;
use super::shard_stream::{encoded, Progress, ShardStream};
use crate::fanout::{MergeError, Merger, RowDescription};
use crate::protocol::{sqlstate, Frame, PgError};
use crate::sql::analyze::fanout::PlanSpec;

/// Above this many bytes of rows waiting in the merge for slower shards, a shard is not read
/// until the others catch up.
pub const PAUSE_BYTES: usize = 64 * 1024;

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
    progress: Progress,
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
            progress: Progress::new(shards),
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

    /// The first error is the statement's; the merge is over.
    fn fail(&mut self, error: Bytes) -> Step {
        self.merge = Merge::Failed;
        self.progress.fail(error)
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
                .and_then(|plan| Merger::new(plan, self.progress.shard_count()));
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
        if !self.progress.is_done() {
            return;
        }
        let complete = match &self.merge {
            Merge::Running(m) => m.is_finished(),
            // Every shard answered without a row description or command tag.
            Merge::Waiting(_) => false,
            Merge::Failed => true,
        };
        if !complete {
            self.progress.incomplete();
        }
        if let Some(e) = self.progress.error() {
            out.extend_from_slice(e);
        }
    }
}

impl ShardStream for FanOutRead {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn wants(&self, i: usize) -> bool {
        if !self.progress.running(i) {
            return false;
        }
        match &self.merge {
            Merge::Running(m) => m.buffered_bytes(i) < PAUSE_BYTES,
            Merge::Waiting(_) | Merge::Failed => true,
        }
    }

    fn discarding(&self) -> bool {
        matches!(self.merge, Merge::Failed)
    }

    fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        if !self.progress.running(i) {
            return self.lose(i, "a message after its ReadyForQuery", out);
        }
        match frame.tag {
            b'Z' if self.progress.ready(i, &frame) => {
                self.end_if_done(out);
                Step::Continue
            }
            b'Z' => self.lose(i, "a malformed ReadyForQuery", out),
            b'E' => self.fail(frame.bytes),
            // While discarding, shards are read whatever the client's output holds: their
            // notices go too, or the output would grow without bound.
            b'N' if self.discarding() => Step::Continue,
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

    fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step {
        let step = self.progress.lost(i);
        if self.progress.failed() {
            self.merge = Merge::Failed;
        }
        self.end_if_done(out);
        step
    }

    fn on_cancel_requested(&mut self) -> Step {
        self.merge = Merge::Failed;
        self.progress.cancel_requested()
    }
}

impl FanOutRead {
    fn lose(&mut self, i: usize, what: &str, out: &mut BytesMut) -> Step {
        self.merge = Merge::Failed;
        let step = self.progress.lose(i, what);
        self.end_if_done(out);
        step
    }
}

#[cfg(test)]
#[path = "fan_out_read_tests.rs"]
mod tests;
