//! The connections of a statement on several shards: one per shard, with the client's
//! settings; inside a transaction its own connections (current or parked), new ones joining
//! it with its BEGIN, opened on every shard at once.

use super::routing::Want;
use super::Loop;
use crate::pool::Checkout;
use crate::protocol::{sqlstate, PgError};
use crate::session::client_state::setup_sql;
use crate::shard::ShardId;

impl Loop<'_> {
    /// Keeps a transaction's connections (in `shards` order) for its later statements.
    pub(super) fn park_all(&mut self, shards: &[ShardId], conns: Vec<Checkout>) {
        for (shard, c) in shards.iter().zip(conns) {
            self.routing.parked.push((*shard, c));
        }
    }

    /// One connection per shard in `shards`, with the client's settings. Inside a
    /// transaction, the transaction's own connections (current or parked), and new ones
    /// join it with its BEGIN. Returns the connections and whether a transaction is open.
    pub(super) async fn shard_conns(
        &mut self,
        shards: &[ShardId],
        want: Want,
    ) -> Result<(Vec<Checkout>, bool), PgError> {
        self.state.events.fan_out(shards.len());
        if want == Want::Primary {
            // A write or schema change on every one of them (its positions are not read).
            self.wrote_on(shards);
        }
        let in_txn = self.txn.in_block() || !self.routing.parked.is_empty();
        if in_txn {
            // A transaction pinned to its shard by a savepoint fails here (twophase.rs).
            for s in shards {
                self.may_join(*s).await?;
            }
        }
        let begin = if in_txn {
            let text = self.txn.open_on_shards();
            Some(self.begin_sql(&text))
        } else {
            None
        };
        // The transaction's own connections first.
        let mut slots: Vec<Option<Checkout>> = Vec::with_capacity(shards.len());
        for shard in shards {
            let mut reused = None;
            if in_txn {
                if self.server.is_some() && self.routing.shard == *shard {
                    super::lock(&self.login.cancel.slot).clear();
                    reused = self.server.take();
                }
                if reused.is_none() {
                    reused = self.unpark(*shard);
                }
            }
            slots.push(reused);
        }
        // New ones on every other shard at once: one connect (or checkout) and one setup
        // round trip of wait in all, not one per shard.
        let this = &*self;
        let begin = begin.as_deref();
        let missing = shards.iter().zip(&slots).filter(|(_, c)| c.is_none());
        let opened = futures_util::future::join_all(
            missing.map(|(shard, _)| this.open_for_fan_out(want, *shard, begin)),
        )
        .await;
        let mut opened = opened.into_iter();
        let mut conns = Vec::with_capacity(shards.len());
        let mut kept = Vec::with_capacity(shards.len());
        let mut error = None;
        for (shard, slot) in shards.iter().zip(slots) {
            match slot.map(Ok).or_else(|| opened.next()) {
                Some(Ok(c)) => {
                    kept.push(*shard);
                    conns.push(c);
                }
                Some(Err(e)) => {
                    error.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(e) = error {
            if in_txn {
                // The transaction failed; its connections stay until its end.
                self.park_all(&kept, conns);
                self.txn.fail();
            }
            return Err(e);
        }
        Ok((conns, in_txn))
    }

    /// A new connection to `shard` for a fan-out, with the client's settings and, inside a
    /// transaction, its BEGIN (`begin`) applied.
    async fn open_for_fan_out(
        &self,
        want: Want,
        shard: ShardId,
        begin: Option<&str>,
    ) -> Result<Checkout, PgError> {
        let (mut conn, _) = self.acquire(want, shard).await?;
        let mut setup = setup_sql(&self.client.settings, &mut conn);
        if let Some(b) = begin {
            setup = Some(match setup {
                Some(s) => format!("{s}; {b}"),
                None => b.to_string(),
            });
        }
        if let Some(sql) = setup {
            if conn.run(&sql).await.is_err() {
                conn.broken = true;
                return Err(PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    "could not prepare a shard connection for the statement",
                ));
            }
            conn.settings = self.client.settings.clone();
        }
        Ok(conn)
    }
}
