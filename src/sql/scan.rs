//! A single-pass SQL scanner: splits a query string into statements (respecting quotes, dollar
//! quotes and comments) and classifies the commands that change session state. No allocation
//! on the common path and no parse tree.

/// Splits `sql` into statements at top-level semicolons; empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => i = skip_quoted(b, i, b[i]),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p + 1)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => i = skip_dollar(b, i),
            b';' => {
                push_stmt(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_stmt(&mut out, &sql[start..]);
    out
}

fn push_stmt<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    let t = s.trim();
    if !t.is_empty() {
        out.push(t);
    }
}

fn skip_quoted(b: &[u8], mut i: usize, q: u8) -> usize {
    i += 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn skip_dollar(b: &[u8], i: usize) -> usize {
    // $tag$ ... $tag$ where tag is empty or an identifier; `$1` is a parameter.
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' || (j > i + 1 && b[i + 1].is_ascii_digit()) {
        return i + 1;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// The words of a statement, lowercased, up to `n` of them (comments and leading whitespace
/// skipped; a quoted identifier is returned without its quotes, case kept).
pub fn leading_words(stmt: &str, n: usize) -> Vec<String> {
    let b = stmt.as_bytes();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < b.len() && out.len() < n {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b',' || c == b'(' || c == b')' {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p + 1);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = skip_block_comment(b, i);
        } else if c == b'"' {
            let end = skip_quoted(b, i, b'"');
            out.push(stmt[i + 1..end.saturating_sub(1).max(i + 1)].replace("\"\"", "\""));
            i = end;
        } else if c == b'=' {
            out.push("=".into());
            i += 1;
        } else {
            let start = i;
            while i < b.len()
                && !b[i].is_ascii_whitespace()
                && !matches!(b[i], b',' | b'(' | b')' | b'=' | b';')
            {
                i += 1;
            }
            out.push(stmt[start..i].to_ascii_lowercase());
        }
    }
    out
}

/// What a statement does to session state that must survive transaction pooling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] name ...` / `SET TIME ZONE` / `SET ROLE`: `name` changes.
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`: settings, prepared statements, temp tables, ...
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `PREPARE name ...`.
    Prepare(String),
    /// `EXECUTE name ...`.
    Execute(String),
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// State that lives on one server connection across transactions (session advisory
    /// locks, LISTEN, WITH HOLD cursors, temporary tables, SET SESSION AUTHORIZATION).
    Pin(&'static str),
    /// Nothing session-level.
    None,
}

/// First keywords that can start a session-state command.
const SESSION_VERBS: &[&str] = &[
    "set",
    "reset",
    "discard",
    "deallocate",
    "prepare",
    "execute",
    "listen",
    "create",
];

/// The first word of a statement (after whitespace and comments), as written.
fn first_word(stmt: &str) -> &str {
    let b = stmt.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p + 1);
        } else if b[i..].starts_with(b"/*") {
            i = skip_block_comment(b, i);
        } else {
            break;
        }
    }
    let start = i;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        i += 1;
    }
    &stmt[start..i]
}

/// Classifies one statement (as returned by [`split_statements`]). Cheap for ordinary
/// statements: one look at the first word and one case-insensitive scan for session-level
/// function names.
pub fn session_command(stmt: &str) -> SessionCommand {
    let verb = first_word(stmt);
    if !SESSION_VERBS.iter().any(|v| v.eq_ignore_ascii_case(verb)) {
        return pin_reason(stmt).map_or(SessionCommand::None, SessionCommand::Pin);
    }
    let w = leading_words(stmt, 4);
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let cmd = match word(0) {
        "set" => match word(1) {
            "local" | "transaction" | "constraints" => SessionCommand::None,
            "session" => match word(2) {
                "characteristics" => SessionCommand::None,
                "authorization" => SessionCommand::Pin("SET SESSION AUTHORIZATION"),
                "time" => SessionCommand::Set("timezone".into()),
                "role" => SessionCommand::Set("role".into()),
                "" => SessionCommand::None,
                name => SessionCommand::Set(name.to_string()),
            },
            "time" => SessionCommand::Set("timezone".into()),
            "" => SessionCommand::None,
            name => SessionCommand::Set(name.to_string()),
        },
        "reset" => match word(1) {
            "all" => SessionCommand::ResetAll,
            "session" => SessionCommand::Pin("RESET SESSION AUTHORIZATION"),
            "time" => SessionCommand::Reset("timezone".into()),
            "" => SessionCommand::None,
            name => SessionCommand::Reset(name.to_string()),
        },
        "discard" if word(1) == "all" => SessionCommand::DiscardAll,
        "discard" if matches!(word(1), "temp" | "temporary" | "plans") => SessionCommand::None,
        "deallocate" => {
            let name = if word(1) == "prepare" {
                word(2)
            } else {
                word(1)
            };
            match name {
                "all" => SessionCommand::DeallocateAll,
                "" => SessionCommand::None,
                n => SessionCommand::Deallocate(n.to_string()),
            }
        }
        "prepare" if !matches!(word(1), "transaction" | "") => {
            SessionCommand::Prepare(word(1).to_string())
        }
        "execute" if !word(1).is_empty() => SessionCommand::Execute(word(1).to_string()),
        "listen" => SessionCommand::Pin("LISTEN"),
        "create"
            if matches!(word(1), "temp" | "temporary")
                || (matches!(word(1), "local" | "global")
                    && matches!(word(2), "temp" | "temporary")) =>
        {
            SessionCommand::Pin("CREATE TEMPORARY TABLE")
        }
        // `CREATE TABLE pg_temp.t`, `CREATE TYPE pg_temp.t`, ...: temporary objects too.
        "create" if find_ci(stmt.as_bytes(), b"pg_temp").is_some() => {
            SessionCommand::Pin("temporary object")
        }
        _ => SessionCommand::None,
    };
    if cmd != SessionCommand::None {
        return cmd;
    }
    pin_reason(stmt).map_or(SessionCommand::None, SessionCommand::Pin)
}

/// Session-level state created by function calls or cursor options anywhere in a statement.
pub fn pin_reason(stmt: &str) -> Option<&'static str> {
    let b = stmt.as_bytes();
    // `pg_advisory_lock(`, `pg_try_advisory_lock_shared(`, ... but not `pg_advisory_xact_lock`.
    if let Some(p) = find_ci(b, b"advisory_lock") {
        let after = &b[p + b"advisory_lock".len()..];
        let after = after.strip_prefix(b"_shared").unwrap_or(after);
        if after
            .first()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
        {
            return Some("session advisory lock");
        }
    }
    if let Some(p) = find_ci(b, b"with") {
        let rest = &b[p + 4..];
        let ws = rest.iter().take_while(|c| c.is_ascii_whitespace()).count();
        if ws > 0 && rest[ws..].len() >= 4 && rest[ws..ws + 4].eq_ignore_ascii_case(b"hold") {
            return Some("cursor WITH HOLD");
        }
        return pin_reason_after(stmt, p + 4);
    }
    None
}

fn pin_reason_after(stmt: &str, from: usize) -> Option<&'static str> {
    // another `with` later in the statement may still be `WITH HOLD`
    let b = &stmt.as_bytes()[from..];
    let p = find_ci(b, b"with")?;
    let rest = &b[p + 4..];
    let ws = rest.iter().take_while(|c| c.is_ascii_whitespace()).count();
    if ws > 0 && rest[ws..].len() >= 4 && rest[ws..ws + 4].eq_ignore_ascii_case(b"hold") {
        return Some("cursor WITH HOLD");
    }
    pin_reason_after(stmt, from + p + 4)
}

/// ASCII case-insensitive substring search; `needle` must be lowercase.
fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len()).find(|&i| {
        hay[i].to_ascii_lowercase() == first
            && hay[i..i + needle.len()]
                .iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    })
}

/// Names of settings a statement changes through `set_config('name', ...)` calls with a
/// literal name (the proxy reads their values back when the transaction ends).
pub fn set_config_names(stmt: &str) -> Vec<String> {
    let b = stmt.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = find_ci(&b[from..], b"set_config") {
        let mut i = from + p + b"set_config".len();
        from = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'(') {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'\'') {
            continue;
        }
        let start = i + 1;
        if let Some(len) = b[start..].iter().position(|&c| c == b'\'') {
            let name = stmt[start..start + len].to_ascii_lowercase();
            if is_setting_name(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// True for the proxy's own server-side statement names (`sg_<digits>`), which clients may
/// not touch with SQL-level PREPARE/EXECUTE/DEALLOCATE.
pub fn is_pooled_statement_name(name: &str) -> bool {
    name.strip_prefix("sg_")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

/// True if `name` is a plain configuration parameter name (safe to put into SQL).
pub fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Quotes `v` as a SQL string literal with dollar quoting (independent of
/// standard_conforming_strings).
pub fn dollar_quote(v: &str) -> String {
    let mut tag = String::from("$sg$");
    let mut n = 0;
    while v.contains(&tag) {
        n += 1;
        tag = format!("$sg{n}$");
    }
    format!("{tag}{v}{tag}")
}

/// Quotes an identifier for SQL (always double-quoted).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let s = "select ';'; select \"a;b\" from t -- c;\n; select $$x;y$$; select $t$;$t$;/* ; */ select 1";
        assert_eq!(
            split_statements(s),
            vec![
                "select ';'",
                "select \"a;b\" from t -- c;",
                "select $$x;y$$",
                "select $t$;$t$",
                "/* ; */ select 1"
            ]
        );
        assert_eq!(
            split_statements("select $1; select 2"),
            vec!["select $1", "select 2"]
        );
        assert!(split_statements(" ; ;").is_empty());
    }

    #[test]
    fn classifies_session_commands() {
        use SessionCommand::*;
        assert_eq!(
            session_command("SET search_path TO a, b"),
            Set("search_path".into())
        );
        assert_eq!(
            session_command("set statement_timeout=1000"),
            Set("statement_timeout".into())
        );
        assert_eq!(
            session_command("SET SESSION TimeZone = 'UTC'"),
            Set("timezone".into())
        );
        assert_eq!(
            session_command("set time zone 'UTC'"),
            Set("timezone".into())
        );
        assert_eq!(session_command("SET LOCAL search_path TO a"), None);
        assert_eq!(session_command("SET TRANSACTION READ ONLY"), None);
        assert_eq!(
            session_command("reset search_path"),
            Reset("search_path".into())
        );
        assert_eq!(session_command("RESET ALL"), ResetAll);
        assert_eq!(session_command("discard all"), DiscardAll);
        assert_eq!(session_command("DEALLOCATE ALL"), DeallocateAll);
        assert_eq!(
            session_command("deallocate prepare foo"),
            Deallocate("foo".into())
        );
        assert_eq!(
            session_command("PREPARE foo(int) AS select $1"),
            Prepare("foo".into())
        );
        assert_eq!(session_command("PREPARE TRANSACTION 'x'"), None);
        assert_eq!(session_command("execute foo(1)"), Execute("foo".into()));
        assert_eq!(session_command("LISTEN ch"), Pin("LISTEN"));
        assert_eq!(
            session_command("CREATE TYPE pg_temp.mood AS ENUM ('ok')"),
            Pin("temporary object")
        );
        assert_eq!(
            session_command("create domain PG_TEMP.d as int"),
            Pin("temporary object")
        );
        assert_eq!(
            session_command("create temp table t (a int)"),
            Pin("CREATE TEMPORARY TABLE")
        );
        assert_eq!(
            session_command("select pg_advisory_lock(1)"),
            Pin("session advisory lock")
        );
        assert_eq!(session_command("select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            session_command("declare c cursor with hold for select 1"),
            Pin("cursor WITH HOLD")
        );
        assert_eq!(session_command("select 1"), None);
        assert_eq!(
            session_command("/* hi */ SET \"search_path\" = x"),
            Set("search_path".into())
        );
    }

    #[test]
    fn finds_set_config_names() {
        assert_eq!(
            set_config_names("select set_config('search_path', 'x', false), SET_CONFIG ( 'Statement_Timeout','1s',true)"),
            vec!["search_path".to_string(), "statement_timeout".to_string()]
        );
        assert!(set_config_names("select set_config($1, $2, false)").is_empty());
        assert!(set_config_names("select 1").is_empty());
        assert!(is_pooled_statement_name("sg_12"));
        assert!(!is_pooled_statement_name("sg_"));
        assert!(!is_pooled_statement_name("sg_x1"));
    }

    #[test]
    fn quoting() {
        assert_eq!(dollar_quote("a'b"), "$sg$a'b$sg$");
        assert_eq!(dollar_quote("x$sg$y"), "$sg1$x$sg$y$sg1$");
        assert!(is_setting_name("search_path"));
        assert!(is_setting_name("myapp.tenant"));
        assert!(!is_setting_name("a; drop table x"));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
