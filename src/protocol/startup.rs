//! The untagged first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or
//! CancelRequest.

use bytes::{Buf, BytesMut};
use std::collections::BTreeMap;

use super::FrameError;

/// Largest startup packet accepted (as in PostgreSQL's pqcomm.h).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Client asks for TLS.
    Ssl,
    /// Client asks for GSSAPI encryption.
    GssEnc,
    /// Client cancels a running query of another connection.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: Vec<u8>,
    },
    /// A protocol 3 StartupMessage.
    Startup {
        /// Minor protocol version requested.
        minor: u16,
        /// user, database, application_name, options, ...
        params: BTreeMap<String, String>,
    },
    /// A protocol version we do not speak (e.g. 2.0).
    Unsupported(i32),
}

/// Splits the first packet off `buf`.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let packet = match code {
        SSL_REQUEST if len == 8 => StartupPacket::Ssl,
        GSSENC_REQUEST if len == 8 => StartupPacket::GssEnc,
        CANCEL_REQUEST if len >= 16 => StartupPacket::Cancel {
            pid: i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            secret: buf[12..len].to_vec(),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            return Err(FrameError::BadLength(len as i32))
        }
        c if (c >> 16) == 3 => {
            let params = startup_params(&buf[8..len]).ok_or(FrameError::BadLength(len as i32))?;
            buf.advance(len);
            return Ok(Some(StartupPacket::Startup {
                minor: (c & 0xffff) as u16,
                params,
            }));
        }
        c => StartupPacket::Unsupported(c),
    };
    buf.advance(len);
    Ok(Some(packet))
}

/// The `name\0value\0 ... \0` list of a StartupMessage (lossy UTF-8, as PostgreSQL takes
/// bytes in any encoding there). `None` unless every name has a value and the list ends with
/// its terminating NUL exactly at the end of the packet.
fn startup_params(mut b: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let next = |b: &mut &[u8]| -> Option<String> {
        let end = memchr::memchr(0, b)?;
        let s = String::from_utf8_lossy(&b[..end]).into_owned();
        *b = &b[end + 1..];
        Some(s)
    };
    loop {
        let name = next(&mut b)?;
        if name.is_empty() {
            return b.is_empty().then_some(params);
        }
        let value = next(&mut b)?;
        params.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_startup_ssl_and_cancel() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        let mut body = vec![];
        body.extend_from_slice(&196608i32.to_be_bytes());
        body.extend_from_slice(b"user\0app\0database\0db\0\0");
        b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        b.extend_from_slice(&body);
        assert_eq!(split_startup(&mut b).unwrap(), Some(StartupPacket::Ssl));
        match split_startup(&mut b).unwrap() {
            Some(StartupPacket::Startup { params, .. }) => {
                assert_eq!(params["user"], "app");
                assert_eq!(params["database"], "db");
            }
            other => panic!("{other:?}"),
        }
        assert!(b.is_empty());
        let mut c = BytesMut::new();
        c.extend_from_slice(&16i32.to_be_bytes());
        c.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            split_startup(&mut c).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 7,
                secret: 9i32.to_be_bytes().to_vec()
            })
        );
    }

    #[test]
    fn rejects_bad_lengths_and_never_panics_on_garbage() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert!(split_startup(&mut b).is_err());
        let mut b = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        assert!(split_startup(&mut b).is_err());
        for seed in 0u32..2000 {
            let len = 8 + (seed % 40) as usize;
            let mut v: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 97) >> 7) as u8)
                .collect();
            v[0..4].copy_from_slice(&(len as i32).to_be_bytes());
            if seed % 2 == 0 {
                v[4..8].copy_from_slice(&196608i32.to_be_bytes());
            }
            let _ = split_startup(&mut BytesMut::from(&v[..]));
        }
    }
}
