//! Pipelines across shards against three real shard primaries and one plain Postgres: an
//! extended-protocol batch whose statements route to different shards (several Bind/Execute
//! before one Sync, as psycopg's `executemany` and JDBC batches send) runs each statement on
//! its own shard, and the client gets exactly what the plain Postgres sends for the same
//! batch (message by message), also when a statement fails mid-batch; outside a transaction
//! the batch is atomic across shards (one-phase, and two-phase with `two_phase_commit`),
//! inside one it joins the transaction.

use std::sync::OnceLock;

use integration_tests::raw::{error_code, login_trust, read_until};
use integration_tests::{Proxy, ShardSet};
use shardgate::config::{Config, KeyType};
use shardgate::shard::route::ShardMap;
use testkit::{ClusterOptions, PgCluster};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

const SCHEMA: &str = "CREATE TABLE pl (k bigint PRIMARY KEY, v text)";

/// Three shard primaries with table `pl` sharded by `k`.
fn shards() -> &'static ShardSet {
    static S: OnceLock<ShardSet> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| ShardSet::start(3, 20, &[("pl", "k", "bigint")]));
    REGISTERED.call_once(|| s.stop_at_exit());
    s
}

/// One plain Postgres (trust logins) holding the same table: what the client must see.
fn plain() -> &'static PgCluster {
    static P: OnceLock<PgCluster> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let p = P.get_or_init(|| {
        let c = PgCluster::start(ClusterOptions {
            hba_method: "trust".into(),
            ..ClusterOptions::default()
        })
        .expect("start the plain Postgres");
        c.psql("postgres", SCHEMA)
            .expect("schema on the plain Postgres");
        c
    });
    REGISTERED.call_once(|| integration_tests::stop_at_exit(p));
    p
}

/// The tests share one table: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A proxy over the shards (clients log in without a password); `db_extra`: lines of the
/// database. The table exists, empty, on every shard.
async fn proxy(db_extra: &str) -> Proxy {
    let text = shards().config("127.0.0.1:0", "", db_extra).replace(
        "password = \"app\"\n[[databases]]",
        "password = \"app\"\nauth_method = \"trust\"\n[[databases]]",
    );
    let p = Proxy::start(&text);
    for i in 0..3 {
        let d = shards().direct(i).await;
        d.simple_query("DROP TABLE IF EXISTS pl").await.unwrap();
        d.simple_query(SCHEMA).await.unwrap();
    }
    p
}

fn owner(k: i64) -> usize {
    let c = Config::parse(&shards().config("127.0.0.1:0", "", ""), "test").unwrap();
    ShardMap::new(&c.databases[0])
        .unwrap()
        .shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
        .unwrap()
        .index()
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend_from_slice(&[0, 0]);
    message(b'P', &b)
}

/// A Bind of statement `name` to the unnamed portal with text parameters.
fn bind(name: &str, params: &[&str]) -> Vec<u8> {
    let mut b = format!("\0{name}\0").into_bytes();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    message(b'B', &b)
}

fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// Sends `batch` and reads the answer to its ReadyForQuery.
async fn exchange(s: &mut TcpStream, batch: &[u8]) -> Vec<(u8, Vec<u8>)> {
    s.write_all(batch).await.unwrap();
    read_until(s, b"Z").await
}

/// The same batch through the proxy and on the plain Postgres: the answers, which must be
/// the same message for message.
async fn both(p: &Proxy, batch: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut via = login_trust(p.port, "app", "app").await;
    let mut direct = login_trust(plain().port(), "postgres", "postgres").await;
    let got = exchange(&mut via, batch).await;
    let want = exchange(&mut direct, batch).await;
    let tags = |m: &[(u8, Vec<u8>)]| m.iter().map(|x| x.0 as char).collect::<String>();
    assert_eq!(tags(&got), tags(&want), "messages: proxy vs plain Postgres");
    for ((t, a), (_, b)) in got.iter().zip(&want) {
        // Errors name the server's source lines; a RowDescription, the table's OID.
        if !matches!(*t, b'E' | b'T') {
            assert_eq!(a, b, "message {}", *t as char);
        }
    }
    assert_eq!(error_code(&got), error_code(&want));
    got
}

/// `k` of every row of `pl` on shard `i`.
async fn keys_on(i: usize) -> Vec<i64> {
    let d = shards().direct(i).await;
    let mut keys = Vec::new();
    for m in d.simple_query("SELECT k FROM pl ORDER BY k").await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            keys.push(r.get(0).unwrap().parse().unwrap());
        }
    }
    keys
}

async fn prepared_xacts() -> usize {
    let mut n = 0;
    for i in 0..3 {
        let d = shards().direct(i).await;
        let r = d
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap();
        n += r.get::<_, i64>(0) as usize;
    }
    n
}

async fn reset_plain() {
    let mut s = login_trust(plain().port(), "postgres", "postgres").await;
    exchange(&mut s, &message(b'Q', b"TRUNCATE pl\0")).await;
}

/// `Parse s1` then a Bind/Execute of each key before one Sync.
fn executemany(keys: &[i64]) -> Vec<u8> {
    let mut b = parse("s1", "INSERT INTO pl (k, v) VALUES ($1, $2)");
    for k in keys {
        let v = format!("v{k}");
        b.extend(bind("s1", &[&k.to_string(), &v]));
        b.extend(execute());
    }
    b.extend(sync());
    b
}

/// Keys that reach every shard.
fn spread(from: i64, n: i64) -> Vec<i64> {
    let keys: Vec<i64> = (from..from + n).collect();
    let owners: std::collections::BTreeSet<usize> = keys.iter().map(|k| owner(*k)).collect();
    assert_eq!(owners.len(), 3, "keys {from}.. reach every shard");
    keys
}

async fn check_placed(keys: &[i64]) {
    let mut placed = 0;
    for i in 0..3 {
        let on = keys_on(i).await;
        for k in &on {
            assert_eq!(owner(*k), i, "key {k} sits on its owner");
        }
        placed += on.len();
    }
    assert_eq!(placed, keys.len(), "every row stored once");
}

async fn run_executemany(db_extra: &str) {
    let _serial = SERIAL.lock().await;
    let p = proxy(db_extra).await;
    reset_plain().await;
    let keys = spread(1, 30);
    let got = both(&p, &executemany(&keys)).await;
    assert_eq!(got.iter().filter(|m| m.0 == b'C').count(), 30);
    assert_eq!(got.last().unwrap().1, b"I");
    check_placed(&keys).await;
    assert_eq!(prepared_xacts().await, 0);
    // The client's statement lives on: a later batch binds it again.
    let more = spread(100, 12);
    let mut b = Vec::new();
    for k in &more {
        b.extend(bind("s1", &[&k.to_string(), "again"]));
        b.extend(execute());
    }
    b.extend(sync());
    let mut c = login_trust(p.port, "app", "app").await;
    let got = exchange(&mut c, &executemany(&[1_000])).await;
    assert_eq!(error_code(&got), None);
    let got = exchange(&mut c, &b).await;
    assert_eq!(error_code(&got), None, "{got:?}");
    let all: Vec<i64> = keys.iter().chain(&more).copied().chain([1_000]).collect();
    check_placed(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executemany_across_shards_answers_like_one_postgres() {
    run_executemany("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executemany_across_shards_commits_in_two_phases() {
    run_executemany("two_phase_commit = true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_batch_ends_it_and_leaves_no_row_on_any_shard() {
    let _serial = SERIAL.lock().await;
    for extra in ["", "two_phase_commit = true"] {
        let p = proxy(extra).await;
        reset_plain().await;
        // Key 7 twice: the second INSERT fails; the rows before it, on every shard, go too.
        let mut keys = spread(1, 12);
        keys.insert(9, 7);
        let got = both(&p, &executemany(&keys)).await;
        assert_eq!(error_code(&got).as_deref(), Some("23505"));
        assert_eq!(got.iter().filter(|m| m.0 == b'C').count(), 9);
        for i in 0..3 {
            assert_eq!(
                keys_on(i).await,
                Vec::<i64>::new(),
                "shard {i}: rolled back"
            );
        }
        // The session goes on.
        let mut c = login_trust(p.port, "app", "app").await;
        let ok = spread(40, 9);
        let got = exchange(&mut c, &executemany(&ok)).await;
        assert_eq!(error_code(&got), None);
        check_placed(&ok).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_by_key_across_shards_come_back_in_the_clients_order() {
    let _serial = SERIAL.lock().await;
    let p = proxy("").await;
    reset_plain().await;
    let keys = spread(200, 15);
    let mut c = login_trust(p.port, "app", "app").await;
    assert_eq!(
        error_code(&exchange(&mut c, &executemany(&keys)).await),
        None
    );
    let mut d = login_trust(plain().port(), "postgres", "postgres").await;
    assert_eq!(
        error_code(&exchange(&mut d, &executemany(&keys)).await),
        None
    );
    // Unnamed statements with Describe, and a key with no row, in a shuffled order.
    let mut b = Vec::new();
    for k in keys.iter().rev().chain([&9_999]) {
        b.extend(parse("", "SELECT k, v FROM pl WHERE k = $1"));
        b.extend(bind("", &[&k.to_string()]));
        b.extend(describe_portal());
        b.extend(execute());
    }
    b.extend(sync());
    let got = both(&p, &b).await;
    assert_eq!(got.iter().filter(|m| m.0 == b'D').count(), keys.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_shards_joins_a_two_phase_transaction() {
    let _serial = SERIAL.lock().await;
    let p = proxy("two_phase_commit = true").await;
    let mut c = login_trust(p.port, "app", "app").await;
    let q = |sql: &str| message(b'Q', format!("{sql}\0").as_bytes());
    for (end, kept) in [("ROLLBACK", false), ("COMMIT", true)] {
        let keys = spread(300, 10);
        let got = exchange(&mut c, &q("BEGIN")).await;
        assert_eq!(got.last().unwrap().1, b"T");
        let got = exchange(&mut c, &executemany(&keys)).await;
        assert_eq!(error_code(&got), None, "{got:?}");
        assert_eq!(got.last().unwrap().1, b"T", "still in the transaction");
        // Nothing is visible on the shards before the end.
        for i in 0..3 {
            assert!(keys_on(i).await.is_empty());
        }
        let got = exchange(&mut c, &q(end)).await;
        assert_eq!(error_code(&got), None, "{got:?}");
        assert_eq!(got.last().unwrap().1, b"I");
        if kept {
            check_placed(&keys).await;
        } else {
            check_placed(&[]).await;
        }
        // Deallocate for the next round's Parse of the same name.
        let got = exchange(&mut c, &[message(b'C', b"Ss1\0"), sync()].concat()).await;
        assert_eq!(error_code(&got), None);
    }
    assert_eq!(prepared_xacts().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_shards_in_a_one_shard_transaction_is_refused() {
    let _serial = SERIAL.lock().await;
    let p = proxy("").await;
    let mut c = login_trust(p.port, "app", "app").await;
    let q = |sql: &str| message(b'Q', format!("{sql}\0").as_bytes());
    exchange(&mut c, &q("BEGIN")).await;
    let got = exchange(&mut c, &executemany(&spread(500, 9))).await;
    assert_eq!(error_code(&got).as_deref(), Some("0A000"));
    exchange(&mut c, &q("ROLLBACK")).await;
    check_placed(&[]).await;
}

/// psycopg 3's `executemany` (pipeline mode: every row's Bind/Execute before one Sync)
/// through the proxy: in autocommit, and in a transaction across shards (two-phase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_executemany_places_every_row() {
    let _serial = SERIAL.lock().await;
    let have = std::process::Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "psycopg 3 is missing: run integration-tests/drivers/install.sh (as root) first"
    );
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=sys.argv[2] == "autocommit")
lo, n = int(sys.argv[3]), int(sys.argv[4])
with conn.cursor() as cur:
    cur.executemany("INSERT INTO pl (k, v) VALUES (%s, %s)", [(k, f"py{k}") for k in range(lo, lo + n)])
conn.commit()
conn.close()
"#;
    let mut placed = Vec::new();
    for (extra, mode, lo) in [
        ("", "autocommit", 1_000),
        ("two_phase_commit = true", "transaction", 2_000),
    ] {
        let p = proxy(extra).await;
        let url = format!("host=127.0.0.1 port={} user=app dbname=app", p.port);
        let out = tokio::process::Command::new("python3")
            .args(["-c", script, &url, mode, &lo.to_string(), "50"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "psycopg {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        placed = (lo..lo + 50).collect();
        check_placed(&placed).await;
        assert_eq!(prepared_xacts().await, 0);
    }
    assert_eq!(placed.len(), 50);
}

/// Measurement (not run by default): psycopg 3 loading `PB_ROWS` rows (default 10,000) with
/// `executemany` in autocommit, `PB_ROUNDS` interleaved rounds (default 2): straight into
/// the plain Postgres, through Shardgate over three shards as one pipeline across shards, and
/// through Shardgate row by row (what a loader had to do when such a batch was refused).
/// Prints rows per second and the proxy's CPU per 1,000 rows (this process's getrusage; the
/// clients are other processes).
///
/// cargo test --release -p integration-tests --test pipeline -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn bench_executemany() {
    let _serial = SERIAL.lock().await;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (rows, rounds) = (env("PB_ROWS", 10_000), env("PB_ROUNDS", 2));
    let script = r#"
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
how, lo, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = [(k, f"b{k}") for k in range(lo, lo + n)]
sql = "INSERT INTO pl (k, v) VALUES (%s, %s)"
t = time.perf_counter()
with conn.cursor() as cur:
    if how == "many":
        cur.executemany(sql, data)
    else:
        for row in data:
            cur.execute(sql, row)
print(time.perf_counter() - t)
"#;
    let p = proxy("").await;
    let via = format!("host=127.0.0.1 port={} user=app dbname=app", p.port);
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        plain().port()
    );
    let mut lo = 1_000_000u64;
    for round in 0..rounds {
        for (name, url, how) in [
            ("direct, executemany", &direct, "many"),
            ("shardgate 3 shards, executemany (pipeline)", &via, "many"),
            ("shardgate 3 shards, row by row", &via, "each"),
        ] {
            let cpu0 = cpu_seconds();
            let out = tokio::process::Command::new("python3")
                .args(["-c", script, url, how, &lo.to_string(), &rows.to_string()])
                .output()
                .await
                .unwrap();
            let cpu = cpu_seconds() - cpu0;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            println!(
                "round {round} {name:45} {:>9.0} rows/s  proxy CPU {:.3} ms/1000 rows",
                rows as f64 / secs,
                cpu * 1e6 / rows as f64
            );
            lo += rows;
        }
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; no other preconditions.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}
