//! The metrics endpoint against the shared cluster: `/healthz`, `/readyz` (and its 503 while
//! the proxy shuts down), `/metrics` values after a known workload, and a real Prometheus
//! (Debian's, when installed) scraping it: its HTTP API returns the series.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{config_text, wait_until, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy serving metrics on a fresh loopback port.
fn proxy() -> (Proxy, u16) {
    let port = testkit::free_port();
    let p = Proxy::start(&config_text(
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        "",
    ));
    (p, port)
}

/// GETs `path` from 127.0.0.1:`port`: (status code, body).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Polls `f` until it gives a value, for at most `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_ok(port: u16, path: &str) -> (u16, String) {
    poll(Duration::from_secs(30), || get(port, path))
        .await
        .expect("the metrics endpoint answers")
}

/// The value of the sample `name{labels}` (labels as written in the exposition, in order).
fn sample(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_a_known_workload_in_the_metrics() {
    let (mut p, port) = proxy();
    assert_eq!(get_ok(port, "/healthz").await.0, 200);
    assert_eq!(get_ok(port, "/readyz").await.0, 200);
    assert_eq!(get_ok(port, "/nothing").await.0, 404);
    let queries = r#"shardgate_queries_total{database="app"}"#;
    let histogram = r#"shardgate_query_duration_seconds_count{database="app"}"#;
    let first = get_ok(port, "/metrics").await.1;
    let before = sample(&first, queries).unwrap_or(0.0);
    let before_hist = sample(&first, histogram).unwrap_or(0.0);
    let c = p.app("app").await;
    for _ in 0..7 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let (status, body) = get_ok(port, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, queries), Some(before + 7.0), "{body}");
    // The query duration histogram: 7 more observations, every one in the +Inf bucket, none
    // above a second (a local SELECT 1), their sum positive.
    assert_eq!(sample(&body, histogram), Some(before_hist + 7.0), "{body}");
    let inf = r#"shardgate_query_duration_seconds_bucket{database="app",le="+Inf"}"#;
    let second = r#"shardgate_query_duration_seconds_bucket{database="app",le="1"}"#;
    assert_eq!(sample(&body, inf), sample(&body, histogram));
    assert_eq!(sample(&body, second), sample(&body, histogram));
    assert!(
        sample(
            &body,
            r#"shardgate_query_duration_seconds_sum{database="app"}"#
        ) > Some(0.0)
    );
    assert!(body.contains("# TYPE shardgate_transaction_duration_seconds histogram"));
    assert!(sample(&body, r#"shardgate_transactions_total{database="app"}"#) >= Some(7.0));
    assert!(sample(&body, r#"shardgate_sent_bytes_total{database="app"}"#) > Some(0.0));
    assert_eq!(
        sample(&body, r#"shardgate_clients{state="logged_in"}"#),
        Some(1.0)
    );
    let pg = integration_tests::cluster().addr();
    let idle = format!(
        r#"shardgate_server_connections{{database="app",user="app",shard="s0",server="{pg}",state="idle"}}"#
    );
    assert_eq!(sample(&body, &idle), Some(1.0), "{body}");
    let up = format!(r#"shardgate_server_up{{database="app",shard="s0",server="{pg}"}}"#);
    assert_eq!(sample(&body, &up), Some(1.0));
    // No label carries SQL text or a client address.
    assert!(!body.contains("SELECT") && !body.contains("127.0.0.1:0"));
    // While the proxy shuts down (a client still in its transaction), it is not ready.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    p.begin_shutdown();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            matches!(get(port, "/readyz").await, Some((503, _)))
        })
        .await,
        "/readyz says 503 during shutdown"
    );
    let _ = c.simple_query("COMMIT").await;
}

/// A Prometheus on a loopback port scraping `target` every 200 ms, killed on drop.
struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Option<Prometheus> {
        let bin = std::path::Path::new("/usr/bin/prometheus");
        if !bin.exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: shardgate\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Prometheus {
            port,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_queries_counter() {
    let (p, port) = proxy();
    let Some(prom) = Prometheus::start(port) else {
        eprintln!("skipped: /usr/bin/prometheus is not installed (apt-get install prometheus)");
        return;
    };
    let c = p.app("app").await;
    for _ in 0..25 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let query = "/api/v1/query?query=shardgate_queries_total%7Bdatabase%3D%22app%22%7D";
    // {"status":"success","data":{"resultType":"vector","result":[{...,"value":[t,"25"]}]}}
    let seen = poll(Duration::from_secs(60), || async {
        match get(prom.port, query).await {
            Some((200, body)) if body.contains(",\"25\"]") => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(
        seen.is_some(),
        "Prometheus has shardgate_queries_total = 25"
    );
}
