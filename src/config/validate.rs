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

impl Config {
    /// Returns every problem found; empty means the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut push = |path: &str, message: String| {
            p.push(Problem {
                path: path.to_string(),
                message,
            })
        };
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            push(
                "proxy.listen",
                format!("`{}` is not an ip:port address", self.proxy.listen),
            );
        }
        if !self.proxy.metrics_listen.is_empty()
            && self.proxy.metrics_listen.parse::<SocketAddr>().is_err()
        {
            push(
                "proxy.metrics_listen",
                format!("`{}` is not an ip:port address", self.proxy.metrics_listen),
            );
        }
        if self.proxy.max_client_connections == 0 {
            push("proxy.max_client_connections", "must be at least 1".into());
        }
        if self.proxy.max_message_size < 1024 {
            push("proxy.max_message_size", "must be at least 1024".into());
        }
        if self.pool.size == 0 {
            push("pool.size", "must be at least 1".into());
        }
        if self.pool.prepared_statements_cache == 0 {
            push(
                "pool.prepared_statements_cache",
                "must be at least 1".into(),
            );
        }
        if self.pool.min_idle > self.pool.size {
            push("pool.min_idle", "must not exceed pool.size".into());
        }
        for (key, v) in [
            ("pool.connect_timeout_ms", self.pool.connect_timeout_ms),
            ("pool.checkout_timeout_ms", self.pool.checkout_timeout_ms),
        ] {
            if v == 0 {
                push(key, "must be greater than 0".into());
            }
        }
        if !["round_robin", "random", "least_connections"]
            .contains(&self.routing.load_balancing.as_str())
        {
            push(
                "routing.load_balancing",
                format!(
                    "`{}` is not one of round_robin, random, least_connections",
                    self.routing.load_balancing
                ),
            );
        }
        if self.users.is_empty() {
            push("users", "at least one [[users]] entry is needed".into());
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let path = format!("users[{i}]");
            if u.name.is_empty() {
                push(&format!("{path}.name"), "must not be empty".into());
            }
            if !names.insert(u.name.as_str()) {
                push(
                    &format!("{path}.name"),
                    format!("user `{}` is defined twice", u.name),
                );
            }
            if u.auth_method != AuthMethod::Trust && u.password.is_empty() {
                push(
                    &format!("{path}.password"),
                    "is empty; set a password or auth_method = \"trust\"".into(),
                );
            }
            if u.password.starts_with("SCRAM-SHA-256$")
                && crate::auth::ScramVerifier::parse(&u.password).is_none()
            {
                push(
                    &format!("{path}.password"),
                    "looks like a SCRAM-SHA-256 verifier but is malformed (expected \
                     SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
                        .into(),
                );
            }
            if u.auth_method == AuthMethod::Md5 && u.password.starts_with("SCRAM-SHA-256$") {
                push(
                    &format!("{path}.password"),
                    "a SCRAM verifier cannot be used with auth_method = \"md5\"".into(),
                );
            }
            if u.server_password.is_none() && is_hashed(&u.password) {
                push(
                    &format!("{path}.server_password"),
                    "is required when password is a hash (the proxy must log into Postgres)".into(),
                );
            }
            if u.pool_size == Some(0) {
                push(&format!("{path}.pool_size"), "must be at least 1".into());
            }
        }
        if self.databases.is_empty() {
            push(
                "databases",
                "at least one [[databases]] entry is needed".into(),
            );
        }
        let mut dbs = HashSet::new();
        for (i, d) in self.databases.iter().enumerate() {
            let path = format!("databases[{i}]");
            if d.name.is_empty() {
                push(&format!("{path}.name"), "must not be empty".into());
            }
            if !dbs.insert(d.name.as_str()) {
                push(
                    &format!("{path}.name"),
                    format!("database `{}` is defined twice", d.name),
                );
            }
            if d.name == "shardgate" {
                push(
                    &format!("{path}.name"),
                    "`shardgate` is reserved for the admin console".into(),
                );
            }
            if d.shards.is_empty() {
                push(
                    &format!("{path}.shards"),
                    "at least one [[databases.shards]] entry is needed".into(),
                );
            }
            let mut shard_names = HashSet::new();
            for (j, s) in d.shards.iter().enumerate() {
                let sp = format!("{path}.shards[{j}]");
                if !shard_names.insert(s.name.as_str()) {
                    push(
                        &format!("{sp}.name"),
                        format!("shard `{}` is defined twice", s.name),
                    );
                }
            }
        }
        for (i, d) in self.databases.iter().enumerate() {
            for (j, s) in d.shards.iter().enumerate() {
                let sp = format!("databases[{i}].shards[{j}]");
                if !s.primary.is_empty() {
                    check_addr(&mut p, format!("{sp}.primary"), &s.primary);
                }
                for (k, r) in s.replicas.iter().enumerate() {
                    check_addr(&mut p, format!("{sp}.replicas[{k}]"), r);
                }
                for (k, r) in s.servers.iter().enumerate() {
                    check_addr(&mut p, format!("{sp}.servers[{k}].address"), &r.address);
                }
                let all = s.all_servers();
                let problem = |message: String| Problem {
                    path: sp.clone(),
                    message,
                };
                if all.is_empty() {
                    p.push(problem(
                        "needs a `primary` or at least one `servers` entry".into(),
                    ));
                }
                let primaries = all.iter().filter(|(_, r)| *r == Role::Primary).count();
                if primaries > 1 {
                    p.push(problem(format!(
                        "declares {primaries} primaries; use role = \"auto\" for servers that may \
                         be promoted"
                    )));
                }
                let mut seen = HashSet::new();
                for (addr, _) in &all {
                    if !seen.insert(addr.as_str()) {
                        p.push(problem(format!("server `{addr}` is listed twice")));
                    }
                }
                if s.weight == 0 {
                    p.push(Problem {
                        path: format!("{sp}.weight"),
                        message: "must be at least 1".into(),
                    });
                }
            }
            let dp = format!("databases[{i}]");
            if d.virtual_nodes == 0 {
                p.push(Problem {
                    path: format!("{dp}.virtual_nodes"),
                    message: "must be at least 1".into(),
                });
            }
            let mut tables = HashSet::new();
            for (k, t) in d.sharded_tables.iter().enumerate() {
                if t.table.is_empty() || t.column.is_empty() {
                    p.push(Problem {
                        path: format!("{dp}.sharded_tables[{k}]"),
                        message: "needs a table and a column".into(),
                    });
                }
                if !tables.insert(t.table.as_str()) {
                    p.push(Problem {
                        path: format!("{dp}.sharded_tables[{k}].table"),
                        message: format!("table `{}` is listed twice", t.table),
                    });
                }
            }
            for (k, t) in d.replicated_tables.iter().enumerate() {
                if tables.contains(t.as_str()) {
                    p.push(Problem {
                        path: format!("{dp}.replicated_tables[{k}]"),
                        message: format!("table `{t}` is also a sharded table"),
                    });
                }
            }
        }
        if self.routing.analysis_cache_size == 0 {
            p.push(Problem {
                path: "routing.analysis_cache_size".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.routing.healthcheck_interval_ms < 10 {
            p.push(Problem {
                path: "routing.healthcheck_interval_ms".into(),
                message: "must be at least 10".into(),
            });
        }
        p
    }
}
