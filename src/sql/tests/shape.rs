//! The shape scanner: literals out, structure kept.

use crate::sql::shape::{shape, Literal, PLACEHOLDER};

fn text(sql: &str) -> String {
    shape(sql).text
}

fn num(s: &str) -> Literal {
    Literal::Number(s.into())
}

fn string(s: &str) -> Literal {
    Literal::String(s.into())
}

#[test]
fn pgbench_statements_share_a_shape() {
    let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 81212;");
    let b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 5;");
    assert_eq!(
        a.text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $?"
    );
    assert_eq!(a.text, b.text);
    assert_eq!(a.literals, [num("81212")]);
    assert_eq!(b.literals, [num("5")]);
    assert_eq!(PLACEHOLDER, "$?");
}

#[test]
fn numbers() {
    let s = shape("SELECT 1, 1.5, .5, 1., 1e10, 2.5E-3, 4e+5, 0x1F, 0o17, 0b101, 1_000 FROM t");
    assert_eq!(
        s.text,
        "SELECT $?, $?, $?, $?, $?, $?, $?, $?, $?, $?, $? FROM t"
    );
    let want = [
        "1", "1.5", ".5", "1.", "1e10", "2.5E-3", "4e+5", "0x1F", "0o17", "0b101", "1_000",
    ];
    assert_eq!(s.literals, want.map(num));
    // Digits inside identifiers and after `$` in identifiers are not literals.
    assert_eq!(
        text("SELECT t1.c2, a$1 FROM t3"),
        "SELECT t1.c2, a$1 FROM t3"
    );
    // The sign is an operator and stays.
    assert_eq!(text("SELECT -5"), "SELECT -$?");
}

#[test]
fn strings_with_quotes_and_semicolons() {
    let s = shape("SELECT 'it''s', ';', '', 'a -- b /* c */'");
    assert_eq!(s.text, "SELECT $?, $?, $?, $?");
    assert_eq!(
        s.literals,
        [
            string("it's"),
            string(";"),
            string(""),
            string("a -- b /* c */")
        ]
    );
    assert_eq!(text("SELECT 'x'; SELECT 'y;z'"), "SELECT $?; SELECT $?");
}

#[test]
fn escape_strings() {
    let s = shape(r"SELECT E'a\'b', e'\n\t\\', E'\x41\101\u00e9\U0001F600', E'it''s'");
    assert_eq!(s.text, "SELECT $?, $?, $?, $?");
    assert_eq!(
        s.literals,
        [
            string("a'b"),
            string("\n\t\\"),
            string("AAé😀"),
            string("it's")
        ]
    );
    // In a standard string a backslash is just a character.
    assert_eq!(shape(r"SELECT 'a\'").literals, [string(r"a\")]);
}

#[test]
fn prefixed_strings() {
    let s = shape("SELECT B'101', X'1F', N'nat', U&'d\\0061t'");
    assert_eq!(s.text, "SELECT $?, $?, $?, $?");
    assert_eq!(
        s.literals,
        [
            string("101"),
            string("1F"),
            string("nat"),
            string("d\\0061t")
        ]
    );
    // A type name before a string stays (`date '...'`), a one-letter identifier before a
    // space too.
    assert_eq!(
        text("SELECT date '2024-01-01', e FROM t"),
        "SELECT date $?, e FROM t"
    );
}

#[test]
fn dollar_quotes() {
    let s = shape("SELECT $$a'b$$, $tag$x$$y$tag$, $q$;$q$");
    assert_eq!(s.text, "SELECT $?, $?, $?");
    assert_eq!(s.literals, [string("a'b"), string("x$$y"), string(";")]);
}

#[test]
fn params() {
    let s = shape("SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND b IN ($2, $10)");
    assert_eq!(
        s.text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $? AND b IN ($?, $?)"
    );
    assert_eq!(
        s.literals,
        [Literal::Param(1), Literal::Param(2), Literal::Param(10)]
    );
    // The extended protocol's text and the simple protocol's share a shape.
    assert_eq!(
        text("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
        text("SELECT abalance FROM pgbench_accounts WHERE aid = 81212;")
    );
    // Out of range: kept as text.
    assert_eq!(shape("SELECT $70000").literals, []);
}

#[test]
fn comments_are_stripped_and_whitespace_collapses() {
    let s = shape("  SELECT /* a /* nested */ comment */ a,\n\t b -- trailing\nFROM   t ;  ");
    assert_eq!(s.text, "SELECT a, b FROM t");
    assert_eq!(text("SELECT/**/1"), text("SELECT 1"));
    assert_eq!(text("SELECT 1 -- x"), "SELECT $?");
}

#[test]
fn quoted_identifiers_and_case_are_kept() {
    let s = shape(r#"Select "Weird ""Name"";--", x FROM "T" WHERE j ? 'k'"#);
    assert_eq!(
        s.text,
        r#"Select "Weird ""Name"";--", x FROM "T" WHERE j ? $?"#
    );
    assert_eq!(s.literals, [string("k")]);
}

#[test]
fn non_ascii_text_is_kept() {
    let s = shape("SELECT café FROM \"tëst\" WHERE n = 'ü'");
    assert_eq!(s.text, "SELECT café FROM \"tëst\" WHERE n = $?");
    assert_eq!(s.literals, [string("ü")]);
}

#[test]
fn unterminated_constructs_are_copied_verbatim() {
    assert_eq!(text("SELECT 'abc"), "SELECT 'abc");
    assert_eq!(text("SELECT E'abc\\'"), "SELECT E'abc\\'");
    assert_eq!(text("SELECT $$abc"), "SELECT $$abc");
    assert_eq!(text("SELECT \"abc"), "SELECT \"abc");
    assert_eq!(text("SELECT 1 /* abc"), "SELECT $? /* abc");
    // ... so they never share the shape of the terminated statement.
    assert_ne!(text("SELECT 'abc"), text("SELECT 'abc'"));
}
