//! Token-level rewrites of PostgreSQL syntax that `sqlparser` 0.64 cannot parse, into syntax
//! that classifies the same way. Used only as a second try after a parse error.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Rewrites, outside literals and comments, PostgreSQL syntax that `sqlparser` 0.64 cannot
/// parse into syntax that classifies the same way:
/// - `FOR NO KEY UPDATE` -> `FOR UPDATE`, `FOR KEY SHARE` -> `FOR SHARE` (still locking);
/// - `TABLE name` starting a statement -> `SELECT * FROM name` (PostgreSQL's definition);
/// - the transaction mode `[NOT] DEFERRABLE` is dropped (with its leading comma);
/// - the COPY option values `ON`/`OFF` (`FREEZE ON`) -> `TRUE`/`FALSE`.
///
/// Returns `None` when nothing was rewritten (or the text does not tokenize).
pub(crate) fn patch_tokens(sql: &str) -> Option<String> {
    let mut tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
        .collect();
    let kw = |i: Option<&usize>, k: Keyword| {
        i.is_some_and(
            |&i| matches!(&tokens[i], Token::Word(w) if w.keyword == k && w.quote_style.is_none()),
        )
    };
    let mut drop = Vec::new();
    let mut table_at = Vec::new();
    let mut boolean: Vec<(usize, bool)> = Vec::new();
    let is_copy = kw(sig.first(), Keyword::COPY);
    for n in 0..sig.len() {
        let at = |d: usize| sig.get(n + d);
        let before = |d: usize| n.checked_sub(d).and_then(|m| sig.get(m));
        if kw(at(0), Keyword::FOR) {
            if kw(at(1), Keyword::NO) && kw(at(2), Keyword::KEY) && kw(at(3), Keyword::UPDATE) {
                drop.extend([sig[n + 1], sig[n + 2]]);
            } else if kw(at(1), Keyword::KEY) && kw(at(2), Keyword::SHARE) {
                drop.push(sig[n + 1]);
            }
        } else if kw(at(0), Keyword::TABLE)
            && (n == 0 || before(1).is_some_and(|&p| tokens[p] == Token::SemiColon))
        {
            table_at.push(sig[n]);
        } else if is_copy
            && (kw(at(0), Keyword::ON) || kw(at(0), Keyword::OFF))
            && before(1).is_some_and(|&p| matches!(&tokens[p], Token::Word(_)))
        {
            boolean.push((sig[n], kw(at(0), Keyword::ON)));
        } else if kw(at(0), Keyword::DEFERRABLE) {
            drop.push(sig[n]);
            let mut back = 1;
            if kw(before(1), Keyword::NOT) {
                drop.push(sig[n - 1]);
                back = 2;
            }
            if let Some(&p) = before(back).filter(|&&p| tokens[p] == Token::Comma) {
                drop.push(p);
            }
        }
    }
    if drop.is_empty() && table_at.is_empty() && boolean.is_empty() {
        return None;
    }
    for i in drop {
        tokens[i] = Token::Whitespace(Whitespace::Space);
    }
    let mut out = String::with_capacity(sql.len() + 16);
    for (i, t) in tokens.iter().enumerate() {
        if table_at.contains(&i) {
            out.push_str("SELECT * FROM");
        } else if let Some((_, on)) = boolean.iter().find(|(b, _)| *b == i) {
            out.push_str(if *on { "TRUE" } else { "FALSE" });
        } else {
            out.push_str(&t.to_string());
        }
    }
    Some(out)
}
