//! The live dashboard on `proxy.metrics_listen`: `/` serves one self-contained page
//! ([`PAGE`]: inline SVG charts drawn by a little JavaScript, nothing loaded from elsewhere)
//! that polls `/api/dashboard` every 2 s and keeps the last 5 minutes in memory; [`json`]
//! builds that JSON from the proxy's state, read the way the admin console's SHOW commands
//! and `/metrics` read it.
//!
//! The JSON carries cumulative counters (transactions, queries, duration histograms,
//! checkouts and their waits) and gauges (connections, waiting checkouts, roles, lag) with a
//! timestamp; the page computes rates and interval percentiles from successive samples.
//! Bounded by the config (databases, users, shards, servers) and [`TOP_SHAPES`] shapes of at
//! most [`SHAPE_TEXT`] characters each; it names configured users, databases, shards and
//! server addresses only: no password, no client address.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::show::database_stats;
use super::stats::{Buckets, BUCKETS_US};
use crate::health::{now_ms, wall_ms};
use crate::state::ProxyState;

/// The dashboard page (`src/admin/dashboard.html`).
pub const PAGE: &str = include_str!("dashboard.html");

/// Most query shapes the JSON carries (those with the most total time).
pub const TOP_SHAPES: usize = 20;

/// Most characters of a shape's text the JSON carries.
pub const SHAPE_TEXT: usize = 200;

/// Everything one sample of the page holds.
#[derive(Debug, Serialize)]
struct Dashboard {
    version: &'static str,
    /// Wall-clock milliseconds since the epoch when the sample was taken.
    now_ms: u64,
    /// Upper bounds (µs) of the duration histograms' buckets; the last (unbounded) is null.
    buckets_us: Vec<Option<u64>>,
    clients: Clients,
    databases: Vec<Database>,
    pools: Vec<Pool>,
    shards: Vec<Shard>,
    queries: Queries,
}

#[derive(Debug, Serialize)]
struct Clients {
    connected: usize,
    logged_in: usize,
    /// Logged-in clients waiting for a server connection now.
    waiting: usize,
    hibernating: usize,
    consoles: usize,
}

/// One database's cumulative traffic.
#[derive(Debug, Serialize)]
struct Database {
    name: String,
    pool_mode: String,
    shards: usize,
    xacts: u64,
    queries: u64,
    received: u64,
    sent: u64,
    xact_us: u64,
    query_us: u64,
    wait_us: u64,
    query_buckets: Buckets,
    xact_buckets: Buckets,
}

/// One pool (database, user, shard, server): connections now and checkouts so far.
#[derive(Debug, Serialize)]
struct Pool {
    database: String,
    user: String,
    shard: String,
    server: String,
    active: u64,
    idle: u64,
    /// Connections being opened.
    login: u64,
    waiting: u64,
    maxwait_us: u64,
    checkouts: u64,
    waited_us: u64,
}

/// One shard of a database: its servers and its load over every user's pools.
#[derive(Debug, Serialize)]
struct Shard {
    database: String,
    shard: String,
    checkouts: u64,
    active: u64,
    servers: Vec<Server>,
}

/// What the health checker knows of one server.
#[derive(Debug, Serialize)]
struct Server {
    server: String,
    declared_role: String,
    /// `primary`, `replica` or `unknown`.
    role: &'static str,
    reachable: bool,
    banned_for_ms: u64,
    lag_bytes: u64,
    lag_ms: u64,
}

#[derive(Debug, Serialize)]
struct Queries {
    /// Shapes tracked, and new shapes that found no room.
    tracked: usize,
    dropped: u64,
    top: Vec<QueryShape>,
}

/// One query shape's cumulative statistics.
#[derive(Debug, Serialize)]
struct QueryShape {
    id: String,
    text: String,
    calls: u64,
    errors: u64,
    rows: u64,
    total_us: u64,
    mean_us: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    max_us: u64,
}

/// The dashboard's data now, as JSON text.
pub fn json(state: &ProxyState) -> String {
    let d = Dashboard {
        version: env!("CARGO_PKG_VERSION"),
        now_ms: wall_ms(now_ms()),
        buckets_us: BUCKETS_US
            .iter()
            .map(|b| (*b != u64::MAX).then_some(*b))
            .collect(),
        clients: clients(state),
        databases: databases(state),
        pools: pools(state),
        shards: shards(state),
        queries: queries(state),
    };
    serde_json::to_string(&d).unwrap_or_else(|_| "{}".to_string())
}

fn clients(state: &ProxyState) -> Clients {
    let logged_in: usize = state.cancels.logged_in().values().sum();
    let waiting = state
        .cancels
        .clients()
        .iter()
        .filter(|(_, c)| c.waiting_since_ms.load(Ordering::Relaxed) != 0)
        .count();
    Clients {
        connected: state.clients.load(Ordering::Relaxed),
        logged_in,
        waiting,
        hibernating: state.hibernating.load(Ordering::Relaxed),
        consoles: state.consoles.load(Ordering::Relaxed),
    }
}

fn databases(state: &ProxyState) -> Vec<Database> {
    database_stats(state)
        .into_iter()
        .map(|(name, t, _)| {
            let (query_buckets, xact_buckets) = state.db_stats(name).histograms();
            let db = state.config.databases.iter().find(|d| d.name == name);
            Database {
                name: name.to_string(),
                pool_mode: db.map_or_else(String::new, |d| {
                    format!("{:?}", state.config.pool_mode_for(d)).to_lowercase()
                }),
                shards: db.map_or(0, |d| d.shards.len()),
                xacts: t.xacts,
                queries: t.queries,
                received: t.received,
                sent: t.sent,
                xact_us: t.xact_us,
                query_us: t.query_us,
                wait_us: t.wait_us,
                query_buckets,
                xact_buckets,
            }
        })
        .collect()
}

/// A pool's checkouts so far (every one begun and not waiting now).
fn checkouts(p: &crate::pool::ServerPool) -> u64 {
    p.wait_histogram().0.iter().sum()
}

fn pools(state: &ProxyState) -> Vec<Pool> {
    let mut out = Vec::new();
    state.each_pool(|database, user, shard, p| {
        let (open, idle) = p.state();
        let active = p.in_use() as u64;
        let (waiting, longest) = p.waiting();
        out.push(Pool {
            database: database.to_string(),
            user: user.to_string(),
            shard: shard.to_string(),
            server: p.addr().to_string(),
            active,
            idle: u64::from(idle),
            login: u64::from(open).saturating_sub(u64::from(idle) + active),
            waiting: waiting as u64,
            maxwait_us: longest.as_micros() as u64,
            checkouts: checkouts(p),
            waited_us: p.waited_us(),
        });
    });
    out
}

fn server(pool: &crate::pool::ServerPool, now: u64) -> Server {
    let h = &pool.health;
    let role = h.role_name();
    Server {
        server: pool.addr().to_string(),
        declared_role: format!("{:?}", h.declared).to_lowercase(),
        role,
        reachable: h.reachable(),
        banned_for_ms: h.banned_until_ms().saturating_sub(now),
        lag_bytes: h.lag_bytes(),
        lag_ms: h.lag_ms(),
    }
}

/// Every shard of every database (servers as the first user's pools see them, as in
/// `SHOW SHARDS`; load summed over every user's pools).
fn shards(state: &ProxyState) -> Vec<Shard> {
    let mut out = Vec::new();
    let Some(first) = state.config.users.first() else {
        return out;
    };
    let now = now_ms();
    for db in &state.config.databases {
        let Some(shards) = state.registry.get(&first.name, &db.name) else {
            continue;
        };
        for (i, s) in shards.iter().enumerate() {
            let (mut checkouts_sum, mut active) = (0, 0);
            for user in &state.config.users {
                let Some(theirs) = state.registry.get(&user.name, &db.name) else {
                    continue;
                };
                for p in theirs.get(i).map_or(&[][..], |s| &s.servers[..]) {
                    checkouts_sum += checkouts(p);
                    active += p.in_use() as u64;
                }
            }
            out.push(Shard {
                database: db.name.clone(),
                shard: s.name.clone(),
                checkouts: checkouts_sum,
                active,
                servers: s.servers.iter().map(|p| server(p, now)).collect(),
            });
        }
    }
    out
}

/// `text` cut at [`SHAPE_TEXT`] characters (`…` marks a cut).
fn cut(text: &str) -> String {
    match text.char_indices().nth(SHAPE_TEXT) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

fn queries(state: &ProxyState) -> Queries {
    let top = state
        .queries
        .top(TOP_SHAPES)
        .into_iter()
        .filter(|r| r.calls > 0)
        .map(|r| QueryShape {
            id: format!("{:016x}", r.id),
            text: cut(&r.text),
            calls: r.calls,
            errors: r.errors,
            rows: r.rows,
            total_us: r.total_us,
            mean_us: r.total_us / r.calls.max(1),
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            max_us: r.max_us,
        })
        .collect();
    Queries {
        tracked: state.queries.len(),
        dropped: state.queries.dropped(),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_text_is_cut_at_200_characters() {
        assert_eq!(cut("SELECT 1"), "SELECT 1");
        let long = "é".repeat(300);
        let c = cut(&long);
        assert_eq!(c.chars().count(), SHAPE_TEXT + 1);
        assert!(c.ends_with('…'));
        assert_eq!(cut(&"x".repeat(SHAPE_TEXT)), "x".repeat(SHAPE_TEXT));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // The SVG namespace is a name, not a load.
        let page = PAGE.replace("'http://www.w3.org/2000/svg'", "");
        for needle in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!page.contains(needle), "{needle} in the dashboard page");
        }
        for id in ["id=\"status\"", "id=\"errors\"", "/api/dashboard"] {
            assert!(PAGE.contains(id), "{id} in the dashboard page");
        }
    }
}
