//! What a client can tell the proxy itself, outside the SQL Postgres sees:
//!
//! - comment hints: `/* shardgate: primary */`, `/* shardgate: replica */` (and, for sharding,
//!   `shard=NAME`, `key=VALUE`), anywhere in a block comment that starts with `shardgate:`
//!   (a real comment: `/*` inside a string literal, quoted identifier or dollar quote is text);
//! - proxy settings: `SET shardgate.NAME = value`, `RESET shardgate.NAME`,
//!   `SHOW shardgate.NAME`, answered by the proxy and never sent to a server.
//!
//! Both are found only in text that contains `shardgate` (in any case, one substring scan),
//! so statements without them cost that scan.

use super::analyze::{Analysis, Kind};
use super::scan::{find_ci, strip_comments, tokens, Tok};

/// The server a statement needs: the one primary/replica value of routing. A hint or
/// `SET shardgate.target` names `Primary` or `Replica`; the router adds `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The primary, whatever the statement does.
    Primary,
    /// A read: a replica that satisfies read-your-writes, else the primary.
    Read,
    /// A replica, whatever the statement does (writes fail there, as on a hot standby; no
    /// read-your-writes): a hint or `SET shardgate.target` says so.
    Replica,
}

/// Hints found in a statement's comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `primary` or `replica`.
    pub target: Option<Want>,
    /// `shard=NAME`.
    pub shard: Option<String>,
    /// `key=VALUE`.
    pub key: Option<String>,
}

/// Whether `sql` mentions the proxy at all, in any case (fast pre-check for [`hints`] and
/// [`command`]).
pub fn mentions_proxy(sql: &str) -> bool {
    find_ci(sql.as_bytes(), b"shardgate").is_some()
}

/// Hints in the block comments of `sql` (the first value of each kind wins).
pub fn hints(sql: &str) -> Hints {
    let mut h = Hints::default();
    if !mentions_proxy(sql) {
        return h;
    }
    // Only real comments count: a `/*` inside a string, quoted identifier or dollar quote is
    // text, not a comment.
    for (tok, start, end) in tokens(sql.as_bytes()) {
        if tok != Tok::BlockComment {
            continue;
        }
        let body = &sql[start + 2..end];
        let body = body.strip_suffix("*/").unwrap_or(body).trim();
        let Some(words) = strip_prefix_ci(body, "shardgate:") else {
            continue;
        };
        for word in words.split(|c: char| c.is_whitespace() || c == ',') {
            let (k, v) = match word.split_once('=') {
                Some((k, v)) => (k, Some(unquote(v))),
                None => (word, None),
            };
            match (k.to_ascii_lowercase().as_str(), v) {
                ("primary", None) => {
                    h.target.get_or_insert(Want::Primary);
                }
                ("replica", None) => {
                    h.target.get_or_insert(Want::Replica);
                }
                ("shard", Some(v)) if h.shard.is_none() => h.shard = Some(v.to_string()),
                ("key", Some(v)) if h.key.is_none() => h.key = Some(v.to_string()),
                _ => {}
            }
        }
    }
    h
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
    .then(|| &s[prefix.len()..])
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// A statement about a proxy setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET shardgate.name = value` (`None`: `SET ... TO DEFAULT` or `RESET`).
    Set {
        /// Setting name after `shardgate.`, lowercased.
        name: String,
        /// New value, unquoted.
        value: Option<String>,
    },
    /// `SHOW shardgate.name`.
    Show {
        /// Setting name after `shardgate.`, lowercased.
        name: String,
    },
}

/// Recognizes `SET [SESSION|LOCAL] shardgate.x {=|TO} v`, `RESET shardgate.x` and
/// `SHOW shardgate.x` (one statement, optional trailing semicolon).
pub fn command(sql: &str) -> Option<Command> {
    if !mentions_proxy(sql) {
        return None;
    }
    // Comments stand for whitespace: `SET/**/shardgate.target=replica`.
    let sql = strip_comments(sql);
    let s = sql.trim().trim_end_matches(';').trim();
    let (verb, rest) = split_word(s);
    let verb = verb.to_ascii_lowercase();
    let setting = |rest: &str| -> Option<(String, String)> {
        let (name, tail) = split_name(rest);
        let name = name.to_ascii_lowercase();
        let name = name.strip_prefix("shardgate.")?.to_string();
        Some((name, tail.to_string()))
    };
    match verb.as_str() {
        "set" => {
            let (w, after) = split_word(rest);
            let rest = match w.to_ascii_lowercase().as_str() {
                "session" | "local" => after,
                _ => rest,
            };
            let (name, tail) = setting(rest)?;
            let tail = tail.trim_start();
            let value = if let Some(v) = tail.strip_prefix('=') {
                v
            } else {
                let (to, v) = split_word(tail);
                if !to.eq_ignore_ascii_case("to") {
                    return None;
                }
                v
            };
            let value = unquote(value.trim());
            if value.is_empty() {
                return None;
            }
            let value = (!value.eq_ignore_ascii_case("default")).then(|| value.to_string());
            Some(Command::Set { name, value })
        }
        "reset" => {
            let (name, tail) = setting(rest)?;
            tail.trim()
                .is_empty()
                .then_some(Command::Set { name, value: None })
        }
        "show" => {
            let (name, tail) = setting(rest)?;
            tail.trim().is_empty().then_some(Command::Show { name })
        }
        _ => None,
    }
}

fn maintenance_keyword(sql: &str) -> bool {
    let (w, _) = split_word(sql);
    [
        "vacuum",
        "analyze",
        "analyse",
        "cluster",
        "reindex",
        "checkpoint",
        "create",
        "alter",
        "drop",
        "truncate",
        "grant",
        "revoke",
        "comment",
        "refresh",
        "security",
    ]
    .iter()
    .any(|k| w.eq_ignore_ascii_case(k))
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// A dotted setting name: letters, digits, `_`, `.`.
fn split_name(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// The routing facts of one statement text: its analysis kind and hints, found once (per
/// prepared statement, or per simple query through the shape cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFacts {
    /// Statement kind (see [`Kind`]).
    pub kind: Kind,
    /// Number of statements in the text.
    pub statements: usize,
    /// Comment hints.
    pub hints: Hints,
    /// The whole analysis (shard facts).
    pub analysis: std::sync::Arc<Analysis>,
    /// This text's literals (shard keys).
    pub literals: Vec<super::Literal>,
    /// Parameter type OIDs declared by the Parse (extended protocol; 0 = unspecified).
    pub param_types: Vec<u32>,
    /// An unparsed statement that starts like maintenance or schema DDL (`VACUUM`,
    /// `CLUSTER`, `REINDEX`, `CREATE`, ...): it belongs on every shard.
    pub maintenance: bool,
    /// Its shape's statistics (`SHOW QUERIES`), when the session looked them up.
    pub shape: Option<std::sync::Arc<crate::admin::queries::ShapeStats>>,
}

impl RouteFacts {
    /// The statement's command as the shard analysis sees it (`Other` without one).
    pub fn shard_command(&self) -> crate::sql::analyze::shard::Command {
        self.analysis
            .shard
            .as_ref()
            .map_or(crate::sql::analyze::shard::Command::Other, |f| f.command)
    }

    /// Facts from an analysis and the text it came from.
    pub fn new(analysis: &Analysis, sql: &str) -> RouteFacts {
        RouteFacts::from_parts(std::sync::Arc::new(analysis.clone()), Vec::new(), sql)
    }

    /// Facts from a cached analysis and the literals of this text.
    pub fn from_parts(
        analysis: std::sync::Arc<Analysis>,
        literals: Vec<super::Literal>,
        sql: &str,
    ) -> RouteFacts {
        RouteFacts {
            kind: analysis.kind,
            statements: analysis.statements,
            hints: hints(sql),
            maintenance: analysis.kind == super::Kind::Unparsed && maintenance_keyword(sql),
            analysis,
            literals,
            param_types: Vec::new(),
            shape: None,
        }
    }

    /// Whether a replica can run it: a read, or a `BEGIN READ ONLY`.
    pub fn reads(&self) -> bool {
        matches!(self.kind, Kind::Read | Kind::Begin { read_only: true })
    }

    /// Whether it may change data on the server (anything that is not a read, a `SHOW`, a
    /// setting or transaction control).
    pub fn writes(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Read
                | Kind::Show
                | Kind::Set
                | Kind::Begin { .. }
                | Kind::SetTransactionReadOnly
                | Kind::Commit
                | Kind::Rollback
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_comment_hints() {
        assert_eq!(
            hints("/* shardgate: replica */ SELECT 1").target,
            Some(Want::Replica)
        );
        assert_eq!(
            hints("SELECT 1 /*shardgate:primary*/").target,
            Some(Want::Primary)
        );
        let h = hints("/* shardgate: shard=s1, key='42' */ UPDATE t SET x = 1");
        assert_eq!(h.shard.as_deref(), Some("s1"));
        assert_eq!(h.key.as_deref(), Some("42"));
        assert_eq!(hints("SELECT 'shardgate: replica'").target, None);
        assert_eq!(hints("/* other */ SELECT 1").target, None);
        assert_eq!(hints("/* shardgate: replica").target, Some(Want::Replica));
    }

    #[test]
    fn recognizes_proxy_settings() {
        let set = |v: &str| Command::Set {
            name: "target".into(),
            value: Some(v.into()),
        };
        assert_eq!(
            command("SET shardgate.target = replica"),
            Some(set("replica"))
        );
        assert_eq!(
            command("set SESSION shardgate.target TO 'primary';"),
            Some(set("primary"))
        );
        // Unquoted names fold to lowercase, as in Postgres: any case is the proxy's.
        assert_eq!(command("SET Shardgate.Target=auto"), Some(set("auto")));
        assert_eq!(command("SET shardgate.TARGET=auto"), Some(set("auto")));
        assert_eq!(
            command("RESET shardgate.target"),
            Some(Command::Set {
                name: "target".into(),
                value: None
            })
        );
        assert_eq!(
            command("SET shardgate.target TO DEFAULT"),
            Some(Command::Set {
                name: "target".into(),
                value: None
            })
        );
        assert_eq!(
            command("show shardgate.target"),
            Some(Command::Show {
                name: "target".into()
            })
        );
        assert_eq!(command("SET search_path = shardgate"), None);
        assert_eq!(command("SELECT 1 FROM shardgate.t"), None);
        assert_eq!(command("SET shardgate.target"), None);
    }

    #[test]
    fn route_facts_classify() {
        let a = crate::sql::classify("SELECT 1", &[]);
        let f = RouteFacts::new(&a, "SELECT 1");
        assert!(f.reads() && !f.writes());
        let a = crate::sql::classify("INSERT INTO t VALUES (1)", &[]);
        let f = RouteFacts::new(&a, "INSERT INTO t VALUES (1)");
        assert!(!f.reads() && f.writes());
    }

    #[test]
    fn hints_only_in_comments() {
        let none = Hints::default();
        assert_eq!(hints("select '/* shardgate: shard=s1 */'"), none);
        assert_eq!(hints("select E'\\' /* shardgate: replica */'"), none);
        assert_eq!(hints("select $$ /* shardgate: primary */ $$"), none);
        assert_eq!(hints("select $t$ /* shardgate: primary */ $t$"), none);
        assert_eq!(hints("select \"/* shardgate: replica */\" from t"), none);
        assert_eq!(hints("select 1 -- /* shardgate: replica */"), none);
        assert_eq!(
            hints("select a$b /* shardgate: replica */").target,
            Some(Want::Replica),
            "a$b is an identifier, no dollar quote"
        );
        assert_eq!(
            hints("select 'x' /* shardgate: shard=s2 */, '/* shardgate: shard=s1 */'").shard,
            Some("s2".into())
        );
        assert_eq!(
            hints("select 1 /* shardgate: replica /* nested */ */").target,
            Some(Want::Replica)
        );
        assert_eq!(
            hints("/* x /* shardgate: replica */ */ select 1").target,
            None,
            "a hint must start its comment"
        );
    }

    #[test]
    fn proxy_settings_with_comments_for_spaces() {
        let set = |v: &str| Command::Set {
            name: "target".into(),
            value: Some(v.into()),
        };
        assert_eq!(
            command("SET/**/shardgate.target=replica"),
            Some(set("replica"))
        );
        assert_eq!(
            command("SET shardgate.target /* x */ TO -- y\n primary"),
            Some(set("primary"))
        );
        assert_eq!(
            command("SHOW/**/shardgate.target"),
            Some(Command::Show {
                name: "target".into()
            })
        );
        assert_eq!(
            command("SET shardgate.target = '/* x */'"),
            Some(set("/* x */"))
        );
    }
}
