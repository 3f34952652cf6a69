//! Server -> client relay with a queue of expected responses.
//!
//! Every message sent to the server that produces a response pushes an [`Expect`] entry. Server
//! messages are matched to the front entry in order: client-visible responses are forwarded
//! byte for byte (large rows stream through without being buffered whole), responses to
//! messages the proxy injected (a Parse re-preparing a statement on this server connection, a
//! Close evicting one, a maintenance query) are swallowed, and responses the proxy makes up (a
//! ParseComplete for a statement the server already has) are emitted when they reach the front.
//! After an ErrorResponse in the extended protocol the server skips to Sync, and so does the
//! queue.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::FrameError;
use crate::protocol::{sqlstate, TxStatus};
use crate::state::Prepared;

/// The client message a forwarded response belongs to, by the tags that end its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bind: BindComplete.
    Bind,
    /// Describe: RowDescription or NoData (after ParameterDescription for statements).
    Describe,
    /// Close of a portal or unnamed statement: CloseComplete.
    Close,
    /// Execute: CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Sync: ReadyForQuery.
    Sync,
    /// Query (simple protocol): ReadyForQuery.
    Query,
    /// FunctionCall: ReadyForQuery.
    Function,
}

impl Kind {
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Kind::Bind => tag == b'2',
            Kind::Describe => matches!(tag, b'T' | b'n'),
            Kind::Close => tag == b'3',
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Sync | Kind::Query | Kind::Function => tag == b'Z',
        }
    }

    /// Extended-protocol messages end at an ErrorResponse (the server then skips to Sync).
    fn extended(self) -> bool {
        !matches!(self, Kind::Sync | Kind::Query | Kind::Function)
    }
}

/// One expected response.
#[derive(Debug)]
pub enum Expect {
    /// Responses to a forwarded client message.
    Client(Kind),
    /// A Parse: `visible` when the client sent it (its ParseComplete is forwarded), not when the
    /// proxy injected it. `stmt` is the pooled statement it prepares (None: unnamed).
    Parse {
        /// Statement prepared.
        stmt: Option<Arc<Prepared>>,
        /// Whether the client sees the ParseComplete.
        visible: bool,
        /// The client's name for the statement (a named client Parse).
        client_name: Option<String>,
    },
    /// A Close the proxy injected to evict a statement: CloseComplete is swallowed.
    InjectedClose,
    /// A simple query the proxy injected: everything through ReadyForQuery is swallowed.
    InjectedQuery(&'static str),
    /// A response made up by the proxy, emitted when it reaches the front.
    Synthetic(Bytes),
    /// A made-up response ending in its ReadyForQuery (a refused Query).
    SyntheticReady(Bytes),
}

/// Something the session must act on.
#[derive(Debug)]
pub enum Event {
    /// The server's ReadyForQuery that answers a client's Sync, Query or FunctionCall, with
    /// its status byte. It is not written to the output: the session writes the
    /// ReadyForQuery the client is to see (its own transaction status), and `process`
    /// returns right after it so that nothing the server sent later comes before it.
    Ready(TxStatus),
    /// A made-up response ending in ReadyForQuery was written to the output.
    ProxyReady,
    /// A Parse failed or was skipped: the server does not have the statement.
    ParseFailed {
        /// The statement.
        stmt: Arc<Prepared>,
        /// The client's name for it, if the client sent the Parse.
        client_name: Option<String>,
    },
    /// A query the proxy injected failed (logged by the session).
    InjectedFailed(&'static str),
    /// The server reported a setting's new value (ParameterStatus) in a client's exchange:
    /// its name, if the message was whole in the buffer.
    ParameterStatus(Option<String>),
    /// The server reported that a prepared statement no longer matches the schema ("cache
    /// lookup failed for type", "cached plan must not change result type").
    StalePlan,
}

/// The relay state of one client's server connection.
#[derive(Debug, Default)]
pub struct Relay {
    queue: VecDeque<Expect>,
    /// Bytes of the current server message still to move.
    remaining: usize,
    /// Whether those bytes go to the client.
    forwarding: bool,
    /// Client-visible ReadyForQuery messages still owed.
    owed_ready: usize,
    /// The server is in COPY FROM STDIN started by an extended-protocol Execute: it ignores
    /// every Sync until the client's CopyDone or CopyFail.
    copy_in: bool,
    /// The message being classified is the client's ReadyForQuery (see [`Event::Ready`]).
    client_ready: bool,
    /// What the server answered the client's request so far (for per-shape statistics; the
    /// session takes it at each ReadyForQuery).
    pub answered: crate::admin::queries::Answered,
    /// Count rows and completions into `answered` (per-shape statistics are on); errors
    /// are looked at in any case.
    pub counting: bool,
}

impl Relay {
    /// Adds an expected response (in the order messages are sent to the server).
    pub fn push(&mut self, e: Expect) {
        if matches!(
            e,
            Expect::Client(Kind::Sync | Kind::Query | Kind::Function) | Expect::SyntheticReady(..)
        ) {
            self.owed_ready += 1;
        }
        self.queue.push_back(e);
    }

    /// Responses still expected.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when the server owes nothing and no message is half-relayed.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.remaining == 0
    }

    /// Idle, and nothing else remembered: a fresh relay would act the same (`forwarding`
    /// matters only while a message moves). A hibernating session drops it.
    pub fn at_rest(&self) -> bool {
        self.idle() && self.owed_ready == 0 && !self.copy_in && !self.client_ready
    }

    /// ReadyForQuery messages the server still owes the client.
    /// Bytes of a message already begun that `process` has yet to take from the input.
    pub fn mid_message(&self) -> usize {
        self.remaining
    }

    pub fn owed_ready(&self) -> usize {
        self.owed_ready
    }

    /// Whether the server will ignore a client Sync sent now (COPY IN after an Execute).
    pub fn sync_ignored(&self) -> bool {
        self.copy_in
    }

    /// The client ended its COPY data (CopyDone or CopyFail): Syncs count again.
    pub fn copy_ended(&mut self) {
        self.copy_in = false;
    }

    /// `process` has something to do without more server input: a made-up response is at
    /// the front of the queue.
    pub fn synthetic_due(&self) -> bool {
        self.remaining == 0
            && matches!(
                self.queue.front(),
                Some(Expect::Synthetic(_) | Expect::SyntheticReady(..))
            )
    }

    /// A relay that counts rows and completions if `counting`.
    pub fn counting(counting: bool) -> Relay {
        Relay {
            counting,
            ..Relay::default()
        }
    }

    /// Drops all state (the server connection is gone); whether it counts stays.
    pub fn reset(&mut self) {
        // The queue keeps its memory: a reset at every checkout would otherwise cost an
        // allocation per transaction.
        let mut queue = std::mem::take(&mut self.queue);
        queue.clear();
        *self = Relay {
            queue,
            counting: self.counting,
            ..Relay::default()
        };
    }

    /// Moves what the server sent (`inbuf`) to the client (`out`), swallowing and synthesizing
    /// as the queue says. Stops when `inbuf` holds no complete header, or right after the
    /// client's ReadyForQuery (which it does not write: see [`Event::Ready`]).
    pub fn process(
        &mut self,
        inbuf: &mut BytesMut,
        out: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        loop {
            if self.remaining > 0 {
                let n = self.remaining.min(inbuf.len());
                if n == 0 {
                    return Ok(());
                }
                if self.forwarding {
                    out.extend_from_slice(&inbuf[..n]);
                }
                inbuf.advance(n);
                self.remaining -= n;
                continue;
            }
            self.emit_synthetic(out, events);
            let Some((tag, len)) = crate::protocol::peek_header(inbuf) else {
                return Ok(());
            };
            if len < 4 {
                return Err(FrameError::BadLength(len));
            }
            if tag == b'Z' && (len != 5 || inbuf.len() < 6) {
                if len != 5 {
                    return Err(FrameError::BadLength(len));
                }
                return Ok(());
            }
            // ParameterStatus, ErrorResponse and CommandComplete are looked into (see
            // `classify`): wait for the whole message while it is small.
            if matches!(tag, b'S' | b'E' | b'C') && len < 8192 && inbuf.len() < len as usize + 1 {
                return Ok(());
            }
            self.forwarding = self.classify(tag, inbuf, events);
            if std::mem::take(&mut self.client_ready) {
                // The client's ReadyForQuery: the session writes it (see `Event::Ready`).
                inbuf.advance(6);
                return Ok(());
            }
            self.remaining = len as usize + 1;
        }
    }

    /// Emits made-up responses at the front of the queue. Also call it right after pushing
    /// one: with nothing in front it is due at once.
    pub fn emit_synthetic(&mut self, out: &mut BytesMut, events: &mut Vec<Event>) {
        if self.remaining > 0 {
            return;
        }
        loop {
            match self.queue.front() {
                Some(Expect::Synthetic(_) | Expect::SyntheticReady(..)) => {}
                _ => return,
            }
            match self.queue.pop_front() {
                Some(Expect::Synthetic(b)) => out.extend_from_slice(&b),
                Some(Expect::SyntheticReady(b)) => {
                    out.extend_from_slice(&b);
                    self.owed_ready = self.owed_ready.saturating_sub(1);
                    events.push(Event::ProxyReady);
                }
                _ => return,
            }
        }
    }

    /// Decides whether the message starting `inbuf` is forwarded, updating the queue.
    fn classify(&mut self, tag: u8, inbuf: &[u8], events: &mut Vec<Event>) -> bool {
        let front = self.queue.front();
        if let Some(Expect::InjectedQuery(what)) = front {
            if tag == b'E' {
                events.push(Event::InjectedFailed(what));
            }
            if tag == b'Z' {
                self.queue.pop_front();
            }
            // A ParameterStatus is the server's value of a setting the proxy just made match
            // the client's (a startup value restored after RESET, say): the client is told.
            return tag == b'S';
        }
        if tag == b'G' && matches!(front, Some(Expect::Client(Kind::Execute))) {
            // COPY FROM STDIN in the extended protocol: the Syncs the client sent after the
            // Execute reach the server in COPY IN mode and are ignored, with no ReadyForQuery.
            self.copy_in = true;
            let before = self.queue.len();
            let mut first = true;
            self.queue.retain(|e| {
                let keep = first || !matches!(e, Expect::Client(Kind::Sync));
                first = false;
                keep
            });
            self.owed_ready = self.owed_ready.saturating_sub(before - self.queue.len());
            return true;
        }
        if tag == b'E' && is_stale_plan(inbuf) {
            events.push(Event::StalePlan);
        }
        // Asynchronous messages can arrive at any time.
        if matches!(tag, b'N' | b'S' | b'A') {
            if tag == b'S' {
                let name = inbuf.get(5..).and_then(|b| {
                    let end = b.iter().position(|&c| c == 0)?;
                    std::str::from_utf8(&b[..end]).ok().map(str::to_string)
                });
                events.push(Event::ParameterStatus(name));
            }
            return true;
        }
        match front {
            None => true,
            Some(Expect::Parse { visible, .. }) => {
                let visible = *visible;
                match tag {
                    b'1' => {
                        if let Some(Expect::Parse {
                            stmt: Some(stmt), ..
                        }) = self.queue.pop_front()
                        {
                            stmt.validated
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        visible
                    }
                    b'E' => {
                        self.count_answer(tag, false, inbuf);
                        if let Some(Expect::Parse {
                            stmt: Some(stmt),
                            client_name,
                            ..
                        }) = self.queue.pop_front()
                        {
                            events.push(Event::ParseFailed { stmt, client_name });
                        }
                        self.skip_to_sync(events);
                        true
                    }
                    _ => true,
                }
            }
            Some(Expect::InjectedClose) => match tag {
                b'3' => {
                    self.queue.pop_front();
                    false
                }
                b'E' => {
                    self.queue.pop_front();
                    self.skip_to_sync(events);
                    true
                }
                _ => true,
            },
            Some(Expect::Client(kind)) => {
                let kind = *kind;
                self.count_answer(tag, matches!(kind, Kind::Execute | Kind::Query), inbuf);
                if tag == b'E' && kind.extended() {
                    self.queue.pop_front();
                    self.skip_to_sync(events);
                } else if kind.ends_with(tag) {
                    self.queue.pop_front();
                    if tag == b'Z' {
                        self.owed_ready = self.owed_ready.saturating_sub(1);
                        // An unknown status byte never counts as idle: the connection is not released.
                        let status = TxStatus::from_byte(inbuf[5]).unwrap_or(TxStatus::Failed);
                        events.push(Event::Ready(status));
                        self.client_ready = true;
                        return false;
                    }
                }
                true
            }
            Some(Expect::InjectedQuery(_) | Expect::Synthetic(_) | Expect::SyntheticReady(..)) => {
                true
            }
        }
    }

    /// Counts a CommandComplete's rows (of an Execute or a Query: `completes`) and the first
    /// error of the client's request.
    fn count_answer(&mut self, tag: u8, completes: bool, inbuf: &[u8]) {
        let len = crate::protocol::peek_header(inbuf).map_or(0, |(_, l)| l as usize + 1);
        let msg = inbuf.get(..len).unwrap_or(inbuf);
        match tag {
            b'C' if completes && self.counting => self.answered.complete(msg),
            b'E' => self.answered.error(msg),
            _ => {}
        }
    }

    /// After an extended-protocol error the server ignores everything up to Sync.
    fn skip_to_sync(&mut self, events: &mut Vec<Event>) {
        while let Some(front) = self.queue.front() {
            if matches!(front, Expect::Client(Kind::Sync)) {
                return;
            }
            match self.queue.pop_front() {
                Some(Expect::Parse {
                    stmt: Some(stmt),
                    client_name,
                    ..
                }) => events.push(Event::ParseFailed { stmt, client_name }),
                Some(Expect::Client(Kind::Query | Kind::Function) | Expect::SyntheticReady(..)) => {
                    self.owed_ready = self.owed_ready.saturating_sub(1)
                }
                _ => {}
            }
        }
    }
}

/// Whether the ErrorResponse at the start of `inbuf` (if it is all there) says a prepared
/// statement went stale with the schema.
fn is_stale_plan(inbuf: &[u8]) -> bool {
    let Some(len) = crate::protocol::peek_header(inbuf).map(|(_, l)| l.max(4) as usize) else {
        return false;
    };
    let Some(body) = inbuf.get(5..1 + len) else {
        return false;
    };
    let (code, message) = crate::protocol::error_fields(body);
    (code == sqlstate::INTERNAL_ERROR && message.starts_with("cache lookup failed for type"))
        || (code == sqlstate::FEATURE_NOT_SUPPORTED
            && message.starts_with("cached plan must not change result type"))
}

#[cfg(test)]
mod tests;
