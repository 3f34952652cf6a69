//! Unit tests of the statement scanners.

use super::*;

#[test]
fn splits_on_top_level_semicolons_only() {
    let s = "select ';'; select \"a;b\" from t -- c;\n; select $$x;y$$; select $t$;$t$;/* ; */ select 1";
    assert_eq!(
        split_statements(s),
        vec![
            "select ';'",
            "select \"a;b\" from t -- c;",
            "select $$x;y$$",
            "select $t$;$t$",
            "/* ; */ select 1"
        ]
    );
    assert_eq!(
        split_statements("select $1; select 2"),
        vec!["select $1", "select 2"]
    );
    assert!(split_statements(" ; ;").is_empty());
}

#[test]
fn classifies_session_commands() {
    use SessionCommand::*;
    assert_eq!(
        session_command("SET search_path TO a, b"),
        Set("search_path".into())
    );
    assert_eq!(
        session_command("set statement_timeout=1000"),
        Set("statement_timeout".into())
    );
    assert_eq!(
        session_command("SET SESSION TimeZone = 'UTC'"),
        Set("timezone".into())
    );
    assert_eq!(
        session_command("set time zone 'UTC'"),
        Set("timezone".into())
    );
    assert_eq!(session_command("SET LOCAL search_path TO a"), None);
    assert_eq!(session_command("SET TRANSACTION READ ONLY"), None);
    assert_eq!(
        session_command("reset search_path"),
        Reset("search_path".into())
    );
    assert_eq!(session_command("RESET ALL"), ResetAll);
    assert_eq!(session_command("discard all"), DiscardAll);
    assert_eq!(session_command("DEALLOCATE ALL"), DeallocateAll);
    assert_eq!(
        session_command("deallocate prepare foo"),
        Deallocate("foo".into())
    );
    assert_eq!(
        session_command("PREPARE foo(int) AS select $1"),
        Prepare("foo".into())
    );
    assert_eq!(session_command("PREPARE TRANSACTION 'x'"), None);
    assert_eq!(session_command("execute foo(1)"), Execute("foo".into()));
    assert_eq!(session_command("LISTEN ch"), Pin("LISTEN"));
    assert_eq!(
        session_command("CREATE TYPE pg_temp.mood AS ENUM ('ok')"),
        Pin("temporary object")
    );
    assert_eq!(
        session_command("create domain PG_TEMP.d as int"),
        Pin("temporary object")
    );
    assert_eq!(
        session_command("SELECT 1 AS a INTO TEMP t"),
        Pin("SELECT INTO a temporary table")
    );
    assert_eq!(
        session_command("select * into/**/local temporary t from x"),
        Pin("SELECT INTO a temporary table")
    );
    assert_eq!(
        session_command("select * into t from x"),
        SessionCommand::None
    );
    assert_eq!(
        session_command("insert into temperature values (1)"),
        SessionCommand::None
    );
    assert_eq!(
        session_command("create temp table t (a int)"),
        Pin("CREATE TEMPORARY TABLE")
    );
    assert_eq!(
        session_command("select pg_advisory_lock(1)"),
        Pin("session advisory lock")
    );
    assert_eq!(session_command("select pg_advisory_xact_lock(1)"), None);
    assert_eq!(
        session_command("declare c cursor with hold for select 1"),
        Pin("cursor WITH HOLD")
    );
    assert_eq!(session_command("select 1"), None);
    assert_eq!(
        session_command("/* hi */ SET \"search_path\" = x"),
        Set("search_path".into())
    );
}

#[test]
fn finds_set_config_names() {
    assert_eq!(
        set_config_names("select set_config('search_path', 'x', false), SET_CONFIG ( 'Statement_Timeout','1s',true)"),
        vec!["search_path".to_string(), "statement_timeout".to_string()]
    );
    assert!(set_config_names("select set_config($1, $2, false)").is_empty());
    assert!(set_config_names("select 1").is_empty());
    assert!(is_pooled_statement_name("sg_12"));
    assert!(!is_pooled_statement_name("sg_"));
    assert!(!is_pooled_statement_name("sg_x1"));
}

#[test]
fn quoting() {
    assert_eq!(dollar_quote("a'b"), "$sg$a'b$sg$");
    assert_eq!(dollar_quote("x$sg$y"), "$sg1$x$sg$y$sg1$");
    assert_eq!(dollar_quote("$sg$$sg1$"), "$sg2$$sg$$sg1$$sg2$");
    assert!(is_setting_name("search_path"));
    assert!(is_setting_name("myapp.tenant"));
    assert!(!is_setting_name("a; drop table x"));
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

#[test]
fn regression_unterminated_quoted_identifier_ending_in_multibyte_char() {
    // Issue 9: this panicked (a slice not on a char boundary) and the panicking session
    // handed its open transaction to the next client.
    assert_eq!(session_command("SET \"é"), SessionCommand::Set("é".into()));
    assert_eq!(leading_words("SET \"é", 4), vec!["set", "é"]);
    assert_eq!(leading_words("\"a€", 4), vec!["a€"]);
    assert_eq!(split_statements("SET \"é"), vec!["SET \"é"]);
    assert_eq!(session_command("SET 'é"), SessionCommand::Set("'é".into()));
    assert_eq!(
        session_command("deallocate \"€"),
        SessionCommand::Deallocate("€".into())
    );
}

#[test]
fn regression_many_withs_do_not_recurse() {
    // `pin_reason` used to recurse once per `with`: a long enough query overflowed the
    // stack (an abort, not a catchable panic).
    let sql = "with ".repeat(200_000) + "hold";
    assert_eq!(pin_reason(&sql), Some("cursor WITH HOLD"));
    assert_eq!(pin_reason(&"with x ".repeat(200_000)), None);
}

#[test]
fn comments_stand_for_whitespace() {
    use SessionCommand::*;
    assert_eq!(
        session_command("SET/**/search_path=x"),
        Set("search_path".into())
    );
    assert_eq!(
        session_command("SET/* a */search_path/**/TO x"),
        Set("search_path".into())
    );
    assert_eq!(
        session_command("set--c\nsearch_path=x"),
        Set("search_path".into())
    );
    assert_eq!(
        session_command("PREPARE/**/name AS select 1"),
        Prepare("name".into())
    );
    assert_eq!(
        session_command("/**/EXECUTE/**/name"),
        Execute("name".into())
    );
    assert_eq!(
        session_command("DEALLOCATE/**/PREPARE/**/x"),
        Deallocate("x".into())
    );
    assert_eq!(session_command("RESET/**/ALL"), ResetAll);
    assert_eq!(session_command("-- x\nDISCARD/**/ALL"), DiscardAll);
    assert_eq!(session_command("SET/**/LOCAL/**/search_path=x"), None);
    assert_eq!(
        session_command("declare c cursor with/* x */hold for select 1"),
        Pin("cursor WITH HOLD")
    );
    assert_eq!(
        session_command("declare c cursor with--x\nhold for select 1"),
        Pin("cursor WITH HOLD")
    );
    assert_eq!(session_command("select 'with' as holdings"), None);
    assert_eq!(
        session_command("select pg_advisory_xact_lock(1), pg_advisory_lock(2)"),
        Pin("session advisory lock")
    );
    assert_eq!(
        leading_words("SET myapp.tenant = 1", 4),
        vec!["set", "myapp.tenant", "=", "1"]
    );
    assert_eq!(
        leading_words("SET \"A\".b=1", 4),
        vec!["set", "A.b", "=", "1"]
    );
}

#[test]
fn nested_comments_are_one_comment() {
    assert_eq!(
        split_statements("/* a /* ; */ ; */ select 1; select 2"),
        vec!["/* a /* ; */ ; */ select 1", "select 2"]
    );
    assert_eq!(
        session_command("/* /* */ SET x = 1 */ select 1"),
        SessionCommand::None
    );
    assert_eq!(
        session_command("/* /* */ */ SET x = 1"),
        SessionCommand::Set("x".into())
    );
    assert_eq!(split_statements("select 1 /* ; "), vec!["select 1 /* ;"]);
    assert_eq!(
        split_statements("select 1 -- ;\n; x"),
        vec!["select 1 -- ;", "x"]
    );
}

#[test]
fn strings_like_postgres() {
    // Standard strings: `''` is a quote, a backslash is a backslash.
    assert_eq!(
        split_statements(r"select 'a''b;c'; select '\'; select 2"),
        vec![r"select 'a''b;c'", r"select '\'", "select 2"]
    );
    // E'' strings: a backslash escapes the quote.
    assert_eq!(
        split_statements(r"select E'\''; select 2"),
        vec![r"select E'\''", "select 2"]
    );
    assert_eq!(
        split_statements(r"select e'a\\'; select 2"),
        vec![r"select e'a\\'", "select 2"]
    );
    assert_eq!(
        split_statements(r"select E'\';'; select 2"),
        vec![r"select E'\';'", "select 2"]
    );
    // An identifier ending in `e` is no E prefix.
    assert_eq!(
        split_statements(r"select some'\'; select 2"),
        vec![r"select some'\'", "select 2"]
    );
    // U&'' and U&"" are standard-quoted.
    assert_eq!(
        split_statements(r#"select U&'d\0061t;'; select U&"a;""b"; x"#),
        vec![r"select U&'d\0061t;'", r#"select U&"a;""b""#, "x"]
    );
    // Quoted identifiers double their quotes.
    assert_eq!(
        split_statements(r#"select "a"";b"; select 2"#),
        vec![r#"select "a"";b""#, "select 2"]
    );
    assert_eq!(
        session_command(r#"SET "a""b" = 1"#),
        SessionCommand::Set("a\"b".into())
    );
}

#[test]
fn dollar_quotes_and_identifiers_with_dollars() {
    assert_eq!(
        split_statements("select $$a;'b$$; select $tag$ $$ ; $tag$; select 3"),
        vec!["select $$a;'b$$", "select $tag$ $$ ; $tag$", "select 3"]
    );
    // `a$b` is an identifier: no dollar quote starts there.
    assert_eq!(
        split_statements("select a$b$ from t; select $b$"),
        vec!["select a$b$ from t", "select $b$"]
    );
    assert_eq!(
        split_statements("select x$$; select 2"),
        vec!["select x$$", "select 2"]
    );
    // `$1` is a parameter, `$é$` a tag.
    assert_eq!(
        split_statements("select $1; select $é$;$é$; x"),
        vec!["select $1", "select $é$;$é$", "x"]
    );
    // Unterminated: the rest of the text.
    assert_eq!(split_statements("select $q$ ; x"), vec!["select $q$ ; x"]);
    assert_eq!(
        session_command("DO $$ begin perform pg_advisory_lock(1); end $$"),
        SessionCommand::Pin("session advisory lock")
    );
}

#[test]
fn tokens_cover_the_text_on_char_boundaries() {
    let sql = "SET/**/\"é\"=E'\\'' -- €\n$é$x$é$ a$b ;𝄞";
    let toks: Vec<_> = tokens(sql.as_bytes()).collect();
    assert_eq!(toks.first().map(|t| t.1), Some(0));
    assert_eq!(toks.last().map(|t| t.2), Some(sql.len()));
    for w in toks.windows(2) {
        assert_eq!(w[0].2, w[1].1);
    }
    assert!(toks.iter().all(|t| sql.is_char_boundary(t.1)));
    let kinds: Vec<Tok> = toks.iter().map(|t| t.0).collect();
    use Tok::*;
    assert_eq!(
        kinds,
        vec![
            Word,
            BlockComment,
            QuotedIdent,
            Punct,
            Str,
            Space,
            LineComment,
            Str,
            Space,
            Word,
            Space,
            Punct,
            Word
        ]
    );
    assert_eq!(strip_comments("a/* x */b -- c\nd '/*'"), "a b  d '/*'");
}
