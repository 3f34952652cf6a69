//! The registry of every pool: one per (user, logical database, server).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::{ServerPool, ShardPools};
use crate::config::{Config, Role};
use crate::health::{spawn_checker, ServerHealth};

/// All pools, keyed by (user, logical database).
#[derive(Debug, Default)]
pub struct Registry {
    map: HashMap<(String, String), Arc<Vec<ShardPools>>>,
    /// The health checkers this registry started run while it lives (a reload's new registry
    /// starts its own; the old one's stop when its last session is gone).
    _alive: Arc<()>,
}

impl Registry {
    /// Builds a pool for every (user, database, server) in the config.
    /// Starts a health checker for each distinct shard (a lone primary too, so that
    /// `/readyz` knows when it is down); call inside a tokio runtime.
    pub fn build(config: &Config) -> Registry {
        Registry::rebuild(config, None)
    }

    /// [`Registry::build`] for a reloaded config: the pools of `old` whose server, user,
    /// database and pool settings are unchanged are kept (with their connections), as is
    /// what the health checker knows of every server that stays with the same role.
    pub fn rebuild(config: &Config, old: Option<&Registry>) -> Registry {
        let alive = Arc::new(());
        let mut health: HashMap<String, Arc<ServerHealth>> = HashMap::new();
        let kept_health = |addr: &str, role: Role| {
            (old?.pools_of(None))
                .find(|p| p.addr() == addr && p.health.declared == role)
                .map(|p| p.health.clone())
        };
        let mut checked: std::collections::HashSet<Vec<String>> = Default::default();
        for db in &config.databases {
            for shard in &db.shards {
                let servers = shard.all_servers();
                let hs: Vec<Arc<ServerHealth>> = servers
                    .iter()
                    .map(|(addr, role)| {
                        (health.entry(addr.clone()))
                            .or_insert_with(|| {
                                kept_health(addr, *role)
                                    .unwrap_or_else(|| Arc::new(ServerHealth::new(addr, *role)))
                            })
                            .clone()
                    })
                    .collect();
                let mut key: Vec<String> = servers.iter().map(|(a, _)| a.clone()).collect();
                key.sort();
                // Every shard is checked, a lone primary too: `/readyz` says when it is down.
                if checked.insert(key) {
                    spawn_checker(config, db, shard, hs, Arc::downgrade(&alive));
                }
            }
        }
        let mut map = HashMap::new();
        for user in &config.users {
            for db in &config.databases {
                let shards = db
                    .shards
                    .iter()
                    .map(|s| ShardPools {
                        name: s.name.clone(),
                        servers: s
                            .all_servers()
                            .iter()
                            .map(|(addr, _)| {
                                let kept = (old.and_then(|o| o.pool(&user.name, &db.name, addr)))
                                    .filter(|p| Arc::ptr_eq(&p.health, &health[addr]))
                                    .filter(|p| p.same_as(config, user, db));
                                kept.unwrap_or_else(|| {
                                    Arc::new(ServerPool::new(
                                        config,
                                        user,
                                        db,
                                        health[addr].clone(),
                                    ))
                                })
                            })
                            .collect(),
                        next: AtomicUsize::new(0),
                    })
                    .collect();
                map.insert((user.name.clone(), db.name.clone()), Arc::new(shards));
            }
        }
        Registry { map, _alive: alive }
    }

    /// The pool of `user` on `database` for server `addr`.
    fn pool(&self, user: &str, database: &str, addr: &str) -> Option<Arc<ServerPool>> {
        let shards = self.map.get(&(user.to_string(), database.to_string()))?;
        (shards.iter().flat_map(|s| s.servers.iter()))
            .find(|p| p.addr() == addr)
            .cloned()
    }

    /// Every pool of logical database `database` (`None`: of all), for the console's acting
    /// commands.
    pub fn pools_of<'a>(
        &'a self,
        database: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<ServerPool>> + 'a {
        self.map
            .iter()
            .filter(move |((_, d), _)| database.is_none_or(|want| d == want))
            .flat_map(|(_, shards)| shards.iter())
            .flat_map(|s| s.servers.iter())
    }

    /// What the health checker knows about server `addr`, if it is configured.
    pub fn health(&self, addr: &str) -> Option<Arc<ServerHealth>> {
        self.pools_of(None)
            .find(|p| p.addr() == addr)
            .map(|p| p.health.clone())
    }

    /// The shards of a logical database as seen by a user.
    pub fn get(&self, user: &str, database: &str) -> Option<Arc<Vec<ShardPools>>> {
        self.map
            .get(&(user.to_string(), database.to_string()))
            .cloned()
    }
}
