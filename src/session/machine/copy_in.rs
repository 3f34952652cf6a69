//! [`CopyIn`]: `COPY ... FROM STDIN` into a sharded table, run by the same I/O driver as
//! every statement on several shards. The COPY starts on every shard; the client gets one
//! CopyInResponse once all have started; each row of the client's CopyData goes to the shard
//! of its key (every shard for a replicated table or the CSV header), sent in CopyData
//! messages of about [`FLUSH_AT`] bytes; the client's CopyDone ends the COPY everywhere and
//! the client gets one `COPY n`.
//!
//! A shard's error (at the start or in the middle: a constraint, a lost connection), the
//! client's CopyFail or CancelRequest, or a row the splitter cannot place fails the COPY at
//! once on every shard (CopyFail to each shard still copying), not at the end. The client's
//! remaining CopyData up to its CopyDone or CopyFail is read and dropped, and then it gets the
//! statement's one error, so a client that sends all its data before reading gets its answer.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::shard_stream::{Progress, ShardEnd, ShardStream, Step};
use crate::fanout::CommandTag;
use crate::protocol::{self, sqlstate, Frame, PgError};
use crate::shard::copy::{CopySplitter, RowTarget};
use crate::shard::route::ShardMap;
use crate::shard::ShardId;

/// Rows are sent to a shard in CopyData messages of about this size.
pub const FLUSH_AT: usize = 64 * 1024;

/// Where one shard's COPY is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The COPY was sent; its CopyInResponse has not come.
    Starting,
    /// In copy-in mode: rows may be sent.
    Copying,
    /// Out of copy-in mode (CopyDone or CopyFail sent, or the shard's error): its answer
    /// and ReadyForQuery are awaited.
    Closing,
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Not told to send yet.
    Waiting,
    /// Sending its data.
    Sending,
    /// Sent CopyDone or CopyFail, or never will (the COPY failed before it started).
    Done,
}

/// One `COPY ... FROM STDIN` on several shards.
#[derive(Debug)]
pub struct CopyIn {
    progress: Progress,
    map: Arc<ShardMap>,
    splitter: CopySplitter,
    /// The table is sharded (rows are counted over the shards); else each shard holds a copy
    /// of every row (counted once).
    by_key: bool,
    /// The shards' numbers in the map, in connection order.
    shards: Vec<ShardId>,
    side: Vec<Side>,
    /// The first shard's CopyInResponse.
    header: Option<Bytes>,
    client: Client,
    /// Rows for each shard not yet in a CopyData.
    rows_for: Vec<Vec<u8>>,
    /// Bytes for each shard the driver has not taken yet.
    pending: Vec<BytesMut>,
    /// Which shards have sent their CommandComplete.
    completed: Vec<bool>,
    rows: u64,
    answered: bool,
    /// The statement's answer (`COPY n` or its error), once it is over: the caller's to
    /// give, after it has committed the shards' implicit transactions (or not).
    answer: Option<Bytes>,
}

fn copy_data(payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 5);
    out.put_u8(b'd');
    out.put_i32(payload.len() as i32 + 4);
    out.extend_from_slice(payload);
}

fn copy_fail(reason: &str, out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::copy_fail(reason, out);
}

impl CopyIn {
    /// A COPY on `shards` (their numbers in `map`, in connection order), its rows cut by
    /// `splitter`; `by_key`: the table is sharded.
    pub fn new(
        map: Arc<ShardMap>,
        splitter: CopySplitter,
        by_key: bool,
        shards: &[ShardId],
    ) -> CopyIn {
        let n = shards.len();
        CopyIn {
            progress: Progress::new(n),
            map,
            splitter,
            by_key,
            shards: shards.to_vec(),
            side: vec![Side::Starting; n],
            header: None,
            client: Client::Waiting,
            rows_for: vec![Vec::new(); n],
            pending: vec![BytesMut::new(); n],
            completed: vec![false; n],
            rows: 0,
            answered: false,
            answer: None,
        }
    }

    /// The COPY fails with `error` (unless it already has): every shard still copying gets a
    /// CopyFail, a client not yet told to send never will, and a shard still starting its
    /// COPY (waiting for a lock, say) is cancelled.
    fn fail(&mut self, error: Bytes) -> Step {
        if self.progress.fail(error) == Step::Continue {
            return Step::Continue;
        }
        self.progress_failed_now();
        self.cancel_starting()
    }

    fn fail_with(&mut self, e: &PgError) -> Step {
        self.fail(super::shard_stream::encoded(e))
    }

    /// Shard `i`'s CopyInResponse.
    fn on_started(&mut self, i: usize, msg: Bytes, out: &mut BytesMut) -> Step {
        if self.side[i] != Side::Starting {
            return self.progress.lose(i, "a second CopyInResponse");
        }
        self.side[i] = Side::Copying;
        if self.progress.failed() {
            copy_fail("COPY failed on another shard", &mut self.pending[i]);
            self.side[i] = Side::Closing;
            return Step::Continue;
        }
        match &self.header {
            None => self.header = Some(msg),
            Some(h) if *h != msg => {
                return self.fail_with(&PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "the shards start the COPY in different formats",
                ))
            }
            Some(_) => {}
        }
        if self.side.iter().all(|s| *s == Side::Copying) {
            if let Some(h) = &self.header {
                out.extend_from_slice(h);
            }
            self.client = Client::Sending;
        }
        Step::Continue
    }

    /// Shard `i`'s CommandComplete `frame`.
    fn on_complete(&mut self, i: usize, frame: &Frame) -> Step {
        if self.side[i] != Side::Closing || self.completed[i] {
            return self.progress.lose(i, "an unexpected CommandComplete");
        }
        match CommandTag::parse(&frame.bytes) {
            Ok(CommandTag {
                rows: Some(n),
                ref command,
            }) if command == "COPY" => {
                self.completed[i] = true;
                // A replicated table holds a copy on every shard: count one.
                self.rows = if self.by_key {
                    self.rows.saturating_add(n)
                } else {
                    self.rows.max(n)
                };
                Step::Continue
            }
            _ => self.progress.lose(i, "an unexpected command tag"),
        }
    }

    /// Rows of the client's CopyData `data` (or, `data` None, its CopyDone: the last row)
    /// to their shards' buffers; full buffers become CopyData.
    fn route(&mut self, data: Option<&[u8]>) -> Result<(), PgError> {
        let (rows_for, shards) = (&mut self.rows_for, &self.shards);
        let mut to = |t: RowTarget, row: &[u8]| match t {
            RowTarget::Shard(s) => {
                if let Some(j) = shards.iter().position(|x| *x == s) {
                    rows_for[j].extend_from_slice(row);
                }
            }
            RowTarget::All => rows_for.iter_mut().for_each(|b| b.extend_from_slice(row)),
        };
        match data {
            Some(d) => self.splitter.push(d, &self.map, &mut to)?,
            None => self.splitter.finish(&self.map, &mut to)?,
        }
        for (j, rows) in self.rows_for.iter_mut().enumerate() {
            if rows.len() >= FLUSH_AT || (data.is_none() && !rows.is_empty()) {
                copy_data(rows, &mut self.pending[j]);
                rows.clear();
            }
        }
        Ok(())
    }

    /// The client's CopyDone: the rest of the rows and CopyDone to every shard.
    fn on_client_done(&mut self) -> Step {
        self.client = Client::Done;
        if self.progress.failed() {
            return Step::Continue;
        }
        if let Err(e) = self.route(None) {
            return self.fail_with(&e);
        }
        for (j, side) in self.side.iter_mut().enumerate() {
            if *side == Side::Copying {
                postgres_protocol::message::frontend::copy_done(&mut self.pending[j]);
                *side = Side::Closing;
            }
        }
        Step::Continue
    }

    /// Once every shard is at ReadyForQuery and the client has sent all it sends: `COPY n`,
    /// or the error, kept for [`CopyIn::take_answer`] (not in the client's output: the caller
    /// may still have to commit). `_out` is where the other machines put theirs.
    fn end_if_done(&mut self, _out: &mut BytesMut) {
        if !self.finished() || self.answered {
            return;
        }
        self.answered = true;
        if !self.progress.failed() && !self.completed.iter().all(|c| *c) {
            self.progress.incomplete();
        }
        let mut answer = BytesMut::new();
        match self.progress.error() {
            Some(e) => answer.extend_from_slice(e),
            None => protocol::command_complete(&mut answer, &format!("COPY {}", self.rows)),
        }
        self.answer = Some(answer.freeze());
    }

    /// The statement's answer once it is over (`COPY n` or its error), taken once.
    pub fn take_answer(&mut self) -> Option<Bytes> {
        self.answer.take()
    }
}

// `wants` as by default: read all the time (a shard's error in the middle of the COPY
// stops it at once).
impl ShardStream for CopyIn {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn finished(&self) -> bool {
        self.progress.is_done() && self.client != Client::Sending
    }

    fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        if !self.progress.running(i) {
            let step = self.progress.lose(i, "a message after its ReadyForQuery");
            self.end_if_done(out);
            return step;
        }
        let step = match frame.tag {
            b'E' => {
                // The shard itself is out of copy-in mode.
                self.side[i] = Side::Closing;
                self.fail(frame.bytes)
            }
            b'Z' if self.side[i] == Side::Closing && self.progress.ready(i, &frame) => {
                Step::Continue
            }
            b'Z' => self
                .progress
                .lose(i, "a ReadyForQuery in the middle of a COPY"),
            b'N' if !self.progress.failed() => {
                out.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            b'N' | b'S' | b'A' => Step::Continue,
            b'G' => self.on_started(i, frame.bytes, out),
            b'C' => self.on_complete(i, &frame),
            _ => self.progress.lose(i, "an unexpected message"),
        };
        if self.progress.shard_ends()[i] == ShardEnd::Lost {
            self.drop_shard(i);
        }
        self.end_if_done(out);
        step
    }

    fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step {
        let mut step = self.progress.lost(i);
        self.drop_shard(i);
        if step == Step::CancelOthers {
            // The lost shard's error is the statement's.
            step = self.cancel_starting();
        }
        self.end_if_done(out);
        step
    }

    fn on_cancel_requested(&mut self) -> Step {
        self.fail_with(&PgError::error(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to user request",
        ))
    }

    fn wants_client(&self) -> bool {
        self.client == Client::Sending
    }

    fn on_client(&mut self, frame: Frame, out: &mut BytesMut) -> Step {
        if self.client != Client::Sending {
            return Step::Continue;
        }
        let step = match frame.tag {
            b'd' if self.progress.failed() => Step::Continue,
            b'd' => match self.route(Some(frame.body())) {
                Ok(()) => Step::Continue,
                Err(e) => self.fail_with(&e),
            },
            b'c' => self.on_client_done(),
            b'f' => {
                self.client = Client::Done;
                let reason = protocol::query_text(frame.body()).to_string();
                self.fail_with(&PgError::error(
                    sqlstate::QUERY_CANCELED,
                    format!("COPY from stdin failed: {reason}"),
                ))
            }
            // Flush and Sync mean nothing in the middle of a COPY.
            b'H' | b'S' => Step::Continue,
            other => {
                // As PostgreSQL: the COPY ends, the message is not taken.
                self.client = Client::Done;
                self.fail_with(&PgError::error(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                ))
            }
        };
        self.end_if_done(out);
        step
    }

    fn on_client_garbled(&mut self, e: PgError, out: &mut BytesMut) -> Step {
        self.client = Client::Done;
        let step = self.fail_with(&e);
        self.end_if_done(out);
        step
    }

    fn take_outgoing(&mut self, to_shards: &mut [BytesMut]) {
        for (to, pending) in to_shards.iter_mut().zip(self.pending.iter_mut()) {
            if pending.is_empty() {
                continue;
            }
            if to.is_empty() {
                std::mem::swap(to, pending);
            } else {
                to.extend_from_slice(pending);
                pending.clear();
            }
        }
    }
}

impl CopyIn {
    /// The statement has just failed: CopyFail to the shards still copying; a client not yet
    /// told to send never will.
    fn progress_failed_now(&mut self) {
        for (j, side) in self.side.iter_mut().enumerate() {
            if *side == Side::Copying {
                copy_fail("COPY failed on another shard", &mut self.pending[j]);
                *side = Side::Closing;
            }
        }
        self.rows_for.iter_mut().for_each(Vec::clear);
        if self.client == Client::Waiting {
            self.client = Client::Done;
        }
    }

    /// Shard `i` is lost (the statement has failed): nothing more goes to it, and the shards
    /// still copying get their CopyFail.
    fn drop_shard(&mut self, i: usize) {
        self.side[i] = Side::Closing;
        self.pending[i].clear();
        self.progress_failed_now();
    }

    /// CancelOthers if a running shard has not started its COPY.
    fn cancel_starting(&self) -> Step {
        let starting = (0..self.side.len())
            .any(|j| self.side[j] == Side::Starting && self.progress.running(j));
        if starting {
            Step::CancelOthers
        } else {
            Step::Continue
        }
    }
}

#[cfg(test)]
#[path = "copy_in_tests.rs"]
mod tests;
