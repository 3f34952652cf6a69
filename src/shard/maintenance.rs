//! DBA tools that talk to the shards: `shard verify` (rows sitting on a shard that does not
//! own their key) and `shard rebalance` (moving the rows whose owner changed between two shard
//! maps).
//!
//! Rebalance moves rows in batches. Each batch is copied to its new shard and deleted from the
//! old one in two transactions committed with two-phase commit under recovery-compatible names
//! ([`super::recovery`]): interrupted at any point, a batch is either still entirely on its
//! old shard or entirely on its new one (after recovery) — never lost, never duplicated.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};

use super::recovery::gid;
use super::route::ShardMap;
use super::ShardId;
use crate::config::{Config, DatabaseConfig, KeyType, Role};

/// What went wrong talking to a shard.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The database is not in the config, or has one shard.
    #[error("{0}")]
    Config(String),
    /// A shard could not be reached or refused a statement.
    #[error("shard {shard}: {message}")]
    Shard {
        /// Shard name.
        shard: String,
        /// Error text.
        message: String,
    },
}

fn shard_err(shard: &str, e: impl fmt::Display) -> MaintenanceError {
    MaintenanceError::Shard {
        shard: shard.to_string(),
        message: e.to_string(),
    }
}

/// A tokio-postgres error with the server's message and SQLSTATE when there is one.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn database<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<&'a DatabaseConfig, MaintenanceError> {
    match name {
        Some(n) => config.databases.iter().find(|d| d.name == n),
        None => config.databases.first(),
    }
    .ok_or_else(|| MaintenanceError::Config("no such database in the config".into()))
}

/// A tokio-postgres config for a shard's primary (declared primary, else its first server),
/// as the first user with a server password.
pub(crate) fn shard_pg_config(
    config: &Config,
    db: &DatabaseConfig,
    shard: &str,
) -> Result<tokio_postgres::Config, MaintenanceError> {
    let s = db
        .shards
        .iter()
        .find(|s| s.name == shard)
        .ok_or_else(|| MaintenanceError::Config(format!("no shard {shard}")))?;
    let servers = s.all_servers();
    let (addr, _) = servers
        .iter()
        .find(|(_, r)| *r == Role::Primary)
        .or(servers.first())
        .ok_or_else(|| MaintenanceError::Config(format!("shard {shard} has no server")))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| MaintenanceError::Config(format!("bad address {addr}")))?;
    let user = config
        .users
        .iter()
        .find(|u| u.server_password().is_some())
        .or(config.users.first())
        .ok_or_else(|| MaintenanceError::Config("no user".into()))?;
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .port(
            port.parse()
                .map_err(|_| MaintenanceError::Config(format!("bad port in {addr}")))?,
        )
        .dbname(db.server_database())
        .user(user.server_user())
        .application_name("shardgate shard tools")
        .connect_timeout(Duration::from_millis(config.pool.connect_timeout_ms));
    if let Some(p) = user.server_password() {
        c.password(p);
    }
    Ok(c)
}

/// Connects to a shard's primary (see [`shard_pg_config`]).
async fn connect(
    config: &Config,
    db: &DatabaseConfig,
    shard: &str,
) -> Result<tokio_postgres::Client, MaintenanceError> {
    let allow = config.pool.allow_cleartext_server_password;
    let (client, conn) = crate::backend::pg_connect(&shard_pg_config(config, db, shard)?, allow)
        .await
        .map_err(|e| shard_err(shard, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Rows of one sharded table on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    /// Table.
    pub table: String,
    /// Shard name.
    pub shard: String,
    /// Rows there.
    pub rows: u64,
    /// Rows whose key another shard owns.
    pub misplaced: u64,
}

/// `shard verify`'s findings.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// One entry per (table, shard).
    pub counts: Vec<TableCount>,
}

impl Verification {
    /// Rows on the wrong shard, in all.
    pub fn misplaced(&self) -> u64 {
        self.counts.iter().map(|c| c.misplaced).sum()
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<12} {:>12} {:>12}",
            "table", "shard", "rows", "misplaced"
        )?;
        for c in &self.counts {
            writeln!(
                f,
                "{:<28} {:<12} {:>12} {:>12}",
                c.table, c.shard, c.rows, c.misplaced
            )?;
        }
        writeln!(f, "misplaced rows: {}", self.misplaced())
    }
}

/// The keys of `table` on a shard, as text (NULL keys skipped: they belong to the first shard).
async fn keys(
    client: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let sql = format!("SELECT {column}::text FROM {table}");
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, Option<String>>(0)).collect())
}

fn owner(map: &ShardMap, ty: KeyType, key: &Option<String>) -> ShardId {
    match key {
        None => ShardId::new(0),
        Some(k) => map
            .shard_of_text(ty, k.as_bytes())
            .unwrap_or(ShardId::new(usize::MAX)),
    }
}

/// Counts, per sharded table and shard, the rows whose key the shard does not own.
pub async fn verify(
    config: &Config,
    database_name: Option<&str>,
) -> Result<Verification, MaintenanceError> {
    let db = database(config, database_name)?;
    let map = ShardMap::new(db)
        .ok_or_else(|| MaintenanceError::Config("the database has a single shard".into()))?;
    let mut out = Verification::default();
    for (i, shard) in db.shards.iter().enumerate() {
        let client = connect(config, db, &shard.name).await?;
        for t in &db.sharded_tables {
            let ks = keys(&client, &t.table, &t.column)
                .await
                .map_err(|e| shard_err(&shard.name, pg_message(&e)))?;
            let misplaced = ks
                .iter()
                .filter(|k| owner(&map, t.key_type, k) != ShardId::new(i))
                .count();
            out.counts.push(TableCount {
                table: t.table.clone(),
                shard: shard.name.clone(),
                rows: ks.len() as u64,
                misplaced: misplaced as u64,
            });
        }
    }
    Ok(out)
}

/// `shard rebalance`'s work.
#[derive(Debug, Clone, Default)]
pub struct Rebalance {
    /// Rows moved per (table, from, to).
    pub moved: BTreeMap<(String, String, String), u64>,
}

impl fmt::Display for Rebalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<12} {:<12} {:>12}",
            "table", "from", "to", "rows moved"
        )?;
        for ((t, a, b), n) in &self.moved {
            writeln!(f, "{t:<28} {a:<12} {b:<12} {n:>12}")?;
        }
        writeln!(f, "rows moved: {}", self.moved.values().sum::<u64>())
    }
}

/// Moves every row of the sharded tables whose owner under `new` is not the shard it sits
/// on, in batches of `batch` rows. `old` names the shards the rows are on now (their servers
/// are looked up in `new` first, then in `old`). The tables must exist on the new shards.
pub async fn rebalance(
    old: &Config,
    new: &Config,
    database_name: Option<&str>,
    batch: usize,
) -> Result<Rebalance, MaintenanceError> {
    let new_db = database(new, database_name)?;
    let old_db = database(old, database_name.or(Some(&new_db.name)))?;
    let map = ShardMap::new(new_db)
        .ok_or_else(|| MaintenanceError::Config("the new map has a single shard".into()))?;
    let index = |name: &str| new_db.shards.iter().position(|s| s.name == name);
    let mut report = Rebalance::default();
    for src in &old_db.shards {
        let (src_cfg, src_db) = if index(&src.name).is_some() {
            (new, new_db)
        } else {
            (old, old_db)
        };
        let source = connect(src_cfg, src_db, &src.name).await?;
        let src_index = index(&src.name).map_or(ShardId::new(usize::MAX), ShardId::new);
        for t in &new_db.sharded_tables {
            let ks = keys(&source, &t.table, &t.column)
                .await
                .map_err(|e| shard_err(&src.name, pg_message(&e)))?;
            // Keys to move, grouped by their new shard.
            let mut by_dest: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
            for k in ks.into_iter().flatten() {
                let o = map
                    .shard_of_text(t.key_type, k.as_bytes())
                    .unwrap_or(ShardId::new(0));
                if o != src_index {
                    by_dest.entry(o).or_default().push(k);
                }
            }
            for (dest, keys) in by_dest {
                let dest_name = new_db.shards[dest.index()].name.clone();
                let target = connect(new, new_db, &dest_name).await?;
                for chunk in keys.chunks(batch.max(1)) {
                    move_batch(
                        &source, &target, t, chunk, src_index, dest, &src.name, &dest_name,
                    )
                    .await?;
                    *report
                        .moved
                        .entry((t.table.clone(), src.name.clone(), dest_name.clone()))
                        .or_default() += chunk.len() as u64;
                }
            }
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn move_batch(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    t: &crate::config::ShardedTable,
    keys: &[String],
    src_index: ShardId,
    dest: ShardId,
    src_name: &str,
    dest_name: &str,
) -> Result<(), MaintenanceError> {
    let list = keys
        .iter()
        .map(|k| format!("'{}'", k.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",");
    let cond = format!("{}::text IN ({list})", t.column);
    let se = |e: tokio_postgres::Error| shard_err(src_name, pg_message(&e));
    let de = |e: tokio_postgres::Error| shard_err(dest_name, pg_message(&e));
    // Two-phase commit below records its decision on the coordinator (the lower shard
    // index; see recovery): its log table must exist before the transaction starts.
    if src_index < dest {
        super::recovery::ensure_log(source).await.map_err(se)?;
    } else {
        super::recovery::ensure_log(target).await.map_err(de)?;
    }
    source.batch_execute("BEGIN").await.map_err(se)?;
    target.batch_execute("BEGIN").await.map_err(de)?;
    // Copy the rows, then delete them at the source.
    let out = source
        .copy_out(&format!(
            "COPY (SELECT * FROM {} WHERE {cond}) TO STDOUT",
            t.table
        ))
        .await
        .map_err(se)?;
    let sink = target
        .copy_in::<_, bytes::Bytes>(&format!("COPY {} FROM STDIN", t.table))
        .await
        .map_err(de)?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        sink.send(chunk.map_err(se)?).await.map_err(de)?;
    }
    let copied = sink.finish().await.map_err(de)?;
    let deleted = source
        .execute(&format!("DELETE FROM {} WHERE {cond}", t.table), &[])
        .await
        .map_err(se)?;
    if copied != deleted {
        let _ = source.batch_execute("ROLLBACK").await;
        let _ = target.batch_execute("ROLLBACK").await;
        return Err(shard_err(
            src_name,
            format!("copied {copied} rows but deleted {deleted}; batch rolled back"),
        ));
    }
    // Two-phase commit, named so that recovery finishes an interrupted batch.
    let mask = (1u64 << (src_index.index() % 64)) | (1u64 << (dest.index() % 64));
    let id: u64 = rand::random();
    let mut parts = [(src_index, source, src_name), (dest, target, dest_name)];
    parts.sort_by_key(|p| p.0);
    for (n, (i, c, name)) in parts.iter().enumerate() {
        let prepare = format!("PREPARE TRANSACTION '{}'", gid(id, mask, *i));
        // The coordinator (first) records the decision inside its own transaction.
        let sql = match n {
            0 => format!("{}; {prepare}", super::recovery::log_insert(id, mask)),
            _ => prepare,
        };
        c.batch_execute(&sql)
            .await
            .map_err(|e| shard_err(name, pg_message(&e)))?;
    }
    // The coordinator's COMMIT PREPARED is the decision; recovery completes the other one.
    for (i, c, name) in &parts {
        c.batch_execute(&format!("COMMIT PREPARED '{}'", gid(id, mask, *i)))
            .await
            .map_err(|e| shard_err(name, pg_message(&e)))?;
    }
    let _ = parts[0]
        .1
        .batch_execute(&super::recovery::log_delete(id, mask))
        .await;
    Ok(())
}
