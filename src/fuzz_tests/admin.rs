//! The admin console's command parser and its answers' encoding.

use bytes::BytesMut;
use proptest::prelude::*;

use super::fuzz;
use crate::admin::{parse, Command, Table};
use crate::protocol::{split_frame, DataRowValues};

/// Console text: command words in any case, names, arguments, separators, anything.
fn console_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        proptest::sample::select(vec![
            "show",
            "SHOW",
            "Show",
            "pools",
            "STATS",
            "stats_totals",
            "clients",
            "servers",
            "help",
            "queries",
            "reload",
            "PAUSE",
            "kill_client",
            "set",
            "select",
            ";",
            " ",
            "\t",
            "\n",
            "app",
            "=",
            "'x'",
            "\0",
        ])
        .prop_map(str::to_string),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

/// Every statement of any text is one command; a SHOW is recognised in any case and
/// spacing, and the text of an unknown command is the statement's own.
#[test]
fn fuzz_admin_parse() {
    fuzz("admin_parse", console_text(), |sql| {
        let commands = parse(sql);
        let statements = sql.split(';').count();
        assert!(commands.len() == statements || commands.len() + 1 == statements);
        for c in &commands {
            if let Command::Unknown(text) = c {
                assert!(sql.contains(text.as_str()) && !text.is_empty());
            }
        }
        let upper = sql.to_ascii_uppercase();
        // Arguments keep their case (database and server names); the command's does not
        // matter.
        let known = |c: Command| match c {
            Command::Unknown(_) => None,
            Command::Act(name, arg) => {
                Some(Command::Act(name, arg.map(|a| a.to_ascii_uppercase())))
            }
            known => Some(known),
        };
        let again: Vec<_> = parse(&upper).into_iter().map(known).collect();
        let first: Vec<_> = commands.into_iter().map(known).collect();
        assert_eq!(first, again, "the case of a command does not matter");
    });
}

/// Any table encodes as one RowDescription, one DataRow per row whose values read back as
/// given, and CommandComplete.
#[test]
fn fuzz_admin_table() {
    let rows = proptest::collection::vec(
        proptest::collection::vec(proptest::option::of(".{0,12}"), 0..5),
        0..6,
    );
    fuzz("admin_table", (1usize..5, rows), |(columns, rows)| {
        let spec: Vec<(&'static str, u32)> = ["a", "b", "c", "d"][..*columns]
            .iter()
            .map(|n| (*n, crate::admin::table::TEXT))
            .collect();
        let mut t = Table::new(&spec);
        for r in rows {
            t.row(r.clone());
        }
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let first = split_frame(&mut out, usize::MAX).unwrap().unwrap();
        assert_eq!(first.tag, b'T');
        for want in &t.rows {
            let f = split_frame(&mut out, usize::MAX).unwrap().unwrap();
            assert_eq!(f.tag, b'D');
            let (n, values) = DataRowValues::new(f.body()).unwrap();
            assert_eq!(n, want.len());
            let got: Vec<Option<String>> = values
                .map(|v| v.unwrap().map(|b| String::from_utf8(b.to_vec()).unwrap()))
                .collect();
            assert_eq!(&got, want);
        }
        let last = split_frame(&mut out, usize::MAX).unwrap().unwrap();
        assert_eq!((last.tag, last.body()), (b'C', &b"SHOW\0"[..]));
        assert!(out.is_empty());
    });
}
