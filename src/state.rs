//! Proxy-wide shared state: configuration, users with their derived secrets, pools, and the
//! cancel-key registry. Built once at start-up and shared by every session through an `Arc`.

use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

use crate::auth::{ScramVerifier, Secret};
use crate::config::{Config, UserConfig};
use crate::pool::Registry;

mod build;
pub mod reload;

/// A configured user with secrets derived once at start-up.
#[derive(Debug)]
pub struct User {
    /// The user's config entry.
    pub config: UserConfig,
    /// Parsed password (plaintext, SCRAM verifier or md5 hash).
    pub secret: Secret,
    /// SCRAM verifier (derived from a plaintext password with a random salt), if possible.
    pub scram: Option<ScramVerifier>,
}

/// Where a client's running query is, for CancelRequest.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Server address.
    pub addr: Arc<str>,
    /// Server backend pid.
    pub pid: i32,
    /// Server backend secret.
    pub secret: Arc<[u8]>,
}

/// The server connections a client's running query is on: its current one, or every shard
/// of a fan-out; empty while it holds none. A std mutex:
/// it is taken twice per transaction and never held across an await. (A CancelRequest that
/// arrives just as the transaction ends can, as with any pooler, reach the server after the
/// connection moved on; the window is the cancel packet's flight time.)
pub type CancelSlot = Mutex<Vec<CancelTarget>>;

/// A client's shared state, one allocation: who it is (for the admin console) and its cancel
/// state, its [`CancelSlot`] and its [`CancelSignal`].
#[derive(Debug, Default)]
pub struct Cancel {
    /// The user it logged in as.
    pub user: Arc<str>,
    /// The database it logged in to.
    pub database: Arc<str>,
    /// Its address.
    pub peer: Option<std::net::SocketAddr>,
    /// When it logged in (`health::now_ms`).
    pub since_ms: u64,
    /// Transactions it has completed.
    pub xacts: std::sync::atomic::AtomicU64,
    /// When its last request arrived (`health::now_ms`; 0: none yet).
    pub request_ms: std::sync::atomic::AtomicU64,
    /// Since when it waits for a server connection (`health::now_ms`; 0: it does not).
    pub waiting_since_ms: std::sync::atomic::AtomicU64,
    /// Set by the console's `KILL` / `KILL_CLIENT`: the session ends at once.
    pub killed: std::sync::atomic::AtomicBool,
    /// Where CancelRequests for the client go.
    pub slot: CancelSlot,
    /// Raised by every CancelRequest for the client.
    pub signal: CancelSignal,
}

/// How a client's session learns that a CancelRequest for it arrived (a statement streamed
/// from several shards stops relaying rows at once, so shards blocked writing to a slow
/// client can take the cancel).
#[derive(Debug, Default)]
pub struct CancelSignal {
    requests: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
}

impl CancelSignal {
    /// Counts a CancelRequest and wakes the session if it waits for one.
    pub fn raise(&self) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// How many CancelRequests have arrived so far.
    pub fn count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the next [`CancelSignal::raise`] (create, `enable`, then check
    /// [`CancelSignal::count`] to miss none).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// A client's cancel key: what it was told, and its cancel state.
#[derive(Debug, Clone)]
pub struct CancelKey {
    /// Proxy-issued BackendKeyData pid.
    pub pid: i32,
    /// Proxy-issued BackendKeyData secret.
    pub secret: i32,
    /// The client's slot and signal.
    pub cancel: Arc<Cancel>,
}

/// Proxy-issued cancel keys by pid: each one's secret and cancel state.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Arc<Cancel>)>>,
}

impl CancelRegistry {
    /// Issues a fresh (pid, secret) for a client of `user` on `database` and registers its
    /// shared state.
    pub fn register(
        &self,
        user: Arc<str>,
        database: Arc<str>,
        peer: Option<std::net::SocketAddr>,
    ) -> CancelKey {
        let cancel = Arc::new(Cancel {
            user,
            database,
            peer,
            since_ms: crate::health::now_ms(),
            ..Cancel::default()
        });
        let mut rng = rand::rng();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(pid) {
                let secret = rng.random::<i32>();
                e.insert((secret, cancel.clone()));
                return CancelKey {
                    pid,
                    secret,
                    cancel,
                };
            }
        }
    }

    /// Forgets a client's key.
    pub fn unregister(&self, pid: i32) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// Every server connection a client's query runs on right now (for the end of a
    /// shutdown's grace period).
    pub fn running(&self) -> Vec<CancelTarget> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .flat_map(|(_, c)| c.slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Every logged-in client's shared state, with its cancel pid.
    pub fn clients(&self) -> Vec<(i32, Arc<Cancel>)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(pid, (_, c))| (*pid, c.clone())).collect();
        v.sort_by_key(|(_, c)| c.since_ms);
        v
    }

    /// How many clients are logged in to each (user, database).
    pub fn logged_in(&self) -> HashMap<(Arc<str>, Arc<str>), usize> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = HashMap::new();
        for (_, c) in map.values() {
            *counts
                .entry((c.user.clone(), c.database.clone()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// The cancel state for a (pid, secret) pair; the secret is compared in constant time.
    pub fn find(&self, pid: i32, secret: &[u8]) -> Option<Arc<Cancel>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (key, cancel) = map.get(&pid)?;
        let ok: bool = key.to_be_bytes().ct_eq(secret).into();
        ok.then(|| cancel.clone())
    }
}

/// Everything sessions share.
#[derive(Debug)]
pub struct ProxyState {
    /// The configuration in force.
    pub config: Config,
    /// Users by name.
    pub users: HashMap<String, User>,
    /// Server pools.
    pub registry: Registry,
    /// Cancel keys handed to clients.
    pub cancels: Arc<CancelRegistry>,
    /// Statements prepared through the proxy (transaction and statement pooling).
    pub statements: Arc<StatementCache>,
    /// Statement analyses by shape (routing).
    pub analysis: crate::sql::AnalysisCache,
    /// Fan-out plans by statement text.
    pub fan_out_plans: crate::sql::FanOutCache,
    /// Shard maps of the databases with more than one shard.
    pub shard_maps: HashMap<String, Arc<crate::shard::route::ShardMap>>,
    /// Clients hibernating: quiet, holding no server connection and no buffers.
    pub hibernating: Arc<std::sync::atomic::AtomicUsize>,
    /// Per-shape statistics (`SHOW QUERIES`).
    pub queries: Arc<crate::admin::queries::QueryStats>,
    /// The last slow queries (`SHOW SLOW_QUERIES`).
    pub slow: Arc<crate::admin::slow::SlowLog>,
    /// Rare events counted for `/metrics`.
    pub events: Arc<crate::admin::events::Events>,
    /// Admin console sessions logged in.
    pub consoles: Arc<std::sync::atomic::AtomicUsize>,
    /// Clients connected, logged in or not (see [`Admitted`]).
    pub clients: Arc<std::sync::atomic::AtomicUsize>,
    /// Rung once when the proxy starts shutting down.
    pub shutdown: Arc<ShutdownBell>,
    /// The console's switches: paused and disabled databases, a requested shutdown, reloads.
    pub controls: Arc<crate::admin::control::Controls>,
    /// The configured user and database names, one copy each for every client.
    pub(crate) names: std::collections::HashSet<Arc<str>>,
    /// Each database's counters for `SHOW STATS`.
    pub stats: HashMap<String, Arc<crate::admin::stats::DbStats>>,
    /// The admin console's SCRAM verifier (`proxy.admin_password`); `None`: no admin login.
    pub admin_scram: Option<crate::auth::ScramVerifier>,
    /// Which reload made it (0: the start-up config).
    pub generation: u64,
}

/// The proxy's shutdown as hibernating sessions wait for it: a flag and one small waiter
/// each (a watch channel's `changed()` future is twice the size, in every idle client).
#[derive(Debug, Default)]
pub struct ShutdownBell {
    rung: std::sync::atomic::AtomicBool,
    bell: tokio::sync::Notify,
}

impl ShutdownBell {
    /// Tells every session, those that wait now and those that look later.
    pub fn ring(&self) {
        self.rung.store(true, std::sync::atomic::Ordering::SeqCst);
        self.bell.notify_waiters();
    }

    /// Wakes every session waiting on the bell without ringing it (they look at what else
    /// changed: a `KILL`).
    pub fn nudge(&self) {
        self.bell.notify_waiters();
    }

    /// Whether [`ShutdownBell::ring`] was called.
    pub fn rung(&self) -> bool {
        self.rung.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes at the next ring: `enable` it, then check [`ShutdownBell::rung`] to miss none.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.bell.notified()
    }
}

/// A client the accept loop let in under `max_client_connections`: the proxy's state for the
/// client's task, and the client's place in [`ProxyState::clients`], given back on drop.
#[derive(Debug)]
pub struct Admitted(Arc<ProxyState>);

impl Admitted {
    /// Counts one more client, unless `max` are connected already.
    pub fn try_new(state: &Arc<ProxyState>, max: usize) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        if state.clients.fetch_add(1, Ordering::AcqRel) >= max {
            state.clients.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(state.clone()))
    }
}

impl Admitted {
    /// The client moves to `state` (a reload's): it stays counted once.
    pub fn renew(&mut self, state: Arc<ProxyState>) {
        self.0 = state;
    }
}

impl std::ops::Deref for Admitted {
    type Target = ProxyState;
    fn deref(&self) -> &ProxyState {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl ProxyState {
    /// Calls `f` with every pool: its database, user and shard names, in config order.
    pub fn each_pool(&self, mut f: impl FnMut(&str, &str, &str, &Arc<crate::pool::ServerPool>)) {
        for db in &self.config.databases {
            for user in &self.config.users {
                let Some(shards) = self.registry.get(&user.name, &db.name) else {
                    continue;
                };
                for s in shards.iter() {
                    for p in &s.servers {
                        f(&db.name, &user.name, &s.name, p);
                    }
                }
            }
        }
    }

    /// Whether a reload has put another state in force (one relaxed load).
    pub fn superseded(&self) -> bool {
        self.controls.generation() != self.generation
    }

    /// Whether sessions note the statements they send (for per-shape statistics or the
    /// slow-query log).
    pub fn notes_queries(&self) -> bool {
        self.queries.enabled() || self.config.proxy.slow_query_ms > 0
    }

    /// The counters of `database` (one of the config's; another gets counters of its own
    /// that nobody reads).
    pub fn db_stats(&self, database: &str) -> Arc<crate::admin::stats::DbStats> {
        self.stats.get(database).cloned().unwrap_or_default()
    }

    /// A user or database name: the configured one's shared copy, or a new one.
    pub fn name(&self, name: &str) -> Arc<str> {
        self.names.get(name).cloned().unwrap_or_else(|| name.into())
    }
}

/// A statement prepared on server connections under a proxy-chosen name, shared by every client
/// that prepares the same text with the same parameter types.
#[derive(Debug)]
pub struct Prepared {
    /// Cache id; the server-side name is `sg_<id>`.
    pub id: u64,
    /// Server-side statement name.
    pub name: String,
    /// The Parse message that prepares it under `name`.
    pub parse: bytes::Bytes,
    /// A server accepted it once: a client's Parse of the same text can be answered without a
    /// server connection.
    pub validated: std::sync::atomic::AtomicBool,
    /// What executing it does to session state (SET, DISCARD, ...), found once at insert.
    pub command: crate::sql::scan::SessionCommand,
    /// Settings it changes through `set_config('name', ...)`.
    pub set_config: Vec<String>,
    /// What it may do to settings beyond that, found once at insert.
    pub effect: crate::session::client_state::SettingsEffect,
    /// The schema generation it was prepared in ([`StatementCache::bump_generation`]).
    pub generation: u64,
    /// Routing facts, found on first use (only when routing needs them).
    pub route: std::sync::OnceLock<crate::sql::hints::RouteFacts>,
    /// Its shape's statistics (`SHOW QUERIES`), found on first execution.
    pub shape: std::sync::OnceLock<Option<Arc<crate::admin::queries::ShapeStats>>>,
}

impl Prepared {
    /// The statement's SQL text.
    pub fn query(&self) -> &str {
        crate::protocol::query_text(&self.parse[5 + self.name.len() + 1..])
    }
}

/// Most statements the global cache keeps (least recently used go first).
pub const STATEMENT_CACHE_ENTRIES: usize = 10_000;
/// Most bytes of statement text the global cache keeps.
pub const STATEMENT_CACHE_BYTES: usize = 32 << 20;

/// Global statement cache: Parse body (query text and parameter types) -> [`Prepared`],
/// bounded by [`STATEMENT_CACHE_ENTRIES`] and [`STATEMENT_CACHE_BYTES`]. An evicted statement
/// lives on for the clients that hold it (an `Arc`); the next client that prepares the same
/// text gets a fresh id (ids are never reused), so server connections prepare it anew.
#[derive(Debug)]
pub struct StatementCache {
    inner: Mutex<CacheInner>,
    /// Bumped by every schema change seen through the proxy: a statement prepared in an older
    /// generation is not shared with clients that prepare its text afterwards (its parameter
    /// types may name a type that was dropped and re-created).
    generation: std::sync::atomic::AtomicU64,
    /// Lookups that found a shared statement, and those that made one.
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct CacheInner {
    map: lru::LruCache<bytes::Bytes, Arc<Prepared>>,
    bytes: usize,
    next_id: u64,
}

impl Default for StatementCache {
    fn default() -> Self {
        StatementCache {
            inner: Mutex::new(CacheInner {
                map: lru::LruCache::unbounded(),
                bytes: 0,
                next_id: 1,
            }),
            generation: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }
}

impl StatementCache {
    /// The shared statement for a Parse body tail (see [`crate::protocol::Parse::rest`]).
    pub fn get_or_insert(&self, rest: &[u8]) -> Arc<Prepared> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = c.map.get(rest).filter(|p| p.generation == generation) {
            crate::admin::events::Events::count(&self.hits);
            return p.clone();
        }
        crate::admin::events::Events::count(&self.misses);
        let id = c.next_id;
        c.next_id += 1;
        let name = format!("sg_{id}");
        let p = Arc::new(Prepared {
            id,
            parse: crate::protocol::encode_parse(&name, rest),
            name,
            validated: Default::default(),
            command: crate::sql::scan::session_command(crate::protocol::query_text(rest)),
            set_config: crate::sql::scan::set_config_names(crate::protocol::query_text(rest)),
            effect: crate::session::client_state::settings_effect(crate::protocol::query_text(
                rest,
            )),
            generation,
            route: Default::default(),
            shape: Default::default(),
        });
        c.bytes += 2 * rest.len();
        if c.map
            .put(bytes::Bytes::copy_from_slice(rest), p.clone())
            .is_some()
        {
            // An older generation's entry of the same text was replaced.
            c.bytes -= 2 * rest.len();
        }
        while c.map.len() > STATEMENT_CACHE_ENTRIES || c.bytes > STATEMENT_CACHE_BYTES {
            match c.map.pop_lru() {
                Some((k, _)) => c.bytes -= 2 * k.len(),
                None => break,
            }
        }
        p
    }

    /// The shared statement for a Parse body tail, if a server has accepted it before.
    pub fn get_validated(&self, rest: &[u8]) -> Option<Arc<Prepared>> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        c.map
            .get(rest)
            .filter(|p| p.generation == generation)
            .filter(|p| p.validated.load(std::sync::atomic::Ordering::Relaxed))
            .cloned()
            .inspect(|_| crate::admin::events::Events::count(&self.hits))
    }

    /// (hits, misses) of the lookups so far: a Parse that found a shared statement, or made
    /// one.
    pub fn lookups(&self) -> (u64, u64) {
        use crate::admin::events::Events;
        (Events::get(&self.hits), Events::get(&self.misses))
    }

    /// After a schema change: statements prepared from now on are new ones.
    pub fn bump_generation(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cached statements, most recently used first.
    pub fn entries(&self) -> Vec<Arc<Prepared>> {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.map.iter().map(|(_, p)| p.clone()).collect()
    }

    /// Number of distinct statements seen.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// True when no statement was prepared yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(sql: &str) -> Vec<u8> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn statement_cache_is_bounded_by_bytes_and_never_reuses_ids() {
        let c = StatementCache::default();
        let big = "x".repeat(1 << 20);
        let mut ids = std::collections::HashSet::new();
        for i in 0..100 {
            let p = c.get_or_insert(&rest(&format!("select '{big}', {i}")));
            assert!(ids.insert(p.id), "id {} reused", p.id);
        }
        let held = c.inner.lock().unwrap().bytes;
        assert!(held <= STATEMENT_CACHE_BYTES, "{held}");
        assert!(c.len() < 100);
        // The most recent statement is still shared.
        let a = c.get_or_insert(&rest(&format!("select '{big}', 99")));
        assert!(ids.contains(&a.id));
    }

    #[test]
    fn statement_cache_is_bounded_by_count() {
        let c = StatementCache::default();
        for i in 0..STATEMENT_CACHE_ENTRIES + 50 {
            c.get_or_insert(&rest(&format!("select {i}")));
        }
        assert_eq!(c.len(), STATEMENT_CACHE_ENTRIES);
    }
}
