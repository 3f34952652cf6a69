//! Pipelines across shards, the I/O side: an extended-protocol batch whose statements route
//! to different shards (each to one) is decoded once up to its Sync, each Bind routed by its
//! own parameters; [`pipeline::plan`] makes one request per shard and [`Pipeline`] answers
//! the client in its order, through the stream driver. Outside a transaction the batch is
//! one transaction as in Postgres: the proxy opens it on every shard, and at the Sync
//! commits it everywhere (two-phase with `two_phase_commit`) or, after an error, rolls it
//! back everywhere. Inside a transaction (across shards: `two_phase_commit`) the statements
//! run on its participants and an error fails it.

use bytes::{Bytes, BytesMut};

use super::fanout::finish_implicit;
use super::fanout_batch::malformed;
use super::fanout_stream::ShardConns;
use super::routing::Want;
use super::twophase::CommitError;
use super::{End, Loop};
use crate::protocol::{
    bind_names, param_oids, parse_body, query_text, sqlstate, target, Frame, PgError,
};
use crate::session::machine::pipeline::{self, Message, Pipeline};
use crate::session::machine::shard_stream::{encoded, ShardStream};
use crate::session::machine::sync::SkipToSync;
use crate::session::machine::txn::Txn;
use crate::shard::route::{Params, Route};
use crate::shard::ShardId;
use crate::sql::Kind;

/// The batch decoded for [`pipeline::plan`].
struct Decoded {
    messages: Vec<Message>,
    /// Statement Closes by message index (the client's statement name).
    closes: Vec<(usize, String)>,
    want: Want,
    writes: bool,
    /// The SQL text of every statement the batch executes, each once (an `executemany` binds
    /// one statement many times; its effects are looked at once).
    texts: Vec<String>,
}

fn unsupported(what: &str) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("{what} is not supported in an extended-protocol batch across shards"),
    )
    .with_hint(
        "send it in a batch of its own (Sync before it), or keep the batch's statements on one \
         shard key",
    )
}

fn no_statement(name: &str) -> Message {
    Message::Fail(encoded(&PgError::error(
        sqlstate::INVALID_SQL_STATEMENT_NAME,
        format!("prepared statement \"{name}\" does not exist"),
    )))
}

impl Loop<'_> {
    /// Runs the extended-protocol batch that starts with `first`, each statement on its own
    /// one of `shards`, and answers it, ReadyForQuery included.
    pub(super) async fn pipeline(&mut self, first: Frame, shards: &[ShardId]) -> Option<End> {
        let frames = self.take_batch(first);
        match self.pipeline_inner(&frames, shards).await {
            Ok(Some(end)) => return Some(end),
            Ok(None) => {}
            Err(e) => e.encode(&mut self.to_client),
        }
        if frames.last().is_some_and(|f| f.tag == b'S') {
            self.ready_for_client(self.txn.status());
        } else {
            self.skip = SkipToSync::Answer;
        }
        None
    }

    async fn pipeline_inner(
        &mut self,
        frames: &[Frame],
        shards: &[ShardId],
    ) -> Result<Option<End>, PgError> {
        let d = self.decode_pipeline(frames, shards)?;
        tracing::debug!(user = %self.login.user(), shards = shards.len(), messages = d.messages.len(), "extended-protocol batch across shards");
        let (conns, in_txn) = self.shard_conns(shards, d.want).await?;
        // Outside a transaction the batch is one: the proxy opens it on every shard.
        let plan = pipeline::plan(&d.messages, shards.len(), (!in_txn).then_some("BEGIN"));
        let (mut machine, requests) = Pipeline::new(plan);
        machine.start(&mut self.to_client);
        let outgoing = requests.into_iter().map(BytesMut::freeze).collect();
        let texts: Vec<&str> = d.texts.iter().map(String::as_str).collect();
        let (mut machine, mut conns) = self
            .run_stream(
                ShardConns {
                    ends_in_txn: true,
                    ..ShardConns::new(shards, conns, in_txn)
                },
                outgoing,
                machine,
                &texts,
            )
            .await?;
        machine.finish(&mut self.to_client);
        self.note_pipeline_statements(&d, machine.answered());
        let failed = machine.progress().failed();
        if in_txn {
            self.end_shard_statement(shards, conns, true, failed);
            return Ok(None);
        }
        let commit = !failed && !conns.iter().any(|c| c.broken);
        let two_phase = self
            .login
            .shard_map
            .as_ref()
            .is_some_and(|m| m.two_phase_commit);
        if commit && d.writes && two_phase && conns.len() > 1 {
            // The batch's transaction commits like a client's across shards.
            self.park_all(shards, conns);
            self.txn = Txn::open("BEGIN");
            let committed = self.commit_all().await;
            self.txn = Txn::Idle;
            self.routing.released();
            return match committed {
                Ok(_) => Ok(None),
                Err(CommitError::Client(e)) => Err(e),
                Err(CommitError::Crash) => Ok(Some(End::Fatal)),
            };
        }
        match finish_implicit(&mut conns, commit).await {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The client's statements after the batch: Parses that took effect are its prepared
    /// statements, Closes that were answered remove theirs.
    fn note_pipeline_statements(&mut self, d: &Decoded, answered: usize) {
        for (i, m) in d.messages.iter().enumerate().take(answered) {
            if let Message::Parse { name, rest } = m {
                if !name.is_empty() {
                    let stmt = self.state.statements.get_or_insert(rest);
                    self.client.named.insert(name.clone(), stmt);
                }
            }
            if let Some((_, name)) = d.closes.iter().find(|c| c.0 == i) {
                self.client.named.remove(name);
            }
        }
    }

    /// The Parse body after the name of statement `name`: parsed earlier in this batch, or
    /// one of the client's prepared statements.
    fn pipeline_statement(&self, parsed: &[(String, Bytes)], name: &str) -> Option<Bytes> {
        if let Some((_, rest)) = parsed.iter().rev().find(|p| p.0 == name) {
            return Some(rest.clone());
        }
        if name.is_empty() {
            return None;
        }
        let p = self.client.named.get(name)?;
        Some(p.parse.slice(5 + p.name.len() + 1..))
    }

    /// Decodes the batch's messages up to its Sync: statement texts looked up, each Bind
    /// routed to its shard. What a pipeline across shards cannot run exactly is refused
    /// before anything runs.
    fn decode_pipeline(&self, frames: &[Frame], shards: &[ShardId]) -> Result<Decoded, PgError> {
        if !self.managed {
            return Err(unsupported("session pool mode"));
        }
        let mut d = Decoded {
            messages: Vec::with_capacity(frames.len()),
            closes: Vec::new(),
            want: Want::Read,
            writes: false,
            texts: Vec::new(),
        };
        let mut parsed: Vec<(String, Bytes)> = Vec::new();
        for f in frames {
            let m = match f.tag {
                b'P' => self.pipeline_parse(f, &mut parsed)?,
                b'B' => self.pipeline_bind(f, &parsed, shards, &mut d)?,
                b'D' => match target(f.body()) {
                    Some((b'S', name)) => match self.pipeline_statement(&parsed, name) {
                        Some(rest) => Message::Describe(Some((name.to_string(), rest))),
                        None if name.is_empty() => {
                            return Err(unsupported("a Describe of an earlier batch's statement"))
                        }
                        None => no_statement(name),
                    },
                    Some((b'P', "")) => Message::Describe(None),
                    Some(_) => return Err(unsupported("a named portal")),
                    None => return Err(malformed("Describe")),
                },
                b'E' => match f.body().split_first() {
                    Some((0, _)) => Message::Execute(f.bytes.slice(5..)),
                    _ => return Err(unsupported("a named portal")),
                },
                b'C' => {
                    if let Some((b'S', name)) = target(f.body()) {
                        d.closes.push((d.messages.len(), name.to_string()));
                    }
                    Message::Close
                }
                b'H' => Message::Flush,
                b'S' => break,
                b'F' => return Err(unsupported("a function call")),
                _ => return Err(unsupported("this message")),
            };
            let fail = matches!(m, Message::Fail(_));
            d.messages.push(m);
            if fail {
                break;
            }
        }
        Ok(d)
    }

    /// A Parse of the batch (a name already taken fails there, as in Postgres).
    fn pipeline_parse(
        &self,
        f: &Frame,
        parsed: &mut Vec<(String, Bytes)>,
    ) -> Result<Message, PgError> {
        let p = parse_body(f.body()).ok_or_else(|| malformed("Parse"))?;
        let taken = !p.name.is_empty()
            && (self.client.named.contains_key(p.name)
                || self.client.sql_prepared.contains_key(p.name)
                || parsed.iter().any(|n| n.0 == p.name));
        if taken {
            return Ok(Message::Fail(encoded(&PgError::error(
                sqlstate::DUPLICATE_PSTATEMENT,
                format!("prepared statement \"{}\" already exists", p.name),
            ))));
        }
        let rest = f.bytes.slice(5 + p.name.len() + 1..);
        parsed.retain(|n| n.0 != p.name);
        parsed.push((p.name.to_string(), rest.clone()));
        Ok(Message::Parse {
            name: p.name.to_string(),
            rest,
        })
    }

    /// A Bind of the batch, routed by its parameters to one of `shards`.
    fn pipeline_bind(
        &self,
        f: &Frame,
        parsed: &[(String, Bytes)],
        shards: &[ShardId],
        d: &mut Decoded,
    ) -> Result<Message, PgError> {
        let body = f.body();
        let (portal, stmt, at) = bind_names(body).ok_or_else(|| malformed("Bind"))?;
        if !portal.is_empty() {
            return Err(unsupported("a named portal"));
        }
        let Some(rest) = self.pipeline_statement(parsed, stmt) else {
            if stmt.is_empty() {
                return Err(unsupported(
                    "a Bind of an earlier batch's unnamed statement",
                ));
            }
            return Ok(no_statement(stmt));
        };
        let text = query_text(&rest);
        let mut facts = self.facts_of(text);
        facts.param_types = param_oids(&rest);
        if !matches!(facts.kind, Kind::Read | Kind::Write) || facts.statements != 1 {
            return Err(unsupported(
                "transaction control, SET and other session commands",
            ));
        }
        let params = Params::from_bind(body).map(|mut p| {
            p.types = facts.param_types.clone();
            p
        });
        let shard = match self.shard_route(&facts, params.as_ref())? {
            Route::One(s) => match shards.iter().position(|x| *x == s) {
                Some(i) => Some(i),
                None => return Err(unsupported("a statement routed differently than planned")),
            },
            Route::Any => None,
            Route::Many(_) | Route::All => {
                return Err(unsupported("a statement for several shards"))
            }
        };
        d.want = d.want.and(self.want(&facts));
        d.writes |= facts.writes();
        if !d.texts.iter().any(|t| t == text) {
            d.texts.push(text.to_string());
        }
        Ok(Message::Bind {
            stmt: stmt.to_string(),
            rest,
            params: f.bytes.slice(5 + at..),
            shard,
        })
    }
}
