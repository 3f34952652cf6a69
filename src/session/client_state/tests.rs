//! Unit tests of the client-state helpers (settings SQL, settings effects).

use super::*;

#[test]
fn settings_effect_is_opaque_for_what_it_cannot_see() {
    let opaque = |s: &str| settings_effect(s).opaque;
    for s in [
        "select set_config(lower($1), $2, false)",
        "do $$ begin perform set_config('search_path', 'x', false); end $$",
        "DO LANGUAGE plpgsql 'begin null; end'",
        "call my_proc()",
        "select my_fn()",
        "select public.lower('a')",
        "select \"my fn\"()",
        "select * from t where a = f(1)",
        "select set_config(name, 'x', false) from t",
        "select 1; select ss_set()",
        "with x as (select g()) select * from x",
        "select count(*) from t join lateral myfn(t.a) on true",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        assert!(opaque(s), "{s}");
    }
    for s in [
        "select 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "select pg_backend_pid(), $1::int4 + 1",
        "select count(*), max(a), now() from t where b in (1, 2) and exists (select 1)",
        "select set_config('search_path', 'x', false)",
        "select 'my_fn()' as text, $q$ f() $q$, e'\\' g()', \"col\" from t -- h()",
        "select /* f() /* nested */ g() */ 1",
        "insert into t (a, b) values (1, 2)",
        "select a::numeric(10, 2) from t",
        "create table t (a int, b varchar(10))",
        "create index on t (a)",
        "select pg_catalog.lower('A')",
        "select * from t for update",
        "",
        "select 'unterminated",
    ] {
        assert!(!opaque(s), "{s}");
    }
    assert!(!opaque("select set_config($1, $2, false)"));
    assert_eq!(
        settings_effect("select set_config($2, $1, false), set_config($3, 'a', true)").name_params,
        vec![2, 3]
    );
    let w = |s: &str| settings_effect(s).writes;
    assert!(w("insert into t values (1)"));
    assert!(w("with x as (delete from t returning *) select * from x"));
    assert!(w("UPDATE t SET a = 1"));
    assert!(!w("select * from t for update"));
    assert!(!w("select * from t for no key update"));
    let ddl = |s: &str| settings_effect(s).ddl;
    assert!(
        ddl("drop type t") && ddl("CREATE TYPE t AS (a int)") && ddl("alter table t add b int")
    );
    assert!(ddl("do $$ begin end $$"));
    assert!(!ddl("select 1"));
    // no panic on odd input
    for s in [
        "$", "$1", "$a", "$a$", "e'", "u&'x'", "/*", "--", "\"", "é(", "f(", "((",
    ] {
        let _ = settings_effect(s);
    }
}

#[test]
fn read_back_of_all_settings() {
    let names = ["myapp.tenant".to_string(), "search_path".to_string()];
    let refs: Vec<&String> = names.iter().collect();
    let sql = read_all_settings_sql(&refs);
    assert!(sql.contains("source = 'session'"));
    assert!(sql.contains("current_setting($sg$myapp.tenant$sg$, true)"));
    assert!(!sql.contains("$sg$search_path$sg$"));
    assert!(sql.ends_with("RESET ALL; RESET ROLE"));
    let rows = vec![
        vec!["search_path".to_string(), "x".to_string()],
        vec!["role".to_string(), "none".to_string()],
        vec!["myapp.tenant".to_string(), String::new()],
        vec!["myapp.other".to_string(), "7".to_string()],
        vec!["bad name;".to_string(), "1".to_string()],
    ];
    let s = settings_from_rows(rows);
    assert_eq!(s.len(), 2);
    assert_eq!(s["search_path"], "x");
    assert_eq!(s["myapp.other"], "7");
}

#[test]
fn startup_settings_include_options() {
    let mut p = BTreeMap::new();
    p.insert("user".to_string(), "app".to_string());
    p.insert("application_name".to_string(), "psql".to_string());
    p.insert("DateStyle".to_string(), "ISO".to_string());
    p.insert(
        "options".to_string(),
        "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=with\\ space".to_string(),
    );
    let s = ClientState::from_startup(&p);
    assert_eq!(s.settings["application_name"], "psql");
    assert_eq!(s.settings["datestyle"], "ISO");
    assert_eq!(s.settings["search_path"], "a,b");
    assert_eq!(s.settings["statement_timeout"], "5s");
    assert_eq!(s.settings["work_mem"], "4MB");
    assert_eq!(s.settings["x"], "with space");
    assert!(!s.settings.contains_key("user"));
}

#[test]
fn apply_sql_sets_differences_and_resets_leftovers() {
    let mut client = BTreeMap::new();
    client.insert("search_path".to_string(), "a".to_string());
    client.insert("timezone".to_string(), "UTC".to_string());
    let mut conn = BTreeMap::new();
    conn.insert("timezone".to_string(), "UTC".to_string());
    conn.insert("statement_timeout".to_string(), "1s".to_string());
    assert_eq!(
        apply_sql(&client, &conn).unwrap(),
        "SELECT set_config($sg$search_path$sg$, $sg$a$sg$, false);RESET statement_timeout;"
    );
    conn.insert("search_path".to_string(), "b".to_string());
    assert_eq!(
        apply_sql(&client, &conn).unwrap(),
        "RESET search_path;SELECT set_config($sg$search_path$sg$, $sg$a$sg$, false);\
         RESET statement_timeout;"
    );
    assert_eq!(apply_sql(&client, &client), None);
}
