//! The transparent retry of a read whose server failed before any byte of its answer
//! reached the client, without I/O: which frames are kept for a replay, when the server's
//! input is held back (until the answer is complete, so a failure can still be hidden),
//! and what a retry replays on which servers it avoids.

use crate::protocol::error_class::{ErrorClass, Fault};
use crate::protocol::{error_fields, error_severity, parse_body, Frame};

/// A read is retried on at most this many other servers.
pub const MAX_RETRIES: u32 = 3;
/// Most frames a read keeps for a retry; a larger request is not retried.
pub const MAX_REPLAY_BYTES: usize = 1024 * 1024;
/// Most server bytes a retryable read keeps back while waiting for its ReadyForQuery.
pub const HOLD_BYTES: usize = 64 * 1024;

/// What to do with a retryable read's server input (see [`hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHold {
    /// Forward it.
    Go,
    /// Keep it back until the answer is complete, so a failure can still be hidden.
    Wait,
    /// The server said goodbye before answering in full: retry elsewhere.
    Dying,
    /// A replica refused the read for a reason of its own that another server need not
    /// share (an error of the server's that says the statement did not take effect, see
    /// [`ErrorClass`]: above all the hot-standby conflict, `40001` "canceling statement due
    /// to conflict with recovery"): retry elsewhere, without banning the replica.
    Refused,
}

/// The retry state of one client's current server connection.
#[derive(Debug, Default)]
pub struct ReadRetry {
    /// Frames sent since the read's checkout, for a replay on another server.
    replay: Vec<Frame>,
    replay_bytes: usize,
    /// The frames since checkout may be replayed: a read, and nothing reached the client.
    retryable: bool,
    /// Servers that failed the current request.
    avoid: Vec<String>,
    retries: u32,
    /// Not a read: a request that may write, retryable only while the proxy's own setup
    /// query ahead of it is unanswered, and only if the server's goodbye (a FATAL) comes
    /// first (then the server ran nothing of it; a connection that just drops is not
    /// retried: its answers may have been lost with it).
    setup_only: bool,
}

impl ReadRetry {
    /// A server connection was checked out; `retryable`: for a read that may be retried.
    pub fn checked_out(&mut self, retryable: bool) {
        self.retryable = retryable;
        self.setup_only = false;
        self.replay.clear();
        self.replay_bytes = 0;
    }

    /// A request that may write goes to a server connection behind the proxy's own setup
    /// query (the client's settings): until that is answered, a server that says goodbye
    /// first (a shutdown's `57P01` on a pooled connection) ran nothing of the request, which
    /// may then be replayed on another connection.
    pub fn guard_setup(&mut self) {
        if !self.retryable {
            self.retryable = true;
            self.setup_only = true;
        }
    }

    /// The proxy's own query was answered: from now on the server may have run the client's
    /// request, which is then never replayed (a read goes on being retryable).
    pub fn setup_answered(&mut self) {
        if self.setup_only {
            self.answered();
        }
    }

    /// Whether a connection that just drops may be retried (reads only, see
    /// [`ReadRetry::guard_setup`]).
    pub fn retry_on_drop(&self) -> bool {
        !self.setup_only
    }

    /// The server connection was released: the next request starts afresh.
    pub fn released(&mut self) {
        *self = ReadRetry::default();
    }

    /// Records a frame about to be sent, for a possible replay. A named Parse or Close (it
    /// changes the client's statement map), COPY data or a request over
    /// [`MAX_REPLAY_BYTES`] makes the read not retryable.
    pub fn record(&mut self, frame: &Frame) {
        if !self.retryable {
            return;
        }
        let replayable = match frame.tag {
            b'Q' | b'B' | b'E' | b'D' | b'S' | b'H' => true,
            b'P' => parse_body(frame.body()).is_some_and(|p| p.name.is_empty()),
            _ => false,
        };
        self.replay_bytes += frame.bytes.len();
        if !replayable || self.replay_bytes > MAX_REPLAY_BYTES {
            self.answered();
            return;
        }
        self.replay.push(frame.clone());
    }

    /// Something reached the client: a failure can no longer be hidden.
    pub fn answered(&mut self) {
        self.retryable = false;
        self.setup_only = false;
        self.replay.clear();
        self.replay_bytes = 0;
    }

    /// The read may still be retried.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// A failure of the server can be hidden by a retry elsewhere.
    pub fn can_retry(&self) -> bool {
        self.retryable && self.retries < MAX_RETRIES
    }

    /// The server at `addr` failed: it is avoided from now on, and the frames to replay (in
    /// order) are returned. Only one retry per checkout: the replay is checked out afresh.
    pub fn retry(&mut self, addr: String) -> Vec<Frame> {
        self.retries += 1;
        self.retryable = false;
        self.avoid.push(addr);
        self.replay_bytes = 0;
        std::mem::take(&mut self.replay)
    }

    /// Servers that failed the current request.
    pub fn avoid(&self) -> &[String] {
        &self.avoid
    }
}

/// Whether a retryable read's server input (`buf`, from a message boundary) may go to the
/// client yet: only once the answer is complete (up to [`HOLD_BYTES`]), so that a server
/// dying mid-answer (a notice already sent, or rows without their ReadyForQuery) never shows
/// on the client. `owed_ready`: ReadyForQuery messages the server still owes (after a Flush
/// without one the client waits for what has come so far). `on_replica`: the server is a
/// replica, whose retry-safe errors are retried elsewhere ([`ReadHold::Refused`]).
pub fn hold(buf: &[u8], owed_ready: usize, on_replica: bool) -> ReadHold {
    if buf.is_empty() {
        return ReadHold::Go;
    }
    match scan_answer(buf, on_replica) {
        Some(h) => h,
        None if buf.len() < HOLD_BYTES && owed_ready > 0 => ReadHold::Wait,
        None => ReadHold::Go,
    }
}

/// Looks through the complete messages of `buf` (from a message boundary) for the end of an
/// answer or a server's goodbye: an ErrorResponse of severity FATAL or PANIC, or the
/// NoticeResponse with SQLSTATE class 57P (operator intervention) that Postgres sends when it
/// is shut down or crashes (`WARNING_CLIENT_ONLY`); on a replica, also an ERROR another
/// server may not give.
fn scan_answer(buf: &[u8], on_replica: bool) -> Option<ReadHold> {
    let mut messages = crate::protocol::whole_messages(buf);
    for (tag, body) in messages.by_ref() {
        match tag {
            b'E' if matches!(error_severity(body), "FATAL" | "PANIC") => {
                return Some(ReadHold::Dying)
            }
            b'E' if on_replica && refused_by_server(body) => return Some(ReadHold::Refused),
            b'N' if error_fields(body).0.starts_with("57P") => return Some(ReadHold::Dying),
            // The end of an answer, or the server waits for the client (COPY).
            b'Z' | b'G' | b'W' => return Some(ReadHold::Go),
            _ => {}
        }
    }
    // A bad length: forward, and the relay reports it.
    messages.malformed().then_some(ReadHold::Go)
}

/// Whether ErrorResponse `body` is the server's fault and says the statement did not take
/// effect (so running it on another server is safe and may succeed).
fn refused_by_server(body: &[u8]) -> bool {
    let class = ErrorClass::of(&error_fields(body).0);
    class.fault == Fault::Server && class.retry_safe
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
