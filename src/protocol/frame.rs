//! Message framing: `tag:u8 len:i32 body`, with a size limit, and a streaming scanner for
//! server output that finds ReadyForQuery without buffering whole messages.

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

/// Reads the header of the message at the start of `buf`: (tag, total length with tag).
fn header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some((buf[0], total)))
}

/// Splits one complete message off the front of `buf`.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match header(buf, max)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some(Frame {
            tag,
            bytes: buf.split_to(total).freeze(),
        })),
        Some((_, total)) => {
            buf.reserve(total - buf.len());
            Ok(None)
        }
        None => Ok(None),
    }
}

/// What the scanner found in server output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEvent {
    /// ReadyForQuery with its transaction status byte (`I`, `T` or `E`); `end` is the offset just
    /// past it in the scanned buffer.
    Ready {
        /// Transaction status.
        status: u8,
        /// Offset just past the message.
        end: usize,
    },
    /// Start of a message the caller wants to see whole (see [`Scanner::watch`]).
    Watched {
        /// Message tag.
        tag: u8,
        /// Offset of the message start.
        start: usize,
    },
}

/// Walks server output chunk by chunk, keeping only message boundaries in mind, so that large
/// DataRows stream through without being buffered whole.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Bytes of the current message body still to skip.
    skip: usize,
}

impl Scanner {
    /// Scans `buf` from offset 0 and returns how many bytes may be forwarded and what was found.
    /// Bytes past the returned count belong to an incomplete header or an incomplete watched
    /// message and must be kept for the next call. `watch` names tags (besides `Z`) whose whole
    /// message must be present before they are reported. Scanning stops after the first event.
    pub fn scan(
        &mut self,
        buf: &[u8],
        watch: &[u8],
    ) -> Result<(usize, Option<ScanEvent>), FrameError> {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                self.skip -= n;
                pos += n;
                if self.skip > 0 {
                    return Ok((pos, None));
                }
            }
            let rest = &buf[pos..];
            let Some((tag, total)) = header(rest, usize::MAX)? else {
                return Ok((pos, None));
            };
            if tag == b'Z' || watch.contains(&tag) {
                if rest.len() < total {
                    return Ok((pos, None));
                }
                let ev = if tag == b'Z' && total == 6 {
                    ScanEvent::Ready {
                        status: rest[5],
                        end: pos + total,
                    }
                } else if tag == b'Z' {
                    return Err(FrameError::BadLength(total as i32 - 1));
                } else {
                    ScanEvent::Watched { tag, start: pos }
                };
                return Ok((pos + total, Some(ev)));
            }
            self.skip = total - 5;
            pos += 5;
        }
    }

    /// True when the scanner is at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
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

    #[test]
    fn scanner_finds_ready_across_chunks_without_whole_rows() {
        let mut out = msg(b'D', &[7u8; 1000]);
        out.extend(msg(b'C', b"SELECT 1\0"));
        out.extend(msg(b'Z', b"T"));
        out.extend(msg(b'Z', b"I"));
        let mut sc = Scanner::default();
        let mut consumed = 0;
        let mut events = vec![];
        // feed in 7-byte chunks, keeping unconsumed tails like the relay does
        let mut pending: Vec<u8> = vec![];
        for chunk in out.chunks(7) {
            pending.extend_from_slice(chunk);
            loop {
                let (n, ev) = sc.scan(&pending, &[]).unwrap();
                consumed += n;
                pending.drain(..n);
                match ev {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
        }
        assert_eq!(consumed, out.len());
        let statuses: Vec<u8> = events
            .iter()
            .map(|e| match e {
                ScanEvent::Ready { status, .. } => *status,
                _ => 0,
            })
            .collect();
        assert_eq!(statuses, vec![b'T', b'I']);
    }

    #[test]
    fn scanner_rejects_garbage_lengths() {
        let mut sc = Scanner::default();
        assert!(sc.scan(&[b'D', 0, 0, 0, 1, 0], &[]).is_err());
    }
}
