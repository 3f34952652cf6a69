use super::*;

fn calls(n: u64, us: u64) -> Calls {
    Calls {
        calls: n,
        each_us: us,
        shards: n,
        ..Calls::default()
    }
}

#[test]
fn statements_of_one_shape_share_their_statistics() {
    let q = QueryStats::new(100);
    let a = q.of("SELECT * FROM t WHERE id = 1").unwrap();
    let b = q.of("select * from t where id = 22").unwrap();
    assert!(!Arc::ptr_eq(&a, &b), "case is kept in a shape");
    let c = q
        .of("SELECT * FROM t /* traceparent='00-ab-cd-01' */ WHERE id = 22;")
        .unwrap();
    assert!(
        Arc::ptr_eq(&a, &c),
        "literals and comments do not make a new shape"
    );
    a.record(calls(1, 80));
    c.record(Calls {
        on_replica: true,
        ..calls(1, 300)
    });
    q.of("SELECT 1").unwrap().record(calls(1, 5_000_000));
    let top = q.top(10);
    assert_eq!(top.len(), 3);
    assert_eq!(top[0].text, "SELECT $?", "the slowest total first");
    let t = &top[1];
    assert_eq!(t.text, "SELECT * FROM t WHERE id = $?");
    assert_eq!(
        (t.calls, t.total_us, t.on_replica, t.shards),
        (2, 380, 1, 2)
    );
    // Bucket bounds, but never above the longest call.
    assert_eq!((t.p50_us, t.p99_us, t.max_us), (Some(95), Some(300), 300));
    assert_eq!(q.top(1).len(), 1);
    assert_eq!(q.len(), 3);
}

#[test]
fn buckets_bound_their_durations_within_a_fifth() {
    let mut last = 0;
    for us in (0..100_000u64).chain([1 << 30, u64::MAX / 2, u64::MAX]) {
        let b = bucket_of(us);
        assert!(b >= last, "buckets grow with durations");
        last = b;
        match upper_bound(b) {
            Some(ub) => {
                assert!(ub >= us, "{us} in bucket {b} bounded by {ub}");
                assert!(ub as f64 <= (us as f64 * 1.25).max(3.0), "{us}: {ub}");
                assert!(b == 0 || upper_bound(b - 1).unwrap() < us);
            }
            None => assert!(us > 1 << 32),
        }
    }
}

#[test]
fn the_number_of_shapes_is_bounded() {
    let q = QueryStats::new(16);
    for i in 0..200 {
        let _ = q.of(&format!("SELECT c{i} FROM t"));
    }
    assert!(q.len() <= 16);
    assert!(q.dropped() >= 184);
    assert!(QueryStats::new(0).of("SELECT 1").is_none());
    let long = format!("SELECT {} FROM t", "é".repeat(10_000));
    assert!(q.of_shape(&long).is_none(), "full");
    let q = QueryStats::new(16);
    assert!(q.of(&long).unwrap().text.len() <= MAX_SHAPE_TEXT);
}

#[test]
fn a_request_records_each_shape_it_ran() {
    let q = QueryStats::new(100);
    let (a, b) = (
        q.of("SELECT a FROM t").unwrap(),
        q.of("SELECT b FROM t").unwrap(),
    );
    let mut p = Pending::default();
    // A batch: a, a, b, a; the server completes three, then fails on the fourth.
    for s in [&a, &a, &b, &a] {
        p.execute(Some(s.clone()), 1);
    }
    let answered = Answered {
        completed: 3,
        rows: 30,
        error_at: Some(3),
        ..Answered::default()
    };
    p.record(4_000, answered, true);
    let (ra, rb) = (a.row(), b.row());
    assert_eq!((ra.calls, ra.errors, ra.on_replica), (3, 1, 3));
    assert_eq!((rb.calls, rb.errors, rb.total_us), (1, 0, 1_000));
    assert_eq!(ra.rows + rb.rows, 30, "rows shared out by calls");
    assert!(p.is_empty());

    // An error in the first of two: the second did not run.
    p.execute(Some(b.clone()), 1);
    p.execute(Some(a.clone()), 1);
    let failed = Answered {
        completed: 0,
        rows: 0,
        error_at: Some(0),
        ..Answered::default()
    };
    p.record(10, failed, false);
    assert_eq!((b.row().calls, b.row().errors), (2, 1));
    assert_eq!(a.row().calls, 3);

    // A simple query of several statements is one call of its shape; a fan-out's shards add.
    p.query(Some(a.clone()), 4);
    let done = Answered {
        completed: 2,
        rows: 7,
        error_at: None,
        ..Answered::default()
    };
    p.record(50, done, false);
    let ra = a.row();
    assert_eq!(
        (ra.calls, ra.rows, ra.shards),
        (4, 7 + 30 - b.row().rows, 3 + 4)
    );
}

#[test]
fn a_long_pipeline_costs_a_bounded_list() {
    let q = QueryStats::new(1000);
    let shapes: Vec<_> = (0..200)
        .map(|i| q.of(&format!("SELECT c{i} FROM t")).unwrap())
        .collect();
    let mut p = Pending::default();
    for _ in 0..50 {
        for s in &shapes {
            p.execute(Some(s.clone()), 1);
        }
    }
    assert!(p.runs.len() <= pending::MAX_PENDING);
    p.record(10_000, Answered::default(), false);
    let total: u64 = q.top(usize::MAX).iter().map(|r| r.calls).sum();
    assert_eq!(total, 10_000, "every call counted");
}

#[test]
fn pipelined_requests_are_recorded_one_answer_at_a_time() {
    let q = QueryStats::new(100);
    let (a, b) = (
        q.of("SELECT a FROM t").unwrap(),
        q.of("SELECT b FROM t").unwrap(),
    );
    let mut p = Pending::default();
    let t0 = std::time::Instant::now();
    let at = |us| t0 + std::time::Duration::from_micros(us);
    // Three requests sent before any answer: [a a] Sync, Query b, [b] Sync.
    p.arrived(at(0));
    p.arrived(at(5));
    p.execute(Some(a.clone()), 1);
    p.execute(Some(a.clone()), 1);
    p.sync();
    p.query(Some(b.clone()), 1);
    p.execute(Some(b.clone()), 1);
    p.sync();
    assert_eq!(p.owed(), 3);
    // Each request's time is its own, from its first message (the last one's is unknown).
    assert_eq!(p.oldest_us(at(100), 7), 100);
    let rows = |rows| Answered {
        completed: 1,
        rows,
        error_at: None,
        ..Answered::default()
    };
    p.record(100, rows(10), false);
    assert_eq!(
        p.oldest_us(at(100), 7),
        7,
        "the second request's arrival is unknown"
    );
    assert_eq!(
        (a.row().calls, a.row().rows, a.row().total_us),
        (2, 10, 100)
    );
    assert_eq!(b.row().calls, 0, "b's requests are not answered yet");
    p.record(7, rows(3), false);
    assert_eq!((b.row().calls, b.row().rows, b.row().total_us), (1, 3, 7));
    p.record(9, rows(4), true);
    assert_eq!((b.row().calls, b.row().rows, b.row().on_replica), (2, 7, 1));
    assert!(p.is_empty());
    // An answer with nothing noted records nothing.
    p.record(5, rows(1), false);
    assert_eq!(a.row().calls + b.row().calls, 4);
}
