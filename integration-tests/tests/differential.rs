//! Randomized differential test: seeded SQL over a sharded schema, run through Shardgate over
//! three shards and against one plain Postgres database holding all the data. Every answer
//! must be identical (rows, command tags, SQLSTATEs), or the proxy refuses with 0A000;
//! anything else fails with the seed, the statement number and the SQL printed.
//!
//! Schema: `t` sharded by `k` (bigint), `t2` co-located with it (sharded by `k` too), `r`
//! replicated, `u` unsharded (on the first shard). Statements: point, IN (compact, spaced,
//! negative), ranges, aggregates, GROUP BY / HAVING, ORDER BY / LIMIT / OFFSET, DISTINCT,
//! joins on and off the key, joins with the replicated and the unsharded table, subqueries
//! of every kind, window functions, set operations, CTEs, and writes (point, IN lists,
//! without key, multi-row INSERTs, replicated and unsharded tables) followed by reads.
//!
//! Comparison: rows as text; results without a top-level ORDER BY as multisets; ordered
//! results whose ORDER BY is total (the generator always ends it with the unique key)
//! exactly. No floating-point columns are generated, so no tolerance is needed (`avg` of
//! integers is numeric: exact).
//!
//! Runs: a fixed seed plus one chosen per run (printed), `SHARDGATE_DIFF_COUNT` statements
//! each (default 600, so CI runs 1,200). `SHARDGATE_DIFF_SEED=n` replays seed `n` instead of
//! a new one; a long run: `SHARDGATE_DIFF_COUNT=100000 cargo test -p integration-tests --test
//! differential -- --nocapture`.

use std::collections::HashMap;
use std::fmt::Write as _;

use integration_tests::{connect, stop_at_exit, Proxy};
use testkit::{ClusterOptions, PasswordMethod, PgCluster};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The fixed seed CI always runs.
const FIXED_SEED: u64 = 20261201;

/// splitmix64: small, seedable, reproducible everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

/// One generated statement: its SQL and whether its rows come in a total order.
struct Stmt {
    sql: String,
    ordered: bool,
    write: bool,
}

/// A key: mostly existing ones (1..=200), sometimes negative or missing ones.
fn key(r: &mut Rng) -> i64 {
    match r.below(10) {
        0 => -r.range(1, 50),
        1 => r.range(201, 400),
        _ => r.range(1, 200),
    }
}

fn key_list(r: &mut Rng) -> String {
    let n = r.range(1, 6);
    let sep = if r.chance(50) { "," } else { ", " };
    (0..n)
        .map(|_| key(r).to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// A filter on `t` (alias `a`): by key, key list, range, or none.
fn filter(r: &mut Rng, alias: &str) -> String {
    match r.below(6) {
        0 => format!(" WHERE {alias}k = {}", key(r)),
        1 => format!(" WHERE {alias}k IN ({})", key_list(r)),
        2 => {
            let lo = r.range(-10, 190);
            format!(" WHERE {alias}k BETWEEN {lo} AND {}", lo + r.range(0, 30))
        }
        3 => format!(" WHERE {alias}g = {}", r.range(0, 7)),
        4 => format!(
            " WHERE {alias}v > {} AND {alias}k > {}",
            r.range(-50, 50),
            r.range(0, 150)
        ),
        _ => String::new(),
    }
}

fn generate(r: &mut Rng, next_key: &mut i64) -> Stmt {
    let read = |sql: String, ordered: bool| Stmt {
        sql,
        ordered,
        write: false,
    };
    let write = |sql: String| Stmt {
        sql,
        ordered: false,
        write: true,
    };
    match r.below(30) {
        0 => read(format!("SELECT k, g, v, s FROM t WHERE k = {}", key(r)), false),
        1 => read(format!("SELECT k,v FROM t WHERE k IN ({})", key_list(r)), false),
        2 => read(
            format!("SELECT k, v, s FROM t{} ORDER BY k", filter(r, "")),
            true,
        ),
        3 => read(
            format!(
                "SELECT count(*), sum(v), min(v), max(v), avg(v), count(v) FROM t{}",
                filter(r, "")
            ),
            false,
        ),
        4 => {
            let having = if r.chance(40) {
                format!(" HAVING count(*) > {}", r.range(0, 30))
            } else {
                String::new()
            };
            let order = r.chance(50);
            read(
                format!(
                    "SELECT g, count(*), sum(v), max(s) FROM t{} GROUP BY g{having}{}",
                    filter(r, ""),
                    if order { " ORDER BY g" } else { "" }
                ),
                order,
            )
        }
        5 => {
            let dir = r.pick(&["", " DESC", " ASC NULLS FIRST", " DESC NULLS LAST"]);
            let offset = if r.chance(50) {
                format!(" OFFSET {}", r.range(0, 20))
            } else {
                String::new()
            };
            read(
                format!(
                    "SELECT k, v FROM t{} ORDER BY v{dir}, k LIMIT {}{offset}",
                    filter(r, ""),
                    r.range(0, 25)
                ),
                true,
            )
        }
        6 => {
            let order = r.chance(50);
            read(
                format!(
                    "SELECT DISTINCT g, s FROM t{}{}",
                    filter(r, ""),
                    if order { " ORDER BY g, s" } else { "" }
                ),
                order,
            )
        }
        7 => read(
            format!(
                "SELECT a.k, b.w, b.id FROM t a JOIN t2 b ON a.k = b.k{} ORDER BY b.id",
                filter(r, "a.")
            ),
            true,
        ),
        8 => read(
            format!(
                "SELECT count(*), sum(b.w) FROM t a LEFT JOIN t2 b ON b.k = a.k{}",
                filter(r, "a.")
            ),
            false,
        ),
        9 => read(
            format!(
                "SELECT count(*) FROM t a JOIN t b ON a.g = b.g{}",
                filter(r, "a.")
            ),
            false,
        ),
        10 => read(
            format!(
                "SELECT a.k, c.name FROM t a JOIN r c ON a.g = c.id{}",
                filter(r, "a.")
            ),
            false,
        ),
        11 => read(
            format!(
                "SELECT a.k, x.label FROM t a JOIN u x ON a.g = x.id{}",
                filter(r, "a.")
            ),
            false,
        ),
        12 => read(
            format!(
                "SELECT k FROM t WHERE v > (SELECT avg(v) FROM t{}){}",
                filter(r, ""),
                if r.chance(50) {
                    format!(" AND k = {}", key(r))
                } else {
                    String::new()
                }
            ),
            false,
        ),
        13 => {
            let k = key(r);
            let inner = if r.chance(50) {
                format!(" AND k = {k}")
            } else {
                String::new()
            };
            read(
                format!(
                    "SELECT k, v FROM t WHERE k = {k} AND k IN (SELECT k FROM t2 WHERE w > {}{inner})",
                    r.range(-5, 5)
                ),
                false,
            )
        }
        14 => read(
            format!(
                "SELECT k FROM t a WHERE {}EXISTS (SELECT 1 FROM t2 b WHERE b.k = a.k AND b.w > {}){}",
                if r.chance(30) { "NOT " } else { "" },
                r.range(-5, 5),
                filter(r, "a.").replacen(" WHERE", " AND", 1)
            ),
            false,
        ),
        15 => read(
            format!(
                "SELECT s.g, s.n FROM (SELECT g, count(*) AS n FROM t{} GROUP BY g) s",
                filter(r, "")
            ),
            false,
        ),
        16 => read(
            format!(
                "SELECT k, row_number() OVER (ORDER BY k), sum(v) OVER (PARTITION BY g) FROM t{}",
                filter(r, "")
            ),
            false,
        ),
        17 => {
            let op = r.pick(&["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]);
            read(
                format!(
                    "SELECT k FROM t{} {op} SELECT k FROM t2{}",
                    filter(r, ""),
                    filter(r, "")
                ),
                false,
            )
        }
        18 => read(
            format!(
                "WITH x AS (SELECT k, v FROM t{}) SELECT count(*), sum(v) FROM x",
                filter(r, "")
            ),
            false,
        ),
        19 => read(
            format!("SELECT id, name FROM r WHERE id >= {}", r.range(0, 8)),
            false,
        ),
        20 => read(
            format!("SELECT id, label FROM u WHERE id <= {}", r.range(0, 8)),
            false,
        ),
        21 => write(format!(
            "UPDATE t SET v = v + {} WHERE k = {}",
            r.range(-3, 3),
            key(r)
        )),
        22 => write(format!(
            "UPDATE t SET s = 'w{}' WHERE k IN ({})",
            r.range(0, 9),
            key_list(r)
        )),
        23 => write(format!("DELETE FROM t WHERE k IN ({})", key_list(r))),
        24 => {
            let n = r.range(1, 8);
            let compact = r.chance(50);
            let rows: Vec<String> = (0..n)
                .map(|_| {
                    *next_key += 1;
                    let k = if r.chance(20) { -*next_key } else { *next_key };
                    if compact {
                        format!("({k},{},{},'n{}')", r.range(0, 7), r.range(-50, 50), k % 5)
                    } else {
                        format!("({k}, {}, {}, 'n{}')", r.range(0, 7), r.range(-50, 50), k % 5)
                    }
                })
                .collect();
            write(format!(
                "INSERT INTO t (k, g, v, s) VALUES {}",
                rows.join(if compact { "," } else { ", " })
            ))
        }
        25 => write(format!(
            "INSERT INTO t2 (id, k, w) VALUES ({}, {}, {})",
            r.range(1000, 1_000_000),
            key(r),
            r.range(-5, 5)
        )),
        26 => write(format!(
            "UPDATE t SET v = v - 1 WHERE g = {}",
            r.range(0, 7)
        )),
        27 => match r.below(3) {
            0 => write(format!(
                "INSERT INTO r (id, name) VALUES ({}, 'r{}')",
                r.range(100, 1_000_000),
                r.range(0, 9)
            )),
            1 => write(format!(
                "UPDATE r SET name = 'q{}' WHERE id = {}",
                r.range(0, 9),
                r.range(0, 9)
            )),
            _ => write(format!("DELETE FROM r WHERE id = {}", r.range(100, 200))),
        },
        28 => write(format!(
            "INSERT INTO u (id, label) VALUES ({}, 'l{}')",
            r.range(100, 1_000_000),
            r.range(0, 9)
        )),
        _ => read(
            format!(
                "SELECT k, v FROM t WHERE k = {} UNION ALL SELECT k, w FROM t2 WHERE k = {}",
                key(r),
                key(r)
            ),
            false,
        ),
    }
}

/// What a database answered: rows (as text) and command tags, or a SQLSTATE.
#[derive(Debug, PartialEq)]
enum Answer {
    Rows(Vec<Vec<String>>, Vec<u64>),
    Error(String, String),
}

async fn run(c: &Client, sql: &str) -> Answer {
    match c.simple_query(sql).await {
        Ok(msgs) => {
            let mut rows = Vec::new();
            let mut tags = Vec::new();
            for m in msgs {
                match m {
                    SimpleQueryMessage::Row(r) => rows.push(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect(),
                    ),
                    SimpleQueryMessage::CommandComplete(n) => tags.push(n),
                    _ => {}
                }
            }
            Answer::Rows(rows, tags)
        }
        Err(e) => match e.as_db_error() {
            Some(d) => Answer::Error(d.code().code().to_string(), d.message().to_string()),
            None => Answer::Error("connection".into(), e.to_string()),
        },
    }
}

struct Setup {
    shards: Vec<PgCluster>,
    config: String,
}

fn setup() -> &'static Setup {
    static S: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s = S.get_or_init(|| {
        let shards: Vec<PgCluster> = (0..3)
            .map(|_| {
                let c = PgCluster::start(ClusterOptions {
                    hba_method: "md5".into(),
                    ..ClusterOptions::default()
                })
                .expect("start shard");
                c.create_role("app", "app", PasswordMethod::Scram).unwrap();
                c.create_database("app", "app").unwrap();
                c
            })
            .collect();
        shards[0].create_database("plain", "app").unwrap();
        let mut config = String::from(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[pool]\nsize = 4\n[[users]]\nname = \"app\"\n\
             password = \"app\"\n[[databases]]\nname = \"app\"\nreplicated_tables = [\"r\"]\n",
        );
        for (i, c) in shards.iter().enumerate() {
            let _ = write!(
                config,
                "[[databases.shards]]\nname = \"s{i}\"\nprimary = \"{}\"\n",
                c.addr()
            );
        }
        config.push_str(
            "[[databases.sharded_tables]]\ntable = \"t\"\ncolumn = \"k\"\ntype = \"bigint\"\n\
             [[databases.sharded_tables]]\ntable = \"t2\"\ncolumn = \"k\"\ntype = \"bigint\"\n",
        );
        Setup { shards, config }
    });
    REGISTERED.call_once(|| s.shards.iter().for_each(stop_at_exit));
    s
}

const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS t, t2, r, u",
    "CREATE TABLE t (k bigint PRIMARY KEY, g int, v int, s text)",
    "CREATE TABLE t2 (id int, k bigint, w int)",
    "CREATE TABLE r (id int PRIMARY KEY, name text)",
    "CREATE TABLE u (id int PRIMARY KEY, label text)",
];

fn data() -> Vec<String> {
    let t: Vec<String> = (1..=200)
        .map(|k| {
            let v = if k % 13 == 0 {
                "NULL".to_string()
            } else {
                ((k * 37) % 101 - 50).to_string()
            };
            format!("({k}, {}, {v}, 's{}')", k % 7, k % 5)
        })
        .collect();
    let t2: Vec<String> = (1..=300)
        .map(|i| format!("({i}, {}, {})", (i * 7) % 230 + 1, i % 11 - 5))
        .collect();
    let r: Vec<String> = (0..10).map(|i| format!("({i}, 'r{i}')")).collect();
    let u: Vec<String> = (0..10).map(|i| format!("({i}, 'u{i}')")).collect();
    vec![
        format!("INSERT INTO t (k, g, v, s) VALUES {}", t.join(", ")),
        format!("INSERT INTO t2 (id, k, w) VALUES {}", t2.join(", ")),
        format!("INSERT INTO r (id, name) VALUES {}", r.join(", ")),
        format!("INSERT INTO u (id, label) VALUES {}", u.join(", ")),
    ]
}

fn sorted(a: &Answer) -> Answer {
    match a {
        Answer::Rows(r, t) => {
            let mut r = r.clone();
            r.sort();
            Answer::Rows(r, t.clone())
        }
        Answer::Error(c, m) => Answer::Error(c.clone(), m.clone()),
    }
}

/// Runs `count` statements of seed `seed`; returns (compared, refused per statement kind).
async fn run_seed(seed: u64, count: usize) -> (usize, HashMap<String, usize>) {
    let s = setup();
    let proxy = Proxy::start(&s.config);
    let via = proxy.app("app").await;
    let plain = connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=plain",
        s.shards[0].port()
    ))
    .await
    .unwrap();
    for stmt in SCHEMA.iter().map(|s| s.to_string()).chain(data()) {
        via.simple_query(&stmt).await.expect(&stmt);
        plain.simple_query(&stmt).await.expect(&stmt);
    }
    let mut rng = Rng(seed);
    let mut next_key = 10_000i64;
    let mut compared = 0;
    let mut refused: HashMap<String, usize> = HashMap::new();
    for n in 0..count {
        let stmt = generate(&mut rng, &mut next_key);
        let got = run(&via, &stmt.sql).await;
        if let Answer::Error(code, msg) = &got {
            if code == "0A000" {
                // Refused: the plain database must not apply a refused write either.
                let what = msg.split(" over ").next().unwrap_or(msg).to_string();
                *refused.entry(what).or_default() += 1;
                continue;
            }
        }
        let want = run(&plain, &stmt.sql).await;
        let same = match (&got, &want) {
            (Answer::Error(a, _), Answer::Error(b, _)) => a == b,
            _ if stmt.ordered => got == want,
            _ => sorted(&got) == sorted(&want),
        };
        assert!(
            same,
            "differential mismatch: seed {seed} statement {n}{}\n  SQL: {}\n  shardgate: {got:?}\n  postgres:  {want:?}\n\
             replay: SHARDGATE_DIFF_SEED={seed} SHARDGATE_DIFF_COUNT={} cargo test -p integration-tests --test differential",
            if stmt.write { " (a write)" } else { "" },
            stmt.sql,
            n + 1
        );
        compared += 1;
    }
    (compared, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgate_answers_like_one_database() {
    let count: usize = std::env::var("SHARDGATE_DIFF_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let chosen: u64 = std::env::var("SHARDGATE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let seeds = if std::env::var("SHARDGATE_DIFF_SEED").is_ok() {
        vec![chosen]
    } else {
        vec![FIXED_SEED, chosen]
    };
    for seed in seeds {
        println!("differential: seed {seed}, {count} statements");
        eprintln!("differential: seed {seed}, {count} statements");
        let (compared, refused) = run_seed(seed, count).await;
        let total_refused: usize = refused.values().sum();
        println!("differential: seed {seed}: {compared} identical, {total_refused} refused (0A000): {refused:?}");
        // The generator is meant to exercise merges, not only refusals.
        assert!(
            compared * 2 > count,
            "seed {seed}: only {compared} of {count} statements were compared"
        );
    }
}
