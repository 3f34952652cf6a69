//! [`CopyIn`] (`COPY ... FROM STDIN` on two shards) fed what the shards and the client may
//! send in any interleaving: the shards' answers (CopyInResponse, errors, notices, counts,
//! ReadyForQuery with any status, unknown messages), the client's CopyData (rows with quotes,
//! escapes and stray newlines), CopyDone, CopyFail, Flush, Sync and unknown messages, a
//! CancelRequest and lost shards. No panic; once the client has sent all it sends and every
//! shard its ReadyForQuery the COPY is over; what goes to the client and to the shards stays
//! within a constant factor of what came in.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::sql::{copy_data, shard_map};
use super::{bytes, fuzz_share, message};
use crate::config::KeyType;
use crate::protocol::{split_frame, Frame, PgError};
use crate::session::machine::copy_in::CopyIn;
use crate::session::machine::shard_stream::ShardStream;
use crate::shard::copy::CopySplitter;
use crate::shard::ShardId;

/// What happens next.
#[derive(Debug, Clone)]
enum Ev {
    Shard(usize, Vec<u8>),
    Client(Vec<u8>),
    Cancel,
    Lost(usize),
}

fn shard_message() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        4 => Just(message(b'G', &[0, 0, 2, 0, 0, 0, 0])),
        1 => Just(message(b'G', &[1, 0, 1, 0, 1])),
        2 => Just({
            let mut b = BytesMut::new();
            PgError::error(crate::protocol::sqlstate::UNIQUE_VIOLATION, "duplicate").encode(&mut b);
            b.to_vec()
        }),
        1 => Just(message(b'N', b"SWARNING\0C01000\0Mnote\0\0")),
        3 => Just(message(b'Z', b"I")),
        1 => Just(message(b'Z', b"T")),
        1 => Just(message(b'Z', b"E")),
        2 => (0u64..1000).prop_map(|n| message(b'C', format!("COPY {n}\0").as_bytes())),
        1 => Just(message(b'C', b"INSERT 0 1\0")),
        1 => (any::<u8>(), bytes(12)).prop_map(|(t, b)| message(t, &b)),
    ]
}

fn client_message() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        6 => copy_data().prop_map(|d| message(b'd', &d)),
        1 => Just(message(b'c', b"")),
        1 => Just(message(b'f', b"stop\0")),
        1 => Just(message(b'H', b"")),
        1 => Just(message(b'S', b"")),
        1 => (any::<u8>(), bytes(12)).prop_map(|(t, b)| message(t, &b)),
    ]
}

fn event() -> impl Strategy<Value = Ev> + Clone {
    prop_oneof![
        6 => (0usize..2, shard_message()).prop_map(|(i, m)| Ev::Shard(i, m)),
        6 => client_message().prop_map(Ev::Client),
        1 => Just(Ev::Cancel),
        1 => (0usize..2).prop_map(Ev::Lost),
    ]
}

fn frame(bytes: &[u8]) -> Option<Frame> {
    split_frame(&mut BytesMut::from(bytes), 1 << 20)
        .ok()
        .flatten()
}

#[test]
fn fuzz_copy_in() {
    let map = Arc::new(shard_map());
    fuzz_share(
        "copy_in",
        2,
        (proptest::collection::vec(event(), 0..40), any::<bool>()),
        |(events, by_key)| {
            let key = by_key.then_some((0, KeyType::Bigint));
            let splitter = CopySplitter::new(false, '\t', false, key);
            let mut m = CopyIn::new(
                map.clone(),
                splitter,
                *by_key,
                &[ShardId::new(0), ShardId::new(1)],
            );
            let mut out = BytesMut::new();
            let mut to_shards = [BytesMut::new(), BytesMut::new()];
            let (mut from_shards, mut from_client) = (0, 0);
            for ev in events {
                match ev {
                    // The driver passes a shard's message only while it is wanted, the
                    // client's only while the client is.
                    Ev::Shard(i, b) if m.wants(*i) => {
                        if let Some(f) = frame(b) {
                            from_shards += f.bytes.len();
                            let _ = m.on_message(*i, f, &mut out);
                        }
                    }
                    Ev::Client(b) if m.wants_client() => {
                        if let Some(f) = frame(b) {
                            from_client += f.bytes.len();
                            let _ = m.on_client(f, &mut out);
                        }
                    }
                    Ev::Cancel => {
                        let _ = m.on_cancel_requested();
                    }
                    Ev::Lost(i) => {
                        let _ = m.on_lost(*i, &mut out);
                    }
                    _ => {}
                }
                m.take_outgoing(&mut to_shards);
            }
            // The end: the client's CopyDone, each shard's ReadyForQuery.
            if m.wants_client() {
                let _ = m.on_client(frame(&message(b'c', b"")).unwrap(), &mut out);
            }
            for i in 0..2 {
                if m.progress().running(i) {
                    let z = Frame {
                        tag: b'Z',
                        bytes: Bytes::from(message(b'Z', b"I")),
                    };
                    let _ = m.on_message(i, z, &mut out);
                }
            }
            m.take_outgoing(&mut to_shards);
            assert!(m.finished(), "the COPY is over");
            out.extend_from_slice(&m.take_answer().expect("an answer"));
            assert!(m.take_answer().is_none(), "one answer");
            assert!(
                out.len() <= 8 * from_shards + 4096,
                "{} bytes to the client",
                out.len()
            );
            let sent: usize = to_shards.iter().map(BytesMut::len).sum();
            assert!(
                sent <= 2 * from_client + 4096,
                "{sent} bytes to the shards for {from_client} from the client"
            );
        },
    );
}
