//! Router tests: statements analysed for real, routed over a 3-shard map; expected shards are
//! computed with the ring itself (the ring's own golden tests pin its assignments).

use super::*;
use crate::config::Config;
use crate::sql::{classify, shape};

fn map() -> ShardMap {
    let c = Config::parse(
        r#"
[[users]]
name = "u"
password = "p"
[[databases]]
name = "d"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:1"
[[databases.shards]]
name = "s1"
primary = "127.0.0.1:2"
[[databases.shards]]
name = "s2"
primary = "127.0.0.1:3"
[[databases.sharded_tables]]
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
"#,
        "test",
    )
    .unwrap();
    let mut db = c.databases[0].clone();
    db.replicated_tables = vec!["countries".into()];
    ShardMap::new(&db).unwrap()
}

fn route(m: &ShardMap, sql: &str) -> Result<Route, PgError> {
    route_with(m, sql, None)
}

fn route_with(m: &ShardMap, sql: &str, params: Option<&Params<'_>>) -> Result<Route, PgError> {
    let a = classify(sql, &[]);
    let s = shape(sql);
    m.route(a.shard.as_deref().unwrap(), &a.tables, &s.literals, params)
}

fn owner(m: &ShardMap, k: i64) -> usize {
    m.shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
        .unwrap()
}

fn code(r: Result<Route, PgError>) -> String {
    r.unwrap_err().code.to_string()
}

#[test]
fn point_queries_go_to_the_owner() {
    let m = map();
    for k in [1i64, 2, 42, -7, 1_000_000] {
        let want = Route::One(owner(&m, k));
        assert_eq!(
            route(&m, &format!("SELECT * FROM accounts WHERE aid = {k}")).unwrap(),
            want
        );
        assert_eq!(
            route(
                &m,
                &format!("UPDATE accounts SET abalance = 1 WHERE aid = {k} AND bid = 3")
            )
            .unwrap(),
            want
        );
        assert_eq!(
            route(&m, &format!("DELETE FROM accounts WHERE {k} = aid")).unwrap(),
            want
        );
    }
    let t = m.shard_of_text(KeyType::Text, b"alice").unwrap();
    assert_eq!(
        route(&m, "SELECT * FROM users WHERE name = 'alice'").unwrap(),
        Route::One(t)
    );
}

#[test]
fn parameters_text_and_binary_agree_with_literals() {
    let m = map();
    let want = Route::One(owner(&m, 42));
    let text = Params {
        formats: vec![0],
        values: vec![Some(b"42")],
        types: vec![],
    };
    let bin = 42i64.to_be_bytes();
    let binary = Params {
        formats: vec![1],
        values: vec![Some(&bin)],
        types: vec![20],
    };
    // A text-typed parameter sent in binary carries the key as text.
    let typed_text = Params {
        formats: vec![1],
        values: vec![Some(b"42")],
        types: vec![25],
    };
    assert_eq!(
        route_with(
            &m,
            "SELECT * FROM accounts WHERE aid = $1",
            Some(&typed_text)
        )
        .unwrap(),
        Route::One(owner(&m, 42))
    );
    let sql = "SELECT * FROM accounts WHERE aid = $1";
    assert_eq!(route_with(&m, sql, Some(&text)).unwrap(), want);
    assert_eq!(route_with(&m, sql, Some(&binary)).unwrap(), want);
    assert_eq!(route(&m, sql).unwrap(), Route::All, "no value: every shard");
}

#[test]
fn in_lists_go_to_the_owning_shards_only() {
    let m = map();
    let keys = [1i64, 2, 3, 4, 5, 6, 7, 8];
    let mut want: Vec<usize> = keys.iter().map(|k| owner(&m, *k)).collect();
    want.sort();
    want.dedup();
    let sql = "SELECT * FROM accounts WHERE aid IN (1, 2, 3, 4, 5, 6, 7, 8)";
    let got = route(&m, sql).unwrap();
    if want.len() == 1 {
        assert_eq!(got, Route::One(want[0]));
    } else {
        assert_eq!(got, Route::Many(want));
    }
}

#[test]
fn no_key_fans_out_or_is_refused() {
    let m = map();
    assert_eq!(
        route(&m, "SELECT count(*) FROM accounts").unwrap(),
        Route::All
    );
    assert_eq!(
        route(&m, "SELECT * FROM accounts WHERE aid > 5").unwrap(),
        Route::All
    );
    assert_eq!(
        route(&m, "UPDATE accounts SET abalance = 0").unwrap(),
        Route::All
    );
    assert_eq!(
        code(route(&m, "UPDATE accounts SET aid = 5 WHERE aid = 4")),
        "0A000"
    );
    let mut strict = map();
    strict.allow_fan_out_writes = false;
    assert_eq!(code(route(&strict, "DELETE FROM accounts")), "0A000");
}

#[test]
fn joins_must_be_on_the_key() {
    let m = map();
    let k = owner(&m, 9);
    assert_eq!(
        route(
            &m,
            "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid WHERE a.aid = 9"
        )
        .unwrap(),
        Route::One(k)
    );
    assert_eq!(
        route(
            &m,
            "SELECT * FROM accounts a JOIN history h ON h.aid = a.aid"
        )
        .unwrap(),
        Route::All,
        "co-located join: each shard joins its own rows"
    );
    assert_eq!(
        code(route(
            &m,
            "SELECT * FROM accounts a JOIN users u ON u.name = a.owner"
        )),
        "0A000"
    );
}

#[test]
fn inserts_split_by_row() {
    let m = map();
    assert_eq!(
        route(&m, "INSERT INTO accounts (aid, bid) VALUES (42, 1)").unwrap(),
        Route::One(owner(&m, 42))
    );
    let sql = "INSERT INTO accounts (aid, bid) VALUES (1, 1), (2, 1), (3, 1), (4, 1), (5, 1)";
    let a = classify(sql, &[]);
    let s = shape(sql);
    let rows = m
        .insert_row_shards(a.shard.as_deref().unwrap(), &s.literals, None)
        .unwrap();
    assert_eq!(rows, (1..=5).map(|k| owner(&m, k)).collect::<Vec<_>>());
    assert_eq!(
        code(route(&m, "INSERT INTO accounts VALUES (1, 2)")),
        "0A000"
    );
    assert_eq!(
        code(route(&m, "INSERT INTO accounts (aid) SELECT 1")),
        "0A000"
    );
    assert_eq!(
        route(&m, "INSERT INTO accounts (aid, bid) VALUES ('abc', 1)")
            .unwrap_err()
            .code,
        "22P02"
    );
}

#[test]
fn unsharded_replicated_and_ddl() {
    let m = map();
    assert_eq!(route(&m, "SELECT * FROM settings").unwrap(), Route::One(0));
    assert_eq!(route(&m, "SELECT * FROM countries").unwrap(), Route::One(0));
    assert_eq!(
        route(&m, "INSERT INTO countries (c) VALUES ('x')").unwrap(),
        Route::All
    );
    assert_eq!(
        route(&m, "CREATE TABLE accounts (aid bigint)").unwrap(),
        Route::All
    );
    assert_eq!(route(&m, "SET search_path = x").unwrap(), Route::Any);
    assert_eq!(route(&m, "COPY accounts FROM STDIN").unwrap(), Route::All);
}

#[test]
fn bind_params_decode() {
    // Bind: portal "", statement "s", 1 format (binary), 2 params (8 bytes, NULL), 0 results.
    let mut b = b"\0s\0".to_vec();
    b.extend(1i16.to_be_bytes());
    b.extend(1i16.to_be_bytes());
    b.extend(2i16.to_be_bytes());
    b.extend(8i32.to_be_bytes());
    b.extend(7i64.to_be_bytes());
    b.extend((-1i32).to_be_bytes());
    b.extend(0i16.to_be_bytes());
    let p = Params::from_bind(&b).unwrap();
    assert_eq!(p.values.len(), 2);
    assert_eq!(p.format(0), 1);
    assert_eq!(p.format(1), 1);
    assert_eq!(p.values[1], None);
    assert!(Params::from_bind(&b[..b.len() - 12]).is_none());
}
