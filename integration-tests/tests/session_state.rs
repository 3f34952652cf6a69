//! Session state under transaction pooling: what a client builds up in its session (protocol-
//! and SQL-level prepared statements, settings, startup options) follows it from one server
//! connection to the next and is never seen by other clients; state that cannot move (session
//! advisory locks, LISTEN, temporary tables) pins the client to its server connection, or is
//! refused with `session_state = "error"`.
//!
//! Most tests use a pool of 2 and a [`Herder`]: two clients that hold both server connections
//! in open transactions and then let go of exactly one, chosen by its backend pid. The next
//! transaction of any other client of the pool must run on that connection, so a test decides
//! where each of its transactions runs and checks it with `pg_backend_pid()`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::raw::{error_code, read_until};
use integration_tests::{config_text, direct_superuser, sqlstate, wait_until, Proxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------------
// helpers

/// The rows of a simple query, NULL as None.
async fn simple_rows(
    c: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The single value of a simple query returning one row of one column.
async fn simple_value(c: &Client, sql: &str) -> String {
    let rows = simple_rows(c, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().expect("not null")
}

async fn pid(c: &Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn begin_pid(c: &Client) -> i32 {
    c.batch_execute("begin").await.unwrap();
    pid(c).await
}

/// Which server connection a [`Herder`] lets go of.
#[derive(Clone, Copy, Debug)]
enum Free {
    /// Any connection whose backend pid is not this one (0: any).
    Not(i32),
    /// The connection with this backend pid.
    Is(i32),
}

/// Two clients of a pool of 2 that can hold both server connections (see the module docs).
struct Herder {
    a: Client,
    b: Client,
}

/// Both server connections of the pool are held but `free`, until `end`.
struct Hold<'a> {
    holder: &'a Client,
    free: i32,
}

impl Herder {
    async fn new(proxy: &Proxy, user: &str, password: &str) -> Herder {
        Herder {
            a: proxy.connect(user, password, "app").await.unwrap(),
            b: proxy.connect(user, password, "app").await.unwrap(),
        }
    }

    /// Holds both server connections, then lets go of the one `which` names: the next
    /// transaction of another client of the pool runs on it.
    async fn free(&self, which: Free) -> Hold<'_> {
        let pa = begin_pid(&self.a).await;
        let pb = begin_pid(&self.b).await;
        assert_ne!(pa, pb, "a pool of 2: two transactions, two connections");
        let pick = |p: i32| match which {
            Free::Not(x) => p != x,
            Free::Is(x) => p == x,
        };
        let (free, freed, holder) = if pick(pa) {
            (pa, &self.a, &self.b)
        } else if pick(pb) {
            (pb, &self.b, &self.a)
        } else {
            panic!("no server connection matches {which:?}: have {pa} and {pb}");
        };
        freed.batch_execute("commit").await.unwrap();
        Hold { holder, free }
    }
}

impl Hold<'_> {
    async fn end(self) {
        self.holder.batch_execute("commit").await.unwrap();
    }
}

/// Background clients of `db` running short transactions (or single statements) until
/// stopped; they check every result.
struct Churn {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<HashSet<i32>>>,
}

fn churn(proxy: &Proxy, db: &str, clients: usize, transactions: bool) -> Churn {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..clients)
        .map(|n| {
            let conn_str = proxy.conn_str("app", "app", db);
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = integration_tests::connect(&conn_str).await.unwrap();
                let mut pids = HashSet::new();
                let mut i = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    if transactions && i % 2 == 0 {
                        c.batch_execute("begin").await.unwrap();
                    }
                    let row = c
                        .query_one("select pg_backend_pid(), $1::int4 + 1", &[&i])
                        .await
                        .unwrap_or_else(|e| panic!("churn client {n}: {e}"));
                    assert_eq!(row.get::<_, i32>(1), i + 1);
                    pids.insert(row.get::<_, i32>(0));
                    if transactions && i % 2 == 0 {
                        c.batch_execute("commit").await.unwrap();
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                assert!(i > 0);
                pids
            })
        })
        .collect();
    Churn { stop, tasks }
}

impl Churn {
    /// Stops the clients; the backend pids they ran on.
    async fn finish(self) -> HashSet<i32> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = HashSet::new();
        for t in self.tasks {
            all.extend(t.await.expect("churn client failed"));
        }
        all
    }
}

/// Frontend messages for raw-protocol tests.
mod wire {
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    /// A protocol 3.0 StartupMessage with these parameters.
    pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        m.extend(body);
        m
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        msg(b'Q', &b)
    }

    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &b)
    }

    /// Bind of the unnamed portal to statement `stmt`, parameters and results in text.
    pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, stmt);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'B', &b)
    }

    pub fn execute() -> Vec<u8> {
        msg(b'E', &[0, 0, 0, 0, 0])
    }

    pub fn close_statement(name: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        cstr(&mut b, name);
        msg(b'C', &b)
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    /// Bind + Execute + Sync of a named statement.
    pub fn run(stmt: &str, params: &[&str]) -> Vec<u8> {
        [bind(stmt, params), execute(), sync()].concat()
    }

    /// The tags of `msgs`, as a string.
    pub fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
        msgs.iter().map(|(t, _)| *t as char).collect()
    }

    /// The text values of the DataRows among `msgs`.
    pub fn data_rows(msgs: &[(u8, Vec<u8>)]) -> Vec<Vec<Option<String>>> {
        msgs.iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, body)| {
                let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                let mut at = 2;
                (0..n)
                    .map(|_| {
                        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                        at += 4;
                        if len < 0 {
                            return None;
                        }
                        let v = String::from_utf8_lossy(&body[at..at + len as usize]);
                        at += len as usize;
                        Some(v.into_owned())
                    })
                    .collect()
            })
            .collect()
    }

    /// The ParameterStatus (name, value) pairs among `msgs`.
    pub fn parameter_statuses(msgs: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
        msgs.iter()
            .filter(|(t, _)| *t == b'S')
            .filter_map(|(_, body)| {
                let mut parts = body.split(|&b| b == 0);
                let k = String::from_utf8_lossy(parts.next()?).into_owned();
                let v = String::from_utf8_lossy(parts.next()?).into_owned();
                Some((k, v))
            })
            .collect()
    }
}

/// A raw-protocol client logged in (trust) with extra startup parameters.
async fn raw_login(port: u16, user: &str, db: &str, extra: &[(&str, &str)]) -> RawClient {
    let mut params = vec![("user", user), ("database", db)];
    params.extend_from_slice(extra);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&wire::startup(&params)).await.unwrap();
    let msgs = read_until(&mut s, b"ZE").await;
    assert_eq!(
        msgs.last().map(|m| m.0),
        Some(b'Z'),
        "login failed: {msgs:?}"
    );
    RawClient { s, login: msgs }
}

struct RawClient {
    s: TcpStream,
    /// What the proxy sent from AuthenticationOk to ReadyForQuery.
    login: Vec<(u8, Vec<u8>)>,
}

impl RawClient {
    /// Sends `bytes`, then reads up to the `readies`-th ReadyForQuery.
    async fn send(&mut self, bytes: &[u8], readies: usize) -> Vec<(u8, Vec<u8>)> {
        self.s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..readies {
            let msgs = tokio::time::timeout(Duration::from_secs(10), read_until(&mut self.s, b"Z"))
                .await
                .expect("no ReadyForQuery within 10 s");
            assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "closed: {msgs:?}");
            out.extend(msgs);
        }
        out
    }
}

/// Reads the single value of a raw simple query.
async fn raw_value(c: &mut RawClient, sql: &str) -> String {
    let msgs = c.send(&wire::query(sql), 1).await;
    let rows = wire::data_rows(&msgs);
    assert_eq!(rows.len(), 1, "{sql}: {msgs:?}");
    rows[0][0].clone().expect("not null")
}

// ---------------------------------------------------------------------------------------------
// 1-3: protocol-level prepared statements

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_the_client_across_server_connections() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let mut c = proxy.app("app").await;

    // Describe: parameter and column types, also when a second client's Parse of the same
    // text is answered without a server
    for _ in 0..2 {
        let other = proxy.app("app").await;
        for client in [&c, &other] {
            let st = client.prepare("select $1::int4 + 1 as x").await.unwrap();
            assert_eq!(st.params(), &[Type::INT4]);
            assert_eq!(st.columns().len(), 1);
            assert_eq!(st.columns()[0].name(), "x");
            assert_eq!(st.columns()[0].type_(), &Type::INT4);
            let x: i32 = client.query_one(&st, &[&41i32]).await.unwrap().get(0);
            assert_eq!(x, 42);
        }
    }

    let stmt = c
        .prepare("select $1::int4 * 2 as doubled, pg_backend_pid() as pid, $2::text as tag")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[Type::INT4, Type::TEXT]);
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["doubled", "pid", "tag"]);

    let churners = churn(&proxy, "app", 2, true);
    let mut last = 0;
    let mut seen = HashSet::new();
    for i in 0..30i32 {
        // every other transaction is forced onto the other server connection
        let hold = if i % 2 == 0 {
            Some(herder.free(Free::Not(last)).await)
        } else {
            None
        };
        let tag = format!("t{i}");
        let tx = c.transaction().await.unwrap();
        let row = tx.query_one(&stmt, &[&i, &tag]).await.unwrap();
        let again = tx.query_one(&stmt, &[&(i + 1), &"again"]).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
        assert_eq!(row.get::<_, String>(2), tag);
        assert_eq!(again.get::<_, i32>(0), (i + 1) * 2);
        let p: i32 = row.get(1);
        assert_eq!(again.get::<_, i32>(1), p, "one transaction, one connection");
        if let Some(h) = hold {
            assert_eq!(p, h.free, "transaction {i} ran on the free connection");
            assert_ne!(p, last);
            h.end().await;
        }
        last = p;
        seen.insert(p);
        // and outside a transaction
        let row = c.query_one(&stmt, &[&-i, &"auto"]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), -2 * i);
    }
    assert_eq!(seen.len(), 2, "used both server connections: {seen:?}");
    let churned = churners.finish().await;
    assert!(!churned.is_empty());

    // Closing: dropping a Statement sends Close; the same text can be prepared again
    let text = "select $1::text || '!' as bang";
    let st = c.prepare(text).await.unwrap();
    let v: String = c.query_one(&st, &[&"a"]).await.unwrap().get(0);
    assert_eq!(v, "a!");
    drop(st);
    for i in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        let st = c.prepare(text).await.unwrap();
        let v: String = c.query_one(&st, &[&format!("b{i}")]).await.unwrap().get(0);
        assert_eq!(v, format!("b{i}!"));
        last = hold.free;
        hold.end().await;
        drop(st);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_prepare_the_same_name_again_over_the_raw_protocol() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "trusty", "").await;
    let mut c = raw_login(proxy.port, "trusty", "app", &[]).await;
    let mut last = 0;
    for round in 0..6 {
        let hold = herder.free(Free::Not(last)).await;
        let sql = format!("select {round} + $1::int4, pg_backend_pid()");
        let msgs = c
            .send(&[wire::parse("cl", &sql), wire::sync()].concat(), 1)
            .await;
        assert_eq!(wire::tags(&msgs), "1Z", "round {round}: {msgs:?}");
        // a second Parse of the same name without Close is refused
        let msgs = c
            .send(&[wire::parse("cl", "select 0"), wire::sync()].concat(), 1)
            .await;
        assert_eq!(error_code(&msgs).as_deref(), Some("42P05"), "{msgs:?}");
        let msgs = c.send(&wire::run("cl", &["100"]), 1).await;
        let rows = wire::data_rows(&msgs);
        assert_eq!(rows.len(), 1, "{msgs:?}");
        assert_eq!(rows[0][0].as_deref(), Some(&*(100 + round).to_string()));
        assert_eq!(rows[0][1].as_deref(), Some(&*hold.free.to_string()));
        last = hold.free;
        hold.end().await;
        // Close, then the name is gone...
        let msgs = c
            .send(&[wire::close_statement("cl"), wire::sync()].concat(), 1)
            .await;
        assert_eq!(wire::tags(&msgs), "3Z", "{msgs:?}");
        let msgs = c.send(&wire::run("cl", &["1"]), 1).await;
        assert_eq!(error_code(&msgs).as_deref(), Some("26000"), "{msgs:?}");
        // ...and the connection is still in sync
        assert_eq!(raw_value(&mut c, "select 'ok'").await, "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_statement_name_on_two_clients_does_not_cross_talk() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    // tokio-postgres numbers statements process-wide, so two of its clients never share a
    // name: use the raw protocol to give both clients a statement called "dup".
    let herder = Herder::new(&proxy, "trusty", "").await;
    let mut one = raw_login(proxy.port, "trusty", "app", &[]).await;
    let mut two = raw_login(proxy.port, "trusty", "app", &[]).await;
    let p1 = "select 'one:' || $1::text, pg_backend_pid()";
    let p2 = "select $1::int4 * 1000, pg_backend_pid(), 'two'";
    for (c, sql) in [(&mut one, p1), (&mut two, p2)] {
        let msgs = c
            .send(&[wire::parse("dup", sql), wire::sync()].concat(), 1)
            .await;
        assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    }
    let mut last = 0;
    for i in 0..20 {
        // both clients run on the same server connection, one after the other, and the
        // next round on the other connection
        let hold = herder.free(Free::Not(last)).await;
        let free = hold.free.to_string();
        let msgs = one.send(&wire::run("dup", &[&i.to_string()]), 1).await;
        assert_eq!(
            wire::data_rows(&msgs),
            vec![vec![Some(format!("one:{i}")), Some(free.clone())]],
            "{msgs:?}"
        );
        let msgs = two.send(&wire::run("dup", &[&i.to_string()]), 1).await;
        assert_eq!(
            wire::data_rows(&msgs),
            vec![vec![
                Some((i * 1000).to_string()),
                Some(free.clone()),
                Some("two".into())
            ]],
            "{msgs:?}"
        );
        last = hold.free;
        hold.end().await;
    }
    // concurrently, without the herder
    let t1 = tokio::spawn(async move {
        for i in 0..30 {
            let msgs = one.send(&wire::run("dup", &[&i.to_string()]), 1).await;
            assert_eq!(wire::data_rows(&msgs)[0][0], Some(format!("one:{i}")));
        }
    });
    let t2 = tokio::spawn(async move {
        for i in 0..30 {
            let msgs = two.send(&wire::run("dup", &[&i.to_string()]), 1).await;
            assert_eq!(wire::data_rows(&msgs)[0][0], Some((i * 1000).to_string()));
        }
    });
    t1.await.unwrap();
    t2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_errors_leave_the_connection_usable() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = proxy.app("app").await;
    let mut last = 0;
    for i in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        // invalid SQL
        let e = c.prepare("selec 1").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42601"), "{e}");
        let e = c.prepare("select from nosuch_table_ss").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "{e}");
        // a wrong parameter value for its type: the server's error
        let st = c
            .prepare_typed("select $1::int4 + 1 as x", &[Type::TEXT])
            .await
            .unwrap();
        let e = c.query_one(&st, &[&"abc"]).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("22P02"), "{e}");
        let x: i32 = c.query_one(&st, &[&"41"]).await.unwrap().get(0);
        assert_eq!(x, 42);
        // SQL-level EXECUTE of nothing
        let e = c.simple_query("EXECUTE nosuch_ss").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}");
        let e = c
            .simple_query("select 1; EXECUTE nosuch_ss(1)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}");
        // still usable, and on the connection the herder left free
        let p = pid(&c).await;
        assert_eq!(p, hold.free, "round {i}");
        last = p;
        hold.end().await;
    }

    // the raw protocol: a text parameter that is not an int4
    let mut r = raw_login(proxy.port, "trusty", "app", &[]).await;
    let msgs = r
        .send(
            &[wire::parse("wrong", "select $1::int4 + 1"), wire::sync()].concat(),
            1,
        )
        .await;
    assert_eq!(wire::tags(&msgs), "1Z");
    let msgs = r.send(&wire::run("wrong", &["abc"]), 1).await;
    assert_eq!(error_code(&msgs).as_deref(), Some("22P02"), "{msgs:?}");
    let msgs = r.send(&wire::run("wrong", &["1"]), 1).await;
    assert_eq!(wire::data_rows(&msgs), vec![vec![Some("2".to_string())]]);
    // invalid SQL in a named Parse, then the same name with valid SQL
    let msgs = r
        .send(&[wire::parse("bad", "selec 1"), wire::sync()].concat(), 1)
        .await;
    assert_eq!(error_code(&msgs).as_deref(), Some("42601"), "{msgs:?}");
    let msgs = r
        .send(&[wire::parse("bad", "select 7"), wire::sync()].concat(), 1)
        .await;
    assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    let msgs = r.send(&wire::run("bad", &[]), 1).await;
    assert_eq!(wire::data_rows(&msgs), vec![vec![Some("7".to_string())]]);
}

// ---------------------------------------------------------------------------------------------
// 4: SQL-level PREPARE / EXECUTE / DEALLOCATE

/// EXECUTE ss_triple(i) on the connection `which`; the value and the backend pid.
async fn execute_triple(
    herder: &Herder,
    c: &Client,
    which: Free,
    i: i32,
    in_transaction: bool,
) -> (Result<i32, tokio_postgres::Error>, i32) {
    let hold = herder.free(which).await;
    let sql = if in_transaction {
        format!("begin; EXECUTE ss_triple({i}); commit")
    } else {
        format!("EXECUTE ss_triple({i})")
    };
    let r = simple_rows(c, &sql).await.map(|rows| {
        assert_eq!(rows.len(), 1, "{rows:?}");
        let pid: i32 = rows[0][1].as_deref().unwrap().parse().unwrap();
        assert_eq!(pid, hold.free, "ran on the free connection");
        rows[0][0].as_deref().unwrap().parse().unwrap()
    });
    if r.is_err() && in_transaction {
        c.batch_execute("rollback").await.unwrap();
    }
    let free = hold.free;
    hold.end().await;
    (r, free)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_and_execute_follow_the_client() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = proxy.app("app").await;
    c.simple_query("PREPARE ss_triple(int) AS select $1 * 3, pg_backend_pid()")
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..20 {
        let (v, p) = execute_triple(&herder, &c, Free::Not(last), i, i % 3 == 0).await;
        assert_eq!(v.unwrap(), 3 * i);
        last = p;
    }
    // PREPARE in a multi-statement query, then EXECUTE elsewhere
    c.simple_query("select 1; PREPARE ss_quad AS select 4; select 2")
        .await
        .unwrap();
    for _ in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        assert_eq!(simple_value(&c, "EXECUTE ss_quad").await, "4");
        last = hold.free;
        hold.end().await;
    }

    // DEALLOCATE name, then EXECUTE on the same connection
    let hold = herder.free(Free::Is(last)).await;
    c.simple_query("DEALLOCATE ss_triple").await.unwrap();
    hold.end().await;
    let (r, _) = execute_triple(&herder, &c, Free::Is(last), 1, false).await;
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}");
    assert_eq!(simple_value(&c, "EXECUTE ss_quad").await, "4");

    // PREPARE again: works anywhere
    c.simple_query("PREPARE ss_triple(int) AS select $1 * 3, pg_backend_pid()")
        .await
        .unwrap();
    for i in 0..4 {
        let (v, p) = execute_triple(&herder, &c, Free::Not(last), i, false).await;
        assert_eq!(v.unwrap(), 3 * i);
        last = p;
    }

    // DEALLOCATE ALL / DISCARD ALL on the connection the next EXECUTE runs on
    for clear in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let hold = herder.free(Free::Is(last)).await;
        c.simple_query(clear).await.unwrap();
        hold.end().await;
        let (r, _) = execute_triple(&herder, &c, Free::Is(last), 1, false).await;
        let e = r.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "after {clear}: {e}");
        let hold = herder.free(Free::Is(last)).await;
        let e = c.simple_query("EXECUTE ss_quad").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "after {clear}: {e}");
        hold.end().await;
        c.simple_query("PREPARE ss_triple(int) AS select $1 * 3, pg_backend_pid()")
            .await
            .unwrap();
        c.simple_query("PREPARE ss_quad AS select 4").await.unwrap();
        let (v, _) = execute_triple(&herder, &c, Free::Is(last), 5, false).await;
        assert_eq!(v.unwrap(), 15);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn deallocate_and_discard_clear_sql_prepared_statements_on_every_connection() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = proxy.app("app").await;
    let mut failures = Vec::new();
    for clear in ["DEALLOCATE ss_triple", "DEALLOCATE ALL", "DISCARD ALL"] {
        c.simple_query("PREPARE ss_triple(int) AS select $1 * 3, pg_backend_pid()")
            .await
            .unwrap();
        // use it on both server connections
        let (v, a) = execute_triple(&herder, &c, Free::Not(0), 1, false).await;
        assert_eq!(v.unwrap(), 3);
        let (v, b) = execute_triple(&herder, &c, Free::Not(a), 2, false).await;
        assert_eq!(v.unwrap(), 6);
        // clear it while on one of them
        let hold = herder.free(Free::Is(b)).await;
        c.simple_query(clear).await.unwrap();
        hold.end().await;
        // it is gone wherever the client runs next
        for on in [b, a] {
            let (r, _) = execute_triple(&herder, &c, Free::Is(on), 3, false).await;
            match r {
                Ok(v) => failures.push(format!(
                    "after {clear:?} on connection {b}, EXECUTE ss_triple(3) on {} connection \
                     {on} returned {v}",
                    if on == b { "the same" } else { "the other" }
                )),
                Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}"),
            }
        }
        // make a fresh PREPARE possible wherever it lands
        let hold = herder.free(Free::Is(a)).await;
        c.simple_query("DEALLOCATE ALL").await.unwrap();
        hold.end().await;
    }
    assert!(
        failures.is_empty(),
        "expected SQLSTATE 26000 every time:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn sql_prepared_statements_are_not_visible_to_other_clients() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let a = proxy.app("app").await;
    let b = proxy.app("app").await;
    let hold = herder.free(Free::Not(0)).await;
    let conn = hold.free;
    a.simple_query("PREPARE ss_secret AS select 'secret of A'")
        .await
        .unwrap();
    // B runs on the connection A just used
    let r = simple_rows(&b, "EXECUTE ss_secret").await;
    let p = pid(&b).await;
    hold.end().await;
    assert_eq!(p, conn);
    match r {
        Ok(rows) => panic!(
            "client B ran client A's SQL-level prepared statement on connection {conn}: \
             {rows:?} (expected SQLSTATE 26000)"
        ),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some("26000"), "{e}"),
    }
    // and A still has it
    assert_eq!(simple_value(&a, "EXECUTE ss_secret").await, "secret of A");
}

// ---------------------------------------------------------------------------------------------
// 5-7: settings, startup options, ParameterStatus

/// search_path, statement_timeout, TimeZone, application_name and the backend pid.
async fn settings(c: &Client) -> (Vec<String>, i32) {
    let row = c
        .query_one(
            "select current_setting('search_path'), current_setting('statement_timeout'), \
             current_setting('TimeZone'), current_setting('application_name'), \
             pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (
        (0..4).map(|i| row.get::<_, String>(i)).collect(),
        row.get(4),
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_and_stay_with_it() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = proxy.app("app").await;
    let plain = proxy.app("app").await; // default settings
    let other = proxy.app("app").await; // settings of its own
    let (defaults, _) = settings(&plain).await;
    assert_eq!(defaults[0], "\"$user\", public");
    assert_eq!(defaults[1], "0");
    assert_ne!(defaults[2], "Asia/Tokyo");

    // simple and extended protocol SETs, on different server connections
    let hold = herder.free(Free::Not(0)).await;
    c.batch_execute("SET search_path = ss_mine, public; SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    let mut last = hold.free;
    hold.end().await;
    let hold = herder.free(Free::Not(last)).await;
    c.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await.unwrap();
    c.execute("SET application_name = 'x'", &[]).await.unwrap();
    hold.end().await;
    let hold = herder.free(Free::Not(0)).await;
    other
        .batch_execute(
            "SET search_path = ss_other; SET statement_timeout = '4321ms'; \
             SET TimeZone = 'America/Denver'; SET application_name = 'other'",
        )
        .await
        .unwrap();
    hold.end().await;
    let mine = strings(&["ss_mine, public", "1234ms", "Asia/Tokyo", "x"]);
    let theirs = strings(&["ss_other", "4321ms", "America/Denver", "other"]);

    for i in 0..20 {
        // all three run on the same connection, one after the other, alternating
        let hold = herder.free(Free::Not(last)).await;
        let (got, p) = settings(&c).await;
        assert_eq!(got, mine, "round {i}");
        assert_eq!(p, hold.free);
        let (got, p) = settings(&plain).await;
        assert_eq!(
            got, defaults,
            "round {i}: the default client sees none of it"
        );
        assert_eq!(p, hold.free);
        let (got, p) = settings(&other).await;
        assert_eq!(got, theirs, "round {i}");
        assert_eq!(p, hold.free);
        // and SHOW inside a transaction
        let shown = simple_rows(
            &c,
            "begin; show search_path; show statement_timeout; show timezone; commit",
        )
        .await
        .unwrap();
        assert_eq!(
            shown,
            vec![
                vec![Some(mine[0].clone())],
                vec![Some(mine[1].clone())],
                vec![Some(mine[2].clone())]
            ]
        );
        last = hold.free;
        hold.end().await;
    }

    // RESET one setting
    c.batch_execute("RESET statement_timeout").await.unwrap();
    let mut expect = mine.clone();
    expect[1] = "0".into();
    for _ in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        assert_eq!(settings(&c).await.0, expect);
        assert_eq!(settings(&other).await.0, theirs);
        last = hold.free;
        hold.end().await;
    }
    // RESET ALL
    c.batch_execute("RESET ALL").await.unwrap();
    for _ in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        assert_eq!(settings(&c).await.0, defaults);
        assert_eq!(settings(&other).await.0, theirs);
        last = hold.free;
        hold.end().await;
    }
    drop(plain);
    // the other client's settings never leaked to c
    other.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(settings(&other).await.0, defaults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_and_local_settings_do_not_stick() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = proxy.app("app").await;
    c.batch_execute("SET search_path = ss_kept; SET statement_timeout = '2500ms'")
        .await
        .unwrap();
    let kept = |got: &[String]| got[0] == "ss_kept" && got[1] == "2500ms";
    let mut last = 0;
    for i in 0..6 {
        // a SET in a transaction that is rolled back
        let hold = herder.free(Free::Not(last)).await;
        let inside = simple_rows(
            &c,
            "begin; set search_path = ss_gone; set statement_timeout = '9s'; show search_path",
        )
        .await
        .unwrap();
        assert_eq!(inside, vec![vec![Some("ss_gone".to_string())]]);
        c.batch_execute("rollback").await.unwrap();
        assert_eq!(simple_value(&c, "show search_path").await, "ss_kept");
        last = hold.free;
        hold.end().await;
        let hold = herder.free(Free::Not(last)).await;
        let (got, p) = settings(&c).await;
        assert!(kept(&got), "round {i}, after ROLLBACK and a move: {got:?}");
        assert_eq!(p, hold.free);
        last = p;
        hold.end().await;

        // an aborted transaction: error, then ROLLBACK
        let hold = herder.free(Free::Not(last)).await;
        c.batch_execute("begin; set search_path = ss_aborted")
            .await
            .unwrap();
        assert!(c.batch_execute("select 1/0").await.is_err());
        c.batch_execute("rollback").await.unwrap();
        last = hold.free;
        hold.end().await;
        let hold = herder.free(Free::Not(last)).await;
        assert!(
            kept(&settings(&c).await.0),
            "round {i}, after an aborted one"
        );
        last = hold.free;
        hold.end().await;

        // SET LOCAL stays inside its transaction
        let hold = herder.free(Free::Not(last)).await;
        let inside = simple_rows(
            &c,
            "begin; set local statement_timeout = '777ms'; show statement_timeout",
        )
        .await
        .unwrap();
        assert_eq!(inside, vec![vec![Some("777ms".to_string())]]);
        assert_eq!(simple_value(&c, "show statement_timeout").await, "777ms");
        c.batch_execute("commit").await.unwrap();
        assert_eq!(simple_value(&c, "show statement_timeout").await, "2500ms");
        last = hold.free;
        hold.end().await;
        let hold = herder.free(Free::Not(last)).await;
        assert!(kept(&settings(&c).await.0), "round {i}, after SET LOCAL");
        last = hold.free;
        hold.end().await;
    }
    // a committed SET in a transaction does stick
    c.batch_execute("begin; set search_path = ss_committed; commit")
        .await
        .unwrap();
    for _ in 0..2 {
        let hold = herder.free(Free::Not(last)).await;
        assert_eq!(settings(&c).await.0[0], "ss_committed");
        last = hold.free;
        hold.end().await;
    }
}

async fn connect_with_options(proxy: &Proxy, options: &str) -> Client {
    let mut cfg: tokio_postgres::Config = proxy.conn_str("app", "app", "app").parse().unwrap();
    cfg.options(options);
    let (client, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_apply_in_every_transaction() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let setup = proxy.app("app").await;
    setup
        .batch_execute(
            "drop schema if exists ss_opts cascade; create schema ss_opts; \
             create table ss_opts.ss_marker (v text); insert into ss_opts.ss_marker values ('opts')",
        )
        .await
        .unwrap();
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = connect_with_options(&proxy, "-c search_path=ss_opts -c statement_timeout=3s").await;
    let plain = proxy.app("app").await;
    let mut last = 0;
    for i in 0..10 {
        let hold = herder.free(Free::Not(last)).await;
        let row = c
            .query_one(
                "select current_setting('search_path'), current_setting('statement_timeout'), \
                 (select v from ss_marker), pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "ss_opts", "round {i}");
        assert_eq!(row.get::<_, String>(1), "3s");
        assert_eq!(row.get::<_, String>(2), "opts");
        assert_eq!(row.get::<_, i32>(3), hold.free);
        let (got, p) = settings(&plain).await;
        assert_eq!(
            got[0], "\"$user\", public",
            "round {i}: not for other clients"
        );
        assert_eq!(got[1], "0");
        assert_eq!(p, hold.free);
        last = hold.free;
        hold.end().await;
    }
    // SET, then RESET ALL returns to the startup values
    c.batch_execute("SET search_path = public; SET statement_timeout = '1s'")
        .await
        .unwrap();
    assert_eq!(settings(&c).await.0[0], "public");
    c.batch_execute("RESET ALL").await.unwrap();
    for _ in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        let (got, _) = settings(&c).await;
        assert_eq!(
            got[..2].to_vec(),
            strings(&["ss_opts", "3s"]),
            "after RESET ALL"
        );
        last = hold.free;
        hold.end().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn reset_of_one_setting_returns_to_the_startup_value() {
    // what Postgres itself does
    let mut direct: tokio_postgres::Config = format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app",
        integration_tests::cluster().port()
    )
    .parse()
    .unwrap();
    direct.options("-c search_path=ss_reset_opts");
    let (d, conn) = direct.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    d.batch_execute("SET search_path = public; RESET search_path")
        .await
        .unwrap();
    assert_eq!(simple_value(&d, "show search_path").await, "ss_reset_opts");

    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let c = connect_with_options(&proxy, "-c search_path=ss_reset_opts").await;
    c.batch_execute("SET search_path = public").await.unwrap();
    c.batch_execute("RESET search_path").await.unwrap();
    let mut last = 0;
    for i in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        let (got, _) = settings(&c).await;
        assert_eq!(
            got[0], "ss_reset_opts",
            "transaction {i} after SET search_path = public; RESET search_path (Postgres \
             resets to the startup value from options)"
        );
        last = hold.free;
        hold.end().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn set_config_is_not_visible_to_other_clients() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let a = proxy.app("app").await;
    let b = proxy.app("app").await;
    let (defaults, _) = settings(&b).await;
    let hold = herder.free(Free::Not(0)).await;
    a.simple_query(
        "select set_config('search_path', 'ss_via_function', false), \
         set_config('statement_timeout', '3333ms', false)",
    )
    .await
    .unwrap();
    // B runs on the connection A just used
    let (got, p) = settings(&b).await;
    assert_eq!(p, hold.free);
    hold.end().await;
    assert_eq!(
        got, defaults,
        "client B sees settings client A made with set_config(..., false) on connection {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn deallocating_a_pooled_statement_name_does_not_break_other_clients() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let a = proxy.app("app").await;
    let b = proxy.app("app").await;
    let st = a.prepare("select 'ss pooled'::text").await.unwrap();
    let hold = herder.free(Free::Not(0)).await;
    let v: String = a.query_one(&st, &[]).await.unwrap().get(0);
    assert_eq!(v, "ss pooled");
    // B finds the server-side name of A's statement and deallocates it
    let name = simple_value(
        &b,
        "select name from pg_prepared_statements where statement = 'select ''ss pooled''::text'",
    )
    .await;
    // B never prepared it: as on a direct connection, B's DEALLOCATE fails with 26000 and the
    // pooled statement is untouched.
    let e = b
        .simple_query(&format!("DEALLOCATE {name}"))
        .await
        .expect_err("a client cannot deallocate the proxy's pooled statements");
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    let e = b
        .simple_query(&format!("EXECUTE {name}"))
        .await
        .expect_err("a client cannot execute another client's pooled statement by name");
    assert_eq!(sqlstate(&e).as_deref(), Some("26000"));
    let e = b
        .simple_query("PREPARE sg_999 AS select 1")
        .await
        .expect_err("pooled statement names are reserved");
    assert_eq!(sqlstate(&e).as_deref(), Some("42939"));
    // A runs on the same connection again
    let r = a.query_one(&st, &[]).await;
    hold.end().await;
    let v: String = r
        .unwrap_or_else(|e| {
            panic!(
                "client A's statement fails after client B ran DEALLOCATE {name} on the same \
                 server connection: {:?} {}",
                sqlstate(&e),
                e.as_db_error().map_or("", |d| d.message())
            )
        })
        .get(0);
    assert_eq!(v, "ss pooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_reports_application_name_and_time_zone() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let mut c = raw_login(
        proxy.port,
        "trusty",
        "app",
        &[("application_name", "myapp")],
    )
    .await;
    let at_login = wire::parameter_statuses(&c.login);
    assert!(
        at_login.contains(&("application_name".into(), "myapp".into())),
        "{at_login:?}"
    );
    assert!(at_login.iter().any(|(k, _)| k == "server_version"));
    // other trusty clients keep the pool busy so the raw client moves around
    let bystander = proxy.connect("trusty", "", "app").await.unwrap();
    for _ in 0..3 {
        bystander.batch_execute("begin; select 1").await.unwrap();
        assert_eq!(raw_value(&mut c, "show application_name").await, "myapp");
        bystander.batch_execute("commit").await.unwrap();
    }
    let msgs = c.send(&wire::query("SET TimeZone = 'Asia/Tokyo'"), 1).await;
    let reported = wire::parameter_statuses(&msgs);
    assert!(
        reported.contains(&("TimeZone".into(), "Asia/Tokyo".into())),
        "{msgs:?}"
    );
    for _ in 0..3 {
        bystander.batch_execute("begin; select 1").await.unwrap();
        assert_eq!(raw_value(&mut c, "show timezone").await, "Asia/Tokyo");
        let b: String = bystander
            .query_one("select current_setting('TimeZone')", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(b, "Asia/Tokyo");
        bystander.batch_execute("commit").await.unwrap();
    }
    // tokio-postgres sees the same at login
    let mut cfg: tokio_postgres::Config = proxy.conn_str("app", "app", "app").parse().unwrap();
    cfg.application_name("myapp2");
    let (client, conn) = cfg.connect(NoTls).await.unwrap();
    assert_eq!(conn.parameter("application_name"), Some("myapp2"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let name: String = client
        .query_one("show application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "myapp2");
}

// ---------------------------------------------------------------------------------------------
// 8-9: state that pins, or is refused

async fn advisory_lock_holder(key: i64) -> Option<i32> {
    let direct = direct_superuser().await;
    direct
        .query_opt(
            "select pid from pg_locks where locktype = 'advisory' and objid = $1::int8::oid \
             and granted",
            &[&key],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_pins_the_client() {
    const KEY: i64 = 424_242;
    let proxy = Proxy::start(&config_text("", "size = 3"));
    let a = proxy.app("app").await;
    let b = proxy.app("app").await;
    a.execute("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap();
    let pinned = pid(&a).await;
    assert_eq!(advisory_lock_holder(KEY).await, Some(pinned));
    let churners = churn(&proxy, "app", 3, true);
    for _ in 0..10 {
        assert_eq!(pid(&a).await, pinned, "kept its server connection");
        let got: bool = b
            .query_one("select pg_try_advisory_lock($1)", &[&KEY])
            .await
            .unwrap()
            .get(0);
        assert!(!got, "A holds the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let churned = churners.finish().await;
    assert!(
        !churned.contains(&pinned),
        "another client ran on A's pinned connection {pinned}: {churned:?}"
    );
    // unlock: B gets it (and keeps it: B is pinned now too)
    let unlocked: bool = a
        .query_one("select pg_advisory_unlock($1)", &[&KEY])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked);
    let got: bool = b
        .query_one("select pg_try_advisory_lock($1)", &[&KEY])
        .await
        .unwrap()
        .get(0);
    assert!(got);
    let b_pid = pid(&b).await;
    assert_ne!(b_pid, pinned);
    assert_eq!(advisory_lock_holder(KEY).await, Some(b_pid));
    // a client leaving releases its lock
    drop(b);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            advisory_lock_holder(KEY).await.is_none()
        })
        .await,
        "lock released when B left"
    );
    let c = proxy.app("app").await;
    let got: bool = c
        .query_one("select pg_try_advisory_lock($1)", &[&KEY])
        .await
        .unwrap()
        .get(0);
    assert!(got);
    // a transaction-level lock does not pin
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            advisory_lock_holder(KEY).await.is_none()
        })
        .await
    );
    let d = proxy.app("app").await;
    d.batch_execute("begin; select pg_advisory_xact_lock(4243); commit")
        .await
        .unwrap();
    assert_eq!(advisory_lock_holder(4243).await, None);
    assert_eq!(pid(&a).await, pinned, "A still pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_and_notifications_arrive() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let (listener, mut conn) = tokio_postgres::connect(&proxy.conn_str("app", "app", "app"), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    listener.batch_execute("LISTEN ss_chan").await.unwrap();
    let pinned = pid(&listener).await;
    let churners = churn(&proxy, "app", 2, true);
    let notifier = proxy.app("app").await;
    for i in 0..5 {
        let payload = format!("hi {i}");
        notifier
            .execute("select pg_notify('ss_chan', $1)", &[&payload])
            .await
            .unwrap();
        if i == 0 {
            notifier
                .batch_execute("NOTIFY ss_chan, 'hi'")
                .await
                .unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("notification within 5 s")
            .unwrap();
        assert_eq!(got, ("ss_chan".to_string(), payload));
        if i == 0 {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("notification within 5 s")
                .unwrap();
            assert_eq!(got, ("ss_chan".to_string(), "hi".to_string()));
        }
        assert_eq!(pid(&listener).await, pinned);
    }
    let churned = churners.finish().await;
    assert!(!churned.contains(&pinned), "{churned:?}");
    // each notification arrived once
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_pin_the_client() {
    for (create, table) in [
        ("create temp table ss_tmp (v int)", "ss_tmp"),
        (
            "select 0 as v into temp ss_tmp_into where false",
            "ss_tmp_into",
        ),
    ] {
        temporary_table_pins_the_client(create, table).await;
    }
}

async fn temporary_table_pins_the_client(create: &str, table: &str) {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let c = proxy.app("app").await;
    c.batch_execute(create).await.unwrap();
    let pinned = pid(&c).await;
    let churners = churn(&proxy, "app", 2, true);
    for i in 1..=10i64 {
        c.execute(&format!("insert into {table} values (1)"), &[])
            .await
            .unwrap();
        let n: i64 = c
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i, "{create}");
        assert_eq!(pid(&c).await, pinned);
    }
    let churned = churners.finish().await;
    assert!(!churned.contains(&pinned), "{churned:?}");
    // gone when the client leaves
    drop(c);
    let direct = direct_superuser().await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            let n: i64 = direct
                .query_one(
                    "select count(*) from pg_class where relname = $1 \
                     and relpersistence = 't'",
                    &[&table],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        })
        .await,
        "{create}: temporary table dropped when its client left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_policy_refuses_session_state() {
    const KEY: i64 = 515_151;
    let proxy = Proxy::start(&config_text("", "size = 2\nsession_state = \"error\""));
    let c = proxy.app("app").await;
    let refused = [
        format!("select pg_advisory_lock({KEY})"),
        format!("select pg_try_advisory_lock_shared({KEY})"),
        "LISTEN ss_refused".to_string(),
        "create temp table ss_refused_tmp (v int)".to_string(),
        format!("select 1; select pg_advisory_lock({KEY})"),
    ];
    for sql in &refused {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{sql}: {e}");
        let v: i32 = c.query_one("select 5", &[]).await.unwrap().get(0);
        assert_eq!(v, 5, "usable after {sql}");
    }
    // the extended protocol too
    let e = c
        .query_one("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    let e = c.execute("LISTEN ss_refused", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    assert_eq!(advisory_lock_holder(KEY).await, None, "nothing was locked");
    // a transaction-level lock is fine
    c.batch_execute(&format!(
        "begin; select pg_advisory_xact_lock({KEY}); commit"
    ))
    .await
    .unwrap();
    // not pinned: it still moves between server connections
    let herder = Herder::new(&proxy, "app", "app").await;
    let mut last = 0;
    for _ in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        assert_eq!(pid(&c).await, hold.free);
        last = hold.free;
        hold.end().await;
    }
    assert_eq!(advisory_lock_holder(KEY).await, None);
}

// ---------------------------------------------------------------------------------------------
// 10: statement mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_keeps_named_prepared_statements() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let c = proxy.app("app_statement").await;
    let churners = churn(&proxy, "app_statement", 2, false);
    let stmt = c
        .prepare("select $1::int4 * 7 as seven, pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[Type::INT4]);
    let mut seen = HashSet::new();
    for i in 0..20 {
        let row = c.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7 * i);
        seen.insert(row.get::<_, i32>(1));
        let again = c.prepare("select $1::text || '?'").await.unwrap();
        let v: String = c.query_one(&again, &[&"q"]).await.unwrap().get(0);
        assert_eq!(v, "q?");
    }
    churners.finish().await;
    assert!(!seen.is_empty());
    // SQL-level too
    c.simple_query("PREPARE ss_stmt_mode AS select 11")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(simple_value(&c, "EXECUTE ss_stmt_mode").await, "11");
    }
}

// ---------------------------------------------------------------------------------------------
// settings made where the SQL does not show them, DEALLOCATE of protocol statements, DDL

/// search_path and default_transaction_read_only of `c`, and its backend pid.
async fn path_and_read_only(c: &Client) -> (String, String, i32) {
    let row = c
        .query_one(
            "select current_setting('search_path'), \
             current_setting('default_transaction_read_only'), pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_made_unseen_stay_with_their_client() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let setup = proxy.app("app").await;
    setup
        .batch_execute(
            "create or replace function ss_set_path_fn() returns int language plpgsql as \
             $$ begin set search_path = ss_fn; return 1; end $$; \
             create or replace procedure ss_set_path_proc() language plpgsql as \
             $$ begin perform set_config('search_path', 'ss_proc', false); end $$",
        )
        .await
        .unwrap();
    let fresh = proxy.app("app").await;
    let (default_path, default_ro, _) = path_and_read_only(&fresh).await;
    assert_eq!(default_ro, "off");
    drop(fresh);

    type Case = (&'static str, &'static str, &'static str);
    let cases: [Case; 6] = [
        ("set_config with bind parameters", "ss_bind", "bind"),
        ("set_config with bind parameters (read only)", "", "bind_ro"),
        ("SET SESSION CHARACTERISTICS", "", "characteristics"),
        ("a DO block", "ss_do", "do"),
        ("a function that SETs", "ss_fn", "function"),
        ("a procedure that calls set_config", "ss_proc", "call"),
    ];
    let mut last = 0;
    for (what, path, how) in cases {
        let a = proxy.app("app").await;
        let hold = herder.free(Free::Not(last)).await;
        match how {
            "bind" => {
                let v: String = a
                    .query_one("select set_config($1, $2, false)", &[&"search_path", &path])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, path);
            }
            "bind_ro" => {
                a.query(
                    "select set_config($1, $2, false)",
                    &[&"default_transaction_read_only", &"on"],
                )
                .await
                .unwrap();
            }
            "characteristics" => a
                .batch_execute("set session characteristics as transaction read only")
                .await
                .unwrap(),
            "do" => a
                .batch_execute(
                    "do $$ begin perform set_config('search_path', 'ss_do', false); end $$",
                )
                .await
                .unwrap(),
            "function" => {
                let one: i32 = a
                    .query_one("select ss_set_path_fn()", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(one, 1);
            }
            _ => a.batch_execute("call ss_set_path_proc()").await.unwrap(),
        }
        // a brand-new client on the very connection A used sees the defaults
        let b = proxy.app("app").await;
        let (b_path, b_ro, p) = path_and_read_only(&b).await;
        assert_eq!(p, hold.free, "{what}: B runs on A's server connection");
        assert_eq!(
            (b_path.as_str(), b_ro.as_str()),
            (default_path.as_str(), "off"),
            "{what}: client B inherited client A's setting on connection {p}"
        );
        last = hold.free;
        hold.end().await;
        // and A keeps its setting on both server connections
        let (want_path, want_ro) = if how == "bind_ro" || how == "characteristics" {
            (default_path.as_str(), "on")
        } else {
            (path, "off")
        };
        for free in [Free::Is(last), Free::Not(last)] {
            let hold = herder.free(free).await;
            let (a_path, a_ro, p) = path_and_read_only(&a).await;
            assert_eq!(p, hold.free);
            assert_eq!(
                (a_path.as_str(), a_ro.as_str()),
                (want_path, want_ro),
                "{what}: client A lost its own setting on connection {p}"
            );
            hold.end().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_of_a_protocol_statement_frees_the_name() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "trusty", "").await;
    let mut c = raw_login(proxy.port, "trusty", "app", &[]).await;
    let mut last = 0;
    for round in 0..4 {
        let hold = herder.free(Free::Not(last)).await;
        let msgs = c
            .send(
                &[wire::parse("dp", "select 'proto'::text"), wire::sync()].concat(),
                1,
            )
            .await;
        assert_eq!(wire::tags(&msgs), "1Z", "round {round}: {msgs:?}");
        last = hold.free;
        hold.end().await;
        // the DEALLOCATE runs on the other server connection, inside a transaction on odd
        // rounds, through the extended protocol on rounds 2 and 3
        let hold = herder.free(Free::Not(last)).await;
        let sql = if round % 2 == 1 {
            "begin; deallocate dp; commit"
        } else {
            "deallocate dp"
        };
        let msgs = if round >= 2 {
            c.send(
                &[
                    wire::parse("", "deallocate dp"),
                    wire::bind("", &[]),
                    wire::execute(),
                    wire::sync(),
                ]
                .concat(),
                1,
            )
            .await
        } else {
            c.send(&wire::query(sql), 1).await
        };
        assert_eq!(error_code(&msgs), None, "round {round}: {sql}: {msgs:?}");
        assert!(
            msgs.iter()
                .any(|(t, b)| *t == b'C' && b.starts_with(b"DEALLOCATE")),
            "{msgs:?}"
        );
        last = hold.free;
        hold.end().await;
        // the statement is gone...
        let msgs = c.send(&wire::run("dp", &[]), 1).await;
        assert_eq!(error_code(&msgs).as_deref(), Some("26000"), "{msgs:?}");
        let msgs = c.send(&wire::query("deallocate dp"), 1).await;
        assert_eq!(error_code(&msgs).as_deref(), Some("26000"), "{msgs:?}");
        // ...and its name is free for SQL PREPARE, which then holds it against Parse
        assert_eq!(
            simple_tags(&mut c, "prepare dp as select 'sql'::text").await,
            "CZ"
        );
        assert_eq!(raw_value(&mut c, "execute dp").await, "sql");
        let msgs = c
            .send(&[wire::parse("dp", "select 1"), wire::sync()].concat(), 1)
            .await;
        assert_eq!(error_code(&msgs).as_deref(), Some("42P05"), "{msgs:?}");
        assert_eq!(simple_tags(&mut c, "deallocate dp").await, "CZ");
        // a protocol statement holds its name against PREPARE too
        let msgs = c
            .send(&[wire::parse("dp", "select 1"), wire::sync()].concat(), 1)
            .await;
        assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
        let msgs = c.send(&wire::query("prepare dp as select 2"), 1).await;
        assert_eq!(error_code(&msgs).as_deref(), Some("42P05"), "{msgs:?}");
        let msgs = c
            .send(&[wire::close_statement("dp"), wire::sync()].concat(), 1)
            .await;
        assert_eq!(wire::tags(&msgs), "3Z", "{msgs:?}");
        assert_eq!(raw_value(&mut c, "select 'in sync'").await, "in sync");
    }
}

/// The message tags of a raw simple query's answer.
async fn simple_tags(c: &mut RawClient, sql: &str) -> String {
    let msgs = c.send(&wire::query(sql), 1).await;
    wire::tags(&msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_not_shared_across_a_dropped_and_recreated_type() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "trusty", "").await;
    let setup = proxy.app("app").await;
    setup
        .batch_execute("drop type if exists ss_mood; create type ss_mood as enum ('ok', 'meh')")
        .await
        .unwrap();
    let sql = "select $1::ss_mood::text || '!'";
    // A prepares and runs the statement on both server connections
    let mut a = raw_login(proxy.port, "trusty", "app", &[]).await;
    let msgs = a
        .send(&[wire::parse("m", sql), wire::sync()].concat(), 1)
        .await;
    assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    for free in [Free::Not(0), Free::Not(0)] {
        let hold = herder.free(free).await;
        let msgs = a.send(&wire::run("m", &["ok"]), 1).await;
        assert_eq!(wire::data_rows(&msgs), vec![vec![Some("ok!".to_string())]]);
        let other = hold.free;
        hold.end().await;
        let hold = herder.free(Free::Not(other)).await;
        let msgs = a.send(&wire::run("m", &["meh"]), 1).await;
        assert_eq!(wire::data_rows(&msgs), vec![vec![Some("meh!".to_string())]]);
        hold.end().await;
    }
    // the type is dropped and created again (new OID)
    setup
        .batch_execute("drop type ss_mood; create type ss_mood as enum ('ok', 'meh', 'new')")
        .await
        .unwrap();
    // a new client prepares the same text: it works on every server connection
    let mut b = raw_login(proxy.port, "trusty", "app", &[]).await;
    let msgs = b
        .send(&[wire::parse("m2", sql), wire::sync()].concat(), 1)
        .await;
    assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    let mut last = 0;
    for _ in 0..2 {
        let hold = herder.free(Free::Not(last)).await;
        let msgs = b.send(&wire::run("m2", &["new"]), 1).await;
        assert_eq!(
            wire::data_rows(&msgs),
            vec![vec![Some("new!".to_string())]],
            "a statement shared from before the type was re-created: {msgs:?}"
        );
        last = hold.free;
        hold.end().await;
    }

    // The same DDL made behind the proxy's back: the first client to hit a stale statement
    // gets the server's error once; the proxy then renews shared statements and closes the
    // server connections that hold stale ones as they report it.
    direct_superuser()
        .await
        .batch_execute("drop type ss_mood; create type ss_mood as enum ('ok', 'meh', 'newer')")
        .await
        .unwrap();
    let mut d = raw_login(proxy.port, "trusty", "app", &[]).await;
    let msgs = d
        .send(&[wire::parse("m3", sql), wire::sync()].concat(), 1)
        .await;
    assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    let hold = herder.free(Free::Not(0)).await;
    let msgs = d.send(&wire::run("m3", &["newer"]), 1).await;
    assert_eq!(error_code(&msgs).as_deref(), Some("XX000"), "{msgs:?}");
    hold.end().await;
    let mut e = raw_login(proxy.port, "trusty", "app", &[]).await;
    let msgs = e
        .send(&[wire::parse("m4", sql), wire::sync()].concat(), 1)
        .await;
    assert_eq!(wire::tags(&msgs), "1Z", "{msgs:?}");
    let mut last = 0;
    for _ in 0..2 {
        let hold = herder.free(Free::Not(last)).await;
        let msgs = e.send(&wire::run("m4", &["newer"]), 1).await;
        assert_eq!(
            wire::data_rows(&msgs),
            vec![vec![Some("newer!".to_string())]],
            "after a stale statement was reported: {msgs:?}"
        );
        last = hold.free;
        hold.end().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_that_cannot_take_a_clients_settings_is_closed() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let herder = Herder::new(&proxy, "app", "app").await;
    let direct = direct_superuser().await;
    direct
        .batch_execute(
            "do $$ begin create role ss_reapply_role; exception when duplicate_object then \
             null; end $$; grant ss_reapply_role to app",
        )
        .await
        .unwrap();
    let a = proxy.app("app").await;
    let hold = herder.free(Free::Not(0)).await;
    a.batch_execute("set role ss_reapply_role").await.unwrap();
    let first = hold.free;
    hold.end().await;
    // the role can no longer be set: re-applying A's settings elsewhere fails
    direct
        .batch_execute("revoke ss_reapply_role from app")
        .await
        .unwrap();
    let hold = herder.free(Free::Not(first)).await;
    let other = hold.free;
    let _ = a.simple_query("select 1").await;
    hold.end().await;
    // that server connection never goes back to the pool: its backend ends
    let gone = wait_until(Duration::from_secs(10), || async {
        direct
            .query_opt("select 1 from pg_stat_activity where pid = $1", &[&other])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(
        gone,
        "server connection {other} stayed in the pool after re-applying settings failed"
    );
    direct
        .batch_execute("drop role if exists ss_reapply_role")
        .await
        .ok();
}
