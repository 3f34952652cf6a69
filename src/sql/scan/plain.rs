//! [`plain_select`]: the one-pass test that lets the session skip its SQL scanners.

use super::first_word;
#[cfg(doc)]
use super::{session_command, set_config_names};

/// Texts whose presence anywhere (any case) means a statement is not a [`plain_select`]: the
/// words the session scanners look for, and every character that starts a string, a quoted
/// name, a comment, a call or a second statement. Dollar quotes: see [`DOLLAR_QUOTE_STARTS`].
const NOT_PLAIN: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "advisory_lock",
    "hold",
    "into",
    "set_config",
    "pg_temp",
    "(",
    "'",
    "\"",
    ";",
    "\\",
    "--",
    "/*",
];

/// What may follow a `$` that starts a dollar quote (`$$`, `$tag$`), or continues a name with
/// a `$` in it (refused too, on the safe side). A parameter (`$1`) is plain.
const DOLLAR_QUOTE_STARTS: &str = "$abcdefghijklmnopqrstuvwxyz_";

static NOT_PLAIN_FINDER: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
    std::sync::LazyLock::new(|| {
        let dollars = DOLLAR_QUOTE_STARTS.chars().map(|c| format!("${c}"));
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(NOT_PLAIN.iter().map(|p| p.to_string()).chain(dollars))
            .ok()
    });

/// A SELECT that provably changes nothing of the session, found in one pass over the text:
/// it starts with `SELECT` and holds no call, string, quoted name, comment, second statement
/// or any word the session scanners react to (a parameter `$n` and trailing `;` are fine).
/// For such a statement the settings effect is none, it is no session command and sets no
/// setting by `set_config` (a property test checks it against [`session_command`],
/// [`set_config_names`] and the settings scanner), so the session needs no further look at
/// it. False for anything else (then the scanners run).
pub fn plain_select(stmt: &str) -> bool {
    let Some(finder) = NOT_PLAIN_FINDER.as_ref() else {
        return false;
    };
    let body = stmt.trim_end().trim_end_matches(';');
    first_word(body).eq_ignore_ascii_case("select") && !finder.is_match(body)
}
