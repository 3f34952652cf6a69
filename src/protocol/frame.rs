//! Message framing: `tag:u8 len:i32 body`, with a size limit. (Server output is walked
//! message by message, without buffering whole rows, by `session::relay`.)

use bytes::{Buf, Bytes, BytesMut};

/// One complete message: its tag and all its bytes (tag and length included).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// The whole message as received.
    pub bytes: Bytes,
}

impl Frame {
    /// The message body (after tag and length).
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }
}

/// Why a byte stream is not a valid message sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4 (it counts itself).
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
}

/// For a partial message, room is reserved for at most as many bytes as have arrived, or this
/// many.
const RESERVE_MIN: usize = 8 * 1024;

/// The one reader of a message header: the tag and the length field (as sent, unchecked)
/// of the message at the start of `buf`, or None if fewer than 5 bytes are there.
pub fn peek_header(buf: &[u8]) -> Option<(u8, i32)> {
    let (&tag, rest) = buf.split_first()?;
    let (len, _) = rest.split_first_chunk::<4>()?;
    Some((tag, i32::from_be_bytes(*len)))
}

/// The body of the whole message `msg` if its tag is `tag` and its length field matches its
/// size.
pub fn whole_body(msg: &[u8], tag: u8) -> Result<&[u8], &'static str> {
    let (t, len) = peek_header(msg).ok_or("truncated message header")?;
    if t != tag {
        return Err("unexpected message tag");
    }
    if i64::from(len) != msg.len() as i64 - 1 {
        return Err("message length field does not match its size");
    }
    Ok(&msg[5..])
}

/// Reads the header of the message at the start of `buf`: (tag, total length with tag).
fn header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some((tag, len)) = peek_header(buf) else {
        return Ok(None);
    };
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some((tag, total)))
}

/// Whether [`split_frame`] would return a message or an error for `buf` (rather than wait for
/// more bytes).
pub fn frame_ready(buf: &[u8]) -> bool {
    match header(buf, usize::MAX) {
        Ok(Some((_, total))) => buf.len() >= total,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The whole messages at the start of `buf` as (tag, body), without consuming them; stops at
/// the first partial or malformed one.
pub fn whole_messages(buf: &[u8]) -> WholeMessages<'_> {
    WholeMessages { rest: buf }
}

/// The iterator of [`whole_messages`].
#[derive(Debug, Clone)]
pub struct WholeMessages<'a> {
    rest: &'a [u8],
}

impl WholeMessages<'_> {
    /// What follows the messages seen so far is not the start of a valid message (a bad
    /// length), as opposed to one that has not fully arrived.
    pub fn malformed(&self) -> bool {
        header(self.rest, usize::MAX).is_err()
    }
}

impl<'a> Iterator for WholeMessages<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (tag, total) = header(self.rest, usize::MAX).ok().flatten()?;
        if self.rest.len() < total {
            return None;
        }
        let (msg, rest) = self.rest.split_at(total);
        self.rest = rest;
        Some((tag, &msg[5..]))
    }
}

/// Splits one complete message off the front of `buf`.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match header(buf, max)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            bytes: buf.split_to(total).freeze(),
        })),
        Some((_, total)) => {
            // Room for what is announced, but never more than what has arrived (or a small
            // minimum) ahead of it: memory grows with the bytes received, not with what a
            // length field claims.
            buf.reserve((total - buf.len()).min(buf.len().max(RESERVE_MIN)));
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Reads a NUL-terminated UTF-8 string from `buf`, advancing past the NUL.
pub fn cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    buf.advance(end + 1);
    Some(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_messages_stop_at_a_partial_or_malformed_one() {
        let buf = [b'S', 0, 0, 0, 4, b'Q', 0, 0, 0, 6, b'x', 0, b'H', 0, 0];
        let v: Vec<_> = super::whole_messages(&buf).collect();
        assert_eq!(v, [(b'S', &b""[..]), (b'Q', &b"x\0"[..])]);
        let bad = [b'S', 0, 0, 0, 2, b'S', 0, 0, 0, 4];
        assert_eq!(super::whole_messages(&bad).count(), 0);
    }

    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn split_frame_waits_for_whole_message_and_enforces_limit() {
        let m = msg(b'Q', b"select 1\0");
        let mut buf = BytesMut::from(&m[..3]);
        assert!(split_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&m[3..]);
        let f = split_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"select 1\0");
        assert!(buf.is_empty());
        let mut big = BytesMut::from(&msg(b'Q', &[b'x'; 100])[..]);
        assert!(matches!(
            split_frame(&mut big, 50),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bad = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert_eq!(
            split_frame(&mut bad, 50).unwrap_err(),
            FrameError::BadLength(2)
        );
    }
}
