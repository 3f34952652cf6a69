//! Measurement (not run by default): `pgbench -S -c 32 -j 2 -T $RW_SECS` through Shardgate over a
//! primary and a streaming replica, with read/write splitting on and off, interleaved
//! (on/off, `RW_ROUNDS` times, default 2). Prints TPS, transactions per server (pg_stat_database `xact_commit`
//! deltas) and the proxy's CPU seconds per 1,000 transactions (getrusage of this process,
//! which runs only the proxy while pgbench runs).
//!
//! cargo test --release -p integration-tests --test rw_bench -- --ignored --nocapture

use std::time::Duration;

use integration_tests::{pgbench, pgbench_number, split_config, wait_psql, Proxy};
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other preconditions.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn commits(c: &PgCluster) -> i64 {
    c.psql(
        "app",
        "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'",
    )
    .unwrap()
    .parse()
    .unwrap()
}

#[test]
#[ignore = "measurement; run explicitly"]
fn read_write_split_on_vs_off() {
    let secs: u64 = std::env::var("RW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let opts = ClusterOptions {
        hba_method: "md5".into(),
        extra_conf: vec!["max_connections = 200".into()],
        ..ClusterOptions::default()
    };
    let p = PgCluster::start(opts.clone()).unwrap();
    p.create_role("app", "app", PasswordMethod::Scram).unwrap();
    p.create_database("app", "app").unwrap();
    let (ok, out) = pgbench(
        &format!("postgres://app:app@127.0.0.1:{}/app", p.port()),
        &["-i", "-s", "10", "-q"],
    );
    assert!(ok, "{out}");
    let r = p.start_replica(opts).unwrap();
    assert!(wait_psql(
        &r,
        "SELECT count(*) FROM pgbench_branches",
        "10",
        Duration::from_secs(60)
    ));
    // Start measuring only once the replica has replayed the whole load (else it starts out
    // banned for lag).
    p.psql("app", "CHECKPOINT").unwrap();
    let head = p.psql("app", "SELECT pg_current_wal_insert_lsn()").unwrap();
    assert!(wait_psql(
        &r,
        &format!("SELECT pg_last_wal_replay_lsn() >= '{head}'::pg_lsn"),
        "t",
        Duration::from_secs(120)
    ));
    let rounds: usize = std::env::var("RW_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let servers = format!("primary = \"{}\"\nreplicas = [\"{}\"]", p.addr(), r.addr());
    println!("| split | TPS | primary tx | replica tx | proxy CPU s / 1k tx |");
    println!("|---|---|---|---|---|");
    for split in (0..rounds).flat_map(|_| [true, false]) {
        let proxy = Proxy::start(&split_config(
            &servers,
            &format!("read_write_split = {split}"),
            "size = 20",
        ));
        let url = proxy.url("app", "app", "app");
        let (ok, out) = pgbench(&url, &["-S", "-c", "32", "-j", "2", "-T", "3", "-n"]);
        assert!(ok, "warm-up: {out}");
        std::thread::sleep(Duration::from_millis(1500));
        let (p0, r0, cpu0) = (commits(&p), commits(&r), cpu_seconds());
        let (ok, out) = pgbench(
            &url,
            &["-S", "-c", "32", "-j", "2", "-T", &secs.to_string(), "-n"],
        );
        let cpu = cpu_seconds() - cpu0;
        assert!(ok, "{out}");
        std::thread::sleep(Duration::from_millis(1500));
        let (p1, r1) = (commits(&p), commits(&r));
        let tx = pgbench_number(&out, "number of transactions actually processed:").unwrap();
        let failed = pgbench_number(&out, "number of failed transactions:").unwrap_or(0);
        assert_eq!(failed, 0, "{out}");
        println!(
            "| {split} | {:.0} | {} | {} | {:.4} |",
            tx as f64 / secs as f64,
            p1 - p0,
            r1 - r0,
            cpu / tx as f64 * 1000.0
        );
        drop(proxy);
    }
}
