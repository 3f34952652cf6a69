//! Read/write splitting against a real primary and a streaming replica made with
//! pg_basebackup: which server answers each statement (by `inet_server_port()`), for the simple
//! and the extended protocol, transactions, hints, proxy settings and load balancing.
//!
//! The replica is shared by the tests of this binary and never paused or stopped here (see
//! `replica_faults.rs` for those). A client that writes reads from the primary until the
//! replica has replayed its write (read-your-writes), so tests that expect the replica to
//! answer use clients that have not written.

use std::time::Duration;

use integration_tests::{cluster, replica, split_config, sqlstate, wait_psql, Proxy};
use tokio_postgres::Client;

fn proxy(routing: &str) -> Proxy {
    let servers = format!(
        "primary = \"{}\"\nreplicas = [\"{}\"]",
        cluster().addr(),
        replica().addr()
    );
    Proxy::start(&split_config(&servers, routing, "size = 4"))
}

fn ports() -> (i32, i32) {
    (cluster().port() as i32, replica().port() as i32)
}

async fn port_of(c: &Client, sql: &str) -> i32 {
    let rows = c.simple_query(sql).await.expect(sql);
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).expect("a value").parse().expect("a port");
        }
    }
    panic!("{sql}: no row");
}

/// Creates `table` (id int, v text) and a sequence `{table}_seq` on the primary and waits until
/// the replica has them.
fn setup_table(table: &str) {
    let p = cluster();
    p.psql(
        "app",
        &format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, v text); \
             GRANT ALL ON {table} TO app; DROP SEQUENCE IF EXISTS {table}_seq; \
             CREATE SEQUENCE {table}_seq; GRANT ALL ON {table}_seq TO app"
        ),
    )
    .unwrap();
    assert!(wait_psql(
        replica(),
        &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}_seq'"),
        "1",
        Duration::from_secs(30)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_reads_go_to_the_replica_and_writes_to_the_primary() {
    let (primary, replica_port) = ports();
    setup_table("rw_simple");
    let p = proxy("");
    let reader = p.app("app").await;
    for _ in 0..5 {
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            replica_port
        );
    }
    let rows = reader
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    let in_recovery = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(in_recovery.as_deref(), Some("t"));

    let writer = p.app("app").await;
    let port = port_of(
        &writer,
        "INSERT INTO rw_simple VALUES (1, 'a') RETURNING inet_server_port()",
    )
    .await;
    assert_eq!(port, primary);
    // Statements that only look like reads go to the primary.
    let t = "rw_simple";
    for sql in [
        format!("SELECT inet_server_port() FROM {t} FOR UPDATE"),
        format!("SELECT inet_server_port() FROM {t} WHERE id = 1 FOR SHARE"),
        format!("SELECT inet_server_port(), nextval('{t}_seq')"),
        format!(
            "WITH x AS (UPDATE {t} SET v = 'b' WHERE id = 1 RETURNING id) \
             SELECT inet_server_port() FROM x"
        ),
        // sqlparser cannot parse xmlelement(name ...): forwarded to the primary, not refused.
        "SELECT inet_server_port(), xmlelement(name foo)".to_string(),
    ] {
        let fresh = p.app("app").await;
        assert_eq!(port_of(&fresh, &sql).await, primary, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_is_classified_at_parse() {
    let (primary, replica_port) = ports();
    setup_table("rw_ext");
    let p = proxy("");
    let c = p.app("app").await;
    // Named (prepared once, executed several times) and unnamed statements.
    let read = c
        .prepare("SELECT inet_server_port() WHERE $1::int > 0")
        .await
        .unwrap();
    for i in 1..5 {
        let row = c.query_one(&read, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), replica_port);
    }
    let row = c
        .query_one("SELECT inet_server_port(), $1::text", &[&"x"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), replica_port);
    let row = c
        .query_one(
            "INSERT INTO rw_ext VALUES ($1, 'x') RETURNING inet_server_port()",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), primary);
    let row = c
        .query_one("SELECT inet_server_port(), nextval('rw_ext_seq')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stick_to_one_server() {
    let (primary, replica_port) = ports();
    setup_table("rw_tx");
    let p = proxy("");
    let mut c = p.app("app").await;
    {
        let tx = c.transaction().await.unwrap();
        let first = tx
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        assert_eq!(first.get::<_, i32>(0), primary, "a read-write transaction");
        tx.execute("INSERT INTO rw_tx VALUES (1, 'a')", &[])
            .await
            .unwrap();
        let seen = tx
            .query_one("SELECT count(*) FROM rw_tx", &[])
            .await
            .unwrap();
        assert_eq!(seen.get::<_, i64>(0), 1, "sees its own uncommitted row");
        tx.commit().await.unwrap();
    }
    let reader = p.app("app").await;
    for begin in ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"] {
        reader.simple_query(begin).await.unwrap();
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            replica_port
        );
        assert_eq!(
            port_of(&reader, "SELECT inet_server_port()").await,
            replica_port
        );
        reader.simple_query("COMMIT").await.unwrap();
    }
    reader.simple_query("BEGIN").await.unwrap();
    reader
        .simple_query("SET TRANSACTION READ ONLY")
        .await
        .unwrap();
    assert_eq!(
        port_of(&reader, "SELECT inet_server_port()").await,
        replica_port
    );
    reader.simple_query("ROLLBACK").await.unwrap();
    // A read-only transaction in one query string.
    assert_eq!(
        port_of(
            &reader,
            "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT"
        )
        .await,
        replica_port
    );
    // An empty transaction is answered by the proxy, and the client's state is right after.
    reader.simple_query("BEGIN").await.unwrap();
    reader.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        port_of(&reader, "SELECT inet_server_port()").await,
        replica_port
    );
    // A write in a read-only transaction fails as it would on the primary.
    reader.simple_query("BEGIN READ ONLY").await.unwrap();
    let e = reader
        .simple_query("INSERT INTO rw_tx VALUES (2, 'b')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"));
    reader.simple_query("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_session_target_override_classification() {
    let (primary, replica_port) = ports();
    let p = proxy("");
    let c = p.app("app").await;
    assert_eq!(
        port_of(&c, "/* shardgate: primary */ SELECT inet_server_port()").await,
        primary
    );
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, replica_port);
    c.simple_query("SET shardgate.target = primary")
        .await
        .unwrap();
    let rows = c.simple_query("SHOW shardgate.target").await.unwrap();
    assert!(rows.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("primary"))
    ));
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, primary);
    assert_eq!(
        port_of(&c, "/* shardgate: replica */ SELECT inet_server_port()").await,
        replica_port,
        "a hint beats the session setting"
    );
    c.simple_query("SET shardgate.target TO 'auto'")
        .await
        .unwrap();
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, replica_port);
    c.simple_query("SET shardgate.target = replica")
        .await
        .unwrap();
    let e = c
        .simple_query("CREATE TEMP TABLE nope (id int)")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("25006"),
        "sent to the replica as asked"
    );
    c.simple_query("RESET shardgate.target").await.unwrap();
    let e = c
        .simple_query("SET shardgate.target = sideways")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"));
    let e = c.simple_query("SHOW shardgate.nothing").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42704"));
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, replica_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_read_then_write_keeps_order_and_targets() {
    let (primary, replica_port) = ports();
    setup_table("rw_pipe");
    let p = proxy("");
    let c = p.app("app").await;
    let read = c.prepare("SELECT inet_server_port()").await.unwrap();
    let write = c
        .prepare("INSERT INTO rw_pipe VALUES ($1, 'p') RETURNING inet_server_port()")
        .await
        .unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let (r1, w, r2) = tokio::join!(
        c.query_one(&read, &[]),
        c.query_one(&write, &[&1i32]),
        c.query_one(&read, &[])
    );
    assert_eq!(r1.unwrap().get::<_, i32>(0), replica_port);
    assert_eq!(w.unwrap().get::<_, i32>(0), primary);
    // After its write the client reads from the primary until the replica has replayed it.
    let after = r2.unwrap().get::<_, i32>(0);
    assert_eq!(after, primary, "read-your-writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_spreads_reads() {
    let (primary, replica_port) = ports();
    for balance in ["round_robin", "random", "least_connections"] {
        let p = proxy(&format!(
            "load_balancing = \"{balance}\"\ninclude_primary = true"
        ));
        let clients = [p.app("app").await, p.app("app").await];
        let mut seen = std::collections::HashMap::new();
        for i in 0..40 {
            let port = port_of(&clients[i % 2], "SELECT inet_server_port()").await;
            *seen.entry(port).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{balance}: {seen:?}");
        assert!(seen.contains_key(&primary) && seen.contains_key(&replica_port));
        if balance == "round_robin" {
            assert_eq!(seen[&primary], 20, "{balance}: {seen:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_off_sends_everything_to_the_primary() {
    let (primary, _) = ports();
    let p = proxy("read_write_split = false");
    let c = p.app("app").await;
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, primary);
}

/// A read whose replica is terminated mid-answer (row description and a notice already sent,
/// the rows not yet) is retried on the primary: the client sees one answer, the primary's,
/// and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_cut_off_mid_answer_is_retried_without_a_trace() {
    use integration_tests::raw;
    use tokio::io::AsyncWriteExt;

    let (primary, replica_port) = ports();
    cluster()
        .psql(
            "app",
            "CREATE OR REPLACE FUNCTION rw_slow_notice() RETURNS int LANGUAGE plpgsql AS $$ \
             BEGIN RAISE NOTICE 'answering from %', inet_server_port(); \
             IF pg_is_in_recovery() THEN PERFORM pg_sleep(60); END IF; \
             RETURN inet_server_port(); END $$; \
             GRANT EXECUTE ON FUNCTION rw_slow_notice() TO app",
        )
        .unwrap();
    assert!(wait_psql(
        replica(),
        "SELECT count(*) FROM pg_proc WHERE proname = 'rw_slow_notice'",
        "1",
        Duration::from_secs(30)
    ));
    let p = proxy("");
    let mut s = raw::login_trust(p.port, "trusty", "app").await;
    let sql = b"SELECT rw_slow_notice()\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(sql);
    s.write_all(&q).await.unwrap();

    // Wait until the replica's backend is asleep after sending its notice, then end it.
    let terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE 'SELECT rw_slow_notice()%' AND wait_event = 'PgSleep'";
    assert!(wait_psql(
        replica(),
        terminate,
        "1",
        Duration::from_secs(30)
    ));
    let msgs = raw::read_until(&mut s, b"Z").await;
    let tags: Vec<char> = msgs.iter().map(|m| m.0 as char).collect();
    assert_eq!(tags, ['T', 'N', 'D', 'C', 'Z'], "{msgs:?}");
    let notice = String::from_utf8_lossy(&msgs[1].1).into_owned();
    assert!(
        notice.contains(&format!("answering from {primary}")),
        "{notice}"
    );
    assert!(!notice.contains(&replica_port.to_string()), "{notice}");
    let row = String::from_utf8_lossy(&msgs[2].1).into_owned();
    assert!(row.ends_with(&primary.to_string()), "{row}");
}

/// A read the replica refuses with an error that says the statement did not take effect and
/// another server need not give (the hot-standby conflict, `40001` "canceling statement due
/// to conflict with recovery", raised here by a function only on a server in recovery) is
/// run again on the primary, unseen by the client (simple and extended protocol); the
/// replica is not banned for it. The same error on the primary is the client's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_replica_refuses_with_a_retry_safe_error_runs_on_the_primary() {
    let (primary, replica_port) = ports();
    cluster()
        .psql(
            "app",
            "CREATE OR REPLACE FUNCTION standby_conflict(always boolean DEFAULT false) \
             RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
             IF always OR pg_is_in_recovery() THEN RAISE EXCEPTION \
             'canceling statement due to conflict with recovery' \
             USING ERRCODE = 'serialization_failure'; END IF; \
             RETURN inet_server_port(); END $$; \
             GRANT EXECUTE ON FUNCTION standby_conflict(boolean) TO app",
        )
        .unwrap();
    assert!(wait_psql(
        replica(),
        "SELECT count(*) FROM pg_proc WHERE proname = 'standby_conflict'",
        "1",
        Duration::from_secs(30)
    ));
    // On the replica itself the read fails.
    assert!(replica().psql("app", "SELECT standby_conflict()").is_err());
    let p = proxy("");
    let c = p.app("app").await;
    assert_eq!(port_of(&c, "SELECT inet_server_port()").await, replica_port);
    for _ in 0..3 {
        assert_eq!(port_of(&c, "SELECT standby_conflict()").await, primary);
        let row = c.query_one("SELECT standby_conflict()", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), primary);
        // The replica still gets reads.
        assert_eq!(port_of(&c, "SELECT inet_server_port()").await, replica_port);
    }
    // The primary's own 40001 is the answer.
    let e = c
        .simple_query("SELECT standby_conflict(true)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("40001"));
    c.simple_query("SELECT 1").await.unwrap();
}
