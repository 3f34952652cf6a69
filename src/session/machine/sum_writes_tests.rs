use bytes::BytesMut;

use super::SumWrites;
use crate::protocol::{error_fields, split_frame, sqlstate, Frame};
use crate::session::machine::shard_stream::{ShardEnd, ShardStream, Step};
use crate::session::machine::test_frames::{error, msg, tag};

fn ready() -> Frame {
    crate::session::machine::test_frames::ready(b'I')
}

fn row(v: &str) -> Frame {
    let mut b = vec![0, 1];
    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
    b.extend_from_slice(v.as_bytes());
    msg(b'D', &b)
}

/// Feeds each shard's frames in turn (shard 0 first) and returns what the client gets.
fn run(mut m: SumWrites, shards: Vec<Vec<Frame>>) -> (Vec<String>, Vec<Step>) {
    let mut steps = Vec::new();
    let mut out = BytesMut::new();
    for (i, frames) in shards.into_iter().enumerate() {
        for f in frames {
            assert!(m.wants(i) && m.discarding());
            steps.push(m.on_message(i, f, &mut out));
        }
    }
    assert!(out.is_empty(), "nothing reaches the client before the end");
    assert!(m.progress().is_done());
    let mut answer = m.answer().out;
    let mut seen = Vec::new();
    while let Some(f) = split_frame(&mut answer, usize::MAX).unwrap() {
        let body = String::from_utf8_lossy(f.body())
            .trim_end_matches('\0')
            .to_string();
        seen.push(match f.tag {
            b'C' => format!("C:{body}"),
            b'E' => format!("E:{}", error_fields(f.body()).0),
            b'D' => format!("D:{}", &body[6..]),
            t => (t as char).to_string(),
        });
    }
    (seen, steps)
}

#[test]
fn counts_are_summed_across_shards() {
    let shard = |n: u32| vec![tag(&format!("INSERT 0 {n}")), ready()];
    let (seen, _) = run(
        SumWrites::new(3, false, 1 << 20),
        vec![shard(2), shard(0), shard(5)],
    );
    assert_eq!(seen, ["C:INSERT 0 7"]);
}

#[test]
fn returning_rows_of_every_shard_follow_one_row_description() {
    let t = || msg(b'T', &[0, 0]);
    let a = vec![t(), row("1"), tag("UPDATE 1"), ready()];
    let b = vec![t(), row("2"), row("3"), tag("UPDATE 2"), ready()];
    let (seen, _) = run(SumWrites::new(2, false, 1 << 20), vec![a, b]);
    assert_eq!(seen, ["T", "D:1", "D:2", "D:3", "C:UPDATE 3"]);
}

#[test]
fn a_replicated_table_answers_as_its_first_copy() {
    let shard = |v: &str| vec![row(v), tag("DELETE 1"), ready()];
    let (seen, _) = run(
        SumWrites::new(3, true, 1 << 20),
        vec![shard("a"), shard("b"), shard("c")],
    );
    assert_eq!(seen, ["D:a", "C:DELETE 1"]);
}

#[test]
fn any_shards_error_is_the_answer_after_the_notices() {
    let notice = msg(b'N', b"SNOTICE\0Mhi\0\0");
    let a = vec![notice, tag("UPDATE 4"), ready()];
    let b = vec![error(sqlstate::UNIQUE_VIOLATION), ready()];
    let (seen, steps) = run(SumWrites::new(2, false, 1 << 20), vec![a, b]);
    assert_eq!(seen, ["N", "E:23505"]);
    assert!(steps.contains(&Step::CancelOthers));
}

#[test]
fn rows_over_the_cap_fail_the_statement() {
    let a = vec![
        row("aaaaaaaaaa"),
        row("bbbbbbbbbb"),
        tag("INSERT 0 2"),
        ready(),
    ];
    let (seen, _) = run(SumWrites::new(1, false, 30), vec![a]);
    assert_eq!(seen, [format!("E:{}", sqlstate::PROGRAM_LIMIT_EXCEEDED)]);
}

#[test]
fn a_lost_shard_fails_the_statement() {
    let mut m = SumWrites::new(2, false, 1 << 20);
    let mut out = BytesMut::new();
    assert_eq!(m.on_lost(1, &mut out), Step::CancelOthers);
    let (seen, _) = run(m, vec![vec![tag("UPDATE 1"), ready()], vec![]]);
    assert_eq!(seen, ["E:08006"]);
}

#[test]
fn copy_or_unknown_messages_close_the_shard() {
    let mut m = SumWrites::new(1, false, 1 << 20);
    let mut out = BytesMut::new();
    assert_eq!(
        m.on_message(0, msg(b'G', &[0, 0, 0]), &mut out),
        Step::Broken
    );
    assert_eq!(m.progress().shard_ends()[0], ShardEnd::Lost);
    assert_eq!(m.on_message(0, ready(), &mut out), Step::Broken);
}

#[test]
fn a_cancel_request_is_the_answer() {
    let mut m = SumWrites::new(1, false, 1 << 20);
    assert_eq!(m.on_cancel_requested(), Step::CancelOthers);
    let (seen, _) = run(m, vec![vec![tag("UPDATE 1"), ready()]]);
    assert_eq!(seen, ["E:57014"]);
}

#[test]
fn extended_protocol_answers_keep_the_parameter_description() {
    let mut m = SumWrites::new(2, false, 1 << 20);
    let mut out = BytesMut::new();
    for i in 0..2 {
        for f in [
            msg(b'1', b""),
            msg(b't', &[0, 0]),
            msg(b'2', b""),
            msg(b'n', b""),
            tag("INSERT 0 1"),
            ready(),
        ] {
            let _ = m.on_message(i, f, &mut out);
        }
    }
    let summed = m.answer();
    assert!(summed.param_desc.is_some());
    let mut o = summed.out;
    let f = split_frame(&mut o, usize::MAX).unwrap().unwrap();
    assert_eq!(f.bytes, tag("INSERT 0 2").bytes);
}

#[test]
fn a_malformed_ready_for_query_or_tag_fails_the_statement() {
    let mut m = SumWrites::new(1, false, 1 << 20);
    let mut out = BytesMut::new();
    assert_eq!(m.on_message(0, msg(b'Z', b"IX"), &mut out), Step::Broken);
    let (seen, _) = run(
        SumWrites::new(1, false, 1 << 20),
        vec![vec![msg(b'C', b"INSERT 0 \xff"), ready()]],
    );
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("E:"), "{seen:?}");
}
