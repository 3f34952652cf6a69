//! DBA tools over shard maps, as pure functions returning printable reports (no database
//! access): [`locate`] tells which shard owns a key, [`plan`] what moves between two shard maps.
//! `shardgate shard locate|plan` print them.

use super::key::{key_type_name, KeyError, ShardKey};
use super::ring::{hash64, Point, Ring};
use super::ShardId;
use crate::config::{Config, DatabaseConfig, KeyType, Role, ShardedTable};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

/// Why a tool could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The config defines no database at all.
    #[error("the config defines no [[databases]]")]
    NoDatabases,
    /// The named database is not in the config.
    #[error("database `{name}` is not in {which}config (it has: {known})")]
    NoSuchDatabase {
        /// The name asked for.
        name: String,
        /// `""`, `"the old "` or `"the new "`.
        which: &'static str,
        /// The databases the config has, comma-separated.
        known: String,
    },
    /// The database has no shards (or only shards of weight 0) to place anything on.
    #[error("database `{0}` has no shards with a non-zero weight")]
    NoShards(String),
    /// The key does not parse as the table's shard key type.
    #[error("{source} (shard key {table}.{column})")]
    Key {
        /// The sharded table.
        table: String,
        /// Its shard key column.
        column: String,
        /// What is wrong with the key.
        source: KeyError,
    },
}

/// Finds a database by name, or the first one when no name is given.
fn database<'a>(
    config: &'a Config,
    name: Option<&str>,
    which: &'static str,
) -> Result<&'a DatabaseConfig, ToolError> {
    let db = match name {
        None => config.databases.first().ok_or(ToolError::NoDatabases)?,
        Some(name) => config
            .databases
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ToolError::NoSuchDatabase {
                name: name.to_string(),
                which,
                known: config
                    .databases
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
    };
    if db.shards.is_empty() {
        return Err(ToolError::NoShards(db.name.clone()));
    }
    Ok(db)
}

/// Matches a table name as a user may type it: exactly, else as PostgreSQL folds an unquoted
/// name (lowercase), else without a schema qualifier.
fn table_matches<'n>(
    candidates: impl Iterator<Item = &'n str> + Clone,
    table: &str,
) -> Option<&'n str> {
    let lower = table.to_lowercase();
    let bare = lower.rsplit_once('.').map_or(lower.as_str(), |(_, t)| t);
    for want in [table, lower.as_str(), bare] {
        if let Some(found) = candidates.clone().find(|c| *c == want) {
            return Some(found);
        }
    }
    None
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Auto => "auto",
    }
}

/// A shard and its servers, as a report shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardServers {
    /// Index in the database's `shards`.
    pub index: ShardId,
    /// Shard name.
    pub name: String,
    /// Each server's `host:port` and declared role.
    pub servers: Vec<(String, Role)>,
}

impl ShardServers {
    fn of(db: &DatabaseConfig, index: ShardId) -> ShardServers {
        let shard = &db.shards[index.index()];
        ShardServers {
            index,
            name: shard.name.clone(),
            servers: shard.all_servers(),
        }
    }
}

/// How a table's rows are placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Split by a key column; the key given lives on one shard.
    Sharded {
        /// The shard key column.
        column: String,
        /// Its type.
        key_type: KeyType,
        /// The key as PostgreSQL would print it.
        key: String,
        /// Its canonical bytes, hex.
        canonical_hex: String,
        /// Its position on the ring.
        position: u64,
    },
    /// Not listed: the table lives on the first shard.
    Unsharded,
    /// A full copy on every shard.
    Replicated,
}

/// The answer of [`locate`]: where a key's row lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The logical database.
    pub database: String,
    /// The table, as the config names it (or as given, when unlisted).
    pub table: String,
    /// Sharded, unsharded or replicated.
    pub placement: Placement,
    /// The shard holding the row (every shard for a replicated table).
    pub shards: Vec<ShardServers>,
}

impl Location {
    /// Names of the shards holding the row.
    pub fn shard_names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.name.as_str()).collect()
    }
}

/// Which shard owns `key` of `table` in `database` (default: the first database). The key
/// is text as in SQL (`42`, `alice`, `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`). A table the
/// config does not list is unsharded (first shard); a replicated table is on every shard.
pub fn locate(
    config: &Config,
    database_name: Option<&str>,
    table: &str,
    key: &str,
) -> Result<Location, ToolError> {
    let db = database(config, database_name, "")?;
    let sharded = table_matches(db.sharded_tables.iter().map(|t| t.table.as_str()), table)
        .and_then(|name| db.sharded_tables.iter().find(|t| t.table == name));
    let replicated = table_matches(db.replicated_tables.iter().map(String::as_str), table);
    let (table, placement, shards) = if let Some(t) = sharded {
        let parsed =
            ShardKey::from_text(t.key_type, key.as_bytes()).map_err(|source| ToolError::Key {
                table: t.table.clone(),
                column: t.column.clone(),
                source,
            })?;
        let canonical = parsed.canonical();
        let index = Ring::new(db).shard_for(canonical.as_bytes());
        let placement = Placement::Sharded {
            column: t.column.clone(),
            key_type: t.key_type,
            key: parsed.to_string(),
            canonical_hex: hex::encode(canonical.as_bytes()),
            position: hash64(canonical.as_bytes()),
        };
        (
            t.table.clone(),
            placement,
            vec![ShardServers::of(db, index)],
        )
    } else if let Some(name) = replicated {
        let all = (0..db.shards.len())
            .map(|i| ShardServers::of(db, ShardId::new(i)))
            .collect();
        (name.to_string(), Placement::Replicated, all)
    } else {
        (
            table.to_string(),
            Placement::Unsharded,
            vec![ShardServers::of(db, ShardId::new(0))],
        )
    };
    Ok(Location {
        database: db.name.clone(),
        table,
        placement,
        shards,
    })
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "database  {}", self.database)?;
        match &self.placement {
            Placement::Sharded {
                column,
                key_type,
                key,
                canonical_hex,
                position,
            } => {
                let ty = key_type_name(*key_type);
                writeln!(f, "table     {} (sharded by {column} {ty})", self.table)?;
                writeln!(f, "key       {key}")?;
                writeln!(
                    f,
                    "bytes     {canonical_hex} (ring position {position:#018x})"
                )?;
            }
            Placement::Unsharded => writeln!(
                f,
                "table     {} (not sharded: it lives on the first shard)",
                self.table
            )?,
            Placement::Replicated => writeln!(
                f,
                "table     {} (replicated: a full copy on every shard)",
                self.table
            )?,
        }
        for shard in &self.shards {
            writeln!(f, "shard     {}", shard.name)?;
            for (addr, role) in &shard.servers {
                writeln!(f, "  server  {addr} ({})", role_name(*role))?;
            }
        }
        Ok(())
    }
}

/// Part of the keyspace that moves from one shard to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// Shard owning it under the old map.
    pub from: String,
    /// Shard owning it under the new map.
    pub to: String,
    /// Share of the whole keyspace, 0..=1.
    pub share: f64,
}

/// A shard's share of the keyspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// Shard name.
    pub shard: String,
    /// Share of the whole keyspace, 0..=1.
    pub share: f64,
}

/// The answer of [`plan`]: what changes between two shard maps of one database.
///
/// Shares are exact shares of the ring's 2^64 positions (computed arc by arc, not sampled);
/// with hashed keys they are the expected shares of each sharded table's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The logical database.
    pub database: String,
    /// Each old shard's share, in the old config's order.
    pub before: Vec<Share>,
    /// Each new shard's share, in the new config's order.
    pub after: Vec<Share>,
    /// Every (from, to) pair with a non-empty share, from != to, sorted by names.
    pub moves: Vec<Move>,
    /// Total share of the keyspace that changes shard.
    pub moved: f64,
    /// Other consequences: unsharded tables' home, replicated tables, changed shard keys.
    pub notes: Vec<String>,
}

/// The keyspace owned by each (old shard, new shard) pair, in ring positions.
fn overlap(old: &[Point], new: &[Point]) -> BTreeMap<(ShardId, ShardId), u128> {
    let owner = |points: &[Point], h: u64| {
        let i = points.partition_point(|p| p.at < h);
        points.get(i).unwrap_or(&points[0]).shard
    };
    let bounds: BTreeSet<u64> = old.iter().chain(new).map(|p| p.at).collect();
    let mut out = BTreeMap::new();
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
        return out;
    };
    // The arc up to each boundary (exclusive of the one before it) has one owner in each
    // ring: the point at that boundary. The first arc wraps around past u64::MAX.
    let mut prev: Option<u64> = None;
    for &b in &bounds {
        let len = match prev {
            None => (1u128 << 64) - u128::from(last) + u128::from(first),
            Some(p) => u128::from(b - p),
        };
        *out.entry((owner(old, b), owner(new, b))).or_insert(0) += len;
        prev = Some(b);
    }
    out
}

fn share(positions: u128) -> f64 {
    positions as f64 / (1u128 << 64) as f64
}

/// What moves when `database` (default: the first database of `old`) goes from the shard map
/// of `old` to that of `new`: per (from, to) shard pair the share of the keyspace, the total,
/// and notes on tables whose placement changes otherwise.
pub fn plan(old: &Config, new: &Config, database_name: Option<&str>) -> Result<Plan, ToolError> {
    let old_db = database(old, database_name, "the old ")?;
    let new_db = database(new, Some(database_name.unwrap_or(&old_db.name)), "the new ")?;
    let (old_points, new_points) = (Ring::new(old_db).points(), Ring::new(new_db).points());
    for (db, points) in [(old_db, &old_points), (new_db, &new_points)] {
        if points.is_empty() {
            return Err(ToolError::NoShards(db.name.clone()));
        }
    }
    let pairs = overlap(&old_points, &new_points);

    let mut before = vec![0u128; old_db.shards.len()];
    let mut after = vec![0u128; new_db.shards.len()];
    let mut moves: BTreeMap<(&str, &str), u128> = BTreeMap::new();
    for (&(o, n), &len) in &pairs {
        before[o.index()] += len;
        after[n.index()] += len;
        let (from, to) = (
            old_db.shards[o.index()].name.as_str(),
            new_db.shards[n.index()].name.as_str(),
        );
        if from != to {
            *moves.entry((from, to)).or_insert(0) += len;
        }
    }
    let shares = |db: &DatabaseConfig, sums: Vec<u128>| {
        db.shards
            .iter()
            .zip(sums)
            .map(|(s, len)| Share {
                shard: s.name.clone(),
                share: share(len),
            })
            .collect()
    };
    let moved = share(moves.values().sum());
    Ok(Plan {
        database: old_db.name.clone(),
        before: shares(old_db, before),
        after: shares(new_db, after),
        moves: moves
            .into_iter()
            .map(|((from, to), len)| Move {
                from: from.to_string(),
                to: to.to_string(),
                share: share(len),
            })
            .collect(),
        moved,
        notes: notes(old_db, new_db),
    })
}

/// Placement changes the ring shares do not show.
fn notes(old: &DatabaseConfig, new: &DatabaseConfig) -> Vec<String> {
    let mut notes = Vec::new();
    let names = |db: &DatabaseConfig| {
        db.shards
            .iter()
            .map(|s| s.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (old_names, new_names) = (names(old), names(new));
    let added: Vec<_> = new_names.difference(&old_names).cloned().collect();
    let removed: Vec<_> = old_names.difference(&new_names).cloned().collect();
    if !added.is_empty() {
        notes.push(format!("new shards: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        notes.push(format!(
            "removed shards: {} (all their keys move, as listed above)",
            removed.join(", ")
        ));
    }
    if old.virtual_nodes != new.virtual_nodes {
        notes.push(format!(
            "virtual_nodes changes from {} to {}: every shard's points change",
            old.virtual_nodes, new.virtual_nodes
        ));
    }
    let (old_home, new_home) = (&old.shards[0].name, &new.shards[0].name);
    if old_home == new_home {
        notes.push(format!(
            "unsharded tables stay on {old_home} (the first shard)"
        ));
    } else {
        notes.push(format!(
            "unsharded tables move from {old_home} to {new_home}: the first shard listed holds them"
        ));
    }
    if !new.replicated_tables.is_empty() && !added.is_empty() {
        notes.push(format!(
            "replicated tables ({}) need a full copy on {}",
            new.replicated_tables.join(", "),
            added.join(", ")
        ));
    }
    for shard in &new.shards {
        let Some(before) = old.shards.iter().find(|s| s.name == shard.name) else {
            continue;
        };
        let addrs = |s: &crate::config::ShardConfig| {
            s.all_servers()
                .into_iter()
                .map(|(a, _)| a)
                .collect::<BTreeSet<_>>()
        };
        let (was, is) = (addrs(before), addrs(shard));
        if was.is_disjoint(&is) {
            notes.push(format!(
                "shard {} keeps its keys but moves to other servers ({} -> {}): copy its data first",
                shard.name,
                was.into_iter().collect::<Vec<_>>().join(", "),
                is.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let describe = |t: &ShardedTable| format!("{} {}", t.column, key_type_name(t.key_type));
    for t in &old.sharded_tables {
        match new.sharded_tables.iter().find(|n| n.table == t.table) {
            None => notes.push(format!(
                "table {} is no longer sharded: all its rows go to {new_home}",
                t.table
            )),
            Some(n) if n.column != t.column || n.key_type != t.key_type => notes.push(format!(
                "table {}: shard key changes from ({}) to ({}): every row must be placed anew; \
                 the shares above do not apply to it",
                t.table,
                describe(t),
                describe(n)
            )),
            Some(_) => {}
        }
    }
    for n in &new.sharded_tables {
        if !old.sharded_tables.iter().any(|t| t.table == n.table) {
            notes.push(format!(
                "table {} becomes sharded by ({}): its rows, now on {old_home}, spread over all shards",
                n.table,
                describe(n)
            ));
        }
    }
    notes
}

fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

/// Writes rows as left-aligned columns separated by two spaces.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
        }
        writeln!(f, "  {}", line.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "database {}: keyspace moved {}",
            self.database,
            percent(self.moved)
        )?;
        writeln!(f)?;
        if self.moves.is_empty() {
            writeln!(f, "  no key changes shard")?;
        } else {
            let mut rows = vec![vec!["from".into(), "to".into(), "share of keyspace".into()]];
            rows.extend(
                self.moves
                    .iter()
                    .map(|m| vec![m.from.clone(), m.to.clone(), percent(m.share)]),
            );
            table(f, &rows)?;
        }
        writeln!(f)?;
        let mut rows = vec![vec!["shard".into(), "before".into(), "after".into()]];
        let mut names: Vec<&str> = self.before.iter().map(|s| s.shard.as_str()).collect();
        for s in &self.after {
            if !names.contains(&s.shard.as_str()) {
                names.push(&s.shard);
            }
        }
        let find = |list: &[Share], name: &str| {
            list.iter()
                .find(|s| s.shard == name)
                .map_or_else(|| "-".to_string(), |s| percent(s.share))
        };
        for name in names {
            rows.push(vec![
                name.to_string(),
                find(&self.before, name),
                find(&self.after, name),
            ]);
        }
        table(f, &rows)?;
        if !self.notes.is_empty() {
            writeln!(f)?;
            for note in &self.notes {
                writeln!(f, "- {note}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
