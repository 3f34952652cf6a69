//! Statement analysis cost: the shape scan alone, a cache hit (the steady state of
//! `pgbench -S`), and a cache miss (shape + full `sqlparser` parse + classification) for
//! pgbench's statements. Targets: hit <= 1 us, miss <= 20 us.
//!
//! Run: `cargo bench --bench sql_analysis -- --quick`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::sql::{classify, shape, AnalysisCache};

/// pgbench's built-in scripts, extended-protocol text (`-M extended` / `-M prepared`).
const PGBENCH: &[(&str, &str)] = &[
    (
        "select_accounts",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "update_accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "update_tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    ),
    (
        "update_branches",
        "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    ),
    (
        "insert_history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    ),
];

/// `pgbench -S` in simple-protocol mode: the same statement with a different `aid` each time.
fn select_statements() -> Vec<String> {
    (0..1024)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                1 + i * 9_773 % 100_000
            )
        })
        .collect()
}

fn shape_scan(c: &mut Criterion) {
    let sqls = select_statements();
    let mut i = 0;
    c.bench_function("shape/pgbench_select_literal", |b| {
        b.iter(|| {
            i = (i + 1) % sqls.len();
            black_box(shape(black_box(&sqls[i])))
        })
    });
    let tpcb = PGBENCH[4].1;
    c.bench_function("shape/pgbench_insert_history", |b| {
        b.iter(|| black_box(shape(black_box(tpcb))))
    });
}

fn cache_hit(c: &mut Criterion) {
    let sqls = select_statements();
    let cache = AnalysisCache::new(10_000, Vec::new());
    cache.analyze(&sqls[0]);
    let mut i = 0;
    c.bench_function("cache_hit/pgbench_select_varying_aid", |b| {
        b.iter(|| {
            i = (i + 1) % sqls.len();
            black_box(cache.analyze(black_box(&sqls[i])))
        })
    });
    let prepared = PGBENCH[0].1;
    c.bench_function("cache_hit/pgbench_select_param", |b| {
        b.iter(|| black_box(cache.analyze(black_box(prepared))))
    });
}

fn cache_miss(c: &mut Criterion) {
    for (name, sql) in PGBENCH {
        c.bench_function(&format!("classify/{name}"), |b| {
            b.iter(|| black_box(classify(black_box(sql), &[])))
        });
    }
    // The whole miss path through the cache: a one-entry cache fed two shapes in turn, so
    // every call scans, looks up, parses, classifies, inserts and evicts.
    let cache = AnalysisCache::new(1, Vec::new());
    let pair = [PGBENCH[0].1, PGBENCH[1].1];
    let mut i = 0;
    c.bench_function("cache_miss/pgbench_select_update_alternating", |b| {
        b.iter(|| {
            i ^= 1;
            black_box(cache.analyze(black_box(pair[i])))
        })
    });
    assert_eq!(cache.hits(), 0);
}

criterion_group!(benches, shape_scan, cache_hit, cache_miss);
criterion_main!(benches);
