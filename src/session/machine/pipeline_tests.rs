use bytes::{Bytes, BytesMut};

use super::{plan, Message, Pipeline, Plan};
use crate::protocol::{error_fields, split_frame, sqlstate, Frame};
use crate::session::machine::shard_stream::{ShardEnd, ShardStream, Step};
use crate::session::machine::test_frames::{error, error_bytes, msg, ready, tag};

fn rest(sql: &str) -> Bytes {
    let mut b = sql.as_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0]);
    Bytes::from(b)
}

fn parse(name: &str, sql: &str) -> Message {
    Message::Parse {
        name: name.into(),
        rest: rest(sql),
    }
}

/// A Bind of `name` (text `sql`) with one text parameter `v`, on `shard`.
fn bind(name: &str, sql: &str, v: &str, shard: Option<usize>) -> Message {
    let mut p = vec![0, 0, 0, 1];
    p.extend_from_slice(&(v.len() as i32).to_be_bytes());
    p.extend_from_slice(v.as_bytes());
    p.extend_from_slice(&[0, 0]);
    Message::Bind {
        stmt: name.into(),
        rest: rest(sql),
        params: Bytes::from(p),
        shard,
    }
}

fn execute() -> Message {
    Message::Execute(Bytes::from_static(&[0, 0, 0, 0, 0]))
}

/// The messages of `buf`: tags, with CommandComplete texts and SQLSTATEs.
fn seen(buf: &mut BytesMut) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(f) = split_frame(buf, usize::MAX).unwrap() {
        v.push(match f.tag {
            b'C' => format!(
                "C:{}",
                String::from_utf8_lossy(f.body()).trim_end_matches('\0')
            ),
            b'E' => format!("E:{}", error_fields(f.body()).0),
            t => (t as char).to_string(),
        });
    }
    v
}

/// The messages of shard `i`'s request.
fn request(p: &Plan, i: usize) -> Vec<String> {
    let mut buf = p.requests[i].clone();
    let mut v = Vec::new();
    while let Some(f) = split_frame(&mut buf, usize::MAX).unwrap() {
        v.push(match f.tag {
            b'P' => {
                let text = String::from_utf8_lossy(&f.body()[1..]);
                format!("P:{}", text.split('\0').next().unwrap_or_default())
            }
            t => (t as char).to_string(),
        });
    }
    v
}

const INSERT: &str = "INSERT INTO t VALUES ($1)";

/// `Parse s1; Bind/Execute` three times: on shards 0, 1, 0.
fn executemany() -> Vec<Message> {
    vec![
        parse("s1", INSERT),
        bind("s1", INSERT, "1", Some(0)),
        execute(),
        bind("s1", INSERT, "2", Some(1)),
        execute(),
        bind("s1", INSERT, "3", Some(0)),
        execute(),
    ]
}

/// Feeds `frames` of shard `i`, asserting the machine wants each; the last step.
fn feed_step(m: &mut Pipeline, i: usize, frames: Vec<Frame>, out: &mut BytesMut) -> Step {
    let mut last = Step::Continue;
    for f in frames {
        assert!(m.wants(i), "shard {i} is read");
        last = m.on_message(i, f, out);
    }
    last
}

/// [`feed_step`] where the step does not matter.
fn feed(m: &mut Pipeline, i: usize, frames: Vec<Frame>, out: &mut BytesMut) {
    let _ = feed_step(m, i, frames, out);
}

#[test]
fn each_statement_goes_to_its_shard_reparsed_where_missing() {
    let p = plan(&executemany(), 2, None);
    assert_eq!(
        request(&p, 0),
        ["P:INSERT INTO t VALUES ($1)", "B", "E", "B", "E", "S"]
    );
    assert_eq!(
        request(&p, 1),
        ["P:INSERT INTO t VALUES ($1)", "B", "E", "S"]
    );
}

#[test]
fn the_proxys_begin_leads_every_request() {
    let p = plan(&executemany(), 2, Some("BEGIN"));
    assert_eq!(
        request(&p, 1),
        [
            "P:BEGIN",
            "B",
            "E",
            "P:INSERT INTO t VALUES ($1)",
            "B",
            "E",
            "S"
        ]
    );
    assert_eq!(request(&p, 0)[..3], ["P:BEGIN", "B", "E"]);
}

#[test]
fn answers_reach_the_client_in_its_order_without_the_proxys_messages() {
    let p = plan(&executemany(), 2, Some("BEGIN"));
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    m.start(&mut out);
    let begin = || vec![msg(b'1', b""), msg(b'2', b""), tag("BEGIN")];
    // The BEGINs come first, each shard in turn.
    feed(&mut m, 0, begin(), &mut out);
    assert!(!m.wants(0));
    feed(&mut m, 1, begin(), &mut out);
    // Shard 1 is not read before shard 0's first statement has answered.
    assert!(!m.wants(1));
    feed(
        &mut m,
        0,
        vec![msg(b'1', b""), msg(b'2', b""), tag("INSERT 0 1")],
        &mut out,
    );
    assert!(m.wants(1) && !m.wants(0));
    feed(
        &mut m,
        1,
        vec![msg(b'1', b""), msg(b'2', b""), tag("INSERT 0 1")],
        &mut out,
    );
    assert!(m.wants(0) && !m.wants(1));
    feed(
        &mut m,
        0,
        vec![msg(b'2', b""), tag("INSERT 0 1"), ready(b'T')],
        &mut out,
    );
    assert!(!m.progress().is_done());
    feed(&mut m, 1, vec![ready(b'T')], &mut out);
    assert!(m.progress().is_done() && !m.progress().failed());
    m.finish(&mut out);
    assert_eq!(
        seen(&mut out),
        [
            "1",
            "2",
            "C:INSERT 0 1",
            "2",
            "C:INSERT 0 1",
            "2",
            "C:INSERT 0 1"
        ]
    );
    assert_eq!(m.answered(), usize::MAX);
}

#[test]
fn the_first_error_ends_the_answer_and_the_rest_is_dropped() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    feed(
        &mut m,
        0,
        vec![msg(b'1', b""), msg(b'2', b""), tag("INSERT 0 1")],
        &mut out,
    );
    let step = feed_step(
        &mut m,
        1,
        vec![
            msg(b'1', b""),
            msg(b'2', b""),
            error(sqlstate::UNIQUE_VIOLATION),
        ],
        &mut out,
    );
    assert_eq!(step, Step::CancelOthers);
    // Failed: every shard is read (and dropped) to its ReadyForQuery.
    assert!(m.wants(0) && m.wants(1) && m.discarding());
    feed(
        &mut m,
        0,
        vec![msg(b'2', b""), tag("INSERT 0 1"), ready(b'T')],
        &mut out,
    );
    feed(&mut m, 1, vec![ready(b'E')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["1", "2", "C:INSERT 0 1", "2", "E:23505"]);
    // The Parse (message 0) took effect; the failed Execute is message 4.
    assert_eq!(m.answered(), 4);
}

#[test]
fn a_shard_lacking_a_table_fails_the_hidden_parse_with_its_error() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    feed(
        &mut m,
        0,
        vec![msg(b'1', b""), msg(b'2', b""), tag("INSERT 0 1")],
        &mut out,
    );
    feed(
        &mut m,
        1,
        vec![error(sqlstate::UNDEFINED_TABLE), ready(b'I')],
        &mut out,
    );
    feed(
        &mut m,
        0,
        vec![msg(b'2', b""), tag("INSERT 0 1"), ready(b'I')],
        &mut out,
    );
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["1", "2", "C:INSERT 0 1", "E:42P01"]);
    assert_eq!(m.answered(), 3);
}

#[test]
fn close_and_flush_are_answered_by_the_proxy_in_order() {
    let msgs = vec![
        Message::Close,
        parse("s", "SELECT 1"),
        Message::Flush,
        Message::Close,
    ];
    let p = plan(&msgs, 2, None);
    assert_eq!(request(&p, 0), ["P:SELECT 1", "S"]);
    assert_eq!(request(&p, 1), ["S"]);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    m.start(&mut out);
    assert_eq!(seen(&mut out), ["3"]);
    feed(&mut m, 0, vec![msg(b'1', b"")], &mut out);
    assert_eq!(seen(&mut out), ["1", "3"]);
    feed(&mut m, 0, vec![ready(b'I')], &mut out);
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert!(out.is_empty() && m.progress().is_done());
}

#[test]
fn a_proxy_error_mid_batch_stops_what_follows_from_being_sent() {
    let mut msgs = executemany();
    msgs.insert(
        3,
        Message::Fail(error_bytes(sqlstate::INVALID_SQL_STATEMENT_NAME)),
    );
    let p = plan(&msgs, 2, None);
    assert_eq!(
        request(&p, 0),
        ["P:INSERT INTO t VALUES ($1)", "B", "E", "S"]
    );
    assert_eq!(request(&p, 1), ["S"]);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    m.start(&mut out);
    feed(
        &mut m,
        0,
        vec![msg(b'1', b""), msg(b'2', b""), tag("INSERT 0 1")],
        &mut out,
    );
    assert!(m.progress().failed());
    feed(&mut m, 0, vec![ready(b'I')], &mut out);
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["1", "2", "C:INSERT 0 1", "E:26000"]);
    assert_eq!(m.answered(), 3);
}

#[test]
fn a_statement_describe_is_relayed_and_its_bind_needs_no_second_parse() {
    let sel = "SELECT v FROM t WHERE id = $1";
    let msgs = vec![
        parse("", sel),
        bind("", sel, "1", Some(1)),
        Message::Describe(None),
        execute(),
        Message::Describe(Some(("".into(), rest(sel)))),
        bind("", sel, "2", Some(0)),
        execute(),
    ];
    let p = plan(&msgs, 2, None);
    assert_eq!(
        request(&p, 1),
        ["P:SELECT v FROM t WHERE id = $1", "B", "D", "E", "S"]
    );
    assert_eq!(
        request(&p, 0),
        ["P:SELECT v FROM t WHERE id = $1", "D", "B", "E", "S"]
    );
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    let row = || msg(b'D', &[0, 1, 0, 0, 0, 1, b'x']);
    let desc = || msg(b'T', &[0, 0]);
    feed(
        &mut m,
        1,
        vec![
            msg(b'1', b""),
            msg(b'2', b""),
            desc(),
            row(),
            tag("SELECT 1"),
        ],
        &mut out,
    );
    feed(
        &mut m,
        0,
        vec![msg(b'1', b""), msg(b't', &[0, 0]), desc(), msg(b'2', b"")],
        &mut out,
    );
    feed(
        &mut m,
        0,
        vec![row(), row(), tag("SELECT 2"), ready(b'I')],
        &mut out,
    );
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    // The hidden Parse on shard 0 is not seen; the Describe's two messages are.
    assert_eq!(
        seen(&mut out),
        [
            "1",
            "2",
            "T",
            "D",
            "C:SELECT 1",
            "t",
            "T",
            "2",
            "D",
            "D",
            "C:SELECT 2"
        ]
    );
}

#[test]
fn notices_are_relayed_and_parameter_status_dropped() {
    let p = plan(&[parse("", "SELECT 1")], 1, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    let notice = msg(b'N', b"Mhi\0\0");
    feed(
        &mut m,
        0,
        vec![notice, msg(b'S', b"a\0b\0"), msg(b'1', b""), ready(b'I')],
        &mut out,
    );
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["N", "1"]);
}

#[test]
fn a_portal_suspended_ends_an_execute() {
    let msgs = vec![
        bind("q", "SELECT 1", "1", Some(0)),
        Message::Execute(Bytes::from_static(&[0, 0, 0, 0, 1])),
        execute(),
    ];
    let p = plan(&msgs, 1, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    let row = || msg(b'D', &[0, 0]);
    let frames = vec![
        msg(b'1', b""),
        msg(b'2', b""),
        row(),
        msg(b's', b""),
        row(),
        tag("SELECT 1"),
        ready(b'I'),
    ];
    feed(&mut m, 0, frames, &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["2", "D", "s", "D", "C:SELECT 1"]);
}

#[test]
fn a_ready_for_query_before_the_answers_closes_the_shard() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    let step = feed_step(&mut m, 0, vec![msg(b'1', b""), ready(b'I')], &mut out);
    assert_eq!(step, Step::Broken);
    assert_eq!(m.progress().shard_ends()[0], ShardEnd::Lost);
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["1", "E:08P01"]);
}

#[test]
fn an_unexpected_or_out_of_turn_message_closes_the_shard() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    assert_eq!(m.on_message(1, msg(b'1', b""), &mut out), Step::Broken);
    let mut m = Pipeline::new(p.clone()).0;
    assert_eq!(m.on_message(0, msg(b'G', b""), &mut out), Step::Broken);
    assert!(m.progress().failed());
}

#[test]
fn a_lost_shard_fails_the_batch_with_a_connection_error() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    feed(&mut m, 0, vec![msg(b'1', b"")], &mut out);
    assert_eq!(m.on_lost(0, &mut out), Step::CancelOthers);
    assert!(!m.wants(0) && m.wants(1));
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["1", "E:08006"]);
}

#[test]
fn a_cancel_request_fails_the_batch_once() {
    let p = plan(&executemany(), 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    assert_eq!(m.on_cancel_requested(), Step::CancelOthers);
    assert_eq!(m.on_cancel_requested(), Step::Continue);
    feed(
        &mut m,
        0,
        vec![error(sqlstate::QUERY_CANCELED), ready(b'I')],
        &mut out,
    );
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["E:57014"]);
}

#[test]
fn shards_that_end_with_answers_missing_fail_the_batch() {
    let p = plan(&[parse("", "SELECT 1")], 2, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    // Shard 0 owes a ParseComplete but is lost; shard 1 owes nothing.
    let _ = m.on_lost(0, &mut out);
    feed(&mut m, 1, vec![ready(b'I')], &mut out);
    m.finish(&mut out);
    assert_eq!(seen(&mut out), ["E:08006"]);
}

#[test]
fn a_bind_without_a_shard_stays_where_the_batch_is() {
    let msgs = vec![
        bind("a", "SELECT 1", "1", Some(1)),
        execute(),
        bind("b", "SELECT 2", "1", None),
        execute(),
    ];
    let p = plan(&msgs, 2, None);
    assert_eq!(request(&p, 0), ["S"]);
    assert_eq!(
        request(&p, 1),
        ["P:SELECT 1", "B", "E", "P:SELECT 2", "B", "E", "S"]
    );
}

#[test]
fn messages_after_a_shards_ready_for_query_close_it() {
    let p = plan(&[], 1, None);
    let mut m = Pipeline::new(p.clone()).0;
    let mut out = BytesMut::new();
    feed(&mut m, 0, vec![ready(b'I')], &mut out);
    assert!(m.progress().is_done());
    assert_eq!(m.on_message(0, msg(b'1', b""), &mut out), Step::Broken);
}
