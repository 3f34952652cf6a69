use bytes::BytesMut;

use super::table::{Table, INT4, TEXT};
use super::{parse, valid_commands, Command, Show};
use crate::protocol::split_frame;

#[test]
fn commands_are_read_case_insensitively_with_an_optional_semicolon() {
    assert_eq!(parse("SHOW POOLS"), [Command::Show(Show::Pools)]);
    assert_eq!(parse("show pools;"), [Command::Show(Show::Pools)]);
    assert_eq!(parse("  Show\tVersion ; "), [Command::Show(Show::Version)]);
    assert_eq!(
        parse("SHOW LISTS; SHOW USERS"),
        [Command::Show(Show::Lists), Command::Show(Show::Users)]
    );
    assert_eq!(parse(""), [Command::Empty]);
    assert_eq!(parse(";"), [Command::Empty]);
}

#[test]
fn acting_and_not_yet_answered_commands_are_told_apart_from_unknown_ones() {
    let arg = |s: &str| Some(s.to_string());
    assert_eq!(parse("PAUSE app"), [Command::Act("PAUSE", arg("app"))]);
    assert_eq!(parse("pause"), [Command::Act("PAUSE", None)]);
    assert_eq!(
        parse("kill_client 42"),
        [Command::Act("KILL_CLIENT", arg("42"))]
    );
    assert_eq!(parse("SET a = 1"), [Command::Act("SET", arg("a = 1"))]);
    assert!(matches!(&parse("PAUSE a b")[..], [Command::Unknown(_)]));
    assert_eq!(parse("SHOW STATS"), [Command::Show(Show::Stats)]);
    assert_eq!(parse("SHOW QUERIES"), [Command::Show(Show::Queries)]);
    assert_eq!(
        parse("SHOW TRANSACTIONS"),
        [Command::NotYet("TRANSACTIONS")]
    );
    assert_eq!(parse("show prepared"), [Command::Show(Show::Prepared)]);
    assert_eq!(
        parse("SHOW NONSENSE"),
        [Command::Unknown("SHOW NONSENSE".into())]
    );
    assert_eq!(
        parse("SHOW POOLS extra"),
        [Command::Unknown("SHOW POOLS extra".into())]
    );
    assert_eq!(parse("SELECT 1"), [Command::Unknown("SELECT 1".into())]);
    assert_eq!(parse("SHOW"), [Command::Unknown("SHOW".into())]);
    let list = valid_commands();
    assert!(
        list.contains("SHOW POOLS") && list.contains("RELOAD"),
        "{list}"
    );
}

#[test]
fn a_table_encodes_as_row_description_data_rows_and_show() {
    let mut t = Table::new(&[("name", TEXT), ("n", INT4)]);
    t.row(vec![Some("a".into()), Some("1".into())]);
    t.row(vec![None]);
    let mut out = BytesMut::new();
    t.encode(&mut out);
    let mut frames = Vec::new();
    while let Some(f) = split_frame(&mut out, usize::MAX).unwrap() {
        frames.push(f);
    }
    let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
    assert_eq!(tags, b"TDDC");
    let desc = frames[0].body();
    assert_eq!(&desc[..2], &[0, 2]);
    assert!(desc.windows(5).any(|w| w == b"name\0"));
    // The second column: int4 (OID 23), length 4.
    let n = desc.windows(2).position(|w| w == b"n\0").unwrap() + 2;
    assert_eq!(&desc[n + 6..n + 12], &[0, 0, 0, 23, 0, 4]);
    assert_eq!(
        frames[2].body(),
        &[0, 2, 255, 255, 255, 255, 255, 255, 255, 255]
    );
    assert_eq!(frames[3].body(), b"SHOW\0");
    assert_eq!(t.column("name").unwrap(), [Some("a"), None]);
}
