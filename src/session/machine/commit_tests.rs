use bytes::BytesMut;

use super::{Commit, Finish, Outcome, Refusal};
use crate::protocol::{query_text, split_frame, sqlstate, Frame};
use crate::session::machine::shard_stream::{ShardStream, Step};
use crate::session::machine::test_frames::{error, msg, ready, tag};

/// What a participant does with a statement: the usual answer, an error with a SQLSTATE, a
/// lost connection, or these messages.
enum Reply {
    Ok,
    Error(&'static str),
    Lost,
    Frames(Vec<Frame>),
}

/// The usual answer to `sql`.
fn usual(sql: &str) -> Vec<Frame> {
    let t = if sql.contains("; PREPARE TRANSACTION") {
        return vec![tag("INSERT 0 1"), tag("PREPARE TRANSACTION"), ready(b'I')];
    } else if sql.starts_with("PREPARE TRANSACTION") {
        "PREPARE TRANSACTION"
    } else if sql.starts_with("COMMIT PREPARED") {
        "COMMIT PREPARED"
    } else if sql.starts_with("ROLLBACK PREPARED") {
        "ROLLBACK PREPARED"
    } else if sql.starts_with("DELETE") {
        "DELETE 1"
    } else {
        sql
    };
    vec![tag(t), ready(b'I')]
}

/// Runs `m` until it has finished (or stops moving): each participant answers each statement
/// it gets as `reply(position, sql)` says. Returns the statements each participant got.
fn drive(m: &mut Commit, n: usize, reply: impl Fn(usize, &str) -> Reply) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); n];
    let mut out = BytesMut::new();
    for _ in 0..20 {
        if m.finished() {
            break;
        }
        let mut bufs = vec![BytesMut::new(); n];
        m.take_outgoing(&mut bufs);
        for (i, buf) in bufs.iter_mut().enumerate() {
            while let Some(f) = split_frame(buf, usize::MAX).unwrap() {
                assert_eq!(f.tag, b'Q');
                let sql = query_text(f.body()).to_string();
                assert!(m.wants(i), "a statement goes only to one the machine reads");
                let frames = match reply(i, &sql) {
                    Reply::Ok => usual(&sql),
                    Reply::Error(code) => vec![error(code), ready(b'I')],
                    Reply::Frames(f) => f,
                    Reply::Lost => {
                        assert_eq!(m.on_lost(i, &mut out), Step::Continue);
                        got[i].push(sql);
                        continue;
                    }
                };
                got[i].push(sql);
                for f in frames {
                    if m.wants(i) {
                        let _ = m.on_message(i, f, &mut out);
                    }
                }
            }
        }
    }
    assert!(
        out.is_empty(),
        "the commit protocol tells the client nothing itself"
    );
    got
}

fn gids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("g{i}")).collect()
}

fn two_phase(n: usize) -> Commit {
    Commit::two_phase(gids(n), "INSERT log".into(), "DELETE log".into())
}

fn refused(m: &Commit) -> (usize, String, Finish) {
    match m.outcome() {
        Outcome::RolledBack {
            refusal: Refusal { at, code, .. },
            coordinator,
        } => (*at, code.clone(), coordinator.clone()),
        o => panic!("not rolled back: {o:?}"),
    }
}

#[test]
fn the_coordinator_prepares_alone_first_with_the_log_row() {
    let mut m = two_phase(3);
    let mut bufs = vec![BytesMut::new(); 3];
    m.take_outgoing(&mut bufs);
    let f = split_frame(&mut bufs[0], usize::MAX).unwrap().unwrap();
    assert_eq!(query_text(f.body()), "INSERT log; PREPARE TRANSACTION 'g0'");
    assert!(bufs[1].is_empty() && bufs[2].is_empty());
    assert!(m.wants(0) && !m.wants(1) && !m.wants(2));
    assert!(!m.finished());
}

#[test]
fn every_vote_yes_stops_at_prepared_then_commits_coordinator_first() {
    let mut m = two_phase(3);
    let got = drive(&mut m, 3, |_, _| Reply::Ok);
    assert_eq!(m.outcome(), &Outcome::Prepared);
    assert!(m.finished());
    assert_eq!(got[1], ["PREPARE TRANSACTION 'g1'"]);
    assert_eq!(got[2], ["PREPARE TRANSACTION 'g2'"]);
    m.commit();
    assert!(
        m.wants(0) && !m.wants(1),
        "the coordinator's COMMIT PREPARED goes alone"
    );
    let got = drive(&mut m, 3, |_, _| Reply::Ok);
    assert_eq!(got[0], ["COMMIT PREPARED 'g0'", "DELETE log"]);
    assert_eq!(got[1], ["COMMIT PREPARED 'g1'"]);
    assert_eq!(got[2], ["COMMIT PREPARED 'g2'"]);
    assert_eq!(
        m.outcome(),
        &Outcome::Committed {
            unfinished: vec![],
            log_deleted: true
        }
    );
    assert!((0..3).all(|i| m.ends_well(i, false)));
}

#[test]
fn the_others_prepare_at_once() {
    let mut m = two_phase(4);
    let _ = drive(&mut m, 1, |_, _| Reply::Ok);
    assert!(
        (1..4).all(|i| m.wants(i)),
        "every other participant is asked together"
    );
}

#[test]
fn commit_does_nothing_before_every_part_is_prepared() {
    let mut m = two_phase(2);
    m.commit();
    let mut bufs = vec![BytesMut::new(); 2];
    m.take_outgoing(&mut bufs);
    let f = split_frame(&mut bufs[0], usize::MAX).unwrap().unwrap();
    assert!(query_text(f.body()).ends_with("PREPARE TRANSACTION 'g0'"));
}

#[test]
fn a_coordinator_that_refuses_rolls_back_everyone_and_asks_nobody_to_prepare() {
    for code in [sqlstate::UNDEFINED_TABLE, sqlstate::UNIQUE_VIOLATION] {
        let mut m = two_phase(3);
        let got = drive(&mut m, 3, |i, sql| match i {
            0 if sql.contains("PREPARE") => Reply::Error(code),
            _ => Reply::Ok,
        });
        assert_eq!(refused(&m), (0, code.to_string(), Finish::Done));
        assert_eq!(got[1], ["ROLLBACK"]);
        assert_eq!(got[2], ["ROLLBACK"]);
        assert_eq!(
            got[0].len(),
            2,
            "the coordinator's failed transaction is rolled back"
        );
        assert_eq!(got[0][1], "ROLLBACK");
    }
}

#[test]
fn a_read_only_coordinator_is_dropped_and_the_others_stay_in_the_transaction() {
    let mut m = two_phase(3);
    let got = drive(&mut m, 3, |_, sql| {
        if sql.contains("PREPARE") {
            Reply::Error(sqlstate::READ_ONLY_SQL_TRANSACTION)
        } else {
            Reply::Ok
        }
    });
    assert_eq!(m.outcome(), &Outcome::CoordinatorReadOnly);
    assert_eq!(got[0][1], "ROLLBACK");
    assert!(got[1].is_empty() && got[2].is_empty());
    assert!(m.ends_well(0, false));
    assert!(
        m.ends_well(1, true) && m.ends_well(2, true),
        "still in the transaction"
    );
}

#[test]
fn a_participant_that_refuses_rolls_back_every_prepared_part() {
    let mut m = two_phase(4);
    let got = drive(&mut m, 4, |i, sql| match (i, sql.starts_with("PREPARE")) {
        (2, true) => Reply::Error(sqlstate::UNIQUE_VIOLATION),
        _ => Reply::Ok,
    });
    assert_eq!(
        refused(&m),
        (2, sqlstate::UNIQUE_VIOLATION.to_string(), Finish::Done)
    );
    assert_eq!(got[0][1], "ROLLBACK PREPARED 'g0'");
    assert_eq!(got[1][1], "ROLLBACK PREPARED 'g1'");
    assert_eq!(got[2][1], "ROLLBACK");
    assert_eq!(got[3][1], "ROLLBACK PREPARED 'g3'");
}

#[test]
fn the_refusal_named_is_the_first_in_position_order() {
    let mut m = two_phase(4);
    let _ = drive(&mut m, 4, |i, sql| match (i, sql.starts_with("PREPARE")) {
        (3, true) => Reply::Error(sqlstate::DIVISION_BY_ZERO),
        (1, true) => Reply::Error(sqlstate::UNIQUE_VIOLATION),
        _ => Reply::Ok,
    });
    assert_eq!(refused(&m).0, 1);
}

#[test]
fn a_participant_lost_while_preparing_is_a_vote_no_and_not_asked_again() {
    let mut m = two_phase(3);
    let got = drive(
        &mut m,
        3,
        |i, _| if i == 1 { Reply::Lost } else { Reply::Ok },
    );
    let (at, code, coordinator) = refused(&m);
    assert_eq!((at, code.as_str(), coordinator), (1, "", Finish::Done));
    assert_eq!(got[1].len(), 1, "a lost connection gets nothing more");
    assert_eq!(got[2][1], "ROLLBACK PREPARED 'g2'");
    assert!(!m.ends_well(1, false));
}

#[test]
fn answers_that_are_not_a_prepared_transaction_are_votes_no() {
    let rolled_back = vec![tag("ROLLBACK"), ready(b'I')];
    let still_open = vec![tag("PREPARE TRANSACTION"), ready(b'T')];
    for frames in [rolled_back, still_open] {
        let mut m = two_phase(2);
        let frames = std::cell::RefCell::new(Some(frames));
        let _ = drive(&mut m, 2, |i, sql| match (i, sql.starts_with("PREPARE")) {
            (1, true) => Reply::Frames(frames.borrow_mut().take().unwrap()),
            _ => Reply::Ok,
        });
        assert_eq!(refused(&m).0, 1);
    }
}

#[test]
fn a_coordinator_part_gone_at_rollback_is_missing_or_unfinished() {
    for (reply, want) in [
        (Reply::Error(sqlstate::UNDEFINED_OBJECT), Finish::Missing),
        (Reply::Lost, Finish::Unfinished(String::new())),
        (
            Reply::Error(sqlstate::ADMIN_SHUTDOWN),
            Finish::Unfinished(String::new()),
        ),
    ] {
        let mut m = two_phase(2);
        let reply = std::cell::RefCell::new(Some(reply));
        let _ = drive(&mut m, 2, |i, sql| match i {
            1 if sql.starts_with("PREPARE") => Reply::Error(sqlstate::UNIQUE_VIOLATION),
            0 if sql.starts_with("ROLLBACK PREPARED") => reply.borrow_mut().take().unwrap(),
            _ => Reply::Ok,
        });
        let coordinator = refused(&m).2;
        match (coordinator, want) {
            (Finish::Unfinished(why), Finish::Unfinished(_)) => assert!(!why.is_empty()),
            (got, want) => assert_eq!(got, want),
        }
    }
}

/// Prepares `n` participants, then runs the commit with `reply`.
fn commit_with(n: usize, reply: impl Fn(usize, &str) -> Reply) -> (Commit, Vec<Vec<String>>) {
    let mut m = two_phase(n);
    let _ = drive(&mut m, n, |_, _| Reply::Ok);
    assert_eq!(m.outcome(), &Outcome::Prepared);
    m.commit();
    let got = drive(&mut m, n, reply);
    (m, got)
}

#[test]
fn a_participant_lost_at_commit_is_left_unfinished_and_the_log_row_kept() {
    let (m, got) = commit_with(3, |i, _| if i == 2 { Reply::Lost } else { Reply::Ok });
    match m.outcome() {
        Outcome::Committed {
            unfinished,
            log_deleted: false,
        } => assert_eq!(unfinished.iter().map(|u| u.0).collect::<Vec<_>>(), [2]),
        o => panic!("{o:?}"),
    }
    assert_eq!(got[0], ["COMMIT PREPARED 'g0'"], "no DELETE of the log row");
}

#[test]
fn an_unreachable_coordinator_still_commits_the_others() {
    let (m, got) = commit_with(3, |i, _| if i == 0 { Reply::Lost } else { Reply::Ok });
    assert_eq!(got[1], ["COMMIT PREPARED 'g1'"]);
    assert_eq!(got[2], ["COMMIT PREPARED 'g2'"]);
    match m.outcome() {
        Outcome::Committed {
            unfinished,
            log_deleted: false,
        } => assert_eq!(unfinished[0].0, 0),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_part_already_committed_counts_as_done() {
    let (m, got) = commit_with(2, |i, sql| match i {
        1 if sql.starts_with("COMMIT") => Reply::Error(sqlstate::UNDEFINED_OBJECT),
        _ => Reply::Ok,
    });
    assert_eq!(got[0].last().unwrap(), "DELETE log");
    assert_eq!(
        m.outcome(),
        &Outcome::Committed {
            unfinished: vec![],
            log_deleted: true
        }
    );
}

#[test]
fn a_failed_log_delete_is_reported() {
    let (m, _) = commit_with(2, |_, sql| {
        if sql.starts_with("DELETE") {
            Reply::Error(sqlstate::ADMIN_SHUTDOWN)
        } else {
            Reply::Ok
        }
    });
    assert_eq!(
        m.outcome(),
        &Outcome::Committed {
            unfinished: vec![],
            log_deleted: false
        }
    );
}

#[test]
fn one_phase_asks_everyone_at_once_and_names_the_first_error() {
    for commit in [true, false] {
        let mut m = Commit::one_phase(3, commit);
        assert!((0..3).all(|i| m.wants(i)));
        let got = drive(&mut m, 3, |i, _| match i {
            1 => Reply::Error(sqlstate::T_R_SERIALIZATION_FAILURE),
            2 => Reply::Lost,
            _ => Reply::Ok,
        });
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        assert!(got.iter().all(|g| g == &[sql]));
        match m.outcome() {
            Outcome::Ended { error: Some(r) } => {
                assert_eq!(
                    (r.at, r.code.as_str()),
                    (1, sqlstate::T_R_SERIALIZATION_FAILURE)
                )
            }
            o => panic!("{o:?}"),
        }
    }
    let mut m = Commit::one_phase(2, true);
    let _ = drive(&mut m, 2, |_, _| Reply::Ok);
    assert_eq!(m.outcome(), &Outcome::Ended { error: None });
}

#[test]
fn a_single_participant_is_prepared_once_the_coordinator_is() {
    let mut m = two_phase(1);
    let _ = drive(&mut m, 1, |_, _| Reply::Ok);
    assert_eq!(m.outcome(), &Outcome::Prepared);
}

#[test]
fn a_cancel_request_changes_nothing() {
    let mut m = two_phase(2);
    assert!(!m.cancellable() && m.outlives_client() && m.patience().is_some());
    assert_eq!(m.on_cancel_requested(), Step::Continue);
    let _ = drive(&mut m, 2, |_, _| Reply::Ok);
    assert_eq!(m.outcome(), &Outcome::Prepared);
}

#[test]
fn an_unexpected_message_loses_the_participant() {
    for bad in [msg(b'D', &[0, 0]), msg(b'Z', b"IX"), msg(b'Z', b"Q")] {
        let mut m = two_phase(2);
        let mut out = BytesMut::new();
        let mut bufs = vec![BytesMut::new(); 2];
        m.take_outgoing(&mut bufs);
        assert_eq!(m.on_message(0, bad, &mut out), Step::Broken);
        assert!(!m.ends_well(0, false));
        let _ = drive(&mut m, 2, |_, _| Reply::Ok);
        assert_eq!(refused(&m).0, 0);
    }
}

#[test]
fn notices_and_parameter_changes_are_passed_over() {
    let mut m = two_phase(2);
    let _ = drive(&mut m, 2, |_, sql| {
        let mut f = vec![msg(b'N', b"SWARNING\0\0"), msg(b'S', b"a\0b\0")];
        f.extend(usual(sql));
        Reply::Frames(f)
    });
    assert_eq!(m.outcome(), &Outcome::Prepared);
}

#[test]
fn a_lost_connection_outside_the_round_changes_nothing() {
    let mut m = two_phase(3);
    let mut out = BytesMut::new();
    assert_eq!(m.on_lost(2, &mut out), Step::Continue);
    assert!(m.wants(0), "the coordinator's prepare is still awaited");
}
