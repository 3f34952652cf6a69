//! Statements for several shards sent through the extended protocol. A batch of
//! `[Parse] Bind [Describe] Execute Sync` (what drivers send for one query) runs on every
//! shard it needs with the client's parameters, each shard asked for text results (what the
//! merge reads); the merged answer goes back in the result formats the client's Bind asked for.
//! Other batch shapes (named portals, fetch sizes, other statements before the same Sync) get
//! 0A000; several statements each for one shard are a pipeline (`pipeline.rs`).

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use super::routing::Want;
use super::{End, Loop};
use crate::fanout::oid;
use crate::protocol::{
    self, bind_names, param_oids, parse_body, query_text, split_frame, sqlstate, Frame, PgError,
};
use crate::session::machine::fan_out_read::FanOutRead;
use crate::session::machine::framing::{Extended, Framing};
use crate::session::machine::sync::SkipToSync;
use crate::shard::route::Params;
use crate::shard::ShardId;
use crate::sql::analyze::fanout::FanOutQuery;
use crate::sql::analyze::shard::Command;
use crate::sql::analyze::split_insert_params;
use crate::sql::hints::RouteFacts;

/// The one statement of a batch.
struct Batch {
    /// The batch's Parse: the client's statement name and the Parse body after it.
    parse: Option<(String, Bytes)>,
    /// Query text, NUL, parameter types (a Parse body after the name).
    rest: Bytes,
    /// The Bind body.
    bind: Bytes,
    /// Describe of the portal (`P`) or of the statement (`S`).
    describe: Option<u8>,
}

fn unsupported(what: &str) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("{what} is not supported for a statement on several shards"),
    )
    .with_hint(
        "send Parse, Bind, Describe, Execute and Sync for one unnamed portal, or route the \
         statement to one shard with a shard key condition",
    )
}

/// The error for a client message that does not decode.
pub(super) fn malformed(what: &str) -> PgError {
    PgError::error(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed {what} message"),
    )
}

/// The parameter part of a Bind body (formats and values, ready to put after two empty
/// names) and its result-format codes.
fn bind_tail(body: &[u8]) -> Option<(&[u8], Vec<i16>)> {
    let b = crate::protocol::BindParts::decode(body)?;
    Some((b.params_bytes, b.result_formats?))
}

/// The value of parameter `n` (1-based) as a row count, for LIMIT and OFFSET.
fn param_count(params: &Params<'_>, n: usize) -> Option<u64> {
    let v = (*params.values.get(n.checked_sub(1)?)?)?;
    let format = match params.formats.as_slice() {
        [] => 0,
        [one] => *one,
        many => *many.get(n - 1)?,
    };
    if format == 0 {
        return std::str::from_utf8(v).ok()?.trim().parse().ok();
    }
    let signed = match v.len() {
        8 => i64::from_be_bytes(v.try_into().ok()?),
        4 => i64::from(i32::from_be_bytes(v.try_into().ok()?)),
        2 => i64::from(i16::from_be_bytes(v.try_into().ok()?)),
        _ => return None,
    };
    u64::try_from(signed).ok()
}

impl Loop<'_> {
    /// Runs the extended-protocol batch that starts with `first` on `shards` and answers it,
    /// ReadyForQuery included.
    pub(super) async fn fan_out_batch(&mut self, first: Frame, shards: &[ShardId]) -> Option<End> {
        let frames = self.take_batch(first);
        match self.fan_out_batch_inner(&frames, shards).await {
            Ok(b) => self.to_client.extend_from_slice(&b),
            Err(e) => e.encode(&mut self.to_client),
        }
        if frames.last().is_some_and(|f| f.tag == b'S') {
            self.ready_for_client(self.txn.status());
        } else {
            self.skip = SkipToSync::Answer;
        }
        None
    }

    /// The batch's messages up to its Sync (all arrived: the router waited for them).
    pub(super) fn take_batch(&mut self, first: Frame) -> Vec<Frame> {
        let max = self.state.config.proxy.max_message_size;
        let mut frames = vec![first];
        while frames.last().is_some_and(|f| f.tag != b'S') {
            let next = match self.routing.pending.pop_front() {
                Some(f) => Some(f),
                None => split_frame(&mut self.from_client, max).ok().flatten(),
            };
            match next {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        // The batch runs on the shards' connections: the client's unnamed statement, if it
        // parses one, is not there to be parsed again later (a later Bind of it gets 26000).
        let unnamed_parse = |f: &Frame| f.tag == b'P' && f.body().first() == Some(&0);
        if frames.iter().any(unnamed_parse) {
            self.client.unnamed_parse = None;
        }
        frames
    }

    fn batch_shape(&self, frames: &[Frame]) -> Result<Batch, PgError> {
        let mut it = frames.iter().peekable();
        let mut parse = None;
        if let Some(f) = it.next_if(|f| f.tag == b'P') {
            let p = parse_body(f.body()).ok_or_else(|| malformed("Parse"))?;
            if !p.name.is_empty() && self.client.named.contains_key(p.name) {
                return Err(PgError::error(
                    sqlstate::DUPLICATE_PSTATEMENT,
                    format!("prepared statement \"{}\" already exists", p.name),
                ));
            }
            let at = 5 + p.name.len() + 1;
            parse = Some((p.name.to_string(), f.bytes.slice(at..)));
        }
        let bind = it
            .next_if(|f| f.tag == b'B')
            .ok_or_else(|| unsupported("a batch without a Bind"))?;
        let (portal, stmt, _) = bind_names(bind.body()).ok_or_else(|| malformed("Bind"))?;
        if !portal.is_empty() {
            return Err(unsupported("a named portal"));
        }
        let rest = match &parse {
            Some((name, rest)) if name == stmt => rest.clone(),
            Some(_) => return Err(unsupported("a Bind of another statement than the Parse")),
            None if stmt.is_empty() => {
                return Err(unsupported(
                    "a Bind of an unnamed statement from an earlier batch",
                ))
            }
            None => match self.client.named.get(stmt) {
                Some(p) => p.parse.slice(5 + p.name.len() + 1..),
                None => {
                    return Err(PgError::error(
                        sqlstate::INVALID_SQL_STATEMENT_NAME,
                        format!("prepared statement \"{stmt}\" does not exist"),
                    ))
                }
            },
        };
        let mut describe = None;
        if let Some(f) = it.next_if(|f| f.tag == b'D') {
            describe = match protocol::target(f.body()) {
                Some((b'P', "")) => Some(b'P'),
                Some((b'S', n)) if n == stmt => Some(b'S'),
                _ => return Err(unsupported("a Describe of another portal or statement")),
            };
        }
        let exec = it
            .next_if(|f| f.tag == b'E')
            .ok_or_else(|| unsupported("a batch without an Execute"))?;
        let body = exec.body();
        if body.len() != 5 || body[0] != 0 {
            return Err(unsupported("an Execute of a named portal"));
        }
        if body[1..5] != [0, 0, 0, 0] {
            return Err(unsupported("a row limit on Execute (a fetch size)"));
        }
        if it.next().map(|f| f.tag) != Some(b'S') || it.next().is_some() {
            return Err(unsupported("more than one statement before Sync"));
        }
        Ok(Batch {
            parse,
            rest,
            bind: bind.bytes.slice(5..),
            describe,
        })
    }

    async fn fan_out_batch_inner(
        &mut self,
        frames: &[Frame],
        shards: &[ShardId],
    ) -> Result<BytesMut, PgError> {
        let batch = self.batch_shape(frames)?;
        let sql = query_text(&batch.rest).to_string();
        let params = Params::from_bind(&batch.bind).ok_or_else(|| malformed("Bind"))?;
        let (bind_params, result_formats) =
            bind_tail(&batch.bind).ok_or_else(|| malformed("Bind"))?;
        let mut facts = self.facts_of(&sql);
        facts.param_types = param_oids(&batch.rest);
        let ext = Extended {
            parse_complete: batch.parse.is_some(),
            describe: batch.describe,
            result_formats,
            param_types: facts.param_types.clone(),
        };
        let command = facts.shard_command();
        let (parsed, out) = match command {
            Command::Select => {
                let value = |n: usize| param_count(&params, n);
                let q = self
                    .state
                    .fan_out_plans
                    .plan(&sql, &value)
                    .map_err(|e| e.to_pg_error())?;
                let parsed = self
                    .batch_select(q, ext, bind_params, &facts, shards)
                    .await?;
                (parsed, BytesMut::new())
            }
            Command::Copy => return Err(unsupported("COPY")),
            _ => {
                let mut out = BytesMut::new();
                let parsed = self
                    .batch_write(&sql, ext, &params, bind_params, &facts, shards, &mut out)
                    .await?;
                (parsed, out)
            }
        };
        if parsed {
            if let Some((name, rest)) = &batch.parse {
                if !name.is_empty() {
                    let stmt = self.state.statements.get_or_insert(rest);
                    self.client.named.insert(name.clone(), stmt);
                }
            }
        }
        Ok(out)
    }

    /// A read: streamed from the shards through the merge into the client's output. Returns
    /// whether the client was told its Parse completed.
    async fn batch_select(
        &mut self,
        q: FanOutQuery,
        mut ext: Extended,
        bind_params: &[u8],
        facts: &RouteFacts,
        shards: &[ShardId],
    ) -> Result<bool, PgError> {
        // A LIMIT/OFFSET parameter may be gone from the shards' SQL: declare its type.
        let types = &mut ext.param_types;
        for n in &q.limit_params {
            if types.len() < *n {
                types.resize(*n, 0);
            }
            if types[n - 1] == 0 {
                types[n - 1] = oid::INT8;
            }
        }
        let mut request = BytesMut::new();
        shard_request(&q.shard_sql, types, &bind_of(bind_params), &mut request);
        let want = if facts.reads() {
            Want::Read
        } else {
            Want::Primary
        };
        let cap = self.state.config.proxy.max_fanout_bytes;
        let machine = FanOutRead::new(q.spec, shards.len(), cap).extended(ext);
        let machine = self
            .stream_fan_out(shards, want, request.freeze(), machine, &q.shard_sql)
            .await?;
        Ok(machine.parse_answered())
    }

    /// A write (split by key, or the same on every shard): run on every shard at once, the
    /// counts summed, the answer framed for the client into `out`. Returns whether the client
    /// was told its Parse completed.
    #[allow(clippy::too_many_arguments)]
    async fn batch_write(
        &mut self,
        sql: &str,
        ext: Extended,
        params: &Params<'_>,
        bind_params: &[u8],
        facts: &RouteFacts,
        shards: &[ShardId],
        out: &mut BytesMut,
    ) -> Result<bool, PgError> {
        let command = facts.shard_command();
        let types = &ext.param_types;
        // Each request's parameter types and Bind (unnamed portal and statement, the
        // client's parameters, every result column in text).
        let mut requests: Vec<(Vec<u32>, BytesMut)> = Vec::new();
        let split = command == Command::Insert
            && (shards.len() < self.login.shards.len() || self.is_split_insert(facts));
        let per_shard: Vec<(ShardId, String)> = if split {
            let mut per_shard = Vec::new();
            for (shard, text, order) in self.split_insert_batch(sql, params, types, facts)? {
                per_shard.push((shard, text));
                requests.push(part_request(&order, params, types));
            }
            per_shard
        } else {
            requests.push((types.clone(), bind_of(bind_params)));
            shards.iter().map(|s| (*s, sql.to_string())).collect()
        };
        let encode = |i: usize, sql: &str, b: &mut BytesMut| {
            let (types, bind) = &requests[i.min(requests.len() - 1)];
            shard_request(sql, types, bind, b);
        };
        let answer = self
            .run_on_shards(
                per_shard,
                facts.reads(),
                self.one_copy(facts),
                super::fanout::is_write(command),
                &encode,
            )
            .await?;
        let mut framing = Framing::new(ext);
        if let Some(t) = answer.param_desc.filter(|_| !split) {
            framing.param_desc(t);
        }
        let mut merged = answer.out;
        framing.relay(&mut merged, out)?;
        Ok(framing.started())
    }

    /// The parts of a multi-row INSERT with bound parameters: (shard, SQL, the original
    /// parameter numbers the part's parameters take).
    fn split_insert_batch(
        &self,
        sql: &str,
        params: &Params<'_>,
        types: &[u32],
        facts: &RouteFacts,
    ) -> Result<Vec<(ShardId, String, Vec<usize>)>, PgError> {
        let (Some(map), Some(sf)) = (&self.login.shard_map, &facts.analysis.shard) else {
            return Err(unsupported("this INSERT"));
        };
        let mut typed = params.clone();
        typed.types = types.to_vec();
        let rows = map.insert_row_shards(sf, &facts.literals, Some(&typed))?;
        split_insert_params(sql, &rows).map_err(|e| {
            PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("cannot split this INSERT by shard: {e}"),
            )
        })
    }
}

/// A Bind body for the unnamed portal and statement with `params` (formats and values) and
/// every result column in text.
fn bind_of(params: &[u8]) -> BytesMut {
    let mut bind = BytesMut::with_capacity(params.len() + 4);
    bind.put_slice(&[0, 0]);
    bind.put_slice(params);
    bind.put_i16(0);
    bind
}

/// The parameter types and Bind of one part of a split INSERT: the client's parameters
/// numbered `order`.
fn part_request(order: &[usize], params: &Params<'_>, types: &[u32]) -> (Vec<u32>, BytesMut) {
    let format = |n: usize| match params.formats.as_slice() {
        [] => 0,
        [one] => *one,
        many => many.get(n - 1).copied().unwrap_or(0),
    };
    let mut b = BytesMut::new();
    b.put_i16(order.len() as i16);
    for n in order {
        b.put_i16(format(*n));
    }
    b.put_i16(order.len() as i16);
    for n in order {
        match params.values.get(n - 1).copied().flatten() {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    let part_types = order
        .iter()
        .map(|n| types.get(n - 1).copied().unwrap_or(0))
        .collect();
    (part_types, bind_of(&b))
}

/// What a shard is asked: Parse of `sql` with `types`, Describe of the statement, `bind`,
/// Execute, Sync.
fn shard_request(sql: &str, types: &[u32], bind: &[u8], b: &mut BytesMut) {
    let _ = frontend::parse("", sql, types.iter().copied(), b);
    let _ = frontend::describe(b'S', "", b);
    b.put_u8(b'B');
    b.put_i32(bind.len() as i32 + 4);
    b.put_slice(bind);
    let _ = frontend::execute("", 0, b);
    frontend::sync(b);
}

#[cfg(test)]
mod tests {
    use super::{bind_tail, param_count};
    use crate::shard::route::Params;

    fn bind(formats: &[i16], values: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend((formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend(f.to_be_bytes());
        }
        b.extend((values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend((results.len() as i16).to_be_bytes());
        for r in results {
            b.extend(r.to_be_bytes());
        }
        b
    }

    #[test]
    fn bind_parts_and_limit_values() {
        let eight = 7i64.to_be_bytes();
        let b = bind(&[0, 1], &[Some(b"12"), Some(&eight), None], &[1]);
        let (params, results) = bind_tail(&b).unwrap();
        assert_eq!(results, [1]);
        assert_eq!(params, &b[12..b.len() - 4]);
        let p = Params::from_bind(&b).unwrap();
        assert_eq!(param_count(&p, 1), Some(12));
        assert_eq!(param_count(&p, 2), Some(7));
        assert_eq!(param_count(&p, 3), None);
        assert_eq!(param_count(&p, 4), None);
        assert!(bind_tail(&b[..b.len() - 1]).is_none());
    }
}
