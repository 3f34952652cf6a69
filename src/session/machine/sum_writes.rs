//! [`SumWrites`]: a write, schema change or maintenance statement run on several shards, as
//! one answer. Every shard's answer is read to its ReadyForQuery; the client gets the first
//! RowDescription (RETURNING), every shard's rows and one CommandComplete with the counts
//! summed, or (a write to a replicated table, every shard holding a copy) the first shard's
//! answer alone; any shard's error is the answer instead, never a partial result presented as
//! success. What is held (rows of RETURNING) is capped; over the cap the statement fails.

use bytes::{Bytes, BytesMut};

use super::fan_out_read::too_large;
use super::shard_stream::{Progress, ShardStream, Step};
use crate::fanout::CommandTag;
use crate::protocol::{sqlstate, Frame, PgError};

/// The answer of a statement on several shards, summed.
#[derive(Debug)]
pub struct SumWrites {
    progress: Progress,
    /// Answer as the first shard does (every shard holds a copy).
    one_copy: bool,
    /// Most bytes of rows held.
    cap: usize,
    held: usize,
    notices: BytesMut,
    row_description: Option<Bytes>,
    /// Each shard's rows.
    rows: Vec<Vec<Bytes>>,
    /// Each shard's CommandComplete.
    tags: Vec<Option<CommandTag>>,
    param_desc: Option<Bytes>,
}

/// What [`SumWrites`] answers, for the caller to relay: notices, then the error or the
/// summed result; and a ParameterDescription if the shards were asked for one.
#[derive(Debug)]
pub struct Summed {
    /// Notices, then an ErrorResponse or RowDescription, DataRows and CommandComplete.
    pub out: BytesMut,
    /// A shard's ParameterDescription.
    pub param_desc: Option<Bytes>,
}

impl SumWrites {
    /// A statement on `shards` shards holding at most `cap` bytes of rows.
    pub fn new(shards: usize, one_copy: bool, cap: usize) -> SumWrites {
        SumWrites {
            progress: Progress::new(shards),
            one_copy,
            cap,
            held: 0,
            notices: BytesMut::new(),
            row_description: None,
            rows: vec![Vec::new(); shards],
            tags: vec![None; shards],
            param_desc: None,
        }
    }

    /// The answer, once every shard has answered (or failed).
    pub fn answer(self) -> Summed {
        let mut out = self.notices;
        if let Some(e) = self.progress.error() {
            out.extend_from_slice(e);
            return Summed {
                out,
                param_desc: self.param_desc,
            };
        }
        let counted = if self.one_copy { 1 } else { self.rows.len() };
        if let Some(t) = &self.row_description {
            out.extend_from_slice(t);
        }
        for rows in self.rows.iter().take(counted) {
            for r in rows {
                out.extend_from_slice(r);
            }
        }
        let mut total: Option<CommandTag> = None;
        for tag in self.tags.into_iter().take(counted).flatten() {
            total = Some(match total {
                None => tag,
                Some(mut t) => {
                    if let (Some(a), Some(b)) = (t.rows, tag.rows) {
                        t.rows = Some(a.saturating_add(b));
                    }
                    t
                }
            });
        }
        if let Some(t) = total {
            t.encode(&mut out);
        }
        Summed {
            out,
            param_desc: self.param_desc,
        }
    }

    fn hold(&mut self, i: usize, row: Bytes) -> Step {
        self.held = self.held.saturating_add(row.len());
        if self.held > self.cap {
            self.rows.iter_mut().for_each(Vec::clear);
            return self.progress.fail_with(&too_large(self.cap));
        }
        self.rows[i].push(row);
        Step::Continue
    }
}

impl ShardStream for SumWrites {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn discarding(&self) -> bool {
        // Nothing reaches the client before the end: the shards are read whatever its
        // output holds.
        true
    }

    fn on_message(&mut self, i: usize, frame: Frame, _out: &mut BytesMut) -> Step {
        if !self.progress.running(i) {
            return self.progress.lose(i, "a message after its ReadyForQuery");
        }
        match frame.tag {
            b'Z' if self.progress.ready(i, &frame) => Step::Continue,
            b'Z' => self.progress.lose(i, "a malformed ReadyForQuery"),
            b'E' => self.progress.fail(frame.bytes),
            _ if self.progress.failed() => Step::Continue,
            b'N' => {
                self.notices.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            b'T' => {
                self.row_description.get_or_insert(frame.bytes);
                Step::Continue
            }
            b'D' => self.hold(i, frame.bytes),
            b'C' => match CommandTag::parse(&frame.bytes) {
                Ok(tag) => {
                    self.tags[i] = Some(tag);
                    Step::Continue
                }
                Err(e) => self.progress.fail_with(&PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    format!("bad CommandComplete from a shard: {e}"),
                )),
            },
            b't' => {
                self.param_desc.get_or_insert(frame.bytes);
                Step::Continue
            }
            // ParseComplete, BindComplete, NoData of an extended-protocol request;
            // ParameterStatus, notifications, an empty query.
            b'1' | b'2' | b'n' | b'S' | b'A' | b'I' => Step::Continue,
            // COPY or anything else a statement on several shards cannot relay.
            _ => self
                .progress
                .lose(i, "a message a statement on several shards cannot relay"),
        }
    }

    fn on_lost(&mut self, i: usize, _out: &mut BytesMut) -> Step {
        self.progress.lost(i)
    }

    fn on_cancel_requested(&mut self) -> Step {
        self.progress.cancel_requested()
    }
}

#[cfg(test)]
#[path = "sum_writes_tests.rs"]
mod tests;
