//! The three backend messages a merge reads and writes: RowDescription ('T'), DataRow ('D') and
//! CommandComplete ('C'). Decoding is zero-copy and checks every length (a malformed message
//! is an error, never a panic); encoding uses pgwire's message types.

use bytes::{Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription as PgRowDescription};
use pgwire::messages::response::CommandComplete;
use pgwire::messages::Message;

use crate::protocol::{cstr, DataRowError, DataRowValues};

/// Format code of a text-format column.
pub const FORMAT_TEXT: i16 = 0;
/// Format code of a binary-format column.
pub const FORMAT_BINARY: i16 = 1;

fn put<M: Message>(buf: &mut BytesMut, m: M) {
    // Encoding a well-formed message into a growable buffer cannot fail.
    let _ = m.encode(buf);
}

/// Reads a big-endian integer of `N` bytes off the front of `buf`.
fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

/// Returns the body of a message with the given tag, checking the length field.
fn body(msg: &[u8], tag: u8) -> Result<&[u8], &'static str> {
    if msg.is_empty() {
        return Err("empty message");
    }
    crate::protocol::whole_body(msg, tag)
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name as the client sees it.
    pub name: String,
    /// OID of the table the column comes from, or 0.
    pub table_oid: u32,
    /// Attribute number in that table, or 0.
    pub column: i16,
    /// OID of the column's data type (decides how values compare and add up).
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_len: i16,
    /// Type modifier (e.g. numeric precision and scale), -1 when none.
    pub type_mod: i32,
    /// [`FORMAT_TEXT`] or [`FORMAT_BINARY`].
    pub format: i16,
}

/// A decoded RowDescription ('T') message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowDescription {
    /// The columns, in order.
    pub fields: Vec<Field>,
}

impl RowDescription {
    /// Decodes a whole 'T' message (tag and length included).
    pub fn parse(msg: &[u8]) -> Result<RowDescription, &'static str> {
        let mut b = body(msg, b'T')?;
        let n = i16::from_be_bytes(take::<2>(&mut b).ok_or("truncated RowDescription")?);
        let n = usize::try_from(n).map_err(|_| "negative column count")?;
        let mut fields = Vec::with_capacity(n.min(b.len() / 19));
        for _ in 0..n {
            let name = cstr(&mut b).ok_or("bad column name")?.to_string();
            let short = "truncated RowDescription field";
            let table_oid = u32::from_be_bytes(take::<4>(&mut b).ok_or(short)?);
            let column = i16::from_be_bytes(take::<2>(&mut b).ok_or(short)?);
            let type_oid = u32::from_be_bytes(take::<4>(&mut b).ok_or(short)?);
            let type_len = i16::from_be_bytes(take::<2>(&mut b).ok_or(short)?);
            let type_mod = i32::from_be_bytes(take::<4>(&mut b).ok_or(short)?);
            let format = i16::from_be_bytes(take::<2>(&mut b).ok_or(short)?);
            if format != FORMAT_TEXT && format != FORMAT_BINARY {
                return Err("unknown format code");
            }
            fields.push(Field {
                name,
                table_oid,
                column,
                type_oid,
                type_len,
                type_mod,
                format,
            });
        }
        if !b.is_empty() {
            return Err("trailing bytes after RowDescription fields");
        }
        Ok(RowDescription { fields })
    }

    /// Applies a Bind message's result-format codes (none: all text; one: all columns; else
    /// one per column), for a RowDescription that came from Describe of a statement (whose
    /// format codes are always zero).
    pub fn with_result_formats(mut self, codes: &[i16]) -> Result<RowDescription, &'static str> {
        let n = self.fields.len();
        if codes.len() > 1 && codes.len() != n {
            return Err("result format count does not match the column count");
        }
        for (i, f) in self.fields.iter_mut().enumerate() {
            let code = match codes {
                [] => FORMAT_TEXT,
                [one] => *one,
                many => many[i],
            };
            if code != FORMAT_TEXT && code != FORMAT_BINARY {
                return Err("unknown format code");
            }
            f.format = code;
        }
        Ok(self)
    }

    /// Appends the 'T' message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                FieldDescription::new(
                    f.name.clone(),
                    f.table_oid as i32,
                    f.column,
                    f.type_oid,
                    f.type_len,
                    f.type_mod,
                    f.format,
                )
            })
            .collect();
        put(buf, PgRowDescription::new(fields));
    }
}

/// The column values of a DataRow ('D'): `None` is SQL NULL. Values share the message's
/// buffer.
pub fn parse_data_row(msg: &Bytes, columns: usize) -> Result<Vec<Option<Bytes>>, &'static str> {
    let b = body(msg, b'D')?;
    let (n, mut values) = DataRowValues::new(b).map_err(DataRowError::as_str)?;
    if n != columns {
        return Err("DataRow column count differs from RowDescription");
    }
    let mut out = Vec::with_capacity(columns.min(b.len() / 4));
    for v in values.by_ref() {
        out.push(v.map_err(DataRowError::as_str)?.map(|v| msg.slice_ref(v)));
    }
    values.finish().map_err(DataRowError::as_str)?;
    Ok(out)
}

/// Appends a DataRow built from `values` (`None` = NULL) to `buf`.
pub fn encode_data_row<'a>(
    buf: &mut BytesMut,
    values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
) {
    let count = values.len() as i16;
    let mut data = BytesMut::new();
    for v in values {
        match v {
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                data.extend_from_slice(v);
            }
        }
    }
    put(buf, DataRow::new(data, count));
}

/// A decoded CommandComplete tag: the command word(s) and the row count, if the command
/// reports one (`SELECT 5`, `INSERT 0 5`, `UPDATE 5`, `DELETE 5`, `MERGE 5`, `FETCH 5`,
/// `MOVE 5`, `COPY 5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    /// The tag without its count (`SELECT`, `INSERT`, `CREATE TABLE`, ...).
    pub command: String,
    /// The row count, for commands that report one.
    pub rows: Option<u64>,
}

/// Commands whose tag ends in a row count.
const COUNTED: [&str; 8] = [
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "FETCH", "MOVE", "COPY",
];

impl CommandTag {
    /// Decodes a whole 'C' message (tag and length included).
    pub fn parse(msg: &[u8]) -> Result<CommandTag, &'static str> {
        let mut b = body(msg, b'C')?;
        let tag = cstr(&mut b).ok_or("bad command tag")?;
        if !b.is_empty() {
            return Err("trailing bytes after command tag");
        }
        Self::from_text(tag)
    }

    /// The row count of a whole 'C' message, without decoding it into a tag (0 for a
    /// command that reports none or a malformed message): what a statement returned or
    /// changed, for per-shape statistics.
    pub fn rows_in(msg: &[u8]) -> u64 {
        let Ok(b) = body(msg, b'C') else { return 0 };
        let tag = &b[..memchr::memchr(0, b).unwrap_or(b.len())];
        let first = &tag[..memchr::memchr(b' ', tag).unwrap_or(tag.len())];
        if !COUNTED.iter().any(|c| c.as_bytes() == first) {
            return 0;
        }
        let last = &tag[memchr::memrchr(b' ', tag).map_or(0, |p| p + 1)..];
        let digits = last.strip_prefix(b"+").unwrap_or(last);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return 0;
        }
        let number = digits.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        number.unwrap_or(0)
    }

    /// Decodes the text of a tag, e.g. `INSERT 0 5`.
    pub fn from_text(tag: &str) -> Result<CommandTag, &'static str> {
        let mut words = tag.split(' ');
        let first = words.next().unwrap_or_default();
        if !COUNTED.contains(&first) {
            return Ok(CommandTag {
                command: tag.to_string(),
                rows: None,
            });
        }
        let rest: Vec<&str> = words.collect();
        let count = match (first, rest.as_slice()) {
            ("INSERT", [_oid, n]) => n,
            ("INSERT", _) => return Err("bad INSERT tag"),
            (_, [n]) => n,
            // `SELECT` alone (no count) does not occur in protocol 3, but keep it verbatim.
            (_, []) => {
                return Ok(CommandTag {
                    command: tag.to_string(),
                    rows: None,
                })
            }
            _ => return Err("bad command tag"),
        };
        let rows = count
            .parse::<u64>()
            .map_err(|_| "bad row count in command tag")?;
        Ok(CommandTag {
            command: first.to_string(),
            rows: Some(rows),
        })
    }

    /// The tag text (`INSERT 0 n` for inserts: the OID field is always 0 since Postgres 12).
    pub fn text(&self) -> String {
        match (self.command.as_str(), self.rows) {
            ("INSERT", Some(n)) => format!("INSERT 0 {n}"),
            (c, Some(n)) => format!("{c} {n}"),
            (c, None) => c.to_string(),
        }
    }

    /// Appends the 'C' message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        put(buf, CommandComplete::new(self.text()));
    }
}

/// What a whole answer (`out`: complete server messages) reports for per-shape statistics:
/// its CommandCompletes and their rows, and how many came before its first ErrorResponse.
pub fn answered_in(out: &[u8]) -> crate::admin::queries::Answered {
    let mut a = crate::admin::queries::Answered::default();
    let mut at = 0;
    while let Some((tag, len)) = crate::protocol::peek_header(&out[at..]) {
        let end = at.saturating_add(1 + len.max(4) as usize).min(out.len());
        match tag {
            b'C' => a.complete(&out[at..end]),
            b'E' => a.error(&out[at..end]),
            _ => {}
        }
        if end <= at {
            break;
        }
        at = end;
    }
    a
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Builders for hand-made backend messages.
    use super::*;

    /// A field description with a type OID and format.
    pub fn field(name: &str, type_oid: u32, format: i16) -> Field {
        let type_len = match type_oid {
            16 => 1,
            21 => 2,
            23 | 26 | 700 | 1082 => 4,
            20 | 701 | 1083 | 1114 | 1184 => 8,
            2950 => 16,
            _ => -1,
        };
        Field {
            name: name.to_string(),
            table_oid: 0,
            column: 0,
            type_oid,
            type_len,
            type_mod: -1,
            format,
        }
    }

    /// A 'T' message of text-format columns `(name, type_oid)`.
    pub fn row_desc(cols: &[(&str, u32)]) -> Bytes {
        let d = RowDescription {
            fields: cols
                .iter()
                .map(|&(n, t)| field(n, t, FORMAT_TEXT))
                .collect(),
        };
        let mut b = BytesMut::new();
        d.encode(&mut b);
        b.freeze()
    }

    /// A 'D' message of raw values.
    pub fn data_row_raw(values: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        encode_data_row(&mut b, values.iter().copied());
        b.freeze()
    }

    /// A 'D' message of text values.
    pub fn data_row(values: &[Option<&str>]) -> Bytes {
        let raw: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
        data_row_raw(&raw)
    }

    /// A 'C' message.
    pub fn complete(tag: &str) -> Bytes {
        let mut b = BytesMut::new();
        put(&mut b, CommandComplete::new(tag.to_string()));
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn row_description_round_trips() {
        let m = row_desc(&[("id", 23), ("name", 25)]);
        let d = RowDescription::parse(&m).unwrap();
        assert_eq!(d.fields.len(), 2);
        assert_eq!(
            (d.fields[1].name.as_str(), d.fields[1].type_oid),
            ("name", 25)
        );
        let mut again = BytesMut::new();
        d.encode(&mut again);
        assert_eq!(&again[..], &m[..]);
        let bin = d.with_result_formats(&[1]).unwrap();
        assert!(bin.fields.iter().all(|f| f.format == FORMAT_BINARY));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let m = row_desc(&[("id", 23)]);
        for cut in 0..m.len() {
            assert!(RowDescription::parse(&m[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = m.to_vec();
        long.push(0);
        assert!(RowDescription::parse(&long).is_err());
        let r = data_row(&[Some("1"), None, Some("abc")]);
        for cut in 0..r.len() {
            assert!(parse_data_row(&r.slice(..cut), 3).is_err(), "cut at {cut}");
        }
        assert!(parse_data_row(&r, 2).is_err());
        // A value length that runs past the end (with a consistent message length).
        let bad = Bytes::from_static(&[b'D', 0, 0, 0, 10, 0, 1, 0, 0, 0, 9]);
        assert!(parse_data_row(&bad, 1).is_err());
        assert!(CommandTag::parse(&complete("INSERT 5")).is_err());
        assert!(CommandTag::parse(&complete("SELECT x")).is_err());
        assert!(CommandTag::parse(&row_desc(&[])).is_err());
    }

    #[test]
    fn data_row_values_share_the_buffer() {
        let r = data_row(&[Some("1"), None, Some("")]);
        let v = parse_data_row(&r, 3).unwrap();
        assert_eq!(v[0].as_deref(), Some(&b"1"[..]));
        assert_eq!(v[1], None);
        assert_eq!(v[2].as_deref(), Some(&b""[..]));
    }

    #[test]
    fn command_tags() {
        let t = CommandTag::parse(&complete("INSERT 0 7")).unwrap();
        assert_eq!((t.command.as_str(), t.rows), ("INSERT", Some(7)));
        assert_eq!(t.text(), "INSERT 0 7");
        let t = CommandTag::parse(&complete("SELECT 3")).unwrap();
        assert_eq!(t.text(), "SELECT 3");
        let t = CommandTag::parse(&complete("CREATE TABLE")).unwrap();
        assert_eq!((t.command.as_str(), t.rows), ("CREATE TABLE", None));
        let mut b = BytesMut::new();
        t.encode(&mut b);
        assert_eq!(&b[..], &complete("CREATE TABLE")[..]);
    }
}
