//! `[[databases]]`: logical databases, their shards, servers and sharded tables.

use serde::{Deserialize, Serialize};

use super::PoolMode;

/// `[[databases]]`: a logical database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Name clients use in their connection string.
    pub name: String,
    /// Database name on the servers; default: `name`.
    pub server_database: Option<String>,
    /// Overrides `[proxy] pool_mode` for this database.
    pub pool_mode: Option<PoolMode>,
    /// One entry per shard; a database with one shard is plain pooling (plus replicas).
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Tables split across the shards by a key column.
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTable>,
    /// Tables with a full copy on every shard: writes go to all shards, reads to one.
    #[serde(default)]
    pub replicated_tables: Vec<String>,
    /// Points per unit of weight that each shard gets on the hash ring.
    #[serde(default = "default_virtual_nodes")]
    pub virtual_nodes: u32,
    /// Transactions that touch several shards commit with PREPARE TRANSACTION / COMMIT
    /// PREPARED; without it they are refused (0A000).
    #[serde(default)]
    pub two_phase_commit: bool,
    /// UPDATE/DELETE without a shard key run on every shard; `false` refuses them (0A000).
    #[serde(default = "default_true")]
    pub allow_fan_out_writes: bool,
    /// A prepared (two-phase) transaction of this proxy's naming older than this is
    /// resolved (committed or rolled back) by any proxy instance: at start-up and every
    /// 30 s. Younger ones may still be in flight on another instance.
    #[serde(default = "default_recovery_ms")]
    pub two_phase_recovery_ms: u64,
}

fn default_recovery_ms() -> u64 {
    10_000
}

fn default_virtual_nodes() -> u32 {
    256
}

fn default_true() -> bool {
    true
}

/// `[[databases.sharded_tables]]`: a table split across shards by one column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTable {
    /// Table name (as PostgreSQL folds it: lowercase unless it was created quoted).
    pub table: String,
    /// The shard key column.
    pub column: String,
    /// bigint | text | uuid.
    #[serde(rename = "type")]
    pub key_type: KeyType,
}

/// Type of a shard key; the ring hashes its canonical bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// 64-bit integer (also int2/int4 columns): 8 bytes big-endian.
    Bigint,
    /// Text: its UTF-8 bytes.
    Text,
    /// UUID: its 16 bytes.
    Uuid,
}

impl DatabaseConfig {
    /// The database name sent to Postgres.
    pub fn server_database(&self) -> &str {
        self.server_database.as_deref().unwrap_or(&self.name)
    }
}

/// `[[databases.shards]]`: one primary and its replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Shard name; the hash ring uses it, so renaming a shard moves its keys.
    pub name: String,
    /// `host:port` of the primary (or use `servers`).
    #[serde(default)]
    pub primary: String,
    /// `host:port` of each streaming replica.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Servers with explicit roles, in addition to `primary` and `replicas`; role `auto` lets
    /// the health checker find the primary with `pg_is_in_recovery()` (failover).
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// Share of the keyspace relative to the other shards (virtual nodes = weight x
    /// `virtual_nodes`).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// `[[databases.shards.servers]]`: one server of a shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port`.
    pub address: String,
    /// primary | replica | auto.
    #[serde(default)]
    pub role: Role,
}

/// The declared role of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Takes reads only.
    Replica,
    /// Whatever `pg_is_in_recovery()` says, checked every health-check interval.
    #[default]
    Auto,
}

impl ShardConfig {
    /// Every server of the shard with its declared role: `primary`, then `replicas`, then
    /// `servers`.
    pub fn all_servers(&self) -> Vec<(String, Role)> {
        let mut out = Vec::new();
        if !self.primary.is_empty() {
            out.push((self.primary.clone(), Role::Primary));
        }
        out.extend(self.replicas.iter().map(|r| (r.clone(), Role::Replica)));
        out.extend(self.servers.iter().map(|s| (s.address.clone(), s.role)));
        out
    }
}
