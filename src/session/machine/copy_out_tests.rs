use bytes::BytesMut;

use super::CopyOut;
use crate::fanout::wire::test_util::complete;
use crate::protocol::{sqlstate, Frame};
use crate::session::machine::shard_stream::{ShardEnd, ShardStream, Step};
use crate::session::machine::test_frames::{error, msg, seen};

/// A text-format CopyOutResponse of `cols` columns.
fn header(cols: u16) -> Frame {
    let mut body = vec![0u8];
    body.extend_from_slice(&cols.to_be_bytes());
    for _ in 0..cols {
        body.extend_from_slice(&[0, 0]);
    }
    msg(b'H', &body)
}

fn data(row: &str) -> Frame {
    msg(b'd', row.as_bytes())
}

fn tag(t: &str) -> Frame {
    let bytes = complete(t);
    Frame { tag: b'C', bytes }
}

fn run(c: &mut CopyOut, script: Vec<(usize, Frame)>) -> (Vec<Step>, Vec<String>) {
    let mut out = BytesMut::new();
    let steps = script
        .into_iter()
        .map(|(i, f)| c.on_message(i, f, &mut out))
        .collect();
    (steps, seen(&mut out))
}

#[test]
fn rows_of_every_shard_stream_between_one_header_and_one_done() {
    let mut c = CopyOut::new(2);
    let (steps, out) = run(
        &mut c,
        vec![
            (0, header(2)),
            (1, header(2)),
            (0, data("1\ta\n")),
            (1, data("2\tb\n")),
            (0, msg(b'c', b"")),
            (0, tag("COPY 1")),
            (0, msg(b'Z', b"I")),
            (1, msg(b'c', b"")),
            (1, tag("COPY 1")),
            (1, msg(b'Z', b"I")),
        ],
    );
    assert!(steps.iter().all(|s| *s == Step::Continue));
    assert_eq!(out, ["H", "d:1\ta\n", "d:2\tb\n", "c", "C:COPY 2"]);
    assert!(c.progress().is_done() && !c.progress().failed());
}

#[test]
fn a_started_shard_waits_for_the_others_header() {
    let mut c = CopyOut::new(2);
    assert!(c.wants(0) && c.wants(1));
    let (_, out) = run(&mut c, vec![(0, header(1))]);
    assert!(out.is_empty(), "no header before every shard started");
    assert!(!c.wants(0), "its rows wait");
    assert!(c.wants(1));
    let (_, out) = run(&mut c, vec![(1, header(1))]);
    assert_eq!(out, ["H"]);
    assert!(c.wants(0));
}

#[test]
fn shards_in_different_formats_fail_the_copy() {
    let mut c = CopyOut::new(2);
    let (steps, out) = run(
        &mut c,
        vec![
            (0, header(1)),
            (1, header(2)),
            (0, msg(b'Z', b"I")),
            (1, msg(b'Z', b"I")),
        ],
    );
    assert_eq!(steps[1], Step::CancelOthers);
    assert_eq!(out, ["E:XX000"]);
}

#[test]
fn an_error_after_rows_ends_the_copy_with_the_error() {
    let mut c = CopyOut::new(2);
    let (steps, out) = run(
        &mut c,
        vec![
            (0, header(1)),
            (1, header(1)),
            (0, data("1\n")),
            (1, error(sqlstate::QUERY_CANCELED)),
            (0, data("2\n")),
            (0, msg(b'c', b"")),
            (0, tag("COPY 2")),
            (0, msg(b'Z', b"I")),
            (1, msg(b'Z', b"I")),
        ],
    );
    assert_eq!(steps[3], Step::CancelOthers);
    assert!(c.discarding());
    assert_eq!(out, ["H", "d:1\n", "E:57014"]);
}

#[test]
fn a_cancel_request_drops_the_rest() {
    let mut c = CopyOut::new(1);
    let (_, _) = run(&mut c, vec![(0, header(1)), (0, data("1\n"))]);
    assert_eq!(c.on_cancel_requested(), Step::CancelOthers);
    let (_, out) = run(
        &mut c,
        vec![
            (0, data("2\n")),
            (0, msg(b'c', b"")),
            (0, tag("COPY 2")),
            (0, msg(b'Z', b"I")),
        ],
    );
    assert_eq!(out, ["E:57014"]);
}

#[test]
fn protocol_breaches_break_the_shard() {
    for script in [
        vec![(0, data("1\n"))],
        vec![(0, header(1)), (0, header(1))],
        vec![(0, header(1)), (0, tag("COPY 1"))],
        vec![(0, header(1)), (0, msg(b'c', b"")), (0, tag("SELECT 1"))],
        vec![(0, msg(b'T', &[0, 0]))],
        vec![(0, msg(b'Z', b"Q"))],
    ] {
        let mut c = CopyOut::new(2);
        let (steps, _) = run(&mut c, script);
        assert_eq!(steps.last(), Some(&Step::Broken));
        assert_eq!(c.progress().shard_ends()[0], ShardEnd::Lost);
    }
}

#[test]
fn a_lost_shard_fails_the_copy_with_08006() {
    let mut c = CopyOut::new(2);
    let mut out = BytesMut::new();
    assert_eq!(c.on_message(0, header(1), &mut out), Step::Continue);
    assert_eq!(c.on_lost(1, &mut out), Step::CancelOthers);
    let _ = c.on_message(0, msg(b'Z', b"I"), &mut out);
    assert_eq!(seen(&mut out), ["E:08006"]);
}

#[test]
fn every_shard_ready_without_a_copy_is_an_internal_error() {
    let mut c = CopyOut::new(2);
    let (_, out) = run(&mut c, vec![(0, msg(b'Z', b"I")), (1, msg(b'Z', b"I"))]);
    assert_eq!(out, ["E:XX000"]);
}

#[test]
fn notices_pass_and_settings_reports_do_not() {
    let mut c = CopyOut::new(1);
    let mut n = error(sqlstate::WARNING);
    let mut b = BytesMut::from(&n.bytes[..]);
    b[0] = b'N';
    n.bytes = b.freeze();
    n.tag = b'N';
    let (_, out) = run(&mut c, vec![(0, n), (0, msg(b'S', b"a\0b\0"))]);
    assert_eq!(out, ["N"]);
}
