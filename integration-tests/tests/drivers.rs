//! Real-driver compatibility matrix: psycopg 3 (forced server-side prepares, pipeline mode),
//! psycopg2 (parameters, and SQL-level PREPARE/EXECUTE), asyncpg (default statement cache),
//! node-postgres (named prepared queries), pgjdbc (prepareThreshold=1), tokio-postgres
//! (prepared once, reused) and `pgbench -M prepared`, all through the proxy in TRANSACTION mode
//! with a pool far smaller than the number of clients, so every client's statements and
//! session settings must survive moving between server connections.
//!
//! Each driver workload (under `integration-tests/drivers/`) runs 20 concurrent clients that
//! reuse prepared INSERTs/SELECTs across explicit transactions and autocommit, check counts and
//! sums, and check that their own `SET search_path` (a schema per client holding a `marker`
//! table with the client's id) is seen by every later statement of theirs and by no other
//! client, and that `RESET search_path` brings back the server default.
//!
//! The client libraries come from `integration-tests/drivers/install.sh`; a missing one fails
//! the test with that hint. `SHARDGATE_DRIVERS_TARGET=session` runs the same workloads through
//! a session-mode database instead, `=direct` straight against Postgres (both to check the
//! workloads themselves; the default, `transaction`, is what CI runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{cluster, config_text, pgbench, pgbench_number, Proxy};

const CLIENTS: i32 = 20;
const ROUNDS: i32 = 8;
const DEFAULT_PATH: &str = "\"$user\", public";
/// Longest a driver workload may take (a healthy run takes a few seconds).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "run integration-tests/drivers/install.sh (as root) first";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Transaction,
    Session,
    Direct,
}

fn target() -> Target {
    match std::env::var("SHARDGATE_DRIVERS_TARGET").as_deref() {
        Err(_) | Ok("") | Ok("transaction") => Target::Transaction,
        Ok("session") => Target::Session,
        Ok("direct") => Target::Direct,
        Ok(other) => {
            panic!("SHARDGATE_DRIVERS_TARGET={other:?}: expected transaction, session or direct")
        }
    }
}

/// Where the clients connect: the proxy's transaction-mode `app` database with a pool of
/// `pool_size` server connections (or the session-mode database / Postgres itself, see the
/// module docs). Keeps the proxy alive.
struct Endpoint {
    proxy: Option<Proxy>,
    port: u16,
    db: &'static str,
}

impl Endpoint {
    fn start(pool_size: u32) -> Endpoint {
        match target() {
            Target::Transaction => {
                let proxy = Proxy::start(&config_text("", &format!("size = {pool_size}")));
                Endpoint {
                    port: proxy.port,
                    proxy: Some(proxy),
                    db: "app",
                }
            }
            Target::Session => {
                // one server connection per client: room for every client of a test
                let proxy = Proxy::start(&config_text("", "size = 40"));
                Endpoint {
                    port: proxy.port,
                    proxy: Some(proxy),
                    db: "app_session",
                }
            }
            Target::Direct => Endpoint {
                proxy: None,
                port: cluster().port(),
                db: "app",
            },
        }
    }

    fn url(&self) -> String {
        format!("postgres://app:app@127.0.0.1:{}/{}", self.port, self.db)
    }

    fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=app password=app dbname={} connect_timeout=10",
            self.port, self.db
        )
    }

    fn describe(&self) -> String {
        match &self.proxy {
            Some(_) => format!(
                "through the proxy, database {} ({:?} mode)",
                self.db,
                target()
            ),
            None => "straight against Postgres".into(),
        }
    }
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers")
}

/// Runs `cmd` to completion (or panics with `what` and the install hint if it can't run or
/// exits non-zero): used to check that a runtime or library is installed.
fn require(what: &str, cmd: &mut Command) {
    match cmd.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{what} is not installed ({}): {INSTALL_HINT}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{what} is not installed ({e}): {INSTALL_HINT}"),
    }
}

fn require_python_module(module: &str, what: &str) {
    require(
        what,
        Command::new("python3").args(["-c", &format!("import {module}")]),
    );
}

/// Runs a driver workload against `ep` with the PG* variables and `DRIVER_TABLE=prefix`,
/// asserting a zero exit within [`DRIVER_TIMEOUT`]; prints its output either way.
fn run_workload(name: &str, ep: &Endpoint, prefix: &str, cmd: &mut Command) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", ep.port.to_string())
        .env("PGUSER", "app")
        .env("PGPASSWORD", "app")
        .env("PGDATABASE", ep.db)
        .env("DRIVER_TABLE", prefix)
        .env("DRIVER_CLIENTS", CLIENTS.to_string())
        .env("DRIVER_ROUNDS", ROUNDS.to_string())
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}: {INSTALL_HINT}"));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DRIVER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    println!(
        "{name} {} in {:?}:\n{output}",
        ep.describe(),
        started.elapsed()
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{name} workload {} failed ({s}):\n{output}", ep.describe()),
        None => panic!(
            "{name} workload {} did not finish within {DRIVER_TIMEOUT:?} (killed):\n{output}",
            ep.describe()
        ),
    }
}

fn python_workload(script: &str, args: &[&str], prefix: &str, name: &str) {
    let ep = Endpoint::start(3);
    let mut cmd = Command::new("python3");
    cmd.arg(drivers_dir().join("python").join(script))
        .args(args);
    run_workload(name, &ep, prefix, &mut cmd);
}

#[test]
fn psycopg3_prepared_and_pipelined() {
    require_python_module("psycopg", "psycopg 3 (python3 -c 'import psycopg')");
    python_workload("psycopg3_test.py", &[], "drv_psycopg3", "psycopg3");
}

#[test]
fn psycopg2_parameters_and_transactions() {
    require_python_module("psycopg2", "psycopg2 (python3 -c 'import psycopg2')");
    python_workload("psycopg2_test.py", &[], "drv_psycopg2", "psycopg2");
}

#[test]
fn psycopg2_sql_prepare_execute() {
    require_python_module("psycopg2", "psycopg2 (python3 -c 'import psycopg2')");
    python_workload(
        "psycopg2_test.py",
        &["--sql-prepare"],
        "drv_psycopg2_sql",
        "psycopg2 --sql-prepare",
    );
}

#[test]
fn asyncpg_default_statement_cache() {
    require_python_module("asyncpg", "asyncpg (python3 -c 'import asyncpg')");
    python_workload("asyncpg_test.py", &[], "drv_asyncpg", "asyncpg");
}

#[test]
fn node_postgres_named_prepared_queries() {
    let node_dir = drivers_dir().join("node");
    require("node", Command::new("node").arg("--version"));
    require(
        "node-postgres (node -e \"require('pg')\" in integration-tests/drivers/node)",
        Command::new("node")
            .args(["-e", "require('pg')"])
            .current_dir(&node_dir),
    );
    let ep = Endpoint::start(3);
    let mut cmd = Command::new("node");
    cmd.arg(node_dir.join("pg_test.js")).current_dir(&node_dir);
    run_workload("node-postgres", &ep, "drv_node", &mut cmd);
}

#[test]
fn pgjdbc_prepare_threshold_1() {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    require("javac", Command::new("javac").arg("-version"));
    require("java", Command::new("java").arg("-version"));
    assert!(
        jar.is_file(),
        "pgjdbc is not installed ({} is missing): {INSTALL_HINT}",
        jar.display()
    );
    let classes = tempfile::tempdir().unwrap();
    let out = Command::new("javac")
        .arg("-d")
        .arg(classes.path())
        .arg("-cp")
        .arg(jar)
        .arg(drivers_dir().join("java").join("JdbcTest.java"))
        .output()
        .expect("run javac");
    assert!(
        out.status.success(),
        "javac JdbcTest.java failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ep = Endpoint::start(3);
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}:{}", classes.path().display(), jar.display()))
        .arg("JdbcTest");
    run_workload("pgjdbc", &ep, "drv_jdbc", &mut cmd);
}

/// The same workload with tokio-postgres: every client prepares its statements once (named
/// server-side statements) and reuses them in `client.transaction()`s and in autocommit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_once_reused() {
    let ep = Endpoint::start(3);
    let conn_str = ep.conn_str();
    let p = "drv_tokio";
    let table = format!("public.{p}_items");
    let setup = integration_tests::connect(&conn_str)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", ep.describe()));
    let mut sql = format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (client int NOT NULL, round int NOT NULL, v bigint NOT NULL);"
    );
    for i in 0..CLIENTS {
        sql += &format!(
            "DROP SCHEMA IF EXISTS {p}_s{i} CASCADE; CREATE SCHEMA {p}_s{i};
             CREATE TABLE {p}_s{i}.marker (v text);
             INSERT INTO {p}_s{i}.marker VALUES ('{p}-client-{i}');"
        );
    }
    setup.batch_execute(&sql).await.expect("setup");

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS as usize));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (conn_str, table, start) = (conn_str.clone(), table.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let res = tokio::time::timeout(
                DRIVER_TIMEOUT,
                tokio_client(i, p, &table, &conn_str, &start),
            )
            .await;
            match res {
                Ok(r) => r,
                Err(_) => Err(format!("client {i}: timed out after {DRIVER_TIMEOUT:?}")),
            }
        }));
    }
    let mut errors = Vec::new();
    let mut expected = Vec::new();
    let mut pids = Vec::new();
    for t in tasks {
        match t.await.expect("client task") {
            Ok((count, sum, seen)) => {
                expected.push((count, sum));
                pids.push(seen);
            }
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "tokio-postgres {}: {} failure(s):\n  {}",
        ep.describe(),
        errors.len(),
        errors.join("\n  ")
    );
    let rows = setup
        .query(
            &format!(
                "SELECT client, count(*), sum(v)::int8 FROM {table} GROUP BY client ORDER BY client"
            ),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    assert_eq!(got, expected, "final table contents per client");
    println!(
        "tokio-postgres {}: OK, {CLIENTS} clients x {ROUNDS} rounds; server backends seen per client: min {}, max {}",
        ep.describe(),
        pids.iter().min().unwrap(),
        pids.iter().max().unwrap()
    );
}

/// One tokio-postgres client of [`tokio_postgres_prepared_once_reused`]: returns its expected
/// (count, sum) and how many server backends it saw, or a description of what went wrong.
async fn tokio_client(
    i: i32,
    p: &str,
    table: &str,
    conn_str: &str,
    start: &tokio::sync::Barrier,
) -> Result<(i64, i64, usize), String> {
    let mut where_ = "connect".to_string();
    let err = |w: &str, e: &dyn std::fmt::Display| format!("client {i}: {w}: {e}");
    let perr = |w: &str, e: &tokio_postgres::Error| err(w, &describe_pg_error(e));
    let mut c = integration_tests::connect(conn_str)
        .await
        .map_err(|e| perr(&where_, &e))?;
    start.wait().await;
    let schema = format!("{p}_s{i}");
    let marker = format!("{p}-client-{i}");
    where_ = "before SET".into();
    let path = show_search_path(&c).await.map_err(|e| perr(&where_, &e))?;
    if path != DEFAULT_PATH {
        return Err(err(
            &where_,
            &format!("SHOW search_path gave {path:?}, expected {DEFAULT_PATH:?}"),
        ));
    }
    c.batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(|e| perr("SET search_path", &e))?;
    where_ = "prepare".into();
    let ins = c
        .prepare(&format!(
            "INSERT INTO {table} (client, round, v) VALUES ($1, $2, $3)"
        ))
        .await
        .map_err(|e| perr(&where_, &e))?;
    let sel = c
        .prepare(&format!(
            "SELECT count(*), coalesce(sum(v), 0)::int8 FROM {table} WHERE client = $1"
        ))
        .await
        .map_err(|e| perr(&where_, &e))?;
    let mark = c
        .prepare("SELECT v, pg_backend_pid() FROM marker")
        .await
        .map_err(|e| perr(&where_, &e))?;
    let show = c
        .prepare("SHOW search_path")
        .await
        .map_err(|e| perr(&where_, &e))?;

    let (mut count, mut sum) = (0i64, 0i64);
    let mut pids = std::collections::HashSet::new();
    // checks shared by the transaction and autocommit halves of a round
    macro_rules! check {
        ($q:expr, $where:expr) => {{
            let w: &str = $where;
            let row = $q
                .query_one(&sel, &[&i])
                .await
                .map_err(|e| perr(w, &e))?;
            let got: (i64, i64) = (row.get(0), row.get(1));
            if got != (count, sum) {
                return Err(err(
                    w,
                    &format!("count/sum {got:?}, expected {:?}", (count, sum)),
                ));
            }
            let rows = $q.query(&mark, &[]).await.map_err(|e| perr(w, &e))?;
            let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            if got.len() != 1 || got[0].0 != marker {
                return Err(err(
                    w,
                    &format!(
                        "SELECT v FROM marker gave {got:?}, expected {marker:?} (another client's search_path, or ours lost)"
                    ),
                ));
            }
            pids.insert(got[0].1);
        }};
    }
    for r in 0..ROUNDS {
        let vals: Vec<i64> = (1..=3).map(|k| (i * 1000 + r * 10 + k) as i64).collect();
        where_ = format!("round {r} client.transaction()");
        let tx = c.transaction().await.map_err(|e| perr(&where_, &e))?;
        for v in &vals[..2] {
            tx.execute(&ins, &[&i, &r, v])
                .await
                .map_err(|e| perr(&where_, &e))?;
            count += 1;
            sum += v;
        }
        check!(tx, &where_);
        tx.commit().await.map_err(|e| perr(&where_, &e))?;

        where_ = format!("round {r} autocommit");
        c.execute(&ins, &[&i, &r, &vals[2]])
            .await
            .map_err(|e| perr(&where_, &e))?;
        count += 1;
        sum += vals[2];
        check!(c, &where_);
        let path: String = c
            .query_one(&show, &[])
            .await
            .map_err(|e| perr(&where_, &e))?
            .get(0);
        if path != schema {
            return Err(err(
                &where_,
                &format!("SHOW search_path gave {path:?}, expected {schema:?}"),
            ));
        }
    }
    where_ = "after RESET".into();
    c.batch_execute("RESET search_path")
        .await
        .map_err(|e| perr(&where_, &e))?;
    let path = show_search_path(&c).await.map_err(|e| perr(&where_, &e))?;
    if path != DEFAULT_PATH {
        return Err(err(
            &where_,
            &format!("SHOW search_path gave {path:?}, expected {DEFAULT_PATH:?}"),
        ));
    }
    Ok((count, sum, pids.len()))
}

/// A tokio-postgres error with the server's SQLSTATE and message (its `Display` says only
/// "db error").
fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// `SHOW search_path` over the simple query protocol.
async fn show_search_path(c: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    for m in c.simple_query("SHOW search_path").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or_default().to_string());
        }
    }
    Ok(String::new())
}

/// `pgbench -M prepared` (each pgbench client prepares its statements once on its connection
/// and executes them in every later transaction) with 32 clients over 4 server connections.
#[test]
fn pgbench_prepared_transaction_mode() {
    let ep = Endpoint::start(4);
    // init over a session-mode database (or directly): it uses no prepared statements and is
    // not what this test is about
    let init_url = match &ep.proxy {
        Some(proxy) => proxy.url("app", "app", "app_session"),
        None => ep.url(),
    };
    let (ok, out) = pgbench(&init_url, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i failed:\n{out}");
    let (ok, out) = pgbench(
        &ep.url(),
        &["-M", "prepared", "-c", "32", "-j", "2", "-T", "10", "-n"],
    );
    println!("pgbench -M prepared {}:\n{out}", ep.describe());
    assert!(ok, "pgbench -M prepared {} failed:\n{out}", ep.describe());
    let failed = pgbench_number(&out, "number of failed transactions:");
    assert_eq!(failed, Some(0), "pgbench reported failures:\n{out}");
    let done = pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0);
    assert!(done > 0, "no transactions processed:\n{out}");
}
