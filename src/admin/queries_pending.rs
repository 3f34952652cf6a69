//! The shapes of the requests a session sent and has not yet answered (see
//! [`super::QueryStats`]): one entry per run of calls of one shape, matched to each
//! ReadyForQuery in order.

use std::sync::Arc;

use super::{Calls, ShapeStats};

/// Most runs of shapes noted for the requests not yet answered: beyond it, calls join the
/// last run of their request, or (when that run is another request's) are not counted, so
/// memory stays bounded for any pipeline.
pub(super) const MAX_PENDING: usize = 64;

/// Most requests (Queries and Syncs) awaiting their answers that are told apart: later
/// ones join the last (their calls count, their times are shared with it).
const MAX_REQUESTS: usize = 4096;

/// One run of calls of one shape in a request.
#[derive(Debug)]
pub(super) struct Run {
    stats: Arc<ShapeStats>,
    /// The request's number.
    request: u64,
    calls: u64,
    shards: u64,
    /// Index of the run's first call among the request's server commands.
    first: u64,
}

/// A request (a simple Query, or the extended-protocol messages up to a Sync).
#[derive(Debug, Default, Clone)]
struct Request {
    number: u64,
    /// Server commands noted (Executes, or one per simple Query).
    commands: u64,
    /// A simple Query: all of the server's answers (one text may hold several statements)
    /// belong to its one shape.
    simple: bool,
    /// The request failed without a server's answer (a fan-out's error).
    failed: bool,
    /// When its first message arrived.
    at: Option<std::time::Instant>,
    /// A simple Query's message, kept for the slow-query log.
    text: Option<bytes::Bytes>,
}

/// Most requests awaiting their answers whose texts are kept for the slow-query log.
const MAX_TEXTS: usize = 64;

/// The shapes of the requests a session sent and has not yet answered, in order: each
/// ReadyForQuery the client gets records the oldest.
#[derive(Debug, Default)]
pub struct Pending {
    pub(super) runs: std::collections::VecDeque<Run>,
    /// Requests sent, awaiting their ReadyForQuery.
    sent: std::collections::VecDeque<Request>,
    /// The request being noted.
    open: Request,
}

/// What the server answered to a request: rows from each CommandComplete, and how many
/// commands had completed when the first error came (see [`crate::session::relay`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    pub completed: u64,
    pub rows: u64,
    pub error_at: Option<u64>,
    /// The first error's SQLSTATE class (its first two bytes).
    pub class: Option<[u8; 2]>,
}

impl Answered {
    /// A whole CommandComplete message: one more command done, with its rows.
    pub fn complete(&mut self, msg: &[u8]) {
        self.rows += crate::fanout::CommandTag::rows_in(msg);
        self.completed += 1;
    }

    /// A whole ErrorResponse message: the first one's position and SQLSTATE class are kept.
    pub fn error(&mut self, msg: &[u8]) {
        if self.error_at.is_none() {
            let code = crate::protocol::error_code(msg.get(5..).unwrap_or_default()).as_bytes();
            let at = |i: usize| code.get(i).copied().unwrap_or(0);
            self.class = Some([at(0), at(1)]);
        }
        self.error_at.get_or_insert(self.completed);
    }
}

impl Pending {
    /// A simple Query of this shape, run on `shards` shards (a request of its own).
    pub fn query(&mut self, stats: Option<Arc<ShapeStats>>, shards: usize) {
        self.open.simple = true;
        self.note(stats, shards);
        self.sync();
    }

    /// The next simple Query's message (the slow-query log explains it).
    pub fn text(&mut self, message: bytes::Bytes) {
        if self.sent.len() < MAX_TEXTS {
            self.open.text = Some(message);
        }
    }

    /// The request being noted arrived at `at` (its first message's time is kept).
    pub fn arrived(&mut self, at: std::time::Instant) {
        self.open.at.get_or_insert(at);
    }

    /// Microseconds from the oldest request's arrival to `now` (`otherwise` when unknown):
    /// in a pipeline each request's own time, answers read together or not.
    pub fn oldest_us(&self, now: std::time::Instant, otherwise: u64) -> u64 {
        let at = self.sent.front().and_then(|r| r.at);
        at.map_or(otherwise, |t| {
            now.saturating_duration_since(t).as_micros() as u64
        })
    }

    /// The oldest request awaiting its answer: its simple Query's message if kept, and its
    /// first shape's statistics.
    pub fn oldest(&self) -> Option<(Option<&bytes::Bytes>, Option<&Arc<ShapeStats>>)> {
        let req = self.sent.front()?;
        let first = self.runs.front().filter(|r| r.request == req.number);
        Some((req.text.as_ref(), first.map(|r| &r.stats)))
    }

    /// An Execute (or a statement of a batch) of this shape.
    pub fn execute(&mut self, stats: Option<Arc<ShapeStats>>, shards: usize) {
        self.note(stats, shards);
    }

    /// A Sync: the request ends.
    pub fn sync(&mut self) {
        let next = self.open.number + 1;
        let ended = std::mem::replace(
            &mut self.open,
            Request {
                number: next,
                ..Request::default()
            },
        );
        if self.sent.len() < MAX_REQUESTS {
            self.sent.push_back(ended);
            return;
        }
        // Too many awaiting answers: this one joins the last.
        let Some(last) = self.sent.back_mut() else {
            return;
        };
        for r in self.runs.iter_mut().filter(|r| r.request == ended.number) {
            r.request = last.number;
            r.first += last.commands;
        }
        last.commands += ended.commands;
        last.failed |= ended.failed;
    }

    /// The request just ended failed without a server's answer.
    pub fn failed(&mut self) {
        if let Some(r) = self.sent.back_mut() {
            r.failed = true;
        }
    }

    fn note(&mut self, stats: Option<Arc<ShapeStats>>, shards: usize) {
        let open = &mut self.open;
        let first = open.commands;
        open.commands += 1;
        let Some(stats) = stats else { return };
        let shards = shards as u64;
        let full = self.runs.len() >= MAX_PENDING;
        match self.runs.back_mut() {
            Some(r) if r.request == open.number && (full || Arc::ptr_eq(&r.stats, &stats)) => {
                r.calls += 1;
                r.shards += shards;
            }
            _ if full => {}
            _ => self.runs.push_back(Run {
                stats,
                request: open.number,
                calls: 1,
                shards,
                first,
            }),
        }
    }

    /// Forgets every request noted (keeping the memory).
    pub fn clear(&mut self) {
        self.runs.clear();
        self.sent.clear();
        self.open = Request {
            number: self.open.number + 1,
            ..Request::default()
        };
    }

    /// Requests sent and not yet answered.
    pub fn owed(&self) -> usize {
        self.sent.len()
    }

    /// Whether no request awaits its answer.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.open.commands == 0
    }

    /// The oldest request was answered in `us` microseconds: each noted shape gets its
    /// calls (those after an error in a batch did not run and are not counted), the time
    /// shared out by calls, and the server's rows likewise (exact when the request had one
    /// shape).
    pub fn record(&mut self, us: u64, a: Answered, on_replica: bool) {
        let req = match self.sent.pop_front() {
            Some(r) => r,
            // Answered without a Sync (the proxy's own answer): what was noted ends here.
            None => {
                self.sync();
                match self.sent.pop_front() {
                    Some(r) => r,
                    None => return,
                }
            }
        };
        // Commands that ran: a batch stops at its first error.
        let ran = match (req.simple, a.error_at) {
            (false, Some(e)) => (e + 1).min(req.commands),
            _ => req.commands,
        };
        let error_at = match (req.simple, req.failed, a.error_at) {
            (true, _, Some(_)) | (_, true, _) => Some(0),
            (false, false, e) => e,
            (true, false, None) => None,
        };
        let mine = |r: &&Run| r.request == req.number;
        let counted: u64 = (self.runs.iter().take_while(mine))
            .map(|r| r.calls.min(ran.saturating_sub(r.first)))
            .sum();
        let each_us = us / counted.max(1);
        // Rows shared out by calls, cumulatively so that they add up to the server's.
        let share = |calls: u64| {
            (u128::from(a.rows) * u128::from(calls) / u128::from(counted.max(1))) as u64
        };
        let mut before = 0;
        while let Some(r) = self.runs.front() {
            if r.request != req.number {
                break;
            }
            let Some(r) = self.runs.pop_front() else {
                break;
            };
            let calls = r.calls.min(ran.saturating_sub(r.first));
            if calls == 0 {
                continue;
            }
            let rows = share(before + calls) - share(before);
            before += calls;
            let errors = u64::from(error_at.is_some_and(|e| e >= r.first && e < r.first + calls));
            r.stats.record(Calls {
                calls,
                errors,
                rows,
                each_us,
                shards: r.shards * calls / r.calls,
                on_replica,
            });
        }
    }
}
