//! A pipeline across shards: an extended-protocol batch (up to its Sync) whose statements
//! route to different shards, each to one (psycopg `executemany` in pipeline mode, JDBC
//! batches, several Execute before one Sync). [`plan`] turns the client's messages into one
//! request per shard, each statement on its own shard (re-Parsed there as the unnamed
//! statement where that shard lacks it), every request one extended batch ending in its
//! Sync (after a BEGIN when the proxy opens a transaction for the batch). [`Pipeline`] then
//! reads the shards in the client's order, one answer at a time, and relays what the client
//! asked for: it sees what one server would have sent, without the proxy's own messages.
//!
//! Postgres stops a batch at its first error and skips the rest up to Sync: the first error
//! here ends the client's answer the same way, what the shards still send is dropped, and
//! the caller rolls the shards back (or fails the open transaction).

use bytes::{BufMut, Bytes, BytesMut};

use super::shard_stream::{Progress, ShardStream, Step};
use crate::protocol::{empty_message, encode_parse, encode_target, Frame};

/// One client message of the batch, decoded and resolved by the query loop (statement texts
/// looked up, each Bind routed to a shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Parse of statement `name` with `rest` (query text, NUL, parameter types).
    Parse {
        /// The client's statement name.
        name: String,
        /// The Parse body after the name.
        rest: Bytes,
    },
    /// Bind of statement `stmt` (whose Parse body after the name is `rest`) to the unnamed
    /// portal, on shard `shard` (an index into the batch's shards).
    Bind {
        /// The client's statement name.
        stmt: String,
        /// Its Parse body after the name.
        rest: Bytes,
        /// The Bind body after the portal and statement names.
        params: Bytes,
        /// Where it runs; None: wherever the batch is (the last shard used).
        shard: Option<usize>,
    },
    /// Describe of a statement (its name and Parse body after the name), or of the unnamed
    /// portal (None).
    Describe(Option<(String, Bytes)>),
    /// Execute of the unnamed portal; the body as the client sent it.
    Execute(Bytes),
    /// Close of a statement or portal: the proxy answers it (CloseComplete).
    Close,
    /// Flush: nothing to answer.
    Flush,
    /// The proxy answers with this ErrorResponse here; nothing after it runs.
    Fail(Bytes),
}

/// What a shard answers to one message sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// DataRows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
}

/// One answer of the client's batch, in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Turn {
    /// Shard `shard` answers; `shown`: it goes to the client (not a message of the proxy's).
    Shard {
        shard: usize,
        answer: Answer,
        shown: bool,
        /// The client message it belongs to.
        msg: usize,
    },
    /// The proxy answers client message `msg` with these bytes.
    Local {
        bytes: Bytes,
        error: bool,
        msg: usize,
    },
}

/// The requests of a pipeline, one per shard, and its answers in the client's order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to send to each shard (in the order of the batch's shards).
    pub requests: Vec<BytesMut>,
    turns: Vec<Turn>,
}

/// Builds the per-shard requests and the turns.
struct Builder {
    requests: Vec<BytesMut>,
    turns: Vec<Turn>,
    /// The statement (client name, Parse body) in each shard's unnamed slot.
    unnamed: Vec<Option<(String, Bytes)>>,
    /// The last shard a message went to.
    current: usize,
}

impl Builder {
    fn send(&mut self, shard: usize, bytes: &[u8], answer: Answer, shown: bool, msg: usize) {
        self.requests[shard].extend_from_slice(bytes);
        self.turns.push(Turn::Shard {
            shard,
            answer,
            shown,
            msg,
        });
        self.current = shard;
    }

    /// Makes `stmt` the unnamed statement of `shard` (a Parse the client does not see).
    fn ensure(&mut self, shard: usize, name: &str, rest: &Bytes, msg: usize) {
        let has = self.unnamed[shard]
            .as_ref()
            .is_some_and(|(n, r)| n == name && r == rest);
        if !has {
            self.send(shard, &encode_parse("", rest), Answer::Parse, false, msg);
            self.unnamed[shard] = Some((name.to_string(), rest.clone()));
        }
    }

    fn local(&mut self, bytes: Bytes, error: bool, msg: usize) {
        self.turns.push(Turn::Local { bytes, error, msg });
    }
}

/// The shard of the next Bind of statement `name` after message `at`, before the name is
/// parsed again.
fn next_bind_shard(messages: &[Message], at: usize, name: &str) -> Option<usize> {
    for m in messages.iter().skip(at + 1) {
        match m {
            Message::Bind { stmt, shard, .. } if stmt == name => return *shard,
            Message::Parse { name: n, .. } if n == name => return None,
            _ => {}
        }
    }
    None
}

/// Plans `messages` (the batch without its Sync) over `shards` shards. `begin`: the BEGIN
/// each shard runs first (the proxy's transaction for the batch), if any.
pub fn plan(messages: &[Message], shards: usize, begin: Option<&str>) -> Plan {
    let mut b = Builder {
        requests: vec![BytesMut::new(); shards],
        turns: Vec::new(),
        unnamed: vec![None; shards],
        current: 0,
    };
    if let Some(sql) = begin {
        let mut rest = BytesMut::with_capacity(sql.len() + 3);
        rest.put_slice(sql.as_bytes());
        rest.put_u8(0);
        rest.put_i16(0);
        let parse = encode_parse("", &rest);
        let bind = bind(&[0, 0, 0, 0, 0, 0]);
        let execute = execute_all();
        for s in 0..shards {
            b.send(s, &parse, Answer::Parse, false, 0);
            b.send(s, &bind, Answer::Bind, false, 0);
            b.send(s, &execute, Answer::Execute, false, 0);
        }
        b.current = 0;
    }
    for (i, m) in messages.iter().enumerate() {
        match m {
            Message::Parse { name, rest } => {
                let s = next_bind_shard(messages, i, name).unwrap_or(b.current);
                b.send(s, &encode_parse("", rest), Answer::Parse, true, i);
                b.unnamed[s] = Some((name.clone(), rest.clone()));
            }
            Message::Bind {
                stmt,
                rest,
                params,
                shard,
            } => {
                let s = shard.unwrap_or(b.current);
                b.ensure(s, stmt, rest, i);
                b.send(s, &bind(params), Answer::Bind, true, i);
            }
            Message::Describe(Some((name, rest))) => {
                let s = next_bind_shard(messages, i, name).unwrap_or(b.current);
                b.ensure(s, name, rest, i);
                let d = encode_target(b'D', b'S', "");
                b.send(s, &d, Answer::DescribeStatement, true, i);
            }
            Message::Describe(None) => {
                let d = encode_target(b'D', b'P', "");
                b.send(b.current, &d, Answer::DescribePortal, true, i);
            }
            Message::Execute(body) => {
                let mut e = BytesMut::with_capacity(5 + body.len());
                e.put_u8(b'E');
                e.put_i32(4 + body.len() as i32);
                e.put_slice(body);
                b.send(b.current, &e, Answer::Execute, true, i);
            }
            Message::Close => b.local(empty_message(b'3'), false, i),
            Message::Flush => {}
            Message::Fail(e) => {
                b.local(e.clone(), true, i);
                break;
            }
        }
    }
    for r in &mut b.requests {
        r.extend_from_slice(&empty_message(b'S'));
    }
    Plan {
        requests: b.requests,
        turns: b.turns,
    }
}

/// A Bind of the unnamed statement to the unnamed portal with `params` (the body after the
/// two names).
fn bind(params: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(7 + params.len());
    m.put_u8(b'B');
    m.put_i32((4 + 2 + params.len()) as i32);
    m.put_u16(0);
    m.put_slice(params);
    m.freeze()
}

/// An Execute of the unnamed portal for all its rows.
fn execute_all() -> Bytes {
    Bytes::from_static(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0])
}

/// The answer of a pipeline across shards, read in the client's order.
#[derive(Debug)]
pub struct Pipeline {
    progress: Progress,
    turns: Vec<Turn>,
    /// The turn being answered.
    next: usize,
    /// A statement Describe's ParameterDescription has come.
    partway: bool,
    /// The error went to the client.
    reported: bool,
    /// Client messages answered without error (those before this index).
    answered: usize,
}

impl Pipeline {
    /// The answer to `plan` from its shards, and the requests to send the shards.
    pub fn new(plan: Plan) -> (Pipeline, Vec<BytesMut>) {
        let machine = Pipeline {
            progress: Progress::new(plan.requests.len()),
            turns: plan.turns,
            next: 0,
            partway: false,
            reported: false,
            answered: 0,
        };
        (machine, plan.requests)
    }

    /// Answers what the proxy answers before any shard has (a leading Close).
    pub fn start(&mut self, out: &mut BytesMut) {
        let _ = self.advance(out);
    }

    /// Every client message before this index was answered without error (so a Parse
    /// before it took effect, and a Close before it closed its statement).
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// After the driver: the error, if the client has not had it yet (a cancel, or shards
    /// that ended with answers missing).
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.progress.is_done() && self.next < self.turns.len() && !self.progress.failed() {
            self.progress.incomplete();
        }
        self.report(out);
    }

    fn report(&mut self, out: &mut BytesMut) {
        if self.reported {
            return;
        }
        if let Some(e) = self.progress.error() {
            out.extend_from_slice(e);
            self.reported = true;
        }
    }

    /// The turn is answered: on to the next, answering the proxy's own turns.
    fn done(&mut self, out: &mut BytesMut) -> Step {
        self.next += 1;
        self.partway = false;
        self.advance(out)
    }

    fn advance(&mut self, out: &mut BytesMut) -> Step {
        let mut step = Step::Continue;
        while !self.progress.failed() {
            match self.turns.get(self.next) {
                Some(Turn::Local { bytes, error, msg }) => {
                    self.answered = *msg;
                    if *error {
                        step = self.progress.fail(bytes.clone());
                        self.report(out);
                        return step;
                    }
                    out.extend_from_slice(bytes);
                    self.next += 1;
                }
                Some(Turn::Shard { msg, .. }) => {
                    self.answered = *msg;
                    break;
                }
                None => {
                    self.answered = usize::MAX;
                    break;
                }
            }
        }
        step
    }

    /// Whether shard `i` still owes an answer of the batch's.
    fn owes(&self, i: usize) -> bool {
        self.turns[self.next..]
            .iter()
            .any(|t| matches!(t, Turn::Shard { shard, .. } if *shard == i))
    }

    /// A message of the current turn's shard.
    fn on_answer(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        let Some(Turn::Shard {
            shard,
            answer,
            shown,
            ..
        }) = self.turns.get(self.next).cloned()
        else {
            return self.progress.lose(i, "a message after its answers");
        };
        if shard != i {
            return self.progress.lose(i, "a message out of turn");
        }
        let ends = match (answer, frame.tag) {
            (Answer::Parse, b'1') | (Answer::Bind, b'2') => true,
            (Answer::DescribeStatement, b't') if !self.partway => {
                self.partway = true;
                false
            }
            (Answer::DescribeStatement, b'T' | b'n') if self.partway => true,
            (Answer::DescribePortal, b'T' | b'n') => true,
            (Answer::Execute, b'D') => false,
            (Answer::Execute, b'C' | b'I' | b's') => true,
            _ => return self.progress.lose(i, "an unexpected message"),
        };
        if shown {
            out.extend_from_slice(&frame.bytes);
        }
        if ends {
            return self.done(out);
        }
        Step::Continue
    }
}

impl ShardStream for Pipeline {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn wants(&self, i: usize) -> bool {
        if !self.progress.running(i) {
            return false;
        }
        if self.progress.failed() {
            return true;
        }
        match self.turns.get(self.next) {
            Some(Turn::Shard { shard, .. }) => *shard == i,
            Some(Turn::Local { .. }) => false,
            None => true,
        }
    }

    fn on_message(&mut self, i: usize, frame: Frame, out: &mut BytesMut) -> Step {
        if !self.progress.running(i) {
            let step = self.progress.lose(i, "a message after its ReadyForQuery");
            self.report(out);
            return step;
        }
        let step = match frame.tag {
            b'N' if !self.progress.failed() => {
                out.extend_from_slice(&frame.bytes);
                Step::Continue
            }
            b'N' | b'S' | b'A' => Step::Continue,
            b'Z' => {
                if !self.progress.ready(i, &frame) {
                    self.progress.lose(i, "a malformed ReadyForQuery")
                } else if !self.progress.failed() && self.owes(i) {
                    self.progress.lose(i, "a ReadyForQuery before its answers")
                } else {
                    Step::Continue
                }
            }
            b'E' => self.progress.fail(frame.bytes),
            _ if self.progress.failed() => Step::Continue,
            _ => self.on_answer(i, frame, out),
        };
        self.report(out);
        step
    }

    fn on_lost(&mut self, i: usize, out: &mut BytesMut) -> Step {
        let step = self.progress.lost(i);
        self.report(out);
        step
    }

    fn on_cancel_requested(&mut self) -> Step {
        self.progress.cancel_requested()
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
