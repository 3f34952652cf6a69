//! Decoding and re-encoding of the extended-protocol messages whose statement names the proxy
//! rewrites (Parse, Bind, Describe, Close). Everything else in them is copied as bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::cstr;

/// A decoded Parse: statement name and the rest of the body (query, parameter types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Client's statement name ("" = unnamed).
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Body after the name: query NUL, count and parameter type OIDs, exactly as sent.
    pub rest: &'a [u8],
}

/// Decodes a Parse body.
pub fn parse_body(body: &[u8]) -> Option<Parse<'_>> {
    let mut b = body;
    let name = cstr(&mut b)?;
    let rest = b;
    let query = cstr(&mut b)?;
    if b.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([b[0], b[1]]) as usize;
    if b.len() != 2 + 4 * n {
        return None;
    }
    Some(Parse { name, query, rest })
}

/// Encodes a Parse message with `name` and a body tail from [`Parse::rest`].
pub fn encode_parse(name: &str, rest: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(6 + name.len() + rest.len());
    m.put_u8(b'P');
    m.put_i32((4 + name.len() + 1 + rest.len()) as i32);
    m.put_slice(name.as_bytes());
    m.put_u8(0);
    m.put_slice(rest);
    m.freeze()
}

/// The portal and statement names of a Bind body, and where the rest starts.
pub fn bind_names(body: &[u8]) -> Option<(&str, &str, usize)> {
    let mut b = body;
    let portal = cstr(&mut b)?;
    let stmt = cstr(&mut b)?;
    Some((portal, stmt, body.len() - b.len()))
}

/// The parameter type OIDs of a Parse body tail ([`Parse::rest`]: query, NUL, count, OIDs).
pub fn param_oids(rest: &[u8]) -> Vec<u32> {
    let Some(nul) = rest.iter().position(|&b| b == 0) else {
        return Vec::new();
    };
    let b = &rest[nul + 1..];
    if b.len() < 2 {
        return Vec::new();
    }
    let n = i16::from_be_bytes([b[0], b[1]]).max(0) as usize;
    b[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Re-encodes a Bind with another statement name at the end of `m` (false, and nothing
/// written: the Bind is malformed).
pub fn rename_bind(m: &mut BytesMut, body: &[u8], stmt: &str) -> bool {
    let Some((portal, _, rest_at)) = bind_names(body) else {
        return false;
    };
    let rest = &body[rest_at..];
    m.reserve(7 + portal.len() + stmt.len() + rest.len());
    m.put_u8(b'B');
    m.put_i32((4 + portal.len() + 1 + stmt.len() + 1 + rest.len()) as i32);
    m.put_slice(portal.as_bytes());
    m.put_u8(0);
    m.put_slice(stmt.as_bytes());
    m.put_u8(0);
    m.put_slice(rest);
    true
}

/// Decodes a Describe or Close body: kind (`S` statement or `P` portal) and name.
pub fn target(body: &[u8]) -> Option<(u8, &str)> {
    let (&kind, mut rest) = body.split_first()?;
    let name = cstr(&mut rest)?;
    matches!(kind, b'S' | b'P').then_some((kind, name))
}

/// Encodes a Describe (`tag` = b'D') or Close (`tag` = b'C') of a statement or portal.
pub fn encode_target(tag: u8, kind: u8, name: &str) -> Bytes {
    let mut m = BytesMut::with_capacity(7 + name.len());
    m.put_u8(tag);
    m.put_i32((4 + 1 + name.len() + 1) as i32);
    m.put_u8(kind);
    m.put_slice(name.as_bytes());
    m.put_u8(0);
    m.freeze()
}

/// A message with an empty body (ParseComplete '1', CloseComplete '3', Sync 'S', ...).
pub fn empty_message(tag: u8) -> Bytes {
    Bytes::copy_from_slice(&[tag, 0, 0, 0, 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_bind_round_trip_with_new_names() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&23u32.to_be_bytes());
        let p = parse_body(&body).unwrap();
        assert_eq!((p.name, p.query), ("s1", "select $1"));
        let m = encode_parse("sg_7", p.rest);
        let again = parse_body(&m[5..]).unwrap();
        assert_eq!(
            (again.name, again.query, again.rest),
            ("sg_7", "select $1", p.rest)
        );
        assert_eq!(
            i32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize,
            m.len() - 1
        );

        let bind = b"portal\0s1\0\0\0\0\x01\0\0\0\x0242\0\0".to_vec();
        let (portal, stmt, _) = bind_names(&bind).unwrap();
        assert_eq!((portal, stmt), ("portal", "s1"));
        let mut m = BytesMut::from(&b"before"[..]);
        assert!(rename_bind(&mut m, &bind, "sg_7"));
        let m = m.split_off(6);
        let (portal, stmt, at) = bind_names(&m[5..]).unwrap();
        assert_eq!((portal, stmt), ("portal", "sg_7"));
        assert_eq!(&m[5 + at..], &bind[10..]);
        assert_eq!(
            i32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize,
            m.len() - 1
        );
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert!(parse_body(b"s1\0select 1\0\0\x05").is_none());
        assert!(parse_body(b"no-nul").is_none());
        assert!(target(b"Xname\0").is_none());
        assert_eq!(target(b"Sname\0"), Some((b'S', "name")));
        assert!(bind_names(b"p\0").is_none());
    }
}
