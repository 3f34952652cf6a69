//! `SHOW QUERIES`: after a known workload through the proxy (simple queries whose literals
//! and sqlcommenter comments vary, errors, prepared statements, a pipeline of two shapes,
//! writes), each shape has exact calls, errors, rows, and reads on the replica vs writes on
//! the primary; in transaction mode with read/write splitting and in session mode.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use futures_util::FutureExt;
use integration_tests::{cluster, config_text, replica, split_config, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PASSWORD: &str = "qu3ry-stats";

/// One `SHOW QUERIES` row, by column name.
type Row = HashMap<String, String>;

async fn show_queries(p: &Proxy) -> Vec<Row> {
    let admin = p
        .connect("admin", ADMIN_PASSWORD, "shardgate")
        .await
        .expect("admin login");
    let msgs = admin.simple_query("SHOW QUERIES").await.unwrap();
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The one row whose shape contains `marker`.
fn shape<'a>(rows: &'a [Row], marker: &str) -> &'a Row {
    let found: Vec<&Row> = rows
        .iter()
        .filter(|r| r["query"].contains(marker))
        .collect();
    assert_eq!(found.len(), 1, "one shape with {marker}: {rows:#?}");
    found[0]
}

/// (calls, errors, rows, on_replica, on_primary) of a shape.
fn counts(r: &Row) -> (u64, u64, u64, u64, u64) {
    let n = |k: &str| r[k].parse::<u64>().unwrap_or_else(|_| panic!("{k}: {r:?}"));
    (
        n("calls"),
        n("errors"),
        n("rows"),
        n("on_replica"),
        n("on_primary"),
    )
}

/// Times are consistent: a mean within the total, p50 ≤ p99 ≤ the longest call.
fn check_times(r: &Row) {
    let n = |k: &str| r[k].parse::<u64>().unwrap();
    assert!(n("total_us") >= n("mean_us") * n("calls"), "{r:?}");
    assert!(n("total_us") > 0, "{r:?}");
    assert!(
        n("p50_us") <= n("p99_us") && n("p99_us") <= n("max_us"),
        "{r:?}"
    );
    assert_eq!(r["query_id"].len(), 16, "{r:?}");
}

/// The workload both tests run: returns nothing, the counts are asserted by the caller.
async fn workload(c: &Client) {
    for i in 0..6 {
        // Half carry a sqlcommenter traceparent (a different trace each): the same shape.
        let comment = match i % 2 {
            0 => format!("/* traceparent='00-{i:032x}-{:016x}-01' */", i + 1),
            _ => String::new(),
        };
        let sql = format!("SELECT {i} AS qs_simple {comment}");
        c.simple_query(&sql).await.unwrap();
    }
    for _ in 0..3 {
        let e = c.simple_query("SELECT 1/0 AS qs_error").await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("22012"));
    }
    let ext = c
        .prepare("SELECT g AS qs_ext FROM generate_series(1, $1::int) g")
        .await
        .unwrap();
    for n in 1..=4i32 {
        assert_eq!(c.query(&ext, &[&n]).await.unwrap().len(), n as usize);
    }
    // A pipeline (each request a Bind, Execute and Sync) of two shapes, interleaved.
    let pipe = c.prepare("SELECT $1::int AS qs_pipe").await.unwrap();
    let (five, one, two, three) = (5i32, 1i32, 2i32, 3i32);
    let answers = try_join_all([
        c.query(&ext, &[&five]).boxed(),
        c.query(&pipe, &[&one]).boxed(),
        c.query(&pipe, &[&two]).boxed(),
        c.query(&ext, &[&one]).boxed(),
        c.query(&pipe, &[&three]).boxed(),
    ])
    .await
    .unwrap();
    let lens: Vec<usize> = answers.iter().map(Vec::len).collect();
    assert_eq!(lens, [5, 1, 1, 1, 1]);
}

/// What the workload leaves in `SHOW QUERIES`, `replica`: whether its reads ran on a replica.
fn check_workload(rows: &[Row], replica: bool) {
    let on = |calls: u64| match replica {
        true => (calls, 0),
        false => (0, calls),
    };
    let with = |calls, errors, rows| {
        let (r, p) = on(calls);
        (calls, errors, rows, r, p)
    };
    assert_eq!(counts(shape(rows, "qs_simple")), with(6, 0, 6));
    assert_eq!(counts(shape(rows, "qs_error")), with(3, 3, 0));
    assert_eq!(
        counts(shape(rows, "qs_ext")),
        with(6, 0, 1 + 2 + 3 + 4 + 5 + 1)
    );
    assert_eq!(counts(shape(rows, "qs_pipe")), with(3, 0, 3));
    for m in ["qs_simple", "qs_ext", "qs_pipe"] {
        check_times(shape(rows, m));
    }
    assert!(
        !rows.iter().any(|r| r["query"].contains("traceparent")),
        "comments are not part of a shape"
    );
    assert!(
        !shape(rows, "qs_simple")["query"].contains("SELECT 0"),
        "literals are masked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_queries_counts_reads_on_the_replica_and_writes_on_the_primary() {
    cluster()
        .psql(
            "app",
            "DROP TABLE IF EXISTS qs_t; CREATE TABLE qs_t (id int); GRANT ALL ON qs_t TO app",
        )
        .unwrap();
    let servers = format!(
        "primary = \"{}\"\nreplicas = [\"{}\"]",
        cluster().addr(),
        replica().addr()
    );
    let config = split_config(&servers, "", "size = 4").replacen(
        "[proxy]\n",
        &format!("[proxy]\nadmin_password = \"{ADMIN_PASSWORD}\"\n"),
        1,
    );
    let p = Proxy::start(&config);
    // A client that never writes reads from the replica.
    let reader = p.app("app").await;
    workload(&reader).await;
    let writer = p.app("app").await;
    for i in 0..2 {
        let sql = format!("INSERT INTO qs_t VALUES ({i}) /* qs_write */");
        writer.simple_query(&sql).await.unwrap();
    }
    let insert = writer
        .prepare("INSERT INTO qs_t SELECT g FROM generate_series(1, $1::int) g")
        .await
        .unwrap();
    assert_eq!(writer.execute(&insert, &[&7i32]).await.unwrap(), 7);
    let rows = show_queries(&p).await;
    check_workload(&rows, true);
    assert_eq!(
        counts(shape(&rows, "INSERT INTO qs_t VALUES")),
        (2, 0, 2, 0, 2)
    );
    assert_eq!(
        counts(shape(&rows, "INSERT INTO qs_t SELECT")),
        (1, 0, 7, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_queries_counts_session_mode_statements_and_can_be_turned_off() {
    let proxy_keys = format!("admin_password = \"{ADMIN_PASSWORD}\"");
    let p = Proxy::start(&config_text(&proxy_keys, ""));
    let c = p.app("app_session").await;
    workload(&c).await;
    check_workload(&show_queries(&p).await, false);

    let off = Proxy::start(&config_text(
        &format!("{proxy_keys}\nquery_stats_size = 0"),
        "",
    ));
    let c = off.app("app").await;
    workload(&c).await;
    assert!(show_queries(&off).await.is_empty(), "nothing tracked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_logged_with_the_plan_of_their_server() {
    cluster()
        .psql(
            "app",
            "DROP TABLE IF EXISTS qs_slow; CREATE TABLE qs_slow (id int, v int); \
             INSERT INTO qs_slow SELECT g, g FROM generate_series(1, 10000) g; \
             ANALYZE qs_slow; GRANT ALL ON qs_slow TO app",
        )
        .unwrap();
    let p = Proxy::start(&config_text(
        &format!(
            "admin_password = \"{ADMIN_PASSWORD}\"\nslow_query_ms = 50\n\
             slow_query_explain_interval_ms = 600000"
        ),
        "",
    ));
    let c = p.app("app").await;
    c.simple_query("SELECT 1 AS qs_fast").await.unwrap();
    // An unindexed column: the plan is a sequential scan. Twice: one plan per interval.
    for v in [7, 8] {
        let sql = format!("SELECT id, pg_sleep(0.1) FROM qs_slow WHERE v = {v}");
        c.simple_query(&sql).await.unwrap();
    }
    c.query("SELECT pg_sleep($1::float8) AS qs_slow_ext", &[&0.06f64])
        .await
        .unwrap();
    let slow = || async {
        let admin = p
            .connect("admin", ADMIN_PASSWORD, "shardgate")
            .await
            .unwrap();
        let msgs = admin.simple_query("SHOW SLOW_QUERIES").await.unwrap();
        msgs.iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| {
                            (
                                r.columns()[i].name().to_string(),
                                r.get(i).unwrap_or("").to_string(),
                            )
                        })
                        .collect::<Row>(),
                ),
                _ => None,
            })
            .collect::<Vec<Row>>()
    };
    let planned = integration_tests::wait_until(std::time::Duration::from_secs(30), || async {
        slow()
            .await
            .iter()
            .any(|r| r["plan"].contains("Seq Scan on qs_slow"))
    })
    .await;
    let rows = slow().await;
    assert!(planned, "the first slow query's plan: {rows:#?}");
    assert_eq!(rows.len(), 3, "three slow queries, newest first: {rows:#?}");
    assert!(rows[0]["query"].contains("qs_slow_ext"), "{rows:#?}");
    assert!(rows[0]["plan"].starts_with("(not explained"), "{rows:#?}");
    for r in &rows[1..] {
        assert!(r["query"].contains("FROM qs_slow WHERE v = $?"), "{r:?}");
        let us: u64 = r["duration_us"].parse().unwrap();
        assert!(us >= 100_000, "{r:?}");
        assert_eq!(r["server"], cluster().addr().to_string());
        assert_eq!(
            (r["role"].as_str(), r["database"].as_str()),
            ("primary", "app")
        );
    }
    assert!(rows[2]["plan"].contains("Filter: (v = 7)"), "{rows:#?}");
    assert!(
        rows[1]["plan"].contains("at most once per shape"),
        "{rows:#?}"
    );
    assert!(!rows.iter().any(|r| r["query"].contains("qs_fast")));
}
