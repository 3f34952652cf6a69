//! The pipeline across shards ([`pipeline::plan`] and [`Pipeline`]) on random batches:
//! shards that answer their requests as Postgres would, in any order the driver may read
//! them, give the client exactly the answers of one server to the client's messages (the
//! proxy's BEGIN and re-Parses unseen), in the client's order; a shard that fails one of its
//! requests ends the client's answer with that one error after a prefix of those answers;
//! stray and corrupted messages never panic and every shard ends.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{bytes, fuzz_share, message};
use crate::protocol::{split_frame, sqlstate, Frame, PgError};
use crate::session::machine::pipeline::{plan, Message, Pipeline};
use crate::session::machine::shard_stream::ShardStream;

const SHARDS: usize = 3;

/// Client messages of a batch: statements `s0`..`s2` (and the unnamed one), Binds on any
/// shard or none.
fn batch() -> impl Strategy<Value = Vec<Message>> + Clone {
    let rest = |i: u8| Bytes::from(format!("SELECT {i}\0\0\0").into_bytes());
    let name = |i: u8| {
        if i == 3 {
            String::new()
        } else {
            format!("s{i}")
        }
    };
    let one = prop_oneof![
        (0u8..4).prop_map(move |i| Message::Parse {
            name: name(i),
            rest: rest(i),
        }),
        (0u8..4, proptest::option::of(0..SHARDS)).prop_map(move |(i, shard)| Message::Bind {
            stmt: name(i),
            rest: rest(i),
            params: Bytes::from_static(&[0, 0, 0, 0, 0, 0]),
            shard,
        }),
        (0u8..4).prop_map(move |i| Message::Describe(Some((name(i), rest(i))))),
        Just(Message::Describe(None)),
        Just(Message::Execute(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Just(Message::Close),
        Just(Message::Flush),
    ];
    proptest::collection::vec(one, 0..14)
}

fn frame(bytes: Vec<u8>) -> Frame {
    let mut b = BytesMut::from(&bytes[..]);
    split_frame(&mut b, 1 << 20)
        .ok()
        .flatten()
        .expect("a whole message")
}

fn error() -> Vec<u8> {
    let mut b = BytesMut::new();
    PgError::error(sqlstate::DIVISION_BY_ZERO, "division by zero").encode(&mut b);
    b.to_vec()
}

/// What one Postgres answers to `request` (a shard's messages up to its Sync), failing its
/// message `fail_at` if any (and skipping the rest up to Sync, as Postgres does).
fn server(request: &BytesMut, fail_at: Option<usize>) -> Vec<Frame> {
    let mut req = request.clone();
    let mut out = Vec::new();
    let mut failed = false;
    let mut i = 0;
    while let Ok(Some(m)) = split_frame(&mut req, 1 << 20) {
        if m.tag == b'S' {
            out.push(frame(message(b'Z', if failed { b"E" } else { b"T" })));
            break;
        }
        if failed {
            continue;
        }
        if fail_at == Some(i) {
            out.push(frame(error()));
            failed = true;
            continue;
        }
        i += 1;
        match (m.tag, m.body().first()) {
            (b'P', _) => out.push(frame(message(b'1', b""))),
            (b'B', _) => out.push(frame(message(b'2', b""))),
            (b'D', Some(b'S')) => {
                out.push(frame(message(b't', &[0, 0])));
                out.push(frame(message(b'T', &[0, 0])));
            }
            (b'D', _) => out.push(frame(message(b'n', b""))),
            _ => {
                out.push(frame(message(b'D', &[0, 1, 0, 0, 0, 1, b'1'])));
                out.push(frame(message(b'C', b"SELECT 1\0")));
            }
        }
    }
    out
}

/// The tags one server sends the client for `messages`.
fn expected(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|m| match m {
            Message::Parse { .. } => "1",
            Message::Bind { .. } => "2",
            Message::Describe(Some(_)) => "tT",
            Message::Describe(None) => "n",
            Message::Execute(_) => "DC",
            Message::Close => "3",
            Message::Flush | Message::Fail(_) => "",
        })
        .collect()
}

/// Runs the machine over the shards' answers, reading a wanted shard chosen by `picks`
/// each time; returns the client's tags.
fn run(m: &mut Pipeline, mut answers: Vec<Vec<Frame>>, picks: &[usize]) -> String {
    let mut out = BytesMut::new();
    m.start(&mut out);
    let mut picks = picks.iter().cycle();
    for _ in 0..10_000 {
        let ready: Vec<usize> = (0..answers.len())
            .filter(|i| m.wants(*i) && !answers[*i].is_empty())
            .collect();
        let Some(&i) = picks.next().and_then(|p| ready.get(p % ready.len().max(1))) else {
            break;
        };
        let f = answers[i].remove(0);
        let _ = m.on_message(i, f, &mut out);
    }
    for i in 0..answers.len() {
        if m.progress().running(i) {
            let _ = m.on_lost(i, &mut out);
        }
    }
    m.finish(&mut out);
    let mut tags = String::new();
    while let Ok(Some(f)) = split_frame(&mut out, 1 << 20) {
        tags.push(f.tag as char);
    }
    tags
}

#[test]
fn fuzz_pipeline_answers_like_one_server() {
    let strategy = (
        batch(),
        any::<bool>(),
        proptest::option::of((0..SHARDS, 0usize..8)),
        proptest::collection::vec(0usize..SHARDS, 1..8),
    );
    fuzz_share("pipeline", 8, strategy, |(messages, begin, fail, picks)| {
        let p = plan(messages, SHARDS, begin.then_some("BEGIN"));
        let answers = (0..SHARDS)
            .map(|s| server(&p.requests[s], fail.filter(|f| f.0 == s).map(|f| f.1)))
            .collect();
        let mut m = Pipeline::new(p.clone()).0;
        let tags = run(&mut m, answers, picks);
        assert!(m.progress().is_done(), "every shard ends");
        let want = expected(messages);
        match tags.strip_suffix('E') {
            // A shard failed one of its messages: a prefix of the answers, then its error.
            Some(prefix) => {
                assert!(fail.is_some(), "an error only where a shard failed: {tags}");
                assert!(want.starts_with(prefix), "{prefix} is a prefix of {want}");
            }
            None => assert_eq!(tags, want),
        }
    });
}

#[test]
fn fuzz_pipeline_with_stray_messages() {
    let stray = (any::<u8>(), bytes(10)).prop_map(|(t, b)| frame(message(t, &b)));
    let strategy = (
        batch(),
        proptest::collection::vec((0..SHARDS, 0usize..20, stray), 0..6),
        proptest::collection::vec(0usize..SHARDS, 1..8),
    );
    fuzz_share(
        "pipeline stray",
        8,
        strategy,
        |(messages, strays, picks)| {
            let p = plan(messages, SHARDS, None);
            let mut answers: Vec<Vec<Frame>> =
                (0..SHARDS).map(|s| server(&p.requests[s], None)).collect();
            for (s, at, f) in strays {
                let at = (*at).min(answers[*s].len());
                answers[*s].insert(at, f.clone());
            }
            let mut m = Pipeline::new(p.clone()).0;
            let _ = run(&mut m, answers, picks);
            assert!(m.progress().is_done(), "every shard ends");
        },
    );
}
