//! The session's stream machines ([`FanOutRead`], its extended-protocol framing,
//! [`CopyOut`] and [`SumWrites`]) fed what shards may send: well-formed answers, corrupted ones, and stray
//! messages (errors, notices, ReadyForQuery with any status, COPY messages, unknown tags) in
//! any interleaving. No panic; once every shard has sent a ReadyForQuery the statement is
//! done; the client's output stays within a constant factor of what the shards sent.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::server::shard_answers;
use super::{bytes, fuzz_share, message};
use crate::protocol::{split_frame, Frame, PgError};
use crate::session::machine::copy_out::CopyOut;
use crate::session::machine::fan_out_read::FanOutRead;
use crate::session::machine::framing::Extended;
use crate::session::machine::shard_stream::ShardStream;
use crate::session::machine::sum_writes::SumWrites;
use crate::sql::analyze::fanout::fan_out_query;

/// A message a shard may send besides its answer.
fn stray() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        Just({
            let mut b = BytesMut::new();
            PgError::error(
                crate::protocol::sqlstate::DIVISION_BY_ZERO,
                "division by zero",
            )
            .encode(&mut b);
            b.to_vec()
        }),
        Just(message(b'N', b"SWARNING\0C01000\0Mnote\0\0")),
        Just(message(b'Z', b"I")),
        Just(message(b'Z', b"T")),
        Just(message(b'Z', b"E")),
        Just(message(b'H', &[0, 0, 1, 0, 0])),
        Just(message(b'd', b"1\n")),
        Just(message(b'c', b"")),
        Just(message(b'C', b"COPY 1\0")),
        Just(message(b'1', b"")),
        Just(message(b'2', b"")),
        Just(message(b't', &[0, 0])),
        (any::<u8>(), bytes(12)).prop_map(|(t, b)| message(t, &b)),
    ]
}

/// Two shards' messages in one interleaving: (shard, message bytes).
fn interleaved() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> + Clone {
    (
        shard_answers(),
        shard_answers(),
        proptest::collection::vec((0usize..2, 0usize..40, stray()), 0..6),
        proptest::collection::vec(any::<bool>(), 0..40),
    )
        .prop_map(|((_, _, a), (_, _, b), strays, order)| {
            let (mut a, mut b) = (a.into_iter(), b.into_iter());
            let mut out = Vec::new();
            let mut order = order.into_iter();
            loop {
                let pick = order.next().unwrap_or(true);
                let next = if pick { a.next().map(|m| (0, m)) } else { None };
                match next
                    .or_else(|| b.next().map(|m| (1, m)))
                    .or_else(|| a.next().map(|m| (0, m)))
                {
                    Some(m) => out.push(m),
                    None => break,
                }
            }
            for (shard, at, msg) in strays {
                let at = at.min(out.len());
                out.insert(at, (shard, msg));
            }
            out
        })
}

/// Feeds `script` to `m` as the driver would (a shard's messages only while it is wanted,
/// the rest afterwards), then a ReadyForQuery from every shard still running.
fn drive(m: &mut dyn ShardStream, script: &[(usize, Vec<u8>)]) -> (usize, usize) {
    let mut out = BytesMut::new();
    let mut given = 0;
    let mut waiting: Vec<(usize, Frame)> = Vec::new();
    let mut frames = Vec::new();
    for (shard, msg) in script {
        let mut buf = BytesMut::from(&msg[..]);
        if let Ok(Some(f)) = split_frame(&mut buf, 1 << 20) {
            given += f.bytes.len();
            frames.push((*shard, f));
        }
    }
    for (shard, f) in frames {
        if m.wants(shard) {
            let _ = m.on_message(shard, f, &mut out);
        } else {
            waiting.push((shard, f));
        }
    }
    // What waited goes in once its shard is wanted again (or never, if it is not).
    for _ in 0..2 {
        for (shard, f) in std::mem::take(&mut waiting) {
            if m.wants(shard) {
                let _ = m.on_message(shard, f, &mut out);
            } else {
                waiting.push((shard, f));
            }
        }
    }
    for shard in 0..2 {
        if m.progress().running(shard) {
            let z = Frame {
                tag: b'Z',
                bytes: Bytes::from(message(b'Z', b"I")),
            };
            if m.wants(shard) {
                let _ = m.on_message(shard, z, &mut out);
            } else {
                let _ = m.on_lost(shard, &mut out);
            }
        }
    }
    assert!(m.progress().is_done(), "every shard answered");
    (given, out.len())
}

#[test]
fn fuzz_stream_machines() {
    let spec = |sql: &str| fan_out_query(sql).expect("plan").spec;
    fuzz_share(
        "stream machines",
        4,
        (interleaved(), 0u8..5),
        |(script, which)| {
            let mut m: Box<dyn ShardStream> = match which {
                0 => Box::new(FanOutRead::new(
                    spec("SELECT v FROM t ORDER BY v"),
                    2,
                    1 << 16,
                )),
                1 => Box::new(FanOutRead::new(spec("SELECT sum(v) FROM t"), 2, 1 << 16)),
                2 => Box::new(
                    FanOutRead::new(spec("SELECT v FROM t LIMIT 3"), 2, 1 << 16).extended(
                        Extended {
                            parse_complete: true,
                            describe: Some(b'S'),
                            result_formats: vec![1],
                            param_types: vec![],
                        },
                    ),
                ),
                3 => Box::new(CopyOut::new(2)),
                _ => Box::new(SumWrites::new(2, false, 1 << 16)),
            };
            let (given, out) = drive(m.as_mut(), script);
            assert!(out <= 8 * given + 4096, "{out} bytes out for {given} in");
        },
    );
}
