//! Data-modifying WITH clauses make the statement a write.

use super::{analyze, kind};
use crate::sql::Kind;

#[test]
fn dml_in_a_cte_is_a_write() {
    for sql in [
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
        "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
        "WITH x AS (DELETE FROM t WHERE a < 0 RETURNING *) SELECT count(*) FROM x",
        "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING id) SELECT * FROM a, b",
    ] {
        let a = analyze(sql);
        assert_eq!(a.kind, Kind::Write, "{sql}: {a:?}");
        assert!(a.writing_cte, "{sql}");
        assert_eq!(a.tables, ["t"], "{sql}");
    }
}

#[test]
fn nested_writing_cte_is_a_write() {
    assert_eq!(
        kind("SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) s"),
        Kind::Write
    );
}

#[test]
fn read_only_ctes_and_ctes_feeding_dml() {
    let a = analyze("WITH x AS (SELECT * FROM t) SELECT * FROM x");
    assert_eq!((a.kind, a.writing_cte), (Kind::Read, false));
    // The CTE only reads; the statement writes through its body.
    let a = analyze("WITH x AS (SELECT * FROM u) INSERT INTO t SELECT * FROM x");
    assert_eq!((a.kind, a.writing_cte), (Kind::Write, false));
    assert_eq!(a.tables, ["u", "t"]);
}
