//! pgbench over three shards, with the example shard map of
//! `shard-config/sharded-pgbench.toml` (accounts by aid, branches by bid, tellers by tid,
//! history by aid) and two-phase commit: `pgbench -i` through the proxy (DDL broadcast,
//! TRUNCATE and COPY split inside one transaction across shards, VACUUM broadcast), then
//! `-S` in simple, extended and prepared mode and the TPC-B-like script, all with zero failed
//! transactions; afterwards every row is on its owning shard, accounts are spread evenly and
//! the balances add up (atomic cross-shard transactions).

use integration_tests::{pgbench, pgbench_number, Proxy};
use shardgate::config::Config;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

fn shard_cluster() -> PgCluster {
    let c = PgCluster::start(ClusterOptions {
        hba_method: "md5".into(),
        extra_conf: vec![
            "max_prepared_transactions = 100".into(),
            "max_connections = 200".into(),
        ],
        ..ClusterOptions::default()
    })
    .expect("start shard");
    c.create_role("app", "app", PasswordMethod::Scram).unwrap();
    c.create_database("app", "app").unwrap();
    c
}

/// The example config with its shard addresses replaced by ours (and a third shard).
fn config(clusters: &[PgCluster]) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shard-config/sharded-pgbench.toml"
    ))
    .unwrap();
    let text = text
        .replace("127.0.0.1:6432", "127.0.0.1:0")
        .replace("127.0.0.1:5432", &clusters[0].addr())
        .replace("127.0.0.1:5433", &clusters[1].addr());
    let third = format!(
        "[[databases.shards]]\nname = \"s2\"\nprimary = \"{}\"\n\n[[databases.sharded_tables]]",
        clusters[2].addr()
    );
    text.replacen("[[databases.sharded_tables]]", &third, 1)
}

fn sum(c: &PgCluster, sql: &str) -> i64 {
    c.psql("app", sql).unwrap().parse().unwrap_or(0)
}

#[test]
fn pgbench_init_select_and_tpcb_over_three_shards() {
    let clusters: Vec<PgCluster> = (0..3).map(|_| shard_cluster()).collect();
    let text = config(&clusters);
    let parsed = Config::parse(&text, "test").unwrap();
    assert!(parsed.validate().is_empty(), "{:?}", parsed.validate());
    let proxy = Proxy::start(&text);
    let url = proxy.url("app", "app", "app");

    let (ok, out) = pgbench(&url, &["-i", "-s", "2", "-q"]);
    assert!(ok, "pgbench -i failed:\n{out}");

    // Every row on its owner, accounts spread evenly.
    let map = shardgate::shard::route::ShardMap::new(&parsed.databases[0]).unwrap();
    let mut counts = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        for (table, key) in [
            ("pgbench_accounts", "aid"),
            ("pgbench_branches", "bid"),
            ("pgbench_tellers", "tid"),
        ] {
            let keys = c
                .psql("app", &format!("SELECT {key} FROM {table}"))
                .unwrap();
            for k in keys.lines().filter(|l| !l.is_empty()) {
                let owner = map
                    .shard_of_text(shardgate::config::KeyType::Bigint, k.as_bytes())
                    .unwrap();
                assert_eq!(owner.index(), i, "{table} {key}={k} sits on shard {i}");
            }
        }
        counts.push(sum(c, "SELECT count(*) FROM pgbench_accounts"));
    }
    assert_eq!(counts.iter().sum::<i64>(), 200_000);
    let even = 200_000 / 3;
    for n in &counts {
        assert!(
            (*n - even).abs() * 10 <= even,
            "accounts per shard {counts:?} not within 10% of even"
        );
    }

    for mode in ["simple", "extended", "prepared"] {
        let (ok, out) = pgbench(
            &url,
            &["-S", "-M", mode, "-c", "8", "-j", "2", "-T", "4", "-n"],
        );
        assert!(ok, "pgbench -S -M {mode} failed:\n{out}");
        assert_eq!(
            pgbench_number(&out, "number of failed transactions:").unwrap_or(0),
            0,
            "{out}"
        );
        assert!(
            pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0) > 100,
            "{out}"
        );
    }
    for mode in ["simple", "extended"] {
        let (ok, out) = pgbench(&url, &["-M", mode, "-c", "4", "-j", "2", "-T", "4", "-n"]);
        assert!(ok, "pgbench TPC-B -M {mode} failed:\n{out}");
        assert_eq!(
            pgbench_number(&out, "number of failed transactions:").unwrap_or(0),
            0,
            "{out}"
        );
        assert!(
            pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0) > 20,
            "{out}"
        );
    }
    // Atomicity: the balances add up across all shards.
    let total = |sql: &str| clusters.iter().map(|c| sum(c, sql)).sum::<i64>();
    let a = total("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts");
    let b = total("SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches");
    let t = total("SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers");
    let d = total("SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    assert_eq!(
        (a, b, t),
        (d, d, d),
        "sum(abalance), sum(bbalance), sum(tbalance) vs sum(delta)"
    );
    assert!(total("SELECT count(*) FROM pgbench_history") > 0);
    let left = total("SELECT count(*) FROM pg_prepared_xacts");
    assert_eq!(left, 0, "no prepared transaction left behind");
    drop(proxy);
}
