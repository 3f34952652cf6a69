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

fn owner(m: &ShardMap, k: i64) -> ShardId {
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
    let mut want: Vec<ShardId> = keys.iter().map(|k| owner(&m, *k)).collect();
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
    assert_eq!(
        route(&m, "SELECT * FROM settings").unwrap(),
        Route::One(ShardId::new(0))
    );
    assert_eq!(
        route(&m, "SELECT * FROM countries").unwrap(),
        Route::One(ShardId::new(0))
    );
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
    // Options the row splitter does not follow would cut or key rows wrongly: refused.
    let r = route(&m, "COPY accounts FROM STDIN WITH (FORMAT csv, QUOTE '''')");
    assert_eq!(code(r), "0A000");
    assert_eq!(
        code(route(&m, "COPY accounts FROM STDIN NULL AS 'x'")),
        "0A000"
    );
    // Not on a table that is not split.
    assert!(route(&m, "COPY other FROM STDIN NULL AS 'x'").is_ok());
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

/// Routes through a shared shape cache, as sessions do: the facts of the first statement of
/// a shape serve every later one.
fn route_cached(c: &crate::sql::AnalysisCache, m: &ShardMap, sql: &str) -> Result<Route, PgError> {
    let (a, literals) = c.analyze(sql);
    m.route(a.shard.as_deref().unwrap(), &a.tables, &literals, None)
}

fn owners(m: &ShardMap, keys: &[i64]) -> Route {
    let set: BTreeSet<ShardId> = keys.iter().map(|k| owner(m, *k)).collect();
    match set.len() {
        1 => Route::One(*set.iter().next().unwrap()),
        _ => Route::Many(set.into_iter().collect()),
    }
}

/// Two keys on different shards, and a third on yet another one where there is one.
fn spread_keys(m: &ShardMap) -> (i64, i64, i64) {
    let a = 1;
    let b = (2..).find(|k| owner(m, *k) != owner(m, a)).unwrap();
    let c = (2..)
        .find(|k| owner(m, *k) != owner(m, a) && owner(m, *k) != owner(m, b))
        .unwrap();
    (a, b, c)
}

/// Statements whose keys sit in every literal position the issue names (compact lists,
/// negative numbers, typed literals, unicode before the key), with the keys each needs.
fn exact_cases(a: i64, b: i64, c: i64, na: i64) -> Vec<(String, Vec<i64>)> {
    vec![
        (
            format!("DELETE FROM accounts WHERE aid IN ({a},{b})"),
            vec![a, b],
        ),
        (
            format!("DELETE FROM accounts WHERE aid IN({a},{b},{c})"),
            vec![a, b, c],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid IN ({b},{a})"),
            vec![a, b],
        ),
        (format!("SELECT * FROM accounts WHERE aid = -{b}"), vec![-b]),
        (format!("SELECT * FROM accounts WHERE aid=-{b}"), vec![-b]),
        (
            format!("SELECT * FROM accounts WHERE aid IN (-{b},{na})"),
            vec![-b, na],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid IN (-{b},-{c})"),
            vec![-b, -c],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid = '{b}'::bigint"),
            vec![b],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid = bigint '{b}'"),
            vec![b],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid = CAST('{b}' AS bigint)"),
            vec![b],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid IN ('{a}'::bigint,'{b}'::int8)"),
            vec![a, b],
        ),
        (
            format!("SELECT * FROM accounts WHERE bid='é' and aid={b}"),
            vec![b],
        ),
        (
            format!("SELECT * FROM accounts WHERE bid='ééééé' AND aid IN ({a},{b})"),
            vec![a, b],
        ),
        (
            format!("SELECT 'Ünïcödé',1,2 FROM accounts WHERE aid={c}"),
            vec![c],
        ),
        (
            format!("UPDATE accounts SET abalance=1 WHERE aid IN ({a},{c})"),
            vec![a, c],
        ),
        (
            format!("INSERT INTO accounts (aid,bid) VALUES ({a},1),({b},2)"),
            vec![a, b],
        ),
        (
            format!("INSERT INTO accounts (aid,bid) VALUES (-{b},'é'),({c},2)"),
            vec![-b, c],
        ),
    ]
}

#[test]
fn literal_positions_are_exact() {
    let m = map();
    let (a, b, c) = spread_keys(&m);
    let na = (-1000..0).find(|k| owner(&m, *k) != owner(&m, -b)).unwrap();
    let cases = exact_cases(a, b, c, na);
    // Every case twice through one cache (the second time a cache hit), and once more
    // with other literal widths of the same shape (`aid=1` then `aid=123456789`).
    let cache = crate::sql::AnalysisCache::new(100, Vec::new());
    for (sql, keys) in &cases {
        for _ in 0..2 {
            assert_eq!(
                route_cached(&cache, &m, sql).unwrap(),
                owners(&m, keys),
                "{sql}"
            );
        }
    }
    let wide = |k: i64| k * 1_000_003 + 123_456_789;
    let (wa, wb, wc) = (wide(a), wide(b), wide(c));
    for (sql, keys) in [
        (
            format!("DELETE FROM accounts WHERE aid IN ({wa},{wb})"),
            vec![wa, wb],
        ),
        (
            format!("DELETE FROM accounts WHERE aid IN({wa},{wb},{wc})"),
            vec![wa, wb, wc],
        ),
        (
            format!("SELECT * FROM accounts WHERE aid IN (-{wb},-{wc})"),
            vec![-wb, -wc],
        ),
        (
            format!("SELECT * FROM accounts WHERE bid='ééééé' AND aid IN ({wc},{wb})"),
            vec![wb, wc],
        ),
        (
            format!("INSERT INTO accounts (aid,bid) VALUES ({wa},1),({wb},2)"),
            vec![wa, wb],
        ),
    ] {
        assert_eq!(
            route_cached(&cache, &m, &sql).unwrap(),
            owners(&m, &keys),
            "{sql}"
        );
    }
}

#[test]
fn casts_that_may_change_the_value_are_not_evaluated() {
    let m = map();
    // A cast that may change the value is not evaluated: every shard answers.
    assert_eq!(
        route(&m, "SELECT * FROM accounts WHERE aid = 4.6::int").unwrap(),
        Route::All
    );
    assert_eq!(
        route(&m, "SELECT * FROM users WHERE name = 'abc'::char(2)").unwrap(),
        Route::All
    );
    // A constant that is not a canonical key is not an error Postgres would not give.
    assert_eq!(
        route(&m, "SELECT * FROM accounts WHERE aid = 1.0").unwrap(),
        Route::All
    );
}

#[test]
fn queries_combining_rows_of_several_shards_are_refused() {
    let m = map();
    let (a, b, _) = spread_keys(&m);
    for sql in [
        "SELECT * FROM accounts WHERE abalance > (SELECT avg(abalance) FROM accounts)".to_string(),
        format!("SELECT * FROM accounts WHERE aid = {a} AND abalance > (SELECT avg(abalance) FROM accounts)"),
        "SELECT * FROM accounts WHERE bid IN (SELECT bid FROM accounts WHERE abalance > 0)".into(),
        "SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM history h WHERE h.delta = a.bid)".into(),
        "SELECT count(*) FROM (SELECT bid FROM accounts GROUP BY bid) s".into(),
        "SELECT count(*) FROM accounts a JOIN accounts b ON a.bid = b.bid".into(),
        format!("SELECT count(*) FROM accounts a JOIN accounts b ON a.bid = b.bid WHERE a.aid = {a}"),
        "SELECT aid, row_number() OVER (ORDER BY aid) FROM accounts".into(),
        "SELECT aid FROM accounts ORDER BY rank() OVER (ORDER BY bid)".into(),
        "WITH x AS (SELECT * FROM accounts) SELECT count(*) FROM x".into(),
        "SELECT aid FROM accounts UNION SELECT aid FROM history".into(),
        format!("SELECT aid FROM accounts WHERE aid = {a} UNION SELECT aid FROM accounts WHERE aid = {b}"),
        format!("SELECT aid FROM accounts WHERE aid = {a} INTERSECT SELECT aid FROM accounts"),
        "SELECT * FROM accounts JOIN branches USING (bid)".into(),
        "SELECT * FROM countries c LEFT JOIN accounts a ON a.bid = c.id".into(),
        format!("UPDATE accounts SET abalance = (SELECT max(abalance) FROM accounts) WHERE aid = {a}"),
        format!("INSERT INTO accounts (aid, bid) VALUES ({a}, (SELECT max(bid) FROM accounts))"),
        "INSERT INTO countries SELECT aid FROM accounts".into(),
        "UPDATE countries SET n = (SELECT count(*) FROM branches)".into(),
    ] {
        let r = route(&m, &sql);
        assert!(r.is_err(), "{sql}: {r:?}");
        let e = r.unwrap_err();
        assert_eq!(e.code, "0A000", "{sql}: {e:?}");
        assert!(e.hint.is_some(), "{sql}");
    }
    // Pinned to one shard by the key everywhere: runs there.
    let one = Route::One(owner(&m, a));
    for sql in [
        format!("SELECT * FROM accounts WHERE aid = {a} AND abalance > (SELECT avg(abalance) FROM accounts WHERE aid = {a})"),
        format!("SELECT aid FROM accounts WHERE aid = {a} UNION ALL SELECT aid FROM history WHERE aid = {a}"),
        format!("SELECT count(*) FROM accounts a JOIN accounts b ON a.aid = b.aid WHERE a.aid = {a}"),
        format!("SELECT aid, row_number() OVER () FROM accounts WHERE aid = {a}"),
        format!("WITH x AS (SELECT * FROM accounts WHERE aid = {a}) SELECT count(*) FROM x"),
        format!("SELECT * FROM accounts WHERE aid = {a} AND bid IN (SELECT id FROM countries)"),
    ] {
        assert_eq!(route(&m, &sql).map_err(|e| format!("{sql}: {e:?}")), Ok(one.clone()));
    }
    // Exact per shard: co-located joins, replicated tables in inner joins and subqueries.
    for sql in [
        "SELECT count(*) FROM accounts a JOIN history h ON a.aid = h.aid",
        "SELECT count(*) FROM accounts a JOIN countries c ON a.bid = c.id",
        "SELECT count(*) FROM accounts WHERE bid IN (SELECT id FROM countries)",
    ] {
        assert_eq!(route(&m, sql).unwrap(), Route::All, "{sql}");
    }
}
