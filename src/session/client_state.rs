//! What a client has built up in its session that must follow it from one server connection to
//! the next under transaction pooling: its named statements (protocol-level and SQL-level) and
//! its settings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::sql::scan::{dollar_quote, is_setting_name};
use crate::state::Prepared;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Per-client session state.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Client statement name -> pooled statement.
    pub named: HashMap<String, Arc<Prepared>>,
    /// SQL-level prepared statements: name -> PREPARE text.
    pub sql_prepared: HashMap<String, Arc<str>>,
    /// Settings from the startup packet (lowercase names).
    pub startup: BTreeMap<String, String>,
    /// The client's current settings (startup plus what it SET since).
    pub settings: BTreeMap<String, String>,
    /// Settings changed in the current transaction; read back from the server when it ends.
    pub dirty: BTreeSet<String>,
    /// Why the client keeps its server connection until it leaves, if it does.
    pub pinned: Option<&'static str>,
    /// Queries to inject right after the client's current query (restoring startup values
    /// after RESET).
    pub after: Vec<String>,
}

impl ClientState {
    /// State of a new client, with the settings it sent in its startup packet (including
    /// `options=-c name=value`).
    pub fn from_startup(params: &BTreeMap<String, String>) -> ClientState {
        let mut startup = BTreeMap::new();
        for (k, v) in params {
            let k = k.to_ascii_lowercase();
            if !NOT_SETTINGS.contains(&k.as_str()) && is_setting_name(&k) {
                startup.insert(k, v.clone());
            }
        }
        if let Some(opts) = params.get("options") {
            for (k, v) in parse_options(opts) {
                let k = k.to_ascii_lowercase();
                if is_setting_name(&k) {
                    startup.insert(k, v);
                }
            }
        }
        ClientState {
            settings: startup.clone(),
            startup,
            ..ClientState::default()
        }
    }
}

/// Parses a startup `options` string: `-c name=value`, `-cname=value` and `--name=value`,
/// with backslash-escaped spaces.
pub fn parse_options(opts: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = opts.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// SQL that changes a server connection's settings from `conn` to `client`, or None when they
/// already agree.
pub fn apply_sql(
    client: &BTreeMap<String, String>,
    conn: &BTreeMap<String, String>,
) -> Option<String> {
    if client == conn {
        return None;
    }
    let mut sets = Vec::new();
    let mut sql = String::new();
    for (k, v) in client {
        if conn.get(k) != Some(v) && is_setting_name(k) {
            if conn.contains_key(k) {
                // From the connection's default, as on a direct login: setting `DateStyle` to
                // `ISO` keeps the day/month order a previous client chose otherwise.
                sql.push_str(&format!("RESET {k};"));
            }
            sets.push(format!(
                "set_config({}, {}, false)",
                dollar_quote(k),
                dollar_quote(v)
            ));
        }
    }
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
        sql.push(';');
    }
    for k in conn.keys() {
        if !client.contains_key(k) && is_setting_name(k) {
            sql.push_str(&format!("RESET {k};"));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// A query returning the current value of each setting in `names`, in order.
pub fn read_back_sql(names: &[&String]) -> String {
    let cols: Vec<String> = names
        .iter()
        .map(|n| format!("current_setting({}, true)", dollar_quote(n)))
        .collect();
    format!("SELECT {}", cols.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_include_options() {
        let mut p = BTreeMap::new();
        p.insert("user".to_string(), "app".to_string());
        p.insert("application_name".to_string(), "psql".to_string());
        p.insert("DateStyle".to_string(), "ISO".to_string());
        p.insert(
            "options".to_string(),
            "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=with\\ space"
                .to_string(),
        );
        let s = ClientState::from_startup(&p);
        assert_eq!(s.settings["application_name"], "psql");
        assert_eq!(s.settings["datestyle"], "ISO");
        assert_eq!(s.settings["search_path"], "a,b");
        assert_eq!(s.settings["statement_timeout"], "5s");
        assert_eq!(s.settings["work_mem"], "4MB");
        assert_eq!(s.settings["x"], "with space");
        assert!(!s.settings.contains_key("user"));
    }

    #[test]
    fn apply_sql_sets_differences_and_resets_leftovers() {
        let mut client = BTreeMap::new();
        client.insert("search_path".to_string(), "a".to_string());
        client.insert("timezone".to_string(), "UTC".to_string());
        let mut conn = BTreeMap::new();
        conn.insert("timezone".to_string(), "UTC".to_string());
        conn.insert("statement_timeout".to_string(), "1s".to_string());
        assert_eq!(
            apply_sql(&client, &conn).unwrap(),
            "SELECT set_config($sg$search_path$sg$, $sg$a$sg$, false);RESET statement_timeout;"
        );
        conn.insert("search_path".to_string(), "b".to_string());
        assert_eq!(
            apply_sql(&client, &conn).unwrap(),
            "RESET search_path;SELECT set_config($sg$search_path$sg$, $sg$a$sg$, false);\
             RESET statement_timeout;"
        );
        assert_eq!(apply_sql(&client, &client), None);
    }
}
