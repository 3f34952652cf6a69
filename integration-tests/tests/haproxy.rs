//! Through HAProxy: two instances behind a TCP-mode HAProxy that health-checks their
//! `/readyz` (as in docker/haproxy.cfg), and `pgbench -C` (a new connection per transaction)
//! against the HAProxy port while one instance is drained (the console's SHUTDOWN: `/readyz`
//! answers 503 at once, the instance keeps accepting for `shutdown_drain_ms` while HAProxy
//! notices, then its listener closes and its transactions finish) and started again on the
//! same ports: no transaction fails, and the restarted instance gets clients again.
//!
//! Needs Debian's HAProxy (`apt-get install --no-install-recommends haproxy`); the test fails
//! without it.

// The test holds the std lock across its awaits on purpose (one test at a time).
#![allow(clippy::await_holding_lock)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    fresh_primary, pgbench_from, pgbench_number, serial, split_config, Daemon, Proxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HAPROXY: &str = "/usr/sbin/haproxy";

/// One instance's config: the primary `pg`, metrics (and `/readyz`) on 127.0.0.1:`metrics`,
/// the console on (password `admin`).
fn config(pg: &str, metrics: u16) -> String {
    split_config(&format!("primary = \"{pg}\""), "", "size = 4").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!(
            "listen = \"127.0.0.1:0\"\nadmin_password = \"admin\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\nshutdown_timeout_ms = 10000\n\
             shutdown_drain_ms = 1000"
        ),
        1,
    )
}

/// A HAProxy in TCP mode on a loopback port in front of `servers` (name, client port,
/// metrics port), with its runtime API on a Unix socket (`show stat`); killed on drop.
struct HaProxy {
    daemon: Daemon,
    socket: PathBuf,
    log: PathBuf,
}

impl HaProxy {
    fn start(servers: &[(&str, u16, u16)]) -> HaProxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: install HAProxy (apt-get install --no-install-recommends haproxy)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port();
        let socket = dir.path().join("haproxy.sock");
        let mut cfg = format!(
            "global\n    maxconn 2000\n    stats socket {}\n    log stdout format raw local0\n\n\
             defaults\n    mode tcp\n    log global\n    option tcplog\n    retries 3\n    option redispatch\n\
             \x20   timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             \x20   timeout check 2s\n\n\
             frontend postgres\n    bind 127.0.0.1:{port}\n    default_backend shardgate\n\n\
             backend shardgate\n    balance roundrobin\n    option httpchk GET /readyz\n\
             \x20   http-check expect status 200\n",
            socket.display()
        );
        for (name, client, metrics) in servers {
            cfg.push_str(&format!(
                "    server {name} 127.0.0.1:{client} check port {metrics} inter 200ms fall 1 rise 1\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c:\n{cfg}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start haproxy");
        HaProxy {
            daemon: Daemon::new(port, child, dir),
            socket,
            log,
        }
    }

    fn url(&self) -> String {
        format!("postgres://app:app@127.0.0.1:{}/app", self.daemon.port)
    }

    /// The servers of backend `shardgate` as HAProxy's `show stat` shows them: name → its
    /// columns (`status`, `check_status`, `stot`, `wretr`, `wredis`, ...).
    async fn servers(&self) -> Option<HashMap<String, HashMap<String, String>>> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await.ok()?;
        s.write_all(b"show stat\n").await.ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .ok()?
            .ok()?;
        let body = String::from_utf8_lossy(&raw);
        let mut lines = body.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let mut servers = HashMap::new();
        for line in lines {
            let row: HashMap<String, String> = header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let name = row.get("svname").cloned().unwrap_or_default();
            if row.get("pxname").map(String::as_str) == Some("shardgate")
                && name != "BACKEND"
                && name != "FRONTEND"
            {
                servers.insert(name, row);
            }
        }
        Some(servers)
    }

    /// Whether HAProxy has `server` up after a passed check (`up`), or down.
    async fn sees(&self, server: &str, up: bool) -> bool {
        let Some(servers) = self.servers().await else {
            return false;
        };
        let Some(row) = servers.get(server) else {
            return false;
        };
        let status = row.get("status").map(String::as_str).unwrap_or("");
        let check = row.get("check_status").map(String::as_str).unwrap_or("");
        if up {
            status == "UP" && check == "L7OK"
        } else {
            status.starts_with("DOWN")
        }
    }

    /// The log lines of connections that did not end normally (termination state other than
    /// `--`; see "Session state at disconnection" in HAProxy's manual), and health check
    /// transitions.
    fn unusual(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                // ... backend/server Tw/Tc/Tt bytes state actconn/...
                let state = fields
                    .iter()
                    .position(|f| f.contains('/') && f.matches('/').count() == 4)
                    .and_then(|i| i.checked_sub(1))
                    .map(|i| fields[i]);
                state.is_none_or(|s| s != "--")
            })
            .map(str::to_string)
            .collect()
    }

    /// Polls until HAProxy sees `server` up (or down), for at most `timeout`.
    async fn wait_for(&self, server: &str, up: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.sees(server, up).await {
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {server} {} within {timeout:?}; its log:\n{}\nstatistics: {:?}",
                if up { "up" } else { "down" },
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                self.servers().await,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Transactions an instance has served (database `app`).
fn xacts(p: &Proxy) -> u64 {
    p.state.db_stats("app").totals(0).xacts
}

/// Polls until `f` holds, for at most `timeout`, failing with `what`.
async fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `SELECT 1` on a new connection through HAProxy.
async fn select_one(lb: &HaProxy) -> Result<(), tokio_postgres::Error> {
    let c = integration_tests::connect(&format!(
        "host=127.0.0.1 port={} user=app password=app dbname=app connect_timeout=10",
        lb.daemon.port
    ))
    .await?;
    c.simple_query("SELECT 1").await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_haproxy_fails_no_transaction_while_an_instance_restarts() {
    let _g = serial();
    assert!(
        Path::new(HAPROXY).exists(),
        "{HAPROXY} is missing: install HAProxy (apt-get install --no-install-recommends haproxy)"
    );
    let pg = fresh_primary();
    let bin = pg.bindir().to_path_buf();
    let (port_a, port_b) = (testkit::free_port(), testkit::free_port());
    let (metrics_a, metrics_b) = (testkit::free_port(), testkit::free_port());
    let text_a = config(&pg.addr(), metrics_a);
    let a = Proxy::start_shared(&text_a, port_a);
    let b = Proxy::start_shared(&config(&pg.addr(), metrics_b), port_b);
    let lb = HaProxy::start(&[("a", port_a, metrics_a), ("b", port_b, metrics_b)]);
    for server in ["a", "b"] {
        lb.wait_for(server, true, Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = select_one(&lb).await {
        assert!(Instant::now() < deadline, "no login through HAProxy: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = lb.url();
    let (ok, out) = pgbench_from(&bin.join("pgbench"), &url, &["-i", "-s", "1"]);
    assert!(ok, "{out}");

    let bench = {
        let (bin, url) = (bin.clone(), url.clone());
        std::thread::spawn(move || {
            let args = ["-n", "-S", "-C", "-c", "4", "-j", "2", "-T", "10"];
            pgbench_from(&bin.join("pgbench"), &url, &args)
        })
    };
    // Both instances serve the benchmark for a while before the drain.
    let (a0, b0, started) = (xacts(&a), xacts(&b), Instant::now());
    wait(
        "both instances serve pgbench",
        Duration::from_secs(8),
        || {
            xacts(&a) >= a0 + 100
                && xacts(&b) >= b0 + 100
                && started.elapsed() >= Duration::from_secs(2)
        },
    )
    .await;
    let admin = tokio::time::timeout(
        Duration::from_secs(10),
        a.connect("admin", "admin", "shardgate"),
    )
    .await
    .expect("console login in time")
    .expect("console login");
    admin.simple_query("SHUTDOWN").await.expect("SHUTDOWN");
    let drained = Instant::now();
    lb.wait_for("a", false, Duration::from_secs(10)).await;
    println!("HAProxy saw a down {:?} after SHUTDOWN", drained.elapsed());
    wait("instance a stops", Duration::from_secs(20), || a.finished()).await;
    let served_by_a = xacts(&a);
    a.stop();
    let a2 = Proxy::start_shared(&text_a, port_a);
    lb.wait_for("a", true, Duration::from_secs(20)).await;
    println!("a is up again {:?} after SHUTDOWN", drained.elapsed());
    let (ok, out) = tokio::task::spawn_blocking(move || bench.join().unwrap())
        .await
        .unwrap();
    println!("{out}");
    let served_by_a2 = xacts(&a2);
    println!(
        "served: a {served_by_a}, a restarted {served_by_a2}, b {}; HAProxy: {:?}",
        xacts(&b),
        lb.servers().await.map(|s| s
            .iter()
            .map(|(n, r)| format!(
                "{n}: stot {} wretr {} wredis {}",
                r["stot"], r["wretr"], r["wredis"]
            ))
            .collect::<Vec<_>>()),
    );
    println!("HAProxy, unusual lines:\n{}", lb.unusual().join("\n"));
    assert!(ok, "{out}");
    let failed = pgbench_number(&out, "number of failed transactions:").unwrap_or(0);
    assert_eq!(failed, 0, "{out}");
    let lower = out.to_lowercase();
    assert!(
        !lower.contains("aborted") && !lower.contains("error"),
        "{out}"
    );
    let done = pgbench_number(&out, "number of transactions actually processed:").unwrap_or(0);
    assert!(done > 100, "{out}");
    assert!(
        served_by_a2 > 0,
        "the restarted instance served no pgbench client"
    );

    // Round robin: new clients through HAProxy reach both instances.
    let (a1, b1) = (xacts(&a2), xacts(&b));
    for _ in 0..4 {
        select_one(&lb).await.expect("SELECT 1 through HAProxy");
    }
    wait(
        "both instances get clients",
        Duration::from_secs(10),
        || xacts(&a2) > a1 && xacts(&b) > b1,
    )
    .await;
    drop(lb);
    a2.stop();
    b.stop();
}
