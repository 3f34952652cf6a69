//! Test harness: one real Postgres 15 cluster per test binary (stopped at process exit), and
//! Shardgate proxies started in-process on port 0 with a config per test.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shardgate::config::Config;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};
use tokio_postgres::{Client, NoTls};

/// The cluster shared by the tests of one binary. Roles: `app`/`app` (SCRAM-stored),
/// `app_md5`/`app_md5` (md5-stored); database `app` owned by `app`. The hba method is md5, so
/// Postgres asks SCRAM of `app` and md5 of `app_md5`.
pub fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let opts = ClusterOptions {
            hba_method: "md5".into(),
            ..ClusterOptions::default()
        };
        let c = PgCluster::start(opts).expect("start postgres");
        c.create_role("app", "app", PasswordMethod::Scram).unwrap();
        c.create_role("app_md5", "app_md5", PasswordMethod::Md5)
            .unwrap();
        c.create_database("app", "app").unwrap();
        c.psql("app", "GRANT ALL ON SCHEMA public TO app_md5")
            .unwrap();
        register_cleanup(c.data_dir().to_path_buf());
        c
    })
}

/// A streaming hot standby of [`cluster`] (made with pg_basebackup), shared by the tests of
/// one binary and stopped at process exit. Tests must not pause or stop it.
pub fn replica() -> &'static PgCluster {
    static REPLICA: OnceLock<PgCluster> = OnceLock::new();
    REPLICA.get_or_init(|| {
        let opts = ClusterOptions {
            hba_method: "md5".into(),
            ..ClusterOptions::default()
        };
        let r = cluster().start_replica(opts).expect("start replica");
        let _ = REPLICA_DIR.set(r.data_dir().to_path_buf());
        r
    })
}

static DATA_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
static REPLICA_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    let Some(c) = cluster_if_started() else {
        return;
    };
    for dir in [REPLICA_DIR.get(), DATA_DIR.get()].into_iter().flatten() {
        let _ = c
            .run_as_pg_cmd("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(base) = dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// A config for read/write splitting: users `app` (SCRAM) and `trusty` (trust), database
/// `app` in transaction mode over one shard with `servers` (TOML for the shard's server
/// keys, e.g. `primary = "..."` and `replicas = [...]`), plus `routing` and `pool` lines.
pub fn split_config(servers: &str, routing: &str, pool: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[pool]
{pool}

[routing]
healthcheck_interval_ms = 100
{routing}

[[users]]
name = "app"
password = "app"

[[users]]
name = "trusty"
auth_method = "trust"
server_user = "app"
server_password = "app"

[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
{servers}
"#
    )
}

/// Polls `sql` on a direct superuser connection to `c` until it returns `want`.
pub fn wait_psql(c: &PgCluster, sql: &str, want: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if c.psql("app", sql).is_ok_and(|o| o == want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn cluster_if_started() -> Option<&'static PgCluster> {
    DATA_DIR.get().map(|_| cluster())
}

fn register_cleanup(dir: std::path::PathBuf) {
    let _ = DATA_DIR.set(dir);
    // SAFETY: registering a plain extern "C" function with no captured state.
    unsafe {
        libc::atexit(stop_cluster_at_exit);
    }
}

/// A config with users `app` (SCRAM), `app_md5` (md5 on both sides), `verifier` (a SCRAM
/// verifier of "app" in the config), `trusty` (trust; logs
/// into Postgres as app), and databases `app` (transaction mode), `app_session`,
/// `app_statement`, all on the shared cluster. `extra` is appended to the `[proxy]` section's
/// neighbours: pass whole sections (e.g. "[pool]\nsize = 5").
pub fn config_text(proxy: &str, pool: &str) -> String {
    let pg = cluster().addr();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{proxy}

[pool]
{pool}

[[users]]
name = "app"
password = "app"

[[users]]
name = "app_md5"
password = "app_md5"
auth_method = "md5"

[[users]]
name = "verifier"
# SCRAM verifier of the password "app"
password = "SCRAM-SHA-256$4096:c2hhcmRnYXRlLWV4YW1wbGU=$gv9GdxLHLxTdBHeJZlf5OfXX4p7wCDob8Zft60WALvA=:0WVuW5lXsAvAU3ODoA2PuCdfTJssSDXyjNe1/4gg2Qo="
server_user = "app"
server_password = "app"

[[users]]
name = "trusty"
auth_method = "trust"
server_user = "app"
server_password = "app"

[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "{pg}"

[[databases]]
name = "app_session"
server_database = "app"
pool_mode = "session"
[[databases.shards]]
name = "s0"
primary = "{pg}"

[[databases]]
name = "app_statement"
server_database = "app"
pool_mode = "statement"
[[databases.shards]]
name = "s0"
primary = "{pg}"
"#
    )
}

/// A running proxy on its own runtime thread; dropping it shuts it down.
pub struct Proxy {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    /// What its sessions share (counters a test may read).
    pub state: std::sync::Arc<shardgate::state::ProxyState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy with the given config text (its `listen` is ignored: port 0 is used).
    pub fn start(config: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Proxy::start_with(config, listener)
    }

    /// Starts a proxy on 127.0.0.1:`port` with `SO_REUSEPORT`, as `shardgate run` listens:
    /// several may share the port (rolling restarts).
    pub fn start_shared(config: &str, port: u16) -> Proxy {
        // Bound on a thread of its own: the caller may be inside a runtime already.
        let listener = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let l = rt.block_on(shardgate::server::bind(&format!("127.0.0.1:{port}"), true));
            l.and_then(|l| l.into_std())
        })
        .join()
        .unwrap()
        .expect("bind with SO_REUSEPORT");
        Proxy::start_with(config, listener)
    }

    fn start_with(config: &str, listener: std::net::TcpListener) -> Proxy {
        // SHARDGATE_TEST_LOG=<filter> shows the proxy's tracing on stderr while debugging.
        if let Ok(filter) = std::env::var("SHARDGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let config = Config::parse(config, "test").expect("parse config");
        let problems = config.validate();
        assert!(problems.is_empty(), "{problems:?}");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (state_tx, state_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let state = shardgate::state::ProxyState::new(config);
                let _ = state_tx.send(state.clone());
                shardgate::server::run(listener, state, async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        let state = state_rx.recv().expect("the proxy thread started");
        Proxy {
            port,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the proxy thread has ended (after a shutdown).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Shuts down and waits for the proxy thread to finish.
    pub fn stop(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A libpq-style connection string.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user='{user}' password='{password}' dbname='{db}' connect_timeout=10",
            self.port
        )
    }

    /// A URL for psql and pgbench.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Connects with tokio-postgres; the connection task runs on the caller's runtime.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(&self.conn_str(user, password, db)).await
    }

    /// Connects as app/app to `db`, panicking on failure.
    pub async fn app(&self, db: &str) -> Client {
        self.connect("app", "app", db)
            .await
            .expect("connect through proxy")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects with tokio-postgres and spawns the connection task.
pub async fn connect(conn_str: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conn_str, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A superuser connection straight to Postgres (not through the proxy).
pub async fn direct_superuser() -> Client {
    let c = cluster();
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres password=postgres dbname=app",
        c.port()
    ))
    .await
    .expect("direct connection")
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Path of a Postgres client binary (pgbench, psql) from the server's bindir.
pub fn pg_bin(name: &str) -> std::path::PathBuf {
    cluster().bindir().join(name)
}

/// Runs pgbench with `args` against `url` (password in the URL), returning (success, output).
pub fn pgbench(url: &str, args: &[&str]) -> (bool, String) {
    pgbench_from(&pg_bin("pgbench"), url, args)
}

/// Extracts an integer that follows `label` in pgbench output.
pub fn pgbench_number(output: &str, label: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.contains(label))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

pub mod raw;

mod helpers;
pub use helpers::{fresh_primary, http_get, pgbench_from, primary_with_replica, serial};

/// This process's resident set size in KiB (the proxy of a test runs in it).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A set of real shard primaries for sharding tests, with a proxy config over them.
pub struct ShardSet {
    /// The shard primaries (role and database `app`, password `app`).
    pub clusters: Vec<PgCluster>,
    /// A config over them; `#LISTEN#`, `#PROXY_EXTRA#` (lines of `[proxy]`) and `#DB_EXTRA#`
    /// (lines of the database) are filled in by [`ShardSet::config`].
    pub template: String,
}

impl ShardSet {
    /// Starts `n` shards with `max_prepared_transactions = max_prepared`, sharding each
    /// `(table, column, type)` of `tables`; stopped when the test process exits.
    pub fn start(n: usize, max_prepared: u32, tables: &[(&str, &str, &str)]) -> ShardSet {
        let clusters: Vec<PgCluster> = (0..n)
            .map(|_| {
                let c = PgCluster::start(ClusterOptions {
                    hba_method: "md5".into(),
                    extra_conf: vec![format!("max_prepared_transactions = {max_prepared}")],
                    ..ClusterOptions::default()
                })
                .expect("start shard");
                c.create_role("app", "app", PasswordMethod::Scram).unwrap();
                c.create_database("app", "app").unwrap();
                c
            })
            .collect();
        let mut template = String::from(
            "[proxy]\nlisten = \"#LISTEN#\"\n#PROXY_EXTRA#\n[pool]\nsize = 4\n\
             [[users]]\nname = \"app\"\npassword = \"app\"\n\
             [[databases]]\nname = \"app\"\n#DB_EXTRA#\n",
        );
        for (i, c) in clusters.iter().enumerate() {
            template.push_str(&format!(
                "[[databases.shards]]\nname = \"s{i}\"\nprimary = \"{}\"\n",
                c.addr()
            ));
        }
        for (table, column, ty) in tables {
            template.push_str(&format!(
                "[[databases.sharded_tables]]\ntable = \"{table}\"\ncolumn = \"{column}\"\ntype = \"{ty}\"\n"
            ));
        }
        ShardSet { clusters, template }
    }

    /// Registers the shards to be stopped at exit (for a set held in a `static`).
    pub fn stop_at_exit(&'static self) {
        self.clusters.iter().for_each(stop_at_exit);
    }

    /// The config with a listen address, `[proxy]` lines and database lines.
    pub fn config(&self, listen: &str, proxy_extra: &str, db_extra: &str) -> String {
        self.template
            .replace("#LISTEN#", listen)
            .replace("#PROXY_EXTRA#", proxy_extra)
            .replace("#DB_EXTRA#", db_extra)
    }

    /// A direct connection to shard `i` as `app`.
    pub async fn direct(&self, i: usize) -> Client {
        connect(&format!(
            "host=127.0.0.1 port={} user=app password=app dbname=app",
            self.clusters[i].port()
        ))
        .await
        .expect("direct connection to a shard")
    }
}

static AT_EXIT: std::sync::Mutex<Vec<&'static PgCluster>> = std::sync::Mutex::new(Vec::new());

extern "C" fn stop_registered_at_exit() {
    let list = AT_EXIT.lock().map(|l| l.clone()).unwrap_or_default();
    for c in list {
        let _ = c
            .run_as_pg_cmd("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(c.data_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(base) = c.data_dir().parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Stops a cluster held in a `static` (never dropped) when the test process exits.
pub fn stop_at_exit(c: &'static PgCluster) {
    let mut list = AT_EXIT.lock().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(stop_registered_at_exit);
        }
    }
    list.push(c);
}

/// A helper process of a test (a PgBouncer, a Prometheus) on a loopback port, with its
/// temporary directory; killed and reaped on drop.
pub struct Daemon {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn new(port: u16, child: std::process::Child, dir: tempfile::TempDir) -> Daemon {
        Daemon {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
