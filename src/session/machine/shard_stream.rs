//! What every statement streamed from several shards shares: where each shard is and the
//! statement's first error ([`Progress`]), the steps the I/O driver carries out ([`Step`]),
//! and the interface the driver runs a machine through ([`ShardStream`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::protocol::{sqlstate, Frame, PgError, TxStatus};

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

/// A machine the I/O driver runs over the answers of several shards to one statement.
pub trait ShardStream {
    /// Where the shards are, and the statement's error.
    fn progress(&self) -> &Progress;
    /// Whether the driver should read more from shard `i` (ignoring the client's output,
    /// which the driver checks unless [`ShardStream::discarding`]); by default, while it runs.
    fn wants(&self, i: usize) -> bool {
        self.progress().running(i)
    }
    /// The statement has failed: what the shards still send is read and dropped, so reading
    /// them does not wait for the client.
    fn discarding(&self) -> bool {
        self.progress().failed()
    }
    /// Takes message `frame` of shard `i` (the driver passes one only while
    /// [`ShardStream::wants`] that shard); anything for the client is appended to `out`.
    fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step;
    /// Shard `i`'s connection failed (read error, end of stream).
    fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step;
    /// The client sent a CancelRequest (forwarded to every shard): nothing more is relayed,
    /// so a shard blocked writing to a slow client can take the cancel, and the statement's
    /// answer is the cancel error (also when a shard finishes before the cancel reaches it:
    /// messages have been dropped). Nothing changes once the statement has failed.
    fn on_cancel_requested(&mut self) -> Step;
    /// The statement is over: every shard answered (and, for a statement that reads the
    /// client, the client sent all it sends).
    fn finished(&self) -> bool {
        self.progress().is_done()
    }
    /// Whether the driver should pass the client's next message (COPY FROM STDIN data).
    fn wants_client(&self) -> bool {
        false
    }
    /// Takes the client's message `frame` (only while [`ShardStream::wants_client`]). Never
    /// [`Step::Broken`]: no shard's connection is at fault for what the client sent.
    fn on_client(&mut self, _frame: Frame, _out: &mut BytesMut) -> Step {
        Step::Continue
    }
    /// The client's next message cannot be framed (`e`): nothing more of the client's is
    /// passed.
    fn on_client_garbled(&mut self, _e: PgError, _out: &mut BytesMut) -> Step {
        Step::Continue
    }
    /// Appends what the machine has for each shard (in connection order) to `to_shards`.
    fn take_outgoing(&mut self, _to_shards: &mut [BytesMut]) {}
    /// Whether the client's CancelRequest reaches the shards, and a failed statement cancels
    /// the others. The commit protocol says no: like a server's COMMIT it runs to its end.
    fn cancellable(&self) -> bool {
        true
    }
    /// Whether the machine runs to its end when the client leaves (the driver stops reading
    /// and writing the client, and goes on).
    fn outlives_client(&self) -> bool {
        false
    }
    /// How long the driver waits while nothing happens on the shards before it gives up on
    /// every shard that still owes an answer ([`ShardStream::on_lost`]); `None`: as long as
    /// the shards take (a statement may run for hours).
    fn patience(&self) -> Option<Duration> {
        None
    }
    /// Whether shard `i`'s connection ended as it should, to be kept: at its ReadyForQuery,
    /// in a transaction block if and only if `in_txn`.
    fn ends_well(&self, i: usize, in_txn: bool) -> bool {
        matches!(self.progress().shard_ends().get(i), Some(ShardEnd::Ready(s)) if s.in_transaction() == in_txn)
    }
}

/// Where each shard of a statement is, and its first error.
#[derive(Debug)]
pub struct Progress {
    shards: Vec<ShardEnd>,
    error: Option<Bytes>,
}

/// An ErrorResponse as bytes.
pub fn encoded(e: &PgError) -> Bytes {
    let mut b = BytesMut::new();
    e.encode(&mut b);
    b.freeze()
}

impl Progress {
    /// `shards` shards, all running.
    pub fn new(shards: usize) -> Progress {
        Progress {
            shards: vec![ShardEnd::Running; shards],
            error: None,
        }
    }

    /// `shards` shards that have all answered, with `status` (a machine that asks them later,
    /// [`Progress::restart`]).
    pub fn answered(shards: usize, status: TxStatus) -> Progress {
        Progress {
            shards: vec![ShardEnd::Ready(status); shards],
            error: None,
        }
    }

    /// Shard `i`, which has answered, is asked again: it runs until its next ReadyForQuery.
    pub fn restart(&mut self, i: usize) {
        if let Some(s @ ShardEnd::Ready(_)) = self.shards.get_mut(i) {
            *s = ShardEnd::Running;
        }
    }

    /// How many shards answer.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Whether shard `i` still answers.
    pub fn running(&self, i: usize) -> bool {
        self.shards.get(i) == Some(&ShardEnd::Running)
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

    /// The statement's error, if it failed.
    pub fn error(&self) -> Option<&Bytes> {
        self.error.as_ref()
    }

    /// The first error is the statement's; later ones are dropped.
    pub fn fail(&mut self, error: Bytes) -> Step {
        if self.error.is_some() {
            return Step::Continue;
        }
        self.error = Some(error);
        Step::CancelOthers
    }

    /// [`Progress::fail`] with an error the proxy makes.
    pub fn fail_with(&mut self, e: &PgError) -> Step {
        self.fail(encoded(e))
    }

    /// Shard `i` sent `what`, which no shard may send here: its connection is closed and the
    /// statement fails.
    pub fn lose(&mut self, i: usize, what: &str) -> Step {
        let _ = self.fail_with(&PgError::error(
            sqlstate::PROTOCOL_VIOLATION,
            format!("shard {i} sent {what} during a statement on several shards"),
        ));
        if let Some(s) = self.shards.get_mut(i) {
            *s = ShardEnd::Lost;
        }
        Step::Broken
    }

    /// Shard `i`'s connection failed.
    pub fn lost(&mut self, i: usize) -> Step {
        if !self.running(i) {
            return Step::Continue;
        }
        self.shards[i] = ShardEnd::Lost;
        match self.fail_with(&PgError::error(
            sqlstate::CONNECTION_FAILURE,
            "a shard's connection failed during the statement",
        )) {
            Step::Continue => Step::Continue,
            _ => Step::CancelOthers,
        }
    }

    /// Shard `i`'s ReadyForQuery `frame`: false if it is malformed.
    pub fn ready(&mut self, i: usize, frame: &Frame) -> bool {
        let body = frame.body();
        match (body, body.first().copied().and_then(TxStatus::from_byte)) {
            ([_], Some(s)) if self.running(i) => {
                self.shards[i] = ShardEnd::Ready(s);
                true
            }
            _ => false,
        }
    }

    /// The answer to a CancelRequest (see [`ShardStream::on_cancel_requested`]).
    pub fn cancel_requested(&mut self) -> Step {
        self.fail_with(&PgError::error(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to user request",
        ))
    }

    /// Every shard answered, yet the statement's answer is incomplete.
    pub fn incomplete(&mut self) {
        let _ = self.fail_with(&PgError::error(
            sqlstate::INTERNAL_ERROR,
            "the shards' answers to the statement are incomplete",
        ));
    }
}

#[cfg(test)]
#[path = "shard_stream_tests.rs"]
mod tests;
