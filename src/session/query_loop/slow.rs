//! The slow-query log, session side (see [`crate::admin::slow`]): a request answered after
//! `slow_query_ms` is logged with its shape, duration, route and server, kept for
//! `SHOW SLOW_QUERIES`, and its plan fetched off the client's path when due.

use super::Loop;
use crate::admin::slow::{self, SlowQuery};
use crate::protocol::query_text;

/// Longest a plan is waited for.
const EXPLAIN_TIMEOUT_MS: u64 = 10_000;

impl Loop<'_> {
    /// Whether the statements sent are noted (for per-shape statistics or the slow-query log).
    pub(super) fn noting(&self) -> bool {
        self.state.notes_queries()
    }

    /// The oldest request awaiting its answer took `us` microseconds: logs it if slow.
    pub(super) fn note_slow(&mut self, us: u64) {
        let slow_ms = self.state.config.proxy.slow_query_ms;
        if slow_ms == 0 || us < slow_ms.saturating_mul(1000) {
            return;
        }
        let Some((message, stats)) = self.meter.pending.oldest() else {
            return;
        };
        let sql = message.map(|m| query_text(m.get(5..).unwrap_or_default()).to_string());
        let query = match (stats, &sql) {
            (Some(s), _) => s.text.to_string(),
            (None, Some(sql)) => crate::admin::queries::cut(&crate::sql::shape(sql).text).into(),
            (None, None) => "(statements of the extended protocol)".to_string(),
        };
        let stats = stats.cloned();
        let server = self.server.as_deref().map(|c| c.addr.to_string());
        let role = if self.routing.on_primary {
            "primary"
        } else {
            "replica"
        };
        let shard = self.login.shards.get(self.routing.shard.index());
        let shard = shard.map(|s| s.name.clone()).unwrap_or_default();
        let server = server.unwrap_or_else(|| "(several shards)".to_string());
        tracing::warn!(
            target: "shardgate::slow_query",
            database = self.login.database(),
            user = self.login.user(),
            duration_ms = us / 1000,
            role,
            shard = %shard,
            server = %server,
            query = %query,
            "slow query"
        );
        let q = self.state.slow.push(SlowQuery {
            at_ms: crate::health::now_ms(),
            database: self.login.database().to_string(),
            user: self.login.user().to_string(),
            query,
            duration_us: us,
            role,
            shard,
            server,
            plan: Default::default(),
        });
        let interval = self.state.config.proxy.slow_query_explain_interval_ms;
        let Some(sql) = sql.filter(|s| slow::explainable(s)) else {
            q.set_plan("(not explained: only a simple query of one SELECT, WITH, VALUES, TABLE, INSERT, UPDATE or DELETE is)".into());
            return;
        };
        let pool = (self.login.shards.iter().flat_map(|s| s.servers.iter()))
            .find(|p| p.addr() == q.server)
            .cloned();
        let Some(stats) = stats else {
            // The once-per-shape limit needs the shape's statistics.
            q.set_plan("(not explained: the shape is not tracked, see query_stats_size)".into());
            return;
        };
        match pool {
            Some(pool) if stats.explain_due(crate::health::now_ms(), interval) => {
                tokio::spawn(slow::explain(pool, sql, q, EXPLAIN_TIMEOUT_MS));
            }
            Some(_) => q.set_plan(format!(
                "(not explained: at most once per shape in {interval} ms)"
            )),
            None => q.set_plan("(not explained: the server is not one of this database's)".into()),
        }
    }
}
