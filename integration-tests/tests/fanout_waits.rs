//! Waits on several shards at once (fan-out reads, COPY TO STDOUT) against three real shard
//! primaries: a CancelRequest stops the statement on every shard, a client that leaves
//! mid-statement has it cancelled on every shard (and the pool recovers), and what a merge
//! holds (groups) is bounded by `max_fanout_bytes` (54000; the session goes on); rows and COPY
//! data that stream through are not.

use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::{pg_bin, sqlstate, wait_until, Proxy, ShardSet};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// A statement that runs for about 30 s on every shard (100 rows each, 0.3 s a row).
const SLOW: &str = "SELECT count(*) FROM fw WHERE pg_sleep(0.3) IS NOT NULL";

fn shards() -> &'static ShardSet {
    static S: OnceLock<ShardSet> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| ShardSet::start(3, 10, &[("fw", "k", "bigint")]));
    REGISTERED.call_once(|| s.stop_at_exit());
    s
}

/// A proxy with `proxy_extra` in `[proxy]`, over shards holding table `fw` (300 rows of
/// about 110 bytes, 100 per shard: keys chosen by their owner).
async fn proxy(proxy_extra: &str, pool_size: u32) -> Proxy {
    static LOADED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let text = shards()
        .config("127.0.0.1:0", proxy_extra, "two_phase_commit = true")
        .replace("size = 4", &format!("size = {pool_size}"));
    let p = Proxy::start(&text);
    LOADED
        .get_or_init(|| async {
            let c = p.app("app").await;
            c.simple_query("CREATE TABLE fw (k bigint PRIMARY KEY, pad text)")
                .await
                .unwrap();
            c.simple_query(
                "INSERT INTO fw SELECT g, repeat('x', 100) FROM generate_series(1, 300) g",
            )
            .await
            .expect_err("INSERT ... SELECT into a sharded table is refused");
            let values: Vec<String> = (1..=300)
                .map(|k| format!("({k}, repeat('x', 100))"))
                .collect();
            c.simple_query(&format!(
                "INSERT INTO fw (k, pad) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
        })
        .await;
    p
}

/// How many backends of `app` on shard `i` run a statement containing `pg_sleep`.
async fn sleeping(i: usize) -> i64 {
    let d = shards().direct(i).await;
    let r = d
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%pg_sleep(0.3)%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

async fn sleeping_everywhere(want: i64) -> bool {
    for i in 0..3 {
        if sleeping(i).await != want {
            return false;
        }
    }
    true
}

/// Rows a shard holds (checks the load spread over all three).
async fn rows_on(i: usize) -> i64 {
    let d = shards().direct(i).await;
    d.query_one("SELECT count(*) FROM fw", &[])
        .await
        .unwrap()
        .get(0)
}

/// The tests look at every shard's activity: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_fan_out_on_every_shard() {
    let _serial = SERIAL.lock().await;
    let p = proxy("", 4).await;
    for i in 0..3 {
        assert!(rows_on(i).await > 0, "shard {i} holds no row");
    }
    let c = p.app("app").await;
    let token = c.cancel_token();
    let q = tokio::spawn(async move { c.simple_query(SLOW).await.map(|_| ()) });
    assert!(
        wait_until(Duration::from_secs(20), || sleeping_everywhere(1)).await,
        "the statement never ran on every shard"
    );
    token.cancel_query(NoTls).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), q)
        .await
        .expect("the cancelled statement answers")
        .unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));
    assert!(
        sleeping_everywhere(0).await,
        "a shard still runs the statement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_fan_out_has_it_cancelled_on_every_shard() {
    let _serial = SERIAL.lock().await;
    let p = proxy("", 1).await;
    for round in 0..2 {
        let (client, conn) = tokio_postgres::connect(&p.conn_str("app", "app", "app"), NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let q = tokio::spawn(async move { client.simple_query(SLOW).await.map(|_| ()) });
        assert!(
            wait_until(Duration::from_secs(20), || sleeping_everywhere(1)).await,
            "round {round}: the statement never ran on every shard"
        );
        // The client's socket closes with its connection task.
        task.abort();
        assert!(
            wait_until(Duration::from_secs(10), || sleeping_everywhere(0)).await,
            "round {round}: a shard still runs the statement of a client that left"
        );
        q.abort();
    }
    // The pool (one connection per shard) recovered: a new client's fan-out answers.
    let c = p.app("app").await;
    let n = tokio::time::timeout(Duration::from_secs(10), count(&c))
        .await
        .expect("a fresh client is served");
    assert_eq!(n, "300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_merges_holding_more_than_the_cap_fail_with_54000_and_the_session_goes_on() {
    let _serial = SERIAL.lock().await;
    let p = proxy("max_fanout_bytes = 8192", 4).await;
    let c = p.app("app").await;
    // A merge that keeps what it has seen (groups) is held to the cap.
    let e = c.simple_query(GROUPED).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("54000"), "{e}");
    // Rows that stream through are not held: over the cap in total, they are answered.
    let r = c.simple_query("SELECT * FROM fw ORDER BY k").await.unwrap();
    let rows = r
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 300);
    // Under the cap, the same session answers.
    let r = c
        .simple_query("SELECT k FROM fw ORDER BY k LIMIT 3")
        .await
        .unwrap();
    let keys: Vec<String> = r
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(keys, ["1", "2", "3"]);
    // COPY TO STDOUT streams too (psql: the simple protocol): every row, one CopyDone.
    let out = std::process::Command::new(pg_bin("psql"))
        .args([&p.url("app", "app", "app"), "-X", "-c", "COPY fw TO STDOUT"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
    // Inside a transaction the statement fails as on one database: the transaction is
    // aborted until ROLLBACK.
    c.simple_query("BEGIN").await.unwrap();
    let e = c.simple_query(GROUPED).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("54000"), "{e:?}");
    let e = c.simple_query("SELECT count(*) FROM fw").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(count(&c).await, "300");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_failed_on_one_shard_has_failed_on_all() {
    let _serial = SERIAL.lock().await;
    let p = proxy("", 4).await;
    let c = p.app("app").await;
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO fw (k, pad) VALUES (1001, 'a'), (1002, 'b'), (1003, 'c')")
        .await
        .unwrap();
    // Fails on the shard of key 150 only.
    let e = c
        .simple_query("SELECT 1 / (k - 150) FROM fw")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "{e}");
    // Every shard's part of the transaction is aborted, as on one database.
    for k in [1001, 1002, 1003, 1] {
        let e = c
            .simple_query(&format!("SELECT pad FROM fw WHERE k = {k}"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "key {k}: {e}");
    }
    let e = c.simple_query("SELECT count(*) FROM fw").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e}");
    // COMMIT of a failed transaction rolls it back on every shard.
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(count(&c).await, "300");
    let total: i64 = {
        let mut n = 0;
        for i in 0..3 {
            n += rows_on(i).await;
        }
        n
    };
    assert_eq!(total, 300);
}

/// A grouped read whose groups (about 36 KB over all shards) a merge must hold.
const GROUPED: &str = "SELECT k, pad, count(*) FROM fw GROUP BY k, pad";

/// `SELECT count(*) FROM fw` through `c`.
async fn count(c: &tokio_postgres::Client) -> String {
    let r = c.simple_query("SELECT count(*) FROM fw").await.unwrap();
    r.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// A proxy shutting down lets a running fan-out go on for `shutdown_timeout_ms`, then cancels
/// it on every shard before it closes the connections (closing alone leaves the statements
/// running on the shards until they next write to the socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_running_fan_out_on_every_shard_after_its_grace() {
    let _serial = SERIAL.lock().await;
    let mut p = proxy("shutdown_timeout_ms = 500", 4).await;
    let c = p.app("app").await;
    let q = tokio::spawn(async move { c.simple_query(SLOW).await.map(|_| ()) });
    assert!(
        wait_until(Duration::from_secs(20), || sleeping_everywhere(1)).await,
        "the statement never ran on every shard"
    );
    p.begin_shutdown();
    let r = tokio::time::timeout(Duration::from_secs(20), q)
        .await
        .expect("the client's connection ends")
        .unwrap();
    assert!(r.is_err(), "the statement cannot have completed");
    assert!(
        wait_until(Duration::from_secs(5), || sleeping_everywhere(0)).await,
        "a shard still runs the statement after the shutdown"
    );
    p.stop();
}
