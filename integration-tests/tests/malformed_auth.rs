//! Malformed authentication messages against a running proxy (issue 9: password / SASL
//! messages whose length fields lie used to panic the session inside the decoder, so the
//! client saw its connection dropped without an error). Every malformed message must get an
//! ErrorResponse with a proper SQLSTATE, and well-behaved clients keep working meanwhile.

use integration_tests::raw::{self, error_code, read_until};
use integration_tests::{config_text, Proxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// xorshift64*: a seeded generator without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A SASLInitialResponse whose data length field says `n` for `data`.
fn sasl_initial(n: i32, data: &[u8]) -> Vec<u8> {
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&n.to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

/// Logs in as the SCRAM user `app` up to AuthenticationSASL, sends `bad`, and returns the
/// SQLSTATE the proxy answered with (None: the connection ended without an ErrorResponse).
async fn answer_to(port: u16, bad: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&raw::startup("app", "app")).await.unwrap();
    let msgs = read_until(&mut s, b"RE").await;
    assert_eq!(msgs.last().map(|m| m.0), Some(b'R'), "{msgs:?}");
    // Write errors are fine: the proxy may close as soon as it has read enough.
    let _ = s.write_all(bad).await;
    let msgs = read_until(&mut s, b"E").await;
    error_code(&msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_sasl_lengths_get_protocol_violation_errors() {
    let proxy = Proxy::start(&config_text("client_login_timeout_ms = 1000", "size = 2"));
    // The "advance out of bounds": data lengths past the end, negative, huge.
    for n in [1000, 6, -2, i32::MAX, i32::MIN] {
        let code = answer_to(proxy.port, &sasl_initial(n, b"n,,n=")).await;
        assert_eq!(code.as_deref(), Some("08P01"), "data length {n}");
    }
    // No mechanism terminator, no data length at all, an empty message.
    for bad in [
        message(b'p', b"SCRAM-SHA-256"),
        message(b'p', b"SCRAM-SHA-256\0\0\0"),
        message(b'p', b""),
    ] {
        let code = answer_to(proxy.port, &bad).await;
        assert_eq!(code.as_deref(), Some("08P01"), "{bad:?}");
    }

    // A seeded random run: SASLInitialResponses with random lengths, mechanisms and data.
    let seed = std::env::var("SHARDGATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("malformed SASL run: seed {seed} (SHARDGATE_FUZZ_SEED)");
    let mut rng = Rng(seed | 1);
    for i in 0..200 {
        let data: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
        let len = data.len() as i32;
        let n = match rng.below(4) {
            0 => len + 1 + rng.below(1000) as i32,
            1 => -2 - rng.below(i32::MAX as u64) as i32,
            2 => rng.next() as i32,
            _ => len - 1 - rng.below(data.len() as u64) as i32,
        };
        if n == data.len() as i32 || n == -1 && data.is_empty() {
            continue;
        }
        let code = answer_to(proxy.port, &sasl_initial(n, &data)).await;
        assert!(
            matches!(code.as_deref(), Some("08P01" | "28P01")),
            "case {i} (seed {seed}): length {n}, data {data:?}: {code:?}"
        );
    }

    // Meanwhile and afterwards, a real client logs in and queries.
    let c = proxy.app("app").await;
    let v: i32 = c.query_one("select 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}
