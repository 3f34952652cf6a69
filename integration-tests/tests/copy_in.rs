//! `COPY ... FROM STDIN` into a table sharded over two real shard primaries, through psql
//! (the simple protocol, as `pgbench -i` and most loaders): rows land on their owners and are
//! counted once; a shard's error in the middle of the COPY stops it on every shard at once,
//! while the client is still sending, and nothing is stored; a client that vanishes in the
//! middle leaves no COPY running and no row; outside a transaction a COPY that fails on one
//! shard at its very end leaves no row on the other; inside a transaction (on both shards,
//! two-phase commit) a failed COPY fails it.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::{pg_bin, wait_until, Proxy, ShardSet};
use shardgate::config::{Config, KeyType};
use shardgate::shard::route::ShardMap;

fn shards() -> &'static ShardSet {
    static S: OnceLock<ShardSet> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| ShardSet::start(2, 10, &[("placed", "k", "bigint")]));
    REGISTERED.call_once(|| s.stop_at_exit());
    s
}

/// The tests share the table: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config() -> String {
    shards().config("127.0.0.1:0", "", "")
}

fn owner(k: i64) -> usize {
    let c = Config::parse(&config(), "test").unwrap();
    let map = ShardMap::new(&c.databases[0]).unwrap();
    map.shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
        .unwrap()
        .index()
}

/// An empty `placed` on every shard.
async fn fresh_table() {
    for i in 0..2 {
        shards()
            .direct(i)
            .await
            .batch_execute(
                "DROP TABLE IF EXISTS placed; CREATE TABLE placed (k bigint PRIMARY KEY, v text)",
            )
            .await
            .unwrap();
    }
}

/// Key `k` already stored on its owner (directly), for a COPY's row `k` to violate the
/// primary key there.
async fn already_there(k: i64) {
    shards()
        .direct(owner(k))
        .await
        .batch_execute(&format!("INSERT INTO placed VALUES ({k}, 'there')"))
        .await
        .unwrap();
}

/// The keys on shard `i`.
async fn keys_on(i: usize) -> Vec<i64> {
    let d = shards().direct(i).await;
    d.query("SELECT k FROM placed ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How many COPYs into `placed` run on the shards.
async fn copies_running() -> i64 {
    let mut n = 0;
    for i in 0..2 {
        let d = shards().direct(i).await;
        let row = d
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE 'COPY placed%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        n += row.get::<_, i64>(0);
    }
    n
}

/// psql running `COPY placed (k, v) FROM STDIN` through `p`, its data on a pipe.
fn copy_from_pipe(p: &Proxy) -> Child {
    Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY placed (k, v) FROM STDIN",
        ])
        .arg(p.url("app", "app", "app"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Rows `k\tpadding` for keys `from..to`.
fn rows(from: i64, to: i64) -> String {
    (from..to)
        .map(|k| format!("{k}\t{}\n", "x".repeat(40)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_copy_places_every_row_on_its_owner_and_counts_it_once() {
    let _serial = SERIAL.lock().await;
    fresh_table().await;
    let p = Proxy::start(&config());
    let mut psql = copy_from_pipe(&p);
    let n = 200_000;
    psql.stdin
        .take()
        .unwrap()
        .write_all(rows(1, n + 1).as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("COPY {n}"));
    let mut total = 0;
    for i in 0..2 {
        let keys = keys_on(i).await;
        assert!(
            keys.iter().all(|k| owner(*k) == i),
            "shard {i} holds others' rows"
        );
        total += keys.len();
    }
    assert_eq!(total, n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_error_in_the_middle_stops_the_copy_everywhere_while_the_client_sends() {
    let _serial = SERIAL.lock().await;
    fresh_table().await;
    // Key 7 is already on its owner: the COPY's row 7 violates its primary key there.
    let dup = 7;
    already_there(dup).await;
    let p = Proxy::start(&config());
    let mut psql = copy_from_pipe(&p);
    let mut stdin = psql.stdin.take().unwrap();
    // Enough rows that each shard gets several CopyData (the proxy sends 64 KiB at a time).
    stdin.write_all(rows(1, 50_000).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // The pipe stays open: the client has not finished, yet no shard copies any more.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            copies_running().await == 0
        })
        .await,
        "a COPY still runs on a shard after another shard failed"
    );
    assert!(psql.try_wait().unwrap().is_none(), "psql is still sending");
    // More data is read and dropped; the client's CopyDone gets the shard's error.
    stdin.write_all(rows(50_000, 60_000).as_bytes()).unwrap();
    drop(stdin);
    let out = psql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("duplicate key value"), "{stderr}");
    // Nothing of the COPY is stored on either shard.
    assert_eq!(keys_on(owner(dup)).await, [dup]);
    assert!(keys_on(1 - owner(dup)).await.is_empty());
    // The proxy goes on serving.
    let c = p.app("app").await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM placed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_in_the_middle_leaves_no_copy_and_no_row() {
    let _serial = SERIAL.lock().await;
    fresh_table().await;
    let p = Proxy::start(&config());
    let mut psql = copy_from_pipe(&p);
    let mut stdin = psql.stdin.take().unwrap();
    stdin.write_all(rows(1, 20_000).as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            copies_running().await == 2
        })
        .await,
        "the COPY runs on both shards"
    );
    psql.kill().unwrap();
    let _ = psql.wait();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            copies_running().await == 0
        })
        .await,
        "the COPY is stopped on every shard"
    );
    for i in 0..2 {
        assert!(keys_on(i).await.is_empty());
    }
    let c = p.app("app").await;
    c.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_in_a_transaction_fails_the_transaction() {
    let _serial = SERIAL.lock().await;
    fresh_table().await;
    let dup = 3;
    already_there(dup).await;
    // A transaction on both shards commits with two-phase commit.
    let p = Proxy::start(&shards().config("127.0.0.1:0", "", "two_phase_commit = true"));
    let script = format!(
        "BEGIN;\nINSERT INTO placed (k, v) VALUES (100000, 'a');\nCOPY placed (k, v) FROM STDIN;\n{}\\.\n\
         SELECT 'after';\nROLLBACK;\nSELECT count(*) AS n FROM placed;\n",
        rows(1, 5_000)
    );
    let mut psql = Command::new(pg_bin("psql"))
        .args(["-X", "-At"])
        .arg(p.url("app", "app", "app"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("duplicate key value"), "{stderr}");
    assert!(
        stderr.contains("current transaction is aborted"),
        "the statement after the failed COPY is refused: {stderr}"
    );
    assert!(!stdout.contains("after"), "{stdout}");
    // After the ROLLBACK only the row that was there is left, on its shard.
    assert!(stdout.trim_end().ends_with('1'), "{stdout}");
    assert_eq!(keys_on(owner(dup)).await, [dup]);
    assert!(keys_on(1 - owner(dup)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_at_its_end_on_one_shard_leaves_no_row_on_the_other() {
    let _serial = SERIAL.lock().await;
    fresh_table().await;
    // Few rows: each shard gets them all at once with the client's CopyDone, and one shard
    // fails only then, while the other could already commit.
    let dup = 11;
    already_there(dup).await;
    let p = Proxy::start(&config());
    let mut psql = copy_from_pipe(&p);
    psql.stdin
        .take()
        .unwrap()
        .write_all(rows(1, 100).as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("duplicate key value"), "{stderr}");
    assert_eq!(keys_on(owner(dup)).await, [dup]);
    assert!(
        keys_on(1 - owner(dup)).await.is_empty(),
        "the other shard's part of the failed COPY was rolled back"
    );
    // And a COPY that succeeds commits on both.
    let mut psql = copy_from_pipe(&p);
    psql.stdin
        .take()
        .unwrap()
        .write_all(rows(1000, 1100).as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 100");
    let total = keys_on(0).await.len() + keys_on(1).await.len();
    assert_eq!(total, 101);
}
