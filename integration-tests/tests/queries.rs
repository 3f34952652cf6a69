//! Simple and extended query protocol through the proxy: multi-statement strings, errors inside
//! transactions, pipelining, binary results, COPY in and out, statement-mode refusals.

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use integration_tests::{cluster, config_text, sqlstate, Proxy};
use tokio_postgres::SimpleQueryMessage;

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_multi_statement_and_error_recovery() {
    let proxy = Proxy::start(&config_text("", "size = 3"));
    let c = proxy.app("app").await;
    let port: i32 = c
        .query_one("select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        port as u16,
        cluster().port(),
        "answered by the configured server"
    );

    let msgs = c
        .simple_query("select 1 as a; select 'x' || 'y'; select generate_series(1,3)")
        .await
        .unwrap();
    assert_eq!(
        rows(&msgs),
        vec![vec!["1"], vec!["xy"], vec!["1"], vec!["2"], vec!["3"]]
    );
    // empty query
    assert!(rows(&c.simple_query("").await.unwrap()).is_empty());

    c.batch_execute("drop table if exists q_err; create table q_err (id int primary key)")
        .await
        .unwrap();
    c.batch_execute("begin; insert into q_err values (1)")
        .await
        .unwrap();
    let e = c
        .batch_execute("insert into q_err values (1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"));
    let e = c.simple_query("select 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("25P02"),
        "aborted transaction"
    );
    c.batch_execute("rollback").await.unwrap();
    let n: i64 = c
        .query_one("select count(*) from q_err", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "rolled back");
    assert_eq!(
        rows(&c.simple_query("select 42").await.unwrap()),
        vec![vec!["42"]],
        "usable after ROLLBACK"
    );
    // a syntax error outside a transaction leaves the connection usable
    let e = c.simple_query("selec 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42601"));
    assert_eq!(
        rows(&c.simple_query("select 7").await.unwrap()),
        vec![vec!["7"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_pipelining_binary_and_copy() {
    let proxy = Proxy::start(&config_text("", "size = 3"));
    let c = proxy.app("app_session").await;

    // Binary results of several types through the extended protocol.
    let row = c
        .query_one(
            "select $1::int8 + 1, $2::text || '!', 1.5::float8, true, '\\x0102'::bytea",
            &[&41i64, &"hi"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Vec<u8>>(4), vec![1u8, 2]);

    // Pipelining: many queries in flight on one connection before any answer is read.
    let stmt = c.prepare("select $1::int4 * 2").await.unwrap();
    let params: Vec<i32> = (0..50).collect();
    let futs: Vec<_> = params
        .iter()
        .map(|i| {
            let (c, stmt) = (&c, &stmt);
            async move { c.query_one(stmt, &[i]).await }
        })
        .collect();
    let results = futures_util::future::try_join_all(futs).await.unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 * 2);
    }

    // COPY FROM STDIN and COPY TO STDOUT.
    c.batch_execute("drop table if exists q_copy; create table q_copy (id int, name text)")
        .await
        .unwrap();
    let sink = c
        .copy_in("copy q_copy (id, name) from stdin")
        .await
        .unwrap();
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\tname{i}\n"));
    }
    sink.send(Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 1000);
    let stream = c
        .copy_out("copy (select id, name from q_copy order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A failed COPY leaves the connection usable.
    // (tokio-postgres' own copy_in cannot recover from a failed COPY even on a direct
    // connection, so the failure is exercised with the simple protocol.)
    let e = c
        .simple_query("copy no_such_table from stdin")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
    let v: i32 = c.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);

    // Streaming a large result (bigger than the proxy's buffers) arrives complete.
    let rows = c
        .query_raw(
            "select repeat('x', 1000) from generate_series(1, 5000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    pin_mut!(rows);
    let mut count = 0;
    while let Some(r) = rows.next().await {
        assert_eq!(r.unwrap().get::<_, String>(0).len(), 1000);
        count += 1;
    }
    assert_eq!(count, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_keeps_a_transaction_on_one_server_connection() {
    let proxy = Proxy::start(&config_text("", "size = 4"));
    let c = proxy.app("app").await;
    c.batch_execute("begin").await.unwrap();
    let pid1: i32 = c
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..5 {
        // other clients churn the pool meanwhile
        let other = proxy.app("app").await;
        other.simple_query("select 1").await.unwrap();
    }
    let pid2: i32 = c
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        pid1, pid2,
        "one server connection for the whole transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refuses_transactions_but_runs_statements() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    // app_md5: no other test of this binary logs in as it, so pg_stat_activity below sees only
    // this test's server connections.
    let c = proxy
        .connect("app_md5", "app_md5", "app_statement")
        .await
        .unwrap();
    assert_eq!(
        rows(&c.simple_query("select 1").await.unwrap()),
        vec![vec!["1"]]
    );
    let e = c.batch_execute("begin").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
    // A transaction opened inside a multi-statement string is rolled back and refused too.
    let e = c.batch_execute("select 1; begin").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
    let direct = integration_tests::direct_superuser().await;
    let open: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app_md5' and state like 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no server connection left inside a transaction");
    assert_eq!(
        rows(&c.simple_query("select 2").await.unwrap()),
        vec![vec!["2"]]
    );
}

/// Statement mode, queries pipelined in one write: the refused BEGIN gets its error and one
/// ReadyForQuery `I`, and each statement after it its own answer and ReadyForQuery (the
/// proxy writes the client's ReadyForQuery itself instead of cutting it out of the output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_refusal_keeps_pipelined_answers_in_order() {
    use integration_tests::raw::{error_code, login_trust, read_until};
    use tokio::io::AsyncWriteExt;

    let proxy = Proxy::start(&config_text("", "size = 2"));
    let mut s = login_trust(proxy.port, "trusty", "app_statement").await;
    let query = |sql: &str| {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    };
    for round in 0..20 {
        let batch = [query("begin"), query("select 41 + 1"), query("select 'x'")].concat();
        s.write_all(&batch).await.unwrap();
        let first = read_until(&mut s, b"Z").await;
        assert_eq!(
            error_code(&first).as_deref(),
            Some("0A000"),
            "round {round}: {first:?}"
        );
        assert_eq!(first.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
        assert!(
            !first.iter().any(|m| m.0 == b'D'),
            "round {round}: {first:?}"
        );
        let second = read_until(&mut s, b"Z").await;
        let rows: Vec<&Vec<u8>> = second
            .iter()
            .filter(|m| m.0 == b'D')
            .map(|m| &m.1)
            .collect();
        assert_eq!(rows.len(), 1, "round {round}: {second:?}");
        assert!(rows[0].ends_with(b"42"), "round {round}: {second:?}");
        assert_eq!(second.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
        let third = read_until(&mut s, b"Z").await;
        assert!(
            third.iter().any(|m| m.0 == b'D' && m.1.ends_with(b"x")),
            "round {round}: {third:?}"
        );
        assert_eq!(third.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_parameter_status_and_function_call_pass_through() {
    use integration_tests::raw::{login_trust, read_until};
    use tokio::io::AsyncWriteExt;

    let proxy = Proxy::start(&config_text("", "size = 2"));
    let direct = integration_tests::direct_superuser().await;
    let abs_oid: u32 = direct
        .query_one("select 'abs(int4)'::regprocedure::oid", &[])
        .await
        .unwrap()
        .get(0);
    for db in ["app", "app_session"] {
        let mut s = login_trust(proxy.port, "trusty", db).await;
        let q = |sql: &str| {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
            m.extend_from_slice(sql.as_bytes());
            m.push(0);
            m
        };
        // NoticeResponse
        s.write_all(&q("DO $$BEGIN RAISE NOTICE 'hello from plpgsql'; END$$"))
            .await
            .unwrap();
        let msgs = read_until(&mut s, b"Z").await;
        let notice = msgs
            .iter()
            .find(|(t, _)| *t == b'N')
            .expect("notice forwarded");
        assert!(String::from_utf8_lossy(&notice.1).contains("hello from plpgsql"));
        // asynchronous ParameterStatus after SET of a reported setting
        s.write_all(&q("SET application_name = 'through-proxy'"))
            .await
            .unwrap();
        let msgs = read_until(&mut s, b"Z").await;
        let ps = msgs
            .iter()
            .find(|(t, _)| *t == b'S')
            .expect("ParameterStatus forwarded");
        assert_eq!(ps.1, b"application_name\0through-proxy\0");
        // FunctionCall: abs(-7) with a text-format argument and result
        let mut body = abs_oid.to_be_bytes().to_vec();
        body.extend_from_slice(&1i16.to_be_bytes()); // one format code
        body.extend_from_slice(&0i16.to_be_bytes()); // text
        body.extend_from_slice(&1i16.to_be_bytes()); // one argument
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"-7");
        body.extend_from_slice(&0i16.to_be_bytes()); // result format text
        let mut f = vec![b'F'];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend(body);
        s.write_all(&f).await.unwrap();
        let msgs = read_until(&mut s, b"Z").await;
        let v = msgs
            .iter()
            .find(|(t, _)| *t == b'V')
            .expect("FunctionCallResponse");
        assert_eq!(&v.1[4..], b"7", "{msgs:?}");
        assert_eq!(msgs.last().unwrap().1, b"I");
    }
}
