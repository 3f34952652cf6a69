//! COPY on a sharded table: `FROM STDIN` sends each row to its shard's COPY (text and CSV,
//! with or without a column list; see [`CopyIn`]), `TO STDOUT` concatenates every shard's
//! rows (see [`CopyOut`]); both run through the one driver of statements on several shards
//! (`fanout_stream`), so backpressure, a CancelRequest and a vanished client reach them. Inside a
//! transaction the COPY joins it on every shard (so it commits with two-phase commit);
//! outside one it runs in an implicit transaction on each shard, committed once every shard
//! has taken all its rows.

use bytes::BytesMut;

use super::fanout::{begin_implicit, finish_implicit};
use super::fanout_stream::ShardConns;
use super::routing::Want;
use super::Loop;
use crate::backend::BackendError;
use crate::config::KeyType;
use crate::pool::Checkout;
use crate::protocol::{sqlstate, PgError};
use crate::session::machine::copy_in::CopyIn;
use crate::session::machine::copy_out::CopyOut;
use crate::session::machine::shard_stream::ShardStream;
use crate::shard::copy::CopySplitter;
use crate::shard::ShardId;
use crate::sql::analyze::shard::CopyFacts;

/// Where the shard key is in each row of a COPY into `c.table` (`sharded`: its key column
/// and type; None for a table that is not sharded), from the COPY's column list or else the
/// table's columns (read on the first connection).
async fn key_position(
    conns: &mut [Checkout],
    c: &CopyFacts,
    sharded: Option<&(String, KeyType)>,
) -> Result<Option<(usize, KeyType)>, PgError> {
    let Some((column, ty)) = sharded else {
        return Ok(None);
    };
    let columns = if c.columns.is_empty() {
        table_columns(&mut conns[0], &c.table).await
    } else {
        c.columns.clone()
    };
    match columns.iter().position(|x| x == column) {
        Some(i) => Ok(Some((i, *ty))),
        None => Err(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "COPY into sharded table \"{}\" without its shard key \"{column}\"",
                c.table
            ),
        )
        .with_hint("include the shard key column in the COPY column list")),
    }
}

/// The columns of `table` in order (none if they cannot be read).
async fn table_columns(conn: &mut Checkout, table: &str) -> Vec<String> {
    let q = format!(
        "SELECT attname FROM pg_attribute WHERE attrelid = {}::regclass \
         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        crate::sql::scan::dollar_quote(table)
    );
    match conn.query_rows(&q).await {
        Ok((rows, _)) => rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect(),
        Err(BackendError::Server { .. }) => Vec::new(),
        Err(_) => {
            // The connection's state is unknown.
            conn.broken = true;
            Vec::new()
        }
    }
}

impl Loop<'_> {
    /// `COPY ... FROM STDIN` on every shard, rows split by key.
    pub(super) async fn copy_in(
        &mut self,
        sql: &str,
        c: &CopyFacts,
        shards: &[ShardId],
    ) -> Result<BytesMut, PgError> {
        let Some(map) = self.login.shard_map.clone() else {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "not a sharded database",
            ));
        };
        if c.binary {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY FROM STDIN in binary format into a sharded table",
            )
            .with_hint("use text or CSV format"));
        }
        let sharded = map.sharded(&c.table).cloned();
        let (mut conns, in_txn) = self.shard_conns(shards, Want::Primary).await?;
        // A CancelRequest reaches every shard from here on (the caller clears this).
        self.cancel_to(&conns);
        // Where the key is in each row.
        let key = match key_position(&mut conns, c, sharded.as_ref()).await {
            Ok(key) => key,
            Err(e) => {
                self.end_shard_statement(shards, conns, in_txn, true);
                return Err(e);
            }
        };
        let mut q = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(sql, &mut q);
        // Outside a transaction the COPY runs in an implicit transaction on each shard,
        // committed only once every shard has taken all its rows: a COPY that fails on one
        // shard (even at its very end) leaves no row on another.
        let implicit = !in_txn && conns.len() > 1;
        if implicit {
            begin_implicit(&mut conns).await?;
        }
        let splitter = CopySplitter::new(c.csv, c.delimiter, c.header, key);
        let machine = CopyIn::new(map, splitter, key.is_some(), shards);
        let outgoing = vec![q.freeze(); shards.len()];
        let on = ShardConns {
            ends_in_txn: in_txn || implicit,
            ..ShardConns::new(shards, conns, in_txn)
        };
        let (mut machine, mut conns) = self.run_stream(on, outgoing, machine, &[sql]).await?;
        let failed = machine.progress().failed();
        let answer = machine.take_answer().unwrap_or_default();
        if implicit {
            let commit = !failed && !conns.iter().any(|c| c.broken);
            if let Some(e) = finish_implicit(&mut conns, commit).await {
                return Err(e);
            }
        } else {
            self.end_shard_statement(shards, conns, in_txn, failed);
        }
        Ok(BytesMut::from(answer))
    }

    /// `COPY ... TO STDOUT` of a sharded table: streamed from every shard (see
    /// [`CopyOut`]); the answer goes straight into the client's output.
    pub(super) async fn copy_out(
        &mut self,
        sql: &str,
        shards: &[ShardId],
    ) -> Result<BytesMut, PgError> {
        let mut q = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(sql, &mut q);
        let machine = CopyOut::new(shards.len());
        self.stream_fan_out(shards, Want::Read, q.freeze(), machine, sql)
            .await?;
        Ok(BytesMut::new())
    }
}
