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
}

impl Registry {
    /// Builds a pool for every (user, database, server) in the config.
    /// Starts a health checker for each distinct shard with more than one server or a server
    /// of role `auto`; call inside a tokio runtime.
    pub fn build(config: &Config) -> Registry {
        let mut health: HashMap<String, Arc<ServerHealth>> = HashMap::new();
        let mut checked: std::collections::HashSet<Vec<String>> = Default::default();
        for db in &config.databases {
            for shard in &db.shards {
                let servers = shard.all_servers();
                let hs: Vec<Arc<ServerHealth>> = servers
                    .iter()
                    .map(|(addr, role)| {
                        health
                            .entry(addr.clone())
                            .or_insert_with(|| Arc::new(ServerHealth::new(addr, *role)))
                            .clone()
                    })
                    .collect();
                let mut key: Vec<String> = servers.iter().map(|(a, _)| a.clone()).collect();
                key.sort();
                let needs = servers.len() > 1 || servers.iter().any(|(_, r)| *r == Role::Auto);
                if needs && checked.insert(key) {
                    spawn_checker(config, db, shard, hs);
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
                                Arc::new(ServerPool::new(config, user, db, health[addr].clone()))
                            })
                            .collect(),
                        next: AtomicUsize::new(0),
                    })
                    .collect();
                map.insert((user.name.clone(), db.name.clone()), Arc::new(shards));
            }
        }
        Registry { map }
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
