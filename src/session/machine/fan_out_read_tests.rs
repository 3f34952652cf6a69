use bytes::{Bytes, BytesMut};

use super::{FanOutRead, ShardStream, Step, PAUSE_BYTES};
use crate::fanout::wire::test_util::{complete, data_row, row_desc};
use crate::protocol::{split_frame, sqlstate, Frame, PgError, TxStatus};
use crate::session::machine::shard_stream::ShardEnd;
use crate::sql::analyze::fanout::fan_out_query;

const INT8: u32 = 20;
const TEXT: u32 = 25;

/// One scripted message of a shard.
#[derive(Clone)]
enum M {
    T(&'static [(&'static str, u32)]),
    D(&'static [&'static str]),
    C(&'static str),
    Z(u8),
    E(&'static str),
    N,
    S,
    Raw(u8, &'static [u8]),
}

fn frame(m: &M) -> Frame {
    let bytes: Bytes = match m {
        M::T(cols) => row_desc(cols),
        M::D(vals) => {
            let v: Vec<Option<&str>> = vals.iter().map(|s| Some(*s)).collect();
            data_row(&v)
        }
        M::C(tag) => complete(tag),
        M::Z(s) => raw(b'Z', &[*s]),
        M::E(code) => {
            let mut b = BytesMut::new();
            PgError::error(code, "boom").encode(&mut b);
            b.freeze()
        }
        M::N => {
            let mut b = BytesMut::new();
            PgError::error(sqlstate::WARNING, "note").encode(&mut b);
            b[0] = b'N';
            b.freeze()
        }
        M::S => raw(b'S', b"TimeZone\0UTC\0"),
        M::Raw(tag, body) => raw(*tag, body),
    };
    Frame {
        tag: bytes[0],
        bytes,
    }
}

fn raw(tag: u8, body: &[u8]) -> Bytes {
    let mut b = vec![tag];
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    Bytes::from(b)
}

/// The client's messages, one word each: `T`, `D:v1,v2`, `C:tag`, `E:code`, `N`.
fn read_out(out: &mut BytesMut) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(f) = split_frame(out, usize::MAX).unwrap() {
        seen.push(match f.tag {
            b'T' => "T".to_string(),
            b'D' => {
                let d = crate::backend::data_row_texts(f.body());
                format!("D:{}", d.join(","))
            }
            b'C' => format!(
                "C:{}",
                String::from_utf8_lossy(&f.body()[..f.body().len() - 1])
            ),
            b'E' => format!("E:{}", crate::protocol::error_fields(f.body()).0),
            b'N' => "N".to_string(),
            t => format!("?{}", t as char),
        });
    }
    seen
}

/// Runs `script` (shard, message) through a fan-out of `sql` on `shards` shards; returns
/// the machine, every step, and the client's messages after each step.
fn run(
    sql: &str,
    shards: usize,
    script: &[(usize, M)],
) -> (FanOutRead, Vec<Step>, Vec<Vec<String>>) {
    run_capped(sql, shards, usize::MAX, script)
}

fn run_capped(
    sql: &str,
    shards: usize,
    cap: usize,
    script: &[(usize, M)],
) -> (FanOutRead, Vec<Step>, Vec<Vec<String>>) {
    let spec = fan_out_query(sql).unwrap().spec;
    let mut f = FanOutRead::new(spec, shards, cap);
    let mut steps = Vec::new();
    let mut outs = Vec::new();
    for (i, m) in script {
        let mut out = BytesMut::new();
        steps.push(f.on_message(*i, frame(m), &mut out));
        outs.push(read_out(&mut out));
    }
    (f, steps, outs)
}

fn flat(outs: &[Vec<String>]) -> Vec<String> {
    outs.iter().flatten().cloned().collect()
}

const ID: &[(&str, u32)] = &[("id", INT8)];

#[test]
fn unordered_rows_reach_the_client_before_every_shard_has_finished() {
    let (f, steps, outs) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (0, M::D(&["1"])),
            (1, M::D(&["2"])),
        ],
    );
    assert!(steps.iter().all(|s| *s == Step::Continue));
    assert_eq!(flat(&outs), ["T", "D:1", "D:2"]);
    assert!(!f.progress().is_done());
}

#[test]
fn the_header_waits_for_every_shards_description() {
    let (_, _, outs) = run(
        "SELECT id FROM t",
        2,
        &[(0, M::T(ID)), (0, M::D(&["1"])), (1, M::T(ID))],
    );
    assert_eq!(outs[0], Vec::<String>::new());
    assert_eq!(outs[1], Vec::<String>::new());
    assert_eq!(outs[2], ["T", "D:1"]);
}

#[test]
fn a_complete_answer_ends_with_one_summed_tag() {
    let (f, _, outs) = run(
        "SELECT id FROM t",
        3,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (2, M::T(ID)),
            (0, M::D(&["1"])),
            (0, M::C("SELECT 1")),
            (1, M::C("SELECT 0")),
            (2, M::D(&["5"])),
            (2, M::D(&["6"])),
            (2, M::C("SELECT 2")),
            (0, M::Z(b'I')),
            (1, M::Z(b'I')),
            (2, M::Z(b'I')),
        ],
    );
    assert_eq!(flat(&outs), ["T", "D:1", "D:5", "D:6", "C:SELECT 3"]);
    assert!(f.progress().is_done() && !f.progress().failed());
    assert_eq!(
        f.progress().shard_ends(),
        [ShardEnd::Ready(TxStatus::Idle); 3]
    );
}

#[test]
fn ordered_rows_wait_for_the_other_shards_next_row() {
    let (_, _, outs) = run(
        "SELECT id FROM t ORDER BY id",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (0, M::D(&["1"])),
            (0, M::D(&["3"])),
            (1, M::D(&["2"])),
            (1, M::C("SELECT 1")),
            (0, M::C("SELECT 2")),
        ],
    );
    assert_eq!(
        outs[2],
        Vec::<String>::new(),
        "shard 1 has shown no row yet"
    );
    assert_eq!(outs[4], ["D:1", "D:2"]);
    assert_eq!(outs[5], ["D:3"]);
    assert_eq!(outs[6], ["C:SELECT 3"]);
}

#[test]
fn descending_order_merges_descending() {
    let (_, _, outs) = run(
        "SELECT id FROM t ORDER BY id DESC",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (0, M::D(&["9"])),
            (0, M::D(&["1"])),
            (1, M::D(&["5"])),
            (1, M::C("SELECT 1")),
            (0, M::C("SELECT 2")),
        ],
    );
    assert_eq!(flat(&outs), ["T", "D:9", "D:5", "D:1", "C:SELECT 3"]);
}

#[test]
fn limit_and_offset_apply_to_the_merged_rows() {
    let (_, _, outs) = run(
        "SELECT id FROM t ORDER BY id LIMIT 2 OFFSET 1",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (0, M::D(&["1"])),
            (0, M::D(&["4"])),
            (0, M::C("SELECT 2")),
            (1, M::D(&["2"])),
            (1, M::D(&["3"])),
            (1, M::C("SELECT 2")),
        ],
    );
    assert_eq!(flat(&outs), ["T", "D:2", "D:3", "C:SELECT 2"]);
}

#[test]
fn aggregates_are_sent_when_every_shard_has_finished() {
    let (_, _, outs) = run(
        "SELECT count(*) FROM t",
        2,
        &[
            (0, M::T(&[("count", INT8)])),
            (1, M::T(&[("count", INT8)])),
            (0, M::D(&["4"])),
            (0, M::C("SELECT 1")),
            (1, M::D(&["5"])),
            (1, M::C("SELECT 1")),
        ],
    );
    assert_eq!(outs[1], ["T"]);
    assert!(
        outs[2..5].iter().all(Vec::is_empty),
        "groups wait for every shard"
    );
    assert_eq!(outs[5], ["D:9", "C:SELECT 1"]);
}

#[test]
fn a_shards_error_cancels_the_others_and_is_the_last_message() {
    let (f, steps, outs) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(ID)),
            (0, M::D(&["1"])),
            (1, M::E(sqlstate::DIVISION_BY_ZERO)),
            (0, M::D(&["2"])),
            (0, M::C("SELECT 2")),
            (1, M::Z(b'I')),
            (0, M::Z(b'I')),
        ],
    );
    assert_eq!(steps[3], Step::CancelOthers);
    assert!(steps[4..].iter().all(|s| *s == Step::Continue));
    assert_eq!(flat(&outs), ["T", "D:1", "E:22012"]);
    assert_eq!(
        outs[7],
        ["E:22012"],
        "the error comes once every shard is ready"
    );
    assert!(f.progress().failed() && f.progress().is_done());
}

#[test]
fn the_first_error_wins_and_later_ones_are_dropped() {
    let (_, steps, outs) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::E(sqlstate::QUERY_CANCELED)),
            (1, M::E(sqlstate::DIVISION_BY_ZERO)),
            (0, M::Z(b'I')),
            (1, M::Z(b'I')),
        ],
    );
    assert_eq!(steps[..2], [Step::CancelOthers, Step::Continue]);
    assert_eq!(flat(&outs), ["E:57014"]);
}

#[test]
fn a_failed_statement_is_read_without_waiting_for_the_client() {
    let (f, _, _) = run(
        "SELECT id FROM t",
        2,
        &[(0, M::T(ID)), (1, M::E(sqlstate::DIVISION_BY_ZERO))],
    );
    assert!(f.discarding());
    assert!(f.wants(0));
    assert!(f.wants(1), "shard 1 still owes its ReadyForQuery");
}

#[test]
fn notices_are_relayed_and_parameter_status_is_not() {
    let (_, steps, outs) = run(
        "SELECT id FROM t",
        2,
        &[(0, M::N), (1, M::S), (0, M::T(ID))],
    );
    assert!(steps.iter().all(|s| *s == Step::Continue));
    assert_eq!(flat(&outs), ["N"]);
}

#[test]
fn unexpected_messages_break_that_shard_and_fail_the_statement() {
    for bad in [
        M::Raw(b'G', &[0, 0, 0]),
        M::Raw(b'1', &[]),
        M::Raw(b'Z', b"X"),
        M::Raw(b'Z', b"II"),
        M::Raw(b'Z', b""),
    ] {
        let (f, steps, outs) = run(
            "SELECT id FROM t",
            2,
            &[
                (0, M::T(ID)),
                (1, bad),
                (0, M::C("SELECT 0")),
                (0, M::Z(b'I')),
            ],
        );
        assert_eq!(steps[1], Step::Broken);
        assert_eq!(f.progress().shard_ends()[1], ShardEnd::Lost);
        assert!(!f.wants(1));
        assert_eq!(flat(&outs), ["E:08P01"]);
        assert!(f.progress().is_done());
    }
}

#[test]
fn a_message_after_ready_for_query_breaks_the_shard() {
    let (f, steps, _) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::E(sqlstate::DIVISION_BY_ZERO)),
            (0, M::Z(b'I')),
            (0, M::N),
        ],
    );
    assert_eq!(steps[2], Step::Broken);
    assert_eq!(f.progress().shard_ends()[0], ShardEnd::Lost);
}

#[test]
fn a_lost_shard_fails_the_statement_with_08006() {
    let spec = fan_out_query("SELECT id FROM t").unwrap().spec;
    let mut f = FanOutRead::new(spec, 2, usize::MAX);
    let mut out = BytesMut::new();
    assert_eq!(f.on_message(0, frame(&M::T(ID)), &mut out), Step::Continue);
    assert_eq!(f.on_lost(1, &mut out), Step::CancelOthers);
    assert_eq!(f.on_lost(1, &mut out), Step::Continue, "lost once");
    assert!(!f.progress().is_done());
    let _ = f.on_message(0, frame(&M::C("SELECT 0")), &mut out);
    let _ = f.on_message(0, frame(&M::Z(b'I')), &mut out);
    assert_eq!(read_out(&mut out), ["E:08006"]);
    assert_eq!(
        f.progress().shard_ends(),
        [ShardEnd::Ready(TxStatus::Idle), ShardEnd::Lost]
    );
}

#[test]
fn shards_with_other_columns_fail_the_merge() {
    let (_, steps, outs) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::T(ID)),
            (1, M::T(&[("id", TEXT)])),
            (0, M::Z(b'I')),
            (1, M::Z(b'I')),
        ],
    );
    assert_eq!(steps[1], Step::CancelOthers);
    assert_eq!(flat(&outs), ["E:XX000"]);
}

#[test]
fn a_shard_far_ahead_in_an_ordered_merge_is_paused() {
    let spec = fan_out_query("SELECT id, pad FROM t ORDER BY id")
        .unwrap()
        .spec;
    let mut f = FanOutRead::new(spec, 2, usize::MAX);
    let cols: &[(&str, u32)] = &[("id", INT8), ("pad", TEXT)];
    let mut out = BytesMut::new();
    let _ = f.on_message(0, frame(&M::T(cols)), &mut out);
    let _ = f.on_message(1, frame(&M::T(cols)), &mut out);
    let pad = "x".repeat(1000);
    let mut n = 0;
    while f.wants(0) {
        n += 1;
        let row = data_row(&[Some(&n.to_string()), Some(&pad)]);
        let _ = f.on_message(
            0,
            Frame {
                tag: b'D',
                bytes: row,
            },
            &mut out,
        );
        assert!(n < 1000, "never paused");
    }
    assert!(n * 1000 >= PAUSE_BYTES - 1000);
    assert!(f.wants(1), "the shard the merge waits for is read");
    let row = data_row(&[Some("0"), Some("y")]);
    let _ = f.on_message(
        1,
        Frame {
            tag: b'D',
            bytes: row,
        },
        &mut out,
    );
    let _ = f.on_message(1, frame(&M::C("SELECT 1")), &mut out);
    assert!(
        f.wants(0),
        "once shard 1 finished, shard 0's rows flow again"
    );
    assert_eq!(read_out(&mut out).len(), 1 + 1 + n);
}

#[test]
fn an_aggregate_holding_more_than_the_cap_fails_with_54000() {
    let script: Vec<(usize, M)> = vec![
        (0, M::T(&[("k", INT8), ("count", INT8)])),
        (1, M::T(&[("k", INT8), ("count", INT8)])),
        (0, M::D(&["1", "1"])),
        (0, M::D(&["2", "1"])),
        (0, M::D(&["3", "1"])),
        (1, M::C("SELECT 0")),
        (0, M::C("SELECT 3")),
        (0, M::Z(b'I')),
        (1, M::Z(b'I')),
    ];
    let sql = "SELECT k, count(*) FROM t GROUP BY k";
    let (_, steps, outs) = run_capped(sql, 2, 40, &script);
    assert!(steps.contains(&Step::CancelOthers));
    assert_eq!(flat(&outs), ["T", "E:54000"]);
    let (_, _, outs) = run_capped(sql, 2, 4096, &script);
    assert_eq!(flat(&outs).last().map(String::as_str), Some("C:SELECT 3"));
}

#[test]
fn a_stream_without_accumulation_is_not_capped() {
    let mut script = vec![(0, M::T(ID)), (1, M::T(ID))];
    script.extend((0..100).map(|_| (0, M::D(&["7"]))));
    script.extend([
        (0, M::C("SELECT 100")),
        (1, M::C("SELECT 0")),
        (0, M::Z(b'I')),
        (1, M::Z(b'I')),
    ]);
    let (f, _, outs) = run_capped("SELECT id FROM t", 2, 40, &script);
    assert!(!f.progress().failed());
    assert_eq!(flat(&outs).last().map(String::as_str), Some("C:SELECT 100"));
}

#[test]
fn an_unordered_distinct_counts_against_the_cap() {
    let mut script = vec![(0, M::T(ID)), (1, M::T(ID))];
    script.extend((0..10).map(|_| (0, M::D(&["7"]))));
    let (f, _, outs) = run_capped("SELECT DISTINCT id FROM t", 2, 60, &script);
    assert!(f.discarding());
    assert_eq!(flat(&outs), ["T", "D:7"]);
}

#[test]
fn a_statement_without_any_answer_is_an_internal_error() {
    let (f, _, outs) = run("SELECT id FROM t", 2, &[(0, M::Z(b'I')), (1, M::Z(b'I'))]);
    assert!(f.progress().failed());
    assert_eq!(flat(&outs), ["E:XX000"]);
}

#[test]
fn statuses_inside_a_transaction_are_reported_per_shard() {
    let (f, _, _) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::E(sqlstate::DIVISION_BY_ZERO)),
            (0, M::Z(b'E')),
            (1, M::T(ID)),
            (1, M::C("SELECT 0")),
            (1, M::Z(b'T')),
        ],
    );
    assert_eq!(
        f.progress().shard_ends(),
        [
            ShardEnd::Ready(TxStatus::Failed),
            ShardEnd::Ready(TxStatus::InTransaction)
        ]
    );
}

#[test]
fn no_shard_is_wanted_once_it_is_ready() {
    let (f, _, _) = run(
        "SELECT id FROM t",
        2,
        &[(0, M::T(ID)), (0, M::C("SELECT 0")), (0, M::Z(b'I'))],
    );
    assert!(!f.wants(0));
    assert!(f.wants(1));
    assert!(!f.wants(7), "no such shard");
}

#[test]
fn an_out_of_range_shard_index_breaks_nothing_else() {
    let spec = fan_out_query("SELECT id FROM t").unwrap().spec;
    let mut f = FanOutRead::new(spec, 1, usize::MAX);
    let mut out = BytesMut::new();
    assert_eq!(f.on_message(5, frame(&M::T(ID)), &mut out), Step::Broken);
    assert_eq!(f.on_lost(5, &mut out), Step::Continue);
}

#[test]
fn a_cancel_request_drops_the_rest_and_answers_57014() {
    let spec = fan_out_query("SELECT id FROM t").unwrap().spec;
    let mut f = FanOutRead::new(spec, 2, usize::MAX);
    let mut out = BytesMut::new();
    for (i, m) in [(0, M::T(ID)), (1, M::T(ID)), (0, M::D(&["1"]))] {
        let _ = f.on_message(i, frame(&m), &mut out);
    }
    assert_eq!(f.on_cancel_requested(), Step::CancelOthers);
    assert!(f.discarding());
    assert_eq!(f.on_cancel_requested(), Step::Continue);
    // The shards finish anyway (the cancel came late): their rows are not relayed.
    for (i, m) in [
        (1, M::D(&["2"])),
        (0, M::C("SELECT 1")),
        (1, M::C("SELECT 1")),
        (0, M::Z(b'I')),
        (1, M::Z(b'I')),
    ] {
        let _ = f.on_message(i, frame(&m), &mut out);
    }
    assert_eq!(read_out(&mut out), ["T", "D:1", "E:57014"]);
}

#[test]
fn a_cancel_after_an_error_keeps_the_first_error() {
    let (mut f, _, _) = run(
        "SELECT id FROM t",
        1,
        &[(0, M::E(sqlstate::DIVISION_BY_ZERO))],
    );
    assert_eq!(f.on_cancel_requested(), Step::Continue);
    let mut out = BytesMut::new();
    let _ = f.on_message(0, frame(&M::Z(b'I')), &mut out);
    assert_eq!(read_out(&mut out), ["E:22012"]);
}

#[test]
fn notices_of_a_failed_statement_are_dropped() {
    let (_, _, outs) = run(
        "SELECT id FROM t",
        2,
        &[
            (0, M::N),
            (1, M::E(sqlstate::DIVISION_BY_ZERO)),
            (0, M::N),
            (0, M::N),
            (0, M::Z(b'I')),
            (1, M::Z(b'I')),
        ],
    );
    assert_eq!(flat(&outs), ["N", "E:22012"]);
}
