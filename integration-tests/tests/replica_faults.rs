//! Replicas that lag, pause, die or get promoted. Each test starts its own primary and
//! streaming replica (pg_basebackup) because it breaks them; the tests run one at a time
//! (a lock) to keep the 2-core CI machine from timing out cluster starts.

// Each test has its own runtime and thread: holding the std lock across its awaits blocks only
// the other tests' threads, which is the point.
#![allow(clippy::await_holding_lock)]

use std::time::{Duration, Instant};

use integration_tests::{
    pgbench, pgbench_number, primary_with_replica, serial, split_config, sqlstate, wait_psql, Proxy,
};
use testkit::PgCluster;
use tokio_postgres::Client;

fn declared(p: &PgCluster, r: &PgCluster) -> String {
    format!("primary = \"{}\"\nreplicas = [\"{}\"]", p.addr(), r.addr())
}

async fn port_of(c: &Client, sql: &str) -> i32 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn wait_port(c: &Client, want: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if port_of(c, "SELECT inet_server_port()").await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_stops_getting_reads_until_it_catches_up() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    let proxy = Proxy::start(&split_config(
        &declared(&p, &r),
        "max_replica_lag_ms = 300\nban_time_ms = 500",
        "size = 4",
    ));
    let c = proxy.app("app").await;
    let (pp, rp) = (p.port() as i32, r.port() as i32);
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, rp);

    r.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
    // Keep the primary writing so the paused replica falls behind.
    p.psql("app", "CREATE TABLE ticks (t timestamptz)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut moved = false;
    while Instant::now() < deadline {
        p.psql("app", "INSERT INTO ticks VALUES (now())").unwrap();
        if port_of(&c, "SELECT inet_server_port()").await == pp {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "reads never left the lagging replica");
    for _ in 0..20 {
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, pp);
    }

    r.psql("app", "SELECT pg_wal_replay_resume()").unwrap();
    assert!(
        wait_port(&c, rp, Duration::from_secs(20)).await,
        "reads never returned to the replica after it caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_while_replay_is_paused() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    p.psql(
        "app",
        "CREATE TABLE ryw (id int PRIMARY KEY); GRANT ALL ON ryw TO app",
    )
    .unwrap();
    assert!(wait_psql(
        &r,
        "SELECT count(*) FROM pg_class WHERE relname = 'ryw'",
        "1",
        Duration::from_secs(30)
    ));
    // A generous lag limit keeps the paused replica in rotation: only read-your-writes stands
    // between the writer and a stale read.
    for (mode, n) in [("lsn", 1000), ("primary_for_ms", 200)] {
        let proxy = Proxy::start(&split_config(
            &declared(&p, &r),
            &format!("max_replica_lag_ms = 600000\nread_your_writes = \"{mode}\""),
            "size = 2",
        ));
        r.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
        let writer = proxy.app("app").await;
        let bystander = proxy.app("app").await;
        let base = if mode == "lsn" { 0 } else { 100_000 };
        for i in base..base + n {
            writer
                .execute("INSERT INTO ryw VALUES ($1)", &[&i])
                .await
                .unwrap();
            let row = writer
                .query_one("SELECT count(*) FROM ryw WHERE id = $1", &[&i])
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, i64>(0),
                1,
                "{mode}: row {i} missing right after its insert"
            );
        }
        // The replica was in play: a client that did not write still reads from it, and
        // it has not seen the rows.
        assert_eq!(
            port_of(&bystander, "SELECT inet_server_port()").await,
            r.port() as i32
        );
        let stale: i64 = bystander
            .query_one("SELECT count(*) FROM ryw WHERE id >= $1", &[&base])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stale, 0, "{mode}: replay was paused");
        r.psql("app", "SELECT pg_wal_replay_resume()").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_under_pgbench_loses_no_transaction() {
    let _g = serial();
    let (p, mut r) = primary_with_replica();
    let init = format!("postgres://app:app@127.0.0.1:{}/app", p.port());
    let (ok, out) = pgbench(&init, &["-i", "-s", "1", "-q"]);
    assert!(ok, "{out}");
    assert!(wait_psql(
        &r,
        "SELECT count(*) FROM pgbench_accounts",
        "100000",
        Duration::from_secs(60)
    ));
    let proxy = Proxy::start(&split_config(
        &declared(&p, &r),
        "ban_time_ms = 60000",
        "size = 20",
    ));
    let url = proxy.url("app", "app", "app");
    let bench =
        std::thread::spawn(move || pgbench(&url, &["-S", "-c", "16", "-j", "2", "-T", "10", "-n"]));
    // Let reads flow to the replica, then kill it mid-run.
    std::thread::sleep(Duration::from_secs(3));
    let served: i64 = r
        .psql(
            "app",
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        served > 100,
        "the replica took reads before it died ({served})"
    );
    r.kill();
    let (ok, out) = bench.join().unwrap();
    assert!(ok, "pgbench failed:\n{out}");
    let failed = pgbench_number(&out, "number of failed transactions:").unwrap_or(0);
    assert_eq!(failed, 0, "{out}");
    let done = pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0);
    assert!(done > 1000, "{out}");
    assert!(!out.contains("aborted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_and_never_reach_a_read_only_server() {
    let _g = serial();
    let (mut p, r) = primary_with_replica();
    p.psql(
        "app",
        "CREATE TABLE f (id serial, port int); GRANT ALL ON f, f_id_seq TO app",
    )
    .unwrap();
    let servers = format!(
        "servers = [{{ address = \"{}\", role = \"auto\" }}, {{ address = \"{}\", role = \"auto\" }}]",
        p.addr(),
        r.addr()
    );
    let proxy = Proxy::start(&split_config(
        &servers,
        "",
        "size = 4\ncheckout_timeout_ms = 1000",
    ));
    let c = proxy.app("app").await;
    let (pp, rp) = (p.port() as i32, r.port() as i32);
    let write = "INSERT INTO f (port) VALUES (inet_server_port()) RETURNING port";
    // The checker finds the primary first; writes wait for it.
    assert_eq!(port_of(&c, write).await, pp);

    p.stop();
    r.promote().unwrap();
    // Writes during the switch either wait or fail with a clear error; none reaches a
    // read-only server (25006), and within a few check intervals they land on the new primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut landed = false;
    let mut errors = Vec::new();
    while Instant::now() < deadline {
        let client = match proxy.connect("app", "app", "app").await {
            Ok(c) => c,
            Err(e) => {
                errors.push(sqlstate(&e));
                continue;
            }
        };
        match client.query_one(write, &[]).await {
            Ok(row) => {
                assert_eq!(row.get::<_, i32>(0), rp);
                landed = true;
                break;
            }
            Err(e) => {
                let code = sqlstate(&e);
                assert_ne!(
                    code.as_deref(),
                    Some("25006"),
                    "a write reached a read-only server"
                );
                errors.push(code);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        landed,
        "writes never reached the promoted replica: {errors:?}"
    );
    for _ in 0..10 {
        assert_eq!(port_of(&c, write).await, rp);
    }
    let rows = r
        .psql("app", &format!("SELECT count(*) FROM f WHERE port = {rp}"))
        .unwrap();
    assert!(rows.parse::<i64>().unwrap() >= 11, "{rows}");
}

/// A write prepared (Parse/Describe/Sync, as tokio-postgres's `prepare` and `query` send it)
/// is described on the primary, where it will run: a replica that has not replayed the table's
/// CREATE yet would answer 42P01 (this test failed about one run in five before, when a
/// replica lagged behind the test's own CREATE TABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_prepared_on_the_primary_not_a_lagging_replica() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    let proxy = Proxy::start(&split_config(&declared(&p, &r), "", "size = 4"));
    let c = proxy.app("app").await;
    r.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
    p.psql(
        "app",
        "CREATE TABLE fresh (id int, port int); GRANT ALL ON fresh TO app",
    )
    .unwrap();
    // Reads still go to the (paused) replica, which lacks the table.
    let e = c
        .simple_query("SELECT count(*) FROM fresh")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "{e}");
    let insert = "INSERT INTO fresh VALUES ($1, inet_server_port()) RETURNING port";
    let stmt = c.prepare(insert).await.expect("prepared on the primary");
    let port: i32 = c.query_one(&stmt, &[&1i32]).await.unwrap().get(0);
    assert_eq!(port, p.port() as i32);
    // The unnamed statement of query_one too.
    let port: i32 = c.query_one(insert, &[&2i32]).await.unwrap().get(0);
    assert_eq!(port, p.port() as i32);
    r.psql("app", "SELECT pg_wal_replay_resume()").unwrap();
}
