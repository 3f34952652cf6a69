//! Pool hygiene: a server connection goes back to the pool only in a state the proxy knows is
//! clean. A session that panics, or a client that vanishes mid-message, costs at most the server
//! connections it held (closed, never handed to the next client); the pool recovers by itself.

use integration_tests::raw::{closed, login_trust, read_until};
use integration_tests::{config_text, direct_superuser, wait_until, Proxy};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A simple Query message.
fn query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// An unnamed Parse message of `sql` without parameter types.
fn parse(sql: &str) -> Vec<u8> {
    let mut m = vec![b'P'];
    m.extend_from_slice(&((sql.len() + 4 + 1 + 1 + 2) as i32).to_be_bytes());
    m.push(0);
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m.extend_from_slice(&0i16.to_be_bytes());
    m
}

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// Runs `sql` over a raw connection; returns the messages through ReadyForQuery.
async fn run(s: &mut TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&query(sql)).await.unwrap();
    read_until(s, b"Z").await
}

fn ready_status(msgs: &[(u8, Vec<u8>)]) -> Option<u8> {
    msgs.iter()
        .rev()
        .find(|(t, _)| *t == b'Z')
        .and_then(|(_, b)| b.first().copied())
}

fn data_text(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]) as usize;
            String::from_utf8_lossy(&b[6..6 + len]).into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_hands_nothing_to_the_next_client() {
    // One server connection: if the dead client's connection went back to the pool, the next
    // client would get it, transaction and all.
    let proxy = Proxy::start(&config_text("failpoints = [\"panic\"]", "size = 1"));
    let admin = direct_superuser().await;
    admin
        .batch_execute("drop table if exists hyg_panic; create table hyg_panic (id int)")
        .await
        .unwrap();
    admin
        .batch_execute("grant all on hyg_panic to app")
        .await
        .unwrap();

    for round in 0..3 {
        let mut a = login_trust(proxy.port, "trusty", "app").await;
        let m = run(&mut a, "begin; insert into hyg_panic values (1)").await;
        assert_eq!(ready_status(&m), Some(b'T'), "round {round}: {m:?}");
        // The session panics while it holds the connection inside the transaction.
        a.write_all(&query("select 'shardgate_failpoint_panic'"))
            .await
            .unwrap();
        assert!(
            closed(&mut a).await,
            "round {round}: the panicked session must close"
        );

        let mut b = login_trust(proxy.port, "trusty", "app").await;
        let m = run(&mut b, "select count(*) from hyg_panic").await;
        assert_eq!(data_text(&m), vec!["0".to_string()], "round {round}: {m:?}");
        assert_eq!(ready_status(&m), Some(b'I'), "round {round}: {m:?}");
        // COMMIT finds no transaction to commit: the dead client's write is gone.
        let m = run(&mut b, "commit").await;
        assert_eq!(ready_status(&m), Some(b'I'), "round {round}: {m:?}");
        let n: i64 = admin
            .query_one("select count(*) from hyg_panic", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "round {round}: the dead client's row was committed");
    }
}

/// Server backends of `app` that wait for their client in the middle of a message.
async fn stuck_backends(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' \
             and state = 'active' and wait_event = 'ClientRead'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_mid_message_cost_no_pooled_connection() {
    const POOL: usize = 3;
    let proxy = Proxy::start(&config_text(
        "",
        &format!("size = {POOL}\ncheckout_timeout_ms = 5000"),
    ));
    let admin = direct_superuser().await;
    let big = format!("select '{}'", "x".repeat(1 << 20));

    // A 1 MiB Parse and a Sync, then gone without reading the answer.
    for _ in 0..POOL * 2 {
        let mut s = login_trust(proxy.port, "trusty", "app").await;
        let mut m = parse(&big);
        m.extend_from_slice(&SYNC);
        s.write_all(&m).await.unwrap();
        drop(s);
    }
    // Half of a large Query, then gone.
    for _ in 0..POOL * 2 {
        let mut s = login_trust(proxy.port, "trusty", "app").await;
        let m = query(&big);
        s.write_all(&m[..m.len() / 2]).await.unwrap();
        drop(s);
    }
    // Half of a large Parse, then gone.
    for _ in 0..POOL * 2 {
        let mut s = login_trust(proxy.port, "trusty", "app").await;
        let m = parse(&big);
        s.write_all(&m[..m.len() / 2]).await.unwrap();
        drop(s);
    }

    // A fresh client is served within 5 s, every time, in both protocols.
    for i in 0..POOL * 2 {
        let t = Instant::now();
        let c = proxy.app("app").await;
        let v: i32 =
            tokio::time::timeout(Duration::from_secs(5), c.query_one("select $1::int", &[&7]))
                .await
                .unwrap_or_else(|_| panic!("client {i}: no server connection within 5 s"))
                .unwrap()
                .get(0);
        assert_eq!(v, 7);
        let rows = c.simple_query("select 8").await.unwrap();
        let n = rows
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(n, 1);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    // No server connection is left waiting for a client that is gone.
    let settled = wait_until(Duration::from_secs(10), || async {
        stuck_backends(&admin).await == 0
    })
    .await;
    assert!(
        settled,
        "{} backends stuck in ClientRead",
        stuck_backends(&admin).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_parse_and_its_sync_get_their_answer() {
    // The Parse fills the proxy's output cap; the Sync that follows in the same write must
    // still be read and forwarded once the output has moved (this used to hang forever).
    let proxy = Proxy::start(&config_text("", "size = 3"));
    let big = format!("select '{}'", "x".repeat(1 << 20));
    let mut s = login_trust(proxy.port, "trusty", "app").await;
    let mut m = parse(&big);
    m.extend_from_slice(&SYNC);
    s.write_all(&m).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, b"Z"))
        .await
        .expect("no answer to Parse + Sync");
    let tags: String = got.iter().map(|m| m.0 as char).collect();
    assert_eq!(tags, "1Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeouts_end_idle_clients_and_roll_back() {
    let proxy = Proxy::start(&config_text(
        "idle_transaction_timeout_ms = 300\nclient_idle_timeout_ms = 1500",
        "size = 1",
    ));
    let admin = direct_superuser().await;
    admin
        .batch_execute("drop table if exists hyg_idle; create table hyg_idle (id int); grant all on hyg_idle to app")
        .await
        .unwrap();
    // Idle inside a transaction: FATAL 25P03, the write is rolled back, the pool's only
    // connection serves the next client.
    let mut a = login_trust(proxy.port, "trusty", "app").await;
    let m = run(&mut a, "begin; insert into hyg_idle values (1)").await;
    assert_eq!(ready_status(&m), Some(b'T'));
    let t = Instant::now();
    let m = read_until(&mut a, b"E").await;
    assert_eq!(
        integration_tests::raw::error_code(&m).as_deref(),
        Some("25P03"),
        "{m:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    assert!(closed(&mut a).await);
    let c = proxy.app("app").await;
    let n: i64 = c
        .query_one("select count(*) from hyg_idle", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // A client that keeps talking is not idle, even in a transaction.
    let mut b = login_trust(proxy.port, "trusty", "app").await;
    run(&mut b, "begin").await;
    for _ in 0..4 {
        let m = run(&mut b, "select pg_sleep(0.1)").await;
        assert_eq!(ready_status(&m), Some(b'T'), "{m:?}");
    }
    run(&mut b, "commit").await;
    // Idle outside a transaction: FATAL 57P05 after the longer timeout.
    let m = read_until(&mut b, b"E").await;
    assert_eq!(
        integration_tests::raw::error_code(&m).as_deref(),
        Some("57P05"),
        "{m:?}"
    );
    assert!(closed(&mut b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hoarding_prepared_statements_is_stopped() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let s = login_trust(proxy.port, "trusty", "app").await;
    let mut batch = Vec::new();
    for i in 0..10_001 {
        let name = format!("s{i}");
        let sql = "select 1";
        let mut m = vec![b'P'];
        m.extend_from_slice(&((4 + name.len() + 1 + sql.len() + 1 + 2) as i32).to_be_bytes());
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m.extend_from_slice(&0i16.to_be_bytes());
        batch.extend_from_slice(&m);
        if i % 1000 == 999 {
            batch.extend_from_slice(&SYNC);
        }
    }
    batch.extend_from_slice(&SYNC);
    let writer = tokio::spawn(async move {
        let (mut rd, mut wr) = s.into_split();
        let w = tokio::spawn(async move {
            let _ = wr.write_all(&batch).await;
            wr
        });
        let mut all = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut all).await;
        let _ = w.await;
        all
    });
    let all = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the proxy must close the connection")
        .unwrap();
    // The last message is a FATAL 54000.
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("54000"), "no 54000 in the answer");
    let c = proxy.app("app").await;
    assert!(!c.simple_query("select 1").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_the_proxy_cannot_read_keeps_its_effects_to_its_client() {
    // A LATIN1 client's `SET search_path = 'café'; SELECT pg_advisory_lock(..), 'café'` is not
    // UTF-8: the proxy's scanners cannot see what it does, so the client must keep its connection (and the server connection
    // is reset when it leaves), never hand the setting to the next client.
    let proxy = Proxy::start(&config_text("", "size = 1"));
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in [
        "user",
        "trusty",
        "database",
        "app",
        "client_encoding",
        "LATIN1",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut start = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    start.extend(body);
    let mut a = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    a.write_all(&start).await.unwrap();
    let m = read_until(&mut a, b"ZE").await;
    assert_eq!(m.last().map(|m| m.0), Some(b'Z'), "{m:?}");
    let mut q = b"set search_path = 'caf\xe9'; select pg_advisory_lock(4242), 'caf\xe9'".to_vec();
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((q.len() + 5) as i32).to_be_bytes());
    msg.append(&mut q);
    msg.push(0);
    a.write_all(&msg).await.unwrap();
    let m = read_until(&mut a, b"Z").await;
    assert!(m.iter().all(|(t, _)| *t != b'E'), "{m:?}");
    let m = run(&mut a, "show search_path").await;
    let shown = data_text(&m);
    assert!(shown.len() == 1 && shown[0].contains("caf"), "{shown:?}");
    drop(a);
    // The session lock it took goes away with it (the pinned connection is reset).
    let admin = direct_superuser().await;
    let released = wait_until(Duration::from_secs(10), || async {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_locks where locktype = 'advisory' and objid = 4242",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(released, "the advisory lock stayed on a pooled connection");
    let c = proxy.app("app").await;
    let path: String = c.query_one("show search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
}

/// A Bind of the unnamed statement and an Execute of the unnamed portal, then Sync.
fn bind_unnamed_and_execute() -> Vec<u8> {
    let mut m = vec![b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&SYNC);
    m
}

/// One client's unnamed statement stays its own: on a pool of one connection, client B's Bind
/// of the unnamed statement (without a Parse of its own) gets 26000, as on a connection of
/// its own, never client A's statement and its rows; each client's later Binds run its own
/// statement, wherever the other's was parsed since, until a simple Query drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_unnamed_statement_is_never_run() {
    let proxy = Proxy::start(&config_text("", "size = 1"));
    let mut a = login_trust(proxy.port, "trusty", "app").await;
    let mut parse_a = parse("select 'secret of a'");
    parse_a.extend_from_slice(&SYNC);
    a.write_all(&parse_a).await.unwrap();
    let m = read_until(&mut a, b"Z").await;
    assert_eq!(m.first().map(|x| x.0), Some(b'1'), "{m:?}");
    let mut b = login_trust(proxy.port, "trusty", "app").await;
    b.write_all(&bind_unnamed_and_execute()).await.unwrap();
    let m = read_until(&mut b, b"Z").await;
    assert!(
        data_text(&m).is_empty(),
        "client b ran client a's statement: {m:?}"
    );
    assert_eq!(
        integration_tests::raw::error_code(&m).as_deref(),
        Some("26000"),
        "{m:?}"
    );
    // B's error changed nothing on the connection: A's statement still answers A.
    a.write_all(&bind_unnamed_and_execute()).await.unwrap();
    let m = read_until(&mut a, b"Z").await;
    assert_eq!(data_text(&m), vec!["secret of a".to_string()], "{m:?}");
    // B parses its own on the one connection; each client's Bind then runs its own statement
    // (the proxy parses it again, unseen, where the connection holds the other's).
    let mut parse_b = parse("select 'b'");
    parse_b.extend_from_slice(&bind_unnamed_and_execute());
    b.write_all(&parse_b).await.unwrap();
    let m = read_until(&mut b, b"Z").await;
    assert_eq!(data_text(&m), vec!["b".to_string()], "{m:?}");
    for _ in 0..2 {
        a.write_all(&bind_unnamed_and_execute()).await.unwrap();
        let m = read_until(&mut a, b"Z").await;
        assert_eq!(
            m.first().map(|x| x.0),
            Some(b'2'),
            "no ParseComplete seen: {m:?}"
        );
        assert_eq!(data_text(&m), vec!["secret of a".to_string()], "{m:?}");
        b.write_all(&bind_unnamed_and_execute()).await.unwrap();
        let m = read_until(&mut b, b"Z").await;
        assert_eq!(data_text(&m), vec!["b".to_string()], "{m:?}");
    }
    // A simple Query drops the unnamed statement, as in Postgres.
    run(&mut a, "select 1").await;
    a.write_all(&bind_unnamed_and_execute()).await.unwrap();
    let m = read_until(&mut a, b"Z").await;
    assert_eq!(
        integration_tests::raw::error_code(&m).as_deref(),
        Some("26000"),
        "{m:?}"
    );
}
