use super::*;

fn begin(text: &str) -> Begin {
    Begin {
        text: text.into(),
        read_only: text.contains("READ ONLY"),
    }
}

fn deferred(text: &str) -> Txn {
    Txn::deferred(begin(text))
}

#[test]
fn statuses_the_client_sees() {
    let cases = [
        (Txn::Idle, TxStatus::Idle),
        (deferred("BEGIN"), TxStatus::InTransaction),
        (Txn::open("BEGIN"), TxStatus::InTransaction),
        (
            Txn::Open {
                begin: None,
                injected: None,
                failed: true,
            },
            TxStatus::Failed,
        ),
        (Txn::Aborted, TxStatus::Failed),
    ];
    for (txn, status) in cases {
        assert_eq!(txn.status(), status, "{txn:?}");
        assert_eq!(txn.in_block(), status != TxStatus::Idle, "{txn:?}");
    }
}

#[test]
fn the_first_checkout_sends_the_held_begin_once() {
    let mut t = deferred("BEGIN ISOLATION LEVEL SERIALIZABLE");
    assert_eq!(
        t.on_checkout().as_deref(),
        Some("BEGIN ISOLATION LEVEL SERIALIZABLE")
    );
    assert_eq!(t.status(), TxStatus::InTransaction);
    assert!(t.held_begin().is_none());
    // A further shard gets the same BEGIN.
    assert_eq!(
        t.on_checkout().as_deref(),
        Some("BEGIN ISOLATION LEVEL SERIALIZABLE")
    );
}

#[test]
fn nothing_is_sent_outside_a_transaction_or_to_a_batch_outside_it() {
    assert_eq!(Txn::Idle.on_checkout(), None);
    assert_eq!(Txn::Aborted.on_checkout(), None);
    let mut t = deferred("BEGIN");
    t.set_outside(true);
    assert!(t.outside());
    assert_eq!(t.on_checkout(), None);
    // The server's `I` at the end of that batch does not end the client's transaction.
    t.on_server_ready(TxStatus::Idle);
    assert_eq!(t.status(), TxStatus::InTransaction);
    t.released();
    assert!(!t.outside());
    assert_eq!(t.on_checkout().as_deref(), Some("BEGIN"));
}

#[test]
fn outside_means_nothing_unless_deferred() {
    let mut t = Txn::open("BEGIN");
    t.set_outside(true);
    assert!(!t.outside());
    let mut t = Txn::Idle;
    t.set_outside(true);
    assert_eq!(t, Txn::Idle);
}

#[test]
fn a_retried_read_holds_the_begin_back_again() {
    let mut t = deferred("BEGIN READ ONLY");
    t.on_checkout();
    t.retried();
    assert_eq!(t.held_begin(), Some(&begin("BEGIN READ ONLY")));
    // Once released, the BEGIN is no longer the held connection's: nothing to undo.
    t.on_checkout();
    t.released();
    t.retried();
    assert!(t.held_begin().is_none());
    assert_eq!(t.status(), TxStatus::InTransaction);
}

#[test]
fn a_transaction_the_client_began_itself_reaches_further_shards_with_plain_begin() {
    let mut t = Txn::Idle;
    t.on_server_ready(TxStatus::InTransaction);
    assert_eq!(t.further_begin(), "BEGIN");
    assert_eq!(t.on_checkout().as_deref(), Some("BEGIN"));
}

#[test]
fn server_statuses_move_the_transaction() {
    // (start, server status, expected client status)
    let cases = [
        (Txn::Idle, TxStatus::Idle, TxStatus::Idle),
        (Txn::Idle, TxStatus::InTransaction, TxStatus::InTransaction),
        (Txn::Idle, TxStatus::Failed, TxStatus::Failed),
        (Txn::open("BEGIN"), TxStatus::Failed, TxStatus::Failed),
        (Txn::open("BEGIN"), TxStatus::Idle, TxStatus::Idle),
        (deferred("BEGIN"), TxStatus::Failed, TxStatus::Failed),
        (deferred("BEGIN"), TxStatus::Idle, TxStatus::Idle),
        (Txn::Aborted, TxStatus::Failed, TxStatus::Failed),
    ];
    for (start, server, expect) in cases {
        let mut t = start.clone();
        t.on_server_ready(server);
        assert_eq!(t.status(), expect, "{start:?} + {server:?} -> {t:?}");
    }
    // ROLLBACK TO SAVEPOINT: a failed transaction is open again.
    let mut t = Txn::open("BEGIN");
    t.fail();
    t.on_server_ready(TxStatus::InTransaction);
    assert_eq!(t.status(), TxStatus::InTransaction);
    assert_eq!(t.further_begin(), "BEGIN");
}

#[test]
fn opening_on_shards_keeps_the_clients_begin() {
    let mut t = deferred("START TRANSACTION READ WRITE");
    assert_eq!(t.open_on_shards(), "START TRANSACTION READ WRITE");
    assert_eq!(t, Txn::open("START TRANSACTION READ WRITE"));
    // Already open: the same text again, nothing changes.
    assert_eq!(t.open_on_shards(), "START TRANSACTION READ WRITE");
    assert_eq!(t, Txn::open("START TRANSACTION READ WRITE"));
}

#[test]
fn a_failure_keeps_the_begin_for_the_block_and_aborted_stays_aborted() {
    let mut t = deferred("BEGIN READ WRITE");
    t.fail();
    assert_eq!(t.status(), TxStatus::Failed);
    assert_eq!(t.further_begin(), "BEGIN READ WRITE");
    let mut a = Txn::Aborted;
    a.fail();
    a.released();
    a.retried();
    assert_eq!(a, Txn::Aborted);
}
