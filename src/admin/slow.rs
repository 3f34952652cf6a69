//! The slow-query log (`proxy.slow_query_ms`): each request that took longer is logged with
//! its shape, duration, route and the server that ran it, and kept (the last [`KEPT`]) for
//! `SHOW SLOW_QUERIES`. At most once per shape per `slow_query_explain_interval_ms`, the plan
//! of a slow simple Query is fetched off the client's path: `EXPLAIN` (never ANALYZE) of the
//! same text on the same server, over a connection of its own, inside a read-only
//! transaction that is rolled back, through the extended protocol (so exactly one statement
//! is explained).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use crate::admin::table::{v, Table, INT8, TEXT};
use crate::pool::ServerPool;

/// Slow queries kept for `SHOW SLOW_QUERIES`.
pub const KEPT: usize = 100;

/// Longest statement text explained (longer ones are logged, not explained).
pub const MAX_EXPLAINED: usize = 16 * 1024;

/// One slow request.
#[derive(Debug)]
pub struct SlowQuery {
    /// When it ended (a [`crate::health::now_ms`] value).
    pub at_ms: u64,
    pub database: String,
    pub user: String,
    /// Its shape (the first one's, for a batch of several).
    pub query: String,
    pub duration_us: u64,
    /// `primary` or `replica`.
    pub role: &'static str,
    pub shard: String,
    pub server: String,
    /// The plan once fetched, or why there is none.
    pub plan: Mutex<Option<String>>,
}

impl SlowQuery {
    /// Its plan (or why it has none), if known yet.
    pub fn plan(&self) -> Option<String> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets its plan (or why it has none).
    pub fn set_plan(&self, plan: String) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
    }
}

/// The last slow queries.
#[derive(Debug, Default)]
pub struct SlowLog {
    entries: Mutex<VecDeque<Arc<SlowQuery>>>,
}

impl SlowLog {
    /// Keeps `q` (dropping the oldest beyond [`KEPT`]).
    pub fn push(&self, q: SlowQuery) -> Arc<SlowQuery> {
        let q = Arc::new(q);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= KEPT {
            e.pop_front();
        }
        e.push_back(q.clone());
        q
    }

    /// The slow queries kept, newest first.
    pub fn entries(&self) -> Vec<Arc<SlowQuery>> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().rev().cloned().collect()
    }
}

/// `SHOW SLOW_QUERIES`: newest first.
pub fn table(log: &SlowLog) -> Table {
    let mut t = Table::new(&[
        ("at", TEXT),
        ("database", TEXT),
        ("user", TEXT),
        ("duration_us", INT8),
        ("role", TEXT),
        ("shard", TEXT),
        ("server", TEXT),
        ("query", TEXT),
        ("plan", TEXT),
    ]);
    for q in log.entries() {
        t.row(vec![
            crate::admin::show::time_text(q.at_ms),
            v(&q.database),
            v(&q.user),
            v(q.duration_us),
            v(q.role),
            v(&q.shard),
            v(&q.server),
            v(&q.query),
            q.plan(),
        ]);
    }
    t
}

/// Whether `sql` is one statement EXPLAIN accepts (a query or DML), so explaining it runs
/// nothing.
pub fn explainable(sql: &str) -> bool {
    if sql.len() > MAX_EXPLAINED || crate::sql::scan::split_statements(sql).len() != 1 {
        return false;
    }
    let first = crate::sql::shape(sql).text;
    let word: String = first
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        word.as_str(),
        "SELECT" | "WITH" | "INSERT" | "UPDATE" | "DELETE" | "VALUES" | "TABLE"
    )
}

/// Fetches the plan of `sql` on `pool`'s server (see the module docs) and keeps it in `q`
/// (or why it could not), logging it.
pub async fn explain(pool: Arc<ServerPool>, sql: String, q: Arc<SlowQuery>, timeout_ms: u64) {
    let limit = std::time::Duration::from_millis(timeout_ms.max(1));
    let plan = match tokio::time::timeout(limit, plan_of(&pool, &sql)).await {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => format!("(no plan: {e})"),
        Err(_) => "(no plan: EXPLAIN timed out)".to_string(),
    };
    tracing::info!(target: "shardgate::slow_query", server = %q.server, query = %q.query, plan = %plan, "plan of a slow query");
    q.set_plan(plan);
}

async fn plan_of(pool: &ServerPool, sql: &str) -> Result<String, String> {
    let mut conn = pool.connect_unpooled().await.map_err(|e| e.to_string())?;
    conn.run("BEGIN READ ONLY")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    let explain = format!("EXPLAIN {sql}");
    let no_params: [Option<i32>; 0] = [];
    let io = |e: std::io::Error| e.to_string();
    frontend::parse("", &explain, std::iter::empty(), &mut out).map_err(io)?;
    frontend::bind(
        "",
        "",
        std::iter::empty::<i16>(),
        no_params.iter(),
        |_: &Option<i32>, _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes),
        Some(0),
        &mut out,
    )
    .map_err(|e| match e {
        frontend::BindError::Conversion(e) => e.to_string(),
        frontend::BindError::Serialization(e) => e.to_string(),
    })?;
    frontend::execute("", 0, &mut out).map_err(io)?;
    frontend::sync(&mut out);
    let (frames, _) = conn.exchange(&out).await.map_err(|e| e.to_string())?;
    let _ = conn.run("ROLLBACK").await;
    let mut lines = Vec::new();
    for f in &frames {
        match f.tag {
            b'D' => lines.extend(crate::backend::data_row_texts(f.body())),
            b'E' => {
                let (code, message) = crate::protocol::error_fields(f.body());
                return Err(format!("{code}: {message}"));
            }
            _ => {}
        }
    }
    Ok(lines.join("\n"))
}
