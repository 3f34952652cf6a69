//! Two-phase commit bookkeeping: transaction names, and resolving prepared transactions a
//! proxy left behind (it crashed, or lost a shard, between PREPARE TRANSACTION and COMMIT
//! PREPARED).
//!
//! A transaction across shards is prepared on each participant under the name
//! `sg_<id>_<mask>_<shard>`: `id` a random 64-bit hex number, `mask` the participants as a
//! hex bit set, `shard` this participant's index. Participants are prepared in ascending
//! shard order and then committed in ascending order, so after a crash the prepared ones
//! that remain say which phase was interrupted:
//! - all participants prepared: every one voted yes — commit;
//! - the missing ones come *before* the remaining ones: the commit phase had started (the
//!   missing ones are committed) — commit the rest;
//! - otherwise the prepare phase was interrupted (the missing ones were never prepared and
//!   rolled back when their connection closed) — roll back the rest.
//!
//! Any proxy instance resolves transactions older than `two_phase_recovery_ms`, at start-up
//! and every 30 s, so a stateless fleet needs no coordinator.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{Config, DatabaseConfig};

/// How often recovery runs after start-up.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// The name of one participant's prepared transaction.
pub fn gid(id: u64, mask: u64, shard: usize) -> String {
    format!("sg_{id:016x}_{mask:x}_{shard}")
}

/// Parses a name made by [`gid`]: (id, mask, shard).
pub fn parse_gid(gid: &str) -> Option<(u64, u64, usize)> {
    let mut parts = gid.strip_prefix("sg_")?.split('_');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let mask = u64::from_str_radix(parts.next()?, 16).ok()?;
    let shard = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((id, mask, shard))
}

/// What to do with the remaining prepared parts of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// COMMIT PREPARED.
    Commit,
    /// ROLLBACK PREPARED.
    Rollback,
}

/// Decides from the participant set and the shards where the transaction is still prepared.
pub fn decide(mask: u64, present: &[usize]) -> Decision {
    let participants: Vec<usize> = (0..64).filter(|s| mask & (1 << s) != 0).collect();
    let missing: Vec<usize> = participants
        .iter()
        .copied()
        .filter(|s| !present.contains(s))
        .collect();
    let Some(first_present) = present.iter().min() else {
        return Decision::Rollback;
    };
    if missing.iter().all(|m| m < first_present) {
        Decision::Commit
    } else {
        Decision::Rollback
    }
}

fn shard_config(
    config: &Config,
    db: &DatabaseConfig,
    shard: usize,
) -> Option<tokio_postgres::Config> {
    let name = &db.shards.get(shard)?.name;
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

/// Resolves this database's prepared transactions older than its recovery age. Returns one
/// line per resolved participant (for logs and tests).
pub async fn resolve(config: &Config, db: &DatabaseConfig) -> Vec<String> {
    let mut done = Vec::new();
    let mut clients = Vec::new();
    // id -> (mask, shards where it is prepared)
    let mut found: BTreeMap<u64, (u64, Vec<usize>)> = BTreeMap::new();
    for shard in 0..db.shards.len() {
        let client = match shard_config(config, db, shard) {
            Some(c) => connect(&c, config).await,
            None => None,
        };
        if let Some(client) = &client {
            let sql = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() \
                       AND gid LIKE 'sg\\_%' AND prepared < now() - make_interval(secs => $1)";
            let age = db.two_phase_recovery_ms as f64 / 1000.0;
            if let Ok(rows) = client.query(sql, &[&age]).await {
                for r in rows {
                    let name: String = r.get(0);
                    if let Some((id, mask, s)) = parse_gid(&name) {
                        if s == shard {
                            found.entry(id).or_insert((mask, Vec::new())).1.push(s);
                        }
                    }
                }
            }
        }
        clients.push(client);
    }
    for (id, (mask, present)) in found {
        // A participant we could not ask may hold a part too: decide only with all of them.
        let unreachable = (0..db.shards.len())
            .any(|s| mask & (1 << s) != 0 && clients.get(s).is_none_or(|c| c.is_none()));
        if unreachable {
            continue;
        }
        let decision = decide(mask, &present);
        for s in present {
            let name = gid(id, mask, s);
            let sql = match decision {
                Decision::Commit => format!("COMMIT PREPARED '{name}'"),
                Decision::Rollback => format!("ROLLBACK PREPARED '{name}'"),
            };
            if let Some(Some(c)) = clients.get(s) {
                match c.batch_execute(&sql).await {
                    Ok(()) => {
                        tracing::warn!(database = %db.name, shard = s, gid = %name, ?decision, "resolved a prepared transaction left behind");
                        done.push(format!("{sql} on shard {s}"));
                    }
                    Err(e) => {
                        tracing::warn!(database = %db.name, shard = s, gid = %name, error = %e, "could not resolve a prepared transaction")
                    }
                }
            }
        }
    }
    done
}

/// Runs [`resolve`] for every database with two-phase commit, now and every 30 s, until the
/// runtime stops. Call inside a tokio runtime.
pub fn spawn(config: &Config) {
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
        loop {
            for db in &dbs {
                resolve(&config, db).await;
            }
            tokio::time::sleep(RECOVERY_INTERVAL).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let g = gid(0xabc, 0b1011, 3);
        assert_eq!(g, "sg_0000000000000abc_b_3");
        assert_eq!(parse_gid(&g), Some((0xabc, 0b1011, 3)));
        assert_eq!(parse_gid("sg_zz_1_1"), None);
        assert_eq!(parse_gid("other"), None);
    }

    #[test]
    fn decisions_follow_the_phase_that_was_interrupted() {
        let all = 0b111;
        assert_eq!(decide(all, &[0, 1, 2]), Decision::Commit, "all voted yes");
        assert_eq!(
            decide(all, &[1, 2]),
            Decision::Commit,
            "commit phase reached shard 0"
        );
        assert_eq!(
            decide(all, &[2]),
            Decision::Commit,
            "commit phase reached shard 1"
        );
        assert_eq!(
            decide(all, &[0, 1]),
            Decision::Rollback,
            "prepare never reached shard 2"
        );
        assert_eq!(decide(all, &[0]), Decision::Rollback);
        assert_eq!(decide(0b101, &[2]), Decision::Commit);
        assert_eq!(decide(0b101, &[0]), Decision::Rollback);
    }
}
