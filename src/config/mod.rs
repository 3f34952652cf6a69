//! Configuration: serde types for `shard-config/*.toml`, defaults, loading and validation.
//!
//! Every key is documented here and in the README's configuration reference. `validate` returns
//! every problem with the key path it concerns, so `shardgate check` can print them all at once.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

mod databases;
mod validate;

pub use databases::{DatabaseConfig, KeyType, Role, ServerConfig, ShardConfig, ShardedTable};

pub use validate::Problem;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, limits and pool mode.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Server connection pool sizes and timeouts.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Read/write split and health checking (used from the replica issue on).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Users allowed to log in through the proxy.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Logical databases clients can connect to.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
}

/// How server connections are shared between clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// The server connection returns to the pool when a transaction ends.
    #[default]
    Transaction,
    /// The server connection returns after every statement; transactions are refused.
    Statement,
}

/// `[proxy]`: the listening side.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address to listen on for Postgres clients.
    pub listen: String,
    /// Address of the Prometheus `/metrics` endpoint; empty disables it.
    pub metrics_listen: String,
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// Maximum concurrent client connections; further clients get SQLSTATE 53300.
    pub max_client_connections: usize,
    /// session | transaction | statement.
    pub pool_mode: PoolMode,
    /// Admin console user (database "shardgate").
    pub admin_user: String,
    /// Admin console password (plaintext or a SCRAM verifier; hidden from `Debug` and from
    /// `SHOW CONFIG`). Empty: the console takes no admin login.
    pub admin_password: Redacted,
    /// A log line per client login and logout (address, user, database; at logout its
    /// duration and transactions), as PgBouncer's `log_connections`/`log_disconnections`.
    pub log_connections: bool,
    /// `text` (human-readable lines) or `json` (one JSON object per line, for Loki or ELK).
    pub log_format: LogFormat,
    /// Query shapes `SHOW QUERIES` keeps statistics for (0: none; each costs a shape scan per
    /// statement).
    pub query_stats_size: usize,
    /// Requests slower than this many milliseconds are logged and kept for
    /// `SHOW SLOW_QUERIES` (0: off).
    pub slow_query_ms: u64,
    /// At most one `EXPLAIN` per shape in this many milliseconds.
    pub slow_query_explain_interval_ms: u64,
    /// Length of the period `SHOW STATS_AVERAGES` averages over (PgBouncer's `stats_period`).
    pub stats_period_ms: u64,
    /// Users of `[[users]]` who may log in to the admin console (with their own password)
    /// and run its SHOW commands only.
    pub stats_users: Vec<String>,
    /// Largest protocol message accepted from a client, in bytes; larger ones get an error and
    /// the connection is closed.
    pub max_message_size: usize,
    /// Query run on a server connection when a session-mode client leaves; empty disables it.
    pub server_reset_query: String,
    /// On SIGTERM/SIGINT (or the console's `SHUTDOWN`), how long open transactions may run
    /// before connections are closed.
    pub shutdown_timeout_ms: u64,
    /// On shutdown, keep accepting (and serving) new clients this long after leaving
    /// `/readyz`, so that a load balancer that checks it sends nobody to a closed port.
    pub shutdown_drain_ms: u64,
    /// Listen with `SO_REUSEPORT`, so that a new instance can start on the same port before
    /// this one stops (rolling restarts).
    pub reuse_port: bool,
    /// How long the console's `PAUSE` waits for open transactions to finish, and how long a
    /// client waits for a paused database's `RESUME` before it gets 57P03 (0: no bound).
    pub pause_timeout_ms: u64,
    /// Seconds a client may take to send its startup packet and authenticate.
    pub client_login_timeout_ms: u64,
    /// A client idle inside a transaction for this long is disconnected (FATAL 25P03) and its
    /// transaction rolled back; 0 disables (PgBouncer's `idle_transaction_timeout`).
    pub idle_transaction_timeout_ms: u64,
    /// A client idle outside a transaction for this long is disconnected (FATAL 57P05);
    /// 0 disables (PgBouncer's `client_idle_timeout`).
    pub client_idle_timeout_ms: u64,
    /// Most bytes of shard answers one statement run on several shards may hold for its merge
    /// (all shards together); above it the statement is cancelled on the shards and fails with
    /// 54000. Keeps a client's fan-out memory bounded.
    pub max_fanout_bytes: usize,
    /// Testing only: named failure points (`after_prepare`: a session dies between PREPARE
    /// TRANSACTION and COMMIT PREPARED, as if the proxy crashed there;
    /// `pause_after_prepare=PATH`: it creates the file PATH there and waits while it exists;
    /// `panic`: a Query containing `shardgate_failpoint_panic` panics its session).
    pub failpoints: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            metrics_listen: String::new(),
            workers: 0,
            max_client_connections: 10_000,
            pool_mode: PoolMode::Transaction,
            admin_user: "admin".into(),
            admin_password: Redacted::default(),
            stats_users: Vec::new(),
            stats_period_ms: 60_000,
            query_stats_size: 1000,
            slow_query_ms: 0,
            slow_query_explain_interval_ms: 60_000,
            log_connections: true,
            log_format: LogFormat::Text,
            max_message_size: 64 * 1024 * 1024,
            server_reset_query: "DISCARD ALL".into(),
            shutdown_timeout_ms: 10_000,
            reuse_port: true,
            shutdown_drain_ms: 0,
            pause_timeout_ms: 60_000,
            client_login_timeout_ms: 15_000,
            idle_transaction_timeout_ms: 0,
            client_idle_timeout_ms: 0,
            max_fanout_bytes: 128 * 1024 * 1024,
            failpoints: Vec::new(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A secret string from the config: deserialized as a plain string, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl Serialize for Redacted {
    /// Never the secret: whether one is set.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[pool]`: server connection pools, one per (user, database, server).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Server connections per (user, database, server).
    pub size: u32,
    /// Idle connections kept open.
    pub min_idle: u32,
    /// Time allowed to open and authenticate a server connection.
    pub connect_timeout_ms: u64,
    /// Time a client waits for a server connection before it gets an error.
    #[serde(alias = "query_wait_timeout_ms")]
    pub checkout_timeout_ms: u64,
    /// Idle server connections older than this are closed.
    pub idle_timeout_ms: u64,
    /// Server connections are closed after this lifetime.
    pub max_lifetime_ms: u64,
    /// Hand server connections to waiting clients in arrival order (a FIFO gate in front of bb8).
    pub fifo_checkout: bool,
    /// Statements kept prepared per server connection (LRU; evicted ones are closed on the
    /// server). Used in transaction and statement modes.
    pub prepared_statements_cache: usize,
    /// What to do when a client in transaction or statement mode creates state that lives on
    /// its server connection beyond the transaction (session advisory lock, LISTEN, WITH HOLD
    /// cursor, temporary table, SET SESSION AUTHORIZATION): `pin` keeps that server connection
    /// for the client until it disconnects; `error` refuses the statement with 0A000.
    pub session_state: SessionStatePolicy,
    /// When a transaction-mode client's settings are read back from the server at the end of
    /// a transaction in full (every setting of the session, then `RESET ALL` on the server
    /// connection), beyond the settings its SQL names (`SET`, `RESET`, `set_config('name', ..)`
    /// or `set_config($1, ..)`, always tracked): `auto` after statements that may change
    /// settings unseen (`DO`, `CALL`, calls of functions that are not known builtins, writes,
    /// which may fire triggers), `sql` the same except writes, `always` after every
    /// transaction.
    pub settings_read_back: SettingsReadBack,
    /// Send a cleartext password to a server that asks for one (`password` authentication).
    /// Off by default: such a server gets no password and the connection fails.
    pub allow_cleartext_server_password: bool,
}

/// See [`PoolConfig::settings_read_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SettingsReadBack {
    /// After statements the SQL does not prove settings-neutral, writes included.
    #[default]
    Auto,
    /// After statements the SQL does not prove settings-neutral, writes excluded.
    Sql,
    /// After every transaction.
    Always,
}

/// See [`PoolConfig::session_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatePolicy {
    /// Pin the client to its server connection.
    #[default]
    Pin,
    /// Refuse the statement.
    Error,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 20,
            min_idle: 0,
            connect_timeout_ms: 3_000,
            checkout_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 3_600_000,
            fifo_checkout: true,
            prepared_statements_cache: 500,
            session_state: SessionStatePolicy::Pin,
            settings_read_back: SettingsReadBack::Auto,
            allow_cleartext_server_password: false,
        }
    }
}

/// `[routing]`: read/write split and health checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Send reads to replicas.
    pub read_write_split: bool,
    /// round_robin | random | least_connections.
    pub load_balancing: String,
    /// Replicas further behind than this get no reads.
    pub max_replica_lag_ms: u64,
    /// Interval of the background health check.
    pub healthcheck_interval_ms: u64,
    /// How long a failing or lagging server is kept out of rotation.
    pub ban_time_ms: u64,
    /// Let the primary take reads too, as one more member of the replica rotation.
    pub include_primary: bool,
    /// How a client's reads see its own committed writes: `lsn` (replicas that replayed the
    /// client's last commit, else the primary), `primary_for_ms` (the primary for
    /// `read_your_writes_ms` after a write) or `off`.
    pub read_your_writes: ReadYourWrites,
    /// Window of `read_your_writes = "primary_for_ms"`.
    pub read_your_writes_ms: u64,
    /// Extra functions with side effects (a statement calling one goes to the primary);
    /// `name` matches in any schema, `schema.name` only there.
    pub write_functions: Vec<String>,
    /// Statement shapes whose analysis is cached (bounded memory).
    pub analysis_cache_size: usize,
    /// Retry a read on another server when its server fails before any byte reached the client.
    pub retry_reads: bool,
    /// While a shard has no writable primary (servers of role `auto` during a failover, or a
    /// primary that cannot be reached), writes and new transactions wait this long for one
    /// before they fail (57P03).
    pub failover_hold_ms: u64,
}

/// See [`RoutingConfig::read_your_writes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// Track WAL positions (the default).
    #[default]
    Lsn,
    /// Read from the primary for a while after each write.
    PrimaryForMs,
    /// Reads may go to any healthy replica.
    Off,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            load_balancing: "round_robin".into(),
            max_replica_lag_ms: 1_000,
            healthcheck_interval_ms: 1_000,
            ban_time_ms: 30_000,
            include_primary: false,
            read_your_writes: ReadYourWrites::Lsn,
            read_your_writes_ms: 1_000,
            write_functions: Vec::new(),
            analysis_cache_size: 10_000,
            retry_reads: true,
            failover_hold_ms: 30_000,
        }
    }
}

/// How a client proves who it is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 challenge/response; needs a plaintext or md5-hashed password.
    #[serde(rename = "md5")]
    Md5,
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
}

/// `[[users]]`: one user that may log in. Its `Debug` output hides the passwords.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name clients use.
    pub name: String,
    /// Plaintext password, a SCRAM-SHA-256 verifier or an md5 hash (`md5` + 32 hex digits).
    #[serde(default)]
    pub password: String,
    /// scram-sha-256 (default) | md5 | trust.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// User towards Postgres; default: `name`.
    pub server_user: Option<String>,
    /// Plaintext password towards Postgres; default: `password` (when it is plaintext).
    pub server_password: Option<String>,
    /// Overrides `[pool] size` for this user.
    pub pool_size: Option<u32>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("auth_method", &self.auth_method)
            .field("server_user", &self.server_user)
            .field(
                "server_password",
                &self.server_password.as_ref().map(|_| "<redacted>"),
            )
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl UserConfig {
    /// The user name sent to Postgres.
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    /// The plaintext password sent to Postgres, if any.
    pub fn server_password(&self) -> Option<&str> {
        match &self.server_password {
            Some(p) => Some(p),
            None if is_hashed(&self.password) => None,
            None => Some(&self.password),
        }
    }
}

/// True for a SCRAM verifier or md5 hash (not usable as a plaintext password).
pub fn is_hashed(password: &str) -> bool {
    password.starts_with("SCRAM-SHA-256$")
        || (password.len() == 35
            && password.starts_with("md5")
            && password[3..].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML could not be parsed into the config types.
    #[error("{path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// What is wrong, with the key path where known.
        message: String,
    },
    /// The config parsed but is inconsistent.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem on its own line (prefixed with the file, for invalid values), for a
    /// person: `shardgate check`, a refused reload.
    pub fn lines(&self, path: &Path) -> Vec<String> {
        match self {
            ConfigError::Invalid(problems) => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Parses TOML text without validating it.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let config = Config::parse(&text, &path.display().to_string())?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The pool mode in force for a database.
    pub fn pool_mode_for(&self, db: &DatabaseConfig) -> PoolMode {
        db.pool_mode.unwrap_or(self.proxy.pool_mode)
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.proxy.listen.parse().ok()
    }
}

#[cfg(test)]
mod tests;
