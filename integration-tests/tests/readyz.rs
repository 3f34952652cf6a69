//! `/readyz` for load balancers: 200 while every database has a reachable primary; 503 while
//! a database is paused from the console, and when a lone primary goes down (every shard is
//! health-checked, one server or several).

use std::time::Duration;

use integration_tests::{split_config, Proxy};
use testkit::{ClusterOptions, PasswordMethod, PgCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` on 127.0.0.1:`port`: (status, body).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// Polls `/readyz` until its status is `want`: its body then.
async fn ready_is(port: u16, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((status, body)) = get(port, "/readyz").await {
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
    let mut p = PgCluster::start(ClusterOptions {
        hba_method: "md5".into(),
        ..ClusterOptions::default()
    })
    .expect("start");
    p.create_role("app", "app", PasswordMethod::Scram).unwrap();
    p.create_database("app", "app").unwrap();
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
