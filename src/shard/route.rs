//! Shard routing: which shards a statement needs, from its analysis (cached by shape), the
//! database's shard map, and this execution's values (the statement's literals, or the Bind
//! parameters of the extended protocol).
//!
//! Rules (README "Sharding"):
//! - a sharded table fixed by `key = value` or `key IN (...)` (ANDed with anything) goes to
//!   the owning shards; several sharded tables must be joined on their keys (co-located);
//! - an INSERT goes to the shard of each row's key (rows of several shards: split);
//! - schema changes and maintenance go to every shard;
//! - a read of a sharded table without a key goes to every shard (the caller merges);
//!   UPDATE/DELETE without a key too, unless `allow_fan_out_writes = false`;
//! - unsharded tables live on the first shard; replicated tables are read from the first
//!   shard and written on every shard;
//! - what cannot be routed correctly is refused with 0A000, never guessed.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::key::{KeyError, ShardKey};
use super::ring::Ring;
use super::ShardId;
use crate::config::{DatabaseConfig, KeyType};
pub use crate::protocol::Params;
use crate::protocol::{sqlstate, PgError};
use crate::sql::analyze::shard::{ColumnRef, Command, ShardFacts, ValueRef};
use crate::sql::shape::Literal;

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not a statement about tables (SET, BEGIN, ...): the current shard, or the first.
    Any,
    /// One shard.
    One(ShardId),
    /// Several shards (an IN list, or an INSERT whose rows belong to several shards).
    Many(Vec<ShardId>),
    /// Every shard.
    All,
}

/// The shard map of one logical database.
#[derive(Debug)]
pub struct ShardMap {
    /// The hash ring.
    pub ring: Ring,
    /// Shard names in config order.
    pub names: Vec<String>,
    /// Sharded table -> (key column, type); also under the unqualified name.
    tables: HashMap<String, (String, KeyType)>,
    replicated: HashSet<String>,
    /// `two_phase_commit`.
    pub two_phase_commit: bool,
    /// `allow_fan_out_writes`.
    pub allow_fan_out_writes: bool,
}

fn refuse(msg: impl Into<String>, hint: &str) -> PgError {
    PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, msg).with_hint(hint)
}

/// A system catalog (`pg_class`, `information_schema.tables`): the same on every shard
/// as far as a query over user tables is concerned.
fn is_catalog(t: &str) -> bool {
    t.starts_with("pg_catalog.")
        || t.starts_with("information_schema.")
        || unqualified(t).starts_with("pg_")
}

fn mixed(t: &str) -> PgError {
    refuse(
        format!(
            "query combines sharded tables with \"{t}\", which is neither sharded nor \
             replicated (it lives on the first shard)"
        ),
        "list the table under replicated_tables, or query it separately",
    )
}

fn unqualified(t: &str) -> &str {
    t.rsplit('.').next().unwrap_or(t)
}

impl ShardMap {
    /// The map of a database with more than one shard; None for a single-shard database.
    pub fn new(db: &DatabaseConfig) -> Option<ShardMap> {
        if db.shards.len() < 2 {
            return None;
        }
        let mut tables = HashMap::new();
        for t in &db.sharded_tables {
            let v = (t.column.to_lowercase(), t.key_type);
            tables.insert(t.table.clone(), v.clone());
            tables.entry(unqualified(&t.table).to_string()).or_insert(v);
        }
        let mut replicated = HashSet::new();
        for t in &db.replicated_tables {
            replicated.insert(t.clone());
            replicated.insert(unqualified(t).to_string());
        }
        Some(ShardMap {
            ring: Ring::new(db),
            names: db.shards.iter().map(|s| s.name.clone()).collect(),
            tables,
            replicated,
            two_phase_commit: db.two_phase_commit,
            allow_fan_out_writes: db.allow_fan_out_writes,
        })
    }

    /// The key column and type of a sharded table.
    pub fn sharded(&self, table: &str) -> Option<&(String, KeyType)> {
        self.tables
            .get(table)
            .or_else(|| self.tables.get(unqualified(table)))
    }

    fn is_replicated(&self, table: &str) -> bool {
        self.replicated.contains(table) || self.replicated.contains(unqualified(table))
    }

    /// Whether a statement writes a replicated table (and no sharded one): every shard runs
    /// it on its copy, and the client is told about one copy.
    pub fn writes_replicated(&self, facts: &ShardFacts, all_tables: &[String]) -> bool {
        let target = match (&facts.command, &facts.insert) {
            (Command::Insert, Some(i)) => Some(&i.table),
            (Command::Update | Command::Delete, _) => facts.tables.first(),
            _ => None,
        };
        target.is_some_and(|t| self.is_replicated(t))
            && !all_tables.iter().any(|t| self.sharded(t).is_some())
    }

    /// The shard index of a shard name.
    pub fn shard_named(&self, name: &str) -> Option<ShardId> {
        self.names.iter().position(|n| n == name).map(ShardId::new)
    }

    /// The shard owning a key given as text.
    pub fn shard_of_text(&self, key_type: KeyType, text: &[u8]) -> Result<ShardId, KeyError> {
        let key = ShardKey::from_text(key_type, text)?;
        Ok(self.ring.shard_for(key.canonical().as_bytes()))
    }

    /// The shard owning one value, or None if it cannot be evaluated here.
    fn shard_of(
        &self,
        key_type: KeyType,
        v: ValueRef,
        literals: &[Literal],
        params: Option<&Params<'_>>,
    ) -> Result<Option<ShardId>, PgError> {
        let key_err = |e: KeyError| PgError::error(e.sqlstate(), e.to_string());
        match v {
            ValueRef::Literal { index, negative } => {
                let number = match literals.get(index) {
                    Some(Literal::Number(n)) if negative => format!("-{n}"),
                    Some(Literal::Number(n)) => n.clone(),
                    Some(Literal::String(s)) if !negative => {
                        // A string that is no key of this type is an error in Postgres too.
                        return self
                            .shard_of_text(key_type, s.as_bytes())
                            .map(Some)
                            .map_err(key_err);
                    }
                    Some(Literal::Param(n)) if !negative => {
                        return self.shard_of(key_type, ValueRef::Param(*n), literals, params)
                    }
                    _ => return Ok(None),
                };
                // A number that is not a key's canonical text (`1.0`, `1e3`) may still equal
                // a key in SQL: not evaluated here (for a filter: every shard answers; for an
                // INSERT: refused), never an error Postgres would not give.
                Ok(self.shard_of_text(key_type, number.as_bytes()).ok())
            }
            ValueRef::Param(n) => {
                let Some(p) = params else { return Ok(None) };
                let i = (n as usize).wrapping_sub(1);
                match p.values.get(i) {
                    Some(Some(bytes)) => {
                        // A binary value is in its parameter's type: text-like types carry
                        // the key as text; unspecified (0) is the key column's type, unless
                        // its length cannot be (then it is text).
                        let oid = p.types.get(i).copied().unwrap_or(0);
                        let text_like = matches!(oid, 25 | 1043 | 1042 | 19 | 705);
                        let key = if p.format(i) == 1 && !text_like {
                            match ShardKey::from_binary(key_type, bytes) {
                                Err(_) if oid == 0 => ShardKey::from_text(key_type, bytes),
                                r => r,
                            }
                        } else {
                            ShardKey::from_text(key_type, bytes)
                        }
                        .map_err(key_err)?;
                        Ok(Some(self.ring.shard_for(key.canonical().as_bytes())))
                    }
                    _ => Ok(None),
                }
            }
            // NULL keys: rows with a NULL key live on the first shard; `key = NULL` matches
            // nothing anywhere.
            ValueRef::Null => Ok(Some(ShardId::new(0))),
            ValueRef::Other => Ok(None),
        }
    }

    /// Routes one statement. `all_tables` are every relation the statement names (including
    /// subqueries), from the analysis.
    ///
    /// A statement whose answer would combine rows of several shards inside the query
    /// (subqueries, derived tables, CTEs, set operations, window functions over sharded
    /// tables; sharded tables mixed with unsharded ones; outer joins with a table that is not
    /// sharded) runs only where that cannot happen: every part that reads a sharded table
    /// pinned to one same shard by its key. Otherwise it is refused with 0A000.
    pub fn route(
        &self,
        facts: &ShardFacts,
        all_tables: &[String],
        literals: &[Literal],
        params: Option<&Params<'_>>,
    ) -> Result<Route, PgError> {
        if !matches!(
            facts.command,
            Command::Select | Command::Update | Command::Delete | Command::Insert
        ) {
            return self.route_flat(facts, all_tables, literals, params);
        }
        let everywhere = |t: &String| self.sharded(t).is_some() || self.is_replicated(t);
        let local = |t: &&String| !everywhere(t) && !is_catalog(t);
        let any_sharded = all_tables.iter().any(|t| self.sharded(t).is_some());
        let write = facts.command != Command::Select;
        if write && facts.tables.first().is_some_and(|t| self.is_replicated(t)) {
            // Every shard writes its copy: what the write reads must be the same everywhere.
            if let Some(t) = all_tables
                .iter()
                .find(|t| !self.is_replicated(t) && !is_catalog(t))
            {
                return Err(refuse(
                    format!(
                        "a write to a replicated table that reads \"{t}\", which differs between shards"
                    ),
                    "write replicated tables from constants, or from replicated tables only",
                ));
            }
        }
        if !any_sharded {
            return self.route_flat(facts, all_tables, literals, params);
        }
        // Nested SELECTs over replicated tables and catalogs only read the same rows on
        // every shard: those are exact per shard.
        let complex = facts.window
            || facts
                .units
                .iter()
                .any(|u| u.tables.iter().any(|t| self.sharded(t).is_some()));
        if !complex {
            let r = self.route_flat(facts, all_tables, literals, params)?;
            if matches!(r, Route::One(_) | Route::Any) {
                if let (Route::One(s), Some(t)) = (&r, all_tables.iter().find(local)) {
                    if *s != ShardId::new(0) {
                        return Err(mixed(t));
                    }
                }
                return Ok(r);
            }
            if let Some(t) = all_tables.iter().find(local) {
                return Err(mixed(t));
            }
            if facts.outer_join && facts.tables.iter().any(|t| self.sharded(t).is_none()) {
                return Err(refuse(
                    "an outer join of a sharded table with a table that is not sharded, on several shards",
                    "fix the shard key with `key = value`, or use an inner join",
                ));
            }
            return Ok(r);
        }
        // Tables of the outer statement that no nested SELECT names (UPDATE ... FROM,
        // DELETE ... USING) belong to the outer routing.
        let outer_all: Vec<String> = all_tables
            .iter()
            .filter(|t| {
                facts.tables.contains(t) || !facts.units.iter().any(|u| u.tables.contains(t))
            })
            .cloned()
            .collect();
        let mut shard: Option<ShardId> = None;
        let mut pin = |r: Route, what: &str| -> Result<(), PgError> {
            match (r, shard) {
                (Route::One(s), None) => {
                    shard = Some(s);
                    Ok(())
                }
                (Route::One(s), Some(prev)) if s == prev => Ok(()),
                _ => Err(refuse(
                    format!(
                        "{what} over sharded tables would combine rows of several shards inside the query"
                    ),
                    "fix every sharded table of the query (subqueries included) to one shard with `key = value`, or run the parts separately",
                )),
            }
        };
        let kind = if facts.window && facts.units.is_empty() {
            "a window function"
        } else {
            "a subquery, CTE, derived table or set operation"
        };
        if outer_all.iter().any(|t| self.sharded(t).is_some()) {
            pin(self.route_flat(facts, &outer_all, literals, params)?, kind)?;
        }
        for u in &facts.units {
            if u.tables.iter().any(|t| self.sharded(t).is_some()) {
                pin(self.route_flat(u, &u.tables, literals, params)?, kind)?;
            }
        }
        let Some(s) = shard else {
            return Err(refuse(
                format!("{kind} over sharded tables without a shard key"),
                "fix the sharded tables to one shard with `key = value`",
            ));
        };
        if s != ShardId::new(0) {
            if let Some(t) = all_tables.iter().find(local) {
                return Err(mixed(t));
            }
        }
        Ok(Route::One(s))
    }

    /// COPY: a sharded table (and a replicated one, FROM STDIN) on every shard.
    fn route_copy(&self, facts: &ShardFacts) -> Result<Route, PgError> {
        let Some(c) = &facts.copy else {
            return Ok(Route::One(ShardId::new(0)));
        };
        if let (true, true, Some(opt)) = (
            self.sharded(&c.table).is_some(),
            c.from_stdin,
            &c.unsupported,
        ) {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("COPY option {opt} is not supported on a sharded table"),
            )
            .with_hint("use FORMAT, DELIMITER and HEADER only (text or CSV)"));
        }
        let everywhere =
            self.sharded(&c.table).is_some() || (self.is_replicated(&c.table) && c.from_stdin);
        Ok(if everywhere {
            Route::All
        } else {
            Route::One(ShardId::new(0))
        })
    }

    /// [`ShardMap::route`] of one SELECT (or the outer statement) by its own tables and
    /// conditions.
    fn route_flat(
        &self,
        facts: &ShardFacts,
        all_tables: &[String],
        literals: &[Literal],
        params: Option<&Params<'_>>,
    ) -> Result<Route, PgError> {
        match facts.command {
            Command::Broadcast => return Ok(Route::All),
            Command::Other => return Ok(Route::Any),
            Command::Copy => return self.route_copy(facts),
            Command::Insert => return self.route_insert(facts, literals, params),
            Command::Select | Command::Update | Command::Delete => {}
        }
        let write = facts.command != Command::Select;
        let sharded: Vec<&String> = all_tables
            .iter()
            .filter(|t| self.sharded(t).is_some())
            .collect();
        if sharded.is_empty() {
            let replicated_write = write && facts.tables.iter().any(|t| self.is_replicated(t));
            return Ok(if replicated_write {
                Route::All
            } else {
                Route::One(ShardId::new(0))
            });
        }
        if write {
            for t in &facts.tables {
                if let Some((key, _)) = self.sharded(t) {
                    if facts.set_columns.iter().any(|c| c == key) {
                        return Err(refuse(
                            format!("UPDATE of the shard key column \"{key}\" of \"{t}\""),
                            "a row cannot move between shards: DELETE it and INSERT it again",
                        ));
                    }
                }
            }
        }
        // Shards each sharded table of the outer query is fixed to.
        let mut fixed: Option<BTreeSet<ShardId>> = None;
        for t in sharded.iter().filter(|t| facts.tables.contains(t)) {
            let Some((key, ty)) = self.sharded(t) else {
                continue;
            };
            for f in &facts.filters {
                if !self.matches(&f.column, t, key, &facts.tables) {
                    continue;
                }
                let mut set = BTreeSet::new();
                let mut known = true;
                for v in &f.values {
                    match self.shard_of(*ty, *v, literals, params)? {
                        Some(s) => {
                            set.insert(s);
                        }
                        None => known = false,
                    }
                }
                if known {
                    fixed = Some(match fixed {
                        Some(prev) => prev.intersection(&set).copied().collect(),
                        None => set,
                    });
                }
            }
        }
        let outer: Vec<&String> = sharded
            .iter()
            .copied()
            .filter(|t| facts.tables.contains(t))
            .collect();
        let colocated = outer.len() == sharded.len() && self.joined_on_keys(facts);
        if !colocated {
            return Err(self.cross_shard(&sharded));
        }
        match fixed {
            Some(set) => Ok(match set.len() {
                // `key IN ()` or contradictory keys: any one shard answers "no rows".
                0 => Route::One(ShardId::new(0)),
                1 => Route::One(set.into_iter().next().unwrap_or(ShardId::new(0))),
                _ => Route::Many(set.into_iter().collect()),
            }),
            _ if facts.nested && write => Err(refuse(
                "a data-modifying statement with subqueries over sharded tables needs a shard key",
                "add `key = value` for the sharded table, or a /* shardgate: shard=NAME */ hint",
            )),
            _ if write && !self.allow_fan_out_writes => Err(refuse(
                "UPDATE/DELETE without a shard key would run on every shard",
                "add `key = value`, or set allow_fan_out_writes = true for this database",
            )),
            _ => Ok(Route::All),
        }
    }

    fn cross_shard(&self, tables: &[&String]) -> PgError {
        refuse(
            format!(
                "query joins sharded tables ({}) that are not joined on their shard keys",
                tables
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "join sharded tables on their shard key columns, or fix the key with `key = value`",
        )
    }

    /// Whether a filter column is table `t`'s key column.
    fn matches(&self, c: &ColumnRef, t: &str, key: &str, tables: &[String]) -> bool {
        if c.column != *key {
            return false;
        }
        if c.table.is_empty() {
            // Unqualified: only if no other table in scope has this key column name.
            return tables
                .iter()
                .filter(|x| self.sharded(x).is_some_and(|(k, _)| k == key))
                .count()
                == 1;
        }
        c.table == t || unqualified(&c.table) == unqualified(t)
    }

    /// Whether all the occurrences of sharded tables in the outer statement (a self-join
    /// has two) are connected by equalities of their key columns.
    fn joined_on_keys(&self, facts: &ShardFacts) -> bool {
        let occurrences: Vec<usize> = (0..facts.tables.len())
            .filter(|i| self.sharded(&facts.tables[*i]).is_some())
            .collect();
        let Some(first) = occurrences.first() else {
            return true;
        };
        let mut connected = vec![*first];
        let key_side = |side: Option<usize>, c: &ColumnRef| {
            side.filter(|i| {
                self.sharded(&facts.tables[*i])
                    .is_some_and(|(k, _)| *k == c.column)
            })
        };
        let mut changed = true;
        while changed {
            changed = false;
            for ((a, b), (sa, sb)) in facts.column_equalities.iter().zip(&facts.equality_sides) {
                if let (Some(x), Some(y)) = (key_side(*sa, a), key_side(*sb, b)) {
                    for (p, q) in [(x, y), (y, x)] {
                        if connected.contains(&p) && !connected.contains(&q) {
                            connected.push(q);
                            changed = true;
                        }
                    }
                }
            }
        }
        occurrences.iter().all(|t| connected.contains(t))
    }

    fn route_insert(
        &self,
        facts: &ShardFacts,
        literals: &[Literal],
        params: Option<&Params<'_>>,
    ) -> Result<Route, PgError> {
        let Some(ins) = &facts.insert else {
            return Ok(Route::One(ShardId::new(0)));
        };
        let Some((key, ty)) = self.sharded(&ins.table) else {
            return Ok(if self.is_replicated(&ins.table) {
                Route::All
            } else {
                Route::One(ShardId::new(0))
            });
        };
        if ins.rows.is_empty() {
            return Err(refuse(
                format!(
                    "INSERT into sharded table \"{}\" without a VALUES list",
                    ins.table
                ),
                "insert with VALUES (or COPY), so each row can go to its shard",
            ));
        }
        let Some(pos) = ins.columns.iter().position(|c| c == key) else {
            return Err(refuse(
                format!(
                    "INSERT into sharded table \"{}\" must name the shard key column \"{key}\" \
                     in its column list",
                    ins.table
                ),
                "write INSERT INTO t (key, ...) VALUES (...)",
            ));
        };
        let mut shards = BTreeSet::new();
        for row in &ins.rows {
            let v = row.get(pos).copied().unwrap_or(ValueRef::Other);
            match self.shard_of(*ty, v, literals, params)? {
                Some(s) => {
                    shards.insert(s);
                }
                None => {
                    return Err(refuse(
                        format!("the shard key \"{key}\" of an inserted row is not a constant"),
                        "insert constant keys or parameters",
                    ))
                }
            }
        }
        Ok(match shards.len() {
            1 => Route::One(shards.into_iter().next().unwrap_or(ShardId::new(0))),
            _ => Route::Many(shards.into_iter().collect()),
        })
    }

    /// The shard of each row of a multi-row INSERT (same order as the rows).
    pub fn insert_row_shards(
        &self,
        facts: &ShardFacts,
        literals: &[Literal],
        params: Option<&Params<'_>>,
    ) -> Result<Vec<ShardId>, PgError> {
        let Some(ins) = &facts.insert else {
            return Ok(Vec::new());
        };
        let Some((key, ty)) = self.sharded(&ins.table) else {
            return Ok(Vec::new());
        };
        let pos = ins.columns.iter().position(|c| c == key).unwrap_or(0);
        ins.rows
            .iter()
            .map(|row| {
                let v = row.get(pos).copied().unwrap_or(ValueRef::Other);
                Ok(self
                    .shard_of(*ty, v, literals, params)?
                    .unwrap_or(ShardId::new(0)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
