//! Statement shapes: one pass over the SQL text that replaces literals and `$n` parameters
//! with a placeholder, so statements that differ only in their values share one cache entry.
//!
//! The scan knows PostgreSQL's lexical rules (standard and `E''` strings, dollar quotes,
//! quoted identifiers, nested block comments, `$n` parameters) but builds no tree and uses no
//! regular expressions: it copies runs of text and allocates only the shape string and the
//! literal values.
//!
//! Invariants the cache relies on:
//! - The placeholder [`PLACEHOLDER`] (`$?`) cannot appear in the shape of valid SQL any other
//!   way: outside literals, a `$` starts a token only as a parameter or a dollar quote (both
//!   replaced), and inside an identifier it follows an identifier character.
//! - Two statements with the same shape differ only in their literals (values, or number vs
//!   string) and parameter numbers. Those never decide whether a statement reads or writes:
//!   at worst `sqlparser` accepts one literal form and not another, and the shape's cached
//!   kind is then `Unparsed` (sent to the primary) or one Postgres would give both.
//! - Unterminated strings, quoted identifiers, dollar quotes and block comments are copied
//!   verbatim to the end of the text, so a broken statement never shares the shape of a valid
//!   one.
//!
//! Strings are read with `standard_conforming_strings = on` (the default since PostgreSQL
//! 9.1): a backslash escapes only in `E''` strings.

/// What a literal or parameter is replaced with in the shape.
pub const PLACEHOLDER: &str = "$?";

/// A value taken out of the SQL text, in the order it appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A numeric constant as written (`42`, `-` not included, `1.5e3`, `0x1F`, `1_000`).
    Number(String),
    /// A string constant's value: quotes removed, doubled quotes and `E''` escapes decoded,
    /// dollar-quoted bodies verbatim. Bit strings (`B''`, `X''`), national (`N''`) and
    /// Unicode (`U&''`) strings keep their body with only doubled quotes decoded.
    String(String),
    /// A `$n` parameter of the extended protocol (1-based, as written).
    Param(u16),
}

/// A statement's shape and the values that were taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The SQL text with literals and parameters replaced by [`PLACEHOLDER`], comments
    /// removed, whitespace runs collapsed to one space, no leading or trailing whitespace and
    /// no trailing semicolons. Case and quoted identifiers are kept as written.
    pub text: String,
    /// The replaced values, in order of appearance.
    pub literals: Vec<Literal>,
    /// Byte offset in the SQL text where each literal starts (its prefix or quote, first
    /// digit, or `$`).
    pub offsets: Vec<usize>,
}

/// Computes the shape of `sql` in one pass.
pub fn shape(sql: &str) -> Shape {
    let mut s = Scanner {
        sql,
        b: sql.as_bytes(),
        out: String::with_capacity(sql.len()),
        keep: true,
        literals: Vec::new(),
        offsets: Vec::new(),
        space: false,
    };
    s.run();
    let mut text = s.out;
    trim_end(&mut text);
    Shape {
        text,
        literals: s.literals,
        offsets: s.offsets,
    }
}

/// Only the text of `sql`'s shape ([`Shape::text`]), written into `out` (cleared first):
/// no literal values are kept, and nothing is allocated once `out` has room.
pub fn shape_text_into(sql: &str, out: &mut String) {
    out.clear();
    let mut s = Scanner {
        sql,
        b: sql.as_bytes(),
        out: std::mem::take(out),
        keep: false,
        literals: Vec::new(),
        offsets: Vec::new(),
        space: false,
    };
    s.run();
    *out = s.out;
    trim_end(out);
}

fn trim_end(text: &mut String) {
    while text.ends_with(';') || text.ends_with(' ') {
        text.pop();
    }
}

struct Scanner<'a> {
    sql: &'a str,
    b: &'a [u8],
    out: String,
    /// Keep the literals' values and offsets (false: only the text is wanted).
    keep: bool,
    literals: Vec<Literal>,
    offsets: Vec<usize>,
    /// Whitespace or a comment was seen since the last token: emit one space before the next.
    space: bool,
}

/// Byte classes for the scan loop: most bytes are copied as part of a run without a look.
const PLAIN: u8 = 0;
const SPACE: u8 = 1;
const SPECIAL: u8 = 2;

const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    // PostgreSQL's whitespace: space, tab, newline, carriage return, vertical tab, form feed.
    let spaces = [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c];
    let mut k = 0;
    while k < spaces.len() {
        t[spaces[k] as usize] = SPACE;
        k += 1;
    }
    let special = *b"'\"$-/.0123456789";
    k = 0;
    while k < special.len() {
        t[special[k] as usize] = SPECIAL;
        k += 1;
    }
    t
};

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl Scanner<'_> {
    /// The scan loop. Text that needs no change (identifiers, keywords, operators, single
    /// spaces, quoted identifiers) accumulates in a run `run..i` that is copied in one go
    /// when something must be replaced or dropped.
    fn run(&mut self) {
        let b = self.b;
        let mut run = 0;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            let class = CLASS[c as usize];
            if class == PLAIN {
                i += 1;
                continue;
            }
            let next = b.get(i + 1).copied();
            // One space between two tokens of a run stays in the run.
            if c == b' ' && i > run && next.is_some_and(|n| CLASS[n as usize] != SPACE) {
                i += 1;
                continue;
            }
            let end = match c {
                _ if class == SPACE => {
                    self.flush(run, i);
                    self.space = true;
                    i + b[i..]
                        .iter()
                        .take_while(|&&c| CLASS[c as usize] == SPACE)
                        .count()
                }
                b'-' if next == Some(b'-') => {
                    self.flush(run, i);
                    self.space = true;
                    b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(b.len(), |p| i + p + 1)
                }
                b'/' if next == Some(b'*') => {
                    self.flush(run, i);
                    match block_comment_end(b, i) {
                        Some(end) => {
                            self.space = true;
                            end
                        }
                        None => self.verbatim_rest(i),
                    }
                }
                b'"' => {
                    // Quoted identifiers are copied as they are (unterminated: to the end).
                    i = quoted_end(b, i + 1, b'"').unwrap_or(b.len());
                    continue;
                }
                b'\'' => {
                    // A one-letter prefix right before the quote: E'', B'', X'', N'', U&''.
                    let prefix = |at: usize, letters: &[u8]| {
                        at >= run
                            && letters.contains(&b[at].to_ascii_uppercase())
                            && (at == 0 || !is_ident_char(b[at - 1]))
                    };
                    let start = if i >= 1 && prefix(i - 1, b"EBXN") {
                        i - 1
                    } else if i >= 2 && b[i - 1] == b'&' && prefix(i - 2, b"U") {
                        i - 2
                    } else {
                        i
                    };
                    self.flush(run, start);
                    let escapes = start + 1 == i && b[start].eq_ignore_ascii_case(&b'e');
                    self.string(start, i, escapes)
                }
                // `$` and digits inside an identifier (`a$1`, `t1`) are part of it.
                b'$' | b'0'..=b'9' if i > 0 && is_ident_char(b[i - 1]) => {
                    i += 1;
                    continue;
                }
                b'$' => {
                    self.flush(run, i);
                    self.dollar(i)
                }
                b'0'..=b'9' => {
                    self.flush(run, i);
                    self.number(i)
                }
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                    self.flush(run, i);
                    self.number(i)
                }
                // `-`, `/` and `.` on their own are operators.
                _ => {
                    i += 1;
                    continue;
                }
            };
            run = end;
            i = end;
        }
        self.flush(run, b.len());
    }

    /// Copies the run `from..to` of unchanged text.
    fn flush(&mut self, from: usize, to: usize) {
        if to > from {
            self.emit(&self.sql[from..to]);
        }
    }

    /// Appends a token, preceded by one space if whitespace or a comment came before it.
    fn emit(&mut self, tok: &str) {
        if self.space && !self.out.is_empty() && !self.out.ends_with(' ') {
            self.out.push(' ');
        }
        self.space = false;
        self.out.push_str(tok);
    }

    /// A literal (its value made only if kept) replaced by the placeholder.
    fn literal(&mut self, lit: impl FnOnce() -> Literal, at: usize) {
        self.emit(PLACEHOLDER);
        if self.keep {
            self.literals.push(lit());
            self.offsets.push(at);
        }
    }

    /// Copies everything from `i` on (an unterminated construct) and ends the scan.
    fn verbatim_rest(&mut self, i: usize) -> usize {
        self.emit(&self.sql[i..]);
        self.b.len()
    }

    /// A string constant whose opening quote is at `quote` (`start` includes any prefix).
    fn string(&mut self, start: usize, quote: usize, escapes: bool) -> usize {
        let b = self.b;
        let body = quote + 1;
        if escapes {
            return match escape_string(b, body) {
                Some((value, end)) => {
                    self.literal(|| Literal::String(value), start);
                    end
                }
                None => self.verbatim_rest(start),
            };
        }
        match quoted_end(b, body, b'\'') {
            Some(end) => {
                let raw = &self.sql[body..end - 1];
                let value = || {
                    Literal::String(if raw.contains("''") {
                        raw.replace("''", "'")
                    } else {
                        raw.to_owned()
                    })
                };
                self.literal(value, start);
                end
            }
            None => self.verbatim_rest(start),
        }
    }

    /// `$n` parameter, `$tag$...$tag$` dollar quote, or a lone `$` (copied).
    fn dollar(&mut self, i: usize) -> usize {
        let b = self.b;
        let mut j = i + 1;
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            return match self.sql[i + 1..j].parse::<u16>() {
                Ok(n) => {
                    self.literal(|| Literal::Param(n), i);
                    j
                }
                Err(_) => {
                    self.emit(&self.sql[i..j]);
                    j
                }
            };
        }
        if j < b.len() && is_ident_start(b[j]) {
            j += 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
                j += 1;
            }
        }
        if b.get(j) != Some(&b'$') {
            self.emit(&self.sql[i..i + 1]);
            return i + 1;
        }
        let tag = &self.sql[i..=j];
        let body = j + 1;
        match self.sql[body..].find(tag) {
            Some(p) => {
                let sql = self.sql;
                self.literal(|| Literal::String(sql[body..body + p].to_owned()), i);
                body + p + tag.len()
            }
            None => self.verbatim_rest(i),
        }
    }

    /// A numeric constant starting at `start` (a digit, or `.` followed by a digit).
    fn number(&mut self, start: usize) -> usize {
        let b = self.b;
        let digits = |mut i: usize, ok: fn(&u8) -> bool| {
            while i < b.len() && (ok(&b[i]) || b[i] == b'_') {
                i += 1;
            }
            i
        };
        let mut i = start;
        let radix_digit: Option<fn(&u8) -> bool> = match (b[i], b.get(i + 1).copied()) {
            (b'0', Some(b'x' | b'X')) => Some(u8::is_ascii_hexdigit),
            (b'0', Some(b'o' | b'O')) => Some(|c| (b'0'..=b'7').contains(c)),
            (b'0', Some(b'b' | b'B')) => Some(|c| *c == b'0' || *c == b'1'),
            _ => None,
        };
        if let Some(ok) = radix_digit.filter(|ok| b.get(i + 2).is_some_and(ok)) {
            i = digits(i + 2, ok);
        } else {
            i = digits(i, u8::is_ascii_digit);
            // `1..5` is not a decimal point; `1.`, `1.5` and `.5` are.
            if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
                i = digits(i + 1, u8::is_ascii_digit);
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                let mut j = i + 1;
                if matches!(b.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    i = digits(j, u8::is_ascii_digit);
                }
            }
        }
        let sql = self.sql;
        self.literal(|| Literal::Number(sql[start..i].to_owned()), start);
        i
    }
}

/// End (one past the closing quote) of a quoted token whose body starts at `i`; a doubled
/// quote is part of the body. `None` if unterminated.
fn quoted_end(b: &[u8], mut i: usize, q: u8) -> Option<usize> {
    loop {
        i += b[i..].iter().position(|&c| c == q)?;
        if b.get(i + 1) == Some(&q) {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// End of a nested block comment starting at `i` (which holds `/*`); `None` if unterminated.
fn block_comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Decodes the body of an `E''` string starting at `i`: returns the value and the index past
/// the closing quote, or `None` if unterminated.
fn escape_string(b: &[u8], mut i: usize) -> Option<(String, usize)> {
    let mut v: Vec<u8> = Vec::new();
    loop {
        let c = *b.get(i)?;
        match c {
            b'\'' if b.get(i + 1) == Some(&b'\'') => {
                v.push(b'\'');
                i += 2;
            }
            b'\'' => break,
            b'\\' => {
                let e = *b.get(i + 1)?;
                i += 2;
                match e {
                    b'b' => v.push(8),
                    b'f' => v.push(12),
                    b'n' => v.push(b'\n'),
                    b'r' => v.push(b'\r'),
                    b't' => v.push(b'\t'),
                    b'0'..=b'7' => {
                        let (n, len) = radix_prefix(&b[i - 1..], 8, 3);
                        v.push(n as u8);
                        i += len - 1;
                    }
                    b'x' if b.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                        let (n, len) = radix_prefix(&b[i..], 16, 2);
                        v.push(n as u8);
                        i += len;
                    }
                    b'u' | b'U' => {
                        let want = if e == b'u' { 4 } else { 8 };
                        let (n, len) = radix_prefix(&b[i..], 16, want);
                        match char::from_u32(n).filter(|_| len == want) {
                            Some(ch) => {
                                let mut buf = [0; 4];
                                v.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                                i += len;
                            }
                            // Invalid escape: PostgreSQL rejects it; keep the text.
                            None => v.extend_from_slice(&[b'\\', e]),
                        }
                    }
                    other => v.push(other),
                }
            }
            _ => {
                v.push(c);
                i += 1;
            }
        }
    }
    let value =
        String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Some((value, i + 1))
}

/// Parses up to `max` leading digits of `radix`; returns the value and the digit count.
fn radix_prefix(b: &[u8], radix: u32, max: usize) -> (u32, usize) {
    let mut n = 0u32;
    let mut len = 0;
    while len < max {
        match b.get(len).and_then(|&c| (c as char).to_digit(radix)) {
            Some(d) => {
                n = n.wrapping_mul(radix).wrapping_add(d);
                len += 1;
            }
            None => break,
        }
    }
    (n, len)
}
