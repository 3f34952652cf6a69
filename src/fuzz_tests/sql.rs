//! SQL text and COPY data: the shape scanner, the session-command scanner, the hint parser,
//! the COPY row splitter and the shard-key parsers.

use proptest::prelude::*;

use super::{bounded, bytes, fuzz};
use crate::config::KeyType;
use crate::shard::copy::{CopySplitter, RowTarget};
use crate::shard::route::ShardMap;
use crate::shard::ShardKey;
use crate::sql::hints::{command, hints};
use crate::sql::scan::{
    leading_words, pin_reason, session_command, set_config_names, split_statements, tokens,
};
use crate::sql::shape;

/// SQL-ish text: fragments that open and close strings, quotes, comments and dollar quotes,
/// keywords, multibyte characters, and arbitrary characters.
pub fn sql_text() -> impl Strategy<Value = String> + Clone {
    let piece = prop_oneof![
        proptest::sample::select(vec![
            "'",
            "''",
            "\"",
            "\"\"",
            "E'",
            "e'\\'",
            "\\",
            "U&'",
            "U&\"",
            "B'",
            "X'",
            "N'",
            "$",
            "$$",
            "$a$",
            "$1",
            "$9999999",
            "a$b",
            "$é$",
            "/*",
            "*/",
            "--",
            "\n",
            ";",
            " ",
            "\t",
            "(",
            ")",
            ",",
            "=",
            ".",
            "-",
            "+",
            "1",
            "1.5e3",
            "0x1F",
            "é",
            "€",
            "𝄞",
            "set",
            "SET",
            "reset",
            "prepare",
            "deallocate",
            "execute",
            "discard",
            "all",
            "listen",
            "create",
            "temp",
            "session",
            "local",
            "time",
            "zone",
            "search_path",
            "shardgate:",
            "shardgate.target",
            "shard=s1",
            "key=42",
            "replica",
            "primary",
            "with",
            "hold",
            "pg_advisory_lock",
            "pg_temp",
            "for",
            "set_config(",
            "select",
            "in",
            "from",
            "t",
            "where",
            "id",
            "values",
            "insert",
            "into",
            "INSERT",
            "Update",
            "delete",
            "merge",
            "do",
            "CALL",
            "copy",
            "truncate",
            "drop",
            "characteristics",
            "ShardGate",
            "\0",
        ])
        .prop_map(str::to_string),
        any::<char>().prop_map(|c| c.to_string()),
        "[a-z_]{1,6}",
    ];
    prop_oneof![
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat()),
        bytes(64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

#[test]
fn fuzz_shape() {
    fuzz("shape", sql_text(), |sql| {
        let s = bounded(sql.len(), 16, 512, || shape(sql));
        assert_eq!(s.literals.len(), s.offsets.len());
        assert!(s.offsets.iter().all(|&o| o < sql.len()));
        assert!(
            s.offsets.windows(2).all(|w| w[0] < w[1]),
            "offsets in order"
        );
        // The text-only scan (per-shape statistics) gives the same text, into any buffer.
        let mut text = String::from("left over");
        crate::sql::shape_text_into(sql, &mut text);
        assert_eq!(text, s.text);
    });
}

#[test]
fn fuzz_scan() {
    fuzz("scan", sql_text(), |sql| {
        let b = sql.as_bytes();
        let mut at = 0;
        for (_, start, end) in tokens(b) {
            assert_eq!(start, at);
            assert!(end > start && end <= b.len());
            assert!(sql.is_char_boundary(end), "token ends inside a character");
            at = end;
        }
        assert_eq!(at, b.len());
        let stmts = bounded(sql.len(), 8, 256, || split_statements(sql));
        assert!(stmts.len() <= sql.matches(';').count() + 1);
        for s in stmts {
            assert!(!s.is_empty() && sql.contains(s));
            bounded(s.len(), 16, 512, || session_command(s));
            bounded(s.len(), 8, 512, || set_config_names(s));
        }
        bounded(sql.len(), 16, 512, || leading_words(sql, 4));
        bounded(sql.len(), 0, 0, || pin_reason(sql));
    });
}

/// The naive case-insensitive search [`crate::sql::scan::find_ci`] must agree with.
fn naive_find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    (0..=hay.len().checked_sub(needle.len())?)
        .find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

#[test]
fn fuzz_session_scanner_fast_paths() {
    use crate::session::client_state::{settings_effect, tokenized_effect};
    use crate::sql::scan::find_ci;
    let needles: [&[u8]; 8] = [
        b"shardgate",
        b"advisory_lock",
        b"with",
        b"into",
        b"set_config",
        b"insert",
        b"pg_temp",
        b"m",
    ];
    fuzz("session scanner fast paths", sql_text(), |sql| {
        let b = sql.as_bytes();
        for n in needles {
            assert_eq!(find_ci(b, n), naive_find_ci(b, n), "{n:?} in {sql:?}");
        }
        for stmt in split_statements(sql) {
            assert_eq!(settings_effect(stmt), tokenized_effect(stmt), "{stmt:?}");
        }
    });
}

/// A plain SELECT (one pass) must be one every session scanner finds nothing in.
#[test]
fn fuzz_plain_select() {
    use crate::session::client_state::{settings_effect, SettingsEffect};
    use crate::sql::scan::{plain_select, session_command, set_config_names, SessionCommand};
    let prefix = proptest::sample::select(vec!["select ", "SELECT\t", "select\n", "Select "]);
    // Words apart, so that two-word patterns (`WITH HOLD`, `INTO TEMP`) come up often.
    let words = proptest::collection::vec(
        proptest::sample::select(vec![
            "a",
            "t",
            "from",
            "where",
            "with",
            "hold",
            "into",
            "temp",
            "local",
            "for",
            "update",
            "share",
            "pg_advisory_lock",
            "set_config",
            "pg_temp.t",
            "$1",
            "=",
            "*",
            "/**/",
            "--",
            "\n",
            "(1)",
            "'x'",
            "$$",
            "1",
            "union",
            "all",
        ]),
        0..10,
    )
    .prop_map(|w| w.join(" "));
    let body = prop_oneof![sql_text(), words];
    let text = (
        prefix,
        body,
        proptest::sample::select(vec!["", ";", " ;", "; \n"]),
    )
        .prop_map(|(p, s, end)| format!("{p}{s}{end}"));
    fuzz("plain select", text, |sql| {
        if plain_select(sql) {
            let stmt = sql.trim_end().trim_end_matches(';');
            assert_eq!(settings_effect(stmt), SettingsEffect::default(), "{sql:?}");
            assert_eq!(session_command(stmt), SessionCommand::None, "{sql:?}");
            assert!(set_config_names(stmt).is_empty(), "{sql:?}");
            assert_eq!(split_statements(sql).len(), 1, "{sql:?}");
        }
    });
}

#[test]
fn fuzz_hints() {
    fuzz("hints", sql_text(), |sql| {
        bounded(sql.len(), 8, 512, || hints(sql));
        bounded(sql.len(), 8, 512, || command(sql));
        // Text inside a string literal or a dollar quote is never a hint.
        let quoted = format!("select '{}'", sql.replace('\'', "''"));
        assert_eq!(hints(&quoted), Default::default(), "{quoted}");
        if !sql.contains("$q$") {
            let dollar = format!("select $q${sql}$q$");
            assert_eq!(hints(&dollar), Default::default(), "{dollar}");
        }
    });
}

pub(super) fn shard_map() -> ShardMap {
    crate::shard::two_shard_map()
}

/// COPY data: rows of fields with quotes, escapes, delimiters and newlines in odd places.
pub(super) fn copy_data() -> impl Strategy<Value = Vec<u8>> + Clone {
    let piece = prop_oneof![
        proptest::sample::select(vec![
            "\t", ",", "\n", "\r\n", "\"", "\"\"", "\\", "\\N", "\\.", "\\\n", "\\t", "\\x41",
            "\\101", "1", "42", "-7", "abc", "é",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        bytes(4),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

#[test]
fn fuzz_copy_splitter() {
    let map = shard_map();
    fuzz(
        "copy_splitter",
        (
            copy_data(),
            proptest::collection::vec(1usize..20, 1..6),
            any::<bool>(),
            any::<bool>(),
            0usize..3,
            0u8..4,
        ),
        |(data, cuts, csv, header, index, key)| {
            let key = match key {
                0 => None,
                1 => Some((*index, KeyType::Bigint)),
                2 => Some((*index, KeyType::Text)),
                _ => Some((*index, KeyType::Uuid)),
            };
            let mut s = CopySplitter::new(*csv, if *csv { ',' } else { '\t' }, *header, key);
            let mut rows: Vec<u8> = Vec::new();
            let mut out = |_: RowTarget, r: &[u8]| {
                assert!(r.ends_with(b"\n"));
                rows.extend_from_slice(r);
            };
            // Feed the data in chunks cut at the given sizes.
            let mut rest = &data[..];
            let mut cut = cuts.iter().cycle();
            let mut failed = false;
            while !rest.is_empty() && !failed {
                let n = (*cut.next().unwrap_or(&1)).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                failed = bounded(chunk.len() + data.len(), 8, 256, || {
                    s.push(chunk, &map, &mut out).is_err()
                });
            }
            if failed || s.finish(&map, &mut out).is_err() {
                return;
            }
            // Every byte before the end marker is handed out once, in order (a last row
            // without a newline gets one).
            let mut with_newline = data.clone();
            with_newline.push(b'\n');
            if rows == *data || rows == with_newline {
                return;
            }
            assert!(data.starts_with(&rows), "rows are a prefix of the data");
            let after = &data[rows.len()..];
            assert!(
                after.starts_with(b"\\.\n")
                    || after.starts_with(b"\\.\r\n")
                    || after == b"\\."
                    // A last line ended by a bare CR: Postgres reads `\.` + CR as the marker too.
                    || after == b"\\.\r",
                "only the end marker stops a COPY"
            );
        },
    );
}

#[test]
fn fuzz_shard_keys() {
    let key_text = prop_oneof![
        bytes(40),
        "[ \t]*[+-]?(0[xob])?[0-9a-fA-F_]{0,24}[ \t]*".prop_map(String::into_bytes),
        "\\{?[0-9a-fA-F-]{28,40}\\}?".prop_map(String::into_bytes),
    ];
    fuzz("shard_keys", (key_text, any::<i64>()), |(text, n)| {
        for ty in [KeyType::Bigint, KeyType::Text, KeyType::Uuid] {
            if let Ok(k) = bounded(text.len(), 4, 256, || ShardKey::from_text(ty, text)) {
                assert_eq!(k.key_type(), ty);
                let _ = k.to_string();
            }
            let _ = bounded(text.len(), 4, 256, || ShardKey::from_binary(ty, text));
        }
        // Plain decimal input parses as Rust parses it.
        let s = n.to_string();
        assert_eq!(
            ShardKey::from_text(KeyType::Bigint, s.as_bytes()),
            Ok(ShardKey::Bigint(*n))
        );
    });
}

/// A setting's value quoted for `set_config` (`dollar_quote`, written by `DollarQuoted`) is one
/// string literal whatever the value: it opens and closes with one tag that the value does not
/// contain, and holds the value unchanged in between.
#[test]
fn fuzz_dollar_quote() {
    use crate::sql::scan::dollar_quote;
    let value = prop_oneof![
        sql_text(),
        proptest::collection::vec(
            proptest::sample::select(vec!["$sg$", "$sg1$", "$sg2$", "$", "sg", "1", "x"]),
            0..8
        )
        .prop_map(|v| v.concat()),
    ];
    fuzz("dollar quote", value, |v| {
        let q = dollar_quote(v);
        let tag_len = q[1..].find('$').map_or(0, |i| i + 2);
        let tag = &q[..tag_len];
        assert!(
            tag.starts_with("$sg") && tag.ends_with('$') && tag.len() >= 4,
            "{q:?}"
        );
        assert!(q.len() >= 2 * tag.len() && q.ends_with(tag), "{q:?}");
        assert_eq!(&q[tag.len()..q.len() - tag.len()], v, "{q:?}");
        assert!(!v.contains(tag), "the tag {tag:?} occurs in {v:?}");
    });
}
