use bytes::Bytes;

use super::{encoded, Progress, ShardEnd, Step};
use crate::protocol::{error_fields, sqlstate, Frame, PgError, TxStatus};

fn ready(status: &[u8]) -> Frame {
    let mut b = vec![b'Z'];
    b.extend_from_slice(&(status.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(status);
    Frame {
        tag: b'Z',
        bytes: Bytes::from(b),
    }
}

fn code(p: &Progress) -> String {
    error_fields(&p.error().expect("an error")[5..]).0
}

#[test]
fn a_new_statement_runs_everywhere_and_is_not_done() {
    let p = Progress::new(3);
    assert_eq!(p.shard_count(), 3);
    assert!((0..3).all(|i| p.running(i)));
    assert!(!p.running(3));
    assert!(!p.is_done() && !p.failed());
}

#[test]
fn ready_for_query_records_each_status_byte() {
    let mut p = Progress::new(3);
    assert!(p.ready(0, &ready(b"I")));
    assert!(p.ready(1, &ready(b"T")));
    assert!(p.ready(2, &ready(b"E")));
    assert_eq!(
        p.shard_ends(),
        [
            ShardEnd::Ready(TxStatus::Idle),
            ShardEnd::Ready(TxStatus::InTransaction),
            ShardEnd::Ready(TxStatus::Failed)
        ]
    );
    assert!(p.is_done());
}

#[test]
fn malformed_or_repeated_ready_for_query_is_refused() {
    let mut p = Progress::new(1);
    for bad in [&b""[..], b"X", b"II"] {
        assert!(!p.ready(0, &ready(bad)), "{bad:?}");
    }
    assert!(p.ready(0, &ready(b"I")));
    assert!(!p.ready(0, &ready(b"I")), "a second one");
    assert!(!p.ready(5, &ready(b"I")), "no such shard");
}

#[test]
fn the_first_error_is_kept_and_asks_for_the_others_to_be_cancelled() {
    let mut p = Progress::new(2);
    let first = PgError::error(sqlstate::DIVISION_BY_ZERO, "first");
    assert_eq!(p.fail_with(&first), Step::CancelOthers);
    assert_eq!(
        p.fail(encoded(&PgError::error(sqlstate::QUERY_CANCELED, "later"))),
        Step::Continue
    );
    assert_eq!(code(&p), "22012");
    assert!(!p.is_done(), "an error does not end the shards");
}

#[test]
fn a_shard_breaking_the_protocol_is_lost_with_08p01() {
    let mut p = Progress::new(2);
    assert_eq!(p.lose(1, "nonsense"), Step::Broken);
    assert_eq!(p.shard_ends()[1], ShardEnd::Lost);
    assert_eq!(code(&p), "08P01");
    let message = error_fields(&p.error().unwrap()[5..]).1;
    assert!(message.contains("shard 1 sent nonsense"), "{message}");
    // A breach after an error keeps the first error but still loses the shard.
    let mut p = Progress::new(2);
    let _ = p.cancel_requested();
    assert_eq!(p.lose(0, "nonsense"), Step::Broken);
    assert_eq!(code(&p), "57014");
}

#[test]
fn a_lost_connection_fails_once_with_08006() {
    let mut p = Progress::new(2);
    assert_eq!(p.lost(0), Step::CancelOthers);
    assert_eq!(p.lost(0), Step::Continue, "already lost");
    assert_eq!(p.lost(1), Step::Continue, "the statement already failed");
    assert_eq!(code(&p), "08006");
    assert!(p.is_done());
}

#[test]
fn a_shard_that_answered_is_not_lost_by_a_late_read_error() {
    let mut p = Progress::new(1);
    assert!(p.ready(0, &ready(b"I")));
    assert_eq!(p.lost(0), Step::Continue);
    assert_eq!(p.shard_ends()[0], ShardEnd::Ready(TxStatus::Idle));
    assert!(!p.failed());
}

#[test]
fn a_cancel_request_fails_with_57014_unless_already_failed() {
    let mut p = Progress::new(1);
    assert_eq!(p.cancel_requested(), Step::CancelOthers);
    assert_eq!(code(&p), "57014");
    let mut p = Progress::new(1);
    let _ = p.fail_with(&PgError::error(sqlstate::DIVISION_BY_ZERO, "x"));
    assert_eq!(p.cancel_requested(), Step::Continue);
    assert_eq!(code(&p), "22012");
}

#[test]
fn an_incomplete_answer_is_an_internal_error_only_without_another() {
    let mut p = Progress::new(1);
    p.incomplete();
    assert_eq!(code(&p), "XX000");
    let mut p = Progress::new(1);
    let _ = p.lost(0);
    p.incomplete();
    assert_eq!(code(&p), "08006");
}
