//! The HTTP endpoint on `proxy.metrics_listen`: `/metrics` in the Prometheus text format
//! (`prometheus-client`), `/healthz` (the process answers) and `/readyz` (every database has a
//! primary the health checks reach, and the proxy is not shutting down), for load balancers
//! and Kubernetes. The numbers are read from the proxy's state at each scrape (the same as
//! the admin console's SHOW commands), so serving them costs the sessions nothing. Label
//! values are configured names only (database, user, shard, server): bounded by the config,
//! never SQL text or client addresses.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin::show::database_stats;
use crate::admin::stats::{Buckets, BUCKETS_US};
use crate::state::ProxyState;

type Labels = Vec<(&'static str, String)>;

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, live: Arc<arc_swap::ArcSwap<ProxyState>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let live = live.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                // The configuration in force at each request (reloads swap it).
                let state = live.load_full();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn answer<B>(state: &ProxyState, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::admin::dashboard::PAGE.to_string(),
        ),
        "/api/dashboard" => (
            StatusCode::OK,
            "application/json",
            crate::admin::dashboard::json(state),
        ),
        "/metrics" => (StatusCode::OK, prometheus_text::CONTENT_TYPE, render(state)),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match not_ready(state) {
            None => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /, /api/dashboard, /metrics, /healthz, /readyz\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Why the proxy should not get new clients, if it should not.
pub fn not_ready(state: &ProxyState) -> Option<String> {
    if state.shutdown.rung() {
        return Some("shutting down".into());
    }
    let user = state.config.users.first()?;
    for db in &state.config.databases {
        if state.controls.paused(&db.name) {
            return Some(format!("database {} is paused", db.name));
        }
        let shards = state.registry.get(&user.name, &db.name)?;
        for s in shards.iter() {
            let up = s
                .servers
                .iter()
                .any(|p| p.health.is_primary() && p.health.reachable());
            if !up {
                return Some(format!(
                    "database {} shard {} has no reachable primary",
                    db.name, s.name
                ));
            }
        }
    }
    None
}

/// A gauge family registered under `name`.
fn gauges(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// A counter family registered under `name` (`_total` is added).
fn counters(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

/// The metrics now, in the Prometheus text format.
pub fn render(state: &ProxyState) -> String {
    let mut reg = Registry::with_prefix("shardgate");
    clients(state, &mut reg);
    pools(state, &mut reg);
    traffic(state, &mut reg);
    servers(state, &mut reg);
    shapes(state, &mut reg);
    reg.register_collector(Box::new(Durations::of(state)));
    reg.register_collector(Box::new(CheckoutWaits::of(state)));
    events(state, &mut reg);
    let mut out = String::new();
    if prometheus_text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

fn clients(state: &ProxyState, reg: &mut Registry) {
    let g = gauges(reg, "clients", "Client connections by state");
    let logged_in: usize = state.cancels.logged_in().values().sum();
    let connected = state.clients.load(Ordering::Relaxed);
    let hibernating = state.hibernating.load(Ordering::Relaxed);
    let consoles = state.consoles.load(Ordering::Relaxed);
    for (s, n) in [
        ("logged_in", logged_in),
        ("console", consoles),
        ("logging_in", connected.saturating_sub(logged_in + consoles)),
        ("hibernating", hibernating),
    ] {
        g.get_or_create(&vec![("state", s.to_string())])
            .set(n as i64);
    }
}

fn pools(state: &ProxyState, reg: &mut Registry) {
    let conns = gauges(
        reg,
        "server_connections",
        "Server connections by pool and state",
    );
    let waiting = gauges(
        reg,
        "pool_waiting_checkouts",
        "Checkouts waiting for a connection",
    );
    let maxwait = gauges(
        reg,
        "pool_maxwait_microseconds",
        "Oldest waiting checkout's wait",
    );
    let waited = counters(
        reg,
        "pool_wait_microseconds",
        "Time checkouts waited for a connection",
    );
    each_pool(state, |pool, p| {
        let labels = |extra: Option<&str>| {
            let mut l: Labels = pool.to_vec();
            if let Some(state) = extra {
                l.push(("state", state.to_string()));
            }
            l
        };
        let (open, idle) = p.state();
        let used = p.in_use() as i64;
        let (open, idle) = (i64::from(open), i64::from(idle));
        conns.get_or_create(&labels(Some("active"))).set(used);
        conns.get_or_create(&labels(Some("idle"))).set(idle);
        let login = (open - idle - used).max(0);
        conns.get_or_create(&labels(Some("login"))).set(login);
        let (w, longest) = p.waiting();
        waiting.get_or_create(&labels(None)).set(w as i64);
        maxwait
            .get_or_create(&labels(None))
            .set(longest.as_micros() as i64);
        waited.get_or_create(&labels(None)).inc_by(p.waited_us());
    });
}

/// Calls `f` with each pool (database, user, shard, server) and its labels.
fn each_pool(state: &ProxyState, mut f: impl FnMut(PoolLabels, &crate::pool::ServerPool)) {
    state.each_pool(|database, user, shard, p| {
        let labels = [
            ("database", database.to_string()),
            ("user", user.to_string()),
            ("shard", shard.to_string()),
            ("server", p.addr().to_string()),
        ];
        f(labels, p);
    });
}

fn traffic(state: &ProxyState, reg: &mut Registry) {
    let xacts = counters(reg, "transactions", "Transactions (a ReadyForQuery idle)");
    let queries = counters(reg, "queries", "Queries (a ReadyForQuery to a client)");
    let received = counters(reg, "received_bytes", "Bytes received from clients");
    let sent = counters(reg, "sent_bytes", "Bytes sent to clients");
    let xact_us = counters(reg, "transaction_microseconds", "Time in transactions");
    let query_us = counters(reg, "query_microseconds", "Time answering queries");
    for (name, t, _) in database_stats(state) {
        let l = vec![("database", name.to_string())];
        xacts.get_or_create(&l).inc_by(t.xacts);
        queries.get_or_create(&l).inc_by(t.queries);
        received.get_or_create(&l).inc_by(t.received);
        sent.get_or_create(&l).inc_by(t.sent);
        xact_us.get_or_create(&l).inc_by(t.xact_us);
        query_us.get_or_create(&l).inc_by(t.query_us);
    }
}

fn servers(state: &ProxyState, reg: &mut Registry) {
    let up = gauges(
        reg,
        "server_up",
        "1 if the last health check reached the server",
    );
    let primary = gauges(reg, "server_primary", "1 if the server takes writes now");
    let banned = gauges(
        reg,
        "server_banned",
        "1 if the server is banned from reads now",
    );
    let lag_bytes = gauges(
        reg,
        "replica_lag_bytes",
        "WAL not yet replayed by the replica",
    );
    let lag_ms = gauges(
        reg,
        "replica_lag_milliseconds",
        "Replication lag of the replica",
    );
    let Some(user) = state.config.users.first() else {
        return;
    };
    for db in &state.config.databases {
        let Some(shards) = state.registry.get(&user.name, &db.name) else {
            continue;
        };
        for s in shards.iter() {
            for p in &s.servers {
                let l = vec![
                    ("database", db.name.clone()),
                    ("shard", s.name.clone()),
                    ("server", p.addr().to_string()),
                ];
                let h = &p.health;
                up.get_or_create(&l).set(i64::from(h.reachable()));
                primary.get_or_create(&l).set(i64::from(h.is_primary()));
                banned.get_or_create(&l).set(i64::from(h.banned()));
                if h.is_replica() {
                    lag_bytes.get_or_create(&l).set(h.lag_bytes() as i64);
                    lag_ms.get_or_create(&l).set(h.lag_ms() as i64);
                }
            }
        }
    }
}

/// Query shapes `/metrics` shows (those with the most total time): the label set stays
/// bounded, and the shape's text is in `SHOW QUERIES` under the same `query_id`.
const METRIC_SHAPES: usize = 20;

fn shapes(state: &ProxyState, reg: &mut Registry) {
    let calls = counters(
        reg,
        "query_shape_calls",
        "Calls of a top query shape (SHOW QUERIES)",
    );
    let errors = counters(
        reg,
        "query_shape_errors",
        "Calls of a top query shape that failed",
    );
    let rows = counters(
        reg,
        "query_shape_rows",
        "Rows returned or changed by a top query shape",
    );
    let micros = counters(
        reg,
        "query_shape_microseconds",
        "Time spent answering a top query shape",
    );
    for r in state.queries.top(METRIC_SHAPES) {
        let l = vec![("query_id", format!("{:016x}", r.id))];
        calls.get_or_create(&l).inc_by(r.calls);
        errors.get_or_create(&l).inc_by(r.errors);
        rows.get_or_create(&l).inc_by(r.rows);
        micros.get_or_create(&l).inc_by(r.total_us);
    }
}

/// A cache's lookups, `result` hit or miss.
fn lookups(reg: &mut Registry, name: &str, help: &str, (hits, misses): (u64, u64)) {
    let family = counters(reg, name, help);
    for (result, n) in [("hit", hits), ("miss", misses)] {
        family
            .get_or_create(&vec![("result", result.to_string())])
            .inc_by(n);
    }
}

fn events(state: &ProxyState, reg: &mut Registry) {
    use crate::admin::events::{Events, FAN_OUT_SHARDS};
    let e = &state.events;
    let one = |reg: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        reg.register(name, help, c);
    };
    for (name, help, v) in [
        (
            "read_retries",
            "Reads replayed on another server",
            &e.read_retries,
        ),
        (
            "two_phase_commits",
            "Two-phase commits decided commit",
            &e.two_phase_commits,
        ),
        (
            "two_phase_left_to_recovery",
            "Two-phase commits with a part left to recovery",
            &e.two_phase_left_to_recovery,
        ),
        (
            "two_phase_recovered",
            "Prepared parts left behind that recovery committed or rolled back",
            &*e.two_phase_recovered,
        ),
        (
            "two_phase_aborts",
            "Two-phase commits rolled back",
            &e.two_phase_aborts,
        ),
        (
            "pinned_clients",
            "Clients pinned to their server connection",
            &e.pins,
        ),
    ] {
        one(reg, name, help, Events::get(v));
    }
    let fan = counters(
        reg,
        "fan_outs",
        "Statements run on several shards, by shard count",
    );
    for (label, c) in FAN_OUT_SHARDS.iter().zip(&e.fan_outs) {
        fan.get_or_create(&vec![("shards", label.to_string())])
            .inc_by(Events::get(c));
    }
    let analyses = (state.analysis.hits(), state.analysis.misses());
    lookups(
        reg,
        "analysis_cache_lookups",
        "Statement analyses by shape, by result",
        analyses,
    );
    let errors = counters(
        reg,
        "errors",
        "Errors sent to clients, by SQLSTATE class and whether a server or the proxy made them",
    );
    for (source, counts) in [
        ("server", &e.server_errors),
        ("proxy", &crate::protocol::PROXY_ERRORS),
    ] {
        for (class, n) in counts.nonzero() {
            errors
                .get_or_create(&vec![("source", source.to_string()), ("class", class)])
                .inc_by(n);
        }
    }
    lookups(
        reg,
        "statement_cache_lookups",
        "Parses of a statement the proxy shares, by whether it was shared already",
        state.statements.lookups(),
    );
    let statements = Gauge::<i64>::default();
    statements.set(state.statements.len() as i64);
    reg.register(
        "shared_statements",
        "Statements in the shared statement cache",
        statements,
    );
}

/// The query and transaction duration histograms of every database, as read at a scrape.
#[derive(Debug)]
struct Durations {
    /// (database, query buckets, query µs, transaction buckets, transaction µs).
    databases: Vec<(String, Buckets, u64, Buckets, u64)>,
}

impl Durations {
    fn of(state: &ProxyState) -> Durations {
        let databases = database_stats(state)
            .into_iter()
            .map(|(name, t, _)| {
                let (q, x) = state.db_stats(name).histograms();
                (name.to_string(), q, t.query_us, x, t.xact_us)
            })
            .collect();
        Durations { databases }
    }
}

/// A histogram of `counts` per bucket of [`BUCKETS_US`] summing to `sum_us`, in seconds.
fn encode_histogram(
    mut family: MetricEncoder<'_>,
    counts: &Buckets,
    sum_us: u64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = BUCKETS_US
        .iter()
        .zip(counts)
        .map(|(b, n)| {
            let bound = if *b == u64::MAX {
                f64::INFINITY
            } else {
                *b as f64 / 1e6
            };
            (bound, *n)
        })
        .collect();
    let count = counts.iter().sum();
    family.encode_histogram::<NoLabelSet>(sum_us as f64 / 1e6, count, &buckets, None)
}

impl Collector for Durations {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, query) in [
            (
                "query_duration_seconds",
                "Time from a client's request to its ReadyForQuery",
                true,
            ),
            (
                "transaction_duration_seconds",
                "Time from a transaction's first request to its end",
                false,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (db, q, q_us, x, x_us) in &self.databases {
                let labels = [("database", db.as_str())];
                let family = metric.encode_family(&labels)?;
                if query {
                    encode_histogram(family, q, *q_us)?;
                } else {
                    encode_histogram(family, x, *x_us)?;
                }
            }
        }
        Ok(())
    }
}

/// A pool's labels: database, user, shard, server.
type PoolLabels = [(&'static str, String); 4];

/// Each pool's checkout wait histogram, as read at a scrape.
#[derive(Debug)]
struct CheckoutWaits {
    /// (labels, buckets, µs waited).
    pools: Vec<(PoolLabels, Buckets, u64)>,
}

impl CheckoutWaits {
    fn of(state: &ProxyState) -> CheckoutWaits {
        let mut pools = Vec::new();
        each_pool(state, |labels, p| {
            let (buckets, us) = p.wait_histogram();
            pools.push((labels, buckets, us));
        });
        CheckoutWaits { pools }
    }
}

impl Collector for CheckoutWaits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "checkout_wait_seconds",
            "Time a checkout waited for a server connection (0 when one was free)",
            None,
            MetricType::Histogram,
        )?;
        for (labels, buckets, us) in &self.pools {
            encode_histogram(metric.encode_family(labels)?, buckets, *us)?;
        }
        Ok(())
    }
}
