//! Reading the config file again (SIGHUP, the console's `RELOAD`): the new config is
//! validated first (invalid: nothing changes, and the problems are the answer), then a new
//! [`ProxyState`] is built from it that shares the long-lived parts and unchanged pools of the
//! old one. Settings of the listening side (`listen`, `metrics_listen`, `workers`,
//! `reuse_port`) need a restart: they are reported, not applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::ProxyState;
use crate::config::Config;

/// The reloaded state and what changed, or why the config file was refused.
pub fn read(old: &ProxyState) -> Result<(Arc<ProxyState>, String), String> {
    let path = (old.controls.source())
        .ok_or("the proxy was not started from a config file; nothing to reload")?;
    let config = Config::load(&path).map_err(|e| e.lines(&path).join("; "))?;
    let changes = changes(&old.config, &config);
    let new = old.reloaded(config);
    let pools = |s: &ProxyState| -> BTreeSet<usize> {
        s.registry
            .pools_of(None)
            .map(|p| Arc::as_ptr(p) as usize)
            .collect()
    };
    let (before, after) = (pools(old), pools(&new));
    let kept = after.intersection(&before).count();
    Ok((
        new,
        format!(
            "{changes}; pools: {kept} kept, {} new, {} closing as their clients leave",
            after.len() - kept,
            before.len() - kept
        ),
    ))
}

/// What differs between two configs, in words.
fn changes(old: &Config, new: &Config) -> String {
    let mut out = Vec::new();
    let names = |c: &Config, users: bool| -> BTreeSet<String> {
        match users {
            true => c.users.iter().map(|u| u.name.clone()).collect(),
            false => c.databases.iter().map(|d| d.name.clone()).collect(),
        }
    };
    for (what, users) in [("users", true), ("databases", false)] {
        let (a, b) = (names(old, users), names(new, users));
        let added: Vec<_> = b.difference(&a).cloned().collect();
        let removed: Vec<_> = a.difference(&b).cloned().collect();
        if !added.is_empty() {
            out.push(format!("{what} added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            out.push(format!("{what} removed: {}", removed.join(", ")));
        }
    }
    let restart: Vec<&str> = [
        ("listen", old.proxy.listen != new.proxy.listen),
        (
            "metrics_listen",
            old.proxy.metrics_listen != new.proxy.metrics_listen,
        ),
        ("workers", old.proxy.workers != new.proxy.workers),
        ("reuse_port", old.proxy.reuse_port != new.proxy.reuse_port),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect();
    if !restart.is_empty() {
        out.push(format!(
            "needs a restart (not applied): proxy.{}",
            restart.join(", proxy.")
        ));
    }
    if out.is_empty() {
        out.push("no user or database added or removed".into());
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_user: bool, listen: &str) -> Config {
        let user = if extra_user {
            "[[users]]\nname = \"new\"\npassword = \"x\"\n"
        } else {
            ""
        };
        Config::parse(
            &format!(
                "[proxy]\nlisten = \"{listen}\"\n[[users]]\nname = \"app\"\npassword = \"secret\"\n\
                 {user}[[databases]]\nname = \"app\"\n[[databases.shards]]\nname = \"s0\"\n\
                 primary = \"127.0.0.1:1\"\n"
            ),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn changes_name_what_was_added_and_what_needs_a_restart() {
        let a = config(false, "127.0.0.1:1");
        let b = config(true, "127.0.0.1:2");
        let c = changes(&a, &b);
        assert!(c.contains("users added: new"), "{c}");
        assert!(
            c.contains("needs a restart (not applied): proxy.listen"),
            "{c}"
        );
        assert!(changes(&b, &a).contains("users removed: new"));
        assert!(changes(&a, &a).contains("no user or database"));
    }
}
