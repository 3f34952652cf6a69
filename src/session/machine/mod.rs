//! The session's decisions without I/O (no tokio, no sockets): each part takes the messages
//! of the client and of the servers and says what to send where; the I/O drivers in
//! `query_loop` execute that. Unit-tested without Postgres.
//!
//! - [`fan_out_read`]: a read statement streamed from several shards through the merge;
//!   [`framing`] frames its answer for the extended protocol.
//! - [`copy_out`]: `COPY ... TO STDOUT` streamed from several shards; [`copy_in`]:
//!   `COPY ... FROM STDIN` split by key over several shards while the client sends.
//! - [`pipeline`]: an extended-protocol batch whose statements go to different shards, each
//!   statement on its own shard, answered in the client's order.
//! - [`sum_writes`]: a write or schema change on several shards, answered as one (counts
//!   summed).
//! - [`commit`]: the end of a transaction on several shards (two-phase commit, or COMMIT or
//!   ROLLBACK everywhere), as rounds on its participants.
//! - [`shard_stream`]: what those share (shard progress, first error, the driver's steps).
//! - [`plan`]: the routing decision at a routing point (go, hold, fan out, switch shards,
//!   commit across shards, defer BEGIN, refuse).
//! - [`retry`]: the transparent retry of a read; [`sync`]: skip-to-Sync after an error.
//! - [`ready`]: what a ReadyForQuery means, when a connection is released, statement mode.
//! - [`statements`]: pooled statements re-Parsed on connections that lack them.
//! - [`leave`]: what becomes of the held connection when a session ends.
//! - [`txn`]: the client's transaction as one value (deferred BEGIN, open, failed, aborted).

pub mod commit;
pub mod copy_in;
pub mod copy_out;
pub mod fan_out_read;
pub mod framing;
pub mod leave;
pub mod pipeline;
pub mod plan;
pub mod ready;
pub mod retry;
pub mod shard_stream;
pub mod statements;
pub mod sum_writes;
pub mod sync;
#[cfg(test)]
pub mod test_frames;
pub mod txn;
