use super::*;
use crate::protocol::empty_message;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn stmt(id: u64) -> Arc<Prepared> {
    Arc::new(Prepared {
        id,
        name: format!("sg_{id}"),
        parse: Bytes::new(),
        validated: Default::default(),
        command: crate::sql::scan::SessionCommand::None,
        set_config: Vec::new(),
        effect: Default::default(),
        generation: 0,
        route: Default::default(),
        shape: Default::default(),
    })
}

fn run(relay: &mut Relay, server: &[Vec<u8>]) -> (Vec<u8>, Vec<Event>) {
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut events = Vec::new();
    // feed byte by byte to exercise partial messages
    for m in server {
        for b in m {
            inbuf.extend_from_slice(&[*b]);
            process_all(relay, &mut inbuf, &mut out, &mut events);
        }
    }
    (out.to_vec(), events)
}

/// What the session does with server input: processes it, writes each ReadyForQuery the
/// relay reports (with the server's status), and goes on after it.
fn process_all(
    relay: &mut Relay,
    inbuf: &mut BytesMut,
    out: &mut BytesMut,
    events: &mut Vec<Event>,
) {
    loop {
        let seen = events.len();
        relay.process(inbuf, out, events).unwrap();
        let Some(Event::Ready(status)) = events[seen..].last() else {
            return;
        };
        crate::protocol::ready_for_query(out, *status);
    }
}

#[test]
fn stops_after_the_clients_ready_for_query_without_writing_it() {
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Query));
    r.push(Expect::Client(Kind::Query));
    let server = [
        msg(b'C', b"BEGIN\0"),
        msg(b'Z', b"T"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"T"),
    ]
    .concat();
    let mut inbuf = BytesMut::from(&server[..]);
    let (mut out, mut events) = (BytesMut::new(), Vec::new());
    r.process(&mut inbuf, &mut out, &mut events).unwrap();
    assert_eq!(
        &out[..],
        &msg(b'C', b"BEGIN\0")[..],
        "the ReadyForQuery is the session's"
    );
    assert!(matches!(
        events[..],
        [Event::Ready(TxStatus::InTransaction)]
    ));
    assert_eq!(&inbuf[..], &server[11 + 6..], "the second answer waits");
    r.process(&mut inbuf, &mut out, &mut events).unwrap();
    assert!(inbuf.is_empty());
    assert_eq!(events.len(), 2);
    assert!(r.idle());
}

#[test]
fn a_made_up_answer_keeps_its_ready_for_query() {
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Query));
    let mut made = BytesMut::new();
    crate::protocol::command_complete(&mut made, "SET");
    crate::protocol::ready_for_query(&mut made, TxStatus::Idle);
    r.push(Expect::SyntheticReady(made.clone().freeze()));
    assert_eq!(r.owed_ready(), 2);
    let (out, events) = run(&mut r, &[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")]);
    let mut expected = msg(b'C', b"SELECT 1\0");
    expected.extend(msg(b'Z', b"I"));
    expected.extend_from_slice(&made);
    assert_eq!(out, expected);
    assert!(matches!(
        events[..],
        [Event::Ready(TxStatus::Idle), Event::ProxyReady]
    ));
    assert_eq!(r.owed_ready(), 0);
}

#[test]
fn injected_parse_is_swallowed_and_synthetic_parse_complete_is_ordered() {
    let mut r = Relay::default();
    // client: P(s1, already on server) B E S ; proxy injected a Parse before a second B
    r.push(Expect::Synthetic(empty_message(b'1')));
    r.push(Expect::Client(Kind::Bind));
    r.push(Expect::Client(Kind::Execute));
    r.push(Expect::Parse {
        stmt: Some(stmt(2)),
        visible: false,
        client_name: None,
    });
    r.push(Expect::Client(Kind::Bind));
    r.push(Expect::Client(Kind::Execute));
    r.push(Expect::Client(Kind::Sync));
    assert_eq!(r.owed_ready(), 1);
    let server = vec![
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 0\0"),
        msg(b'Z', b"I"),
    ];
    let (out, events) = run(&mut r, &server);
    let mut expected = msg(b'1', b"");
    for m in [
        &server[0], &server[1], &server[2], &server[4], &server[5], &server[6],
    ] {
        expected.extend_from_slice(m);
    }
    assert_eq!(out, expected, "ParseComplete first, injected one swallowed");
    assert!(matches!(events[..], [Event::Ready(TxStatus::Idle)]));
    assert!(r.idle());
    assert_eq!(r.owed_ready(), 0);
}

#[test]
fn error_skips_to_sync_and_reports_unprepared_statements() {
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Bind));
    r.push(Expect::Parse {
        stmt: Some(stmt(3)),
        visible: true,
        client_name: Some("c".into()),
    });
    r.push(Expect::Synthetic(empty_message(b'1')));
    r.push(Expect::Client(Kind::Execute));
    r.push(Expect::Client(Kind::Sync));
    let err = msg(b'E', b"SERROR\0C22P02\0Mbad\0\0");
    let server = vec![err.clone(), msg(b'Z', b"I")];
    let (out, events) = run(&mut r, &server);
    let mut expected = err;
    expected.extend(msg(b'Z', b"I"));
    assert_eq!(out, expected, "no ParseComplete after the error");
    assert!(
        matches!(&events[0], Event::ParseFailed { stmt, client_name: Some(n) } if stmt.id == 3 && n == "c")
    );
    assert!(matches!(events[1], Event::Ready(TxStatus::Idle)));
    assert!(r.idle());
}

#[test]
fn simple_query_error_waits_for_ready_and_injected_query_is_silent_but_for_parameter_status() {
    let mut r = Relay::default();
    r.push(Expect::InjectedQuery("settings"));
    r.push(Expect::Client(Kind::Query));
    let server = vec![
        msg(b'T', b"\0\0"),
        msg(b'D', b"\0\0"),
        msg(b'S', b"TimeZone\0UTC\0"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
        msg(b'E', b"SERROR\0C42601\0Mx\0\0"),
        msg(b'Z', b"I"),
    ];
    let (out, events) = run(&mut r, &server);
    let mut expected = server[2].clone();
    expected.extend(&server[5]);
    expected.extend(&server[6]);
    assert_eq!(out, expected);
    assert!(matches!(events[..], [Event::Ready(TxStatus::Idle)]));
}

#[test]
fn large_rows_stream_without_whole_message_buffering() {
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Query));
    let big = msg(b'D', &vec![7u8; 100_000]);
    let mut inbuf = BytesMut::from(&big[..1000]);
    let mut out = BytesMut::new();
    let mut ev = Vec::new();
    r.process(&mut inbuf, &mut out, &mut ev).unwrap();
    assert_eq!(out.len(), 1000, "partial row forwarded at once");
    assert!(inbuf.is_empty());
    assert!(r
        .process(
            &mut BytesMut::from(&[b'Z', 0, 0, 0, 3][..]),
            &mut out,
            &mut ev
        )
        .is_ok());
}

#[test]
fn garbage_from_server_is_an_error() {
    let mut r = Relay::default();
    let mut inbuf = BytesMut::from(&[b'Z', 0, 0, 0, 9, b'I'][..]);
    assert!(r
        .process(&mut inbuf, &mut BytesMut::new(), &mut Vec::new())
        .is_err());
    let mut inbuf = BytesMut::from(&[b'D', 0, 0, 0, 1][..]);
    assert!(r
        .process(&mut inbuf, &mut BytesMut::new(), &mut Vec::new())
        .is_err());
}

#[test]
fn extended_copy_in_ignores_the_syncs_sent_in_copy_mode() {
    // client: Bind Execute Sync, then (after CopyInResponse) CopyData CopyDone Sync; the server
    // ignores the first Sync and answers one ReadyForQuery.
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Bind));
    r.push(Expect::Client(Kind::Execute));
    r.push(Expect::Client(Kind::Sync));
    let (out, _) = run(&mut r, &[msg(b'2', b""), msg(b'G', b"\0\0\0")]);
    assert_eq!(out.len(), 5 + 8);
    assert!(r.sync_ignored());
    assert_eq!(r.owed_ready(), 0);
    r.copy_ended();
    assert!(!r.sync_ignored());
    r.push(Expect::Client(Kind::Sync));
    let (_, events) = run(&mut r, &[msg(b'C', b"COPY 1\0"), msg(b'Z', b"I")]);
    assert!(matches!(events[..], [Event::Ready(TxStatus::Idle)]));
    assert!(r.idle());
}

#[test]
fn parameter_status_and_stale_plan_errors_are_reported_whole() {
    let mut r = Relay::default();
    r.push(Expect::Client(Kind::Query));
    let mut err = BytesMut::new();
    crate::protocol::PgError::error("XX000", "cache lookup failed for type 16388").encode(&mut err);
    let mut other = BytesMut::new();
    crate::protocol::PgError::error("XX000", "something else").encode(&mut other);
    let server = vec![
        msg(b'S', b"TimeZone\0Asia/Tokyo\0"),
        err.to_vec(),
        other.to_vec(),
        msg(b'Z', b"I"),
    ];
    // byte by byte: the messages are still seen whole
    let (out, events) = run(&mut r, &server);
    assert_eq!(out, server.concat());
    assert!(
        matches!(&events[..], [Event::ParameterStatus(Some(n)), Event::StalePlan, Event::Ready(TxStatus::Idle)] if n == "TimeZone"),
        "{events:?}"
    );
}

#[test]
fn answers_are_counted_for_statistics_byte_by_byte() {
    let server = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 3\0"),
        msg(b'2', b""),
        msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
        msg(b'Z', b"I"),
    ];
    let expect = |r: &mut Relay| {
        for k in [
            Kind::Bind,
            Kind::Execute,
            Kind::Bind,
            Kind::Execute,
            Kind::Sync,
        ] {
            r.push(Expect::Client(k));
        }
        r.queue.push_front(Expect::Parse {
            stmt: None,
            visible: true,
            client_name: None,
        });
    };
    let mut r = Relay::counting(true);
    expect(&mut r);
    run(&mut r, &server);
    let a = r.answered;
    assert_eq!((a.completed, a.rows, a.error_at), (1, 3, Some(1)));
    assert_eq!(a.class, Some(*b"22"));
    // Not counting: only the error's class is kept (for the errors metric).
    let mut r = Relay::default();
    expect(&mut r);
    run(&mut r, &server);
    assert_eq!((r.answered.rows, r.answered.class), (0, Some(*b"22")));
}
