//! A real driver's own test suite through the proxy: tokio-postgres's test suite (`tests/test/`
//! of the crate cargo downloaded for this workspace), run unmodified with `cargo test
//! --all-features` from a copy of the crate source, against Shardgate listening on
//! 127.0.0.1:5433 (the address the suite hard-codes) in transaction mode, in front of a real
//! Postgres 15 set up like the suite's docker/sql_setup.sh (roles `pass_user`, `md5_user`,
//! `scram_user` with password `password`, `postgres` by trust; extensions hstore, citext,
//! ltree).
//!
//! Every test must pass except those in `integration-tests/tpsuite/cannot-pass.txt`, each
//! listed with the reason it cannot pass through a pooler (or this proxy); those are run too and
//! must still fail, so the list stays true. Nothing is skipped silently: if the crate source, the
//! port or cargo is missing, this test fails.
//!
//! The suite's build goes to `target/tpsuite` (kept between runs). Run alone with
//! `cargo test -p integration-tests --test tpsuite -- --nocapture`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardgate::config::Config;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

/// The port tokio-postgres's suite connects to.
const SUITE_PORT: u16 = 5433;
/// Upper bound for building and running the suite once (a hang fails the test).
const SUITE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tokio-postgres version in the workspace's Cargo.lock.
fn locked_version() -> String {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).expect("read Cargo.lock");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"tokio-postgres\"" {
            let v = lines.next().expect("version line");
            return v
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .expect("version = \"...\"")
                .to_string();
        }
    }
    panic!("tokio-postgres is not in Cargo.lock");
}

/// The crate source cargo extracted into its registry.
fn registry_source(version: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry").join("src");
    let name = format!("tokio-postgres-{version}");
    let found = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("no cargo registry sources in {}: {e}", src.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(&name))
        .find(|p| p.join("tests/test/main.rs").is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} with its tests/test/ not found under {}; the workspace build downloads it",
            src.display()
        )
    })
}

fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap()) {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A copy of the crate source outside the workspace (cargo would otherwise take it for a
/// workspace member), identical to the registry's; kept between runs so cargo rebuilds nothing.
fn suite_copy(src: &Path, version: &str) -> PathBuf {
    let dst = std::env::temp_dir()
        .join("shardgate-tpsuite")
        .join(format!("tokio-postgres-{version}"));
    let want = files_under(src);
    if dst.is_dir() && files_under(&dst) == want {
        return dst;
    }
    let _ = std::fs::remove_dir_all(&dst);
    for (rel, bytes) in &want {
        let p = dst.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    dst
}

/// `name: reason` lines of the list of tests that cannot pass.
fn cannot_pass() -> Vec<(String, String)> {
    let path = workspace().join("integration-tests/tpsuite/cannot-pass.txt");
    let text = std::fs::read_to_string(&path).expect("read cannot-pass.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (n, r) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("`test: reason` expected in {}: {l}", path.display()));
            assert!(!r.trim().is_empty(), "no reason given for {n}");
            (n.trim().to_string(), r.trim().to_string())
        })
        .collect()
}

fn start_postgres() -> PgCluster {
    let c = PgCluster::start(ClusterOptions {
        hba_method: "md5".into(),
        ..ClusterOptions::default()
    })
    .expect("start postgres");
    for (user, method) in [
        ("pass_user", PasswordMethod::Scram),
        ("md5_user", PasswordMethod::Md5),
        ("scram_user", PasswordMethod::Scram),
    ] {
        c.create_role(user, "password", method).unwrap();
    }
    c.psql(
        "postgres",
        "CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION ltree;",
    )
    .expect("hstore, citext and ltree (postgresql-15 contrib)");
    c
}

fn proxy_config(pg: &str) -> String {
    let user = |name: &str, auth: &str, server_password: &str| {
        format!("[[users]]\nname = \"{name}\"\n{auth}\nserver_password = \"{server_password}\"\n\n")
    };
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{SUITE_PORT}\"\n\n[pool]\nsize = 20\n\n{}{}{}{}\
         [[databases]]\nname = \"postgres\"\npool_mode = \"transaction\"\n\
         [[databases.shards]]\nname = \"s0\"\nprimary = \"{pg}\"\n",
        user("postgres", "auth_method = \"trust\"", "postgres"),
        // Shardgate has no cleartext method; the suite only checks missing/wrong/right.
        user("pass_user", "password = \"password\"", "password"),
        user(
            "md5_user",
            "password = \"password\"\nauth_method = \"md5\"",
            "password"
        ),
        user("scram_user", "password = \"password\"", "password"),
    )
}

/// Runs the proxy on `listener` on its own runtime until `stop` fires.
fn start_proxy(
    listener: TcpListener,
    config: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let config = Config::parse(config, "tpsuite").expect("parse config");
    let problems = config.validate();
    assert!(problems.is_empty(), "{problems:?}");
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let state = shardgate::state::ProxyState::new(config);
            shardgate::server::run(listener, state, async {
                let _ = rx.await;
            })
            .await;
        });
    });
    (tx, thread)
}

/// `cargo test --all-features --test test -- <args>` in the suite copy; (success, output).
fn cargo_test(dir: &Path, args: &[&str]) -> (bool, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let log = dir.with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["test", "--locked", "--all-features", "--test", "test", "--"])
        .args(args)
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("tpsuite"),
        )
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || matches!(
                k.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run cargo");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tokio-postgres suite did not finish in {SUITE_TIMEOUT:?}; output in {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (status.success(), text)
}

/// `(test name, passed)` from libtest's output.
fn outcomes(output: &str) -> Vec<(String, bool)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, result) = rest.rsplit_once(" ... ")?;
            match result {
                "ok" => Some((name.to_string(), true)),
                "FAILED" => Some((name.to_string(), false)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn tokio_postgres_own_test_suite_passes_through_the_proxy_in_transaction_mode() {
    let listener = TcpListener::bind(("127.0.0.1", SUITE_PORT)).unwrap_or_else(|e| {
        panic!(
            "port {SUITE_PORT} (hard-coded by tokio-postgres's test suite) is busy: {e}; stop \
             whatever listens there"
        )
    });
    let version = locked_version();
    let dir = suite_copy(&registry_source(&version), &version);
    let listed = cannot_pass();
    let pg = start_postgres();
    let (stop, thread) = start_proxy(listener, &proxy_config(&pg.addr()));

    // Everything but the listed tests must pass.
    let mut args: Vec<&str> = vec!["--exact"];
    for (name, _) in &listed {
        args.extend(["--skip", name.as_str()]);
    }
    let (ok, output) = cargo_test(&dir, &args);
    let results = outcomes(&output);
    let failed: Vec<&String> = results.iter().filter(|r| !r.1).map(|r| &r.0).collect();
    let summary = output
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("tokio-postgres {version} suite through Shardgate: {summary}");
    assert!(
        ok && failed.is_empty() && results.len() > 100,
        "tokio-postgres {version} suite through Shardgate failed ({} tests ran, failing: \
         {failed:?}):\n{output}",
        results.len()
    );

    // The listed ones still fail (otherwise the list is out of date).
    if !listed.is_empty() {
        let mut args: Vec<&str> = vec!["--exact"];
        args.extend(listed.iter().map(|(n, _)| n.as_str()));
        let (_, output) = cargo_test(&dir, &args);
        let results = outcomes(&output);
        for (name, reason) in &listed {
            match results.iter().find(|r| &r.0 == name) {
                None => panic!("listed test {name} does not exist in the suite:\n{output}"),
                Some((_, true)) => panic!(
                    "{name} now passes through the proxy: remove it from \
                     integration-tests/tpsuite/cannot-pass.txt (it was listed because: {reason})"
                ),
                Some((_, false)) => {}
            }
        }
    }
    let _ = stop.send(());
    let _ = thread.join();
    drop(pg);
}
