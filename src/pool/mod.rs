//! Server connection pools: one bb8 pool per (user, database, server), a FIFO gate in front of
//! each, and the registry that maps a logical database to its shards and servers.
//!
//! bb8 wakes waiters in no particular order; under contention that gives some clients very long
//! waits. A fair (FIFO) tokio semaphore with one permit per pooled connection admits waiters in
//! arrival order, so bb8 always has a connection ready for whoever holds a permit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod registry;

pub use registry::Registry;

use crate::backend::{BackendError, ConnInfo, ConnectParams, ServerConn};
use crate::config::{Config, DatabaseConfig, UserConfig};
use crate::health::{now_ms, ServerHealth};

/// ParameterStatus pairs a server reported at login.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// What a server says when a client's startup settings are applied: the values of its reported
/// parameters, and its notices (whole NoticeResponse messages).
#[derive(Debug, Default)]
pub struct StartupParams {
    /// ParameterStatus pairs.
    pub reported: Vec<(String, String)>,
    /// NoticeResponse messages.
    pub notices: Vec<bytes::Bytes>,
    /// The startup settings these were learned for, shared by every client that sends them
    /// (one copy in memory for thousands of clients of one application).
    pub settings: Arc<std::collections::BTreeMap<String, String>>,
}

/// bb8 manager for raw server connections. `is_valid` makes no round trip: a connection in the
/// pool is idle at ReadyForQuery by construction.
///
/// The hygiene rule lives in [`ServerManager::has_broken`], the one place that decides whether a
/// connection handed back goes into the pool: only when it sits at a message boundary right
/// after ReadyForQuery `I` with nothing sent since (`at_rest`), no unread byte, and nobody
/// flagged it `broken` (a failed settings re-apply, untracked session state, a lost client).
/// Everything else is closed, which makes Postgres roll back whatever was open.
#[derive(Debug)]
pub struct ServerManager {
    params: ConnectParams,
    /// The pool's connections, for `SHOW SERVERS` (a closed one's entry is gone).
    conns: Arc<Mutex<Vec<std::sync::Weak<ConnInfo>>>>,
    /// Bumped by `RECONNECT`: connections opened before are closed at their next use.
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl bb8::ManageConnection for ServerManager {
    /// Boxed: the pool and every checkout move a pointer, not the connection's state, and a
    /// client's session holds only that pointer while it has a server connection.
    type Connection = Box<ServerConn>;
    type Error = BackendError;

    async fn connect(&self) -> Result<Box<ServerConn>, BackendError> {
        let mut conn = ServerConn::connect(&self.params).await?;
        conn.epoch = self.epoch.load(Ordering::Relaxed);
        let mut conns = lock(&self.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(&conn.info));
        drop(conns);
        Ok(Box::new(conn))
    }

    async fn is_valid(&self, _conn: &mut Box<ServerConn>) -> Result<(), BackendError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut Box<ServerConn>) -> bool {
        conn.broken
            || !conn.at_rest
            || !conn.inbuf.is_empty()
            || conn.epoch != self.epoch.load(Ordering::Relaxed)
    }
}

/// See [`ServerPool::get_at`].
pub const STALE_CHECK_MS: u64 = 10;

/// What makes a pool the one it is: how its connections are opened, and its pool size and
/// settings (compared at a reload).
fn identity(
    config: &Config,
    user: &UserConfig,
    db: &DatabaseConfig,
    addr: &str,
) -> (ConnectParams, String) {
    let p = &config.pool;
    let params = ConnectParams {
        addr: addr.to_string(),
        user: user.server_user().to_string(),
        password: user.server_password().map(str::to_string),
        database: db.server_database().to_string(),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        prepared_capacity: p.prepared_statements_cache,
        allow_cleartext: p.allow_cleartext_server_password,
    };
    let size = user.pool_size.unwrap_or(p.size);
    let settings = format!("{size} {}", serde_json::to_string(p).unwrap_or_default());
    (params, settings)
}

/// Why no server connection could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole checkout timeout.
    #[error("timed out after {0} ms waiting for a server connection")]
    Timeout(u64),
    /// A new connection could not be opened.
    #[error("{0}")]
    Connect(BackendError),
    /// An idle connection had been closed or written to by the server (see
    /// [`ServerPool::get_at`]).
    #[error("the server closed an idle connection")]
    Stale,
}

/// A checked-out server connection. Dropping it returns the connection to the pool if it is
/// clean (see [`ServerManager::has_broken`]) and closes it otherwise, then frees the FIFO
/// permit. A drop during a panic always closes: whatever the session was doing is unknown.
#[derive(Debug)]
pub struct Checkout {
    conn: bb8::PooledConnection<'static, ServerManager>,
    _permit: Option<OwnedSemaphorePermit>,
    in_use: Arc<AtomicUsize>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.conn.info.active.store(false, Ordering::Relaxed);
        self.conn.broken = !returnable(self.conn.broken);
        self.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The panic guard of a connection being dropped: it may go back to its pool only if it is
/// not broken and the thread is not unwinding from a panic (the session's state, and so the
/// connection's, is unknown then).
pub fn returnable(broken: bool) -> bool {
    !broken && !std::thread::panicking()
}

impl std::ops::Deref for Checkout {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn
    }
}

/// The pool of one (user, database, server).
#[derive(Debug)]
pub struct ServerPool {
    pool: bb8::Pool<ServerManager>,
    gate: Option<Arc<Semaphore>>,
    addr: String,
    /// How the pool's connections are opened (for [`ServerPool::connect_unpooled`]).
    connect: ConnectParams,
    checkout_timeout_ms: u64,
    params: Mutex<Option<ServerParams>>,
    /// ParameterStatus sets for clients' startup settings (kept by the session handshake).
    pub startup_params:
        Mutex<HashMap<std::collections::BTreeMap<String, String>, Arc<StartupParams>>>,
    /// Connections checked out now (for least_connections balancing).
    in_use: Arc<AtomicUsize>,
    /// What the health checker knows about the server (shared by all pools of it).
    pub health: Arc<ServerHealth>,
    /// See [`ServerManager::epoch`].
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// The pool settings it was made with (a reload keeps the pool only if they stay).
    settings: String,
    /// Checkouts waiting for a connection now.
    waiters: Waiters,
    size: usize,
    /// The pool's open connections (shared with its manager).
    conns: Arc<Mutex<Vec<std::sync::Weak<ConnInfo>>>>,
}

/// The checkouts of a pool that wait for a connection, with when each began (the admin
/// console's `cl_waiting` and `maxwait`). Only a checkout that cannot have a connection at
/// once is entered, so the lock is not on the path of one that can.
#[derive(Debug, Default)]
struct Waiters {
    next: AtomicU64,
    started: Mutex<HashMap<u64, Instant>>,
    /// Microseconds waited by every checkout that is over.
    waited_us: AtomicU64,
    /// Those checkouts by how long they waited (buckets of [`BUCKETS_US`]).
    ///
    /// [`BUCKETS_US`]: crate::admin::stats::BUCKETS_US
    waits: [AtomicU64; crate::admin::stats::BUCKETS_US.len()],
    /// Every checkout begun (those that did not wait are the difference).
    checkouts: AtomicU64,
}

/// One waiting checkout; leaves [`Waiters`] when dropped (served, timed out or abandoned).
struct Waiting<'a>(&'a Waiters, u64);

impl Waiters {
    fn enter(&self) -> Waiting<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.started).insert(id, Instant::now());
        Waiting(self, id)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.0.started).remove(&self.1) {
            let us = t.elapsed().as_micros() as u64;
            self.0.waited_us.fetch_add(us, Ordering::Relaxed);
            self.0.waits[crate::admin::stats::bucket(us)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerPool {
    /// Creates the pool; connections are opened lazily (or up to `min_idle` in the background).
    pub fn new(
        config: &Config,
        user: &UserConfig,
        db: &DatabaseConfig,
        health: Arc<ServerHealth>,
    ) -> ServerPool {
        let addr = health.addr.as_str();
        let size = user.pool_size.unwrap_or(config.pool.size);
        let p = &config.pool;
        let (params, settings) = identity(config, user, db, addr);
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let conns = Arc::<Mutex<Vec<std::sync::Weak<ConnInfo>>>>::default();
        let epoch = Arc::<std::sync::atomic::AtomicU64>::default();
        let pool = bb8::Pool::builder()
            .max_size(size)
            .min_idle(Some(p.min_idle).filter(|&n| n > 0))
            // With the FIFO gate a permit holder always finds an idle connection or room to open
            // one, so bb8 only ever waits for a connect; the gate enforces the checkout timeout.
            .connection_timeout(Duration::from_millis(if p.fifo_checkout {
                p.connect_timeout_ms.saturating_add(1_000)
            } else {
                p.checkout_timeout_ms
            }))
            .idle_timeout(ms(p.idle_timeout_ms))
            .max_lifetime(ms(p.max_lifetime_ms))
            .test_on_check_out(false)
            .retry_connection(false)
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .build_unchecked(ServerManager {
                params: params.clone(),
                conns: conns.clone(),
                epoch: epoch.clone(),
            });
        ServerPool {
            pool,
            connect: params,
            gate: p
                .fifo_checkout
                .then(|| Arc::new(Semaphore::new(size as usize))),
            addr: addr.to_string(),
            checkout_timeout_ms: p.checkout_timeout_ms,
            params: Mutex::new(None),
            startup_params: Mutex::default(),
            in_use: Arc::default(),
            health,
            waiters: Waiters::default(),
            size: size as usize,
            conns,
            epoch,
            settings,
        }
    }

    /// Whether a reloaded config's pool of `user` on `db` for this server would be this very
    /// pool: same server, user, database and settings (then it is kept, connections and all).
    pub fn same_as(&self, config: &Config, user: &UserConfig, db: &DatabaseConfig) -> bool {
        let (connect, settings) = identity(config, user, db, &self.addr);
        self.connect == connect && self.settings == settings
    }

    /// The console's `RECONNECT`: every connection open now is closed before its next use
    /// (a connection in use finishes its transaction first).
    pub fn reconnect(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of this pool's user and database outside the pool (not counted against
    /// its size; closed when dropped): for the proxy's own short housekeeping while a client
    /// may hold every pooled connection (creating the two-phase commit log).
    pub async fn connect_unpooled(&self) -> Result<ServerConn, BackendError> {
        ServerConn::connect(&self.connect).await
    }

    /// Server address of this pool.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Checks out a connection, waiting at most the checkout timeout.
    pub async fn get(&self) -> Result<Checkout, PoolError> {
        self.get_at(u64::MAX, false).await
    }

    /// [`ServerPool::get`] for a request that arrived at `request_ms` (`health::now_ms`): a
    /// connection idle since more than [`STALE_CHECK_MS`] before it is looked at for what
    /// the server may have sent meanwhile (see [`ServerConn::stale`]); one in steady use is
    /// not (as PgBouncer's `server_check_delay`, but with no round trip). `stale_fails`: the
    /// caller has other servers (a read): a stale connection marks the server down until its
    /// next health check and fails the checkout ([`PoolError::Stale`]) rather than wait for a
    /// new connection to a server that may be gone (bb8 reports a failed connect only when its
    /// connection timeout ends).
    pub async fn get_at(&self, request_ms: u64, stale_fails: bool) -> Result<Checkout, PoolError> {
        self.waiters.checkouts.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(self.checkout_timeout_ms);
        let mut waiting = None;
        let permit = match &self.gate {
            // Fast path: a free permit means bb8 has a connection (or room for one) now.
            Some(g) => match g.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let _waiting = self.waiters.enter();
                    Some(
                        tokio::time::timeout(timeout, g.clone().acquire_owned())
                            .await
                            .map_err(|_| PoolError::Timeout(self.checkout_timeout_ms))?
                            .map_err(|_| PoolError::Timeout(self.checkout_timeout_ms))?,
                    )
                }
            },
            None => {
                if self.in_use() >= self.size {
                    waiting = Some(self.waiters.enter());
                }
                None
            }
        };
        let conn = self.fresh(request_ms, stale_fails).await;
        drop(waiting);
        let conn = conn?;
        let mut guard = self.params.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() && !conn.params.is_empty() {
            *guard = Some(Arc::new(conn.params.clone()));
        }
        drop(guard);
        conn.info.active.store(true, Ordering::Relaxed);
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(Checkout {
            conn,
            _permit: permit,
            in_use: self.in_use.clone(),
        })
    }

    /// A connection from bb8 (which applies its own connection timeout, see `new`) that did
    /// not go stale while idle (see [`ServerConn::stale`]) and is of the current epoch: stale
    /// ones are closed and the next one taken (at most as many as the pool holds, then a new
    /// one is opened).
    async fn fresh(
        &self,
        request_ms: u64,
        stale_fails: bool,
    ) -> Result<bb8::PooledConnection<'static, ServerManager>, PoolError> {
        for _ in 0..=self.size {
            let mut conn = self.pool.get_owned().await.map_err(|e| match e {
                bb8::RunError::User(e) => PoolError::Connect(e),
                bb8::RunError::TimedOut => PoolError::Timeout(self.checkout_timeout_ms),
            })?;
            let last = conn.info.request_ms.load(Ordering::Relaxed);
            let idle = request_ms.saturating_sub(last) >= STALE_CHECK_MS;
            if conn.epoch == self.epoch.load(Ordering::Relaxed) && !(idle && conn.stale()) {
                return Ok(conn);
            }
            tracing::debug!(server = %self.addr, pid = conn.pid, "an idle server connection went stale; closed");
            conn.broken = true;
            if stale_fails && conn.epoch == self.epoch.load(Ordering::Relaxed) {
                self.health.mark_down();
                return Err(PoolError::Stale);
            }
        }
        Err(PoolError::Timeout(self.checkout_timeout_ms))
    }

    /// The ParameterStatus set of this server, fetched once with a checkout.
    pub async fn server_params(&self) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.cached_params() {
            return Ok(p);
        }
        let c = self.get().await?;
        drop(c);
        Ok(self.cached_params().unwrap_or_default())
    }

    fn cached_params(&self) -> Option<ServerParams> {
        self.params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connections checked out right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Checkouts waiting for a connection now, and how long the oldest of them has waited.
    pub fn waiting(&self) -> (usize, Duration) {
        let started = lock(&self.waiters.started);
        let oldest = started.values().min().map(Instant::elapsed);
        (started.len(), oldest.unwrap_or_default())
    }

    /// The pool's open connections (pooled or checked out).
    pub fn connections(&self) -> Vec<Arc<ConnInfo>> {
        lock(&self.conns)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// Microseconds checkouts of this pool have waited for a connection, all told.
    pub fn waited_us(&self) -> u64 {
        self.waiters.waited_us.load(Ordering::Relaxed)
    }

    /// Checkouts by how long they waited for a connection (one that did not wait is in the
    /// first bucket; one still waiting is not counted yet), and the microseconds waited.
    pub fn wait_histogram(&self) -> (crate::admin::stats::Buckets, u64) {
        let w = &self.waiters;
        let mut b: crate::admin::stats::Buckets =
            std::array::from_fn(|i| w.waits[i].load(Ordering::Relaxed));
        let waited: u64 = b.iter().sum();
        let (now_waiting, _) = self.waiting();
        let begun = w.checkouts.load(Ordering::Relaxed);
        b[0] += begun.saturating_sub(waited + now_waiting as u64);
        (b, self.waited_us())
    }

    /// (connections open, idle) right now.
    pub fn state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}

/// How reads are spread over a shard's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The one with the fewest connections checked out.
    LeastConnections,
}

impl Balance {
    /// From the config string (validated there).
    pub fn parse(s: &str) -> Balance {
        match s {
            "random" => Balance::Random,
            "least_connections" => Balance::LeastConnections,
            _ => Balance::RoundRobin,
        }
    }
}

/// What a read may use.
#[derive(Debug, Clone, Copy)]
pub struct ReadPolicy<'a> {
    /// Balancing strategy.
    pub balance: Balance,
    /// The primary is one more candidate.
    pub include_primary: bool,
    /// Replicas lagging more get no reads.
    pub max_lag_ms: u64,
    /// WAL position the server must have replayed (read-your-writes); 0: none.
    pub min_lsn: u64,
    /// Servers that just failed this request.
    pub avoid: &'a [String],
}

/// The servers of one shard, as pools for one user.
#[derive(Debug)]
pub struct ShardPools {
    /// Shard name.
    pub name: String,
    /// Pools of every server: declared primary first, then replicas, then `servers`.
    pub servers: Vec<Arc<ServerPool>>,
    /// Round-robin position.
    next: AtomicUsize,
}

impl ShardPools {
    /// The server that takes writes now, if one is known.
    pub fn primary(&self) -> Option<&Arc<ServerPool>> {
        self.servers.iter().find(|s| s.health.is_primary())
    }

    /// Whether reads can ever go elsewhere than the primary (the shard has more than one
    /// server).
    pub fn has_replicas(&self) -> bool {
        self.servers.len() > 1
    }

    /// A server for a read under `policy`, or None when only the primary qualifies (or no
    /// server at all).
    pub fn reader(&self, policy: &ReadPolicy<'_>) -> Option<&Arc<ServerPool>> {
        let now = now_ms();
        let ok = |s: &&Arc<ServerPool>| {
            let h = &s.health;
            (h.is_replica() || (policy.include_primary && h.is_primary()))
                && h.can_read(now, policy.max_lag_ms, policy.min_lsn)
                && !policy.avoid.iter().any(|a| *a == h.addr)
        };
        let count = self.servers.iter().filter(ok).count();
        if count == 0 {
            return None;
        }
        match policy.balance {
            Balance::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed) % count;
                self.servers.iter().filter(ok).nth(n)
            }
            Balance::Random => {
                let n = rand::random_range(0..count);
                self.servers.iter().filter(ok).nth(n)
            }
            Balance::LeastConnections => {
                // Ties (common: idle servers) are broken round-robin.
                let least = self.servers.iter().filter(ok).map(|s| s.in_use()).min()?;
                let tied = |s: &&Arc<ServerPool>| ok(s) && s.in_use() == least;
                let count = self.servers.iter().filter(tied).count().max(1);
                let n = self.next.fetch_add(1, Ordering::Relaxed) % count;
                self.servers.iter().filter(tied).nth(n)
            }
        }
    }
}

#[cfg(test)]
mod panic_guard_tests {
    use super::returnable;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;

    /// Records what [`returnable`] says when it is dropped: 1 returnable, 2 not.
    struct Held(Arc<AtomicU8>, bool);

    impl Drop for Held {
        fn drop(&mut self) {
            let v = if returnable(self.1) { 1 } else { 2 };
            self.0.store(v, Ordering::SeqCst);
        }
    }

    fn dropped(broken: bool, panics: bool) -> u8 {
        let seen = Arc::new(AtomicU8::new(0));
        let held = Held(seen.clone(), broken);
        let joined = std::thread::spawn(move || {
            let _held = held;
            if panics {
                panic!("a session panics while holding a connection");
            }
        })
        .join();
        assert_eq!(joined.is_err(), panics);
        seen.load(Ordering::SeqCst)
    }

    #[test]
    fn a_clean_connection_goes_back() {
        assert_eq!(dropped(false, false), 1);
    }

    #[test]
    fn a_connection_dropped_by_a_panicking_session_is_closed() {
        assert_eq!(dropped(false, true), 2);
    }

    #[test]
    fn a_broken_connection_is_closed() {
        assert_eq!(dropped(true, false), 2);
        assert_eq!(dropped(true, true), 2);
    }
}
