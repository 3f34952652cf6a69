//! A console answer: columns with PgBouncer's names and types, rows of text values, encoded
//! as RowDescription, DataRows and CommandComplete `SHOW`.

use bytes::{BufMut, BytesMut};

/// Type OIDs of the console's columns.
pub const TEXT: u32 = 25;
pub const INT4: u32 = 23;
pub const INT8: u32 = 20;
pub const NUMERIC: u32 = 1700;

/// A column: its name and type OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub oid: u32,
}

/// Columns from (name, type) pairs.
pub fn columns(spec: &[(&'static str, u32)]) -> Vec<Column> {
    spec.iter()
        .map(|&(name, oid)| Column { name, oid })
        .collect()
}

/// An answer to a SHOW command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<Column>,
    /// Each row's values in text format (`None`: NULL), one per column.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// A table with `columns` and no rows yet.
    pub fn new(spec: &[(&'static str, u32)]) -> Table {
        Table {
            columns: columns(spec),
            rows: Vec::new(),
        }
    }

    /// Adds a row (shorter rows are padded with NULLs, longer ones cut to the columns).
    pub fn row(&mut self, mut values: Vec<Option<String>>) {
        values.resize(self.columns.len(), None);
        self.rows.push(values);
    }

    /// The values of the column named `name`, if there is one (for tests and callers that
    /// read an answer back).
    pub fn column(&self, name: &str) -> Option<Vec<Option<&str>>> {
        let i = self.columns.iter().position(|c| c.name == name)?;
        Some(self.rows.iter().map(|r| r[i].as_deref()).collect())
    }

    /// RowDescription, DataRows and CommandComplete `SHOW` into `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(b'T');
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            out.put_slice(c.name.as_bytes());
            out.put_u8(0);
            out.put_i32(0); // table OID
            out.put_i16(0); // column number
            out.put_u32(c.oid);
            out.put_i16(match c.oid {
                INT4 => 4,
                INT8 => 8,
                _ => -1,
            });
            out.put_i32(-1); // type modifier
            out.put_i16(0); // text format
        }
        patch_length(out, start);
        for row in &self.rows {
            let start = out.len();
            out.put_u8(b'D');
            out.put_i32(0);
            out.put_i16(row.len() as i16);
            for v in row {
                match v {
                    Some(v) => {
                        out.put_i32(v.len() as i32);
                        out.put_slice(v.as_bytes());
                    }
                    None => out.put_i32(-1),
                }
            }
            patch_length(out, start);
        }
        crate::protocol::command_complete(out, "SHOW");
    }
}

/// Writes the length of the message that starts at `start` into its header.
fn patch_length(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// A value as text.
pub fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}
