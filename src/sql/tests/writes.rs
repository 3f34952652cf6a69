//! Statements that change data or schema: DML, DDL, maintenance, SELECT INTO, and anything
//! the analyzer does not know to be harmless.

use super::{analyze, assert_kinds};
use crate::sql::Kind;

#[test]
fn pgbench_tpcb_statements_are_writes() {
    let a = analyze("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2");
    assert_eq!(
        (a.kind, a.tables.clone()),
        (Kind::Write, vec!["pgbench_accounts".into()])
    );
    let a = analyze(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    );
    assert_eq!(
        (a.kind, a.tables.clone()),
        (Kind::Write, vec!["pgbench_history".into()])
    );
}

#[test]
fn dml_is_a_write() {
    assert_kinds(
        Kind::Write,
        &[
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t SELECT * FROM u RETURNING *",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b",
            "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
            "DELETE FROM t USING u WHERE t.id = u.id RETURNING t.id",
            "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = s.b",
            "COPY t FROM STDIN",
            "COPY t TO '/tmp/t.csv'",
        ],
    );
    assert_eq!(analyze("INSERT INTO t SELECT * FROM u").tables, ["t", "u"]);
}

#[test]
fn select_into_is_a_write() {
    let a = analyze("SELECT * INTO newtable FROM t");
    assert_eq!(a.kind, Kind::Write);
    assert_eq!(a.tables, ["t"]);
}

#[test]
fn ddl_maintenance_and_unknown_statements_are_writes() {
    assert_kinds(
        Kind::Write,
        &[
            "CREATE TABLE x (a int primary key)",
            "CREATE TABLE x AS SELECT * FROM t",
            "ALTER TABLE x ADD COLUMN b int",
            "DROP TABLE IF EXISTS x, y CASCADE",
            "TRUNCATE x",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "VACUUM x",
            "ANALYZE x",
            "REFRESH MATERIALIZED VIEW v",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "GRANT SELECT ON t TO u",
            "COMMENT ON TABLE t IS 'x'",
            "CALL do_something(1)",
            "EXECUTE stmt(1)",
            "NOTIFY channel, 'payload'",
        ],
    );
    assert_eq!(analyze("DROP TABLE x, s.y").tables, ["x", "s.y"]);
}
