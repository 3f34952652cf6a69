//! Bad input, vanished clients, cancel, limits and shutdown: each gets a clear error (or a clean
//! close) and never disturbs other clients.

use integration_tests::raw::{self, closed, error_code, login_trust, read_until};
use integration_tests::{config_text, direct_superuser, sqlstate, wait_until, Proxy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A well-behaved client that keeps querying until stopped; returns how many queries succeeded.
fn bystander(proxy: &Proxy, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let conn_str = proxy.conn_str("app", "app", "app");
    tokio::spawn(async move {
        let c = integration_tests::connect(&conn_str).await.unwrap();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let v: i32 = c
                .query_one("select 1", &[])
                .await
                .expect("bystander query")
                .get(0);
            assert_eq!(v, 1);
            n += 1;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_and_others_keep_working() {
    let proxy = Proxy::start(&config_text(
        "client_login_timeout_ms = 1000\nmax_message_size = 65536",
        "size = 3",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let other = bystander(&proxy, stop.clone());

    // 1. garbage instead of a startup packet
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let msgs = read_until(&mut s, b"E").await;
    assert_eq!(error_code(&msgs).as_deref(), Some("08P01"), "{msgs:?}");
    assert!(closed(&mut s).await);

    // 2a. truncated startup packet, then the client closes its side
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let start = raw::startup("app", "app");
    s.write_all(&start[..start.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let msgs = read_until(&mut s, b"E").await;
    assert_eq!(error_code(&msgs).as_deref(), Some("08P01"), "{msgs:?}");

    // 2b. truncated startup packet and silence: the login timeout closes it
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&start[..7]).await.unwrap();
    let t = Instant::now();
    let msgs = read_until(&mut s, b"E").await;
    assert_eq!(error_code(&msgs).as_deref(), Some("08P01"), "{msgs:?}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // 3. an oversized message after login: error, then close
    let mut s = login_trust(proxy.port, "trusty", "app").await;
    let mut m = vec![b'Q'];
    m.extend_from_slice(&(1_000_000i32).to_be_bytes());
    m.extend_from_slice(b"select 1");
    s.write_all(&m).await.unwrap();
    let msgs = read_until(&mut s, b"E").await;
    assert_eq!(error_code(&msgs).as_deref(), Some("54000"), "{msgs:?}");
    assert!(closed(&mut s).await);

    // 4. a negative length and an unknown message type after login
    for bad in [vec![b'Q', 0xff, 0xff, 0xff, 0xf0], vec![b'?', 0, 0, 0, 4]] {
        let mut s = login_trust(proxy.port, "trusty", "app").await;
        s.write_all(&bad).await.unwrap();
        let msgs = read_until(&mut s, b"E").await;
        assert_eq!(error_code(&msgs).as_deref(), Some("08P01"), "{msgs:?}");
        assert!(closed(&mut s).await);
    }

    // 5. an unsupported protocol version
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut v2 = start.clone();
    v2[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
    s.write_all(&v2).await.unwrap();
    let msgs = read_until(&mut s, b"E").await;
    assert_eq!(error_code(&msgs).as_deref(), Some("0A000"), "{msgs:?}");

    // 6. SSLRequest is refused with 'N' and the login proceeds in clear text
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut n)
        .await
        .unwrap();
    assert_eq!(&n, b"N");
    s.write_all(&raw::startup("trusty", "app")).await.unwrap();
    let msgs = read_until(&mut s, b"ZE").await;
    assert_eq!(msgs.last().unwrap().0, b'Z');

    stop.store(true, Ordering::Relaxed);
    let done = other.await.expect("bystander never failed");
    assert!(done > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transaction_releases_its_row_lock() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let setup = proxy.app("app").await;
    setup
        .batch_execute(
            "drop table if exists r_lock; create table r_lock (id int primary key, v int); insert into r_lock values (1, 0)",
        )
        .await
        .unwrap();
    // client A takes a row lock inside a transaction, then vanishes without a word
    let (a, conn) =
        tokio_postgres::connect(&proxy.conn_str("app", "app", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    a.batch_execute("begin; update r_lock set v = 1 where id = 1")
        .await
        .unwrap();
    conn_task.abort();
    let _ = conn_task.await;
    drop(a);
    // client B can update that row within a second
    let b = proxy.app("app").await;
    let t = Instant::now();
    b.batch_execute(
        "begin; set local lock_timeout = '1s'; update r_lock set v = 2 where id = 1; commit",
    )
    .await
    .expect("row lock was released");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    let v: i32 = b
        .query_one("select v from r_lock where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2, "A's uncommitted update was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_query_and_the_connection_stays_usable() {
    let proxy = Proxy::start(&config_text("", "size = 3"));
    for db in ["app", "app_session"] {
        let c = proxy.app(db).await;
        let token = c.cancel_token();
        let busy = proxy.app(db).await; // another client's query must not be cancelled
        let busy_q = tokio::spawn(async move {
            busy.query_one("select 7 from pg_sleep(1.5)", &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        });
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t = Instant::now();
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            t
        });
        let t0 = Instant::now();
        let e = c.simple_query("select pg_sleep(30)").await.unwrap_err();
        let sent = canceller.await.unwrap();
        assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "cancel took {:?}",
            sent.elapsed()
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        let v: i32 = c.query_one("select 3", &[]).await.unwrap().get(0);
        assert_eq!(v, 3, "usable after cancel");
        assert_eq!(
            busy_q.await.unwrap().unwrap(),
            7,
            "other client's query not cancelled"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_and_checkout_timeout_give_errors_without_dropping_others() {
    let proxy = Proxy::start(&config_text(
        "max_client_connections = 3",
        "size = 1\ncheckout_timeout_ms = 300",
    ));
    let a = proxy.app("app").await;
    let b = proxy.app("app").await;
    let c = proxy.app("app").await;
    let e = proxy.connect("app", "app", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"));

    // A holds the only server connection in a transaction: B waits, times out, keeps its
    // connection and succeeds once A commits.
    a.batch_execute("begin; select 1").await.unwrap();
    let t = Instant::now();
    let e = b.simple_query("select 2").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(250));
    // extended protocol gets the same error and its Sync is answered
    let e = c.query_one("select $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    a.batch_execute("commit").await.unwrap();
    let v: i32 = b.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    let v: i32 = c
        .query_one("select $1::int", &[&5i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 5);

    // a slot frees up when a client leaves
    drop(a);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            proxy.connect("app", "app", "app").await.is_ok()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_transactions_finish() {
    let mut proxy = Proxy::start(&config_text("shutdown_timeout_ms = 5000", "size = 2"));
    let port = proxy.port;
    let idle = proxy.app("app").await;
    let busy = proxy.app("app").await;
    busy.batch_execute("drop table if exists r_shut; create table r_shut (v int)")
        .await
        .unwrap();
    busy.batch_execute("begin; insert into r_shut values (1)")
        .await
        .unwrap();
    proxy.begin_shutdown();
    // the idle client is told and closed
    assert!(
        wait_until(Duration::from_secs(5), || async { idle.is_closed() }).await,
        "idle client not closed"
    );
    // new clients are refused
    assert!(
        wait_until(Duration::from_secs(5), || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_err()
        })
        .await
    );
    // the open transaction can still commit
    busy.batch_execute("insert into r_shut values (2); commit")
        .await
        .unwrap();
    proxy.stop();
    let direct = direct_superuser().await;
    let n: i64 = direct
        .query_one("select count(*) from r_shut", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert!(busy.is_closed() || busy.simple_query("select 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_vanishing_leak_no_server_connection() {
    let proxy = Proxy::start(&config_text("", "size = 2\ncheckout_timeout_ms = 10000"));
    let done = Arc::new(AtomicU64::new(0));
    for round in 0..20 {
        let (c, conn) =
            tokio_postgres::connect(&proxy.conn_str("app", "app", "app"), tokio_postgres::NoTls)
                .await
                .unwrap();
        let task = tokio::spawn(conn);
        // leave in various states: idle, in a transaction, mid-query
        match round % 3 {
            0 => {}
            1 => c.batch_execute("begin; select 1").await.unwrap(),
            _ => {
                let q = tokio::spawn(async move { c.simple_query("select pg_sleep(5)").await });
                tokio::time::sleep(Duration::from_millis(50)).await;
                q.abort();
            }
        }
        task.abort();
        done.fetch_add(1, Ordering::Relaxed);
    }
    // the pool of 2 still serves clients promptly
    let c = proxy.app("app").await;
    let t = Instant::now();
    for _ in 0..10 {
        c.batch_execute("begin; select 1; commit").await.unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "pool starved: {:?}",
        t.elapsed()
    );
    assert_eq!(done.load(Ordering::Relaxed), 20);
}

/// While the proxy shuts down, a client idle inside its transaction still gets its own idle
/// timeout (FATAL 25P03, its transaction rolled back) when it strikes, not only the end of the
/// shutdown grace. (Before, the timeout's wake-up was skipped during a shutdown, and it fired
/// again at once: the session spun until `shutdown_timeout_ms` closed it without a word.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_times_out_during_a_shutdown() {
    let mut proxy = Proxy::start(&config_text(
        "shutdown_timeout_ms = 20000\nidle_transaction_timeout_ms = 300",
        "size = 2",
    ));
    let mut s = login_trust(proxy.port, "trusty", "app").await;
    let q = |sql: &str| {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };
    s.write_all(&q("BEGIN; SELECT 1")).await.unwrap();
    let msgs = read_until(&mut s, b"Z").await;
    assert_eq!(
        msgs.last().map(|m| m.1.as_slice()),
        Some(&b"T"[..]),
        "{msgs:?}"
    );
    let started = Instant::now();
    proxy.begin_shutdown();
    let msgs = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, b"E"))
        .await
        .expect("the idle transaction's timeout strikes during the shutdown");
    assert_eq!(error_code(&msgs).as_deref(), Some("25P03"), "{msgs:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    proxy.stop();
}
