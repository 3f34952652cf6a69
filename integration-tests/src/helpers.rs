//! Small helpers several test binaries share: a cluster of their own, a lock that runs a
//! binary's cluster-breaking tests one at a time, an HTTP GET, pgbench from a given bindir.

use std::time::Duration;

use testkit::{ClusterOptions, PasswordMethod, PgCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the tests of one binary that break their own servers one at a time (the 2-core CI
/// machine times out cluster starts otherwise). Held across awaits on purpose: each such test
/// has its own runtime and thread.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new cluster with role `app` (password `app`, SCRAM-stored) and database `app`; md5 in
/// its hba, so Postgres asks SCRAM of `app`.
pub fn fresh_primary() -> PgCluster {
    let p = PgCluster::start(md5_options()).expect("start primary");
    p.create_role("app", "app", PasswordMethod::Scram).unwrap();
    p.create_database("app", "app").unwrap();
    p
}

/// [`fresh_primary`] and a streaming replica of it (pg_basebackup).
pub fn primary_with_replica() -> (PgCluster, PgCluster) {
    let p = fresh_primary();
    let r = p.start_replica(md5_options()).expect("start replica");
    (p, r)
}

fn md5_options() -> ClusterOptions {
    ClusterOptions {
        hba_method: "md5".into(),
        ..ClusterOptions::default()
    }
}

/// GET `path` from 127.0.0.1:`port`: (status, head, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String, String)> {
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
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

/// Runs `bin` (a pgbench) with `args` against `url`: (success, stdout and stderr).
pub fn pgbench_from(bin: &std::path::Path, url: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
