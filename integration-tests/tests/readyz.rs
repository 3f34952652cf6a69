//! `/readyz` for load balancers: 200 while every database has a reachable primary; 503 while
//! a database is paused from the console, and when a lone primary goes down (every shard is
//! health-checked, one server or several).

use std::time::Duration;

use integration_tests::{fresh_primary, http_get, split_config, Proxy};

/// Polls `/readyz` until its status is `want`: its body then.
async fn ready_is(port: u16, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((status, _, body)) = http_get(port, "/readyz").await {
            if status == want {
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_pauses_and_a_lone_primary() {
    let mut p = fresh_primary();
    let metrics = testkit::free_port();
    let config = split_config(&format!("primary = \"{}\"", p.addr()), "", "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_password = \"admin\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\""
        ),
        1,
    );
    let proxy = Proxy::start(&config);
    ready_is(metrics, 200).await;
    let admin = proxy.connect("admin", "admin", "shardgate").await.unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    let body = ready_is(metrics, 503).await;
    assert!(body.contains("paused"), "{body}");
    admin.simple_query("RESUME app").await.unwrap();
    ready_is(metrics, 200).await;
    p.stop();
    let body = ready_is(metrics, 503).await;
    assert!(body.contains("no reachable primary"), "{body}");
}
