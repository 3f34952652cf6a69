//! Shard-routing facts: key conditions with values referenced by shape literal index or
//! parameter number, INSERT rows, UPDATE assignments, COPY options, broadcast statements.

use super::analyze;
use crate::sql::analyze::shard::{ColumnRef, Command, KeyFilter, ShardFacts, ValueRef};
use crate::sql::shape;

fn facts(sql: &str) -> ShardFacts {
    *analyze(sql).shard.expect("single statement")
}

fn lit(index: usize) -> ValueRef {
    ValueRef::Literal {
        index,
        negative: false,
    }
}

fn col(table: &str, column: &str) -> ColumnRef {
    ColumnRef {
        table: table.into(),
        column: column.into(),
    }
}

#[test]
fn equality_and_in_filters_reference_literals_and_params() {
    let f = facts("SELECT abalance FROM pgbench_accounts WHERE aid = 42");
    assert_eq!(f.command, Command::Select);
    assert_eq!(f.tables, ["pgbench_accounts"]);
    assert_eq!(
        f.filters,
        [KeyFilter {
            column: col("pgbench_accounts", "aid"),
            values: vec![lit(0)]
        }]
    );
    let f = facts(
        "SELECT * FROM t WHERE x > 3 AND 'a' = name AND id IN (1, -2, $3) AND k = $1::bigint",
    );
    assert_eq!(f.filters.len(), 3, "{f:?}");
    assert_eq!(f.filters[0].values, [lit(1)]);
    assert_eq!(f.filters[0].column, col("t", "name"));
    assert_eq!(
        f.filters[1].values,
        [
            lit(2),
            ValueRef::Literal {
                index: 3,
                negative: true
            },
            lit(4)
        ]
    );
    assert_eq!(f.filters[2].values, [lit(5)]);
    // OR does not fix a key.
    assert!(facts("SELECT * FROM t WHERE id = 1 OR id = 2")
        .filters
        .is_empty());
}

#[test]
fn literal_indices_match_the_shape_across_lines_and_utf8() {
    let sql = "SELECT 'ü', 7\nFROM t\n  WHERE note = 'é' AND id = E'x\\'y'";
    let s = shape(sql);
    let f = facts(sql);
    assert_eq!(f.filters[0].values, [lit(2)]);
    assert_eq!(f.filters[1].values, [lit(3)]);
    assert_eq!(s.literals.len(), 4);
}

#[test]
fn aliases_joins_and_column_equalities() {
    let f = facts(
        "SELECT * FROM orders o JOIN customers AS c ON o.customer_id = c.id \
         LEFT JOIN notes n ON n.order_id = o.id AND n.kind = 'x' WHERE c.id = 5",
    );
    assert_eq!(f.tables, ["orders", "customers", "notes"]);
    assert!(f
        .column_equalities
        .contains(&(col("orders", "customer_id"), col("customers", "id"))));
    assert_eq!(
        f.filters,
        [KeyFilter {
            column: col("customers", "id"),
            values: vec![lit(1)]
        }],
        "a LEFT JOIN's ON values do not filter"
    );
    let f = facts("SELECT * FROM a, b WHERE id = 1");
    assert_eq!(
        f.filters[0].column,
        col("", "id"),
        "ambiguous without a qualifier"
    );
}

#[test]
fn insert_rows_update_sets_and_delete() {
    let f = facts("INSERT INTO t (id, v) VALUES (1, 'a'), ($1, 'b') RETURNING id");
    let ins = f.insert.unwrap();
    assert_eq!(ins.table, "t");
    assert_eq!(ins.columns, ["id", "v"]);
    assert_eq!(ins.rows, [vec![lit(0), lit(1)], vec![lit(2), lit(3)]]);
    assert!(ins.returning);
    let f = facts("INSERT INTO t SELECT * FROM u");
    assert!(f.nested && f.insert.unwrap().rows.is_empty());

    let f = facts("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2");
    assert_eq!(f.command, Command::Update);
    assert_eq!(f.set_columns, ["abalance"]);
    assert_eq!(f.filters[0].values, [lit(1)]);

    let f = facts("DELETE FROM t WHERE id = 9");
    assert_eq!(f.command, Command::Delete);
    assert_eq!(f.filters[0].column, col("t", "id"));
}

#[test]
fn copy_options() {
    let f = facts("COPY pgbench_accounts (aid, bid) FROM STDIN WITH (FORMAT csv, HEADER true)");
    let c = f.copy.unwrap();
    assert_eq!(c.table, "pgbench_accounts");
    assert_eq!(c.columns, ["aid", "bid"]);
    assert!(c.from_stdin && c.csv && c.header && !c.to_stdout);
    assert_eq!(c.delimiter, ',');
    let c = facts("copy t from stdin").copy.unwrap();
    assert!(c.from_stdin && !c.csv);
    assert_eq!(c.delimiter, '\t');
    let c = facts("COPY t TO STDOUT").copy.unwrap();
    assert!(c.to_stdout);
}

#[test]
fn copy_options_the_splitter_cannot_follow_are_flagged() {
    for sql in [
        "COPY t FROM STDIN WITH (FORMAT csv, QUOTE '''')",
        "COPY t FROM STDIN WITH (FORMAT csv, ESCAPE '\\')",
        "COPY t FROM STDIN WITH (NULL 'x')",
        "COPY t FROM STDIN WITH (ENCODING 'LATIN1')",
        "COPY t FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL (a))",
        "COPY t FROM STDIN CSV QUOTE AS ''''",
        "COPY t FROM STDIN NULL AS 'x'",
    ] {
        let c = facts(sql).copy.unwrap_or_else(|| panic!("{sql}"));
        assert!(c.unsupported.is_some(), "{sql}");
    }
    for sql in [
        "COPY t FROM STDIN WITH (FORMAT csv, HEADER true, QUOTE '\"', FREEZE true)",
        "COPY t FROM STDIN CSV HEADER",
        "COPY t FROM STDIN WITH (DELIMITER '|')",
    ] {
        let c = facts(sql).copy.unwrap_or_else(|| panic!("{sql}"));
        assert_eq!(c.unsupported, None, "{sql}");
    }
    assert!(facts("COPY t FROM STDIN CSV HEADER").copy.unwrap().header);
}

#[test]
fn schema_changes_are_broadcast() {
    for sql in [
        "CREATE TABLE t (id int)",
        "DROP TABLE IF EXISTS t",
        "ALTER TABLE t ADD COLUMN x int",
        "CREATE INDEX ON t (id)",
        "TRUNCATE t",
    ] {
        assert_eq!(facts(sql).command, Command::Broadcast, "{sql}");
    }
}

#[test]
fn subqueries_are_flagged() {
    assert!(facts("SELECT * FROM t WHERE id IN (SELECT id FROM u)")
        .filters
        .is_empty());
    assert!(facts("WITH x AS (SELECT 1) SELECT * FROM x").nested);
    assert!(facts("SELECT * FROM (SELECT 1) s").nested);
}

#[test]
fn a_shape_shared_by_a_literal_and_a_parameter_resolves_either() {
    // Cached by shape: the facts of `aid = 1` serve `aid = $1` too, through the shape literal.
    let a = facts("SELECT aid FROM accounts WHERE aid = 1");
    let b = facts("SELECT aid FROM accounts WHERE aid = $1");
    assert_eq!(a.filters, b.filters);
    assert_eq!(
        shape("SELECT aid FROM accounts WHERE aid = $1").literals,
        [crate::sql::Literal::Param(1)]
    );
}

#[test]
fn pgbench_copy_with_freeze_on_has_copy_facts() {
    let f = facts("copy pgbench_accounts from stdin with (freeze on)");
    let c = f.copy.unwrap();
    assert!(c.from_stdin && !c.csv);
    assert_eq!(c.table, "pgbench_accounts");
}
