//! Changes behind a running proxy that must not become outages: a replica that gets reads from
//! the first second, a promotion under a steady stream of writes, the console's PAUSE /
//! RESUME / KILL_CLIENT / BAN / RECONNECT / DISABLE, and a rolling restart of one of two
//! instances sharing a port. Each test that breaks its servers starts its own; they run one at
//! a time (a lock) to keep the 2-core CI machine from timing out cluster starts.

// Each test has its own runtime and thread: holding the std lock across its awaits blocks only
// the other tests' threads, which is the point.
#![allow(clippy::await_holding_lock)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{
    fresh_primary, pgbench, pgbench_number, primary_with_replica, serial, split_config, sqlstate,
    Proxy,
};
use tokio_postgres::{Client, SimpleQueryMessage};

/// `split_config` with the admin console on (password `admin`) and `proxy` lines added.
fn config(servers: &str, routing: &str, pool: &str, proxy: &str) -> String {
    split_config(servers, routing, pool).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\nadmin_password = \"admin\"\n{proxy}"),
        1,
    )
}

async fn console(proxy: &Proxy) -> Client {
    proxy
        .connect("admin", "admin", "shardgate")
        .await
        .expect("console login")
}

/// Runs a console command; `Err`: its SQLSTATE.
async fn run(c: &Client, sql: &str) -> Result<(), String> {
    c.simple_query(sql)
        .await
        .map(|_| ())
        .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()))
}

async fn port_of(c: &Client) -> i32 {
    c.query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0)
}

/// The replica gets reads from the start, and keeps them: a lag not measured yet is no
/// reason to avoid it, and an idle primary never makes it look behind (before, a fresh proxy
/// banned its healthy replica for `ban_time_ms` within its first second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_the_replica_from_the_first_second() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    let interval = 100; // split_config's healthcheck_interval_ms
    let servers = format!("primary = \"{}\"\nreplicas = [\"{}\"]", p.addr(), r.addr());
    let started = Instant::now();
    let proxy = Proxy::start(&config(&servers, "max_replica_lag_ms = 300", "", ""));
    let c = proxy.app("app").await;
    let first = port_of(&c).await;
    let waited = started.elapsed();
    println!("first read answered by port {first} after {waited:?}");
    assert_eq!(first, r.port() as i32, "the first read went to the primary");
    assert!(
        waited < Duration::from_millis(2 * interval) + Duration::from_secs(2),
        "{waited:?}"
    );
    // Twenty health checks later every read still goes to the replica.
    let until = Instant::now() + Duration::from_millis(20 * interval);
    let mut reads = 0;
    while Instant::now() < until {
        assert_eq!(port_of(&c).await, r.port() as i32, "after {reads} reads");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = proxy.state.registry.health(&r.addr()).expect("replica");
    assert!(!health.banned() && health.checks() >= 10, "{health:?}");

    // BAN takes it out of rotation until UNBAN; the console's errors say what is wrong.
    let admin = console(&proxy).await;
    run(&admin, &format!("BAN {}", r.addr())).await.unwrap();
    assert_eq!(port_of(&c).await, p.port() as i32);
    assert_eq!(run(&admin, "BAN 127.0.0.1:1").await, Err("42704".into()));
    assert_eq!(run(&admin, "BAN").await, Err("42601".into()));
    run(&admin, &format!("UNBAN {}", r.addr())).await.unwrap();
    assert_eq!(port_of(&c).await, r.port() as i32);
}

/// A promotion under a write every 50 ms (servers of role `auto`): no write fails, none
/// reaches a read-only server, every acknowledged write is on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_under_writes_loses_no_write() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    p.psql(
        "app",
        "CREATE TABLE w (id serial, port int); GRANT ALL ON w, w_id_seq TO app",
    )
    .unwrap();
    let servers = format!(
        "servers = [{{ address = \"{}\", role = \"auto\" }}, {{ address = \"{}\", role = \"auto\" }}]",
        p.addr(),
        r.addr()
    );
    let proxy = Arc::new(Proxy::start(&config(
        &servers,
        "failover_hold_ms = 30000",
        "size = 4",
        "",
    )));
    let rp = r.port() as i32;
    let writes = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let (proxy, writes) = (proxy.clone(), writes.clone());
        tokio::spawn(async move {
            let c = proxy.app("app").await;
            let sql = "INSERT INTO w (port) VALUES (inet_server_port()) RETURNING port";
            let mut first_on_new: Option<Instant> = None;
            let mut errors = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while !*stop_rx.borrow() && Instant::now() < deadline {
                match c.query_one(sql, &[]).await {
                    Ok(row) => {
                        writes.fetch_add(1, Ordering::SeqCst);
                        if row.get::<_, i32>(0) == rp && first_on_new.is_none() {
                            first_on_new = Some(Instant::now());
                        }
                    }
                    Err(e) => errors.push(format!("{:?}: {e}", sqlstate(&e))),
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), stop_rx.changed()).await;
            }
            (first_on_new, errors)
        })
    };
    // Stop the primary right after a write was acknowledged (the next one is 50 ms away: the
    // stop does not cut a write in flight, which would fail as on a direct connection).
    let mut p = p;
    let wait_for = |n: u64| {
        let writes = writes.clone();
        async move {
            while writes.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait_for(5))
        .await
        .expect("writes before the failover");
    let n = writes.load(Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), wait_for(n + 1))
        .await
        .unwrap();
    let p = tokio::task::spawn_blocking(move || {
        p.stop();
        p
    })
    .await
    .unwrap();
    r.promote().unwrap();
    let promoted = Instant::now();
    let before = writes.load(Ordering::SeqCst);
    let after = tokio::time::timeout(Duration::from_secs(60), wait_for(before + 20)).await;
    stop_tx.send(true).unwrap();
    let (first_on_new, errors) = writer.await.unwrap();
    assert!(errors.is_empty(), "failed writes: {errors:?}");
    after.expect("writes after the promotion");
    let first = first_on_new.expect("a write on the new primary");
    println!(
        "promotion to the first write on the new primary: {:?}",
        first.saturating_duration_since(promoted)
    );
    let rows: u64 = r
        .psql("app", "SELECT count(*) FROM w")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        rows,
        writes.load(Ordering::SeqCst),
        "every acknowledged write"
    );
    drop(p);
}

/// PAUSE waits for the transactions in flight, then holds new ones (no query reaches the
/// server) until RESUME; pgbench sees no failure. KILL_CLIENT, RECONNECT and DISABLE act on
/// what they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_transactions_until_resume_under_pgbench() {
    let _g = serial();
    let p = fresh_primary();
    p.psql(
        "app",
        "CREATE TABLE log (at timestamptz default clock_timestamp()); GRANT ALL ON log TO app",
    )
    .unwrap();
    let proxy = Arc::new(Proxy::start(&config(
        &format!("primary = \"{}\"", p.addr()),
        "",
        "size = 4",
        "pause_timeout_ms = 20000",
    )));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("log.sql");
    std::fs::write(
        &script,
        "INSERT INTO log DEFAULT VALUES;\nSELECT pg_sleep(0.002);\n",
    )
    .unwrap();
    let url = proxy.url("app", "app", "app");
    let bench = {
        let (url, script) = (url.clone(), script.display().to_string());
        std::thread::spawn(move || {
            pgbench(
                &url,
                &["-n", "-c", "4", "-j", "2", "-T", "8", "-f", &script],
            )
        })
    };
    let admin = console(&proxy).await;
    let rows = || p.psql("app", "SELECT count(*) FROM log").unwrap();
    while rows().parse::<u64>().unwrap() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run(&admin, "PAUSE app").await.unwrap();
    let paused_at = p.psql("app", "SELECT clock_timestamp()").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resumed_at = p.psql("app", "SELECT clock_timestamp()").unwrap();
    run(&admin, "RESUME app").await.unwrap();
    assert_eq!(run(&admin, "RESUME app").await, Err("55000".into()));
    let (ok, out) = bench.join().unwrap();
    assert!(ok, "{out}");
    let failed = pgbench_number(&out, "number of failed transactions:").unwrap_or(0);
    assert_eq!(failed, 0, "{out}");
    let during = p
        .psql(
            "app",
            &format!("SELECT count(*) FROM log WHERE at > '{paused_at}' AND at < '{resumed_at}'"),
        )
        .unwrap();
    assert_eq!(during, "0", "rows written while paused");
    let after = p
        .psql(
            "app",
            &format!("SELECT count(*) FROM log WHERE at > '{resumed_at}'"),
        )
        .unwrap();
    assert!(after.parse::<u64>().unwrap() > 10, "{after}");

    // KILL_CLIENT ends one client (57P01), and only that one.
    let victim = proxy.app("app").await;
    let other = proxy.app("app").await;
    victim.simple_query("SELECT 1").await.unwrap();
    let ptr = {
        let rows = admin.simple_query("SHOW CLIENTS").await.unwrap();
        let ptrs: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get("ptr").map(str::to_string),
                _ => None,
            })
            .collect();
        assert!(ptrs.len() >= 2, "{ptrs:?}");
        ptrs
    };
    // The victim is the first of the two app clients logged in (SHOW CLIENTS is by login).
    run(&admin, &format!("KILL_CLIENT {}", ptr[ptr.len() - 2]))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = victim.simple_query("SELECT 1").await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed client ends");
    assert!(
        sqlstate(&e).as_deref() == Some("57P01") || victim.is_closed(),
        "{e}"
    );
    other.simple_query("SELECT 1").await.unwrap();
    assert_eq!(run(&admin, "KILL_CLIENT 0x0").await, Err("42704".into()));

    // RECONNECT: the next transaction runs on a new server connection.
    let before: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    run(&admin, "RECONNECT app").await.unwrap();
    let after: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        before, after,
        "RECONNECT closes the connections open before it"
    );

    // DISABLE refuses new logins (57P03) and keeps the ones in; ENABLE lets them in again.
    run(&admin, "DISABLE app").await.unwrap();
    let e = proxy.connect("app", "app", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57P03"), "{e}");
    other.simple_query("SELECT 1").await.unwrap();
    run(&admin, "ENABLE app").await.unwrap();
    proxy
        .app("app")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// Two instances on one port (`SO_REUSEPORT`) under `pgbench -C` (a new connection per
/// transaction): one is shut down from its console and started again while the other serves;
/// no transaction fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_one_of_two_instances_fails_no_transaction() {
    let _g = serial();
    // Connections queued on a closing SO_REUSEPORT listener move to the other one only with
    // this (per network namespace; Linux 5.14+). Without it a few could be reset.
    let migrate = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(migrate).is_ok_and(|v| v.trim() == "0") {
        std::fs::write(migrate, "1").expect("set net.ipv4.tcp_migrate_req = 1 (run as root)");
    }
    let p = fresh_primary();
    let text = config(
        &format!("primary = \"{}\"", p.addr()),
        "",
        "size = 4",
        "shutdown_timeout_ms = 10000",
    );
    let port = testkit::free_port();
    let a = Proxy::start_shared(&text, port);
    let b = Proxy::start_shared(&text, port);
    let url = format!("postgres://app:app@127.0.0.1:{port}/app");
    let (ok, out) = pgbench(&url, &["-i", "-s", "1"]);
    assert!(ok, "{out}");
    let bench = {
        let url = url.clone();
        std::thread::spawn(move || {
            pgbench(&url, &["-n", "-S", "-C", "-c", "4", "-j", "2", "-T", "8"])
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The console connection lands on either instance (the port is shared): that one stops.
    let admin = console(&a).await;
    run(&admin, "SHUTDOWN").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.finished() && !b.finished() {
        assert!(Instant::now() < deadline, "the instance did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stopped, b) = if a.finished() { (a, b) } else { (b, a) };
    stopped.stop();
    let a2 = Proxy::start_shared(&text, port);
    let (ok, out) = bench.join().unwrap();
    println!("{out}");
    assert!(ok, "{out}");
    let failed = pgbench_number(&out, "number of failed transactions:").unwrap_or(0);
    assert_eq!(failed, 0, "{out}");
    let done = pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0);
    assert!(done > 100, "{out}");
    a2.stop();
    b.stop();
}

/// RELOAD (and SIGHUP) while 50 clients run transactions: a user added, a pool size changed,
/// a replica added; no client fails or is dropped, new clients follow the new config; an
/// invalid config changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_drops_nobody_and_new_clients_follow_it() {
    let _g = serial();
    let (p, r) = primary_with_replica();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.toml");
    let primary_only = format!("primary = \"{}\"", p.addr());
    let text = config(&primary_only, "", "size = 4", "");
    std::fs::write(&path, &text).unwrap();
    let proxy = Arc::new(Proxy::start(&text));
    proxy.state.controls.set_source(path.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (proxy, stop_rx) = (proxy.clone(), stop_rx.clone());
        clients.push(tokio::spawn(async move {
            let c = proxy.app("app").await;
            let mut done = 0u64;
            while !*stop_rx.borrow() {
                c.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
                done += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<u64, tokio_postgres::Error>(done)
        }));
    }
    let admin = console(&proxy).await;
    let old = proxy.app("app").await;
    assert_eq!(port_of(&old).await, p.port() as i32);
    assert_eq!(
        proxy
            .connect("newbie", "newbie", "app")
            .await
            .err()
            .and_then(|e| sqlstate(&e)),
        Some("28P01".into())
    );
    let newbie = "[[users]]\nname = \"newbie\"\npassword = \"newbie\"\nserver_user = \"app\"\nserver_password = \"app\"\n";
    let servers = format!("{primary_only}\nreplicas = [\"{}\"]", r.addr());
    let reloaded = config(&servers, "", "size = 6", "").replacen(
        "[[databases]]",
        &format!("{newbie}\n[[databases]]"),
        1,
    );
    std::fs::write(&path, &reloaded).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    run(&admin, "RELOAD").await.unwrap();
    // New clients: the new user logs in, reads reach the new replica.
    let n = proxy
        .connect("newbie", "newbie", "app")
        .await
        .expect("the added user");
    assert_eq!(
        port_of(&n).await,
        r.port() as i32,
        "reads go to the added replica"
    );
    let fresh = proxy.app("app").await;
    assert_eq!(port_of(&fresh).await, r.port() as i32);
    // A client connected before the reload follows it from its next transaction on.
    assert_eq!(
        port_of(&old).await,
        r.port() as i32,
        "a connected client's next read"
    );
    // The new pool size is in force (a new console session sees the reloaded config).
    let rows = console(&proxy)
        .await
        .simple_query("SHOW DATABASES")
        .await
        .unwrap();
    let size = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get("name") == Some("app") => {
            r.get("pool_size").map(str::to_string)
        }
        _ => None,
    });
    assert_eq!(size.as_deref(), Some("6"));

    // An invalid config is refused (F0000) and changes nothing.
    std::fs::write(&path, "[proxy]\nno_such_key = 1\n").unwrap();
    assert_eq!(run(&admin, "RELOAD").await, Err("F0000".into()));
    proxy
        .connect("newbie", "newbie", "app")
        .await
        .expect("still the reloaded config");

    // SIGHUP reloads too.
    let late = reloaded.replacen("name = \"newbie\"", "name = \"late\"", 1);
    let late = late.replacen("password = \"newbie\"", "password = \"late\"", 1);
    std::fs::write(&path, &late).unwrap();
    // SAFETY: raising a signal the running proxy handles (tokio's SIGHUP listener).
    unsafe {
        libc::raise(libc::SIGHUP);
    }
    let joined = integration_tests::wait_until(Duration::from_secs(10), || async {
        proxy.connect("late", "late", "app").await.is_ok()
    })
    .await;
    assert!(joined, "SIGHUP did not reload");

    stop_tx.send(true).unwrap();
    for c in clients {
        let done = c
            .await
            .unwrap()
            .expect("a client failed during the reloads");
        assert!(done > 0);
    }
}
