//! Server bytes: RowDescription / DataRow / CommandComplete decoding, the multi-shard merge
//! that consumes them, text-to-binary conversion, error fields, and the backend's own
//! decoders (authentication requests, BackendKeyData, ParameterStatus, DataRow text).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{bounded, bytes, corrupted, cstring, fuzz, fuzz_share, lying_i32, message};
use crate::backend::{auth_request, data_row_texts, key_data, parameter_status};
use crate::fanout::binary::text_to_binary;
use crate::fanout::oid;
use crate::fanout::wire::parse_data_row;
use crate::fanout::{Agg, CommandTag, MergeColumn, MergePlan, Merger, RowDescription, SortKey};
use crate::protocol::{error_fields, error_severity, query_text};

const OIDS: [u32; 19] = [
    oid::BOOL,
    oid::BYTEA,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::OID,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::DATE,
    oid::TIME,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::NUMERIC,
    oid::UUID,
    3802,
];

fn type_oid() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![proptest::sample::select(OIDS.to_vec()), any::<u32>()]
}

/// Text a server might send for a value, or something close to it.
fn value_text() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        bytes(24),
        "-?[0-9]{0,30}(\\.[0-9]{0,30})?(e-?[0-9]{1,3})?".prop_map(String::into_bytes),
        "(NaN|-?Infinity|infinity|-infinity|t|f|\\\\x[0-9a-f]{0,8})".prop_map(String::into_bytes),
        "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}( [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{1,8})?)?([+-][0-9]{1,2}(:[0-9]{2})?)?( BC)?"
            .prop_map(String::into_bytes),
        "[0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{1,9})?)?".prop_map(String::into_bytes),
        "[0-9a-fA-F-]{30,40}".prop_map(String::into_bytes),
    ]
}

/// A RowDescription with these columns.
fn row_description(cols: &[(Vec<u8>, u32, i16)]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for (name, oid, format) in cols {
        b.extend_from_slice(&cstring(name));
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
    }
    message(b'T', &b)
}

/// A DataRow with these values (`None`: NULL).
fn data_row(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    message(b'D', &b)
}

fn columns() -> impl Strategy<Value = Vec<(Vec<u8>, u32, i16)>> + Clone {
    proptest::collection::vec(
        (
            bytes(6),
            type_oid(),
            prop_oneof![Just(0i16), Just(1), any::<i16>()],
        ),
        0..4,
    )
}

fn server_messages() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        columns().prop_map(|c| row_description(&c)),
        proptest::collection::vec(proptest::option::of(value_text()), 0..4)
            .prop_map(|v| data_row(&v)),
        "(SELECT|INSERT|UPDATE|DELETE|COPY|FETCH|MOVE|MERGE|CREATE TABLE)( [0-9]{0,22}){0,3}"
            .prop_map(|t| message(b'C', &cstring(t.as_bytes()))),
        (lying_i32(), bytes(20)).prop_map(|(n, tail)| {
            let mut b = (n as i16).to_be_bytes().to_vec();
            b.extend_from_slice(&tail);
            message(b'D', &b)
        }),
    ]
}

#[test]
fn fuzz_wire_messages() {
    let input = prop_oneof![bytes(80), corrupted(server_messages())];
    fuzz("wire", (input, 0usize..6), |(msg, columns)| {
        let n = msg.len();
        if let Ok(d) = bounded(n, 8, 256, || RowDescription::parse(msg)) {
            let mut again = BytesMut::new();
            d.encode(&mut again);
            assert_eq!(RowDescription::parse(&again).as_ref(), Ok(&d));
            let _ = d.clone().with_result_formats(&[1]);
            let _ = d.with_result_formats(&[0, 1, 0]);
        }
        let frozen = Bytes::copy_from_slice(msg);
        for cols in [*columns, u16::MAX as usize] {
            bounded(n, 16, 256, || parse_data_row(&frozen, cols)).ok();
        }
        let rows = CommandTag::rows_in(msg);
        if let Ok(tag) = bounded(n, 8, 256, || CommandTag::parse(msg)) {
            // The statistics' count, read without decoding, is the decoder's.
            assert_eq!(rows, tag.rows.unwrap_or(0));
            assert_eq!(CommandTag::from_text(&tag.text()).ok(), Some(tag));
        }
        bounded(n, 8, 256, || {
            CommandTag::from_text(&String::from_utf8_lossy(msg))
        })
        .ok();
        bounded(n, 4, 256, || error_fields(msg));
        error_severity(msg);
        crate::protocol::error_code(msg);
        // What per-shape statistics read of a whole answer: an error comes after the
        // commands completed before it.
        let a = bounded(n, 4, 256, || crate::fanout::answered_in(msg));
        assert!(a.error_at.is_none_or(|e| e <= a.completed));
        assert_eq!(a.class.is_some(), a.error_at.is_some());
        query_text(msg);
        // The backend's own decoders.
        bounded(n, 0, 0, || auth_request(msg));
        bounded(n, 0, 0, || key_data(msg));
        bounded(n, 4, 128, || parameter_status(msg));
        bounded(n, 40, 256, || data_row_texts(msg));
    });
}

#[test]
fn regression_data_row_count_does_not_preallocate() {
    let msg = Bytes::from(message(b'D', &i16::MAX.to_be_bytes()));
    let (r, allocated) = super::measure(|| parse_data_row(&msg, i16::MAX as usize));
    assert!(r.is_err());
    assert!(allocated < 1024, "allocated {allocated} bytes");
}

#[test]
fn fuzz_text_to_binary() {
    fuzz(
        "text_to_binary",
        (type_oid(), value_text()),
        |(oid, text)| {
            if let Some(v) = bounded(text.len(), 8, 256, || text_to_binary(*oid, text)) {
                assert!(v.len() <= 8 + 2 * text.len() + 16);
            }
        },
    );
}

/// Shards' answers for a merge: a description, rows and a tag, each possibly corrupted.
pub(super) fn shard_answers() -> impl Strategy<Value = (u32, i16, Vec<Vec<u8>>)> + Clone {
    (
        proptest::sample::select(OIDS.to_vec()),
        prop_oneof![Just(0i16), Just(1)],
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::option::of(value_text()),
                1 => proptest::option::of(bytes(10)),
            ],
            0..6,
        ),
        any::<bool>(),
    )
        .prop_flat_map(|(oid, format, values, honest)| {
            let mut msgs = vec![row_description(&[(b"v".to_vec(), oid, format)])];
            msgs.extend(values.iter().map(|v| data_row(std::slice::from_ref(v))));
            msgs.push(message(b'C', b"SELECT 1\0"));
            let n = msgs.len();
            let msgs = if honest {
                Just(msgs).boxed()
            } else {
                proptest::collection::vec(corrupted(Just(msgs[0].clone())), n..=n)
                    .prop_map(move |mut c| {
                        for (i, m) in msgs.iter().enumerate().skip(1) {
                            c[i] = m.clone();
                        }
                        c
                    })
                    .boxed()
            };
            (Just(oid), Just(format), msgs)
        })
}

/// The merge of two shards' (possibly corrupted) answers: value decoding of every type the
/// merge interprets, sums, min/max and ordering. A quarter of the cases of the other targets
/// (about ten times their cost per case).
#[test]
fn fuzz_merger() {
    fuzz_share(
        "merger",
        4,
        (shard_answers(), shard_answers(), 0u8..4),
        |((_, _, a), (_, _, b), plan)| {
            let agg = match plan {
                0 => Agg::Value(0),
                1 => Agg::Sum(0),
                2 => Agg::Min(0),
                _ => Agg::Max(0),
            };
            let plan = MergePlan {
                columns: vec![MergeColumn::new(agg)],
                group_by: Vec::new(),
                order_by: if matches!(agg, Agg::Value(_)) {
                    vec![SortKey::asc(0)]
                } else {
                    Vec::new()
                },
                distinct: false,
                limit: None,
                offset: 0,
            };
            let Ok(mut m) = Merger::new(plan, 2) else {
                return;
            };
            let mut out = BytesMut::new();
            for (shard, msgs) in [(0, a), (1, b)] {
                for msg in msgs {
                    if m.push(shard, Bytes::copy_from_slice(msg)).is_err() {
                        return;
                    }
                }
            }
            let _ = m.drain(&mut out);
        },
    );
}

/// What the relay may expect, in a queue the session could have built.
fn expectations() -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::collection::vec(0u8..13, 0..8)
}

fn expect(code: u8) -> crate::session::relay::Expect {
    use crate::session::relay::{Expect, Kind};
    match code {
        0 => Expect::Client(Kind::Bind),
        1 => Expect::Client(Kind::Describe),
        2 => Expect::Client(Kind::Close),
        3 => Expect::Client(Kind::Execute),
        4 => Expect::Client(Kind::Sync),
        5 => Expect::Client(Kind::Query),
        6 | 12 => Expect::Parse {
            stmt: None,
            visible: code == 6,
            client_name: None,
        },
        7 => Expect::InjectedClose,
        8 => Expect::InjectedQuery("fuzz"),
        9 => Expect::Synthetic(Bytes::from(message(b'1', b""))),
        10 => Expect::SyntheticReady(Bytes::from(message(b'C', b"SET\0"))),
        _ => Expect::Client(Kind::Function),
    }
}

/// A server's answer stream: plausible messages (ReadyForQuery included), corrupted.
fn server_stream() -> impl Strategy<Value = Vec<u8>> + Clone {
    let one = prop_oneof![
        server_messages(),
        proptest::sample::select(vec![b'1', b'2', b'3', b'n', b's', b'I', b'G', b'W'])
            .prop_map(|t| message(t, b"")),
        proptest::sample::select(vec![b'I', b'T', b'E']).prop_map(|s| message(b'Z', &[s])),
        bytes(12).prop_map(|b| message(b'E', &b)),
        bytes(12).prop_map(|b| message(b'N', &b)),
    ];
    proptest::collection::vec(corrupted(one), 0..8).prop_map(|v| v.concat())
}

#[test]
fn fuzz_relay() {
    use crate::session::relay::Relay;
    fuzz(
        "relay",
        (
            expectations(),
            prop_oneof![server_stream(), bytes(120)],
            1usize..40,
        ),
        |(queue, input, chunk)| {
            // Counting rows for per-shape statistics or not, by the chunk size's parity.
            let mut r = Relay::counting(chunk % 2 == 0);
            for &c in queue {
                r.push(expect(c));
            }
            let (mut inbuf, mut out, mut events) = (BytesMut::new(), BytesMut::new(), Vec::new());
            bounded(input.len(), 16, 4096, || {
                for piece in input.chunks(*chunk) {
                    inbuf.extend_from_slice(piece);
                    // As the session does: again after each ReadyForQuery it returned at.
                    loop {
                        let before = (inbuf.len(), events.len());
                        if r.process(&mut inbuf, &mut out, &mut events).is_err() {
                            return;
                        }
                        if (inbuf.len(), events.len()) == before {
                            break;
                        }
                    }
                }
            });
            // Nothing is made up beyond the synthetic answers queued.
            assert!(out.len() <= input.len() + 16 * queue.len());
            let _ = (r.idle(), r.mid_message(), r.owed_ready());
        },
    );
}

/// The SCRAM client the backend uses towards servers (postgres-protocol), fed what a server
/// may send: server-first and server-final messages, well-formed or not. Iteration counts
/// stay small (a real server's count is trusted configuration).
#[test]
fn fuzz_scram_client() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let first = prop_oneof![
        bytes(60).prop_map(|b| (false, b)),
        (
            "[ -~]{0,12}",
            "[A-Za-z0-9+/=]{0,24}",
            prop_oneof![Just("1".to_string()), Just("0".to_string()), "[0-9]{0,3}"],
            "[ -~]{0,8}"
        )
            .prop_map(|(n, s, i, ext)| (true, format!("{n},s={s},i={i}{ext}").into_bytes())),
    ];
    let last = prop_oneof![
        bytes(60),
        "(v=|e=)[A-Za-z0-9+/=]{0,48}".prop_map(String::into_bytes)
    ];
    fuzz("scram_client", (first, last), |((spliced, first), last)| {
        let mut c = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let mut server_first = first.clone();
        if *spliced {
            // r=<the client's nonce><suffix>,s=...,i=...
            let msg = c.message().to_vec();
            let nonce = msg
                .split(|&b| b == b',')
                .nth(2)
                .unwrap_or_default()
                .to_vec();
            server_first = [nonce, first.clone()].concat();
        }
        let text = String::from_utf8_lossy(&server_first);
        let too_many_iterations = text
            .split(',')
            .filter_map(|f| f.strip_prefix("i="))
            .any(|i| i.parse::<u64>().map_or(i.len() > 3, |n| n > 999));
        if too_many_iterations {
            return;
        }
        if c.update(&server_first).is_ok() {
            let _ = c.finish(last);
        }
    });
}
