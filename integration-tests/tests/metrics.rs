//! The metrics endpoint against the shared cluster: `/healthz`, `/readyz` (and its 503 while
//! the proxy shuts down), `/metrics` values after a known workload, and a real Prometheus
//! (Debian's, when installed) scraping it: its HTTP API returns the series.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{config_text, wait_until, Daemon, Proxy};

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
    let (status, _, body) = integration_tests::http_get(port, path).await?;
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
    // Errors by SQLSTATE class: one from the server (division by zero, 22012), one the
    // proxy made (a wrong password, 28P01).
    let server_22 = r#"shardgate_errors_total{source="server",class="22"}"#;
    let proxy_28 = r#"shardgate_errors_total{source="proxy",class="28"}"#;
    let errors_before = (
        sample(&first, server_22).unwrap_or(0.0),
        sample(&first, proxy_28).unwrap_or(0.0),
    );
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22012"));
    assert!(p.connect("app", "wrong", "app").await.is_err());
    let (status, body) = get_ok(port, "/metrics").await;
    assert_eq!(status, 200);
    let errors_after = (sample(&body, server_22), sample(&body, proxy_28));
    assert_eq!(
        errors_after,
        (Some(errors_before.0 + 1.0), Some(errors_before.1 + 1.0)),
        "{body}"
    );
    assert_eq!(sample(&body, queries), Some(before + 8.0), "{body}");
    // The query duration histogram: 8 more observations, every one in the +Inf bucket, none
    // above a second (local statements), their sum positive.
    assert_eq!(sample(&body, histogram), Some(before_hist + 8.0), "{body}");
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
    // Checkout waits: each of the 8 statements checked out (no wait: one client, a pool of
    // more), so every checkout of app's pool is in the first bucket.
    let waits = |suffix: &str| {
        let prefix =
            format!("shardgate_checkout_wait_seconds_{suffix}{{database=\"app\",user=\"app\",");
        body.lines()
            .find(|l| l.starts_with(&prefix) && (suffix != "bucket" || l.contains("le=\"0.0001\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let checkouts = waits("count").expect("app's checkout wait histogram");
    assert!(checkouts >= 8.0, "{body}");
    assert_eq!(waits("bucket"), Some(checkouts), "{body}");
    // The top query shapes by id (a fresh proxy: it ran SELECT 1 and SELECT 1/0).
    let shape_samples: Vec<(&str, f64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("shardgate_query_shape_calls_total{query_id=\""))
        .filter_map(|l| {
            let (id, v) = l.split_once("\"}")?;
            Some((id, v.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(shape_samples.len(), 2, "{body}");
    let (id, _) = *shape_samples
        .iter()
        .find(|s| s.1 == 7.0)
        .expect("SELECT 1's");
    assert!(shape_samples.iter().any(|s| s.1 == 1.0), "SELECT 1/0's");
    let rows = format!("shardgate_query_shape_rows_total{{query_id=\"{id}\"}}");
    assert_eq!(sample(&body, &rows), Some(7.0), "{body}");
    for line in [
        "shardgate_read_retries_total 0",
        "shardgate_two_phase_commits_total 0",
        r#"shardgate_fan_outs_total{shards="2"} 0"#,
        r#"shardgate_analysis_cache_lookups_total{result="miss"} 0"#,
        "shardgate_shared_statements 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in {body}");
    }
    assert!(sample(&body, r#"shardgate_transactions_total{database="app"}"#) >= Some(7.0));
    assert!(sample(&body, r#"shardgate_sent_bytes_total{database="app"}"#) > Some(0.0));
    assert_eq!(
        sample(&body, r#"shardgate_clients{state="logged_in"}"#),
        Some(1.0)
    );
    let pg = integration_tests::cluster().addr();
    let conns = |state: &str| {
        let name = format!(
            r#"shardgate_server_connections{{database="app",user="app",shard="s0",server="{pg}",state="{state}"}}"#
        );
        sample(&body, &name).unwrap()
    };
    // One connection served the client (it may not be back in the pool yet when the client
    // has its answer).
    assert_eq!(conns("idle") + conns("active"), 1.0, "{body}");
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
struct Prometheus;

impl Prometheus {
    fn start(target: u16) -> Option<Daemon> {
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
        Some(Daemon::new(port, child, dir))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_queries_counter() {
    // A primary and its streaming replica, so that the replica series exist too.
    let port = testkit::free_port();
    let servers = format!(
        "primary = \"{}\"\nreplicas = [\"{}\"]",
        integration_tests::cluster().addr(),
        integration_tests::replica().addr()
    );
    let config = integration_tests::split_config(&servers, "", "").replace(
        "[proxy]\n",
        &format!("[proxy]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let p = Proxy::start(&config);
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
    // Every query of the Grafana dashboard is valid PromQL over series Shardgate exports
    // (the replica's lag is there once a health check has measured it).
    let metrics = poll(Duration::from_secs(60), || async {
        let (_, m) = get(port, "/metrics").await?;
        m.contains("shardgate_replica_lag_milliseconds{")
            .then_some(m)
    })
    .await
    .expect("the replica's lag is exported");
    for expr in dashboard_queries() {
        for name in metric_names(&expr) {
            // A family with no series yet (replica lag without replicas) is still declared.
            let base = ["_bucket", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            let exported = metrics.lines().any(|l| {
                l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name} "))
                    || l == format!("# TYPE {base} gauge")
                    || l.starts_with(&format!("# TYPE {base} "))
            });
            assert!(exported, "the dashboard's {name} is not in /metrics");
        }
        let path = format!("/api/v1/query?query={}", percent_encode(&expr));
        let (status, body) = get_ok(prom.port, &path).await;
        assert!(
            status == 200 && body.contains("\"status\":\"success\""),
            "Prometheus rejects the dashboard's {expr}: {body}"
        );
    }
}

/// The PromQL queries of `docker/grafana/dashboards/shardgate.json`.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker/grafana/dashboards/shardgate.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(out.len() >= 10, "the dashboard has its panels");
    out
}

/// The `shardgate_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("shardgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
