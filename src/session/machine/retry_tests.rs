//! The retry of a read: what is kept for a replay, when server input is held back.

use super::*;
use crate::protocol::{self, PgError, TxStatus};
use bytes::{Bytes, BytesMut};

fn frame(tag: u8, body: &[u8]) -> Frame {
    let mut b = BytesMut::new();
    b.extend_from_slice(&[tag]);
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    Frame {
        tag,
        bytes: b.freeze(),
    }
}

fn query(sql: &str) -> Frame {
    frame(b'Q', format!("{sql}\0").as_bytes())
}

fn parse(name: &str) -> Frame {
    frame(b'P', format!("{name}\0SELECT 1\0\0\0").as_bytes())
}

fn notice(code: &str) -> Vec<u8> {
    // A NoticeResponse is an ErrorResponse with another tag.
    let mut b = BytesMut::new();
    PgError::error("00000", "x").encode(&mut b);
    let mut v = b.to_vec();
    v[0] = b'N';
    let at = v.windows(6).position(|w| w == b"C00000").unwrap();
    v[at + 1..at + 6].copy_from_slice(code.as_bytes());
    v
}

fn answer() -> BytesMut {
    let mut b = BytesMut::new();
    protocol::command_complete(&mut b, "SELECT 1");
    b
}

fn ready(mut b: BytesMut) -> BytesMut {
    protocol::ready_for_query(&mut b, TxStatus::Idle);
    b
}

fn retrying() -> ReadRetry {
    let mut r = ReadRetry::default();
    r.checked_out(true);
    r
}

#[test]
fn a_read_is_replayed_in_order_on_another_server() {
    let mut r = retrying();
    let sent = [
        parse(""),
        frame(b'B', b"\0\0\0\0\0\0\0"),
        frame(b'E', b"\0\0\0\0\0"),
        frame(b'S', b""),
    ];
    for f in &sent {
        r.record(f);
    }
    assert!(r.can_retry());
    let replay = r.retry("a:1".into());
    let bytes = |fs: &[Frame]| fs.iter().map(|f| f.bytes.clone()).collect::<Vec<_>>();
    assert_eq!(bytes(&replay), bytes(&sent));
    assert_eq!(r.avoid(), ["a:1".to_string()]);
    assert!(!r.can_retry(), "the replay is checked out afresh");
}

#[test]
fn a_connection_not_for_a_read_is_never_retried() {
    let mut r = ReadRetry::default();
    r.checked_out(false);
    r.record(&query("SELECT 1"));
    assert!(!r.can_retry());
}

#[test]
fn a_named_parse_is_not_replayed() {
    let mut r = retrying();
    r.record(&parse("s1"));
    assert!(!r.can_retry(), "it changed the client's statement map");
}

#[test]
fn copy_data_and_function_calls_are_not_replayed() {
    for tag in [b'd', b'c', b'f', b'F', b'C'] {
        let mut r = retrying();
        r.record(&frame(tag, b"x\0"));
        assert!(!r.can_retry(), "{}", tag as char);
    }
}

#[test]
fn a_large_request_is_not_replayed() {
    let mut r = retrying();
    let big = query(&"x".repeat(MAX_REPLAY_BYTES / 2));
    r.record(&big);
    assert!(r.can_retry());
    r.record(&big);
    assert!(!r.can_retry(), "over {MAX_REPLAY_BYTES} bytes");
}

#[test]
fn an_answer_seen_by_the_client_ends_the_retry() {
    let mut r = retrying();
    r.record(&query("SELECT 1"));
    r.answered();
    assert!(!r.can_retry());
    r.record(&query("SELECT 2"));
    assert!(!r.can_retry(), "stays off until the next checkout");
    r.checked_out(true);
    assert!(r.can_retry());
}

#[test]
fn retries_are_bounded_and_remembered_until_release() {
    let mut r = retrying();
    for i in 0..MAX_RETRIES {
        r.checked_out(true);
        r.record(&query("SELECT 1"));
        assert!(r.can_retry(), "retry {i}");
        r.retry(format!("s:{i}"));
    }
    r.checked_out(true);
    assert!(!r.can_retry(), "after {MAX_RETRIES} retries");
    assert_eq!(r.avoid().len(), MAX_RETRIES as usize);
    r.released();
    assert!(r.avoid().is_empty());
    r.checked_out(true);
    assert!(r.can_retry());
}

#[test]
fn an_incomplete_answer_is_held_while_a_ready_is_owed() {
    let a = answer();
    assert_eq!(hold(&a, 1, false), ReadHold::Wait);
    assert_eq!(
        hold(&a[..7], 1, false),
        ReadHold::Wait,
        "a message cut short"
    );
    assert_eq!(
        hold(&a, 0, false),
        ReadHold::Go,
        "after a Flush the client waits for it"
    );
    assert_eq!(hold(b"", 1, false), ReadHold::Go, "nothing to hold");
}

#[test]
fn a_complete_answer_goes() {
    assert_eq!(hold(&ready(answer()), 1, false), ReadHold::Go);
}

#[test]
fn a_large_answer_goes_before_its_end() {
    let mut big = BytesMut::new();
    while big.len() < HOLD_BYTES {
        protocol::command_complete(&mut big, "SELECT 1");
    }
    assert_eq!(
        hold(&big, 1, false),
        ReadHold::Go,
        "held only up to {HOLD_BYTES} bytes"
    );
}

#[test]
fn ordinary_notices_and_errors_keep_waiting() {
    let mut v = answer().to_vec();
    v.extend(notice("01000"));
    let mut e = BytesMut::new();
    PgError::error("42601", "syntax").encode(&mut e);
    v.extend_from_slice(&e);
    assert_eq!(hold(&v, 1, false), ReadHold::Wait);
}

#[test]
fn a_shutdown_notice_or_a_fatal_error_is_a_goodbye() {
    let mut v = answer().to_vec();
    v.extend(notice("57P01"));
    assert_eq!(hold(&v, 1, false), ReadHold::Dying);
    for severity in ["FATAL", "PANIC"] {
        let mut e = PgError::fatal("57P01", "bye");
        e.severity = severity;
        let mut b = answer();
        e.encode(&mut b);
        assert_eq!(hold(&b, 1, false), ReadHold::Dying, "{severity}");
    }
}

#[test]
fn copy_waiting_for_the_client_goes() {
    assert_eq!(hold(b"G\0\0\0\x07\0\0\0", 1, false), ReadHold::Go);
    assert_eq!(hold(b"W\0\0\0\x07\0\0\0", 1, false), ReadHold::Go);
}

#[test]
fn a_bad_length_goes_so_the_relay_reports_it() {
    assert_eq!(hold(b"X\0\0\0\x02", 1, false), ReadHold::Go);
    let mut v = answer().to_vec();
    v.extend_from_slice(b"T\xff\xff\xff\xff");
    assert_eq!(hold(&v, 1, false), ReadHold::Go);
}

#[test]
fn hold_never_panics_on_any_prefix() {
    let mut v = ready(answer()).to_vec();
    v.extend(notice("57P01"));
    let all = Bytes::from(v);
    for end in 0..=all.len() {
        for start in 0..end.min(8) {
            let _ = hold(&all[start..end], 1, false);
        }
    }
}

#[test]
fn a_replicas_retry_safe_error_is_retried_elsewhere() {
    let cases = [
        // The hot-standby conflict, and the other rollbacks a replica may give.
        ("40001", true, ReadHold::Refused),
        ("40P01", true, ReadHold::Refused),
        ("53200", true, ReadHold::Refused),
        // The same errors on the primary are the client's answer.
        ("40001", false, ReadHold::Wait),
        // The client's own errors, and errors that leave the outcome unknown, are answers.
        ("42601", true, ReadHold::Wait),
        ("23505", true, ReadHold::Wait),
        ("57014", true, ReadHold::Wait),
        ("40003", true, ReadHold::Wait),
        ("XX000", true, ReadHold::Wait),
    ];
    for (code, on_replica, want) in cases {
        let mut v = answer().to_vec();
        let mut e = BytesMut::new();
        PgError::error(code, "x").encode(&mut e);
        v.extend_from_slice(&e);
        assert_eq!(
            hold(&v, 1, on_replica),
            want,
            "{code} on_replica={on_replica}"
        );
        // Also once its ReadyForQuery has come.
        if want == ReadHold::Refused {
            assert_eq!(
                hold(&ready(BytesMut::from(&v[..])), 1, true),
                ReadHold::Refused
            );
        }
    }
}

#[test]
fn a_write_is_retryable_only_until_the_proxys_setup_is_answered() {
    let mut r = ReadRetry::default();
    r.checked_out(false);
    assert!(!r.can_retry());
    r.guard_setup();
    assert!(
        r.can_retry() && !r.retry_on_drop(),
        "a FATAL first, not a drop"
    );
    r.setup_answered();
    assert!(!r.can_retry(), "the server may have run the write");
    // A read stays retryable after the setup, and a drop may be retried.
    r.checked_out(true);
    r.guard_setup();
    r.setup_answered();
    assert!(r.can_retry() && r.retry_on_drop());
    r.released();
    assert!(!r.can_retry());
}
