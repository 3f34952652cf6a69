//! Unit tests of the statement analyzer, one file per statement-kind family, plus the shape
//! scanner and the cache.

use crate::sql::{classify, Analysis, Kind};

mod cache;
mod locking;
mod multi_statement;
mod reads;
mod session;
mod shape;
mod shard_facts;
mod transactions;
mod unparsed;
mod write_functions;
mod writes;
mod writing_ctes;

/// Classifies with no configured write functions.
fn analyze(sql: &str) -> Analysis {
    classify(sql, &[])
}

/// The kind of `sql` with no configured write functions.
fn kind(sql: &str) -> Kind {
    analyze(sql).kind
}

/// Asserts that every statement has the expected kind, naming the first that does not.
fn assert_kinds(expected: Kind, statements: &[&str]) {
    for sql in statements {
        let a = analyze(sql);
        assert_eq!(a.kind, expected, "{sql}: {a:?}");
    }
}
