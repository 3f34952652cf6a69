//! The look-ahead through an extended-protocol batch (up to its Sync, without consuming
//! anything) that finds what the batch needs: which server, the one shard all its
//! statements route to (or the shards of a pipeline across shards, each statement on one),
//! and whether it only begins or only commits a transaction.

use super::super::Loop;
use super::Want;
use crate::protocol::{bind_names, param_oids, parse_body, sqlstate, target, Frame, PgError};
use crate::shard::route::{Params, Route};
use crate::sql::hints::RouteFacts;
use crate::sql::Kind;

/// What an extended-protocol batch needs (see `Loop::batch_want`).
pub(super) struct BatchPlan {
    pub(super) want: Want,
    pub(super) writes: bool,
    pub(super) route: Result<Route, PgError>,
    /// The batch only commits.
    pub(super) only_commit: bool,
    /// The batch only begins a transaction: its text, and whether it is READ ONLY.
    pub(super) only_begin: Option<(String, bool)>,
    /// Its statements route to different shards, each to one (`route` is `Route::Many`).
    pub(super) split: bool,
    /// Its Sync has arrived.
    pub(super) complete: bool,
    /// It binds or calls something (not only Parse, Describe, Close).
    pub(super) executes: bool,
    /// It holds a Flush.
    pub(super) flush: bool,
}

/// What the look-ahead has found so far, message by message.
struct BatchScan {
    /// Statements that are a lone COMMIT.
    commits: usize,
    /// Statements other than a lone COMMIT or the batch's first lone BEGIN.
    others: usize,
    /// The batch's lone BEGIN: its text, and whether it is READ ONLY.
    begin: Option<(String, bool)>,
    /// SQL text of the statements parsed in this batch, by name.
    texts: Vec<(String, String)>,
    want: Option<Want>,
    writes: bool,
    route: Result<Route, PgError>,
    /// Statements route to different shards, each to one.
    split: bool,
    /// Facts of the unnamed statement as of the message looked at.
    unnamed: Option<Box<RouteFacts>>,
    /// Named statements parsed earlier in this batch.
    parsed: Vec<(String, RouteFacts)>,
    complete: bool,
    flush: bool,
    executes: bool,
    /// A statement prepared or described here will run on the primary: describe it there
    /// too (a replica may not have replayed the DDL it needs yet).
    prepares_write: bool,
}

/// The route of a batch whose statements so far route to `prev`, after one more that routes
/// to `next`: one shard (or any) for all, or (`split`) each statement to one of several
/// shards, a pipeline across shards; a statement for several shards must be alone.
fn merge_route(
    prev: Route,
    next: Result<Route, PgError>,
    split: &mut bool,
) -> Result<Route, PgError> {
    match (prev, next) {
        (_, Err(e)) => Err(e),
        (Route::Any, r) => r,
        (p, Ok(Route::Any)) => Ok(p),
        (p, Ok(r)) if p == r && !*split => Ok(p),
        (Route::One(a), Ok(Route::One(b))) => {
            *split = true;
            Ok(Route::Many(vec![a, b]))
        }
        (Route::Many(mut shards), Ok(Route::One(b))) if *split => {
            if !shards.contains(&b) {
                shards.push(b);
            }
            Ok(Route::Many(shards))
        }
        _ => Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "statements of one extended-protocol batch route to different shards",
        )
        .with_hint("send a statement for several shards in a batch of its own (Sync after it)")),
    }
}

impl BatchScan {
    /// A look-ahead starting with the facts of the client's last unnamed statement.
    fn new(unnamed: Option<Box<RouteFacts>>) -> Self {
        BatchScan {
            commits: 0,
            others: 0,
            begin: None,
            texts: Vec::new(),
            want: None,
            writes: false,
            route: Ok(Route::Any),
            split: false,
            unnamed,
            parsed: Vec::new(),
            complete: false,
            flush: false,
            executes: false,
            prepares_write: false,
        }
    }

    /// Looks at one message of the batch; false once the batch ends (its Sync, or a Query).
    fn visit(&mut self, session: &Loop<'_>, tag: u8, body: &[u8]) -> bool {
        let facts = match tag {
            b'D' => {
                self.describe(session, body);
                return true;
            }
            b'P' => {
                self.parse(session, body);
                return true;
            }
            b'B' => self.bind(session, body),
            b'F' => {
                self.executes = true;
                self.want = Some(Want::Primary);
                self.writes = true;
                return true;
            }
            b'S' => {
                self.complete = true;
                return false;
            }
            b'Q' => return false,
            b'H' => {
                self.flush = true;
                return true;
            }
            _ => return true,
        };
        self.add_statement(session, body, facts.as_ref());
        true
    }

    /// A Describe of a statement that writes makes the batch prepare a write.
    fn describe(&mut self, session: &Loop<'_>, body: &[u8]) {
        if let Some((b'S', name)) = target(body) {
            self.prepares_write |= match self.parsed.iter().rev().find(|p| p.0 == name) {
                Some(p) => p.1.writes(),
                None if name.is_empty() => self.unnamed.as_deref().is_some_and(RouteFacts::writes),
                None => session
                    .client
                    .named
                    .get(name)
                    .is_some_and(|stmt| session.stmt_facts(stmt).writes()),
            };
        }
    }

    /// A Parse: remembers the statement's text and facts for the Binds after it.
    fn parse(&mut self, session: &Loop<'_>, body: &[u8]) {
        if let Some(p) = parse_body(body) {
            let mut f = session.facts_of(p.query);
            f.param_types = param_oids(p.rest);
            self.prepares_write |= f.writes();
            self.texts.push((p.name.to_string(), p.query.to_string()));
            if p.name.is_empty() {
                // The box is reused from one unnamed statement to the next.
                match &mut self.unnamed {
                    Some(b) => **b = f,
                    None => self.unnamed = Some(Box::new(f)),
                }
            } else {
                self.parsed.push((p.name.to_string(), f));
            }
        }
    }

    /// A Bind: the facts of the statement it binds (parsed in this batch, or earlier), if
    /// known.
    fn bind(&mut self, session: &Loop<'_>, body: &[u8]) -> Option<RouteFacts> {
        match bind_names(body).inspect(|_| self.executes = true) {
            Some((_, "", _)) => self.unnamed.as_deref().cloned(),
            Some((_, name, _)) => self
                .parsed
                .iter()
                .rev()
                .find(|p| p.0 == name)
                .map(|p| p.1.clone())
                .or_else(|| {
                    session
                        .client
                        .named
                        .get(name)
                        .map(|stmt| session.stmt_facts(stmt).clone())
                }),
            None => None,
        }
    }

    /// A statement the batch executes (`facts`: None if unknown, which takes the primary and
    /// counts as a write): what it needs joins what the batch needs.
    fn add_statement(&mut self, session: &Loop<'_>, body: &[u8], facts: Option<&RouteFacts>) {
        let (w, wr) = match facts {
            Some(f) => (session.want(f), f.writes()),
            None => (Want::Primary, true),
        };
        self.count_control(session, body, facts);
        if let (Some(f), Ok(prev)) = (facts, &self.route) {
            let params = Params::from_bind(body).map(|mut p| {
                p.types = f.param_types.clone();
                p
            });
            let next = session.shard_route(f, params.as_ref());
            self.route = merge_route(prev.clone(), next, &mut self.split);
        }
        self.want = Some(self.want.map_or(w, |x| x.and(w)));
        self.writes |= wr;
    }

    /// Counts a lone COMMIT, the first lone BEGIN whose text is known, or another statement.
    fn count_control(&mut self, session: &Loop<'_>, body: &[u8], facts: Option<&RouteFacts>) {
        match facts {
            Some(f) if f.kind == Kind::Commit && f.statements == 1 => self.commits += 1,
            Some(f) if f.statements == 1 && matches!(f.kind, Kind::Begin { .. }) => {
                // Deferred like a simple BEGIN if its text is known.
                let name = bind_names(body).map(|b| b.1).unwrap_or_default();
                let text = self
                    .texts
                    .iter()
                    .rev()
                    .find(|t| t.0 == name)
                    .map(|t| t.1.clone())
                    .or_else(|| {
                        (!name.is_empty())
                            .then(|| session.client.named.get(name))
                            .flatten()
                            .map(|s| s.query().to_string())
                    });
                match (text, f.kind) {
                    (Some(t), Kind::Begin { read_only }) if self.begin.is_none() => {
                        self.begin = Some((t, read_only))
                    }
                    _ => self.others += 1,
                }
            }
            _ => self.others += 1,
        }
    }

    /// What the batch looked at needs.
    fn into_plan(self) -> BatchPlan {
        let complete = self.complete;
        let only_commit = complete && self.commits > 0 && self.others == 0 && self.begin.is_none();
        let only_begin_alone = complete && self.commits == 0 && self.others == 0;
        let only_begin = self.begin.filter(|_| only_begin_alone);
        BatchPlan {
            want: if complete {
                self.want.unwrap_or(if self.prepares_write {
                    Want::Primary
                } else {
                    Want::Read
                })
            } else {
                Want::Primary
            },
            writes: self.writes || !complete,
            route: self.route.map(|r| match r {
                Route::Many(mut shards) if self.split => {
                    shards.sort_unstable();
                    Route::Many(shards)
                }
                r => r,
            }),
            split: self.split,
            only_commit,
            only_begin,
            complete,
            executes: self.executes,
            flush: self.flush,
        }
    }
}

impl BatchPlan {
    /// A batch on a sharded database whose Sync (or Flush) has not arrived.
    fn waiting() -> BatchPlan {
        BatchPlan {
            want: Want::Primary,
            writes: true,
            route: Ok(Route::Any),
            split: false,
            only_commit: false,
            only_begin: None,
            complete: false,
            executes: true,
            flush: false,
        }
    }
}

impl Loop<'_> {
    /// Whether the batch starting with `first` has arrived up to its Sync, a Flush or a
    /// Query: a walk over the message tags only.
    fn batch_may_go(&self, first: &Frame) -> bool {
        let ends = |tag: u8| matches!(tag, b'S' | b'H' | b'Q');
        ends(first.tag)
            || self.routing.pending.iter().any(|f| ends(f.tag))
            || crate::protocol::whole_messages(&self.from_client).any(|(tag, _)| ends(tag))
    }

    /// What a batch of extended-protocol messages starting with `first` needs, looking ahead
    /// (without consuming) up to its Sync: a replica only if every statement it executes
    /// reads (a Parse alone runs nothing; Parse and Describe of reads work on a hot standby,
    /// those of writes go to the primary, where the statement will run), and the
    /// one shard all its statements route to. A batch whose Sync has not arrived yet goes to
    /// the primary.
    pub(super) fn batch_want(&mut self, first: &Frame) -> BatchPlan {
        if self.login.shard_map.is_some() && !self.batch_may_go(first) {
            // Sharded, no Sync nor Flush yet: the batch waits for its Binds whatever it holds
            // (see `plan::decide`), and is read through once, when it can go.
            return BatchPlan::waiting();
        }
        // Taken, and given back below: nothing in between reads it from the session.
        let mut scan = BatchScan::new(self.routing.unnamed.take());
        let mut go = scan.visit(self, first.tag, first.body());
        for f in &self.routing.pending {
            if !go {
                break;
            }
            go = scan.visit(self, f.tag, f.body());
        }
        for (tag, body) in crate::protocol::whole_messages(&self.from_client) {
            if !go {
                break;
            }
            go = scan.visit(self, tag, body);
        }
        self.routing.unnamed = scan.unnamed.take();
        scan.into_plan()
    }
}
