//! A single-pass SQL scanner: splits a query string into statements (respecting quotes, dollar
//! quotes and comments) and classifies the commands that change session state. No allocation
//! on the common path and no parse tree.
//!
//! Tokens follow PostgreSQL's lexer (`scan.l`) where it matters for finding statement
//! boundaries, words and comments: comments (`--` to the end of the line, nested `/* */`) stand
//! for whitespace, so `SET/**/search_path=x` is `SET search_path = x`; strings are standard
//! (`'it''s'`), escape strings (`E'\''`) or dollar-quoted (`$$...$$`, `$tag$...$tag$`); an
//! identifier may contain `$` and digits (`a$b` is one identifier, never the start of a dollar
//! quote); quoted identifiers double their quotes (`"a""b"`). Every byte of 0x80 and above is an
//! identifier character, as in PostgreSQL, so token boundaries always fall on UTF-8 character
//! boundaries. Strings are read with `standard_conforming_strings = on` (the default).

mod plain;
pub use plain::plain_select;

/// A lexical token class, as far as the scanners need one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A run of whitespace.
    Space,
    /// `--` up to and including the newline (or the end of the text).
    LineComment,
    /// `/* ... */`, nested; an unterminated one runs to the end of the text.
    BlockComment,
    /// A string constant (with any `E`, `B`, `X`, `N` or `U&` prefix) or a dollar-quoted
    /// string; an unterminated one runs to the end of the text.
    Str,
    /// A double-quoted identifier (`U&"..."` included); an unterminated one runs to the end.
    QuotedIdent,
    /// An identifier or keyword (letters, digits, `_`, `$`, bytes >= 0x80), or a number.
    Word,
    /// A `$n` parameter.
    Param,
    /// Any other single byte (operators, punctuation; always ASCII).
    Punct,
}

/// PostgreSQL's whitespace: space, tab, newline, carriage return, vertical tab, form feed.
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The token that starts at `i` (`i < b.len()`) and the index just past it (always `> i`).
pub(crate) fn token(b: &[u8], i: usize) -> (Tok, usize) {
    let c = b[i];
    let next = b.get(i + 1).copied();
    match c {
        _ if is_space(c) => (
            Tok::Space,
            i + b[i..].iter().take_while(|&&c| is_space(c)).count(),
        ),
        b'-' if next == Some(b'-') => (
            Tok::LineComment,
            b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p + 1),
        ),
        b'/' if next == Some(b'*') => (Tok::BlockComment, block_comment_end(b, i)),
        b'\'' => (Tok::Str, quoted_end(b, i + 1, b'\'')),
        b'"' => (Tok::QuotedIdent, quoted_end(b, i + 1, b'"')),
        b'$' => dollar(b, i),
        // E'...' (backslash escapes); B'', X'', N'' are standard strings.
        b'e' | b'E' if next == Some(b'\'') => (Tok::Str, escape_string_end(b, i + 2)),
        // U&'...' and U&"...".
        b'u' | b'U' if next == Some(b'&') && matches!(b.get(i + 2), Some(b'\'' | b'"')) => {
            let q = b[i + 2];
            let tok = if q == b'"' {
                Tok::QuotedIdent
            } else {
                Tok::Str
            };
            (tok, quoted_end(b, i + 3, q))
        }
        _ if is_ident_start(c) || c.is_ascii_digit() => {
            let mut j = i + 1;
            // Numbers take no `$` (`1$$x$$` is a number and a dollar quote).
            let digits = c.is_ascii_digit();
            while j < b.len()
                && (is_ident_char(b[j]) && !(digits && b[j] == b'$') || digits && b[j] == b'.')
            {
                j += 1;
            }
            (Tok::Word, j)
        }
        _ => (Tok::Punct, i + 1),
    }
}

/// Iterates over the tokens of `b` as `(kind, start, end)`.
pub(crate) fn tokens(b: &[u8]) -> impl Iterator<Item = (Tok, usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= b.len() {
            return None;
        }
        let (t, end) = token(b, i);
        let start = i;
        i = end;
        Some((t, start, end))
    })
}

/// End (one past the closing quote) of a quoted token whose body starts at `i`; a doubled
/// quote is part of the body. Unterminated: the end of the text.
fn quoted_end(b: &[u8], mut i: usize, q: u8) -> usize {
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

/// End of an `E''` string whose body starts at `i`: a backslash escapes the next byte, a
/// doubled quote is a quote. Unterminated: the end of the text.
fn escape_string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// End of a nested block comment starting at `i` (which holds `/*`); unterminated: the end.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// `$n` parameter, `$tag$...$tag$` dollar quote, or a lone `$` at `i`.
fn dollar(b: &[u8], i: usize) -> (Tok, usize) {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        return (Tok::Param, j);
    }
    // The tag: empty, or an identifier start and then letters, digits, `_`, bytes >= 0x80.
    if j < b.len() && is_ident_start(b[j]) {
        j += 1;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return (Tok::Punct, i + 1);
    }
    let tag = &b[i..=j];
    let body = j + 1;
    let end = memchr::memmem::find(&b[body..], tag).map_or(b.len(), |p| body + p + tag.len());
    (Tok::Str, end)
}

/// `sql` with every comment replaced by one space (strings and identifiers untouched).
pub(crate) fn strip_comments(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains("--") && !sql.contains("/*") {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    for (t, i, end) in tokens(sql.as_bytes()) {
        match t {
            Tok::LineComment | Tok::BlockComment => out.push(' '),
            _ => out.push_str(&sql[i..end]),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Splits `sql` into statements at top-level semicolons; empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (t, i, end) in tokens(sql.as_bytes()) {
        if t == Tok::Punct && sql.as_bytes()[i] == b';' {
            push_stmt(&mut out, &sql[start..i]);
            start = end;
        }
    }
    push_stmt(&mut out, &sql[start..]);
    out
}

fn push_stmt<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    let t = s.trim_matches(|c: char| c.is_ascii() && is_space(c as u8));
    if !t.is_empty() {
        out.push(t);
    }
}

/// The text of a quoted identifier token `tok` (`"..."`, or `U&"..."` kept as written)
/// without its quotes, doubled quotes undone; an unterminated one runs to the end.
fn unquote_ident(tok: &str) -> String {
    let Some(body) = tok.strip_prefix('"') else {
        return tok.to_string();
    };
    let body = body.strip_suffix('"').unwrap_or(body);
    body.replace("\"\"", "\"")
}

/// The words of a statement, lowercased, up to `n` of them. Whitespace, comments, `,`, `(`
/// and `)` separate words; `=` is a word of its own; a quoted identifier is returned without
/// its quotes, case kept; a dotted name (`myapp.tenant`) is one word; the scan stops at `;`.
pub fn leading_words(stmt: &str, n: usize) -> Vec<String> {
    let b = stmt.as_bytes();
    let mut out: Vec<String> = Vec::with_capacity(n.min(8));
    let mut toks = tokens(b)
        .filter(|(t, _, _)| !matches!(t, Tok::Space | Tok::LineComment | Tok::BlockComment));
    let mut pending = toks.next();
    // Whether the last word may be continued by `.name`.
    let mut dotted = false;
    while let Some((t, i, end)) = pending {
        pending = toks.next();
        let text = &stmt[i..end];
        match t {
            Tok::Punct if b[i] == b';' => break,
            Tok::Punct if matches!(b[i], b',' | b'(' | b')') => {
                dotted = false;
                continue;
            }
            Tok::Punct if b[i] == b'.' && dotted => {
                if let Some((nt @ (Tok::Word | Tok::QuotedIdent), ni, nend)) = pending {
                    pending = toks.next();
                    let part = &stmt[ni..nend];
                    let part = if nt == Tok::Word {
                        part.to_ascii_lowercase()
                    } else {
                        unquote_ident(part)
                    };
                    if let Some(last) = out.last_mut() {
                        last.push('.');
                        last.push_str(&part);
                    }
                    continue;
                }
                dotted = false;
                if out.len() >= n {
                    break;
                }
                out.push(".".into());
                continue;
            }
            _ => {}
        }
        if out.len() >= n {
            break;
        }
        dotted = matches!(t, Tok::Word | Tok::QuotedIdent);
        out.push(match t {
            Tok::QuotedIdent => unquote_ident(text),
            Tok::Word => text.to_ascii_lowercase(),
            _ => text.to_string(),
        });
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
pub fn first_word(stmt: &str) -> &str {
    tokens(stmt.as_bytes())
        .find(|(t, _, _)| !matches!(t, Tok::Space | Tok::LineComment | Tok::BlockComment))
        .filter(|(t, _, _)| *t == Tok::Word)
        .map_or("", |(_, i, end)| &stmt[i..end])
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
///
/// The search is textual on purpose (inside strings and dollar quotes too): a `DO` block or a
/// function body may call `pg_advisory_lock`, and pinning too often is safe.
pub fn pin_reason(stmt: &str) -> Option<&'static str> {
    let b = stmt.as_bytes();
    // `pg_advisory_lock(`, `pg_try_advisory_lock_shared(`, ... but not `pg_advisory_xact_lock`.
    let mut from = 0;
    while let Some(p) = find_ci(&b[from..], b"advisory_lock") {
        from += p + b"advisory_lock".len();
        let after = &b[from..];
        let after = after.strip_prefix(b"_shared").unwrap_or(after);
        if after
            .first()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$'))
        {
            return Some("session advisory lock");
        }
    }
    // `WITH HOLD`, with whitespace or comments between the words (a loop over every `with`).
    let mut from = 0;
    while let Some(p) = find_ci(&b[from..], b"with") {
        from += p + 4;
        let next = skip_blank(b, from);
        if next > from
            && b.len() >= next + 4
            && b[next..next + 4].eq_ignore_ascii_case(b"hold")
            && b.get(next + 4).is_none_or(|&c| !is_ident_char(c))
        {
            return Some("cursor WITH HOLD");
        }
    }
    // `SELECT ... INTO TEMP t` (also `INTO LOCAL TEMPORARY`): a temporary table.
    let mut from = 0;
    while let Some(p) = find_ci(&b[from..], b"into") {
        let start = from + p;
        from = start + 4;
        if start > 0 && is_ident_char(b[start - 1]) {
            continue;
        }
        let mut next = skip_blank(b, from);
        if next == from {
            continue;
        }
        for scope in [&b"local"[..], b"global"] {
            if word_at(b, next, scope) {
                next = skip_blank(b, next + scope.len());
            }
        }
        if word_at(b, next, b"temp") || word_at(b, next, b"temporary") {
            return Some("SELECT INTO a temporary table");
        }
    }
    None
}

/// True if the word `w` (ASCII, any case) is at `i` of `b`, as a whole word.
fn word_at(b: &[u8], i: usize, w: &[u8]) -> bool {
    b.len() >= i + w.len()
        && b[i..i + w.len()].eq_ignore_ascii_case(w)
        && b.get(i + w.len()).is_none_or(|&c| !is_ident_char(c))
}

/// The index of the first token at or after `i` that is not whitespace or a comment.
fn skip_blank(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match token(b, i) {
            (Tok::Space | Tok::LineComment | Tok::BlockComment, end) => i = end,
            _ => break,
        }
    }
    i
}

/// ASCII case-insensitive substring search; `needle` must be lowercase (and not empty). Jumps
/// between the places the needle's first letter appears in either case (`memchr2`).
pub fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let upper = first.to_ascii_uppercase();
    let mut from = 0;
    while let Some(p) = memchr::memchr2(first, upper, hay.get(from..)?) {
        let i = from + p;
        let tail = hay.get(i + 1..i + needle.len())?;
        if tail.eq_ignore_ascii_case(rest) {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// Whether `stmt` mentions `set_config` anywhere (a cheap over-approximation of a call).
pub fn mentions_set_config(stmt: &str) -> bool {
    find_ci(stmt.as_bytes(), b"set_config").is_some()
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
    DollarQuoted(v).to_string()
}

/// [`dollar_quote`] as it is written into a string: no allocation unless `v` holds `$sg$`.
#[derive(Debug)]
pub struct DollarQuoted<'a>(pub &'a str);

impl std::fmt::Display for DollarQuoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if !v.contains("$sg$") {
            return write!(f, "$sg${v}$sg$");
        }
        let mut n = 1;
        let mut tag = String::from("$sg1$");
        while v.contains(&tag) {
            n += 1;
            tag = format!("$sg{n}$");
        }
        write!(f, "{tag}{v}{tag}")
    }
}

/// Quotes an identifier for SQL (always double-quoted).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests;
