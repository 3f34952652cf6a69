//! The transparent retry of a read whose server failed before any byte of its answer
//! reached the client: the server's input is held back until the answer is complete, and a
//! failure replays the read's frames on another server.

use super::super::{lock, End, Loop};
use crate::protocol::{error_fields, error_severity};

/// A read is retried on at most this many other servers.
const MAX_RETRIES: u32 = 3;

/// What to do with a retryable read's server input (see `Loop::read_hold`).
#[derive(Debug, PartialEq, Eq)]
pub(in crate::session::query_loop) enum ReadHold {
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

impl Loop<'_> {
    /// Whether a failure of the current server can be hidden by retrying elsewhere.
    fn can_retry(&self) -> bool {
        self.rt.retryable && self.rt.retries < MAX_RETRIES && self.server.is_some()
    }

    /// The server connection failed: retry the read elsewhere if nothing reached the client
    /// yet (returns None), else tell the client and close.
    pub(in crate::session::query_loop) fn lost(&mut self, what: &str) -> Option<End> {
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
    pub(in crate::session::query_loop) fn read_hold(&self) -> ReadHold {
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
        protocol::ready_for_query(&mut done, crate::protocol::TxStatus::Idle);
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
