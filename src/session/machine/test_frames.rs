//! Server messages for the machines' unit tests.

use bytes::{Bytes, BytesMut};

use crate::protocol::{split_frame, Frame, PgError};

/// A message with `tag` and `body`.
pub fn msg(tag: u8, body: &[u8]) -> Frame {
    let mut b = vec![tag];
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    Frame {
        tag,
        bytes: Bytes::from(b),
    }
}

/// A CommandComplete with tag `t`.
pub fn tag(t: &str) -> Frame {
    msg(b'C', format!("{t}\0").as_bytes())
}

/// An ErrorResponse with SQLSTATE `code`, as bytes.
pub fn error_bytes(code: &'static str) -> Bytes {
    let mut b = BytesMut::new();
    PgError::error(code, "boom").encode(&mut b);
    b.freeze()
}

/// An ErrorResponse with SQLSTATE `code`.
pub fn error(code: &'static str) -> Frame {
    Frame {
        tag: b'E',
        bytes: error_bytes(code),
    }
}

/// A ReadyForQuery with status byte `s`.
pub fn ready(s: u8) -> Frame {
    msg(b'Z', &[s])
}

/// Messages as short strings: CopyData with its payload, CommandComplete with its tag,
/// ErrorResponse with its SQLSTATE, others by their type.
pub fn seen(out: &mut BytesMut) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(f) = split_frame(out, usize::MAX).unwrap() {
        let body = String::from_utf8_lossy(f.body())
            .trim_end_matches('\0')
            .to_string();
        v.push(match f.tag {
            b'd' | b'C' => format!("{}:{body}", f.tag as char),
            b'E' => format!("E:{}", crate::protocol::error_fields(f.body()).0),
            t => (t as char).to_string(),
        });
    }
    v
}
