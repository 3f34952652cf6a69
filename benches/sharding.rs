//! Shard key cost: canonicalizing a key (text or binary form) plus the ring lookup, for a
//! 3-shard ring with 256 virtual nodes per shard. Target: well under 1 us per key.
//!
//! Run: `cargo bench --bench sharding -- --quick`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::config::{Config, KeyType};
use shardgate::shard::{Ring, ShardKey};

fn ring() -> Ring {
    let text = r#"
[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:5432"
[[databases.shards]]
name = "s1"
primary = "127.0.0.1:5433"
[[databases.shards]]
name = "s2"
primary = "127.0.0.1:5434"
"#;
    match Config::parse(text, "bench") {
        Ok(mut config) => Ring::new(&config.databases.remove(0)),
        Err(e) => panic!("bench config: {e}"),
    }
}

fn sharding(c: &mut Criterion) {
    let ring = ring();
    let aids: Vec<String> = (0..1024)
        .map(|i| (1 + i * 9_773 % 100_000).to_string())
        .collect();
    let binary: Vec<[u8; 8]> = (0..1024i64)
        .map(|i| (1 + i * 9_773).to_be_bytes())
        .collect();
    let uuids: Vec<String> = (0..1024u32)
        .map(|i| format!("a0eebc99-9c0b-4ef8-bb6d-{:012x}", u64::from(i) * 7_919))
        .collect();
    let mut i = 0;
    let mut next = || {
        i = (i + 1) % 1024;
        i
    };
    c.bench_function("ring/lookup_only_bigint", |b| {
        b.iter(|| ring.shard_for(black_box(&binary[next()])))
    });
    c.bench_function("ring/bigint_text_parse_and_lookup", |b| {
        b.iter(|| {
            let key = ShardKey::from_text(KeyType::Bigint, black_box(aids[next()].as_bytes()));
            key.map(|k| ring.shard_for(k.canonical().as_bytes()))
        })
    });
    c.bench_function("ring/bigint_binary_parse_and_lookup", |b| {
        b.iter(|| {
            let key = ShardKey::from_binary(KeyType::Bigint, black_box(&binary[next()]));
            key.map(|k| ring.shard_for(k.canonical().as_bytes()))
        })
    });
    c.bench_function("ring/uuid_text_parse_and_lookup", |b| {
        b.iter(|| {
            let key = ShardKey::from_text(KeyType::Uuid, black_box(uuids[next()].as_bytes()));
            key.map(|k| ring.shard_for(k.canonical().as_bytes()))
        })
    });
    c.bench_function("ring/text_parse_and_lookup", |b| {
        b.iter(|| {
            let key =
                ShardKey::from_text(KeyType::Text, black_box(b"customer-000123456".as_slice()));
            key.map(|k| ring.shard_for(k.canonical().as_bytes()))
        })
    });
}

/// The whole per-statement routing cost of a sharded `pgbench -S` statement on a cache hit:
/// shape scan + cached analysis lookup + key resolution + ring lookup.
fn routing(c: &mut Criterion) {
    let text = r#"
[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:5432"
[[databases.shards]]
name = "s1"
primary = "127.0.0.1:5433"
[[databases.sharded_tables]]
table = "pgbench_accounts"
column = "aid"
type = "bigint"
"#;
    let config = match Config::parse(text, "bench") {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    };
    let map = match shardgate::shard::route::ShardMap::new(&config.databases[0]) {
        Some(m) => m,
        None => panic!("not sharded"),
    };
    let cache = shardgate::sql::AnalysisCache::new(1000, Vec::new());
    let sqls: Vec<String> = (0..1024)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                1 + i * 977
            )
        })
        .collect();
    let mut i = 0;
    c.bench_function("route/pgbench_select_cache_hit", |b| {
        b.iter(|| {
            i = (i + 1) % 1024;
            let (a, literals) = cache.analyze(black_box(&sqls[i]));
            let facts = a.shard.as_deref();
            facts.map(|f| map.route(f, &a.tables, &literals, None))
        })
    });
}

criterion_group!(benches, sharding, routing);
criterion_main!(benches);
