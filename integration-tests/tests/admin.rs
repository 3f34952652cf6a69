//! The admin console against a real PgBouncer 1.18 (Debian's, started here on loopback) and
//! the shared cluster: every SHOW command both have answers with PgBouncer's column names,
//! order and types; who may log in (admin user, stats users, anyone else); what the acting,
//! not-yet and unknown commands answer; and `SHOW POOLS` / `SHOW SHARDS` values while
//! clients hold and wait for server connections.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use integration_tests::{config_text, sqlstate, wait_until, Daemon, Proxy};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PASSWORD: &str = "adm1n-s3cret";

/// The SHOW commands PgBouncer has that the console answers.
const SHARED: [&str; 11] = [
    "CLIENTS",
    "SERVERS",
    "POOLS",
    "DATABASES",
    "USERS",
    "LISTS",
    "CONFIG",
    "VERSION",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
];

fn proxy(pool: &str) -> Proxy {
    Proxy::start(&config_text(
        &format!(
            "admin_password = \"{ADMIN_PASSWORD}\"\nstats_users = [\"app_md5\"]\n\
             stats_period_ms = 200"
        ),
        pool,
    ))
}

/// A PgBouncer on a loopback port (as `postgres` when we are root), killed on drop.
struct PgBouncer;

impl PgBouncer {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        std::fs::write(&users, "\"admin\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\napp = host=127.0.0.1 port=1 dbname=app\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\nadmin_users = admin\n\
                 pool_mode = transaction\n",
                users.display()
            ),
        )
        .unwrap();
        for (p, mode) in [
            (dir.path().to_path_buf(), 0o755),
            (ini.clone(), 0o644),
            (users, 0o644),
        ] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let bin = PathBuf::from("/usr/sbin/pgbouncer");
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer is installed (apt-get install pgbouncer)");
        Daemon::new(port, child, dir)
    }
}

/// What a console answered to one query, read off the wire.
#[derive(Debug, Default)]
struct Answer {
    /// (name, type OID) of each column.
    columns: Vec<(String, u32)>,
    rows: Vec<Vec<Option<String>>>,
    /// The SQLSTATE of an error.
    error: Option<String>,
}

async fn read_message(s: &mut TcpStream) -> (u8, BytesMut) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_i32().await.unwrap() as usize;
    let mut body = BytesMut::zeroed(len - 4);
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(b: &mut BytesMut) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap();
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    s
}

/// Logs in to `db` on `port` as `user` (trust, or SCRAM with `password`) and runs `sql`
/// with the simple protocol, reading the column types a client sees.
async fn ask(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&integration_tests::raw::startup(user, db))
        .await
        .unwrap();
    let mut scram = None;
    loop {
        let (tag, mut body) = read_message(&mut s).await;
        match tag {
            b'R' => match body.get_i32() {
                10 => {
                    let sc = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    let mut b = b"SCRAM-SHA-256\0".to_vec();
                    b.extend_from_slice(&(sc.message().len() as i32).to_be_bytes());
                    b.extend_from_slice(sc.message());
                    s.write_all(&message(b'p', &b)).await.unwrap();
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram.as_mut().unwrap();
                    sc.update(&body).unwrap();
                    s.write_all(&message(b'p', sc.message())).await.unwrap();
                }
                12 => scram.as_mut().unwrap().finish(&body).unwrap(),
                _ => {}
            },
            b'E' => panic!("login to {db} on {port} failed"),
            b'Z' => break,
            _ => {}
        }
    }
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    s.write_all(&message(b'Q', &q)).await.unwrap();
    let mut a = Answer::default();
    loop {
        let (tag, mut body) = read_message(&mut s).await;
        match tag {
            b'T' => {
                for _ in 0..body.get_i16() {
                    let name = cstr(&mut body);
                    body.advance(6);
                    let oid = body.get_u32();
                    body.advance(8);
                    a.columns.push((name, oid));
                }
            }
            b'D' => {
                let mut row = Vec::new();
                for _ in 0..body.get_i16() {
                    let len = body.get_i32();
                    row.push((len >= 0).then(|| {
                        let v = String::from_utf8_lossy(&body[..len as usize]).into_owned();
                        body.advance(len as usize);
                        v
                    }));
                }
                a.rows.push(row);
            }
            b'E' => {
                let msgs = vec![(tag, body.to_vec())];
                a.error = integration_tests::raw::error_code(&msgs);
            }
            b'Z' => break,
            _ => {}
        }
    }
    s.write_all(&message(b'X', &[])).await.unwrap();
    let _ = s.shutdown().await;
    a
}

async fn admin(p: &Proxy, sql: &str) -> Answer {
    ask(p.port, "admin", ADMIN_PASSWORD, "shardgate", sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_show_command_has_pgbouncers_columns_in_order_and_types() {
    let bouncer = PgBouncer::start();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            TcpStream::connect(("127.0.0.1", bouncer.port))
                .await
                .is_ok()
        })
        .await,
        "pgbouncer did not start"
    );
    let p = proxy("");
    // A client, so that SHOW CLIENTS has a row.
    let _client = p.app("app").await;
    for cmd in SHARED {
        let sql = format!("SHOW {cmd}");
        let theirs = ask(bouncer.port, "admin", "", "pgbouncer", &sql).await;
        let ours = admin(&p, &sql).await;
        assert!(theirs.error.is_none() && ours.error.is_none(), "{cmd}");
        assert!(!theirs.columns.is_empty(), "{cmd}");
        assert_eq!(
            ours.columns[..theirs.columns.len()],
            theirs.columns[..],
            "SHOW {cmd}: PgBouncer's columns first, in its order and with its types"
        );
        assert!(!ours.rows.is_empty(), "SHOW {cmd} has rows");
    }
    // SHOW LISTS has PgBouncer's list names, in its order.
    let names = |a: &Answer| a.rows.iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    let theirs = ask(bouncer.port, "admin", "", "pgbouncer", "SHOW LISTS").await;
    assert_eq!(names(&admin(&p, "SHOW LISTS").await), names(&theirs));
    // The `pgbouncer` name reaches the console too.
    let v = ask(p.port, "admin", ADMIN_PASSWORD, "pgbouncer", "SHOW VERSION").await;
    assert!(v.rows[0][0].as_deref().unwrap().starts_with("Shardgate "));
}

async fn connect(p: &Proxy, user: &str, password: &str, db: &str) -> Result<Client, String> {
    p.connect(user, password, db)
        .await
        .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()))
}

async fn error_of(c: &Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.unwrap_err();
    sqlstate(&e).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_user_and_stats_users_log_in_and_only_the_admin_may_act() {
    let p = proxy("");
    assert_eq!(
        connect(&p, "admin", "wrong", "shardgate")
            .await
            .err()
            .as_deref(),
        Some("28P01")
    );
    assert_eq!(
        connect(&p, "app", "app", "shardgate")
            .await
            .err()
            .as_deref(),
        Some("28000"),
        "a user with the right password who is not an admin is refused"
    );
    assert_eq!(
        connect(&p, "nobody", "x", "shardgate")
            .await
            .err()
            .as_deref(),
        Some("28P01")
    );
    let admin = connect(&p, "admin", ADMIN_PASSWORD, "shardgate")
        .await
        .unwrap();
    let stats = connect(&p, "app_md5", "app_md5", "pgbouncer")
        .await
        .unwrap();
    for c in [&admin, &stats] {
        let rows = c.simple_query("show version;").await.unwrap();
        assert!(
            matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0).unwrap().starts_with("Shardgate"))
        );
        assert_eq!(error_of(c, "SHOW NONSENSE").await, "42601");
        assert_eq!(error_of(c, "SHOW TRANSACTIONS").await, "0A000");
    }
    assert_eq!(error_of(&admin, "SUSPEND").await, "0A000");
    assert_eq!(error_of(&admin, "PAUSE nosuchdb").await, "3D000");
    assert_eq!(
        error_of(&admin, "RESUME").await,
        "55000",
        "nothing is paused"
    );
    assert_eq!(error_of(&stats, "RELOAD").await, "42501");
    assert_eq!(error_of(&stats, "KILL app").await, "42501");
    let e = admin.simple_query("SELECT 1").await.unwrap_err();
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert!(
        hint.contains("SHOW POOLS"),
        "the error lists the commands: {hint}"
    );
    // The console still answers after errors, and never shows a password.
    let config = admin.simple_query("SHOW CONFIG").await.unwrap();
    let mut seen = false;
    for m in &config {
        if let SimpleQueryMessage::Row(r) = m {
            assert!(!r.get(1).unwrap_or("").contains(ADMIN_PASSWORD));
            if r.get(0) == Some("proxy.admin_password") {
                assert_eq!(r.get(1), Some("<redacted>"));
                seen = true;
            }
        }
    }
    assert!(seen, "SHOW CONFIG lists proxy.admin_password");
}

/// The value of `column` in the SHOW POOLS row of (database `app`, user `app`).
async fn pool_value(p: &Proxy, column: &str) -> i64 {
    let a = admin(p, "SHOW POOLS").await;
    let col = |n: &str| a.columns.iter().position(|c| c.0 == n).unwrap();
    let row = a
        .rows
        .iter()
        .find(|r| {
            r[col("database")].as_deref() == Some("app") && r[col("user")].as_deref() == Some("app")
        })
        .expect("a pool row for app/app");
    row[col(column)].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_counts_clients_server_connections_and_waiters() {
    let p = proxy("size = 1");
    let holder = p.app("app").await;
    let waiter = p.app("app").await;
    assert_eq!(pool_value(&p, "cl_active").await, 2);
    holder.simple_query("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(pool_value(&p, "sv_active").await, 1);
    assert_eq!(pool_value(&p, "sv_idle").await, 0);
    // The pool's one connection is held: the second client waits for it.
    let q = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| waiter) });
    assert!(
        wait_until(Duration::from_secs(30), || async {
            pool_value(&p, "cl_waiting").await == 1
        })
        .await,
        "the waiting client is counted"
    );
    assert_eq!(pool_value(&p, "cl_active").await, 1);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            pool_value(&p, "maxwait_us").await > 0 || pool_value(&p, "maxwait").await > 0
        })
        .await,
        "the wait is measured"
    );
    // SHOW CLIENTS: one client active, one waiting (for a measured time), both from loopback.
    let clients = admin(&p, "SHOW CLIENTS").await;
    let col = |n: &str| clients.columns.iter().position(|c| c.0 == n).unwrap();
    let states: Vec<_> = clients
        .rows
        .iter()
        .map(|r| r[col("state")].clone().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "waiting").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "active").count(),
        1,
        "{states:?}"
    );
    for r in &clients.rows {
        assert_eq!(r[col("addr")].as_deref(), Some("127.0.0.1"));
        assert_eq!(r[col("user")].as_deref(), Some("app"));
        let t = r[col("connect_time")].clone().unwrap();
        assert!(
            t.ends_with(" UTC") && t.len() == 23 && t.starts_with("20"),
            "{t}"
        );
        assert!(!t.starts_with("1970"), "a wall-clock time: {t}");
        assert!(r[col("request_time")].as_deref().unwrap() >= t.as_str());
    }
    // SHOW SERVERS: the pool's one connection, active, linked to the active client.
    let servers = admin(&p, "SHOW SERVERS").await;
    let app: Vec<_> = servers
        .rows
        .iter()
        .filter(|r| {
            r[col("database")].as_deref() == Some("app") && r[col("user")].as_deref() == Some("app")
        })
        .collect();
    assert_eq!(app.len(), 1, "{:?}", servers.rows);
    assert_eq!(app[0][col("state")].as_deref(), Some("active"));
    let active_client = clients
        .rows
        .iter()
        .find(|r| r[col("state")].as_deref() == Some("active"))
        .unwrap();
    assert_eq!(app[0][col("link")], active_client[col("ptr")]);
    let pid: i64 = app[0][col("remote_pid")]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pid > 0);
    holder.simple_query("COMMIT").await.unwrap();
    let _waiter = q.await.unwrap().unwrap();
    let servers = admin(&p, "SHOW SERVERS").await;
    assert!(servers
        .rows
        .iter()
        .filter(|r| r[col("database")].as_deref() == Some("app")
            && r[col("user")].as_deref() == Some("app"))
        .all(
            |r| r[col("state")].as_deref() == Some("idle") && r[col("link")].as_deref() == Some("")
        ));
    let clients = admin(&p, "SHOW CLIENTS").await;
    assert!(clients
        .rows
        .iter()
        .all(|r| r[col("state")].as_deref() == Some("active")));
    assert_eq!(pool_value(&p, "cl_waiting").await, 0);
    assert_eq!(pool_value(&p, "sv_active").await, 0);
    assert_eq!(pool_value(&p, "sv_idle").await, 1);
    // The checkout wait histogram (/metrics) has the served waiter past its first bucket.
    let shards = p.state.registry.get("app", "app").expect("app's pools");
    let (waits, waited_us) = shards[0].servers[0].wait_histogram();
    assert!(
        waits[1..].iter().sum::<u64>() >= 1 && waited_us > 0,
        "{waits:?}"
    );
    // SHOW SHARDS: the one server of `app`, a primary that answers.
    let shards = admin(&p, "SHOW SHARDS").await;
    let app: Vec<_> = shards
        .rows
        .iter()
        .filter(|r| r[0].as_deref() == Some("app"))
        .collect();
    assert_eq!(app.len(), 1);
    assert_eq!(app[0][4].as_deref(), Some("primary"));
    assert_eq!(app[0][5].as_deref(), Some("yes"));
    // SHOW DATABASES: app's pool size and its open connection.
    let dbs = admin(&p, "SHOW DATABASES").await;
    let row = dbs
        .rows
        .iter()
        .find(|r| r[0].as_deref() == Some("app"))
        .unwrap();
    assert_eq!(row[5].as_deref(), Some("1"), "pool_size");
    assert_eq!(row[10].as_deref(), Some("1"), "current_connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_query_of_several_commands_and_an_empty_one_are_answered() {
    let p = proxy("");
    let c = connect(&p, "admin", ADMIN_PASSWORD, "shardgate")
        .await
        .unwrap();
    let msgs = c.simple_query("SHOW USERS; SHOW LISTS").await.unwrap();
    let completes = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 2);
    // An empty query gets EmptyQueryResponse, as from Postgres: no rows, no error.
    let empty = c.simple_query("").await.unwrap();
    assert!(!empty
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(_))));
    c.simple_query("SHOW HELP").await.unwrap();
}

/// Database `app`'s row of a SHOW STATS-like command, by column name.
async fn stats_of(p: &Proxy, cmd: &str) -> std::collections::HashMap<String, i64> {
    let a = admin(p, cmd).await;
    let row = a
        .rows
        .iter()
        .find(|r| r[0].as_deref() == Some("app"))
        .expect("a row for app");
    a.columns
        .iter()
        .zip(row)
        .skip(1)
        .map(|(c, v)| (c.0.clone(), v.as_deref().unwrap().parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_stats_counts_a_known_workload() {
    let p = proxy("");
    let before = stats_of(&p, "SHOW STATS_TOTALS").await;
    let c = p.app("app").await;
    for _ in 0..10 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // One transaction of four statements (BEGIN and COMMIT included).
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SELECT pg_sleep(0.05)").await.unwrap();
    c.simple_query("SELECT 2").await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    let after = stats_of(&p, "SHOW STATS_TOTALS").await;
    let d = |k: &str| after[k] - before[k];
    assert_eq!(d("xact_count"), 11);
    assert_eq!(d("query_count"), 14);
    assert!(d("bytes_received") > 14 * 10, "{}", d("bytes_received"));
    assert!(d("bytes_sent") > 14 * 10, "{}", d("bytes_sent"));
    assert!(
        d("xact_time") >= 50_000,
        "the transaction took its sleep: {}",
        d("xact_time")
    );
    assert!(d("query_time") >= 50_000 && d("query_time") <= d("xact_time") + 1_000_000);
    // SHOW STATS has the same totals, and averages once a period (200 ms) has passed.
    let all = stats_of(&p, "SHOW STATS").await;
    assert_eq!(all["total_query_count"], after["query_count"]);
    // Queries go on (bounded) while the next periods end.
    let load = tokio::spawn(async move {
        for _ in 0..5_000 {
            if c.simple_query("SELECT 1").await.is_err() {
                break;
            }
        }
    });
    let seen = wait_until(Duration::from_secs(30), || async {
        let avg = stats_of(&p, "SHOW STATS_AVERAGES").await;
        avg["query_count"] > 0 && avg["xact_count"] > 0 && avg["bytes_sent"] > 0
    })
    .await;
    load.abort();
    assert!(seen, "averages over the last period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prepared_lists_the_shared_statements_and_their_holders() {
    let p = proxy("");
    let c = p.app("app").await;
    let text = "SELECT $1::int + 40 AS shown_by_show_prepared";
    let stmt = c.prepare(text).await.unwrap();
    let row = c.query_one(&stmt, &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let find = |a: &Answer| {
        let col = |n: &str| a.columns.iter().position(|c| c.0 == n).unwrap();
        a.rows
            .iter()
            .find(|r| r[col("query")].as_deref() == Some(text))
            .map(|r| {
                (
                    r[col("declared_types")].clone().unwrap(),
                    r[col("validated")].clone().unwrap(),
                    r[col("clients")].clone().unwrap(),
                )
            })
    };
    let shown = find(&admin(&p, "SHOW PREPARED").await);
    // tokio-postgres declares no parameter types (the server infers them).
    assert_eq!(shown, Some(("0".into(), "yes".into(), "1".into())));
    // A second client preparing the same text shares it: a hit in the cache's counts.
    let (hits, misses) = p.state.statements.lookups();
    let other = p.app("app").await;
    other.prepare(text).await.unwrap();
    assert_eq!(p.state.statements.lookups(), (hits + 1, misses));
    drop(other);

    drop(stmt);
    drop(c);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            find(&admin(&p, "SHOW PREPARED").await).is_some_and(|s| s.2 == "0")
        })
        .await,
        "the statement stays cached, held by no client"
    );
}
