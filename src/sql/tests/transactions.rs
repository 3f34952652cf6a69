//! Transaction control: BEGIN (READ ONLY), SET TRANSACTION, COMMIT, ROLLBACK, savepoints.

use super::{assert_kinds, kind};
use crate::sql::Kind;

#[test]
fn begin_and_its_access_mode() {
    let rw = Kind::Begin { read_only: false };
    let ro = Kind::Begin { read_only: true };
    assert_kinds(
        rw,
        &[
            "BEGIN",
            "begin transaction",
            "BEGIN WORK",
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION",
            "START TRANSACTION READ WRITE",
            "BEGIN READ ONLY, READ WRITE",
        ],
    );
    assert_kinds(
        ro,
        &[
            "BEGIN READ ONLY",
            "begin transaction read only",
            "START TRANSACTION READ ONLY",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            // DEFERRABLE is not in sqlparser 0.64's grammar; the analyzer drops it and retries.
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            "START TRANSACTION READ ONLY, NOT DEFERRABLE",
        ],
    );
}

#[test]
fn set_transaction_read_only() {
    assert_kinds(
        Kind::SetTransactionReadOnly,
        &[
            "SET TRANSACTION READ ONLY",
            "set transaction isolation level serializable, read only",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        ],
    );
    // Other transaction settings, and the session default, are plain settings.
    assert_kinds(
        Kind::Set,
        &[
            "SET TRANSACTION READ WRITE",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        ],
    );
}

#[test]
fn commit_and_rollback() {
    assert_kinds(
        Kind::Commit,
        &["COMMIT", "commit work", "END", "COMMIT AND NO CHAIN"],
    );
    assert_kinds(
        Kind::Rollback,
        &["ROLLBACK", "ABORT", "rollback transaction"],
    );
}

#[test]
fn savepoints_and_chains_keep_the_transaction() {
    assert_kinds(
        Kind::Other,
        &[
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "RELEASE a",
            "ROLLBACK TO SAVEPOINT a",
            "ROLLBACK TO a",
            "COMMIT AND CHAIN",
            "ROLLBACK AND CHAIN",
        ],
    );
    assert_ne!(kind("ROLLBACK TO a"), Kind::Rollback);
}

#[test]
fn read_only_transaction_in_one_string() {
    let ro = Kind::Begin { read_only: true };
    assert_kinds(
        ro,
        &[
            "BEGIN READ ONLY; SELECT 1; COMMIT",
            "BEGIN; SET TRANSACTION READ ONLY; SELECT * FROM t",
        ],
    );
    assert_kinds(
        Kind::Write,
        &[
            "BEGIN; SELECT 1; COMMIT",
            "BEGIN READ ONLY; SELECT 1; COMMIT; INSERT INTO t VALUES (1)",
        ],
    );
}
