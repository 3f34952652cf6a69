//! Measurement (not run by default): `pgbench -S -c 32 -j 2 -T $SB_SECS` through Shardgate over
//! two shards (the `sharded-pgbench.toml` map) vs. through Shardgate to one unsharded
//! database with the same data, interleaved (`SB_ROUNDS` rounds, default 2). Prints TPS and the
//! proxy's CPU seconds per 1,000 transactions (getrusage of this process).
//!
//! cargo test --release -p integration-tests --test shard_bench -- --ignored --nocapture

use integration_tests::{pgbench, pgbench_number, Proxy};
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other preconditions.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "measurement; run explicitly"]
fn sharded_vs_unsharded_select_only() {
    let secs = env("SB_SECS", 15);
    let rounds = env("SB_ROUNDS", 2);
    let opts = ClusterOptions {
        hba_method: "md5".into(),
        extra_conf: vec![
            "max_prepared_transactions = 100".into(),
            "max_connections = 200".into(),
        ],
        ..ClusterOptions::default()
    };
    let shards: Vec<PgCluster> = (0..2)
        .map(|_| {
            let c = PgCluster::start(opts.clone()).unwrap();
            c.create_role("app", "app", PasswordMethod::Scram).unwrap();
            c.create_database("app", "app").unwrap();
            c
        })
        .collect();
    shards[0].create_database("plain", "app").unwrap();
    let sharded = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shard-config/sharded-pgbench.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:6432", "127.0.0.1:0")
    .replace("127.0.0.1:5432", &shards[0].addr())
    .replace("127.0.0.1:5433", &shards[1].addr());
    let unsharded = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[pool]\nsize = 20\n[[users]]\nname = \"app\"\n\
         password = \"app\"\n[[databases]]\nname = \"app\"\nserver_database = \"plain\"\n\
         [[databases.shards]]\nname = \"s0\"\nprimary = \"{}\"\n",
        shards[0].addr()
    );
    {
        let p = Proxy::start(&sharded);
        let (ok, out) = pgbench(&p.url("app", "app", "app"), &["-i", "-s", "10", "-q"]);
        assert!(ok, "{out}");
    }
    let (ok, out) = pgbench(
        &format!("postgres://app:app@127.0.0.1:{}/plain", shards[0].port()),
        &["-i", "-s", "10", "-q"],
    );
    assert!(ok, "{out}");
    println!("| target | TPS | proxy CPU s / 1k tx |");
    println!("|---|---|---|");
    for _ in 0..rounds {
        for (name, config) in [("2 shards", &sharded), ("1 database", &unsharded)] {
            let p = Proxy::start(config);
            let url = p.url("app", "app", "app");
            let (ok, out) = pgbench(&url, &["-S", "-c", "32", "-j", "2", "-T", "3", "-n"]);
            assert!(ok, "warm-up {name}: {out}");
            let cpu0 = cpu_seconds();
            let (ok, out) = pgbench(
                &url,
                &["-S", "-c", "32", "-j", "2", "-T", &secs.to_string(), "-n"],
            );
            let cpu = cpu_seconds() - cpu0;
            assert!(ok, "{name}: {out}");
            let tx = pgbench_number(&out, "number of transactions actually processed:").unwrap();
            assert_eq!(
                pgbench_number(&out, "number of failed transactions:").unwrap_or(0),
                0
            );
            println!(
                "| {name} | {:.0} | {:.4} |",
                tx as f64 / secs as f64,
                cpu / tx as f64 * 1000.0
            );
        }
    }
}
