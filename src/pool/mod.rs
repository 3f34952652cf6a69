//! Server connection pools: one bb8 pool per (user, database, server), a FIFO gate in front of
//! each, and the registry that maps a logical database to its shards and servers.
//!
//! bb8 wakes waiters in no particular order; under contention that gives some clients very long
//! waits. A fair (FIFO) tokio semaphore with one permit per pooled connection admits waiters in
//! arrival order, so bb8 always has a connection ready for whoever holds a permit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, ConnectParams, ServerConn};
use crate::config::{Config, DatabaseConfig, UserConfig};

/// ParameterStatus pairs a server reported at login.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// bb8 manager for raw server connections. `is_valid` makes no round trip: a connection in the
/// pool is idle at ReadyForQuery by construction, and a broken one is flagged by the session.
#[derive(Debug)]
pub struct ServerManager {
    params: ConnectParams,
}

impl bb8::ManageConnection for ServerManager {
    type Connection = ServerConn;
    type Error = BackendError;

    async fn connect(&self) -> Result<ServerConn, BackendError> {
        ServerConn::connect(&self.params).await
    }

    async fn is_valid(&self, _conn: &mut ServerConn) -> Result<(), BackendError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut ServerConn) -> bool {
        conn.broken
    }
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
}

/// A checked-out server connection. Dropping it returns the connection to the pool (or closes
/// it when `broken` is set), then frees the FIFO permit.
#[derive(Debug)]
pub struct Checkout {
    conn: bb8::PooledConnection<'static, ServerManager>,
    _permit: Option<OwnedSemaphorePermit>,
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
    checkout_timeout_ms: u64,
    params: Mutex<Option<ServerParams>>,
}

impl ServerPool {
    /// Creates the pool; connections are opened lazily (or up to `min_idle` in the background).
    pub fn new(config: &Config, user: &UserConfig, db: &DatabaseConfig, addr: &str) -> ServerPool {
        let size = user.pool_size.unwrap_or(config.pool.size);
        let p = &config.pool;
        let params = ConnectParams {
            addr: addr.to_string(),
            user: user.server_user().to_string(),
            password: user.server_password().map(str::to_string),
            database: db.server_database().to_string(),
            connect_timeout: Duration::from_millis(p.connect_timeout_ms),
            prepared_capacity: p.prepared_statements_cache,
        };
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
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
            .build_unchecked(ServerManager { params });
        ServerPool {
            pool,
            gate: p
                .fifo_checkout
                .then(|| Arc::new(Semaphore::new(size as usize))),
            addr: addr.to_string(),
            checkout_timeout_ms: p.checkout_timeout_ms,
            params: Mutex::new(None),
        }
    }

    /// Server address of this pool.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Checks out a connection, waiting at most the checkout timeout.
    pub async fn get(&self) -> Result<Checkout, PoolError> {
        let timeout = Duration::from_millis(self.checkout_timeout_ms);
        let permit = match &self.gate {
            // Fast path: a free permit means bb8 has a connection (or room for one) now.
            Some(g) => match g.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => Some(
                    tokio::time::timeout(timeout, g.clone().acquire_owned())
                        .await
                        .map_err(|_| PoolError::Timeout(self.checkout_timeout_ms))?
                        .map_err(|_| PoolError::Timeout(self.checkout_timeout_ms))?,
                ),
            },
            None => None,
        };
        // bb8 applies its own connection timeout (see `new`).
        let conn = self.pool.get_owned().await;
        let conn = conn.map_err(|e| match e {
            bb8::RunError::User(e) => PoolError::Connect(e),
            bb8::RunError::TimedOut => PoolError::Timeout(self.checkout_timeout_ms),
        })?;
        let mut guard = self.params.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() && !conn.params.is_empty() {
            *guard = Some(Arc::new(conn.params.clone()));
        }
        drop(guard);
        Ok(Checkout {
            conn,
            _permit: permit,
        })
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

    /// (connections open, idle) right now.
    pub fn state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }
}

/// The servers of one shard, as pools for one user.
#[derive(Debug)]
pub struct ShardPools {
    /// Shard name.
    pub name: String,
    /// Pool of the primary.
    pub primary: Arc<ServerPool>,
    /// Pools of the replicas.
    pub replicas: Vec<Arc<ServerPool>>,
}

/// All pools, keyed by (user, logical database).
#[derive(Debug, Default)]
pub struct Registry {
    map: HashMap<(String, String), Arc<Vec<ShardPools>>>,
}

impl Registry {
    /// Builds a pool for every (user, database, server) in the config.
    pub fn build(config: &Config) -> Registry {
        let mut map = HashMap::new();
        for user in &config.users {
            for db in &config.databases {
                let shards = db
                    .shards
                    .iter()
                    .map(|s| ShardPools {
                        name: s.name.clone(),
                        primary: Arc::new(ServerPool::new(config, user, db, &s.primary)),
                        replicas: s
                            .replicas
                            .iter()
                            .map(|r| Arc::new(ServerPool::new(config, user, db, r)))
                            .collect(),
                    })
                    .collect();
                map.insert((user.name.clone(), db.name.clone()), Arc::new(shards));
            }
        }
        Registry { map }
    }

    /// The shards of a logical database as seen by a user.
    pub fn get(&self, user: &str, database: &str) -> Option<Arc<Vec<ShardPools>>> {
        self.map
            .get(&(user.to_string(), database.to_string()))
            .cloned()
    }
}
