//! `Config::validate`: consistency checks that name the offending key path.

use super::{is_hashed, AuthMethod, Config, Role};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

/// One configuration problem and the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `databases[0].shards[1].primary`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn check_addr(problems: &mut Vec<Problem>, path: String, value: &str) {
    if value.parse::<SocketAddr>().is_err() {
        let ok_host = value
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok_host {
            problems.push(Problem {
                path,
                message: format!("`{value}` is not a host:port address"),
            });
        }
    }
}

/// Problems found so far.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `path` must be at least `min`.
    fn at_least(&mut self, path: &str, value: u64, min: u64) {
        if value < min {
            self.push(path, format!("must be at least {min}"));
        }
    }
}

impl Config {
    /// Returns every problem found; empty means the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.validate_proxy(&mut p);
        self.validate_users(&mut p);
        self.validate_database_names(&mut p);
        for (i, d) in self.databases.iter().enumerate() {
            validate_database(&mut p, i, d);
        }
        p.0
    }

    /// `[proxy]`, `[pool]` and `[routing]`.
    fn validate_proxy(&self, p: &mut Problems) {
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            p.push(
                "proxy.listen",
                format!("`{}` is not an ip:port address", self.proxy.listen),
            );
        }
        if !self.proxy.metrics_listen.is_empty()
            && self.proxy.metrics_listen.parse::<SocketAddr>().is_err()
        {
            p.push(
                "proxy.metrics_listen",
                format!("`{}` is not an ip:port address", self.proxy.metrics_listen),
            );
        }
        p.at_least(
            "proxy.max_client_connections",
            self.proxy.max_client_connections as u64,
            1,
        );
        p.at_least(
            "proxy.max_message_size",
            self.proxy.max_message_size as u64,
            1024,
        );
        if !self.proxy.admin_password.0.is_empty() && self.proxy.admin_user.is_empty() {
            p.push(
                "proxy.admin_user",
                "must not be empty when admin_password is set",
            );
        }
        for (i, name) in self.proxy.stats_users.iter().enumerate() {
            if !self.users.iter().any(|u| &u.name == name) {
                p.push(
                    format!("proxy.stats_users[{i}]"),
                    format!("`{name}` is not a user of [[users]]"),
                );
            }
        }
        p.at_least("proxy.stats_period_ms", self.proxy.stats_period_ms, 10);
        if self.proxy.query_stats_size > crate::admin::queries::MAX_QUERY_STATS_SIZE {
            p.push(
                "proxy.query_stats_size",
                format!(
                    "must be at most {}",
                    crate::admin::queries::MAX_QUERY_STATS_SIZE
                ),
            );
        }
        p.at_least("pool.size", self.pool.size.into(), 1);
        p.at_least(
            "pool.prepared_statements_cache",
            self.pool.prepared_statements_cache as u64,
            1,
        );
        if self.pool.min_idle > self.pool.size {
            p.push("pool.min_idle", "must not exceed pool.size");
        }
        for (key, v) in [
            ("pool.connect_timeout_ms", self.pool.connect_timeout_ms),
            ("pool.checkout_timeout_ms", self.pool.checkout_timeout_ms),
        ] {
            if v == 0 {
                p.push(key, "must be greater than 0");
            }
        }
        if !["round_robin", "random", "least_connections"]
            .contains(&self.routing.load_balancing.as_str())
        {
            p.push(
                "routing.load_balancing",
                format!(
                    "`{}` is not one of round_robin, random, least_connections",
                    self.routing.load_balancing
                ),
            );
        }
        p.at_least(
            "routing.analysis_cache_size",
            self.routing.analysis_cache_size as u64,
            1,
        );
        p.at_least(
            "routing.healthcheck_interval_ms",
            self.routing.healthcheck_interval_ms,
            10,
        );
    }

    /// `[[users]]`.
    fn validate_users(&self, p: &mut Problems) {
        if self.users.is_empty() {
            p.push("users", "at least one [[users]] entry is needed");
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let path = format!("users[{i}]");
            if u.name.is_empty() {
                p.push(format!("{path}.name"), "must not be empty");
            }
            if !names.insert(u.name.as_str()) {
                p.push(
                    format!("{path}.name"),
                    format!("user `{}` is defined twice", u.name),
                );
            }
            if u.auth_method != AuthMethod::Trust && u.password.is_empty() {
                p.push(
                    format!("{path}.password"),
                    "is empty; set a password or auth_method = \"trust\"",
                );
            }
            if u.password.starts_with("SCRAM-SHA-256$")
                && crate::auth::ScramVerifier::parse(&u.password).is_none()
            {
                p.push(
                    format!("{path}.password"),
                    "looks like a SCRAM-SHA-256 verifier but is malformed (expected \
                     SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
                );
            }
            if u.auth_method == AuthMethod::Md5 && u.password.starts_with("SCRAM-SHA-256$") {
                p.push(
                    format!("{path}.password"),
                    "a SCRAM verifier cannot be used with auth_method = \"md5\"",
                );
            }
            if u.server_password.is_none() && is_hashed(&u.password) {
                p.push(
                    format!("{path}.server_password"),
                    "is required when password is a hash (the proxy must log into Postgres)",
                );
            }
            if u.pool_size == Some(0) {
                p.push(format!("{path}.pool_size"), "must be at least 1");
            }
        }
    }

    /// `[[databases]]` names and their shards' names.
    fn validate_database_names(&self, p: &mut Problems) {
        if self.databases.is_empty() {
            p.push("databases", "at least one [[databases]] entry is needed");
        }
        let mut dbs = HashSet::new();
        for (i, d) in self.databases.iter().enumerate() {
            let path = format!("databases[{i}]");
            if d.name.is_empty() {
                p.push(format!("{path}.name"), "must not be empty");
            }
            if !dbs.insert(d.name.as_str()) {
                p.push(
                    format!("{path}.name"),
                    format!("database `{}` is defined twice", d.name),
                );
            }
            if d.name == "shardgate" {
                p.push(
                    format!("{path}.name"),
                    "`shardgate` is reserved for the admin console",
                );
            }
            if d.shards.is_empty() {
                p.push(
                    format!("{path}.shards"),
                    "at least one [[databases.shards]] entry is needed",
                );
            }
            let mut shard_names = HashSet::new();
            for (j, s) in d.shards.iter().enumerate() {
                if !shard_names.insert(s.name.as_str()) {
                    p.push(
                        format!("{path}.shards[{j}].name"),
                        format!("shard `{}` is defined twice", s.name),
                    );
                }
            }
        }
    }
}

/// One database's shards (servers, weights), ring and table lists.
fn validate_database(p: &mut Problems, i: usize, d: &super::DatabaseConfig) {
    for (j, s) in d.shards.iter().enumerate() {
        validate_shard(p, &format!("databases[{i}].shards[{j}]"), s);
    }
    let dp = format!("databases[{i}]");
    p.at_least(&format!("{dp}.virtual_nodes"), d.virtual_nodes as u64, 1);
    let mut tables = HashSet::new();
    for (k, t) in d.sharded_tables.iter().enumerate() {
        if t.table.is_empty() || t.column.is_empty() {
            p.push(
                format!("{dp}.sharded_tables[{k}]"),
                "needs a table and a column",
            );
        }
        if !tables.insert(t.table.as_str()) {
            p.push(
                format!("{dp}.sharded_tables[{k}].table"),
                format!("table `{}` is listed twice", t.table),
            );
        }
    }
    for (k, t) in d.replicated_tables.iter().enumerate() {
        if tables.contains(t.as_str()) {
            p.push(
                format!("{dp}.replicated_tables[{k}]"),
                format!("table `{t}` is also a sharded table"),
            );
        }
    }
}

/// One shard at key path `sp`: its addresses, one primary at most, no server twice.
fn validate_shard(p: &mut Problems, sp: &str, s: &super::ShardConfig) {
    if !s.primary.is_empty() {
        check_addr(&mut p.0, format!("{sp}.primary"), &s.primary);
    }
    for (k, r) in s.replicas.iter().enumerate() {
        check_addr(&mut p.0, format!("{sp}.replicas[{k}]"), r);
    }
    for (k, r) in s.servers.iter().enumerate() {
        check_addr(&mut p.0, format!("{sp}.servers[{k}].address"), &r.address);
    }
    let all = s.all_servers();
    if all.is_empty() {
        p.push(sp, "needs a `primary` or at least one `servers` entry");
    }
    let primaries = all.iter().filter(|(_, r)| *r == Role::Primary).count();
    if primaries > 1 {
        p.push(
            sp,
            format!(
                "declares {primaries} primaries; use role = \"auto\" for servers that may \
                 be promoted"
            ),
        );
    }
    let mut seen = HashSet::new();
    for (addr, _) in &all {
        if !seen.insert(addr.as_str()) {
            p.push(sp, format!("server `{addr}` is listed twice"));
        }
    }
    p.at_least(&format!("{sp}.weight"), s.weight.into(), 1);
}
