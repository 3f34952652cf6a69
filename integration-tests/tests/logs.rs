//! The log as JSON (`proxy.log_format = "json"`, installed by the same function as the
//! binary's): one object per line, a connection line per login and logout with the client's
//! address, user, database, and at logout its duration and transactions; no secret in any line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{config_text, wait_until, Proxy};
use shardgate::config::LogFormat;

/// Where this test binary's log goes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line, each parsed as JSON (panics on one that is not).
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lines_are_json_objects_without_secrets() {
    let log = Captured::default();
    let writer = log.clone();
    assert!(shardgate::logging::init(LogFormat::Json, move || writer.clone()));
    let secret = "adm1n-s3cret-in-the-log";
    let p = Proxy::start(&config_text(
        &format!("admin_password = \"{secret}\"\nlog_format = \"json\""),
        "",
    ));
    let c = p.app("app").await;
    for _ in 0..3 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    drop(c);
    let admin = p.connect("admin", secret, "shardgate").await.unwrap();
    admin.simple_query("SHOW POOLS").await.unwrap();
    // A failed login (wrong password) is logged too, without the password tried.
    assert!(p.connect("app", "wrong-password-xyz", "app").await.is_err());
    let out = wait_until(Duration::from_secs(30), || async {
        log.text().contains("client logged out")
    })
    .await;
    assert!(out, "a logout line: {}", log.text());
    let lines = log.lines();
    let find = |m: &str| {
        lines
            .iter()
            .find(|l| l["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} line in {lines:?}"))
            .clone()
    };
    let login = find("client logged in");
    assert_eq!(login["user"], "app");
    assert!(login["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let logout = find("client logged out");
    assert_eq!(
        (logout["user"].as_str(), logout["database"].as_str()),
        (Some("app"), Some("app"))
    );
    assert_eq!(logout["transactions"], 3);
    assert!(logout["duration_ms"].is_u64());
    assert_eq!(logout["level"], "INFO");
    find("client login failed");
    let text = log.text();
    assert!(!text.contains(secret) && !text.contains("wrong-password-xyz"));
}
