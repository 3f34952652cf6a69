//! Minimal raw-protocol client for feeding the proxy malformed input.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A StartupMessage for protocol 3.0.
pub fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", user, "database", db] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

/// Reads messages until one with a tag in `until` (returned) or EOF (`None`).
/// Returns all (tag, body) pairs read.
pub async fn read_until(s: &mut TcpStream, until: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; 5];
        if s.read_exact(&mut hdr).await.is_err() {
            return out;
        }
        let len = i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if s.read_exact(&mut body).await.is_err() {
            return out;
        }
        let done = until.contains(&hdr[0]);
        out.push((hdr[0], body));
        if done {
            return out;
        }
    }
}

/// The SQLSTATE of the first ErrorResponse among `msgs`.
pub fn error_code(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    let mut rest = &body[..];
    while let Some((&t, tail)) = rest.split_first() {
        let end = tail.iter().position(|&b| b == 0)?;
        if t == b'C' {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Connects and logs in as a trust-authenticated user; returns the stream at ReadyForQuery.
pub async fn login_trust(port: u16, user: &str, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup(user, db)).await.unwrap();
    let msgs = read_until(&mut s, b"ZE").await;
    assert_eq!(
        msgs.last().map(|m| m.0),
        Some(b'Z'),
        "login failed: {msgs:?}"
    );
    s
}

/// True when the peer has closed the connection (EOF within 5 s).
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}
