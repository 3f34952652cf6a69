//! Two-phase commit bookkeeping: transaction names, the decision log, and resolving prepared
//! transactions a proxy left behind (it crashed, or lost a shard, between PREPARE TRANSACTION
//! and COMMIT PREPARED).
//!
//! A transaction across shards is prepared on each participant under the name
//! `sg_<id>_<mask>_<shard>`: `id` a random 64-bit hex number, `mask` the participants as a
//! hex bit set, `shard` this participant's index. The participant with the lowest index is
//! the *coordinator*: inside its transaction, before its PREPARE, the proxy inserts the row
//! `sg_<id>_<mask>` into [`LOG_TABLE`]; so that row commits if and only if the coordinator's
//! part commits. The commit phase commits the coordinator first: that COMMIT PREPARED is the
//! decision, made durable by the log row; the other participants follow.
//!
//! Recovery, for a transaction whose remaining prepared parts are all older than
//! `two_phase_recovery_ms` (see [`decide`]):
//! - the coordinator is still prepared: if every participant is prepared, all voted yes —
//!   commit (the coordinator first, which records the decision); if some participant is not
//!   prepared, the prepare phase was interrupted and nobody committed — roll back (the
//!   coordinator first: once it is rolled back, no proxy can commit the transaction any more);
//! - the coordinator is gone: its log row says whether it committed — commit the rest if the
//!   row exists, roll them back if it does not.
//!
//! Log rows are deleted once every participant committed (by the proxy right after its commit
//! phase, else by recovery). Any proxy instance resolves transactions at start-up and every
//! 30 s, so a stateless fleet needs no coordinator process.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Config, DatabaseConfig};
use crate::protocol::sqlstate;
use crate::shard::ShardId;

/// How often recovery runs after start-up.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// The decision log on each shard: one row per committed (and not yet cleaned up)
/// transaction of which this shard was the coordinator.
pub const LOG_TABLE: &str = "public.shardgate_2pc_log";

/// Creates [`LOG_TABLE`] (run outside any transaction; concurrent creators may race, see
/// [`is_create_race`]).
pub const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS public.shardgate_2pc_log (\
     gid text PRIMARY KEY, participants text NOT NULL, \
     created timestamptz NOT NULL DEFAULT now())";

/// Whether an error of [`CREATE_LOG`] only means that another session created the table at
/// the same moment (`IF NOT EXISTS` does not cover that race in Postgres).
pub fn is_create_race(code: &str) -> bool {
    matches!(code, sqlstate::UNIQUE_VIOLATION | sqlstate::DUPLICATE_TABLE)
}

/// Creates [`LOG_TABLE`] on a shard if needed (outside a transaction).
pub async fn ensure_log(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    match client.batch_execute(CREATE_LOG).await {
        Err(e) if !e.code().is_some_and(|c| is_create_race(c.code())) => Err(e),
        _ => Ok(()),
    }
}

/// The name of one participant's prepared transaction.
pub fn gid(id: u64, mask: u64, shard: ShardId) -> String {
    format!("{}_{shard}", txn_name(id, mask))
}

/// The transaction's key in the decision log.
pub fn txn_name(id: u64, mask: u64) -> String {
    format!("sg_{id:016x}_{mask:x}")
}

/// The coordinator of a transaction: its participant with the lowest index.
pub fn coordinator(mask: u64) -> Option<ShardId> {
    (mask != 0).then(|| ShardId::new(mask.trailing_zeros() as usize))
}

/// The statement that records the decision, run in the coordinator's transaction before its
/// PREPARE TRANSACTION.
pub fn log_insert(id: u64, mask: u64) -> String {
    format!(
        "INSERT INTO {LOG_TABLE} (gid, participants) VALUES ('{}', '{mask:x}')",
        txn_name(id, mask)
    )
}

/// Deletes the transaction's log row once every participant committed.
pub fn log_delete(id: u64, mask: u64) -> String {
    format!(
        "DELETE FROM {LOG_TABLE} WHERE gid = '{}'",
        txn_name(id, mask)
    )
}

/// Parses a name made by [`gid`]: (id, mask, shard).
pub fn parse_gid(gid: &str) -> Option<(u64, u64, ShardId)> {
    let mut parts = gid.strip_prefix("sg_")?.split('_');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let mask = u64::from_str_radix(parts.next()?, 16).ok()?;
    let shard = ShardId::new(parts.next()?.parse::<usize>().ok()?);
    parts.next().is_none().then_some((id, mask, shard))
}

/// Parses a log key made by [`txn_name`]: (id, mask).
pub fn parse_txn_name(name: &str) -> Option<(u64, u64)> {
    let mut parts = name.strip_prefix("sg_")?.split('_');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let mask = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((id, mask))
}

/// What to do with the remaining prepared parts of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// COMMIT PREPARED (the coordinator first, if it is still prepared).
    Commit,
    /// ROLLBACK PREPARED (the coordinator first, if it is still prepared).
    Rollback,
    /// Not decidable now (the coordinator's log could not be read): look again later.
    Wait,
}

/// Decides from the participant set, the shards where the transaction is still prepared, and
/// (needed only when the coordinator is no longer prepared) whether the coordinator's log row
/// exists (`None`: it could not be read).
pub fn decide(mask: u64, present: &[ShardId], logged: Option<bool>) -> Decision {
    let Some(coord) = coordinator(mask) else {
        return Decision::Rollback;
    };
    if present.contains(&coord) {
        // Nothing committed yet: the coordinator commits first.
        let all = (0..64)
            .map(ShardId::new)
            .filter(|s| mask & (1 << s.index()) != 0)
            .all(|s| present.contains(&s));
        return if all {
            Decision::Commit
        } else {
            Decision::Rollback
        };
    }
    match logged {
        Some(true) => Decision::Commit,
        Some(false) => Decision::Rollback,
        None => Decision::Wait,
    }
}

fn shard_config(
    config: &Config,
    db: &DatabaseConfig,
    shard: ShardId,
) -> Option<tokio_postgres::Config> {
    let name = &db.shards.get(shard.index())?.name;
    super::maintenance::shard_pg_config(config, db, name).ok()
}

async fn connect(c: &tokio_postgres::Config, config: &Config) -> Option<tokio_postgres::Client> {
    let allow = config.pool.allow_cleartext_server_password;
    let (client, conn) = crate::backend::pg_connect(c, allow).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Whether the coordinator's log row of transaction `name` exists: `Some(false)` also when the
/// log table does not exist (then no transaction ever recorded a decision there).
async fn logged(client: &tokio_postgres::Client, name: &str) -> Option<bool> {
    let sql = format!("SELECT count(*) FROM {LOG_TABLE} WHERE gid = $1");
    match client.query_one(&sql, &[&name]).await {
        Ok(row) => Some(row.get::<_, i64>(0) > 0),
        Err(e) if e.code().map(|c| c.code()) == Some(sqlstate::UNDEFINED_TABLE) => Some(false),
        Err(_) => None,
    }
}

/// The prepared parts on every shard: id -> (mask, shards where it is prepared, every part
/// older than `age` seconds), and whether every shard could be read.
async fn prepared_parts(
    clients: &[Option<tokio_postgres::Client>],
    age: f64,
) -> (BTreeMap<u64, (u64, Vec<ShardId>, bool)>, bool) {
    let mut found: BTreeMap<u64, (u64, Vec<ShardId>, bool)> = BTreeMap::new();
    let mut all_read = true;
    for (shard, client) in clients.iter().enumerate() {
        let Some(client) = client else {
            all_read = false;
            continue;
        };
        let sql = "SELECT gid, prepared < now() - make_interval(secs => $1) \
                   FROM pg_prepared_xacts WHERE database = current_database() \
                   AND gid LIKE 'sg\\_%'";
        match client.query(sql, &[&age]).await {
            Ok(rows) => {
                for r in rows {
                    let name: String = r.get(0);
                    let old: bool = r.get(1);
                    if let Some((id, mask, s)) = parse_gid(&name) {
                        if s.index() == shard {
                            let e = found.entry(id).or_insert((mask, Vec::new(), true));
                            e.1.push(s);
                            e.2 &= old;
                        }
                    }
                }
            }
            Err(_) => all_read = false,
        }
    }
    (found, all_read)
}

/// Resolves this database's prepared transactions older than its recovery age, following
/// the decision log (see the module docs). Returns one line per resolved participant (for
/// logs and tests).
pub async fn resolve(config: &Config, db: &DatabaseConfig) -> Vec<String> {
    let mut done = Vec::new();
    let mut clients = Vec::new();
    for shard in 0..db.shards.len() {
        let client = match shard_config(config, db, ShardId::new(shard)) {
            Some(c) => connect(&c, config).await,
            None => None,
        };
        clients.push(client);
    }
    let age = db.two_phase_recovery_ms as f64 / 1000.0;
    // Log rows first, prepared transactions second: a row that is visible now belongs to a
    // transaction whose parts were all prepared before it, so any part still pending shows
    // up in the second read (and the row is kept).
    let mut old_rows: Vec<(ShardId, String)> = Vec::new();
    let log_sql =
        format!("SELECT gid FROM {LOG_TABLE} WHERE created < now() - make_interval(secs => $1)");
    for (shard, client) in clients.iter().enumerate() {
        if let Some(client) = client {
            if let Ok(rows) = client.query(&log_sql, &[&age]).await {
                old_rows.extend(
                    rows.iter()
                        .map(|r| (ShardId::new(shard), r.get::<_, String>(0))),
                );
            }
        }
    }
    let (found, all_read) = prepared_parts(&clients, age).await;
    let client = |s: ShardId| clients.get(s.index()).and_then(|c| c.as_ref());
    for (&id, (mask, present, old)) in &found {
        let (mask, old) = (*mask, *old);
        // A participant we could not ask may hold a part too: decide only with all of them;
        // and leave young transactions to the proxy that is still committing them.
        let unreachable = (0..db.shards.len())
            .map(ShardId::new)
            .any(|s| mask & (1 << s.index()) != 0 && client(s).is_none());
        if unreachable || !old {
            continue;
        }
        let Some(coord) = coordinator(mask) else {
            continue;
        };
        let logged = match present.contains(&coord) {
            true => None,
            false => match client(coord) {
                Some(c) => logged(c, &txn_name(id, mask)).await,
                None => None,
            },
        };
        let decision = decide(mask, present, logged);
        if decision == Decision::Wait {
            continue;
        }
        // The coordinator first: its outcome is the decision.
        let mut order = present.clone();
        order.sort_by_key(|s| (*s != coord, *s));
        let mut all_ok = true;
        for s in order {
            let name = gid(id, mask, s);
            let sql = match decision {
                Decision::Commit => format!("COMMIT PREPARED '{name}'"),
                _ => format!("ROLLBACK PREPARED '{name}'"),
            };
            let Some(c) = client(s) else {
                all_ok = false;
                break;
            };
            match c.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::warn!(database = %db.name, shard = s.index(), gid = %name, ?decision, "resolved a prepared transaction left behind");
                    done.push(format!("{sql} on shard {s}"));
                }
                Err(e) => {
                    tracing::warn!(database = %db.name, shard = s.index(), gid = %name, error = %e, "could not resolve a prepared transaction");
                    all_ok = false;
                    if s == coord {
                        // Someone else decided meanwhile: look again next round.
                        break;
                    }
                }
            }
        }
        if all_ok && decision == Decision::Commit {
            if let Some(c) = client(coord) {
                let _ = c.batch_execute(&log_delete(id, mask)).await;
            }
        }
    }
    // Log rows of transactions with no prepared part left anywhere: every participant
    // committed, only the clean-up was missed.
    if all_read {
        for (shard, name) in old_rows {
            let Some((id, mask)) = parse_txn_name(&name) else {
                continue;
            };
            if found.contains_key(&id) {
                continue;
            }
            if let Some(c) = client(shard) {
                if c.batch_execute(&log_delete(id, mask)).await.is_ok() {
                    done.push(format!("deleted log row {name} on shard {shard}"));
                }
            }
        }
    }
    done
}

/// Runs [`resolve`] for every database with two-phase commit, now and every 30 s, until the
/// runtime stops, counting the prepared parts it resolves in `recovered`. Call inside a
/// tokio runtime.
pub fn spawn(config: &Config, recovered: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let dbs: Vec<DatabaseConfig> = config
        .databases
        .iter()
        .filter(|d| d.two_phase_commit && d.shards.len() > 1)
        .cloned()
        .collect();
    if dbs.is_empty() {
        return;
    }
    let config = config.clone();
    tokio::spawn(async move {
        // The decision log, before the first commit needs it (sessions create it too).
        for db in &dbs {
            for shard in 0..db.shards.len() {
                if let Some(c) = shard_config(&config, db, ShardId::new(shard)) {
                    if let Some(client) = connect(&c, &config).await {
                        if let Err(e) = ensure_log(&client).await {
                            tracing::debug!(database = %db.name, shard, error = %e, "could not create the two-phase commit log");
                        }
                    }
                }
            }
        }
        loop {
            for db in &dbs {
                let done = resolve(&config, db).await;
                let parts = done.iter().filter(|d| d.contains(" PREPARED '")).count();
                recovered.fetch_add(parts as u64, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(RECOVERY_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(indexes: &[usize]) -> Vec<ShardId> {
        indexes.iter().copied().map(ShardId::new).collect()
    }

    #[test]
    fn names_round_trip() {
        let g = gid(0xabc, 0b1011, ShardId::new(3));
        assert_eq!(g, "sg_0000000000000abc_b_3");
        assert_eq!(parse_gid(&g), Some((0xabc, 0b1011, ShardId::new(3))));
        assert_eq!(parse_gid("sg_zz_1_1"), None);
        assert_eq!(parse_gid("other"), None);
    }

    #[test]
    fn decisions_follow_the_coordinator_and_its_log() {
        let all = 0b111;
        // The coordinator (shard 0) is still prepared: nothing committed yet.
        assert_eq!(
            decide(all, &ids(&[0, 1, 2]), None),
            Decision::Commit,
            "all voted yes"
        );
        assert_eq!(
            decide(all, &ids(&[0, 1]), None),
            Decision::Rollback,
            "prepare never reached shard 2"
        );
        assert_eq!(decide(all, &ids(&[0]), None), Decision::Rollback);
        // The coordinator is gone: its log row is the decision.
        assert_eq!(decide(all, &ids(&[1, 2]), Some(true)), Decision::Commit);
        assert_eq!(decide(all, &ids(&[2]), Some(true)), Decision::Commit);
        assert_eq!(decide(all, &ids(&[1]), Some(false)), Decision::Rollback);
        assert_eq!(decide(all, &ids(&[1, 2]), None), Decision::Wait);
        // A middle participant that failed to commit is still committed (the old rule, by
        // phase order, rolled it back).
        assert_eq!(decide(all, &ids(&[1]), Some(true)), Decision::Commit);
        assert_eq!(
            decide(0b110, &ids(&[1, 2]), None),
            Decision::Commit,
            "coordinator 1"
        );
        assert_eq!(decide(0b110, &ids(&[2]), Some(false)), Decision::Rollback);
        assert_eq!(coordinator(0b1100), Some(ShardId::new(2)));
        assert_eq!(coordinator(0), None);
    }

    #[test]
    fn log_keys_round_trip() {
        assert_eq!(txn_name(0xabc, 0b101), "sg_0000000000000abc_5");
        assert_eq!(parse_txn_name("sg_0000000000000abc_5"), Some((0xabc, 5)));
        assert_eq!(parse_txn_name("sg_0000000000000abc_5_0"), None);
        assert!(log_insert(1, 3).contains("'sg_0000000000000001_3'"));
    }
}
