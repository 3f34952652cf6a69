//! Sharding against three real shard primaries: statements routed by key (checked on the
//! shards themselves), fan-out reads merged like one database would answer (a differential
//! test against a plain Postgres holding the same rows), split INSERTs, broadcast DDL,
//! refusals with 0A000, single-shard transactions, hints.

use std::sync::OnceLock;

use integration_tests::{connect, sqlstate, stop_at_exit, Proxy};
use shardgate::config::{Config, KeyType};
use shardgate::shard::route::ShardMap;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};
use tokio_postgres::{Client, SimpleQueryMessage};

struct Shards {
    clusters: Vec<PgCluster>,
    config: String,
}

/// Three shard primaries (role/db `app`) plus database `plain` on the first one for the
/// differential test; stopped when the test process exits.
fn shards() -> &'static Shards {
    static S: OnceLock<Shards> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| {
        let clusters: Vec<PgCluster> = (0..3)
            .map(|_| {
                let c = PgCluster::start(ClusterOptions {
                    hba_method: "md5".into(),
                    extra_conf: vec!["max_prepared_transactions = 50".into()],
                    ..ClusterOptions::default()
                })
                .expect("start shard");
                c.create_role("app", "app", PasswordMethod::Scram).unwrap();
                c.create_database("app", "app").unwrap();
                c
            })
            .collect();
        clusters[0].create_database("plain", "app").unwrap();
        let mut config = String::from(
            r#"
[proxy]
listen = "127.0.0.1:0"
[pool]
size = 4
[[users]]
name = "app"
password = "app"
[[databases]]
name = "app"
#DB_EXTRA#
"#,
        );
        for (i, c) in clusters.iter().enumerate() {
            config.push_str(&format!(
                "[[databases.shards]]\nname = \"s{i}\"\nprimary = \"{}\"\n",
                c.addr()
            ));
        }
        config.push_str(
            r#"[[databases.sharded_tables]]
table = "accounts"
column = "aid"
type = "bigint"
[[databases.sharded_tables]]
table = "history"
column = "aid"
type = "bigint"
[[databases.sharded_tables]]
table = "users"
column = "name"
type = "text"
[[databases.sharded_tables]]
table = "placed"
column = "k"
type = "bigint"
"#,
        );
        Shards { clusters, config }
    });
    REGISTERED.call_once(|| s.clusters.iter().for_each(stop_at_exit));
    s
}

fn map() -> ShardMap {
    let c = Config::parse(&shards().config, "test").unwrap();
    ShardMap::new(&c.databases[0]).unwrap()
}

fn owner(k: i64) -> usize {
    map()
        .shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
        .unwrap()
        .index()
}

async fn direct(c: &PgCluster, db: &str) -> Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname={db}",
        c.port()
    ))
    .await
    .unwrap()
}

/// Rows of a simple query as text, NULL as "NULL".
async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

const SCHEMA: &str = "CREATE TABLE accounts (aid bigint PRIMARY KEY, bid int NOT NULL, \
     abalance int, note text); \
     CREATE TABLE history (hid int, aid bigint NOT NULL, delta int, mtime timestamp); \
     CREATE TABLE users (name text PRIMARY KEY, score numeric)";

/// The dataset, as multi-row INSERTs (split by the proxy across shards).
fn data() -> Vec<String> {
    let mut v = Vec::new();
    let accounts: Vec<String> = (1..=240)
        .map(|a| {
            let bal = if a % 17 == 0 {
                "NULL".to_string()
            } else {
                ((a * 37) % 1000 - 500).to_string()
            };
            format!("({a}, {}, {bal}, 'n{}')", a % 7 + 1, a % 5)
        })
        .collect();
    for chunk in accounts.chunks(60) {
        v.push(format!(
            "INSERT INTO accounts (aid, bid, abalance, note) VALUES {}",
            chunk.join(", ")
        ));
    }
    let history: Vec<String> = (1..=300)
        .map(|h| {
            format!(
                "({h}, {}, {}, timestamp '2026-01-01 00:00:00' + interval '{} minutes')",
                (h * 7) % 240 + 1,
                (h % 11) - 5,
                h * 13
            )
        })
        .collect();
    v.push(format!(
        "INSERT INTO history (hid, aid, delta, mtime) VALUES {}",
        history.join(", ")
    ));
    let users: Vec<String> = ["alice", "bob", "carol", "dave", "eve", "frank", "grace"]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("('{n}', {}.{})", i * 3, i))
        .collect();
    v.push(format!(
        "INSERT INTO users (name, score) VALUES {}",
        users.join(", ")
    ));
    v
}

/// Loads the schema and data through the proxy (once per test binary) and into `plain`.
async fn loaded(proxy: &Proxy) -> Client {
    static LOADED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let c = proxy.app("app").await;
    LOADED
        .get_or_init(|| async {
            let plain = direct(&shards().clusters[0], "plain").await;
            for stmt in SCHEMA.split("; ") {
                c.simple_query(stmt).await.expect(stmt);
                plain.simple_query(stmt).await.unwrap();
            }
            for stmt in data() {
                c.simple_query(&stmt).await.expect("insert through proxy");
                plain.simple_query(&stmt).await.unwrap();
            }
        })
        .await;
    c
}

/// The tests share one dataset (and the differential test compares all of it): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn proxy() -> Proxy {
    Proxy::start(&shards().config)
}

/// A proxy whose database has `db_extra` keys (e.g. `two_phase_commit = true`) and `proxy_extra`
/// lines in `[proxy]`.
fn proxy_with(db_extra: &str, proxy_extra: &str) -> Proxy {
    let text = shards()
        .config
        .replace("#DB_EXTRA#", db_extra)
        .replace("[proxy]\n", &format!("[proxy]\n{proxy_extra}\n"));
    Proxy::start(&text)
}

/// Two keys on different shards.
fn keys_on_two_shards() -> (i64, i64) {
    let a = 11i64;
    let b = (12..200).find(|k| owner(*k) != owner(a)).unwrap();
    (a, b)
}

async fn balance(aid: i64) -> String {
    let d = direct(&shards().clusters[owner(aid)], "app").await;
    rows(
        &d,
        &format!("SELECT coalesce(abalance, 0) FROM accounts WHERE aid = {aid}"),
    )
    .await
    .unwrap()[0][0]
        .clone()
}

async fn prepared_left() -> usize {
    let mut n = 0;
    for c in &shards().clusters {
        let d = direct(c, "app").await;
        n += rows(&d, "SELECT gid FROM pg_prepared_xacts")
            .await
            .unwrap()
            .len();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_across_shards_commit_atomically_with_two_phase_commit() {
    let _serial = SERIAL.lock().await;
    let p = proxy_with("two_phase_commit = true", "");
    let c = loaded(&p).await;
    let (a, b) = keys_on_two_shards();
    let (a0, b0) = (balance(a).await, balance(b).await);
    let add = |v: &str, d: i64| (v.parse::<i64>().unwrap() + d).to_string();
    // Commit: both shards change.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!(
        "UPDATE accounts SET abalance = coalesce(abalance, 0) + 10 WHERE aid = {a}"
    ))
    .await
    .unwrap();
    c.simple_query(&format!(
        "UPDATE accounts SET abalance = coalesce(abalance, 0) - 10 WHERE aid = {b}"
    ))
    .await
    .unwrap();
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(balance(a).await, add(&a0, 10));
    assert_eq!(balance(b).await, add(&b0, -10));
    assert_eq!(prepared_left().await, 0);
    // Rollback: neither changes.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("UPDATE accounts SET abalance = 0 WHERE aid = {a}"))
        .await
        .unwrap();
    c.simple_query(&format!("UPDATE accounts SET abalance = 0 WHERE aid = {b}"))
        .await
        .unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(balance(a).await, add(&a0, 10));
    assert_eq!(balance(b).await, add(&b0, -10));
    // An error on one shard: COMMIT rolls back everything.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("UPDATE accounts SET abalance = 0 WHERE aid = {a}"))
        .await
        .unwrap();
    let e = c
        .simple_query(&format!(
            "UPDATE accounts SET abalance = 1/0 WHERE aid = {b}"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    assert_eq!(
        balance(a).await,
        add(&a0, 10),
        "nothing of the failed transaction stays"
    );
    // Fan-out inside a transaction, then rollback.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE accounts SET abalance = -1")
        .await
        .unwrap();
    assert_eq!(
        rows(&c, "SELECT count(*) FROM accounts WHERE abalance = -1")
            .await
            .unwrap(),
        [["240"]]
    );
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(balance(a).await, add(&a0, 10));
    // Extended protocol inside the transaction (tokio-postgres sends BEGIN/COMMIT as simple
    // queries and statements with parameters).
    let mut c2 = p.app("app").await;
    let tx = c2.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET abalance = abalance + 1 WHERE aid = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET abalance = abalance - 1 WHERE aid = $1",
        &[&b],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance(a).await, add(&a0, 11));
    assert_eq!(balance(b).await, add(&b0, -11));
    assert_eq!(prepared_left().await, 0);
    // Keep the plain copy in step for the differential test.
    let plain = direct(&shards().clusters[0], "plain").await;
    plain
        .simple_query(&format!(
            "UPDATE accounts SET abalance = coalesce(abalance, 0) + 11 WHERE aid = {a}; \
             UPDATE accounts SET abalance = coalesce(abalance, 0) - 11 WHERE aid = {b}"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_interrupted_between_prepare_and_commit_is_resolved_on_restart() {
    let _serial = SERIAL.lock().await;
    let crashing = proxy_with(
        "two_phase_commit = true\ntwo_phase_recovery_ms = 0",
        "failpoints = [\"after_prepare\"]",
    );
    let _ = loaded(&crashing).await;
    let c = crashing.app("app").await;
    c.simple_query("CREATE TABLE IF NOT EXISTS crash_log (aid bigint, note text)")
        .await
        .unwrap();
    let (a, b) = keys_on_two_shards();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!(
        "UPDATE accounts SET note = 'crash-test' WHERE aid = {a}"
    ))
    .await
    .unwrap();
    c.simple_query(&format!(
        "UPDATE accounts SET note = 'crash-test' WHERE aid = {b}"
    ))
    .await
    .unwrap();
    assert!(
        c.simple_query("COMMIT").await.is_err(),
        "the proxy 'crashed'"
    );
    drop(crashing);
    assert_eq!(prepared_left().await, 2, "both participants stay prepared");
    // A new proxy resolves them at start-up: all prepared, so the transaction commits.
    let _p = proxy_with("two_phase_commit = true\ntwo_phase_recovery_ms = 0", "");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while prepared_left().await > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(prepared_left().await, 0);
    for k in [a, b] {
        let d = direct(&shards().clusters[owner(k)], "app").await;
        assert_eq!(
            rows(&d, &format!("SELECT note FROM accounts WHERE aid = {k}"))
                .await
                .unwrap(),
            [["crash-test"]]
        );
    }
    let plain = direct(&shards().clusters[0], "plain").await;
    plain
        .simple_query(&format!(
            "UPDATE accounts SET note = 'crash-test' WHERE aid IN ({a}, {b})"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_their_owning_shard() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let c = loaded(&p).await;
    let mut total = 0;
    for (i, cl) in shards().clusters.iter().enumerate() {
        let d = direct(cl, "app").await;
        let aids = rows(&d, "SELECT aid FROM accounts").await.unwrap();
        assert!(!aids.is_empty(), "shard {i} got no rows");
        for a in &aids {
            let aid: i64 = a[0].parse().unwrap();
            assert_eq!(owner(aid), i, "aid {aid} is on shard {i}");
        }
        let n = aids.len();
        assert!((50..=110).contains(&n), "shard {i} has {n} of 240 rows");
        total += n;
        let hist = rows(&d, "SELECT aid FROM history").await.unwrap();
        for h in hist {
            assert_eq!(owner(h[0].parse().unwrap()), i);
        }
    }
    assert_eq!(total, 240);
    // The count through the proxy is summed over the shards.
    assert_eq!(
        rows(&c, "SELECT count(*) FROM accounts").await.unwrap(),
        [["240"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_statements_run_on_the_owner_only() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let c = loaded(&p).await;
    let ports: Vec<i32> = shards().clusters.iter().map(|c| c.port() as i32).collect();
    for aid in [1i64, 2, 3, 50, 199, 240] {
        let got = rows(
            &c,
            &format!("SELECT inet_server_port(), aid FROM accounts WHERE aid = {aid}"),
        )
        .await
        .unwrap();
        assert_eq!(got, [[ports[owner(aid)].to_string(), aid.to_string()]]);
        // Extended protocol, text and binary parameters.
        let row = c
            .query_one(
                "SELECT inet_server_port(), aid FROM accounts WHERE aid = $1",
                &[&aid],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), ports[owner(aid)]);
        let stmt = c
            .prepare_typed(
                "SELECT inet_server_port() FROM accounts WHERE aid = $1::text::bigint",
                &[tokio_postgres::types::Type::TEXT],
            )
            .await
            .unwrap();
        let row = c.query_one(&stmt, &[&aid.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), ports[owner(aid)]);
    }
    // An UPDATE by key changes exactly one row, on its shard.
    let n = c
        .execute(
            "UPDATE accounts SET note = 'touched' WHERE aid = $1",
            &[&77i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let d = direct(&shards().clusters[owner(77)], "app").await;
    assert_eq!(
        rows(&d, "SELECT note FROM accounts WHERE aid = 77")
            .await
            .unwrap(),
        [["touched"]]
    );
    let plain = direct(&shards().clusters[0], "plain").await;
    plain
        .simple_query("UPDATE accounts SET note = 'touched' WHERE aid = 77")
        .await
        .unwrap();
    // A single-shard transaction works; one that reaches a second shard is refused.
    let (a, b) = {
        let first = 5i64;
        let other = (6..100).find(|k| owner(*k) != owner(first)).unwrap();
        (first, other)
    };
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!(
        "UPDATE accounts SET abalance = abalance WHERE aid = {a}"
    ))
    .await
    .unwrap();
    let e = c
        .simple_query(&format!("SELECT * FROM accounts WHERE aid = {b}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(rows(&c, "SELECT 1").await.unwrap(), [["1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_statements_get_0a000() {
    let p = proxy();
    let c = loaded(&p).await;
    for sql in [
        "UPDATE accounts SET aid = 1000 WHERE aid = 1",
        "SELECT * FROM accounts a JOIN users u ON u.name = a.note",
        "SELECT string_agg(note, ',') FROM accounts",
        "INSERT INTO accounts VALUES (1000, 1, 1, 'x')",
        "SELECT bid, count(*) FROM accounts GROUP BY bid HAVING count(*) > 1",
        "SELECT * FROM accounts WHERE aid = 1; SELECT * FROM accounts WHERE aid = 2",
        // Observed bug 6: answered per shard before.
        "SELECT name FROM users WHERE score > (SELECT avg(score) FROM users)",
        "SELECT count(*) FROM accounts a JOIN accounts b ON a.bid = b.bid",
        "SELECT * FROM accounts WHERE aid = 1 AND bid IN (SELECT bid FROM accounts)",
        "SELECT aid, rank() OVER (ORDER BY abalance) FROM accounts",
        "SELECT aid FROM accounts UNION SELECT aid FROM history",
        "WITH x AS (SELECT * FROM accounts) SELECT count(*) FROM x",
        "SELECT count(*) FROM (SELECT bid FROM accounts GROUP BY bid) s",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{sql}: {e}");
        let hint = e.as_db_error().and_then(|d| d.hint());
        assert!(hint.is_some_and(|h| !h.is_empty()), "{sql}: no hint");
    }
    // Pinned to one shard by the key everywhere: runs there, like one database.
    assert_eq!(
        rows(
            &c,
            "SELECT aid FROM accounts WHERE aid = 5 UNION ALL \
             SELECT aid FROM accounts WHERE aid = 5 AND abalance > (SELECT min(abalance) - 1 FROM accounts WHERE aid = 5)"
        )
        .await
        .unwrap(),
        [["5"], ["5"]]
    );
    // The client keeps working.
    assert_eq!(
        rows(&c, "SELECT count(*) FROM users").await.unwrap(),
        [["7"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_session_shard() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let c = loaded(&p).await;
    let ports: Vec<i32> = shards().clusters.iter().map(|c| c.port() as i32).collect();
    assert_eq!(
        rows(&c, "/* shardgate: shard=s2 */ SELECT inet_server_port()")
            .await
            .unwrap(),
        [[ports[2].to_string()]]
    );
    assert_eq!(
        rows(&c, "/* shardgate: key=42 */ SELECT inet_server_port()")
            .await
            .unwrap(),
        [[ports[owner(42)].to_string()]]
    );
    c.simple_query("SET shardgate.shard = 's1'").await.unwrap();
    assert_eq!(
        rows(&c, "SELECT inet_server_port()").await.unwrap(),
        [[ports[1].to_string()]]
    );
    assert_eq!(rows(&c, "SHOW shardgate.shard").await.unwrap(), [["s1"]]);
    c.simple_query("RESET shardgate.shard").await.unwrap();
    let e = c
        .simple_query("SET shardgate.shard = 'nope'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"));
}

/// The differential test: the same queries against a plain Postgres and through Shardgate over
/// three shards must return identical rows (in order where the query orders them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_answers_match_one_database() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let c = loaded(&p).await;
    let plain = direct(&shards().clusters[0], "plain").await;
    // Keep the two in step for the row the other test updates.
    plain
        .simple_query("UPDATE accounts SET note = 'touched' WHERE aid = 77")
        .await
        .unwrap();
    c.simple_query("UPDATE accounts SET note = 'touched' WHERE aid = 77")
        .await
        .unwrap();
    let mut corpus: Vec<(String, bool)> = Vec::new();
    let mut q = |sql: &str, ordered: bool| corpus.push((sql.to_string(), ordered));
    for aid in [1, 17, 34, 100, 239] {
        q(&format!("SELECT * FROM accounts WHERE aid = {aid}"), true);
        q(
            &format!("SELECT aid, abalance FROM accounts WHERE aid = {aid} AND bid > 0"),
            true,
        );
    }
    q(
        "SELECT * FROM accounts WHERE aid IN (1, 2, 3, 50, 51, 200) ORDER BY aid",
        true,
    );
    q("SELECT aid FROM accounts WHERE aid IN (5, 6, 7)", false);
    q(
        "SELECT * FROM accounts WHERE aid BETWEEN 10 AND 40 ORDER BY aid",
        true,
    );
    q(
        "SELECT aid, abalance FROM accounts ORDER BY abalance, aid",
        true,
    );
    q(
        "SELECT aid, abalance FROM accounts ORDER BY abalance DESC, aid",
        true,
    );
    q(
        "SELECT aid, abalance FROM accounts ORDER BY abalance NULLS FIRST, aid",
        true,
    );
    q(
        "SELECT aid, abalance FROM accounts ORDER BY abalance DESC NULLS LAST, aid DESC",
        true,
    );
    q("SELECT aid FROM accounts ORDER BY aid LIMIT 10", true);
    q(
        "SELECT aid FROM accounts ORDER BY aid LIMIT 10 OFFSET 25",
        true,
    );
    q(
        "SELECT aid FROM accounts ORDER BY aid DESC LIMIT 7 OFFSET 3",
        true,
    );
    q(
        "SELECT aid, note FROM accounts ORDER BY note, aid LIMIT 20",
        true,
    );
    q("SELECT aid FROM accounts ORDER BY bid, aid LIMIT 15", true);
    q("SELECT * FROM accounts ORDER BY aid LIMIT 5", true);
    q("SELECT count(*) FROM accounts", true);
    q("SELECT count(abalance) FROM accounts", true);
    q("SELECT sum(abalance) FROM accounts", true);
    q("SELECT min(abalance), max(abalance) FROM accounts", true);
    q("SELECT avg(abalance) FROM accounts", true);
    q(
        "SELECT count(*), sum(abalance), avg(abalance) FROM accounts WHERE aid > 100",
        true,
    );
    q("SELECT count(*) FROM accounts WHERE aid > 10000", true);
    q("SELECT sum(abalance) FROM accounts WHERE aid > 10000", true);
    q(
        "SELECT bid, count(*) FROM accounts GROUP BY bid ORDER BY bid",
        true,
    );
    q(
        "SELECT bid, sum(abalance), min(aid), max(aid) FROM accounts GROUP BY bid ORDER BY bid",
        true,
    );
    q(
        "SELECT bid, avg(abalance) FROM accounts GROUP BY bid ORDER BY bid",
        true,
    );
    q(
        "SELECT note, count(*) FROM accounts GROUP BY note ORDER BY note",
        true,
    );
    q(
        "SELECT bid, note, count(*) FROM accounts GROUP BY bid, note ORDER BY bid, note",
        true,
    );
    q(
        "SELECT bid, count(*) FROM accounts GROUP BY bid ORDER BY count(*) DESC, bid LIMIT 3",
        true,
    );
    q("SELECT bid, count(*) FROM accounts GROUP BY bid", false);
    q("SELECT DISTINCT bid FROM accounts ORDER BY bid", true);
    q("SELECT DISTINCT note FROM accounts ORDER BY note", true);
    q(
        "SELECT DISTINCT bid, note FROM accounts ORDER BY bid, note",
        true,
    );
    q("SELECT DISTINCT bid FROM accounts", false);
    q("SELECT count(*) FROM history", true);
    q(
        "SELECT sum(delta), min(mtime), max(mtime) FROM history",
        true,
    );
    q(
        "SELECT aid, sum(delta) FROM history GROUP BY aid ORDER BY aid LIMIT 20",
        true,
    );
    q(
        "SELECT * FROM history ORDER BY mtime DESC, hid LIMIT 12",
        true,
    );
    q(
        "SELECT hid, mtime FROM history WHERE aid = 8 ORDER BY hid",
        true,
    );
    q(
        "SELECT a.aid, a.abalance, h.delta FROM accounts a JOIN history h ON h.aid = a.aid \
         WHERE a.aid = 8 ORDER BY h.hid",
        true,
    );
    q(
        "SELECT a.aid, count(*) FROM accounts a JOIN history h ON h.aid = a.aid \
         GROUP BY a.aid ORDER BY a.aid LIMIT 15",
        true,
    );
    q(
        "SELECT count(*), sum(h.delta) FROM accounts a JOIN history h ON a.aid = h.aid \
         WHERE a.bid = 3",
        true,
    );
    q("SELECT * FROM users ORDER BY name", true);
    q("SELECT * FROM users WHERE name = 'carol'", true);
    q(
        "SELECT name FROM users WHERE name IN ('alice', 'eve', 'zed') ORDER BY name",
        true,
    );
    q("SELECT sum(score), avg(score), max(score) FROM users", true);
    q("SELECT count(*) FROM users WHERE score > 5", true);
    q(
        "SELECT aid FROM accounts WHERE abalance IS NULL ORDER BY aid",
        true,
    );
    q("SELECT aid FROM accounts WHERE note = 'touched'", true);
    q("SELECT max(note), min(note) FROM accounts", true);
    q(
        "SELECT bid, max(abalance) FROM accounts WHERE abalance < 0 GROUP BY bid ORDER BY 1",
        true,
    );
    q(
        "SELECT aid, abalance FROM accounts WHERE abalance > 400 ORDER BY 2 DESC, 1",
        true,
    );
    q(
        "SELECT aid AS k FROM accounts ORDER BY k DESC LIMIT 4",
        true,
    );
    q(
        "SELECT count(DISTINCT bid) > 0 FROM accounts WHERE aid = 3",
        true,
    );
    q(
        "SELECT bool_and(abalance > -600), bool_or(abalance > 400) FROM accounts",
        true,
    );
    q("SELECT every(bid < 8) FROM accounts", true);
    q(
        "SELECT bid, min(note) FROM accounts GROUP BY bid ORDER BY bid DESC",
        true,
    );
    q(
        "SELECT aid FROM accounts WHERE aid = 3 OR aid = 4 ORDER BY aid",
        true,
    );
    q(
        "SELECT sum(aid) FROM accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8, 9)",
        true,
    );
    assert!(corpus.len() >= 60, "{} queries", corpus.len());
    for (sql, ordered) in &corpus {
        let mut want = rows(&plain, sql).await.unwrap();
        let mut got = rows(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        if !ordered {
            want.sort();
            got.sort();
        }
        assert_eq!(got, want, "{sql}");
        // The extended protocol with binary results (tokio-postgres prepares, then binds):
        // the same bytes as one database.
        let mut want = binary_rows(&plain, sql, &[]).await.unwrap();
        let mut got = binary_rows(&c, sql, &[])
            .await
            .unwrap_or_else(|e| panic!("extended {sql}: {e}"));
        if !ordered {
            want.sort();
            got.sort();
        }
        assert_eq!(got, want, "extended {sql}");
    }
}

/// A column value as the bytes of its binary format, whatever its type.
struct Raw(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

type BinaryRows = Vec<Vec<Option<Vec<u8>>>>;

/// Rows of an extended-protocol query in binary format.
async fn binary_rows(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<BinaryRows, tokio_postgres::Error> {
    Ok(c.query(sql, params)
        .await?
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i).0).collect())
        .collect())
}

/// Statements for several shards through the extended protocol: bound parameters (also in
/// LIMIT and OFFSET), an IN list over shards, writes summed, a multi-row INSERT split by key,
/// and a shape that is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_on_several_shards() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let mut c = loaded(&p).await;
    let plain = direct(&shards().clusters[0], "plain").await;
    let cases: Vec<(&str, Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>)> = vec![
        (
            "SELECT aid, abalance FROM accounts WHERE abalance > $1 ORDER BY aid LIMIT $2 OFFSET $3",
            vec![Box::new(-100i32), Box::new(7i64), Box::new(3i64)],
        ),
        (
            "SELECT * FROM accounts WHERE aid IN ($1, $2, $3) ORDER BY aid",
            vec![Box::new(1i64), Box::new(50i64), Box::new(200i64)],
        ),
        (
            "SELECT bid, count(*), sum(abalance), avg(abalance) FROM accounts \
             WHERE note <> $1 GROUP BY bid ORDER BY bid",
            vec![Box::new("n1".to_string())],
        ),
        (
            "SELECT max(mtime), min(hid) FROM history WHERE delta = $1",
            vec![Box::new(2i32)],
        ),
        ("SELECT sum(score), avg(score) FROM users", vec![]),
    ];
    for (sql, params) in &cases {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let want = binary_rows(&plain, sql, &refs).await.unwrap();
        let got = binary_rows(&c, sql, &refs)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!want.is_empty(), "{sql}");
        assert_eq!(got, want, "{sql}");
    }
    // A write without a key runs on every shard; the counts add up.
    let sql = "UPDATE accounts SET note = note WHERE bid = $1";
    let want = plain.execute(sql, &[&3i32]).await.unwrap();
    assert!(want > 0);
    assert_eq!(c.execute(sql, &[&3i32]).await.unwrap(), want);
    // Rows for several shards in one INSERT: split, each part with its own parameters
    // (renumbered), RETURNING rows from both; checked on the owning shards.
    let (a, b) = keys_on_two_shards();
    let mut returned: Vec<(i32, i64)> = c
        .query(
            "INSERT INTO history (hid, aid, delta) VALUES ($1, $2, $3), ($4, $5, $3) \
             RETURNING hid, aid",
            &[&9001i32, &a, &7i32, &9002i32, &b],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    returned.sort();
    assert_eq!(returned, [(9001, a), (9002, b)]);
    for (hid, key) in [(9001i32, a), (9002, b)] {
        for (i, cluster) in shards().clusters.iter().enumerate() {
            let n: i64 = direct(cluster, "app")
                .await
                .query_one(
                    "SELECT count(*) FROM history WHERE hid = $1 AND aid = $2 AND delta = 7",
                    &[&hid, &key],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i64::from(i == owner(key)), "hid {hid} on shard {i}");
        }
    }
    let removed = c
        .execute("DELETE FROM history WHERE hid >= $1", &[&9001i32])
        .await
        .unwrap();
    assert_eq!(removed, 2);
    // A fetch size: 0A000, the client goes on.
    let t = c.transaction().await.unwrap();
    let fetched = match t.bind("SELECT aid FROM accounts ORDER BY aid", &[]).await {
        Ok(portal) => t.query_portal(&portal, 5).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let e = fetched.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    t.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM accounts WHERE aid > $1", &[&0i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 240);
}

/// A BEGIN sent through the extended protocol waits for the transaction's first statement,
/// like a simple BEGIN: a transaction on another shard than the first needs no two-phase
/// commit (pgbench -M extended and -M prepared send each command as a Bind batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_begin_waits_for_the_first_statement() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let _c = loaded(&p).await;
    let key = (1..240).find(|k| owner(*k) == 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("txn.sql");
    std::fs::write(
        &script,
        format!(
            "BEGIN;\nSELECT abalance FROM accounts WHERE aid = {key};\n\
             UPDATE accounts SET abalance = abalance WHERE aid = {key};\nEND;\n"
        ),
    )
    .unwrap();
    let url = p.url("app", "app", "app");
    for mode in ["extended", "prepared"] {
        let script = script.to_str().unwrap();
        let (ok, out) = integration_tests::pgbench(
            &url,
            &["-n", "-M", mode, "-c", "2", "-t", "20", "-f", script],
        );
        assert!(ok && !out.contains("aborted"), "{mode}:\n{out}");
        assert_eq!(
            integration_tests::pgbench_number(&out, "number of failed transactions:").unwrap_or(0),
            0,
            "{out}"
        );
    }
}

/// Every row of `placed` on every shard: (shard, key, value); checks that each sits on its
/// owner and returns the keys.
async fn placed_rows() -> Vec<i64> {
    let mut keys = Vec::new();
    for (i, cl) in shards().clusters.iter().enumerate() {
        let d = direct(cl, "app").await;
        for r in rows(&d, "SELECT k, v FROM placed").await.unwrap() {
            let k: i64 = r[0].parse().unwrap();
            assert_eq!(owner(k), i, "key {k} ({}) sits on shard {i}", r[1]);
            keys.push(k);
        }
    }
    keys.sort_unstable();
    keys
}

/// Placement for every load path, each repeated on one connection: single- and multi-row
/// INSERTs with literals (compact and spaced lists, negative keys), bind parameters
/// (unnamed statements, a prepared statement reused, pipelined), COPY text and CSV. Every
/// row must sit on its owner shard, checked on the shards themselves, and every command tag
/// must count the rows once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_load_path_places_every_row_on_its_owner() {
    let _serial = SERIAL.lock().await;
    let p = proxy();
    let c = p.app("app").await;
    c.simple_query("DROP TABLE IF EXISTS placed").await.unwrap();
    c.simple_query("CREATE TABLE placed (k bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut want: Vec<i64> = Vec::new();
    let mut next = 1i64;
    let mut take = |n: usize| -> Vec<i64> {
        let v: Vec<i64> = (next..next + n as i64)
            .map(|k| if k % 5 == 0 { -k } else { k })
            .collect();
        next += n as i64;
        v
    };
    let tag = |m: &[SimpleQueryMessage]| -> u64 {
        m.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap()
    };
    let prepared_one = c
        .prepare("INSERT INTO placed (k, v) VALUES ($1, $2)")
        .await
        .unwrap();
    let multi_sql = {
        let rows: Vec<String> = (0..20)
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        format!("INSERT INTO placed (k, v) VALUES {}", rows.join(", "))
    };
    let prepared_multi = c.prepare(&multi_sql).await.unwrap();
    for run in 0..10 {
        // Simple protocol, literals: one row, then 20 in a compact and a spaced list.
        for k in take(2) {
            let m = c
                .simple_query(&format!("INSERT INTO placed (k,v) VALUES ({k},'lit{run}')"))
                .await
                .unwrap();
            assert_eq!(tag(&m), 1);
            want.push(k);
        }
        for sep in [",", ", "] {
            let keys = take(20);
            let list: Vec<String> = keys.iter().map(|k| format!("({k}{sep}'m{run}')")).collect();
            let m = c
                .simple_query(&format!(
                    "INSERT INTO placed (k,v) VALUES {}",
                    list.join(sep)
                ))
                .await
                .unwrap();
            assert_eq!(tag(&m), 20, "run {run}");
            want.extend(keys);
        }
        // Extended protocol: a fresh statement each time, the prepared one reused, single
        // and multi row.
        let keys = take(20);
        let vals: Vec<String> = keys.iter().map(|k| format!("x{run}_{k}")).collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for (k, v) in keys.iter().zip(&vals) {
            params.push(k);
            params.push(v);
        }
        assert_eq!(c.execute(multi_sql.as_str(), &params).await.unwrap(), 20);
        want.extend(&keys);
        let keys = take(20);
        let vals: Vec<String> = keys.iter().map(|k| format!("p{run}_{k}")).collect();
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        for (k, v) in keys.iter().zip(&vals) {
            params.push(k);
            params.push(v);
        }
        assert_eq!(c.execute(&prepared_multi, &params).await.unwrap(), 20);
        want.extend(&keys);
        // Unnamed statements, as psycopg sends them: Parse, Bind, Describe, Execute, Sync.
        let keys = take(20);
        let vals: Vec<String> = keys.iter().map(|k| format!("u{run}_{k}")).collect();
        let mut params: Vec<(
            &(dyn tokio_postgres::types::ToSql + Sync),
            tokio_postgres::types::Type,
        )> = Vec::new();
        for (k, v) in keys.iter().zip(&vals) {
            params.push((k, tokio_postgres::types::Type::INT8));
            params.push((v, tokio_postgres::types::Type::TEXT));
        }
        assert_eq!(
            c.execute_typed(&multi_sql, &params).await.unwrap(),
            20,
            "run {run}"
        );
        want.extend(&keys);
        for k in take(3) {
            let v = format!("one{run}");
            assert_eq!(c.execute(&prepared_one, &[&k, &v]).await.unwrap(), 1);
            want.push(k);
        }
        // Pipelined: several executions in flight on the one connection.
        let keys = take(6);
        let vals: Vec<String> = keys.iter().map(|k| format!("pipe{k}")).collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| [k as _, v as _])
            .collect();
        let futs = params.iter().map(|p| c.execute(&prepared_one, p));
        for n in futures_util::future::try_join_all(futs).await.unwrap() {
            assert_eq!(n, 1);
        }
        want.extend(&keys);
    }
    // COPY text and CSV, ten times each on one connection (psql: the simple protocol; COPY
    // on several shards through the extended protocol is refused with 0A000).
    let mut script = String::new();
    for run in 0..10 {
        for csv in [false, true] {
            let keys = take(15);
            if csv {
                script.push_str("COPY placed (k, v) FROM STDIN (FORMAT csv);\n");
            } else {
                script.push_str("COPY placed (k, v) FROM STDIN;\n");
            }
            for k in &keys {
                if csv {
                    script.push_str(&format!("{k},\"c,{run}\"\n"));
                } else {
                    script.push_str(&format!("{k}\tt{run}\n"));
                }
            }
            script.push_str("\\.\n");
            want.extend(keys);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.sql");
    std::fs::write(&file, script).unwrap();
    let out = std::process::Command::new(shards().clusters[0].bindir().join("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .arg(p.url("app", "app", "app"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("COPY 15").count(), 20, "{stdout}");
    want.sort_unstable();
    assert_eq!(placed_rows().await, want);
    // Deletes by compact key lists reach every listed row's shard.
    let a = 1_000_001i64;
    let b = (a + 1..).find(|k| owner(*k) != owner(a)).unwrap();
    c.simple_query(&format!(
        "INSERT INTO placed (k,v) VALUES ({a},'d'),({b},'d')"
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        c.simple_query(&format!(
            "INSERT INTO placed (k,v) VALUES ({a},'d'),({b},'d') ON CONFLICT DO NOTHING"
        ))
        .await
        .unwrap();
        let m = c
            .simple_query(&format!("DELETE FROM placed WHERE k IN ({a},{b})"))
            .await
            .unwrap();
        assert_eq!(tag(&m), 2, "DELETE IN ({a},{b})");
    }
    assert_eq!(placed_rows().await, want);
    // Typed literals, negative keys and multibyte text before the key, written and read.
    for (i, form) in [
        "'{k}'::bigint",
        "bigint '{k}'",
        "CAST('{k}' AS bigint)",
        "{k}",
    ]
    .iter()
    .enumerate()
    {
        for k in [3_000_000 + i as i64 * 7, -(3_000_100 + i as i64 * 7)] {
            let lit = form.replace("{k}", &k.to_string());
            let m = c
                .simple_query(&format!("INSERT INTO placed (v,k) VALUES ('éü{i}',{lit})"))
                .await
                .unwrap();
            assert_eq!(tag(&m), 1);
            want.push(k);
            let got = rows(
                &c,
                &format!("SELECT k FROM placed WHERE v='éü{i}' and k={lit}"),
            )
            .await
            .unwrap();
            assert_eq!(got, [[k.to_string()]], "{lit}");
        }
    }
    want.sort_unstable();
    assert_eq!(placed_rows().await, want);
    // A split INSERT that fails on one shard leaves no row on the others (simple and
    // extended protocol), and so does an UPDATE without a key that fails on one shard.
    let dup = want[0];
    let fresh: Vec<i64> = (2_000_000..)
        .filter(|k| owner(*k) != owner(dup))
        .take(2)
        .collect();
    let e = c
        .simple_query(&format!(
            "INSERT INTO placed (k,v) VALUES ({},'f'),({dup},'dup'),({},'f')",
            fresh[0], fresh[1]
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"));
    let e = c
        .execute(
            "INSERT INTO placed (k, v) VALUES ($1, 'f'), ($2, 'dup')",
            &[&fresh[0], &dup],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"));
    assert_eq!(placed_rows().await, want);
    let before = rows(&c, "SELECT count(*) FROM placed WHERE v = 'changed'")
        .await
        .unwrap();
    let e = c
        .simple_query(&format!(
            "UPDATE placed SET v = CASE WHEN k = {dup} THEN (1 / (k - {dup}))::text ELSE 'changed' END"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    assert_eq!(
        rows(&c, "SELECT count(*) FROM placed WHERE v = 'changed'")
            .await
            .unwrap(),
        before
    );
}

/// Observed bug 5: a Parse that arrives in one read and its Bind in the next was routed on
/// the Parse alone (to the first shard), with the Bind following it there. Each batch here is
/// written in two parts with a pause between them; every row must land on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_over_several_reads_is_routed_by_its_bind() {
    use integration_tests::raw;
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let _serial = SERIAL.lock().await;
    let text = shards().config.replacen(
        "password = \"app\"\n",
        "password = \"app\"\nauth_method = \"trust\"\n",
        1,
    );
    let p = Proxy::start(&text);
    let c = p.app("app").await;
    c.simple_query("DROP TABLE IF EXISTS placed").await.unwrap();
    c.simple_query("CREATE TABLE placed (k bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut s = raw::login_trust(p.port, "app", "app").await;
    let mut want = Vec::new();
    let multi = {
        let rows: Vec<String> = (0..20).map(|i| format!("(${}, 'split')", i + 1)).collect();
        format!("INSERT INTO placed (k, v) VALUES {}", rows.join(", "))
    };
    for run in 0..6i64 {
        // A 20-row INSERT (keys on every shard), then a single-row one.
        let batches: Vec<(String, Vec<i64>)> = vec![
            (multi.clone(), (0..20).map(|i| run * 100 + i + 1).collect()),
            (
                "INSERT INTO placed (k, v) VALUES ($1, 'one')".into(),
                vec![run * 100 + 50],
            ),
        ];
        for (sql, keys) in batches {
            let mut parse = bytes::BytesMut::new();
            frontend::parse("", &sql, std::iter::empty(), &mut parse).unwrap();
            s.write_all(&parse).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let mut rest = bytes::BytesMut::new();
            let texts: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            frontend::bind(
                "",
                "",
                std::iter::empty::<i16>(),
                texts.iter(),
                |t, buf| {
                    buf.extend_from_slice(t.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                },
                std::iter::empty::<i16>(),
                &mut rest,
            )
            .map_err(|_| ())
            .unwrap();
            frontend::execute("", 0, &mut rest).unwrap();
            frontend::sync(&mut rest);
            s.write_all(&rest).await.unwrap();
            let msgs = raw::read_until(&mut s, b"Z").await;
            assert_eq!(raw::error_code(&msgs), None, "{sql}: {msgs:?}");
            want.extend(keys);
        }
    }
    want.sort_unstable();
    assert_eq!(placed_rows().await, want);
}
