//! [`CopyOut`]: `COPY ... TO STDOUT` of a sharded table, streamed from every shard. The
//! client gets one CopyOutResponse once every shard has started (all in the same format), the
//! shards' CopyData as they arrive (a COPY has no order), then one CopyDone and one
//! `COPY n` with the rows of all shards. Rows are not held: a shard is read only while the
//! client's output has room (the driver's cap), so a table of any size goes through.

use bytes::{Bytes, BytesMut};

use super::shard_stream::{Progress, ShardStream, Step};
use crate::fanout::CommandTag;
use crate::protocol::{self, empty_message, sqlstate, Frame, PgError};

/// One `COPY ... TO STDOUT` on several shards.
#[derive(Debug)]
pub struct CopyOut {
    progress: Progress,
    /// The first shard's CopyOutResponse.
    header: Option<Bytes>,
    /// Which shards have sent their CopyOutResponse.
    started: Vec<bool>,
    /// The CopyOutResponse went to the client.
    header_sent: bool,
    /// Which shards have sent their CopyDone.
    copied: Vec<bool>,
    rows: u64,
}

impl CopyOut {
    /// A COPY on `shards` shards.
    pub fn new(shards: usize) -> CopyOut {
        CopyOut {
            progress: Progress::new(shards),
            header: None,
            started: vec![false; shards],
            header_sent: false,
            copied: vec![false; shards],
            rows: 0,
        }
    }

    fn on_header(&mut self, i: usize, msg: Bytes, out: &mut BytesMut) -> Step {
        if self.started[i] {
            return self.progress.lose(i, "a second CopyOutResponse");
        }
        self.started[i] = true;
        match &self.header {
            None => self.header = Some(msg),
            Some(h) if *h != msg => {
                return self.progress.fail_with(&PgError::error(
                    sqlstate::INTERNAL_ERROR,
                    "the shards answer the COPY in different formats",
                ))
            }
            Some(_) => {}
        }
        if self.started.iter().all(|s| *s) && !self.progress.failed() {
            if let Some(h) = &self.header {
                out.extend_from_slice(h);
            }
            self.header_sent = true;
        }
        Step::Continue
    }

    /// Once every shard is at ReadyForQuery: CopyDone and the summed tag, or the error.
    fn end_if_done(&mut self, out: &mut BytesMut) {
        if !self.progress.is_done() {
            return;
        }
        let complete = self.header_sent && self.copied.iter().all(|c| *c);
        if !complete && !self.progress.failed() {
            self.progress.incomplete();
        }
        match self.progress.error() {
            Some(e) => out.extend_from_slice(e),
            None => {
                out.extend_from_slice(&empty_message(b'c'));
                protocol::command_complete(out, &format!("COPY {}", self.rows));
            }
        }
    }
}

impl ShardStream for CopyOut {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn wants(&self, i: usize) -> bool {
        // A shard that has started waits for the others' CopyOutResponse before its rows go.
        self.progress.running(i) && (self.progress.failed() || self.header_sent || !self.started[i])
    }

    fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        if !self.progress.running(i) {
            let step = self.progress.lose(i, "a message after its ReadyForQuery");
            self.end_if_done(out);
            return step;
        }
        let step = match frame.tag {
            b'Z' if self.progress.ready(i, &frame) => Step::Continue,
            b'E' => self.progress.fail(frame.bytes),
            // Read whatever the client's output holds once failed: notices go too.
            b'N' if self.progress.failed() => Step::Continue,
            b'N' => {
                out.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            b'S' | b'A' => Step::Continue,
            _ if self.progress.failed() && frame.tag != b'Z' => Step::Continue,
            b'H' => self.on_header(i, frame.bytes, out),
            b'd' if self.started[i] && !self.copied[i] => {
                out.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            b'c' if self.started[i] && !self.copied[i] => {
                self.copied[i] = true;
                Step::Continue
            }
            b'C' if self.copied[i] => match CommandTag::parse(&frame.bytes) {
                Ok(CommandTag {
                    rows: Some(n),
                    ref command,
                }) if command == "COPY" => {
                    self.rows = self.rows.saturating_add(n);
                    Step::Continue
                }
                _ => self.progress.lose(i, "an unexpected command tag"),
            },
            b'Z' => self.progress.lose(i, "a malformed ReadyForQuery"),
            _ => self.progress.lose(i, "an unexpected message"),
        };
        self.end_if_done(out);
        step
    }

    fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step {
        let step = self.progress.lost(i);
        self.end_if_done(out);
        step
    }

    fn on_cancel_requested(&mut self) -> Step {
        self.progress.cancel_requested()
    }
}

#[cfg(test)]
#[path = "copy_out_tests.rs"]
mod tests;
