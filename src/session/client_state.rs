//! What a client has built up in its session that must follow it from one server connection to
//! the next under transaction pooling: its named statements (protocol-level and SQL-level) and
//! its settings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::sql::scan::{dollar_quote, find_ci, first_word, is_setting_name};

use crate::state::Prepared;

mod options;
pub use options::parse_options;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Per-client session state.
#[derive(Debug, Default)]
pub struct ClientState {
    /// A statement of the current transaction may have changed settings the SQL does not name
    /// (see [`settings_effect`]): at its end every session setting is read back and the server
    /// connection reset.
    pub opaque: bool,
    /// A statement of the current transaction wrote rows, so triggers may have changed
    /// settings: the server connection is reset before its next use (no read-back).
    pub wrote: bool,
    /// The current transaction ran DDL: statements prepared before it are not shared after it.
    pub ddl: bool,
    /// `set_config($n, ...)` in the unnamed statement: the parameters whose values name
    /// settings (found at Parse, read at Bind).
    pub unnamed_name_params: Vec<usize>,
    /// The client's last Parse of the unnamed statement (a number no other gets, the message)
    /// while Postgres would hold it: sent again, unseen, where a connection holds another.
    pub unnamed_parse: Option<(u64, bytes::Bytes)>,
    /// Shapes of the statements the proxy does not pool (`SHOW QUERIES`); boxed: most idle
    /// clients have none.
    pub shapes: Option<Box<crate::admin::queries::StatementShapes>>,
    /// Client statement name -> pooled statement.
    pub named: HashMap<String, Arc<Prepared>>,
    /// SQL-level prepared statements: name -> PREPARE text.
    pub sql_prepared: HashMap<String, Arc<str>>,
    /// Settings from the startup packet (lowercase names).
    pub startup: Arc<BTreeMap<String, String>>,
    /// The client's current settings (startup plus what it SET since).
    pub settings: Arc<BTreeMap<String, String>>,
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
        ClientState::with_startup(Arc::new(startup))
    }

    /// State of a new client whose startup settings are known (shared until it changes one).
    pub fn with_startup(startup: Arc<BTreeMap<String, String>>) -> ClientState {
        ClientState {
            settings: startup.clone(),
            startup,
            ..ClientState::default()
        }
    }
}

/// SQL that changes a server connection's settings from `conn` to `client`, or None when they
/// already agree.
pub fn apply_sql(
    client: &BTreeMap<String, String>,
    conn: &BTreeMap<String, String>,
) -> Option<String> {
    let mut sql = String::new();
    apply_into(client, conn, &mut sql);
    (!sql.is_empty()).then_some(sql)
}

/// [`apply_sql`], appended to `sql` (nothing when the settings agree).
fn apply_into(
    client: &BTreeMap<String, String>,
    conn: &BTreeMap<String, String>,
    sql: &mut String,
) {
    use crate::sql::scan::DollarQuoted;
    use std::fmt::Write;
    if client == conn {
        return;
    }
    let mut select = String::with_capacity(128);
    for (k, v) in client {
        if conn.get(k) != Some(v) && is_setting_name(k) {
            if conn.contains_key(k) {
                // From the connection's default, as on a direct login: setting `DateStyle` to
                // `ISO` keeps the day/month order a previous client chose otherwise.
                let _ = write!(sql, "RESET {k};");
            }
            select.push_str(if select.is_empty() { "SELECT " } else { ", " });
            let _ = write!(
                select,
                "set_config({}, {}, false)",
                DollarQuoted(k),
                DollarQuoted(v)
            );
        }
    }
    if !select.is_empty() {
        sql.push_str(&select);
        sql.push(';');
    }
    for k in conn.keys() {
        if !client.contains_key(k) && is_setting_name(k) {
            let _ = write!(sql, "RESET {k};");
        }
    }
}

/// [`apply_sql`] for a server connection that may be in any state: when its settings are
/// unknown it is reset first (`RESET ALL; RESET ROLE`, in the same query). Callers record
/// `client` as the connection's settings once the query is sent.
pub fn setup_sql(
    client: &BTreeMap<String, String>,
    conn: &mut crate::backend::ServerConn,
) -> Option<String> {
    if std::mem::take(&mut conn.settings_unknown) {
        conn.settings = Default::default();
        let mut sql = String::with_capacity(256);
        sql.push_str("RESET ALL; RESET ROLE; ");
        apply_into(client, &conn.settings, &mut sql);
        return Some(sql);
    }
    apply_sql(client, &conn.settings)
}

/// A query returning the current value of each setting in `names`, in order.
pub fn read_back_sql(names: &[&String]) -> String {
    let cols: Vec<String> = names
        .iter()
        .map(|n| format!("current_setting({}, true)", dollar_quote(n)))
        .collect();
    format!("SELECT {}", cols.join(", "))
}

/// What a statement may do to the session's settings beyond what `SET`/`RESET` and
/// `set_config('literal', ...)` show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsEffect {
    /// It may change settings the proxy cannot name from the SQL: a `DO` block, `CALL`, a call of
    /// a function that is not a known builtin (it may `SET` or call `set_config`), or
    /// `set_config` with a computed name.
    pub opaque: bool,
    /// It writes rows, so triggers (functions the SQL does not show) may run.
    pub writes: bool,
    /// `set_config($n, ...)`: the 1-based parameters whose Bind values name settings.
    pub name_params: Vec<usize>,
    /// It changes the schema (CREATE/ALTER/DROP ...).
    pub ddl: bool,
}

/// Longest word the settings scanner tells apart (longer than every name it knows).
const WORD_MAX: usize = 32;

/// An unquoted word, lowercased without allocating: every name the settings scanner compares
/// words with is short ASCII, so a longer or non-ASCII word is kept as one that equals none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    bytes: [u8; WORD_MAX],
    /// 0: a word that equals no name.
    len: u8,
}

impl Word {
    fn new(w: &[u8]) -> Word {
        let mut bytes = [0; WORD_MAX];
        if w.len() > WORD_MAX || !w.is_ascii() {
            return Word { bytes, len: 0 };
        }
        for (d, c) in bytes.iter_mut().zip(w) {
            *d = c.to_ascii_lowercase();
        }
        Word {
            bytes,
            len: w.len() as u8,
        }
    }

    /// The lowercased word; one that equals no name (not ASCII) for a word kept as such.
    fn as_bytes(&self) -> &[u8] {
        match self.len {
            0 => b"\xff",
            n => &self.bytes[..usize::from(n)],
        }
    }
}

/// Whether `list` (lowercase names) holds `w`, in any case.
fn listed(list: &[&str], w: &[u8]) -> bool {
    list.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(w))
}

/// One token of the settings scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An unquoted word, lowercased (keyword or identifier).
    Word(Word),
    /// A quoted identifier.
    Quoted,
    /// A string literal (plain, E'', dollar-quoted) or a number.
    Literal,
    /// `$n`.
    Param(usize),
    /// Any other character.
    Punct(u8),
}

/// Tokenizes like Postgres as far as classification needs: comments (nested block comments
/// too) are skipped, quotes and dollar quotes are single tokens. Never panics; non-UTF-8 bytes
/// belong to words.
fn tokens(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let word_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let word_char = |c: u8| word_start(c) || c.is_ascii_digit() || c == b'$';
    // Mostly one allocation: a statement has fewer tokens than a third of its bytes (at most
    // 64 reserved up front, whatever the statement's size).
    let mut out = Vec::with_capacity((b.len() / 3 + 1).min(64));
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' {
            // E'...' is handled with the word before it; here standard strings ('' escapes).
            i = skip_quote(b, i + 1, b'\'', false);
            out.push(Tok::Literal);
        } else if c == b'"' {
            i = skip_quote(b, i + 1, b'"', false);
            out.push(Tok::Quoted);
        } else if c == b'$' {
            let mut j = i + 1;
            if b.get(j).is_some_and(|d| d.is_ascii_digit()) {
                let mut n = 0usize;
                while let Some(d) = b.get(j).filter(|d| d.is_ascii_digit()) {
                    n = n.saturating_mul(10).saturating_add((d - b'0') as usize);
                    j += 1;
                }
                out.push(Tok::Param(n));
                i = j;
                continue;
            }
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
                j += 1;
            }
            if b.get(j) == Some(&b'$') {
                let tag = &b[i..=j];
                let body = j + 1;
                i = b[body..]
                    .windows(tag.len())
                    .position(|w| w == tag)
                    .map_or(b.len(), |p| body + p + tag.len());
                out.push(Tok::Literal);
            } else {
                out.push(Tok::Punct(b'$'));
                i += 1;
            }
        } else if word_start(c) {
            let start = i;
            while i < b.len() && word_char(b[i]) {
                i += 1;
            }
            let w = &b[start..i];
            if matches!(w, b"e" | b"E") && b.get(i) == Some(&b'\'') {
                i = skip_quote(b, i + 1, b'\'', true);
                out.push(Tok::Literal);
            } else if matches!(w, b"u" | b"U") && b.get(i) == Some(&b'&') {
                // U&'...' / U&"...": the quote follows as its own token.
                i += 1;
            } else {
                out.push(Tok::Word(Word::new(w)));
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Literal);
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// The index after a quoted token whose opening quote is before `i`.
fn skip_quote(b: &[u8], mut i: usize, q: u8, backslash: bool) -> usize {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Words that may stand before `(` without being a function call.
#[rustfmt::skip]
const NOT_CALLS: &[&str] = &[
    "all", "and", "any", "array", "as", "between", "by", "case", "cast", "check", "coalesce",
    "collate", "conflict", "constraint", "cube", "default", "distinct", "else", "escape",
    "except", "exists", "extract", "fetch", "filter", "from", "greatest", "group", "grouping",
    "having", "ilike", "in", "intersect", "into", "is", "join", "key", "lateral", "least",
    "like", "limit", "materialized", "not", "nullif", "offset", "on", "only", "or", "order",
    "over", "overlay", "partition", "position", "primary", "recursive", "references",
    "returning", "rollup", "row", "select", "set", "sets", "similar", "some", "substring",
    "table", "tablesample", "then", "trim", "union", "unique", "using", "values", "when",
    "where", "window", "with", "within", "foreign", "bernoulli", "system", "include",
];

/// Words after which `name (` names a table, type or new object, not a call.
#[rustfmt::skip]
const OBJECT_BEFORE: &[&str] = &[
    "into", "table", "references", "function", "procedure", "prepare", "view", "type", "index",
    "trigger", "domain", "copy", "exists", "aggregate", "only", "update",
];

/// Builtin functions known not to change settings (set_config is handled apart). A call of
/// anything else is assumed to possibly change settings.
#[rustfmt::skip]
const PURE_BUILTINS: &[&str] = &[
    "abs", "age", "array_agg", "array_append", "array_cat", "array_length", "array_position",
    "array_positions", "array_prepend", "array_remove", "array_replace", "array_to_json",
    "array_to_string", "array_lower", "array_upper", "array_ndims", "array_dims", "ascii",
    "avg", "bit", "bit_and", "bit_length", "bit_or", "bool_and", "bool_or", "btrim",
    "cardinality", "cbrt", "ceil", "ceiling", "char", "char_length", "character",
    "character_length", "chr", "clock_timestamp", "concat", "concat_ws", "corr", "count",
    "covar_pop", "covar_samp", "cume_dist", "current_database", "current_schema",
    "current_schemas", "current_setting", "date", "date_bin", "date_part", "date_trunc",
    "decimal", "decode", "degrees", "dense_rank", "div", "encode", "every", "exp", "first_value",
    "float4", "float8", "floor", "format", "format_type", "gen_random_uuid", "generate_series",
    "generate_subscripts", "has_table_privilege", "has_schema_privilege", "initcap", "int2",
    "int4", "int8", "interval", "isfinite", "json_agg", "json_array_elements",
    "json_array_length", "json_build_array", "json_build_object", "json_each", "json_extract_path",
    "json_extract_path_text", "json_object", "json_object_agg", "json_object_keys",
    "json_populate_record", "json_strip_nulls", "json_typeof", "jsonb_agg", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array", "jsonb_build_object",
    "jsonb_each", "jsonb_each_text", "jsonb_extract_path", "jsonb_extract_path_text",
    "jsonb_insert", "jsonb_object", "jsonb_object_agg", "jsonb_object_keys", "jsonb_path_query",
    "jsonb_pretty", "jsonb_set", "jsonb_strip_nulls", "jsonb_typeof", "justify_days",
    "justify_hours", "justify_interval", "lag", "last_value", "lead", "left", "length", "ln",
    "log", "lower", "lpad", "ltrim", "make_date", "make_interval", "make_time", "make_timestamp",
    "make_timestamptz", "max", "md5", "min", "mod", "mode", "now", "nth_value", "ntile",
    "num_nonnulls", "num_nulls", "numeric", "octet_length", "percent_rank", "percentile_cont",
    "percentile_disc", "pg_backend_pid", "pg_column_size", "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn", "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_relation_size",
    "pg_size_pretty", "pg_sleep", "pg_table_size", "pg_total_relation_size", "pg_typeof",
    "pi", "power", "quote_ident", "quote_literal", "quote_nullable", "radians", "random",
    "rank", "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "regexp_split_to_table", "repeat", "replace", "reverse", "right", "round", "row_number",
    "row_to_json", "rpad", "rtrim", "scale", "sign", "split_part", "sqrt", "starts_with",
    "statement_timestamp", "stddev", "stddev_pop", "stddev_samp", "string_agg",
    "string_to_array", "strpos", "substr", "sum", "time", "timeofday", "timestamp",
    "timestamptz", "timetz", "to_char", "to_date", "to_hex", "to_json", "to_jsonb",
    "to_number", "to_timestamp", "transaction_timestamp", "translate", "trunc", "unnest",
    "upper", "uuid", "var_pop", "var_samp", "variance", "varbit", "varchar", "version",
    "width_bucket", "txid_current", "pg_current_xact_id", "inet_client_addr",
    "inet_server_addr", "inet_server_port", "pg_postmaster_start_time", "obj_description",
    "col_description", "pg_get_indexdef", "pg_get_viewdef", "pg_get_constraintdef",
    "pg_get_expr", "pg_get_userbyid", "pg_table_is_visible", "pg_type_is_visible",
    "pg_encoding_to_char", "has_database_privilege", "has_column_privilege",
    "has_function_privilege", "pg_has_role", "array_fill", "string", "bool", "text", "oid",
    "regclass", "regtype", "float", "real", "double", "bigint", "integer", "smallint", "int",
    "boolean", "bytea", "json", "jsonb", "inet", "cidr", "point", "tsvector", "to_tsvector",
    "to_tsquery", "plainto_tsquery", "websearch_to_tsquery", "ts_rank", "setseed",
];

/// First words of statements that write rows (triggers may run).
const WRITE_VERBS: &[&str] = &["insert", "update", "delete", "merge", "copy", "truncate"];

/// First words of schema changes.
const DDL_VERBS: &[&str] = &["create", "alter", "drop", "comment", "import", "reindex"];

/// Classifies one statement for [`SettingsEffect`]: cheap (one pass over the text) and on the
/// safe side: what it does not recognize counts as opaque.
pub fn settings_effect(stmt: &str) -> SettingsEffect {
    plain_effect(stmt).unwrap_or_else(|| tokenized_effect(stmt))
}

/// [`settings_effect`] of a statement without a `(` (so without a call) and without a word
/// that writes anywhere in its text (inside strings too), whose first word is not SET, DO or
/// CALL: its first word says it all, with no tokens made. None for any other statement.
fn plain_effect(stmt: &str) -> Option<SettingsEffect> {
    let b = stmt.as_bytes();
    if memchr::memchr(b'(', b).is_some() {
        return None;
    }
    let writes = [&b"insert"[..], b"update", b"delete", b"merge"];
    if writes.iter().any(|w| find_ci(b, w).is_some()) {
        return None;
    }
    let first = first_word(stmt).as_bytes();
    let mut e = SettingsEffect::default();
    if listed(&["set", "do", "call"], first) {
        return None;
    }
    e.ddl = listed(DDL_VERBS, first);
    e.writes = !e.ddl && listed(WRITE_VERBS, first);
    Some(e)
}

/// [`settings_effect`] from the statement's tokens.
pub(crate) fn tokenized_effect(stmt: &str) -> SettingsEffect {
    let toks = tokens(stmt);
    let mut e = SettingsEffect::default();
    let first = match toks.first() {
        Some(Tok::Word(w)) => w.as_bytes(),
        _ => b"",
    };
    let word = |i: usize| match toks.get(i) {
        Some(Tok::Word(w)) => w.as_bytes(),
        _ => b"",
    };
    match first {
        // sets default_transaction_{isolation,read_only,deferrable}
        b"set" if word(1) == b"session" && word(2) == b"characteristics" => e.opaque = true,
        b"do" | b"call" => {
            e.opaque = true;
            e.ddl = true;
        }
        _ if listed(DDL_VERBS, first) => e.ddl = true,
        _ if listed(WRITE_VERBS, first) => e.writes = true,
        _ => {}
    }
    for (i, t) in toks.iter().enumerate() {
        // A quoted name is never a known builtin.
        let w = match t {
            Tok::Word(w) => w.as_bytes(),
            Tok::Quoted => b"\"",
            _ => continue,
        };
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        if matches!(w, b"insert" | b"delete" | b"merge")
            || (w == b"update"
                && !matches!(prev, Some(Tok::Word(p)) if matches!(p.as_bytes(), b"for" | b"key")))
        {
            // A write in a CTE, or a rule's action.
            e.writes = true;
        }
        if toks.get(i + 1) != Some(&Tok::Punct(b'(')) || listed(NOT_CALLS, w) {
            continue;
        }
        match prev {
            // a type modifier: `::numeric(10, 2)`
            Some(Tok::Punct(b':')) => continue,
            Some(Tok::Word(p)) if listed(OBJECT_BEFORE, p.as_bytes()) => continue,
            // `create index ... on t (col)`
            Some(Tok::Word(p)) if p.as_bytes() == b"on" && e.ddl => continue,
            // `schema.f(`: only pg_catalog's builtins are known
            Some(Tok::Punct(b'.')) => {
                let q = i.checked_sub(2).and_then(|p| toks.get(p));
                if !matches!(q, Some(Tok::Word(q)) if q.as_bytes() == b"pg_catalog") {
                    e.opaque = true;
                    continue;
                }
            }
            _ => {}
        }
        if w == b"set_config" {
            match toks.get(i + 2) {
                Some(Tok::Literal) => {}
                Some(Tok::Param(n)) if *n > 0 => e.name_params.push(*n),
                _ => e.opaque = true,
            }
        } else if !listed(PURE_BUILTINS, w) {
            e.opaque = true;
        }
    }
    e
}

/// Where [`read_all_settings_sql`] puts the settings it reads: a query returning (name, value)
/// rows for every setting of the session that is not at its connection default, plus the
/// custom `names` the client is known to have (placeholders are not in `pg_settings`) and
/// `role` (neither), then resetting them all. The server connection then has no setting of
/// this client left.
pub fn read_all_settings_sql(names: &[&String]) -> String {
    let mut sql = String::from(
        "SELECT lower(name), current_setting(name) FROM pg_catalog.pg_settings \
         WHERE source = 'session' \
         UNION ALL SELECT 'role', current_setting('role')",
    );
    for n in names {
        if n.contains('.') && is_setting_name(n) {
            sql.push_str(&format!(
                " UNION ALL SELECT {q}, current_setting({q}, true)",
                q = dollar_quote(n)
            ));
        }
    }
    sql.push_str("; RESET ALL; RESET ROLE");
    sql
}

/// The settings a client has after [`read_all_settings_sql`] returned `rows`: a custom setting
/// without a value (NULL: never set) and `role = none` are left out.
pub fn settings_from_rows(rows: Vec<Vec<String>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for mut r in rows {
        if r.len() != 2 {
            continue;
        }
        let v = r.pop().unwrap_or_default();
        let k = r.pop().unwrap_or_default();
        if !is_setting_name(&k) || (k == "role" && v == "none") {
            continue;
        }
        if k.contains('.') && v.is_empty() {
            continue;
        }
        out.insert(k, v);
    }
    out
}

/// ParameterStatus names that report facts about the server, not settings a client can make.
pub fn reported_not_settable(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "server_version"
            | "server_encoding"
            | "integer_datetimes"
            | "in_hot_standby"
            | "is_superuser"
            | "session_authorization"
    )
}

#[cfg(test)]
mod tests;
