//! Load through the proxy: pgbench in transaction and session mode, and 200 concurrent clients
//! sharing 5 server connections.

use integration_tests::{config_text, direct_superuser, pgbench, pgbench_number, Proxy};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

fn assert_clean_run(out: &str) {
    let failed = pgbench_number(out, "number of failed transactions:");
    assert_eq!(failed, Some(0), "pgbench reported failures:\n{out}");
    let done = pgbench_number(out, "number of transactions actually processed:").unwrap_or(0);
    assert!(done > 0, "no transactions processed:\n{out}");
}

#[test]
fn pgbench_transaction_mode_simple_and_extended_and_session_prepared() {
    let proxy = Proxy::start(&config_text("", "size = 8"));
    let url = proxy.url("app", "app", "app");
    let (ok, out) = pgbench(&url, &["-i", "-s", "2", "-q"]);
    assert!(ok, "pgbench -i through the proxy failed:\n{out}");
    for mode in ["simple", "extended"] {
        let (ok, out) = pgbench(
            &url,
            &["-S", "-M", mode, "-c", "16", "-j", "2", "-T", "5", "-n"],
        );
        assert!(ok, "pgbench -M {mode} failed:\n{out}");
        assert_clean_run(&out);
    }
    let session = proxy.url("app", "app", "app_session");
    let (ok, out) = pgbench(
        &session,
        &[
            "-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", "5", "-n",
        ],
    );
    assert!(ok, "pgbench -M prepared in session mode failed:\n{out}");
    assert_clean_run(&out);
    // the default TPC-B-like script (writes, explicit transactions) in transaction mode
    let (ok, out) = pgbench(&url, &["-c", "8", "-j", "2", "-T", "3", "-n"]);
    assert!(ok, "pgbench TPC-B-like failed:\n{out}");
    assert_clean_run(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_server_connections() {
    let proxy = Arc::new(Proxy::start(&config_text(
        "",
        "size = 5\ncheckout_timeout_ms = 60000",
    )));
    let monitor = direct_superuser().await;
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let mon = {
        let (stop, max_seen) = (stop.clone(), max_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = monitor
                    .query_one(
                        "select count(*) from pg_stat_activity where usename = 'app_md5' and application_name = 'shardgate'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max_seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            // app_md5: no other test of this binary uses it, so pg_stat_activity counts only
            // this proxy's connections.
            let c = proxy.connect("app_md5", "app_md5", "app").await.unwrap();
            let mut sum = 0i64;
            for j in 0..5i32 {
                let row = c
                    .simple_query(&format!("select {i} * 1000 + {j}, pg_sleep(0.001)"))
                    .await
                    .unwrap();
                for m in &row {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        sum += r.get(0).unwrap().parse::<i64>().unwrap();
                    }
                }
            }
            sum
        }));
    }
    let mut total = 0i64;
    for (i, t) in tasks.into_iter().enumerate() {
        let s = t.await.expect("client task");
        assert_eq!(s, (i as i64) * 5000 + 10, "client {i} got wrong answers");
        total += 1;
    }
    stop.store(true, Ordering::Relaxed);
    mon.await.unwrap();
    assert_eq!(total, 200);
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max >= 1, "monitor never saw the proxy's connections");
    assert!(
        max <= 5,
        "pg_stat_activity showed {max} proxy connections, pool is 5"
    );
}
