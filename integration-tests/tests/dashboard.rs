//! The live dashboard on the metrics port, with a primary and its streaming replica:
//! `/api/dashboard` is JSON with the expected keys and a pgbench workload's counters (no
//! secret, no client address), and the page at `/`, run in a real headless Chromium while a
//! client keeps querying, draws every chart with data (`data-points` on each chart's SVG),
//! lists the workload's query shape, says `ok`, and records no error (`#errors` stays empty and
//! the page writes no console message).
//!
//! Chromium (`/usr/bin/chromium`) is required: the test fails without it (CI installs it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{pgbench, pgbench_number, split_config, wait_psql, wait_until, Proxy};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest a Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// GETs `path` from 127.0.0.1:`port`: (status code, content type, body).
async fn get(port: u16, path: &str) -> Option<(u16, String, String)> {
    let (status, head, body) = integration_tests::http_get(port, path).await?;
    let content_type = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_string())
    })?;
    Some((status, content_type, body))
}

/// What a headless Chromium run printed: the DOM after the virtual-time budget, and stderr.
struct Dump {
    dom: String,
    stderr: String,
}

/// Runs headless Chromium on `url` with `args` (in its own process group, killed with its
/// children if it runs over [`CHROMIUM_TIMEOUT`]).
async fn chromium(url: &str, args: &[&str]) -> Dump {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=8000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: signals the process group this test started (its pid is the group's id).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            panic!("chromium ran over {CHROMIUM_TIMEOUT:?} and was killed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let dump = Dump {
        dom: read("stdout"),
        stderr: read("stderr"),
    };
    assert!(
        status.success(),
        "chromium failed ({status}):\n{}",
        dump.stderr
    );
    dump
}

/// The value of attribute `attr` of the element with id `id` in `dom`.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let from = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
    Some(tag[from..].split('"').next()?.to_string())
}

/// The markup inside the element with id `id` up to `close` (e.g. `</table>`).
fn inner<'a>(dom: &'a str, id: &str, close: &str) -> &'a str {
    let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
        return "";
    };
    let rest = &dom[at..];
    let open = rest.find('>').map_or(0, |i| i + 1);
    &rest[open..rest.find(close).unwrap_or(rest.len())]
}

/// Every object key anywhere in `v`.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// Checks `/api/dashboard` after the pgbench run of `xacts` transactions on `app`.
fn check_json(body: &str, xacts: u64, primary: &str, replica: &str) {
    let d: Value = serde_json::from_str(body).expect("/api/dashboard is JSON");
    for k in [
        "version",
        "now_ms",
        "buckets_us",
        "clients",
        "databases",
        "pools",
        "shards",
        "queries",
    ] {
        assert!(d.get(k).is_some(), "/api/dashboard has {k}: {body}");
    }
    assert!(d["now_ms"].as_u64() > Some(1_600_000_000_000), "{body}");
    let app = d["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|db| db["name"] == "app")
        .expect("database app");
    assert!(app["xacts"].as_u64() >= Some(xacts), "{app}");
    assert!(app["queries"].as_u64() >= Some(xacts), "{app}");
    let buckets = app["query_buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), d["buckets_us"].as_array().unwrap().len());
    let top = d["queries"]["top"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 20, "{body}");
    assert!(top
        .iter()
        .all(|q| q["text"].as_str().unwrap().chars().count() <= 201));
    let shape = top
        .iter()
        .find(|q| {
            q["text"]
                .as_str()
                .unwrap()
                .contains("pgbench_accounts WHERE aid")
        })
        .unwrap_or_else(|| panic!("pgbench -S's shape in {body}"));
    assert!(shape["calls"].as_u64() >= Some(xacts), "{shape}");
    assert!(shape["p99_us"].as_u64().is_some(), "{shape}");
    let shard = &d["shards"][0];
    assert_eq!(
        (&shard["database"], &shard["shard"]),
        (&"app".into(), &"s0".into())
    );
    assert!(shard["checkouts"].as_u64() >= Some(xacts), "{shard}");
    let roles: Vec<(&str, &str, bool)> = shard["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (server, role) = (s["server"].as_str().unwrap(), s["role"].as_str().unwrap());
            (server, role, s["reachable"] == true)
        })
        .collect();
    assert_eq!(
        roles,
        [(primary, "primary", true), (replica, "replica", true)],
        "{body}"
    );
    let pools = d["pools"].as_array().unwrap();
    assert!(pools
        .iter()
        .all(|p| p["active"].is_u64() && p["waiting"].is_u64()));
    // No secret and no client address: no such key, and every address is a server's.
    let mut all = Vec::new();
    keys(&d, &mut all);
    for k in ["password", "secret", "peer", "addr", "client", "local_addr"] {
        assert!(!all.iter().any(|a| a == k), "key {k} in {body}");
    }
    for p in pools {
        let server = p["server"].as_str().unwrap();
        assert!(server == primary || server == replica, "{p}");
    }
}

/// Checks the DOM Chromium dumped of the page and its console output.
fn check_page(dump: &Dump, port: u16) {
    let dom = &dump.dom;
    assert!(
        dom.contains("<span id=\"status\">ok</span>"),
        "status ok:\n{dom}"
    );
    assert!(
        dom.contains("<div id=\"errors\"></div>"),
        "no page error recorded:\n{}",
        inner(dom, "errors", "</div>")
    );
    let points = |id: &str| -> u64 {
        attr(dom, id, "data-points")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{id} has data-points:\n{dom}"))
    };
    let max = |id: &str| -> f64 {
        attr(dom, id, "data-max")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{id} has data-max:\n{dom}"))
    };
    // Every chart but latency has a value for each pair of successive samples (the page
    // samples at virtual 0, 2, 4 and 6 s at least).
    for id in [
        "chart-tps",
        "chart-pools",
        "chart-waits",
        "chart-shards",
        "chart-lag",
    ] {
        assert!(points(id) >= 2, "{id} has data: {}", points(id));
        assert!(
            max(id).is_finite() && max(id) >= 0.0,
            "{id}'s values are numbers"
        );
    }
    // Latency has a value only for intervals with queries, and rates are not asserted
    // positive: virtual time packs the samples into a fraction of a real second, which a
    // busy machine may spend with the load client starved.
    assert!(max("chart-latency").is_finite());
    // A rate that is not a number (NaN, infinity) would be a missing point.
    let intervals = points("chart-pools");
    for id in ["chart-tps", "chart-waits", "chart-shards", "chart-lag"] {
        assert_eq!(points(id), intervals, "{id} has a point per interval");
    }
    // The pools' idle connections (pgbench left them) are drawn.
    assert!(
        max("chart-pools") >= 1.0,
        "the connections chart shows connections"
    );
    let shapes = inner(dom, "shapes", "</table>");
    assert!(
        shapes.contains("pgbench_accounts WHERE aid"),
        "the workload's shape in the table:\n{shapes}"
    );
    let map = inner(dom, "shardmap", "</table>");
    assert!(map.contains("primary") && map.contains("replica"), "{map}");
    let pools = inner(dom, "pools", "</table>");
    assert!(pools.contains("<svg"), "each pool's usage bar: {pools}");
    // The page logs nothing itself: any console line from it is an error or a warning.
    let origin = format!("http://127.0.0.1:{port}/");
    let console: Vec<&str> = dump
        .stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains(&origin) || l.contains("Uncaught")))
        .collect();
    assert!(
        console.is_empty(),
        "console messages from the page: {console:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_pgbench_workload_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it (apt-get install --no-install-recommends chromium; \
         .ci/run does)"
    );
    let (primary, replica) = (
        integration_tests::cluster().addr(),
        integration_tests::replica().addr(),
    );
    let port = testkit::free_port();
    let servers = format!("primary = \"{primary}\"\nreplicas = [\"{replica}\"]");
    let config = split_config(&servers, "", "size = 8").replace(
        "[proxy]\n",
        &format!("[proxy]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let p = Proxy::start(&config);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            matches!(get(port, "/healthz").await, Some((200, _, _)))
        })
        .await,
        "the metrics endpoint answers"
    );
    // The workload: pgbench's tables through the proxy (on the primary), then 2 clients of
    // 200 select-only transactions each (on the replica, once it has the rows).
    let url = p.url("app", "app", "app");
    let (ok, out) = pgbench(&url, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i through the proxy failed:\n{out}");
    let r = integration_tests::replica();
    assert!(wait_psql(
        r,
        "SELECT count(*) FROM pgbench_accounts",
        "100000",
        Duration::from_secs(60)
    ));
    let (ok, out) = pgbench(&url, &["-S", "-n", "-c", "2", "-j", "2", "-t", "200"]);
    assert!(ok, "pgbench -S failed:\n{out}");
    assert_eq!(
        pgbench_number(&out, "number of failed transactions:"),
        Some(0),
        "{out}"
    );
    let (status, content_type, body) = get(port, "/api/dashboard").await.expect("JSON");
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    check_json(&body, 400, &primary, &replica);
    let (status, content_type, page) = get(port, "/").await.expect("the page");
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert_eq!(page, shardgate::admin::dashboard::PAGE);
    // A client queries while the browser watches (rates and latencies with values, most
    // likely).
    let stop = Arc::new(AtomicBool::new(false));
    let c = p.app("app").await;
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                c.simple_query("SELECT 1").await.unwrap();
            }
        }
    });
    let dump = chromium(&format!("http://127.0.0.1:{port}/"), &["--dump-dom"]).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    check_page(&dump, port);
    // SHARDGATE_DASHBOARD_SCREENSHOT=<png> also saves a screenshot (docs/dashboard.png).
    if let Ok(png) = std::env::var("SHARDGATE_DASHBOARD_SCREENSHOT") {
        screenshot(&p, port, &png).await;
    }
}

/// Saves a screenshot of the page at 1400×1000 while pgbench runs.
async fn screenshot(p: &Proxy, port: u16, png: &str) {
    let url = p.url("app", "app", "app");
    let bench =
        std::thread::spawn(move || pgbench(&url, &["-S", "-n", "-c", "4", "-j", "2", "-T", "5"]));
    let _ = chromium(
        &format!("http://127.0.0.1:{port}/"),
        &[
            "--window-size=1400,1000",
            "--hide-scrollbars",
            &format!("--screenshot={png}"),
        ],
    )
    .await;
    assert!(bench.join().unwrap().0);
    assert!(Path::new(png).exists(), "{png} written");
}
