//! The routing decision, one case per rule: where the client stands, what the statement
//! needs, what happens.

use super::*;
use crate::protocol::TxStatus::{Failed, Idle, InTransaction};

const S0: ShardId = ShardId::new(0);
const S1: ShardId = ShardId::new(1);
const S2: ShardId = ShardId::new(2);

/// A client of a sharded database (3 shards) holding nothing, outside a transaction.
fn idle() -> Standing {
    Standing {
        status: Idle,
        deferred_begin: None,
        held: None,
        parked: None,
        two_phase: false,
        target: None,
        sharded: true,
        shards: 3,
    }
}

fn in_txn() -> Standing {
    Standing {
        status: InTransaction,
        ..idle()
    }
}

fn two_phase(at: Standing) -> Standing {
    Standing {
        two_phase: true,
        ..at
    }
}

/// Holding a connection to `shard`'s primary with nothing outstanding.
fn holding(at: Standing, shard: ShardId) -> Standing {
    Standing {
        held: Some(Held {
            shard,
            on_primary: true,
            owes: false,
            unsynced: false,
        }),
        ..at
    }
}

/// The held connection owes answers.
fn owing(at: Standing) -> Standing {
    let mut at = at;
    if let Some(h) = at.held.as_mut() {
        h.owes = true;
    }
    at
}

/// The held connection awaits a Sync.
fn unsynced(at: Standing) -> Standing {
    let mut at = at;
    if let Some(h) = at.held.as_mut() {
        h.unsynced = true;
    }
    at
}

/// The held connection is a replica.
fn on_replica(at: Standing) -> Standing {
    let mut at = at;
    if let Some(h) = at.held.as_mut() {
        h.on_primary = false;
    }
    at
}

fn deferred(read_only: bool) -> Standing {
    Standing {
        deferred_begin: Some(read_only),
        ..in_txn()
    }
}

fn parked(at: Standing, shard: ShardId) -> Standing {
    Standing {
        parked: Some(shard),
        ..at
    }
}

fn unsharded_split() -> Standing {
    Standing {
        sharded: false,
        shards: 1,
        ..idle()
    }
}

fn query(kind: Kind, route: Route) -> Statement {
    let reads = kind == Kind::Read;
    Statement {
        want: Want::of(None, reads),
        writes: kind == Kind::Write,
        route: Ok(route),
        only_commit: kind == Kind::Commit,
        form: Form::Simple {
            single: Some(kind),
            hint: None,
        },
    }
}

fn read(route: Route) -> Statement {
    query(Kind::Read, route)
}

fn write(route: Route) -> Statement {
    query(Kind::Write, route)
}

fn hinted(stmt: Statement, target: Want) -> Statement {
    let single = match stmt.form {
        Form::Simple { single, .. } => single,
        Form::Batch { .. } => None,
    };
    Statement {
        want: Want::of(Some(target), false),
        form: Form::Simple {
            single,
            hint: Some(target),
        },
        ..stmt
    }
}

/// Several statements in one Query.
fn multi(stmt: Statement) -> Statement {
    Statement {
        only_commit: false,
        form: Form::Simple {
            single: None,
            hint: None,
        },
        ..stmt
    }
}

/// A complete extended-protocol batch of reads or writes.
fn batch(want: Want, route: Route) -> Statement {
    Statement {
        want,
        writes: want == Want::Primary,
        route: Ok(route),
        only_commit: false,
        form: Form::Batch {
            complete: true,
            flush: false,
            only_begin: None,
            prepare_only: false,
            split: false,
        },
    }
}

/// A complete batch whose statements route to `shards`, each to one.
fn pipeline(want: Want, shards: Vec<ShardId>) -> Statement {
    let stmt = batch(want, Many(shards));
    Statement {
        form: Form::Batch {
            complete: true,
            flush: false,
            only_begin: None,
            prepare_only: false,
            split: true,
        },
        ..stmt
    }
}

fn incomplete(stmt: Statement, flush: bool) -> Statement {
    let Form::Batch {
        only_begin, split, ..
    } = stmt.form
    else {
        return stmt;
    };
    Statement {
        form: Form::Batch {
            complete: false,
            flush,
            only_begin,
            prepare_only: false,
            split,
        },
        ..stmt
    }
}

fn prepare_only(route: Route) -> Statement {
    Statement {
        writes: false,
        form: Form::Batch {
            complete: true,
            flush: false,
            only_begin: None,
            prepare_only: true,
            split: false,
        },
        ..batch(Want::Read, route)
    }
}

fn batch_begin(read_only: bool) -> Statement {
    Statement {
        form: Form::Batch {
            complete: true,
            flush: false,
            only_begin: Some(read_only),
            prepare_only: false,
            split: false,
        },
        ..batch(Want::Primary, Route::Any)
    }
}

fn batch_commit() -> Statement {
    Statement {
        only_commit: true,
        ..batch(Want::Primary, Route::Any)
    }
}

fn failing_route() -> Statement {
    Statement {
        route: Err(PgError::error(sqlstate::INVALID_PARAMETER_VALUE, "bad key")),
        ..write(Route::Any)
    }
}

fn decision(at: Standing, stmt: Statement) -> Decision {
    decide(&at, stmt).decision
}

macro_rules! cases {
    ($($name:ident: $at:expr, $stmt:expr => $expect:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_eq!(decision($at, $stmt), $expect);
            }
        )*
    };
}

use Decision::*;
use Route::{All, Any, Many, One};

cases! {
    // Outside a transaction, holding nothing: reads to a replica, writes to the primary,
    // each on its shard.
    read_goes_to_a_replica_of_its_shard: idle(), read(One(S2)) => Go(Want::Read, S2);
    write_goes_to_the_primary_of_its_shard: idle(), write(One(S1)) => Go(Want::Primary, S1);
    statement_for_any_shard_goes_to_the_first: idle(), query(Kind::Set, Any) => Go(Want::Primary, S0);
    hint_replica_wins_over_a_write: idle(), hinted(write(One(S0)), Want::Replica) => Go(Want::Replica, S0);
    hint_primary_wins_over_a_read: idle(), hinted(read(One(S0)), Want::Primary) => Go(Want::Primary, S0);
    unparsed_goes_to_the_primary: unsharded_split(), query(Kind::Unparsed, Any) => Go(Want::Primary, S0);
    failing_route_is_refused: idle(), failing_route() =>
        Refuse(PgError::error(sqlstate::INVALID_PARAMETER_VALUE, "bad key"));

    // BEGIN deferral: answered by the proxy; the first statement picks the server.
    begin_is_deferred: idle(), query(Kind::Begin { read_only: false }, Any) => DeferBegin { read_only: false };
    begin_read_only_is_deferred: idle(), query(Kind::Begin { read_only: true }, Any) => DeferBegin { read_only: true };
    batch_begin_is_deferred: idle(), batch_begin(false) => DeferBegin { read_only: false };
    batch_begin_in_a_transaction_is_not_deferred: in_txn(), batch_begin(false) => Go(Want::Primary, S0);
    several_statements_with_begin_are_not_deferred: idle(), multi(query(Kind::Begin { read_only: false }, Any)) => Go(Want::Primary, S0);
    commit_after_deferred_begin_is_answered: deferred(false), query(Kind::Commit, Any) => EndEmpty("COMMIT");
    rollback_after_deferred_begin_is_answered: deferred(true), query(Kind::Rollback, Any) => EndEmpty("ROLLBACK");
    read_after_deferred_begin_goes_to_the_primary: deferred(false), read(One(S1)) => Go(Want::Primary, S1);
    read_after_deferred_read_only_begin_goes_to_a_replica: deferred(true), read(One(S1)) => Go(Want::Read, S1);
    set_transaction_read_only_after_begin_goes_to_a_replica: deferred(false), query(Kind::SetTransactionReadOnly, Any) => Go(Want::Read, S0);
    hint_after_deferred_begin_picks_the_server: deferred(false), hinted(read(Any), Want::Replica) => Go(Want::Replica, S0);
    session_target_after_deferred_begin_picks_the_server: Standing { target: Some(Want::Replica), ..deferred(false) }, write(Any) => Go(Want::Replica, S0);
    batch_after_deferred_begin_goes_to_the_primary: deferred(false), batch(Want::Read, One(S2)) => Go(Want::Primary, S2);
    batch_commit_after_deferred_begin_is_not_answered_here: deferred(false), batch_commit() => Go(Want::Primary, S0);
    prepare_only_batch_after_deferred_begin_runs_outside_it: deferred(false), prepare_only(One(S1)) => GoOutsideTransaction(Want::Read, S1);
    prepare_only_batch_outside_a_transaction_is_plain: idle(), prepare_only(One(S1)) => Go(Want::Read, S1);
    several_statements_after_deferred_begin_start_it: deferred(false), multi(query(Kind::Commit, Any)) => Go(Want::Primary, S0);

    // Holding a connection: everything stays on it, or waits, or is refused.
    in_transaction_a_read_stays_on_the_primary: holding(in_txn(), S1), read(One(S1)) => Go(Want::Read, S1);
    statement_for_any_shard_stays_where_it_is: holding(in_txn(), S2), query(Kind::Set, Any) => Go(Want::Primary, S2);
    write_waits_for_a_busy_replica_connection: owing(on_replica(holding(idle(), S0))), write(One(S0)) => Hold;
    write_on_an_idle_replica_connection_goes_there: on_replica(holding(idle(), S0)), write(One(S0)) => Go(Want::Primary, S0);
    write_in_a_transaction_on_a_replica_stays: owing(on_replica(holding(in_txn(), S0))), write(One(S0)) => Go(Want::Primary, S0);
    read_on_a_busy_replica_connection_pipelines: owing(on_replica(holding(idle(), S0))), read(One(S0)) => Go(Want::Read, S0);
    other_shard_waits_for_the_release: owing(holding(idle(), S0)), write(One(S1)) => Hold;
    other_shard_of_a_pinned_session_is_refused: holding(idle(), S0), write(One(S1)) => RefuseCrossShard(CrossShard::OtherShard);
    other_shard_in_a_transaction_is_refused: holding(in_txn(), S0), write(One(S1)) => RefuseCrossShard(CrossShard::OtherShard);
    other_shard_with_two_phase_switches: two_phase(holding(in_txn(), S0)), write(One(S1)) => Switch(Want::Primary, S1);
    other_shard_with_two_phase_waits_for_answers: owing(two_phase(holding(in_txn(), S0))), write(One(S1)) => Hold;
    other_shard_mid_batch_is_refused: unsynced(two_phase(holding(in_txn(), S0))), batch(Want::Primary, One(S1)) => RefuseCrossShard(CrossShard::MidBatch);
    other_shard_after_deferred_begin_with_a_prepare_connection: holding(deferred(false), S0), write(One(S1)) => RefuseCrossShard(CrossShard::OtherShard);

    // Several shards.
    read_on_all_shards_fans_out: idle(), read(All) => FanOut(vec![S0, S1, S2]);
    read_on_some_shards_fans_out: idle(), read(Many(vec![S0, S2])) => FanOut(vec![S0, S2]);
    several_shards_in_a_transaction_are_refused: in_txn(), read(All) => RefuseCrossShard(CrossShard::NeedsSeveral);
    several_shards_after_deferred_begin_are_refused: deferred(false), read(All) => RefuseCrossShard(CrossShard::NeedsSeveral);
    several_shards_with_two_phase_fan_out: two_phase(in_txn()), write(All) => FanOut(vec![S0, S1, S2]);
    several_shards_wait_for_a_busy_connection: owing(holding(idle(), S0)), read(All) => Hold;
    several_shards_wait_for_an_unsynced_connection: unsynced(holding(idle(), S0)), read(All) => Hold;
    several_shards_on_a_pinned_session_are_refused: holding(idle(), S0), read(All) => RefuseCrossShard(CrossShard::OtherShard);
    several_shards_in_a_two_phase_transaction_holding_fan_out: two_phase(holding(in_txn(), S0)), write(Many(vec![S1, S2])) => FanOut(vec![S1, S2]);
    several_shards_in_a_two_phase_transaction_wait: owing(two_phase(holding(in_txn(), S0))), write(All) => Hold;
    batch_for_several_shards_waits_for_its_sync: idle(), incomplete(batch(Want::Read, All), false) => NeedInput;
    batch_for_several_shards_with_flush_is_refused: idle(), incomplete(batch(Want::Read, All), true) =>
        Refuse(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a statement for several shards must be followed by Sync, not Flush",
        ));
    sharded_batch_waits_for_its_binds: idle(), incomplete(batch(Want::Primary, One(S1)), false) => NeedInput;
    sharded_batch_with_flush_goes: idle(), incomplete(batch(Want::Primary, One(S1)), true) => Go(Want::Primary, S1);
    unsharded_batch_goes_before_its_sync: unsharded_split(), incomplete(batch(Want::Primary, Any), false) => Go(Want::Primary, S0);
    complete_batch_for_all_shards_fans_out: idle(), batch(Want::Read, All) => FanOut(vec![S0, S1, S2]);

    // Pipelines across shards: a batch whose statements route to different shards.
    pipeline_outside_a_transaction_runs: idle(), pipeline(Want::Primary, vec![S0, S2]) => Pipeline(vec![S0, S2]);
    pipeline_waits_for_its_sync: idle(), incomplete(pipeline(Want::Primary, vec![S0, S1]), false) => NeedInput;
    pipeline_with_flush_is_refused: idle(), incomplete(pipeline(Want::Primary, vec![S0, S1]), true) =>
        Refuse(PgError::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a statement for several shards must be followed by Sync, not Flush",
        ));
    pipeline_in_a_transaction_without_two_phase_is_refused: in_txn(), pipeline(Want::Primary, vec![S0, S1]) => RefuseCrossShard(CrossShard::NeedsSeveral);
    pipeline_after_deferred_begin_without_two_phase_is_refused: deferred(false), pipeline(Want::Primary, vec![S0, S1]) => RefuseCrossShard(CrossShard::NeedsSeveral);
    pipeline_in_a_two_phase_transaction_runs_on_its_participants: two_phase(holding(in_txn(), S0)), pipeline(Want::Primary, vec![S0, S1]) => Pipeline(vec![S0, S1]);
    pipeline_waits_for_a_busy_connection: owing(holding(idle(), S0)), pipeline(Want::Read, vec![S0, S1]) => Hold;
    pipeline_on_a_pinned_session_is_refused: holding(idle(), S0), pipeline(Want::Read, vec![S0, S1]) => RefuseCrossShard(CrossShard::OtherShard);

    // Transactions across shards (two-phase commit).
    commit_across_shards_commits_everywhere: parked(two_phase(holding(in_txn(), S1)), S0), query(Kind::Commit, Any) => Commit;
    commit_across_shards_waits_for_answers: owing(parked(two_phase(holding(in_txn(), S1)), S0)), query(Kind::Commit, Any) => Hold;
    batch_commit_across_shards_commits_everywhere: parked(two_phase(in_txn()), S0), batch_commit() => Commit;
    commit_on_one_shard_goes_there: holding(in_txn(), S1), query(Kind::Commit, Any) => Go(Want::Primary, S1);
    failed_transaction_across_shards_refuses_statements: parked(two_phase(Standing { status: Failed, ..idle() }), S1), read(One(S0)) => RefuseAborted;
    failed_transaction_across_shards_takes_rollback: parked(two_phase(Standing { status: Failed, ..idle() }), S1), query(Kind::Rollback, Any) => Go(Want::Primary, S1);
    failed_transaction_on_one_shard_goes_to_the_server: holding(Standing { status: Failed, ..idle() }, S0), read(One(S0)) => Go(Want::Read, S0);
    statement_for_any_shard_follows_the_parked_transaction: parked(two_phase(in_txn()), S2), query(Kind::Set, Any) => Go(Want::Primary, S2);
}

#[test]
fn a_write_on_one_shard_is_noted_for_read_your_writes() {
    assert!(decide(&idle(), write(One(S0))).wrote);
    assert!(decide(&holding(in_txn(), S0), write(One(S0))).wrote);
    assert!(!decide(&idle(), read(One(S0))).wrote);
    // A fan-out, a refusal or a commit across shards is not a write of the held connection.
    assert!(!decide(&two_phase(in_txn()), write(All)).wrote);
    assert!(!decide(&idle(), failing_route()).wrote);
}

#[test]
fn the_want_of_a_batch_is_the_strongest_of_its_statements() {
    assert_eq!(Want::Read.and(Want::Read), Want::Read);
    assert_eq!(Want::Read.and(Want::Replica), Want::Replica);
    assert_eq!(Want::Replica.and(Want::Primary), Want::Primary);
    assert_eq!(Want::Primary.and(Want::Read), Want::Primary);
}

#[test]
fn cross_shard_errors_name_the_shard_and_the_reason() {
    for (why, text) in [
        (CrossShard::NeedsSeveral, "needs several shards"),
        (CrossShard::OtherShard, "belongs to another shard"),
        (CrossShard::MidBatch, "before its Sync"),
    ] {
        let e = cross_shard(why, "s2");
        assert_eq!(e.code, sqlstate::FEATURE_NOT_SUPPORTED);
        assert!(e.message.contains(text), "{}", e.message);
        assert!(e.message.ends_with("runs on shard s2"), "{}", e.message);
        assert!(e.hint.is_some());
    }
}

/// Every standing and statement built from the parts above gets a decision, and the rules
/// that must hold across all of them do.
#[test]
fn invariants_over_every_combination() {
    let stands = [
        idle(),
        in_txn(),
        deferred(false),
        deferred(true),
        two_phase(in_txn()),
        holding(idle(), S0),
        owing(holding(idle(), S1)),
        unsynced(holding(in_txn(), S2)),
        owing(on_replica(holding(idle(), S0))),
        parked(two_phase(holding(in_txn(), S1)), S0),
        parked(
            two_phase(Standing {
                status: Failed,
                ..idle()
            }),
            S2,
        ),
        unsharded_split(),
    ];
    let routes = [Any, One(S0), One(S2), Many(vec![S0, S1]), All];
    let mut stmts = Vec::new();
    for r in &routes {
        for k in [
            Kind::Read,
            Kind::Write,
            Kind::Commit,
            Kind::Rollback,
            Kind::Set,
        ] {
            stmts.push(query(k, r.clone()));
        }
        stmts.push(batch(Want::Read, r.clone()));
        stmts.push(incomplete(batch(Want::Primary, r.clone()), false));
        stmts.push(incomplete(batch(Want::Primary, r.clone()), true));
        stmts.push(prepare_only(r.clone()));
    }
    stmts.push(pipeline(Want::Primary, vec![S0, S1]));
    stmts.push(incomplete(pipeline(Want::Read, vec![S1, S2]), false));
    stmts.push(batch_begin(false));
    stmts.push(batch_commit());
    for at in stands {
        for stmt in &stmts {
            let fits = match &stmt.route {
                Ok(One(s)) => s.index() < at.shards,
                Ok(Many(v)) => v.iter().all(|s| s.index() < at.shards),
                _ => true,
            };
            if !fits {
                continue; // a route the database's shard map cannot make
            }
            let d = decision(at, stmt.clone());
            // Nothing fans out or switches shards inside a transaction without 2PC.
            if at.in_transaction() && !at.two_phase {
                assert!(
                    !matches!(d, FanOut(_) | Pipeline(_) | Switch(..)),
                    "{at:?} {stmt:?}: {d:?}"
                );
            }
            // A held connection is never left for another shard outside a transaction.
            if let (Some(h), Go(_, s)) = (at.held, &d) {
                assert_eq!(h.shard, *s, "{at:?} {stmt:?}");
            }
            // Fan-outs reach shards of the database only.
            if let FanOut(shards) | Pipeline(shards) = &d {
                assert!(shards.iter().all(|s| s.index() < at.shards));
            }
            // A deferred BEGIN is only ever answered outside a transaction.
            if let DeferBegin { .. } = d {
                assert!(at.held.is_none() && at.deferred_begin.is_none());
            }
        }
    }
}
