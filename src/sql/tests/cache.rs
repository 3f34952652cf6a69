//! The analysis cache: hits skip the parser, capacity bounds it.

use std::sync::Arc;

use crate::sql::cache::{AnalysisCache, MAX_CACHED_SHAPE_LEN};
use crate::sql::{Kind, Literal};

#[test]
fn second_statement_of_a_shape_is_a_hit() {
    let cache = AnalysisCache::new(100, Vec::new());
    let (a, lits) = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 81212;");
    assert_eq!((cache.hits(), cache.misses()), (0, 1));
    assert_eq!(a.kind, Kind::Read);
    assert_eq!(lits, [Literal::Number("81212".into())]);

    let (b, lits) = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 5");
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    assert!(
        Arc::ptr_eq(&a, &b),
        "a hit returns the cached analysis, not a new parse"
    );
    assert_eq!(lits, [Literal::Number("5".into())]);
    assert_eq!(cache.len(), 1);
}

#[test]
fn different_shapes_miss() {
    let cache = AnalysisCache::new(100, Vec::new());
    cache.analyze("SELECT 1");
    let (w, _) = cache.analyze("UPDATE t SET a = 1");
    assert_eq!(w.kind, Kind::Write);
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 2));
}

#[test]
fn bounded_capacity_evicts_least_recently_used() {
    let cache = AnalysisCache::new(2, Vec::new());
    assert_eq!(cache.capacity(), 2);
    cache.analyze("SELECT a FROM t WHERE x = 1");
    cache.analyze("SELECT b FROM t WHERE x = 1");
    cache.analyze("SELECT a FROM t WHERE x = 2"); // hit: `a` is now the most recent
    cache.analyze("SELECT c FROM t WHERE x = 1"); // evicts `b`
    assert_eq!(cache.len(), 2);
    assert_eq!((cache.hits(), cache.misses()), (1, 3));
    cache.analyze("SELECT a FROM t WHERE x = 3");
    assert_eq!((cache.hits(), cache.misses()), (2, 3));
    cache.analyze("SELECT b FROM t WHERE x = 3");
    assert_eq!((cache.hits(), cache.misses()), (2, 4));
}

#[test]
fn large_capacity_is_sharded_but_bounded() {
    let cache = AnalysisCache::new(2000, Vec::new());
    for i in 0..5000 {
        cache.analyze(&format!("SELECT c{i} FROM t"));
    }
    assert!(cache.len() <= 2000 + 15, "{}", cache.len());
    assert!(cache.len() >= 1500, "{}", cache.len());
}

#[test]
fn configured_write_functions_apply() {
    let cache = AnalysisCache::new(10, vec!["bump".into()]);
    assert_eq!(cache.analyze("SELECT bump(1)").0.kind, Kind::Write);
    assert_eq!(cache.analyze("SELECT bump(2)").0.kind, Kind::Write);
    assert_eq!(cache.hits(), 1);
}

#[test]
fn unparsed_text_is_cached_too() {
    let cache = AnalysisCache::new(10, Vec::new());
    assert_eq!(cache.analyze("SELEC 1").0.kind, Kind::Unparsed);
    assert_eq!(cache.analyze("SELEC 2").0.kind, Kind::Unparsed);
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
}

#[test]
fn huge_shapes_are_not_cached() {
    let cache = AnalysisCache::new(10, Vec::new());
    let sql = format!(
        "SELECT {} FROM t",
        "a, ".repeat(MAX_CACHED_SHAPE_LEN / 3) + "a"
    );
    assert_eq!(cache.analyze(&sql).0.kind, Kind::Read);
    assert_eq!(cache.analyze(&sql).0.kind, Kind::Read);
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 0));
    assert!(cache.is_empty());
}

#[test]
fn shared_between_threads() {
    let cache = Arc::new(AnalysisCache::new(100, Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for i in 0..100 {
                    let (a, l) =
                        cache.analyze(&format!("SELECT * FROM t WHERE id = {}", t * 1000 + i));
                    assert_eq!(a.kind, Kind::Read);
                    assert_eq!(l.len(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(cache.hits() + cache.misses(), 400);
    assert_eq!(cache.len(), 1);
    assert!(cache.misses() <= 4, "at most one parse per racing thread");
}
