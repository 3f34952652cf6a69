//! Functions with side effects: a `SELECT` that calls one must run on the primary.
//!
//! Names are matched case-insensitively. Built-in names match whatever the schema
//! (`pg_catalog.nextval` and `nextval` alike; a user function of the same name in another
//! schema too, which errs on the safe side). A configured entry `name` matches `name` in any
//! schema; `schema.name` matches that schema and unqualified calls (which `search_path` may
//! resolve to it), but not `other.name`.

/// Functions that write, take locks, or depend on the primary's session or WAL state, so a
/// `SELECT` calling them must run on the primary. Matched case-insensitively on the last part
/// of the function name, whatever the schema (`pg_catalog.nextval` matches `nextval`).
/// `currval`/`lastval` only make sense on the connection that ran `nextval`; the WAL and
/// replication-slot functions fail on a standby.
pub const BUILTIN_WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
];

/// Name prefixes of function families that write or lock: every advisory-lock function
/// (`pg_advisory_lock`, `pg_advisory_xact_lock_shared`, `pg_try_advisory_lock`, the unlocks)
/// and every large-object function (`lo_import`, `lo_create`, `lo_put`, `lo_from_bytea`, ...).
pub const BUILTIN_WRITE_FUNCTION_PREFIXES: &[&str] = &["pg_advisory_", "pg_try_advisory_", "lo_"];

/// Whether a call to the function named `parts` (its qualified name, outermost part first)
/// has side effects, given the configured `extra` names.
pub fn is_write_function<'a, I>(parts: I, extra: &[String]) -> bool
where
    I: DoubleEndedIterator<Item = &'a str> + Clone,
{
    let Some(last) = parts.clone().next_back() else {
        return false;
    };
    let last = last.as_bytes();
    let builtin = BUILTIN_WRITE_FUNCTIONS
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(last))
        || BUILTIN_WRITE_FUNCTION_PREFIXES
            .iter()
            .any(|p| last.len() > p.len() && last[..p.len()].eq_ignore_ascii_case(p.as_bytes()));
    builtin
        || extra
            .iter()
            .any(|entry| configured_match(parts.clone(), entry))
}

/// `entry` (`name` or `schema.name`) against a call's name, compared part by part from the
/// right over the shorter of the two.
fn configured_match<'a>(parts: impl DoubleEndedIterator<Item = &'a str>, entry: &str) -> bool {
    let entry = entry.trim();
    !entry.is_empty()
        && entry
            .rsplit('.')
            .zip(parts.rev())
            .all(|(want, got)| got.eq_ignore_ascii_case(want.trim()))
}
