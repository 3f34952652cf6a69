//! Unit tests of transaction-control classification.

use super::{control, Control};

#[test]
fn finds_transaction_control() {
    let cases = [
        ("COMMIT", Some(Control::Commit)),
        ("end transaction", Some(Control::Commit)),
        ("COMMIT AND NO CHAIN", Some(Control::Commit)),
        (
            "commit/**/and/* x /* nested */ */chain",
            Some(Control::Chain),
        ),
        ("COMMIT WORK AND CHAIN", Some(Control::Chain)),
        ("ROLLBACK AND CHAIN", Some(Control::Chain)),
        ("abort", Some(Control::Rollback)),
        ("ROLLBACK TRANSACTION", Some(Control::Rollback)),
        ("ROLLBACK TO a", Some(Control::RollbackTo)),
        ("rollback work to savepoint a", Some(Control::RollbackTo)),
        ("-- c\nSAVEPOINT a", Some(Control::Savepoint)),
        ("RELEASE a", Some(Control::Release)),
        ("release savepoint a", Some(Control::Release)),
        ("PREPARE TRANSACTION 'x'", Some(Control::Prepare)),
        ("COMMIT PREPARED 'x'", Some(Control::Prepared)),
        ("ROLLBACK PREPARED 'x'", Some(Control::Prepared)),
        ("PREPARE s AS SELECT 1", None),
        ("SET search_path = a", Some(Control::Set)),
        ("set/**/local statement_timeout = 5", Some(Control::Set)),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Some(Control::Set),
        ),
        ("RESET ALL", Some(Control::Set)),
        ("select SET_CONFIG($1, $2, true)", Some(Control::Set)),
        ("SELECT 'set'", None),
        ("settle", None),
        ("SELECT 'commit'", None),
        ("committed", None),
        ("\u{e9}commit", None),
        ("", None),
    ];
    for (sql, want) in cases {
        assert_eq!(control(sql), want, "{sql}");
    }
}
