//! ReadyForQuery decisions, the release rule and statement mode's refusal.

use super::*;
use crate::protocol::TxStatus::{Failed, Idle, InTransaction};

fn ready(status: TxStatus) -> AtReady {
    AtReady {
        status,
        settled: true,
        abort_at_ready: false,
        outside_deferred: false,
        statement_mode: false,
    }
}

macro_rules! ready_cases {
    ($($name:ident: $at:expr => $expect:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_eq!(at_ready($at), $expect);
            }
        )*
    };
}

ready_cases! {
    idle_passes: ready(Idle) => Ready::Pass;
    in_transaction_passes: ready(InTransaction) => Ready::Pass;
    failed_passes: ready(Failed) => Ready::Pass;
    refused_control_aborts_at_the_batch_end: AtReady { abort_at_ready: true, ..ready(InTransaction) } => Ready::AbortRefusedBatch;
    refused_control_waits_for_the_last_answer: AtReady { abort_at_ready: true, settled: false, ..ready(InTransaction) } => Ready::Pass;
    batch_outside_the_deferred_transaction_shows_it: AtReady { outside_deferred: true, ..ready(Idle) } => Ready::StillInTransaction;
    outside_deferred_not_idle_passes: AtReady { outside_deferred: true, ..ready(InTransaction) } => Ready::Pass;
    statement_mode_undoes_a_transaction: AtReady { statement_mode: true, ..ready(InTransaction) } => Ready::UndoTransaction;
    statement_mode_undoes_a_failed_transaction: AtReady { statement_mode: true, ..ready(Failed) } => Ready::UndoTransaction;
    statement_mode_waits_for_the_pipeline: AtReady { statement_mode: true, settled: false, ..ready(InTransaction) } => Ready::Pass;
    statement_mode_idle_passes: AtReady { statement_mode: true, ..ready(Idle) } => Ready::Pass;
}

fn releasable() -> Releasable {
    Releasable {
        managed: true,
        pinned: false,
        settled: true,
        unsynced: false,
        status: Idle,
        outside_deferred: false,
    }
}

#[test]
fn an_idle_settled_managed_connection_is_released() {
    assert!(releasable().now());
}

#[test]
fn a_connection_is_kept_for_anything_unfinished() {
    let keep = [
        Releasable {
            managed: false,
            ..releasable()
        },
        Releasable {
            pinned: true,
            ..releasable()
        },
        Releasable {
            settled: false,
            ..releasable()
        },
        Releasable {
            unsynced: true,
            ..releasable()
        },
        Releasable {
            status: InTransaction,
            ..releasable()
        },
        Releasable {
            status: Failed,
            ..releasable()
        },
    ];
    for r in keep {
        assert!(!r.now(), "{r:?}");
    }
}

#[test]
fn a_batch_outside_the_deferred_transaction_is_released_after_it() {
    let r = Releasable {
        status: InTransaction,
        outside_deferred: true,
        ..releasable()
    };
    assert!(r.now());
    assert!(!Releasable {
        unsynced: true,
        ..r
    }
    .now());
}

#[test]
fn statement_mode_detects_transaction_starts() {
    for sql in [
        "BEGIN",
        "  begin isolation level serializable",
        "START TRANSACTION;",
        "Begin;",
        "begin\n",
    ] {
        assert!(starts_transaction(sql), "{sql}");
    }
    for sql in [
        "beginning",
        "select 1",
        "started",
        "begin_x()",
        "",
        "COMMIT",
        "-- begin",
    ] {
        assert!(!starts_transaction(sql), "{sql}");
    }
}
