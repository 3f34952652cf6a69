//! Two-phase commit you can trust, against three real shard primaries
//! (`max_prepared_transactions > 0`): transaction control that would reach one participant is
//! refused (0A000) and rolls the transaction back on every shard; a participant's connection
//! killed between PREPARE and COMMIT PREPARED still ends committed everywhere (the client told
//! COMMIT); a proxy process killed there (`kill -9`) is resolved by the next instance, alike on
//! every participant; a participant that cannot prepare (the coordinator, one in the middle
//! or the last) rolls back every part, those prepared alongside it included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::{connect, sqlstate, wait_until, Proxy, ShardSet};
use shardgate::config::{Config, KeyType};
use shardgate::shard::route::ShardMap;
use testkit::PgCluster;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Three shard primaries (role and database `app`), stopped when the test process exits.
fn shards() -> &'static ShardSet {
    static S: OnceLock<ShardSet> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let s =
        S.get_or_init(|| ShardSet::start(3, 20, &[("tp", "k", "bigint"), ("tpd", "k", "bigint")]));
    REGISTERED.call_once(|| s.stop_at_exit());
    s
}

/// The config with a listen address, `[proxy]` lines and database lines (2PC on).
fn config(listen: &str, proxy_extra: &str, db_extra: &str) -> String {
    shards().config(
        listen,
        proxy_extra,
        &format!("two_phase_commit = true\n{db_extra}"),
    )
}

/// Recovery of an in-process proxy stays away from the other tests' transactions.
fn proxy(proxy_extra: &str) -> Proxy {
    Proxy::start(&config(
        "127.0.0.1:0",
        proxy_extra,
        "two_phase_recovery_ms = 600000",
    ))
}

fn owner(k: i64) -> usize {
    let c = Config::parse(&config("127.0.0.1:0", "", ""), "test").unwrap();
    ShardMap::new(&c.databases[0])
        .unwrap()
        .shard_of_text(KeyType::Bigint, k.to_string().as_bytes())
        .unwrap()
        .index()
}

/// Two fresh keys on different shards, the first on a lower shard than the second.
fn two_keys() -> (i64, i64) {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1000);
    loop {
        let a = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if owner(a) < owner(b) {
            return (a, b);
        }
    }
}

async fn direct(c: &PgCluster, user: &str) -> Client {
    connect(&format!(
        "host=127.0.0.1 port={} user={user} password={user} dbname=app",
        c.port()
    ))
    .await
    .unwrap()
}

/// The keys among `keys` stored on any shard.
async fn stored(keys: &[i64]) -> Vec<i64> {
    let list = keys
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::new();
    for c in &shards().clusters {
        let d = direct(c, "app").await;
        for m in d
            .simple_query(&format!("SELECT k FROM tp WHERE k IN ({list})"))
            .await
            .unwrap()
        {
            if let SimpleQueryMessage::Row(r) = m {
                out.push(r.get(0).unwrap().parse().unwrap());
            }
        }
    }
    out.sort();
    out
}

/// Prepared transactions and decision-log rows left on the shards.
async fn leftovers() -> (usize, usize) {
    let (mut prepared, mut logged) = (0, 0);
    for c in &shards().clusters {
        let d = direct(c, "app").await;
        let n = |msgs: Vec<SimpleQueryMessage>| {
            msgs.iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count()
        };
        prepared += n(d
            .simple_query("SELECT gid FROM pg_prepared_xacts")
            .await
            .unwrap());
        logged += match d.simple_query("SELECT gid FROM shardgate_2pc_log").await {
            Ok(m) => n(m),
            Err(_) => 0,
        };
    }
    (prepared, logged)
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn schema(c: &Client) {
    c.simple_query("CREATE TABLE IF NOT EXISTS tp (k bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
}

/// BEGIN and one row on each of two shards.
async fn open(c: &Client) -> (i64, i64) {
    let (a, b) = two_keys();
    c.simple_query("BEGIN").await.unwrap();
    for k in [a, b] {
        c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({k}, 'x')"))
            .await
            .unwrap();
    }
    (a, b)
}

/// After a refusal: a failed transaction block until ROLLBACK, nothing stored, and the
/// connection works on.
async fn assert_rolled_back(c: &Client, keys: (i64, i64), case: &str) {
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{case}: {e}");
    assert_eq!(stored(&[keys.0, keys.1]).await, Vec::<i64>::new(), "{case}");
    c.simple_query("ROLLBACK").await.unwrap();
    let rows = c.simple_query("SELECT 41 + 1").await.unwrap();
    assert!(
        rows.iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))),
        "{case}"
    );
}

/// `sql` in a transaction with a row on each of two shards: refused (0A000 with a hint) and
/// rolled back everywhere, in the simple or the extended protocol.
async fn assert_refused(c: &Client, sql: &str, extended: bool) {
    let keys = open(c).await;
    let e = if extended {
        c.execute(sql, &[]).await.unwrap_err()
    } else {
        c.simple_query(sql).await.unwrap_err()
    };
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("0A000"),
        "{sql} (extended: {extended}): {e}"
    );
    assert!(
        e.as_db_error().and_then(|d| d.hint()).is_some(),
        "{sql}: a hint"
    );
    assert_rolled_back(c, keys, sql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_control_across_shards_is_refused_and_rolls_back_everywhere() {
    let _serial = SERIAL.lock().await;
    let p = proxy("");
    let c = p.app("app").await;
    schema(&c).await;
    let simple = [
        "SELECT 1; COMMIT",
        "SELECT 1; END",
        "SELECT 1; ROLLBACK",
        "COMMIT AND CHAIN",
        "ROLLBACK AND CHAIN",
        "SAVEPOINT s",
        "ROLLBACK TO SAVEPOINT s",
        "RELEASE SAVEPOINT s",
        "PREPARE TRANSACTION 'mine'",
        "COMMIT PREPARED 'mine'",
        "ROLLBACK PREPARED 'mine'",
    ];
    for sql in simple {
        assert_refused(&c, sql, false).await;
    }
    // The extended protocol (Parse/Bind/Execute/Sync).
    for sql in [
        "COMMIT AND CHAIN",
        "SAVEPOINT s",
        "RELEASE s",
        "ROLLBACK TO s",
    ] {
        assert_refused(&c, sql, true).await;
    }
    // The failed block in the extended protocol: statements get 25P02, ROLLBACK ends it.
    let keys = open(&c).await;
    let e = c.execute("SAVEPOINT s", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    let e = c.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e}");
    c.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(stored(&[keys.0, keys.1]).await, Vec::<i64>::new());
    assert_eq!(c.execute("SELECT 1", &[]).await.unwrap(), 1);
    // A failed block answers COMMIT with ROLLBACK: no commit is ever reported.
    let keys = open(&c).await;
    assert!(c.simple_query("SAVEPOINT s").await.is_err());
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    assert!(c.is_closed() || c.simple_query("SELECT 1").await.is_ok());
    assert_eq!(stored(&[keys.0, keys.1]).await, Vec::<i64>::new());
    // COMMIT of its own still commits every shard, in both protocols.
    let keys = open(&c).await;
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(stored(&[keys.0, keys.1]).await, vec![keys.0, keys.1]);
    let keys = open(&c).await;
    c.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(stored(&[keys.0, keys.1]).await, vec![keys.0, keys.1]);
    // Savepoints in a transaction on one shard work; it then stays on that shard.
    let (a, b) = two_keys();
    let a2 = (a + 1..).find(|k| owner(*k) == owner(a)).unwrap() + 100_000;
    let a2 = (a2..).find(|k| owner(*k) == owner(a)).unwrap();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({a}, 'x')"))
        .await
        .unwrap();
    c.simple_query("SAVEPOINT s").await.unwrap();
    c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({a2}, 'x')"))
        .await
        .unwrap();
    c.simple_query("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let e = c
        .simple_query(&format!("INSERT INTO tp (k, v) VALUES ({b}, 'x')"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");
    assert_rolled_back(&c, (a, b), "savepoint then another shard").await;
    assert_eq!(stored(&[a, a2, b]).await, Vec::<i64>::new());
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({a}, 'x')"))
        .await
        .unwrap();
    c.simple_query("SAVEPOINT s").await.unwrap();
    c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({a2}, 'x')"))
        .await
        .unwrap();
    c.simple_query("ROLLBACK TO s").await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(stored(&[a, a2, b]).await, vec![a]);
    // SET TRANSACTION READ ONLY follows the transaction to the next shard: the INSERT there
    // fails with 25006, as in Postgres.
    let (a, b) = two_keys();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("SELECT * FROM tp WHERE k = {a}"))
        .await
        .unwrap();
    c.simple_query("SET TRANSACTION READ ONLY").await.unwrap();
    let e = c
        .simple_query(&format!("INSERT INTO tp (k, v) VALUES ({b}, 'x')"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{e}");
    assert_rolled_back(&c, (a, b), "SET TRANSACTION then another shard").await;
    assert_eq!(leftovers().await, (0, 0));
}

/// Kills every `app` backend on the shards (superuser connections straight to Postgres).
async fn kill_app_backends() {
    for c in &shards().clusters {
        let d = direct(c, "postgres").await;
        d.simple_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = 'app' AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    }
}

async fn wait_for_file(path: &Path) {
    assert!(
        wait_until(Duration::from_secs(30), || async { path.exists() }).await,
        "the session never reached the failpoint"
    );
}

/// A proxy whose commits across shards pause between the phases while the returned file
/// exists (created there; the directory lives with the returned guard).
fn paused_proxy() -> (Proxy, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    let p = proxy(&format!(
        "failpoints = [\"pause_after_prepare={}\"]",
        pause.display()
    ));
    (p, pause, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_killed_between_prepare_and_commit_still_commit() {
    let _serial = SERIAL.lock().await;
    let (p, pause, _dir) = paused_proxy();
    let c = p.app("app").await;
    schema(&c).await;
    let keys = open(&c).await;
    let commit = tokio::spawn(async move {
        let r = c.simple_query("COMMIT").await.map(|_| ());
        (r, c)
    });
    wait_for_file(&pause).await;
    assert_eq!(leftovers().await.0, 2, "both participants prepared");
    // Every participant's connection dies between the phases.
    kill_app_backends().await;
    std::fs::remove_file(&pause).unwrap();
    let (r, _c) = commit.await.unwrap();
    r.expect("the client is told COMMIT");
    assert_eq!(stored(&[keys.0, keys.1]).await, vec![keys.0, keys.1]);
    assert_eq!(leftovers().await, (0, 0), "nothing left to recover");
}

/// Like a server's COMMIT, the commit across shards runs to its end once it has begun: a
/// CancelRequest and a client that leaves between the phases stop nothing, and every part
/// commits (no part is left prepared for recovery, which this proxy runs only every 10 min).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_runs_to_its_end_when_the_client_cancels_and_leaves() {
    let _serial = SERIAL.lock().await;
    let (p, pause, _dir) = paused_proxy();
    let (c, conn) = tokio_postgres::connect(&p.conn_str("app", "app", "app"), NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    schema(&c).await;
    let keys = open(&c).await;
    let cancel = c.cancel_token();
    let commit = tokio::spawn(async move { c.simple_query("COMMIT").await.map(|_| ()) });
    wait_for_file(&pause).await;
    assert_eq!(leftovers().await.0, 2, "both participants prepared");
    cancel.cancel_query(NoTls).await.unwrap();
    // The client goes away: its socket closes with the connection task.
    conn.abort();
    let _ = conn.await;
    let _ = commit.await;
    std::fs::remove_file(&pause).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            leftovers().await == (0, 0)
        })
        .await,
        "every part committed and the log row deleted: {:?}",
        leftovers().await
    );
    assert_eq!(stored(&[keys.0, keys.1]).await, vec![keys.0, keys.1]);
    use shardgate::admin::events::Events;
    let events = &p.state.events;
    assert_eq!(
        Events::get(&events.two_phase_commits),
        1,
        "counted for /metrics"
    );
    assert_eq!(Events::get(&events.two_phase_aborts), 0);
}

/// The `shardgate` binary of this test's target directory when it is at least as new as
/// the library this test was linked with (`deps/libshardgate-*.rlib`); else this test binary
/// itself, re-run as the proxy (see `child_proxy`).
fn proxy_command(config_path: &Path) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().map(PathBuf::from);
    let fresh = deps.as_ref().and_then(|deps| {
        let bin = deps.parent()?.join("shardgate");
        let bin_time = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
        let lib_time = std::fs::read_dir(deps)
            .ok()?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with("libshardgate-") && n.ends_with(".rlib")
            })
            .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
            .max()?;
        (bin_time >= lib_time).then_some(bin)
    });
    match fresh {
        Some(bin) => {
            eprintln!("proxy process: {}", bin.display());
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("run").arg("--config").arg(config_path);
            cmd
        }
        None => {
            eprintln!("proxy process: this test binary (no fresh target/debug/shardgate)");
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["--exact", "child_proxy", "--ignored", "--nocapture"])
                .env("TWOPHASE_CHILD_CONFIG", config_path);
            cmd
        }
    }
}

/// Not a test: the proxy process of `a_proxy_killed_between_the_phases...` when no fresh
/// `shardgate` binary is around (runs what `shardgate run --config F` runs).
#[test]
#[ignore]
fn child_proxy() {
    let Ok(path) = std::env::var("TWOPHASE_CHILD_CONFIG") else {
        return;
    };
    let config = Config::load(Path::new(&path)).expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.proxy.listen)
            .await
            .unwrap();
        let state = shardgate::state::ProxyState::new(config);
        shardgate::server::run(listener, state, std::future::pending::<()>()).await;
    });
}

/// The proxy process, killed if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_between_the_phases_ends_alike_on_every_participant() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("shardgate.toml");
    std::fs::write(
        &path,
        config(
            &format!("127.0.0.1:{port}"),
            &format!("failpoints = [\"pause_after_prepare={}\"]", pause.display()),
            "two_phase_recovery_ms = 600000",
        ),
    )
    .unwrap();
    let mut child = KillOnDrop(
        proxy_command(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
    let mut c = None;
    for _ in 0..500 {
        if let Ok(cl) = connect(&url).await {
            c = Some(cl);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = c.expect("the proxy process accepts connections");
    schema(&c).await;
    let keys = open(&c).await;
    let commit = tokio::spawn(async move { c.simple_query("COMMIT").await.map(|_| ()) });
    wait_for_file(&pause).await;
    child.0.kill().unwrap(); // SIGKILL
    let _ = child.0.wait();
    let told = commit.await.unwrap();
    assert!(told.is_err(), "the client got no answer");
    assert_eq!(leftovers().await.0, 2, "both participants stay prepared");
    // A new instance resolves them at start-up: all prepared, so all commit.
    let _p = Proxy::start(&config("127.0.0.1:0", "", "two_phase_recovery_ms = 0"));
    assert!(
        wait_until(Duration::from_secs(20), || async {
            leftovers().await == (0, 0)
        })
        .await,
        "recovery resolved everything: {:?}",
        leftovers().await
    );
    let rows = stored(&[keys.0, keys.1]).await;
    assert!(
        rows.is_empty() || rows == vec![keys.0, keys.1],
        "all or none: {rows:?}"
    );
    assert_eq!(rows, vec![keys.0, keys.1], "every participant had prepared");
    let recovered = &_p.state.events.two_phase_recovered;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            shardgate::admin::events::Events::get(recovered) == 2
        })
        .await,
        "both parts counted as recovered for /metrics"
    );
}

/// The values of `SHOW name` on both pooled connections of shard `shard` (pool size 2),
/// through the proxy: two clients in a transaction at once hold one each.
async fn show_on(p: &Proxy, shard: usize, name: &str) -> Vec<String> {
    let mut clients = Vec::new();
    let mut out = Vec::new();
    for _ in 0..2 {
        let c = p.app("app").await;
        c.simple_query(&format!("SET shardgate.shard = 's{shard}'"))
            .await
            .unwrap();
        c.simple_query("BEGIN").await.unwrap();
        let msgs = c.simple_query(&format!("SHOW {name}")).await.unwrap();
        out.extend(msgs.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        }));
        clients.push(c);
    }
    for c in clients {
        c.simple_query("COMMIT").await.unwrap();
    }
    out
}

/// A setting changed inside a transaction exists on one server only: a transaction across
/// shards refuses to change one (0A000, rolled back everywhere), and one that changed a
/// setting stays on its shard. Before this, `SET search_path` after writes on two shards
/// reached one of them, was committed there and left that pooled connection with the
/// setting for every later client (which the proxy did not know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_in_a_transaction_stay_on_one_shard() {
    let _serial = SERIAL.lock().await;
    // Two connections per shard (one for the transaction, one for creating the decision
    // log): `show_on` sees both.
    let p = Proxy::start(
        &config("127.0.0.1:0", "", "two_phase_recovery_ms = 600000")
            .replace("[pool]\nsize = 4", "[pool]\nsize = 2"),
    );
    let c = p.app("app").await;
    schema(&c).await;
    let default_path = show_on(&p, 0, "search_path").await;
    let default_app = show_on(&p, 0, "application_name").await;
    for sql in [
        "SET search_path = leaked_schema",
        "RESET search_path",
        "SELECT set_config('search_path', 'leaked_schema', false)",
    ] {
        assert_refused(&c, sql, false).await;
        assert_refused(&c, sql, true).await;
    }
    // SET LOCAL in an extended batch is refused there; in a simple Query it is made on every
    // participant, and on the shards the transaction reaches afterwards.
    assert_refused(&c, "SET LOCAL search_path = leaked_schema", true).await;
    let (a, b) = open(&c).await;
    c.simple_query("SET LOCAL application_name = 'after_two'")
        .await
        .unwrap();
    let later = (b + 5_000_000..)
        .find(|k| owner(*k) != owner(a) && owner(*k) != owner(b))
        .unwrap();
    c.simple_query(&format!("INSERT INTO tp (k, v) VALUES ({later}, 'x')"))
        .await
        .unwrap();
    for k in [a, b, later] {
        c.simple_query(&format!(
            "UPDATE tp SET v = current_setting('application_name') WHERE k = {k}"
        ))
        .await
        .unwrap();
    }
    c.simple_query("COMMIT").await.unwrap();
    let rows = c
        .query(
            &format!("SELECT v FROM tp WHERE k IN ({a}, {b}, {later})"),
            &[],
        )
        .await
        .unwrap();
    let v: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(v, ["after_two"; 3]);
    // A value a shard refuses: the transaction fails everywhere, nothing is stored.
    let keys = open(&c).await;
    let e = c
        .simple_query("SET LOCAL statement_timeout = 'not a duration'")
        .await
        .unwrap_err();
    assert!(
        matches!(sqlstate(&e).as_deref(), Some("0A000" | "22023")),
        "{e}"
    );
    assert_rolled_back(&c, keys, "a bad SET LOCAL").await;
    // set_config with bind parameters for the name and the value.
    let keys = open(&c).await;
    let e = c
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"search_path", &"leaked_schema"],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e).as_deref(),
        Some("0A000"),
        "bound set_config: {e}"
    );
    assert_rolled_back(&c, keys, "bound set_config").await;
    // A transaction that changed a session setting does not reach a second shard, whether
    // the SET came in a Query of its own or after another statement.
    for together in [false, true] {
        let (a, b) = two_keys();
        let insert = format!("INSERT INTO tp (k, v) VALUES ({a}, 'x')");
        let set = "SET search_path = leaked_schema, public";
        c.simple_query("BEGIN").await.unwrap();
        c.simple_query(&insert).await.unwrap();
        if together {
            c.simple_query(&format!("SELECT 1; {set}")).await.unwrap();
        } else {
            c.simple_query(set).await.unwrap();
        }
        let e = c
            .simple_query(&format!("INSERT INTO tp (k, v) VALUES ({b}, 'x')"))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{together}: {e}");
        assert_rolled_back(&c, (a, b), "SET then another shard").await;
    }
    // A transaction-scoped SET LOCAL follows the transaction to every shard it reaches.
    for begin in [
        "BEGIN; SET LOCAL application_name = 'local_two'",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
    ] {
        let (a, b) = two_keys();
        c.simple_query(begin).await.unwrap();
        if !begin.contains("LOCAL") {
            c.simple_query("SET LOCAL application_name = 'local_two'")
                .await
                .unwrap();
        }
        for k in [a, b] {
            c.simple_query(&format!(
                "INSERT INTO tp (k, v) VALUES ({k}, current_setting('application_name') \
                 || current_setting('transaction_isolation'))"
            ))
            .await
            .unwrap();
        }
        c.simple_query("COMMIT").await.unwrap();
        let v = values_of(&c, a, b).await;
        let iso = if begin.contains("REPEATABLE") {
            "repeatable read"
        } else {
            "read committed"
        };
        let want = format!("local_two{iso}");
        assert_eq!(v, [want.clone(), want], "{begin}");
    }
    // No pooled connection kept a setting of this client.
    drop(c);
    for shard in 0..3 {
        assert_eq!(
            show_on(&p, shard, "search_path").await,
            default_path,
            "shard {shard}"
        );
        assert_eq!(
            show_on(&p, shard, "application_name").await,
            default_app,
            "shard {shard}"
        );
    }
    // A setting made before BEGIN applies on every shard the transaction reaches.
    let c = p.app("app").await;
    c.simple_query("SET application_name = 'two_shards'")
        .await
        .unwrap();
    let (a, b) = two_keys();
    c.simple_query("BEGIN").await.unwrap();
    for k in [a, b] {
        c.simple_query(&format!(
            "INSERT INTO tp (k, v) VALUES ({k}, current_setting('application_name'))"
        ))
        .await
        .unwrap();
    }
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(values_of(&c, a, b).await, ["two_shards", "two_shards"]);
}

/// Column `v` of the rows with keys `a` and `b`, through the proxy.
async fn values_of(c: &Client, a: i64, b: i64) -> Vec<String> {
    let rows = c
        .query(&format!("SELECT v FROM tp WHERE k IN ({a}, {b})"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The decision log is created on a connection outside the pool: with `[pool] size = 1` the
/// transaction holds the coordinator's only pooled connection, and creating the log there
/// used to wait for the checkout timeout and roll the transaction back (40000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_is_created_with_a_pool_of_one() {
    let _serial = SERIAL.lock().await;
    let p = Proxy::start(
        &config("127.0.0.1:0", "", "two_phase_recovery_ms = 600000")
            .replace("[pool]\nsize = 4", "[pool]\nsize = 1"),
    );
    let c = p.app("app").await;
    schema(&c).await;
    for cl in &shards().clusters {
        direct(cl, "app")
            .await
            .simple_query("DROP TABLE IF EXISTS shardgate_2pc_log")
            .await
            .unwrap();
    }
    // A commit may still believe the table exists on its coordinator (it was created by an
    // earlier test of this process): its log insert then fails, it rolls back and forgets the
    // table there. The next commit with that coordinator creates it. Coordinators are the
    // lower shard of a pair (shard 0 or 1): at most two commits fail.
    let mut committed = None;
    for _ in 0..3 {
        let keys = open(&c).await;
        match c.simple_query("COMMIT").await {
            Ok(_) => {
                committed = Some(keys);
                break;
            }
            Err(e) => {
                assert_eq!(stored(&[keys.0, keys.1]).await, Vec::<i64>::new(), "{e}");
                c.simple_query("ROLLBACK").await.ok();
            }
        }
    }
    let keys = committed.expect("a commit across shards with a pool of one");
    assert_eq!(stored(&[keys.0, keys.1]).await, vec![keys.0, keys.1]);
    assert_eq!(leftovers().await, (0, 0));
}

/// A fresh key owned by `shard`.
fn key_on(shard: usize) -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(500_000);
    loop {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if owner(k) == shard {
            return k;
        }
    }
}

/// A transaction on all three shards whose part on `failing` breaks a deferred unique
/// constraint, checked at its PREPARE: the COMMIT answers 40000, no row is stored anywhere
/// and no prepared transaction is left, whichever participant fails (the coordinator, whose
/// PREPARE goes first; or one of the others, prepared at once with the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_cannot_prepare_rolls_back_every_part() {
    let _serial = SERIAL.lock().await;
    let p = proxy("");
    let c = p.app("app").await;
    c.simple_query(
        "CREATE TABLE IF NOT EXISTS tpd (k bigint PRIMARY KEY, v int, \
         CONSTRAINT tpd_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await
    .unwrap();
    for failing in 0..3 {
        let keys: Vec<i64> = (0..3).map(key_on).collect();
        let twin = key_on(failing);
        c.simple_query("BEGIN").await.unwrap();
        for (i, k) in keys.iter().enumerate() {
            c.simple_query(&format!("INSERT INTO tpd (k, v) VALUES ({k}, {i})"))
                .await
                .unwrap();
        }
        // Same v as the failing shard's first row: fine until the constraint is checked.
        c.simple_query(&format!(
            "INSERT INTO tpd (k, v) VALUES ({twin}, {failing})"
        ))
        .await
        .unwrap();
        let e = c.simple_query("COMMIT").await.unwrap_err();
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some("40000"),
            "shard {failing}: {e}"
        );
        let mut all = keys.clone();
        all.push(twin);
        for cl in &shards().clusters {
            let d = direct(cl, "app").await;
            let list = all
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let n = d
                .simple_query(&format!("SELECT k FROM tpd WHERE k IN ({list})"))
                .await
                .unwrap()
                .iter()
                .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                .count();
            assert_eq!(n, 0, "shard {failing} failed: rows stored on {}", cl.port());
        }
        assert_eq!(
            leftovers().await.0,
            0,
            "shard {failing} failed: prepared parts left"
        );
        // The session goes on.
        c.simple_query("SELECT 1").await.unwrap();
    }
}
