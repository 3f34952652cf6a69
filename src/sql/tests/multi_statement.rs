//! Query strings with several statements: a read only if every statement reads.

use super::{analyze, assert_kinds};
use crate::sql::Kind;

#[test]
fn all_reads_is_a_read() {
    let a = analyze("SELECT * FROM a; SELECT * FROM b;");
    assert_eq!((a.kind, a.statements), (Kind::Read, 2));
    assert_eq!(a.tables, ["a", "b"]);
}

#[test]
fn any_non_read_makes_a_write() {
    assert_kinds(
        Kind::Write,
        &[
            "SELECT 1; UPDATE t SET a = 1",
            "UPDATE t SET a = 1; SELECT 1",
            "SELECT 1; SELECT nextval('s')",
            "SELECT 1; SELECT * FROM t FOR UPDATE",
            "BEGIN; SELECT 1; COMMIT",
            "SET search_path TO x; SELECT 1",
        ],
    );
}

#[test]
fn reads_and_shows_together_are_a_show() {
    assert_eq!(analyze("SHOW search_path; SELECT 1").kind, Kind::Show);
}

#[test]
fn effects_of_any_statement_are_reported() {
    let a = analyze("SELECT 1; SELECT * FROM t FOR UPDATE; SELECT nextval('s')");
    assert!(a.for_update);
    assert_eq!(a.write_function.as_deref(), Some("nextval"));
    assert_eq!(a.statements, 3);
}

#[test]
fn semicolons_in_literals_and_comments_do_not_split() {
    let a = analyze("SELECT ';' /* ; */ , $$;$$ -- ;\n");
    assert_eq!((a.kind, a.statements), (Kind::Read, 1));
}
