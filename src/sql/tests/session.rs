//! SET / RESET / SHOW and the session utilities that neither read nor write table data.

use super::{analyze, assert_kinds};
use crate::sql::Kind;

#[test]
fn set_and_reset() {
    assert_kinds(
        Kind::Set,
        &[
            "SET search_path TO a, b",
            "SET LOCAL statement_timeout = 5",
            "set session application_name = 'x'",
            "SET TIME ZONE 'UTC'",
            "SET ROLE r",
            "SET SESSION AUTHORIZATION u",
            "RESET ALL",
            "RESET search_path",
        ],
    );
}

#[test]
fn show_is_its_own_kind() {
    assert_kinds(
        Kind::Show,
        &[
            "SHOW search_path",
            "SHOW ALL",
            "show transaction_read_only",
            "SHOW TRANSACTION ISOLATION LEVEL",
        ],
    );
}

#[test]
fn session_utilities_are_other() {
    assert_kinds(
        Kind::Other,
        &[
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "DEALLOCATE PREPARE p",
            "PREPARE p (int) AS SELECT $1",
            "PREPARE p AS UPDATE t SET a = 1",
            "LISTEN channel",
            "UNLISTEN *",
            "FETCH 10 FROM c",
            "CLOSE c",
        ],
    );
}

#[test]
fn empty_query_is_other() {
    for sql in ["", "  ", ";", "-- nothing\n"] {
        let a = analyze(sql);
        assert_eq!((a.kind, a.statements), (Kind::Other, 0), "{sql:?}");
    }
}
