//! The SHOW commands' answers, read from the proxy's state. Column names, order and types are
//! PgBouncer 1.18's (checked against a real PgBouncer by `integration-tests/tests/admin.rs`).
//! A PgBouncer column Shardgate has no counterpart for shows 0 (a count of something that
//! does not exist here, e.g. DNS lookups) or NULL.

use super::stats::Totals;
use super::table::{v, Table, INT4, INT8, NUMERIC, TEXT};
use super::Show;
use crate::config::{PoolConfig, ProxyConfig, RoutingConfig};
use crate::health::now_ms;
use crate::pool::ShardPools;
use crate::state::ProxyState;

/// The answer to `show`.
pub fn table(state: &ProxyState, show: Show) -> Table {
    match show {
        Show::Pools => pools(state),
        Show::Databases => databases(state),
        Show::Users => users(state),
        Show::Lists => lists(state),
        Show::Config => config(state),
        Show::Version => version(),
        Show::Shards => shards(state),
        Show::Help => Table::new(&[]),
        Show::Stats => stats(state),
        Show::StatsTotals => stats_one(state, false),
        Show::StatsAverages => stats_one(state, true),
        Show::Clients => clients(state),
        Show::Servers => servers(state),
        Show::Prepared => prepared(state),
        Show::Queries => super::queries::table(&state.queries),
        Show::SlowQueries => super::slow::table(&state.slow),
    }
}

/// Longest statement text `SHOW PREPARED` shows.
const QUERY_SHOWN: usize = 1000;

/// Shardgate's own: the statements prepared through the proxy and shared by its clients
/// (transaction and statement pooling), most recently used first: the server-side name,
/// the text (cut at 1,000 bytes), the parameter types its Parse declared, whether a server accepted it, how many
/// clients hold it now.
fn prepared(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("name", TEXT),
        ("query", TEXT),
        ("declared_types", INT4),
        ("validated", TEXT),
        ("clients", INT8),
        ("generation", INT8),
    ]);
    for p in state.statements.entries() {
        let mut query = p.query().to_string();
        if query.len() > QUERY_SHOWN {
            let mut end = QUERY_SHOWN;
            while !query.is_char_boundary(end) {
                end -= 1;
            }
            query.truncate(end);
            query.push_str("...");
        }
        let params = crate::protocol::parse_body(&p.parse[5..])
            .map_or(0, |b| crate::protocol::param_oids(b.rest).len());
        let validated = p.validated.load(std::sync::atomic::Ordering::Relaxed);
        // The cache holds one reference; every other is a client's (or a connection's
        // statement in flight).
        let holders = std::sync::Arc::strong_count(&p).saturating_sub(2);
        t.row(vec![
            v(&p.name),
            v(query),
            v(params),
            v(if validated { "yes" } else { "no" }),
            v(holders),
            v(p.generation),
        ]);
    }
    t
}

/// The columns of `SHOW CLIENTS` and `SHOW SERVERS` (PgBouncer's, alike for both).
const SOCKETS: [(&str, u32); 18] = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
];

/// Every open server connection of every pool: `active` while checked out (`link`: the
/// client's `ptr`), else `idle`; `ptr` is the backend pid in hex, `remote_pid` the pid.
fn servers(state: &ProxyState) -> Table {
    use std::sync::atomic::Ordering::Relaxed;
    let mut t = Table::new(&SOCKETS);
    for db in &state.config.databases {
        for user in &state.config.users {
            let Some(shards) = state.registry.get(&user.name, &db.name) else {
                continue;
            };
            for pool in shards.iter().flat_map(|s| s.servers.iter()) {
                let (host, port) = pool
                    .addr()
                    .rsplit_once(':')
                    .map_or((None, None), |(h, p)| (v(h), v(p)));
                for c in pool.connections() {
                    let active = c.active.load(Relaxed);
                    let pid = c.pid.load(Relaxed);
                    let request = match c.request_ms.load(Relaxed) {
                        0 => c.opened_ms,
                        ms => ms,
                    };
                    let client = c.client.load(Relaxed);
                    t.row(vec![
                        v("S"),
                        v(&user.name),
                        v(&db.name),
                        v(if active { "active" } else { "idle" }),
                        host.clone(),
                        port.clone(),
                        c.local.map(|l| l.ip().to_string()),
                        c.local.map(|l| l.port().to_string()),
                        time_text(c.opened_ms),
                        time_text(request),
                        v(0),
                        v(0),
                        v(0),
                        v(format!("0x{pid:x}")),
                        v(if active && client != 0 {
                            format!("0x{client:x}")
                        } else {
                            String::new()
                        }),
                        v(pid),
                        v(""),
                        v(""),
                    ]);
                }
            }
        }
    }
    t
}

/// A `health::now_ms` value as PgBouncer prints times (`2026-12-03 18:40:00 UTC`).
pub(crate) fn time_text(ms: u64) -> Option<String> {
    let wall = crate::health::wall_ms(ms);
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(wall).ok()?)?;
    Some(t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// Every logged-in client: PgBouncer's columns. `ptr` is the client's cancel pid (in hex),
/// unique while it is connected; `local_addr`/`local_port` are the listen address.
fn clients(state: &ProxyState) -> Table {
    let mut t = Table::new(&SOCKETS);
    let listen: Option<std::net::SocketAddr> = state.config.proxy.listen.parse().ok();
    let now = now_ms();
    for (pid, c) in state.cancels.clients() {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let since = load(&c.waiting_since_ms);
        let waited_us = if since == 0 {
            0
        } else {
            now.saturating_sub(since) * 1000
        };
        let request = match load(&c.request_ms) {
            0 => c.since_ms,
            ms => ms,
        };
        t.row(vec![
            v("C"),
            v(&c.user),
            v(&c.database),
            v(if since == 0 { "active" } else { "waiting" }),
            c.peer.map(|p| p.ip().to_string()),
            c.peer.map(|p| p.port().to_string()),
            listen.map(|l| l.ip().to_string()),
            listen.map(|l| l.port().to_string()),
            time_text(c.since_ms),
            time_text(request),
            v(waited_us / 1_000_000),
            v(waited_us % 1_000_000),
            v(0),
            v(format!("0x{pid:x}")),
            v(""),
            v(0),
            v(""),
            v(""),
        ]);
    }
    t
}

/// Each database's totals now (`wait_us` summed over its pools) and its averages.
pub fn database_stats(state: &ProxyState) -> Vec<(&str, Totals, Totals)> {
    state
        .config
        .databases
        .iter()
        .map(|db| {
            let wait_us = state
                .config
                .users
                .iter()
                .filter_map(|u| state.registry.get(&u.name, &db.name))
                .flat_map(|shards| {
                    let w: Vec<u64> = shards
                        .iter()
                        .flat_map(|s| s.servers.iter().map(|p| p.waited_us()))
                        .collect();
                    w
                })
                .sum();
            let s = state.db_stats(&db.name);
            (db.name.as_str(), s.totals(wait_us), s.averages())
        })
        .collect()
}

fn totals_row(t: &Totals) -> [Option<String>; 7] {
    [
        v(t.xacts),
        v(t.queries),
        v(t.received),
        v(t.sent),
        v(t.xact_us),
        v(t.query_us),
        v(t.wait_us),
    ]
}

fn stats(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("total_xact_count", NUMERIC),
        ("total_query_count", NUMERIC),
        ("total_received", NUMERIC),
        ("total_sent", NUMERIC),
        ("total_xact_time", NUMERIC),
        ("total_query_time", NUMERIC),
        ("total_wait_time", NUMERIC),
        ("avg_xact_count", NUMERIC),
        ("avg_query_count", NUMERIC),
        ("avg_recv", NUMERIC),
        ("avg_sent", NUMERIC),
        ("avg_xact_time", NUMERIC),
        ("avg_query_time", NUMERIC),
        ("avg_wait_time", NUMERIC),
    ]);
    for (name, totals, averages) in database_stats(state) {
        let mut row = vec![v(name)];
        row.extend(totals_row(&totals));
        row.extend(totals_row(&averages));
        t.row(row);
    }
    t
}

/// `SHOW STATS_TOTALS` or (`averages`) `SHOW STATS_AVERAGES`.
fn stats_one(state: &ProxyState, averages: bool) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("xact_count", NUMERIC),
        ("query_count", NUMERIC),
        ("bytes_received", NUMERIC),
        ("bytes_sent", NUMERIC),
        ("xact_time", NUMERIC),
        ("query_time", NUMERIC),
        ("wait_time", NUMERIC),
    ]);
    for (name, totals, avg) in database_stats(state) {
        let mut row = vec![v(name)];
        row.extend(totals_row(if averages { &avg } else { &totals }));
        t.row(row);
    }
    t
}

fn version() -> Table {
    let mut t = Table::new(&[("version", TEXT)]);
    t.row(vec![v(format!("Shardgate {}", env!("CARGO_PKG_VERSION")))]);
    t
}

/// Server connections of a (user, database)'s pools: (open, idle, checked out, waiting
/// checkouts, longest wait in µs).
fn pool_counts(shards: &[ShardPools]) -> (u64, u64, u64, u64, u128) {
    let (mut open, mut idle, mut used, mut waiting, mut longest) = (0, 0, 0, 0, 0);
    for pool in shards.iter().flat_map(|s| s.servers.iter()) {
        let (o, i) = pool.state();
        open += u64::from(o);
        idle += u64::from(i);
        used += pool.in_use() as u64;
        let (w, wait) = pool.waiting();
        waiting += w as u64;
        longest = longest.max(wait.as_micros());
    }
    (open, idle, used, waiting, longest)
}

fn pool_mode_name(state: &ProxyState, db: &crate::config::DatabaseConfig) -> String {
    format!("{:?}", state.config.pool_mode_for(db)).to_lowercase()
}

fn pools(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("cl_active", INT4),
        ("cl_waiting", INT4),
        ("cl_active_cancel_req", INT4),
        ("cl_waiting_cancel_req", INT4),
        ("sv_active", INT4),
        ("sv_active_cancel", INT4),
        ("sv_being_canceled", INT4),
        ("sv_idle", INT4),
        ("sv_used", INT4),
        ("sv_tested", INT4),
        ("sv_login", INT4),
        ("maxwait", INT4),
        ("maxwait_us", INT4),
        ("pool_mode", TEXT),
    ]);
    let clients = state.cancels.logged_in();
    for db in &state.config.databases {
        for user in &state.config.users {
            let Some(shards) = state.registry.get(&user.name, &db.name) else {
                continue;
            };
            let (open, idle, used, waiting, longest) = pool_counts(&shards);
            let logged_in = clients
                .get(&(state.name(&user.name), state.name(&db.name)))
                .copied()
                .unwrap_or(0) as u64;
            let waiting = waiting.min(logged_in);
            let login = open.saturating_sub(idle + used);
            t.row(vec![
                v(&db.name),
                v(&user.name),
                v(logged_in - waiting),
                v(waiting),
                v(0),
                v(0),
                v(used),
                v(0),
                v(0),
                v(idle),
                v(0),
                v(0),
                v(login),
                v(longest / 1_000_000),
                v(longest % 1_000_000),
                v(pool_mode_name(state, db)),
            ]);
        }
    }
    t
}

fn databases(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("name", TEXT),
        ("host", TEXT),
        ("port", INT4),
        ("database", TEXT),
        ("force_user", TEXT),
        ("pool_size", INT4),
        ("min_pool_size", INT4),
        ("reserve_pool", INT4),
        ("pool_mode", TEXT),
        ("max_connections", INT4),
        ("current_connections", INT4),
        ("paused", INT4),
        ("disabled", INT4),
    ]);
    for db in &state.config.databases {
        // The first shard's first server stands for the database, as a PgBouncer database
        // has one host; `SHOW SHARDS` lists every server.
        let first = db
            .shards
            .first()
            .and_then(|s| s.all_servers().first().cloned());
        let (host, port) = first
            .as_ref()
            .and_then(|(addr, _)| addr.rsplit_once(':'))
            .map_or((None, None), |(h, p)| (v(h), v(p)));
        let open: u64 = state
            .config
            .users
            .iter()
            .filter_map(|u| state.registry.get(&u.name, &db.name))
            .map(|shards| pool_counts(&shards).0)
            .sum();
        t.row(vec![
            v(&db.name),
            host,
            port,
            v(db.server_database()),
            None,
            v(state.config.pool.size),
            v(state.config.pool.min_idle),
            v(0),
            v(pool_mode_name(state, db)),
            v(0),
            v(open),
            v(0),
            v(0),
        ]);
    }
    t
}

fn users(state: &ProxyState) -> Table {
    let mut t = Table::new(&[("name", TEXT), ("pool_mode", TEXT)]);
    for u in &state.config.users {
        // Pool modes are set per database here; a user has none of its own.
        t.row(vec![v(&u.name), None]);
    }
    t
}

fn lists(state: &ProxyState) -> Table {
    let mut t = Table::new(&[("list", TEXT), ("items", INT4)]);
    let pools: usize = state
        .config
        .databases
        .iter()
        .map(|d| {
            d.shards
                .iter()
                .map(|s| s.all_servers().len())
                .sum::<usize>()
        })
        .sum::<usize>()
        * state.config.users.len();
    // Console sessions are used clients too, as in PgBouncer.
    let consoles = state.consoles.load(std::sync::atomic::Ordering::Relaxed);
    let logged_in = state.cancels.logged_in().values().sum::<usize>() + consoles;
    let connected = state.clients.load(std::sync::atomic::Ordering::Relaxed);
    let mut open = 0u64;
    for db in &state.config.databases {
        for u in &state.config.users {
            if let Some(shards) = state.registry.get(&u.name, &db.name) {
                open += pool_counts(&shards).0;
            }
        }
    }
    for (list, n) in [
        ("databases", state.config.databases.len() as u64),
        ("users", state.config.users.len() as u64),
        ("pools", pools as u64),
        ("free_clients", 0),
        ("used_clients", logged_in as u64),
        ("login_clients", connected.saturating_sub(logged_in) as u64),
        ("free_servers", 0),
        ("used_servers", open),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![v(list), v(n)]);
    }
    t
}

/// Flattens a config section into `section.key` rows with its defaults.
fn section<T: serde::Serialize>(t: &mut Table, name: &str, now: &T, default: &T) {
    let (Ok(toml::Value::Table(now)), Ok(toml::Value::Table(default))) =
        (toml::Value::try_from(now), toml::Value::try_from(default))
    else {
        return;
    };
    let text = |v: &toml::Value| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for (key, value) in &now {
        t.row(vec![
            v(format!("{name}.{key}")),
            v(text(value)),
            default.get(key).map(text),
            v("no"),
        ]);
    }
}

fn config(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("key", TEXT),
        ("value", TEXT),
        ("default", TEXT),
        ("changeable", TEXT),
    ]);
    let c = &state.config;
    section(&mut t, "proxy", &c.proxy, &ProxyConfig::default());
    section(&mut t, "pool", &c.pool, &PoolConfig::default());
    section(&mut t, "routing", &c.routing, &RoutingConfig::default());
    t
}

/// Shardgate's own: every server of every shard, its role now, health, lag and ban.
fn shards(state: &ProxyState) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("shard", TEXT),
        ("server", TEXT),
        ("declared_role", TEXT),
        ("role", TEXT),
        ("reachable", TEXT),
        ("lag_bytes", INT8),
        ("lag_ms", INT8),
        ("banned_for_ms", INT8),
    ]);
    let Some(user) = state.config.users.first() else {
        return t;
    };
    let now = now_ms();
    for db in &state.config.databases {
        let Some(shards) = state.registry.get(&user.name, &db.name) else {
            continue;
        };
        for s in shards.iter() {
            for pool in &s.servers {
                let h = &pool.health;
                let role = h.role_name();
                t.row(vec![
                    v(&db.name),
                    v(&s.name),
                    v(pool.addr()),
                    v(format!("{:?}", h.declared).to_lowercase()),
                    v(role),
                    v(if h.reachable() { "yes" } else { "no" }),
                    v(h.lag_bytes()),
                    v(h.lag_ms()),
                    v(h.banned_until_ms().saturating_sub(now)),
                ]);
            }
        }
    }
    t
}
