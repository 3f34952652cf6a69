//! Splitting `COPY ... FROM STDIN` data by shard: rows are cut out of the CopyData stream
//! (text or CSV format; a row may span several CopyData messages) and each goes to the shard
//! of its key field. No I/O.

use super::route::ShardMap;
use super::ShardId;
use crate::config::KeyType;
use crate::protocol::PgError;

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowTarget {
    /// One shard.
    Shard(ShardId),
    /// Every shard (the CSV header line; rows of a replicated table).
    All,
}

/// Longest COPY row the splitter buffers while looking for its end.
pub const MAX_COPY_ROW: usize = 64 << 20;

/// Cuts rows out of COPY data and finds their shard.
#[derive(Debug)]
pub struct CopySplitter {
    csv: bool,
    delimiter: u8,
    /// Key field index and type; None: every row goes everywhere (replicated table).
    key: Option<(usize, KeyType)>,
    header: bool,
    buf: Vec<u8>,
    /// Scan position in `buf` and the state there: inside CSV quotes, or after a text-format
    /// backslash (which escapes the next byte, a newline included, as in PostgreSQL).
    scanned: usize,
    in_quotes: bool,
    escaped: bool,
    ended: bool,
}

impl CopySplitter {
    /// A splitter for text (`csv = false`) or CSV data.
    pub fn new(csv: bool, delimiter: char, header: bool, key: Option<(usize, KeyType)>) -> Self {
        CopySplitter {
            csv,
            delimiter: u8::try_from(delimiter).unwrap_or(b'\t'),
            key,
            header: csv && header,
            buf: Vec::new(),
            scanned: 0,
            in_quotes: false,
            escaped: false,
            ended: false,
        }
    }

    /// Adds data and hands every complete row to `out` with its target.
    pub fn push(
        &mut self,
        data: &[u8],
        map: &ShardMap,
        out: &mut impl FnMut(RowTarget, &[u8]),
    ) -> Result<(), PgError> {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let c = self.buf[i];
            if self.escaped {
                self.escaped = false;
            } else if self.csv && c == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if !self.csv && c == b'\\' {
                self.escaped = true;
            } else if c == b'\n' && !self.in_quotes {
                let row = self.buf[start..=i].to_vec();
                self.row(&row, map, out)?;
                start = i + 1;
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_COPY_ROW {
            return Err(PgError::error(
                crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("COPY row longer than {MAX_COPY_ROW} bytes"),
            ));
        }
        Ok(())
    }

    /// Ends the data: a last row without a newline is handed out too.
    pub fn finish(
        &mut self,
        map: &ShardMap,
        out: &mut impl FnMut(RowTarget, &[u8]),
    ) -> Result<(), PgError> {
        if !self.buf.is_empty() {
            let mut row = std::mem::take(&mut self.buf);
            row.push(b'\n');
            self.row(&row, map, out)?;
        }
        Ok(())
    }

    fn row(
        &mut self,
        row: &[u8],
        map: &ShardMap,
        out: &mut impl FnMut(RowTarget, &[u8]),
    ) -> Result<(), PgError> {
        if self.ended {
            return Ok(());
        }
        let content = trim_eol(row);
        if content == b"\\." {
            // End-of-data marker: the proxy ends each shard's COPY itself.
            self.ended = true;
            return Ok(());
        }
        if self.header {
            self.header = false;
            out(RowTarget::All, row);
            return Ok(());
        }
        let Some((index, ty)) = self.key else {
            out(RowTarget::All, row);
            return Ok(());
        };
        let field = if self.csv {
            csv_field(content, self.delimiter, index)
        } else {
            text_field(content, self.delimiter, index)
        };
        let shard = match field {
            // NULL keys live on the first shard (as with INSERT).
            None => ShardId::new(0),
            Some(v) => map
                .shard_of_text(ty, &v)
                .map_err(|e| PgError::error(e.sqlstate(), format!("COPY shard key: {e}")))?,
        };
        out(RowTarget::Shard(shard), row);
        Ok(())
    }
}

fn trim_eol(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

/// Field `index` of a text-format row, unescaped; None for `\N` (NULL) or a missing field.
///
/// As in PostgreSQL, a backslash escapes the next byte, so an escaped delimiter (`a\<TAB>b`)
/// is part of the field.
fn text_field(row: &[u8], delim: u8, index: usize) -> Option<Vec<u8>> {
    let mut field = 0;
    let mut i = 0;
    loop {
        let start = i;
        let mut v = Vec::new();
        while i < row.len() && row[i] != delim {
            let b = row[i];
            i += 1;
            if b != b'\\' {
                v.push(b);
                continue;
            }
            let Some(&e) = row.get(i) else { break };
            i += 1;
            let digit = |at: usize, radix: u32| {
                row.get(at)
                    .filter(|&&c| c != delim)
                    .and_then(|&c| char::from(c).to_digit(radix))
            };
            v.push(match e {
                // `\ooo`: up to three octal digits; `\xhh`: up to two hex digits.
                b'0'..=b'7' => {
                    let mut n = u32::from(e - b'0');
                    for _ in 0..2 {
                        let Some(d) = digit(i, 8) else { break };
                        n = n * 8 + d;
                        i += 1;
                    }
                    n as u8
                }
                b'x' if digit(i, 16).is_some() => {
                    let mut n = 0;
                    for _ in 0..2 {
                        let Some(d) = digit(i, 16) else { break };
                        n = n * 16 + d;
                        i += 1;
                    }
                    n as u8
                }
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                b'v' => 11,
                o => o,
            });
        }
        if field == index {
            return (&row[start..i] != b"\\N").then_some(v);
        }
        if i >= row.len() {
            return None;
        }
        field += 1;
        i += 1;
    }
}

/// Field `index` of a CSV row, unquoted; None for an unquoted empty field (NULL). Quoted
/// sections may appear anywhere in a field (`a"b,c"d` is `ab,cd`), `""` inside them is `"`.
fn csv_field(row: &[u8], delim: u8, index: usize) -> Option<Vec<u8>> {
    let mut field = 0;
    let mut i = 0;
    loop {
        let mut v = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        while i < row.len() {
            let c = row[i];
            i += 1;
            if in_quotes {
                if c == b'"' {
                    if row.get(i) == Some(&b'"') {
                        v.push(b'"');
                        i += 1;
                    } else {
                        in_quotes = false;
                    }
                } else {
                    v.push(c);
                }
            } else if c == b'"' {
                quoted = true;
                in_quotes = true;
            } else if c == delim {
                i -= 1;
                break;
            } else {
                v.push(c);
            }
        }
        if field == index {
            return (quoted || !v.is_empty()).then_some(v);
        }
        if i >= row.len() {
            return None;
        }
        field += 1;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ShardMap {
        crate::shard::two_shard_map()
    }

    fn split(s: &mut CopySplitter, chunks: &[&[u8]]) -> Vec<(RowTarget, Vec<u8>)> {
        let m = map();
        let mut rows = Vec::new();
        let mut out = |t: RowTarget, r: &[u8]| rows.push((t, r.to_vec()));
        for c in chunks {
            s.push(c, &m, &mut out).unwrap();
        }
        s.finish(&m, &mut out).unwrap();
        rows
    }

    #[test]
    fn text_rows_across_chunks_go_to_their_key_shard() {
        let m = map();
        let mut s = CopySplitter::new(false, '\t', false, Some((1, KeyType::Bigint)));
        let rows = split(&mut s, &[b"a\t1\tx\nb\t2", b"\ty\nc\t3\tz", b"\n\\.\n"]);
        assert_eq!(rows.len(), 3);
        for (row, k) in rows.iter().zip([1, 2, 3]) {
            let want = m
                .shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
                .unwrap();
            assert_eq!(row.0, RowTarget::Shard(want));
        }
        assert_eq!(rows[1].1, b"b\t2\ty\n");
    }

    #[test]
    fn csv_quotes_header_and_nulls() {
        let mut s = CopySplitter::new(true, ',', true, Some((0, KeyType::Text)));
        let rows = split(
            &mut s,
            &[
                b"name,v\n\"multi\nline, \"\"quoted\"\"\",1\n",
                b",2\nlast,3",
            ],
        );
        assert_eq!(rows[0].0, RowTarget::All, "the header goes to every shard");
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].1, b"\"multi\nline, \"\"quoted\"\"\",1\n");
        assert_eq!(rows[2].0, RowTarget::Shard(ShardId::new(0)), "NULL key");
        assert_eq!(rows[3].1, b"last,3\n");
        assert_eq!(csv_field(b"\"a,b\",c", b',', 0), Some(b"a,b".to_vec()));
        assert_eq!(csv_field(b"x,,z", b',', 1), None);
        assert_eq!(csv_field(b"x,\"\",z", b',', 1), Some(Vec::new()));
    }

    #[test]
    fn bad_keys_are_errors() {
        let m = map();
        let mut s = CopySplitter::new(false, '\t', false, Some((0, KeyType::Bigint)));
        let mut out = |_: RowTarget, _: &[u8]| {};
        let e = s.push(b"abc\t1\n", &m, &mut out).unwrap_err();
        assert_eq!(e.code, "22P02");
        assert_eq!(text_field(b"a\\tb\tc", b'\t', 0), Some(b"a\tb".to_vec()));
        assert_eq!(text_field(b"\\N\tc", b'\t', 0), None);
    }

    #[test]
    fn regression_text_format_backslash_escapes_newline_and_delimiter() {
        // As in PostgreSQL's text format, a backslash escapes the next byte: an escaped
        // newline does not end the row and an escaped delimiter does not end the field.
        let mut s = CopySplitter::new(false, '\t', false, Some((1, KeyType::Text)));
        let rows = split(&mut s, &[b"a\\\nb\tk1\n", b"x\\", b"\ty\tk2\n"]);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].1, b"a\\\nb\tk1\n");
        assert_eq!(rows[1].1, b"x\\\ty\tk2\n");
        let m = map();
        let owner =
            |k: &str| RowTarget::Shard(m.shard_of_text(KeyType::Text, k.as_bytes()).unwrap());
        assert_eq!(rows[0].0, owner("k1"));
        assert_eq!(rows[1].0, owner("k2"), "`x\\<TAB>y` is one field");
        assert_eq!(text_field(b"x\\\ty\tk2", b'\t', 0), Some(b"x\ty".to_vec()));
        assert_eq!(text_field(b"x\\\ty\tk2", b'\t', 1), Some(b"k2".to_vec()));
        // Octal and hex escapes decode to the byte they name.
        assert_eq!(
            text_field(b"\\101\\x42\\x4\\0", b'\t', 0),
            Some(b"AB\x04\0".to_vec())
        );
        assert_eq!(text_field(b"a\\", b'\t', 0), Some(b"a".to_vec()));
        assert_eq!(text_field(b"a\tb", b'\t', 2), None);
        // `\.` ends the data; `\\.` is data.
        let mut s = CopySplitter::new(false, '\t', false, None);
        let rows = split(&mut s, &[b"\\\\.\n\\.\nlost\n"]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, b"\\\\.\n");
    }

    #[test]
    fn csv_quotes_anywhere_in_a_field() {
        assert_eq!(csv_field(b"a\"b,c\"d,e", b',', 0), Some(b"ab,cd".to_vec()));
        assert_eq!(csv_field(b"a\"b,c\"d,e", b',', 1), Some(b"e".to_vec()));
        assert_eq!(csv_field(b"\"x\"\"y\"", b',', 0), Some(b"x\"y".to_vec()));
        assert_eq!(
            csv_field(b"a,", b',', 1),
            None,
            "an empty last field is NULL"
        );
        assert_eq!(csv_field(b"a,", b',', 2), None);
        assert_eq!(
            csv_field(b"\"unterminated", b',', 0),
            Some(b"unterminated".to_vec())
        );
    }
}
