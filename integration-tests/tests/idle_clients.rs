//! Idle clients cost little: a client that has been quiet for a tick, holds no server connection
//! and has nothing in flight hibernates (its buffers and its running state are freed), and
//! wakes up with its whole session (settings, prepared statements) at its next byte, its idle
//! timeout or shutdown.

use integration_tests::raw::{closed, error_code, login_trust, read_until};
use integration_tests::{config_text, wait_until, Proxy};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn hibernating(p: &Proxy) -> usize {
    p.state.hibernating.load(Ordering::Relaxed)
}

async fn until_hibernating(p: &Proxy, n: usize) -> bool {
    wait_until(Duration::from_secs(30), || async { hibernating(p) >= n }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_clients_hibernate_and_wake_with_their_session() {
    const N: usize = 20;
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let mut clients = Vec::new();
    for i in 0..N {
        let c = proxy.app("app").await;
        c.batch_execute(&format!("set application_name = 'idle_{i}'"))
            .await
            .unwrap();
        let stmt = c.prepare("select $1::int + 1").await.unwrap();
        clients.push((c, stmt));
    }
    assert!(
        until_hibernating(&proxy, N).await,
        "{} of {N} clients hibernate",
        hibernating(&proxy)
    );
    for round in 0..2 {
        for (i, (c, stmt)) in clients.iter().enumerate() {
            let n = i32::try_from(i).unwrap();
            let row = c.query_one(stmt, &[&n]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), n + 1);
            let row = c.query_one("show application_name", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), format!("idle_{i}"));
            // A large answer after waking: the buffers grow again as needed.
            let row = c
                .query_one("select length(repeat('x', 300000))", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), 300_000);
        }
        assert!(
            until_hibernating(&proxy, N).await,
            "round {round}: {} of {N} clients hibernate again",
            hibernating(&proxy)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernating_client_hears_of_shutdown_and_one_that_leaves_is_gone() {
    let mut proxy = Proxy::start(&config_text("", "size = 2"));
    let leaving = login_trust(proxy.port, "trusty", "app").await;
    let mut staying = login_trust(proxy.port, "trusty", "app").await;
    assert!(until_hibernating(&proxy, 2).await);
    drop(leaving);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            hibernating(&proxy) == 1
        })
        .await,
        "a client that closed its socket while hibernating is counted no more"
    );
    proxy.begin_shutdown();
    let m = read_until(&mut staying, b"E").await;
    assert_eq!(error_code(&m).as_deref(), Some("57P01"), "{m:?}");
    assert!(closed(&mut staying).await);
    assert_eq!(hibernating(&proxy), 0);
}
