//! Locking clauses make a SELECT a write, wherever they appear.

use super::{analyze, assert_kinds};
use crate::sql::Kind;

#[test]
fn every_lock_strength_is_a_write() {
    for sql in [
        "SELECT * FROM t WHERE id = 1 FOR UPDATE",
        "SELECT * FROM t FOR UPDATE OF t SKIP LOCKED",
        "SELECT * FROM t FOR SHARE NOWAIT",
        // Not in sqlparser 0.64's grammar: rewritten to FOR UPDATE / FOR SHARE and parsed again.
        "SELECT * FROM t FOR NO KEY UPDATE",
        "select * from t for no key update of t skip locked",
        "SELECT * FROM t FOR KEY SHARE NOWAIT",
    ] {
        let a = analyze(sql);
        assert_eq!(a.kind, Kind::Write, "{sql}: {a:?}");
        assert!(a.for_update, "{sql}");
        assert_eq!(a.tables, ["t"], "{sql}");
    }
}

#[test]
fn locks_in_subqueries_and_ctes_count() {
    assert_kinds(
        Kind::Write,
        &[
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM t FOR UPDATE)",
            "SELECT * FROM (SELECT * FROM t FOR SHARE) s",
            "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
        ],
    );
}

#[test]
fn lock_words_in_literals_do_not_count() {
    let a = analyze("SELECT 'FOR UPDATE', 'for no key update' AS \"FOR SHARE\"");
    assert_eq!(a.kind, Kind::Read);
    assert!(!a.for_update);
}
