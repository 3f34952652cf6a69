//! [`Extended`]: how a merged answer is framed for a client that asked through the extended
//! protocol (`[Parse] Bind [Describe] Execute Sync`). The shards are asked for text results
//! (what the merge reads); the merged rows are converted once to the result formats of the
//! client's Bind, and the client gets ParseComplete, BindComplete and its Describe's answer
//! in front of the first row, as one server would send them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::fanout::binary::text_to_binary;
use crate::fanout::wire::{encode_data_row, parse_data_row, RowDescription};
use crate::protocol::{empty_message, split_frame, sqlstate, PgError};

/// What the client's batch asked for.
#[derive(Debug, Clone, Default)]
pub struct Extended {
    /// The batch has a Parse: ParseComplete comes first.
    pub parse_complete: bool,
    /// Describe of the statement (`S`) or portal (`P`), if any.
    pub describe: Option<u8>,
    /// The result-format codes of the client's Bind.
    pub result_formats: Vec<i16>,
    /// The statement's parameter types, for a ParameterDescription no shard sent.
    pub param_types: Vec<u32>,
}

/// [`Extended`] while the answer is relayed.
#[derive(Debug)]
pub struct Framing {
    ext: Extended,
    /// The first shard's ParameterDescription.
    param_desc: Option<Bytes>,
    /// The columns in the client's formats, once the merged RowDescription went out.
    columns: Option<RowDescription>,
    binary: bool,
    started: bool,
}

fn conversion_error(name: &str, oid: u32) -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "binary format for column \"{name}\" (type oid {oid}) is not supported for a \
             statement on several shards"
        ),
    )
    .with_hint("ask for this column in text format")
}

impl Framing {
    /// Framing for the batch `ext` describes.
    pub fn new(ext: Extended) -> Framing {
        Framing {
            ext,
            param_desc: None,
            columns: None,
            binary: false,
            started: false,
        }
    }

    /// Keeps the first ParameterDescription a shard sent.
    pub fn param_desc(&mut self, msg: Bytes) {
        self.param_desc.get_or_insert(msg);
    }

    /// Whether ParseComplete (and BindComplete) went to the client.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Moves the merge's output in `merged` (notices, RowDescription, DataRows,
    /// CommandComplete, or an ErrorResponse) to the client's `out`, framed and converted.
    pub fn relay(&mut self, merged: &mut BytesMut, out: &mut BytesMut) -> Result<(), PgError> {
        let bad =
            |e: &str| PgError::error(sqlstate::INTERNAL_ERROR, format!("bad merged message: {e}"));
        while let Some(f) = split_frame(merged, usize::MAX).map_err(|e| bad(&e.to_string()))? {
            match f.tag {
                b'T' => {
                    let desc = RowDescription::parse(&f.bytes).map_err(bad)?;
                    self.start(desc, out)?;
                }
                b'D' if self.binary => self.convert(&f.bytes, out)?,
                // A statement without rows (a write without RETURNING).
                b'C' if !self.started => {
                    self.preamble(out);
                    match self.ext.describe {
                        Some(b'S') => {
                            self.parameter_description(out);
                            out.extend_from_slice(&empty_message(b'n'));
                        }
                        Some(_) => out.extend_from_slice(&empty_message(b'n')),
                        None => {}
                    }
                    out.extend_from_slice(&f.bytes);
                }
                _ => out.extend_from_slice(&f.bytes),
            }
        }
        Ok(())
    }

    /// ParseComplete, BindComplete and the Describe's answer for columns `desc`.
    fn start(&mut self, desc: RowDescription, out: &mut BytesMut) -> Result<(), PgError> {
        let columns = desc
            .clone()
            .with_result_formats(&self.ext.result_formats)
            .map_err(|e| {
                PgError::error(sqlstate::PROTOCOL_VIOLATION, format!("invalid Bind: {e}"))
            })?;
        self.preamble(out);
        match self.ext.describe {
            Some(b'S') => {
                self.parameter_description(out);
                // A statement's description has no formats yet (all zero), as Postgres's.
                desc.encode(out);
            }
            Some(_) => columns.encode(out),
            None => {}
        }
        self.binary = columns.fields.iter().any(|f| f.format != 0);
        self.columns = Some(columns);
        Ok(())
    }

    /// ParseComplete (if the batch parsed) and BindComplete.
    fn preamble(&mut self, out: &mut BytesMut) {
        if self.ext.parse_complete {
            out.extend_from_slice(&empty_message(b'1'));
        }
        out.extend_from_slice(&empty_message(b'2'));
        self.started = true;
    }

    /// The shards' ParameterDescription, or one of the batch's parameter types.
    fn parameter_description(&self, out: &mut BytesMut) {
        match &self.param_desc {
            Some(t) => out.extend_from_slice(t),
            None => {
                let types = &self.ext.param_types;
                out.put_u8(b't');
                out.put_i32(6 + 4 * types.len() as i32);
                out.put_i16(types.len() as i16);
                for t in types {
                    out.put_u32(*t);
                }
            }
        }
    }

    /// A text-format merged row in the client's formats.
    fn convert(&self, row: &Bytes, out: &mut BytesMut) -> Result<(), PgError> {
        let Some(desc) = &self.columns else {
            return Err(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "a row before its description",
            ));
        };
        let values = parse_data_row(row, desc.fields.len()).map_err(|e| {
            PgError::error(sqlstate::INTERNAL_ERROR, format!("bad merged DataRow: {e}"))
        })?;
        let mut converted: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
        for (v, f) in values.iter().zip(&desc.fields) {
            converted.push(match v {
                None => None,
                Some(v) if f.format == 0 => Some(v.to_vec()),
                Some(v) => Some(
                    text_to_binary(f.type_oid, v)
                        .ok_or_else(|| conversion_error(&f.name, f.type_oid))?,
                ),
            });
        }
        encode_data_row(out, converted.iter().map(|v| v.as_deref()));
        Ok(())
    }
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
