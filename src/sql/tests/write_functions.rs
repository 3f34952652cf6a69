//! Calls to functions with side effects make a read a write: built-in, configured, qualified.

use super::{analyze, assert_kinds, kind};
use crate::sql::{classify, Kind};

#[test]
fn builtin_write_functions_anywhere_make_a_write() {
    for (sql, f) in [
        ("SELECT nextval('s')", "nextval"),
        ("SELECT setval('s', 42)", "setval"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        (
            "SELECT pg_advisory_xact_lock_shared(1)",
            "pg_advisory_xact_lock_shared",
        ),
        ("SELECT pg_try_advisory_lock(1, 2)", "pg_try_advisory_lock"),
        ("SELECT pg_advisory_unlock_all()", "pg_advisory_unlock_all"),
        ("SELECT set_config('a.b', 'c', false)", "set_config"),
        ("SELECT lo_import('/tmp/x')", "lo_import"),
        ("SELECT lo_create(0)", "lo_create"),
        ("SELECT lo_unlink(42)", "lo_unlink"),
        ("SELECT lo_put(42, 0, '\\x00')", "lo_put"),
        ("SELECT lo_from_bytea(0, 'x')", "lo_from_bytea"),
        ("SELECT pg_notify('ch', 'x')", "pg_notify"),
        ("SELECT txid_current()", "txid_current"),
        ("SELECT pg_current_xact_id()", "pg_current_xact_id"),
        ("SELECT id FROM t WHERE id = nextval('s')", "nextval"),
        (
            "SELECT * FROM t WHERE a IN (SELECT nextval('s'))",
            "nextval",
        ),
        (
            "WITH x AS (SELECT setval('s', 1)) SELECT * FROM x",
            "setval",
        ),
        ("SELECT * FROM nextval('s')", "nextval"),
        (
            "SELECT * FROM t ORDER BY pg_try_advisory_lock(t.id)",
            "pg_try_advisory_lock",
        ),
        ("VALUES (nextval('s'))", "nextval"),
        (
            "SELECT coalesce(max(a), nextval('s')) FROM t GROUP BY b",
            "nextval",
        ),
    ] {
        let a = analyze(sql);
        assert_eq!(a.kind, Kind::Write, "{sql}: {a:?}");
        assert_eq!(a.write_function.as_deref(), Some(f), "{sql}");
    }
}

#[test]
fn names_match_case_insensitively_and_ignore_the_schema() {
    assert_kinds(
        Kind::Write,
        &[
            "SELECT NEXTVAL('s')",
            "select Pg_Advisory_Lock(1)",
            "SELECT pg_catalog.nextval('s')",
            "SELECT PG_CATALOG.set_config('a', 'b', true)",
            "SELECT pg_catalog.lo_unlink(1)",
        ],
    );
    assert_eq!(
        analyze("SELECT pg_catalog.nextval('s')")
            .write_function
            .as_deref(),
        Some("pg_catalog.nextval")
    );
}

#[test]
fn similar_names_and_string_mentions_are_reads() {
    assert_kinds(
        Kind::Read,
        &[
            "SELECT 'nextval(1)', nextval_count FROM t",
            "SELECT lo FROM t",
            "SELECT my_nextval('s')",
            "SELECT currval_like FROM t",
        ],
    );
    // Families match by prefix, so any name in them counts (conservatively).
    assert_eq!(kind("SELECT pg_advisory_lockx(1)"), Kind::Write);
}

#[test]
fn configured_write_functions() {
    let list = vec!["bump_counter".to_string(), "Audit.Log_Access".to_string()];
    let c = |sql: &str| classify(sql, &list).kind;
    assert_eq!(c("SELECT bump_counter(1)"), Kind::Write);
    assert_eq!(c("SELECT BUMP_COUNTER(1)"), Kind::Write);
    assert_eq!(c("SELECT app.bump_counter(1)"), Kind::Write);
    assert_eq!(
        c("SELECT * FROM t WHERE bump_counter(t.id) > 0"),
        Kind::Write
    );
    // A qualified entry matches that schema and unqualified calls (search_path), not others.
    assert_eq!(c("SELECT audit.log_access('x')"), Kind::Write);
    assert_eq!(c("SELECT log_access('x')"), Kind::Write);
    assert_eq!(c("SELECT other.log_access('x')"), Kind::Read);
    assert_eq!(c("SELECT bump_counter_total(1)"), Kind::Read);
    // Without the list the same calls read.
    assert_eq!(kind("SELECT bump_counter(1)"), Kind::Read);
}
