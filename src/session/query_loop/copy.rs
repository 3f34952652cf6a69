//! COPY on a sharded table: `FROM STDIN` sends each row to its shard's COPY (text and CSV,
//! with or without a column list), `TO STDOUT` concatenates every shard's rows. Inside a
//! transaction the COPY joins it on every shard (so it commits with two-phase commit);
//! outside one each shard's COPY commits on its own.

use crate::session::machine::copy_out::CopyOut;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::routing::Want;
use super::Loop;
use crate::config::KeyType;
use crate::fanout::CommandTag;
use crate::pool::Checkout;
use crate::protocol::{self, split_frame, sqlstate, PgError};
use crate::shard::copy::{CopySplitter, RowTarget};
use crate::shard::route::ShardMap;
use crate::sql::analyze::shard::CopyFacts;

/// Rows are sent to a shard in CopyData messages of about this size.
const FLUSH_AT: usize = 64 * 1024;

fn copy_data(payload: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(payload.len() + 5);
    m.put_u8(b'd');
    m.put_i32(payload.len() as i32 + 4);
    m.extend_from_slice(payload);
    m
}

fn copy_fail(msg: &str) -> BytesMut {
    let mut m = BytesMut::new();
    let _ = postgres_protocol::message::frontend::copy_fail(msg, &mut m);
    m
}

/// Appends a row to the buffer of its shard (`bufs` in `shards` order), or of every shard.
fn route_row(bufs: &mut [Vec<u8>], shards: &[usize], t: RowTarget, row: &[u8]) {
    match t {
        RowTarget::Shard(s) => {
            if let Some(i) = shards.iter().position(|x| *x == s) {
                bufs[i].extend_from_slice(row);
            }
        }
        RowTarget::All => bufs.iter_mut().for_each(|b| b.extend_from_slice(row)),
    }
}

/// Reads a connection's answers up to ReadyForQuery: (the first ErrorResponse, the row count
/// of its CommandComplete).
async fn finish_one(c: &mut Checkout) -> (Option<bytes::Bytes>, u64) {
    let mut err = None;
    let mut rows = 0;
    loop {
        match c.read_frame().await {
            Ok(f) if f.tag == b'Z' => return (err, rows),
            Ok(f) if f.tag == b'E' => {
                err.get_or_insert(f.bytes);
            }
            Ok(f) if f.tag == b'C' => {
                rows = CommandTag::parse(&f.bytes)
                    .ok()
                    .and_then(|t| t.rows)
                    .unwrap_or(0);
            }
            Ok(_) => {}
            Err(e) => {
                c.broken = true;
                let mut b = BytesMut::new();
                PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    format!("shard lost during COPY: {e}"),
                )
                .encode(&mut b);
                return (Some(b.freeze()), rows);
            }
        }
    }
}

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
    let mut b = BytesMut::new();
    let _ = postgres_protocol::message::frontend::query(&q, &mut b);
    match conn.exchange(&b).await {
        Ok((frames, _)) => frames
            .iter()
            .filter(|f| f.tag == b'D')
            .filter_map(|f| {
                let b = f.body();
                let len = i32::from_be_bytes([*b.get(2)?, *b.get(3)?, *b.get(4)?, *b.get(5)?]);
                let v = b.get(6..6 + usize::try_from(len).ok()?)?;
                Some(String::from_utf8_lossy(v).into_owned())
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Starts the COPY `sql` on every connection: the CopyInResponse for the client, or, if
/// any shard failed to start it, the answer for the client (its error) once every COPY that
/// started was failed and finished.
async fn start_everywhere(conns: &mut [Checkout], sql: &str) -> Result<bytes::Bytes, BytesMut> {
    let mut q = BytesMut::new();
    let _ = postgres_protocol::message::frontend::query(sql, &mut q);
    let mut copy_in_response = None;
    let mut first_error = None;
    let mut copying = vec![false; conns.len()];
    for (i, conn) in conns.iter_mut().enumerate() {
        if conn.send(&q).await.is_err() {
            conn.broken = true;
            first_error.get_or_insert_with(|| {
                let mut b = BytesMut::new();
                PgError::error(sqlstate::CONNECTION_FAILURE, "shard lost before COPY")
                    .encode(&mut b);
                b.freeze()
            });
            continue;
        }
        loop {
            match conn.read_frame().await {
                Ok(f) if f.tag == b'G' => {
                    copying[i] = true;
                    copy_in_response.get_or_insert(f.bytes);
                    break;
                }
                Ok(f) if f.tag == b'E' => {
                    first_error.get_or_insert(f.bytes);
                }
                Ok(f) if f.tag == b'Z' => break,
                Ok(_) => {}
                Err(_) => {
                    conn.broken = true;
                    break;
                }
            }
        }
    }
    match copy_in_response {
        Some(g) if first_error.is_none() => return Ok(g),
        _ => {}
    }
    let fail = copy_fail("COPY failed on another shard");
    for (i, conn) in conns.iter_mut().enumerate() {
        if copying[i] && conn.send(&fail).await.is_ok() {
            let _ = finish_one(conn).await;
        }
    }
    let mut out = BytesMut::new();
    if let Some(e) = first_error {
        out.extend_from_slice(&e);
    } else {
        PgError::error(
            sqlstate::CONNECTION_FAILURE,
            "COPY did not start on every shard",
        )
        .encode(&mut out);
    }
    Err(out)
}

/// Sends every shard's buffer that reached [`FLUSH_AT`] bytes; `Err` when a shard is lost.
async fn send_full_buffers(conns: &mut [Checkout], bufs: &mut [Vec<u8>]) -> Result<(), PgError> {
    for (i, conn) in conns.iter_mut().enumerate() {
        if bufs[i].len() >= FLUSH_AT {
            let m = copy_data(&bufs[i]);
            bufs[i].clear();
            if conn.send(&m).await.is_err() {
                conn.broken = true;
                return Err(PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    "shard lost during COPY",
                ));
            }
        }
    }
    Ok(())
}

/// Ends the COPY on every connection still up: the rest of its rows and CopyDone, or
/// CopyFail with `failed`'s message. Returns the rows copied (a table that is not sharded,
/// `by_key` false, holds a copy on every shard: counted once) and the first shard's error.
async fn end_everywhere(
    conns: &mut [Checkout],
    bufs: &[Vec<u8>],
    failed: Option<&str>,
    by_key: bool,
) -> (u64, Option<bytes::Bytes>) {
    let mut done = BytesMut::new();
    postgres_protocol::message::frontend::copy_done(&mut done);
    let fail = copy_fail(failed.unwrap_or_default());
    let mut total = 0u64;
    let mut shard_error = None;
    for (i, conn) in conns.iter_mut().enumerate() {
        if conn.broken {
            continue;
        }
        let mut msg = BytesMut::new();
        if failed.is_none() {
            if !bufs[i].is_empty() {
                msg.extend_from_slice(&copy_data(&bufs[i]));
            }
            msg.extend_from_slice(&done);
        } else {
            msg.extend_from_slice(&fail);
        }
        if conn.send(&msg).await.is_err() {
            conn.broken = true;
            continue;
        }
        let (err, rows) = finish_one(conn).await;
        // A replicated table holds a copy on every shard: count one.
        total = if by_key {
            total + rows
        } else {
            total.max(rows)
        };
        if let Some(e) = err {
            shard_error.get_or_insert(e);
        }
    }
    (total, shard_error)
}

impl Loop<'_> {
    /// `COPY ... FROM STDIN` on every shard, rows split by key.
    pub(super) async fn copy_in(
        &mut self,
        sql: &str,
        c: &CopyFacts,
        shards: &[usize],
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
        // A CancelRequest stops the COPY on every shard (the caller clears this).
        self.cancel_to(&conns);
        // Where the key is in each row.
        let key = match key_position(&mut conns, c, sharded.as_ref()).await {
            Ok(key) => key,
            Err(e) => {
                self.end_shard_statement(shards, conns, in_txn, true);
                return Err(e);
            }
        };
        // Start the COPY everywhere.
        let copy_in_response = match start_everywhere(&mut conns, sql).await {
            Ok(g) => g,
            Err(out) => {
                self.end_shard_statement(shards, conns, in_txn, true);
                return Ok(out);
            }
        };
        // Tell the client to send its data.
        self.to_client.extend_from_slice(&copy_in_response);
        if self.client_writer.write_all(&self.to_client).await.is_err() {
            for conn in conns.iter_mut() {
                conn.broken = true;
            }
            return Err(PgError::error(
                sqlstate::CONNECTION_FAILURE,
                "client gone during COPY",
            ));
        }
        self.to_client.clear();
        let mut splitter = CopySplitter::new(c.csv, c.delimiter, c.header, key);
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); conns.len()];
        let (failure, client_failed) = self
            .relay_rows(&mut conns, &mut splitter, &map, shards, &mut bufs)
            .await?;
        let ok = failure.is_none() && client_failed.is_none();
        let fail = match (&failure, &client_failed) {
            (Some(e), _) => e.message.clone(),
            (None, Some(m)) => m.clone(),
            _ => String::new(),
        };
        let end = if ok { None } else { Some(fail.as_str()) };
        let (total, shard_error) = end_everywhere(&mut conns, &bufs, end, key.is_some()).await;
        let failed = !ok || shard_error.is_some();
        self.end_shard_statement(shards, conns, in_txn, failed);
        if let Some(e) = failure {
            return Err(e);
        }
        let mut out = BytesMut::new();
        if let Some(e) = shard_error {
            out.extend_from_slice(&e);
        } else if let Some(m) = client_failed {
            PgError::error(
                sqlstate::QUERY_CANCELED,
                format!("COPY from stdin failed: {m}"),
            )
            .encode(&mut out);
        } else {
            protocol::command_complete(&mut out, &format!("COPY {total}"));
        }
        Ok(out)
    }

    /// Reads the client's COPY data and sends each row to its shard's buffer in `bufs` (in
    /// `conns` order), sending a buffer once it is full, up to CopyDone or CopyFail. Returns
    /// why the COPY fails (an invalid row or message, a lost shard) and the client's CopyFail
    /// message; `Err` if the client is gone.
    async fn relay_rows(
        &mut self,
        conns: &mut [Checkout],
        splitter: &mut CopySplitter,
        map: &ShardMap,
        shards: &[usize],
        bufs: &mut [Vec<u8>],
    ) -> Result<(Option<PgError>, Option<String>), PgError> {
        let max = self.state.config.proxy.max_message_size;
        let mut failure: Option<PgError> = None;
        let mut client_failed = None;
        loop {
            let frame = match split_frame(&mut self.from_client, max) {
                Ok(Some(f)) => f,
                Ok(None) => match self.client_reader.read_buf(&mut self.from_client).await {
                    Ok(k) if k > 0 => continue,
                    _ => {
                        for conn in conns.iter_mut() {
                            conn.broken = true;
                        }
                        return Err(PgError::error(
                            sqlstate::CONNECTION_FAILURE,
                            "client gone during COPY",
                        ));
                    }
                },
                Err(e) => {
                    failure = Some(PgError::error(sqlstate::PROTOCOL_VIOLATION, e.to_string()));
                    break;
                }
            };
            match frame.tag {
                b'd' => {
                    let mut route = |t: RowTarget, row: &[u8]| route_row(bufs, shards, t, row);
                    if let Err(e) = splitter.push(frame.body(), map, &mut route) {
                        failure = Some(e);
                        break;
                    }
                    if let Err(e) = send_full_buffers(conns, bufs).await {
                        failure = Some(e);
                        break;
                    }
                }
                b'c' => {
                    let mut route = |t: RowTarget, row: &[u8]| route_row(bufs, shards, t, row);
                    if let Err(e) = splitter.finish(map, &mut route) {
                        failure = Some(e);
                    }
                    break;
                }
                b'f' => {
                    client_failed = Some(protocol::query_text(frame.body()).to_string());
                    break;
                }
                b'H' | b'S' => {}
                other => {
                    failure = Some(PgError::error(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("unexpected message type {other} during COPY"),
                    ));
                    break;
                }
            }
        }
        Ok((failure, client_failed))
    }

    /// `COPY ... TO STDOUT` of a sharded table: streamed from every shard (see
    /// [`CopyOut`]); the answer goes straight into the client's output.
    pub(super) async fn copy_out(
        &mut self,
        sql: &str,
        shards: &[usize],
    ) -> Result<BytesMut, PgError> {
        let mut q = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(sql, &mut q);
        let machine = CopyOut::new(shards.len());
        self.stream_fan_out(shards, Want::Read, q.freeze(), machine, sql)
            .await?;
        Ok(BytesMut::new())
    }
}
