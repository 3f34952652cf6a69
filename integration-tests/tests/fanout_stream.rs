//! A read on several shards streams through the proxy: `SELECT * FROM big ORDER BY id` over a
//! 1,000,000-row table on three real shard primaries, read by a slow client, keeps the
//! proxy's memory bounded (its own test binary: it measures the resident size of this
//! process, which runs the proxy), reaches the client before the shards have finished, and a
//! CancelRequest stops the statement on all three shards within a second; a slow client that
//! leaves mid-stream has it cancelled everywhere; `COPY big TO STDOUT` streams the same way.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use integration_tests::{rss_kib, sqlstate, wait_until, Proxy, ShardSet};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const ROWS: i64 = 1_000_000;
const QUERY: &str = "SELECT * FROM big ORDER BY id";

fn shards() -> &'static ShardSet {
    static S: OnceLock<ShardSet> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| ShardSet::start(3, 0, &[("big", "id", "bigint")]));
    REGISTERED.call_once(|| s.stop_at_exit());
    s
}

/// Loads `big` on each shard directly: ids 1..=ROWS, shard `i` holding those with
/// `id % 3 = i` (a read of the whole table reads every shard, so where the ring would put a
/// key does not matter here), 100 bytes of padding a row: about 130 MB in all.
async fn load() {
    static LOADED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    LOADED.get_or_init(load_once).await;
}

/// The tests measure this process's memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn load_once() {
    let loads = (0..3).map(|i| async move {
        let d = shards().direct(i).await;
        d.batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g
             WHERE g % 3 = {i}"
        ))
        .await
        .unwrap();
        d.batch_execute("VACUUM ANALYZE big").await.unwrap();
    });
    futures_util::future::join_all(loads).await;
}

/// A proxy over the shards, warmed up (pools, caches and allocator arenas in place), and
/// this process's RSS then: the baseline of the memory checks.
async fn warm_proxy() -> (Proxy, u64) {
    let p = Proxy::start(&shards().config("127.0.0.1:0", "", ""));
    let warm = p.app("app").await;
    for _ in 0..20 {
        warm.simple_query("SELECT count(*) FROM big WHERE id < 10")
            .await
            .unwrap();
    }
    (p, rss_kib())
}

/// Whether every shard runs the query right now.
async fn running_everywhere() -> bool {
    for i in 0..3 {
        if running_on(i).await == 0 {
            return false;
        }
    }
    true
}

/// Whether no shard runs the query any more.
async fn stopped_everywhere() -> bool {
    for i in 0..3 {
        if running_on(i).await != 0 {
            return false;
        }
    }
    true
}

async fn running_on(i: usize) -> i64 {
    let d = shards().direct(i).await;
    d.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE 'SELECT * FROM big%' AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_merge_streams_to_a_slow_client_in_bounded_memory_and_cancels_fast() {
    let _serial = SERIAL.lock().await;
    load().await;
    let (p, before) = warm_proxy().await;
    let c = p.app("app").await;
    let token = c.cancel_token();
    let mut rows = Box::pin(c.simple_query_raw(QUERY).await.unwrap());

    // The first row arrives while every shard still runs the query.
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match rows.next().await {
                Some(Ok(SimpleQueryMessage::Row(r))) => break r.get(0).unwrap().to_string(),
                Some(Ok(_)) => continue,
                other => panic!("no first row: {other:?}"),
            }
        }
    })
    .await
    .expect("the first row comes within a minute");
    assert_eq!(first, "1");
    assert!(
        running_everywhere().await,
        "the first row came only after some shard had finished"
    );

    // A slow client: a few thousand rows at a time, for a few seconds.
    let mut last: i64 = 1;
    let mut read = 1u64;
    let mut grown_max = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for _ in 0..2000 {
            match rows.next().await {
                Some(Ok(SimpleQueryMessage::Row(r))) => {
                    let id: i64 = r.get(0).unwrap().parse().unwrap();
                    assert_eq!(id, last + 1, "rows out of order");
                    last = id;
                    read += 1;
                }
                other => panic!("the stream ended early: {other:?}"),
            }
        }
        grown_max = grown_max.max(rss_kib().saturating_sub(before));
        // Pacing of a slow reader (not a wait for readiness).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("read {read} rows slowly; RSS grew by at most {grown_max} KiB");
    assert!(
        read < ROWS as u64,
        "the client was not slow enough to test anything"
    );
    assert!(
        grown_max < 64 * 1024,
        "RSS grew by {grown_max} KiB while streaming"
    );
    assert!(running_everywhere().await, "the shards finished early");

    // A CancelRequest stops all three shards within a second, the client not reading.
    token.cancel_query(NoTls).await.unwrap();
    let asked = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), stopped_everywhere).await,
        "a shard still runs the query 5 s after the cancel"
    );
    let took = asked.elapsed();
    eprintln!("all shards stopped {took:?} after the CancelRequest");
    assert!(took < Duration::from_secs(1), "stopping took {took:?}");

    // The client gets the cancel error after the rows already on their way.
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match rows.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the statement ended without an error"),
            }
        }
    })
    .await
    .expect("the cancelled statement ends");
    assert_eq!(sqlstate(&end).as_deref(), Some("57014"), "{end}");
    drop(rows);

    // The session goes on, and a full read of the same merge is exact and bounded.
    let r = c.simple_query("SELECT count(*) FROM big").await.unwrap();
    let count = r.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("1000000"));
    let mut rows = Box::pin(
        c.simple_query_raw("SELECT id FROM big ORDER BY id")
            .await
            .unwrap(),
    );
    let mut expect = 1i64;
    let mut grown_max = 0;
    let mut tag = None;
    while let Some(m) = rows.next().await {
        match m.unwrap() {
            SimpleQueryMessage::Row(r) => {
                let id: i64 = r.get(0).unwrap().parse().unwrap();
                assert_eq!(id, expect, "rows out of order or missing");
                expect += 1;
                if expect % 100_000 == 0 {
                    grown_max = grown_max.max(rss_kib().saturating_sub(before));
                }
            }
            SimpleQueryMessage::CommandComplete(n) => tag = Some(n),
            _ => {}
        }
    }
    eprintln!("read all rows; RSS grew by at most {grown_max} KiB");
    assert_eq!(expect - 1, ROWS);
    assert_eq!(tag, Some(ROWS as u64));
    assert!(grown_max < 64 * 1024, "RSS grew by {grown_max} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_copy_to_stdout_streams_in_bounded_memory() {
    use std::io::BufRead;
    let _serial = SERIAL.lock().await;
    load().await;
    let (p, before) = warm_proxy().await;
    let url = p.url("app", "app", "app");
    // psql (the simple protocol) writes the rows to a pipe read here.
    let reader = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(integration_tests::pg_bin("psql"))
            .args([&url, "-X", "-c", "COPY big TO STDOUT"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (mut lines, mut grown_max, mut ids) = (0u64, 0, 0i64);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            ids += line.split('\t').next().unwrap().parse::<i64>().unwrap();
            lines += 1;
            if lines % 100_000 == 0 {
                grown_max = grown_max.max(rss_kib().saturating_sub(before));
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (lines, ids, grown_max)
    });
    let (lines, ids, grown_max) = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("the COPY ends within 5 minutes")
        .unwrap();
    eprintln!("COPY of {lines} rows; RSS grew by at most {grown_max} KiB");
    assert_eq!(lines, ROWS as u64);
    assert_eq!(ids, ROWS * (ROWS + 1) / 2, "every id exactly once");
    assert!(grown_max < 64 * 1024, "RSS grew by {grown_max} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_leaving_mid_stream_has_the_read_cancelled_on_every_shard() {
    let _serial = SERIAL.lock().await;
    load().await;
    // One connection per shard: the pool must get them back for the next client.
    let text = shards()
        .config("127.0.0.1:0", "", "")
        .replace("size = 4", "size = 1");
    let p = Proxy::start(&text);
    let (client, conn) = tokio_postgres::connect(&p.conn_str("app", "app", "app"), NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let mut rows = Box::pin(client.simple_query_raw(QUERY).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(Ok(SimpleQueryMessage::Row(_))) = rows.next().await {
                break;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "no first row within a minute");
    assert!(running_everywhere().await, "the shards finished early");
    // The client's socket closes with its connection task, its output still full.
    task.abort();
    drop(rows);
    drop(client);
    assert!(
        wait_until(Duration::from_secs(10), stopped_everywhere).await,
        "a shard still runs the read of a client that left"
    );
    let c = p.app("app").await;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.simple_query("SELECT count(*) FROM big"),
    )
    .await
    .expect("a new client is served")
    .unwrap();
    let count = r.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("1000000"));
}
