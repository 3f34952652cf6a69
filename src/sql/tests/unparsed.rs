//! Text sqlparser cannot parse is `Unparsed` (the router sends it to the primary).

use super::analyze;
use crate::sql::Kind;

#[test]
fn syntax_errors_are_unparsed_with_a_message() {
    for sql in [
        "SELEC 1",
        "SELECT 1 +",
        "SELECT 'unterminated",
        "SELECT (1",
        "UPDATE SET",
    ] {
        let a = analyze(sql);
        assert_eq!(a.kind, Kind::Unparsed, "{sql}: {a:?}");
        assert!(a.parse_error.is_some(), "{sql}");
        assert!(a.tables.is_empty() && a.statements == 0, "{sql}");
    }
}

/// Valid PostgreSQL that sqlparser 0.64 rejects (and `patch` does not rewrite). `Unparsed`
/// goes to the primary, which is right for every one of them. A canary for sqlparser
/// upgrades: whatever a newer version makes of these must still not be a read.
#[test]
fn postgres_syntax_sqlparser_lacks_is_unparsed() {
    for sql in [
        "DO $$ BEGIN PERFORM 1; END $$",
        "PREPARE TRANSACTION 'tx1'",
        "COMMIT PREPARED 'tx1'",
        "CLUSTER t",
        "REINDEX TABLE t",
        "CHECKPOINT",
        "MOVE NEXT FROM c",
        "FETCH NEXT c",
        "SELECT * FROM ROWS FROM (generate_series(1, 2), nextval('s'))",
        "SELECT xmlelement(name foo)",
    ] {
        let a = analyze(sql);
        assert_eq!(a.kind, Kind::Unparsed, "{sql}: {a:?}");
    }
}

#[test]
fn one_bad_statement_makes_the_whole_string_unparsed() {
    assert_eq!(analyze("SELECT 1; SELEC 2").kind, Kind::Unparsed);
}
