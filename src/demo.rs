//! `shardgate demo`: a throw-away local topology — two shards, the first a primary with a
//! streaming replica (pg_basebackup), the second a primary — made with the installed Postgres
//! binaries, a config written for it, and the proxy in front with read/write splitting and
//! sharding, until Ctrl-C.
//!
//! With `--lb` ([`serve_lb`]): two instances of the proxy (in this process, each with its console and
//! metrics port) behind an HAProxy that health-checks their `/readyz`, and a Prometheus
//! scraping both when `/usr/bin/prometheus` is installed.
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::ProxyState;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Proxy listen address (with `lb`: HAProxy's).
    pub listen: String,
    /// Two instances behind HAProxy (and Prometheus when installed).
    pub lb: bool,
}

/// The shards' servers (host:port).
#[derive(Debug, Clone)]
pub struct Servers {
    /// Shard s0's primary.
    pub s0: String,
    /// Its streaming replica.
    pub replica: String,
    /// Shard s1's primary.
    pub s1: String,
}

/// The config text the demo writes: shard s0 on `s0` with replica `replica`, shard s1 on `s1`.
pub fn demo_config(listen: &str, s0: &str, replica: &str, s1: &str) -> String {
    format!(
        r#"# Written by `shardgate demo`: two shards (s0 with a streaming replica, s1) behind the proxy.
[proxy]
listen = "{listen}"
pool_mode = "transaction"

[pool]
size = 10

[routing]
read_write_split = true
healthcheck_interval_ms = 500

[[users]]
name = "app"
password = "app"

[[databases]]
name = "app"
two_phase_commit = true

[[databases.shards]]
name = "s0"
primary = "{s0}"
replicas = ["{replica}"]

[[databases.shards]]
name = "s1"
primary = "{s1}"

[[databases.sharded_tables]]
table = "orders"
column = "customer_id"
type = "bigint"

[[databases.sharded_tables]]
table = "pgbench_accounts"
column = "aid"
type = "bigint"

[[databases.sharded_tables]]
table = "pgbench_branches"
column = "bid"
type = "bigint"

[[databases.sharded_tables]]
table = "pgbench_tellers"
column = "tid"
type = "bigint"

[[databases.sharded_tables]]
table = "pgbench_history"
column = "aid"
type = "bigint"
"#
    )
}

/// Runs the demo until Ctrl-C / SIGTERM; everything it created is removed on exit.
pub async fn run(opts: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    if opts.lb {
        check_lb_installed()?;
    }
    println!("starting two local PostgreSQL primaries (initdb) and a replica (pg_basebackup) ...");
    type Three = (PgCluster, PgCluster, PgCluster);
    let (s0, replica, s1) =
        tokio::task::spawn_blocking(|| -> Result<Three, testkit::ClusterError> {
            let opts = ClusterOptions {
                extra_conf: vec!["max_prepared_transactions = 50".into()],
                ..ClusterOptions::default()
            };
            let s0 = PgCluster::start(opts.clone())?;
            let s1 = PgCluster::start(opts.clone())?;
            for c in [&s0, &s1] {
                c.create_role("app", "app", PasswordMethod::Scram)?;
                c.create_database("app", "app")?;
            }
            let r = s0.start_replica(opts)?;
            Ok((s0, r, s1))
        })
        .await??;
    let servers = Servers {
        s0: s0.addr(),
        replica: replica.addr(),
        s1: s1.addr(),
    };
    let dir = tempfile::Builder::new()
        .prefix("shardgate-demo-")
        .tempdir()?;
    let served = match opts.lb {
        true => serve_lb(&opts, dir.path(), &servers).await,
        false => serve_one(&opts, dir.path(), &servers).await,
    };
    tokio::task::spawn_blocking(move || {
        drop(replica);
        drop(s0);
        drop(s1);
    })
    .await?;
    drop(dir);
    println!("demo stopped and cleaned up");
    served
}

/// One proxy on the demo's address until Ctrl-C / SIGTERM.
async fn serve_one(
    opts: &DemoOptions,
    dir: &Path,
    servers: &Servers,
) -> Result<(), Box<dyn std::error::Error>> {
    let text = demo_config(&opts.listen, &servers.s0, &servers.replica, &servers.s1);
    let path: PathBuf = dir.join("shardgate.toml");
    std::fs::write(&path, &text)?;
    let config = Config::load(&path)?;
    let listener = TcpListener::bind(&config.proxy.listen).await?;
    let state = ProxyState::new(config);
    println!(
        "\nShardgate is listening on {listen}: shard s0 = primary {p0} + replica {rep}, \
         shard s1 = primary {p1}.\nconfig: {cfg}\n\n{try_it}\n\
         Ctrl-C stops the proxy and Postgres and removes the data directories.",
        listen = opts.listen,
        p0 = servers.s0,
        rep = servers.replica,
        p1 = servers.s1,
        cfg = path.display(),
        try_it = try_commands(&opts.listen, &path),
    );
    crate::server::run(listener, state, crate::server::shutdown_signal()).await;
    Ok(())
}

/// The commands the demo suggests, for the proxy (or HAProxy) on `listen`.
fn try_commands(listen: &str, config: &Path) -> String {
    let url = format!("postgres://app:app@{listen}/app");
    format!(
        "Try:\n  psql \"{url}\" -c 'create table orders (id serial, customer_id bigint, total numeric)'   # every shard\n  \
         psql \"{url}\" -c 'insert into orders (customer_id, total) values (1, 10), (2, 20), (3, 30), (4, 40)'   # split by key\n  \
         psql \"{url}\" -c 'select inet_server_port(), * from orders where customer_id = 3'   # one shard (s0 reads: the replica)\n  \
         psql \"{url}\" -c 'select count(*), sum(total), avg(total) from orders'   # every shard, merged\n  \
         shardgate shard locate --config {cfg} --table orders 3\n  \
         PGPASSWORD=app pgbench -i -s 2 \"{url}\"\n  \
         PGPASSWORD=app pgbench -S -c 16 -j 2 -T 10 -M extended \"{url}\"\n  \
         PGPASSWORD=app pgbench -c 4 -j 2 -T 10 \"{url}\"   # TPC-B across shards, two-phase commit\n",
        cfg = config.display(),
    )
}

const HAPROXY: &str = "/usr/sbin/haproxy";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// One of the instances behind HAProxy: its name and loopback ports.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `a` or `b` (HAProxy's server name).
    pub name: &'static str,
    /// Client port (HAProxy's backend server).
    pub port: u16,
    /// `metrics_listen` port: `/readyz` for HAProxy, `/metrics` for Prometheus, the dashboard.
    pub metrics: u16,
}

/// `demo_config` for one instance behind HAProxy: on its own port, with the console (user
/// `admin`, password `admin`) and metrics.
pub fn instance_config(i: &Instance, servers: &Servers) -> String {
    let listen = format!("127.0.0.1:{}", i.port);
    demo_config(&listen, &servers.s0, &servers.replica, &servers.s1).replacen(
        "[proxy]\n",
        &format!(
            "[proxy]\nadmin_password = \"admin\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
             # HAProxy checks /readyz every 500 ms: a drain outlasts one check.\n\
             shutdown_drain_ms = 1000\n",
            i.metrics
        ),
        1,
    )
}

/// HAProxy's config: Postgres clients on `listen` (TCP mode) spread over `instances`, each
/// getting new clients while its `/readyz` answers 200; the statistics page on `stats`.
pub fn haproxy_config(listen: &str, stats: &str, instances: &[Instance]) -> String {
    let mut cfg = format!(
        "# Written by `shardgate demo --lb`.\nglobal\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    retries 3\n    option redispatch\n    timeout connect 2s\n\
         \x20   timeout client 1h\n    timeout server 1h\n    timeout check 2s\n\n\
         frontend postgres\n    bind {listen}\n    default_backend shardgate\n\n\
         backend shardgate\n    balance roundrobin\n    option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n"
    );
    for i in instances {
        cfg.push_str(&format!(
            "    server {} 127.0.0.1:{} check port {} inter 500ms fall 1 rise 1\n",
            i.name, i.port, i.metrics
        ));
    }
    cfg.push_str(&format!(
        "\nfrontend stats\n    mode http\n    bind {stats}\n    timeout client 30s\n\
         \x20   stats enable\n    stats uri /\n    stats refresh 2s\n"
    ));
    cfg
}

/// Prometheus's config: every instance's `/metrics`, every 2 s.
pub fn prometheus_config(instances: &[Instance]) -> String {
    let targets: Vec<String> = instances
        .iter()
        .map(|i| format!("'127.0.0.1:{}'", i.metrics))
        .collect();
    format!(
        "# Written by `shardgate demo --lb`.\nglobal:\n  scrape_interval: 2s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: shardgate\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

fn check_lb_installed() -> Result<(), String> {
    match Path::new(HAPROXY).exists() {
        true => Ok(()),
        false => Err(format!(
            "`demo --lb` needs HAProxy ({HAPROXY}): apt-get install --no-install-recommends haproxy"
        )),
    }
}

/// A helper process (HAProxy, Prometheus) in its own process group (a Ctrl-C in the terminal
/// reaches only the demo, which stops it after the instances drained); killed on drop.
struct Helper {
    child: std::process::Child,
    log: PathBuf,
}

impl Helper {
    fn spawn(
        name: &'static str,
        bin: &str,
        args: &[String],
        dir: &Path,
    ) -> std::io::Result<Helper> {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()?;
        Ok(Helper { child, log })
    }

    /// Its log, if it has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            _ => Some(std::fs::read_to_string(&self.log).unwrap_or_default()),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two instances behind HAProxy on the demo's address (and Prometheus when installed) until
/// Ctrl-C / SIGTERM; a console `SHUTDOWN` drains one instance, which is then started again.
async fn serve_lb(
    opts: &DemoOptions,
    dir: &Path,
    servers: &Servers,
) -> Result<(), Box<dyn std::error::Error>> {
    let instances: Vec<Instance> = ["a", "b"]
        .into_iter()
        .map(|name| Instance {
            name,
            port: testkit::free_port(),
            metrics: testkit::free_port(),
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    let mut configs = Vec::new();
    for i in &instances {
        let path = dir.join(format!("shardgate-{}.toml", i.name));
        std::fs::write(&path, instance_config(i, servers))?;
        let config = Config::load(&path)?;
        running.spawn(instance(i.name, config, path.clone(), stopped.clone()));
        configs.push(path);
    }
    for i in &instances {
        let metrics = format!("127.0.0.1:{}", i.metrics);
        if !poll(Duration::from_secs(30), || ready(&metrics)).await {
            return Err(
                format!("instance {} is not ready (http://{metrics}/readyz)", i.name).into(),
            );
        }
    }
    let stats = format!("127.0.0.1:{}", testkit::free_port());
    let helpers = start_helpers(&opts.listen, &stats, &instances, dir).await?;
    print_lb(opts, servers, &instances, &configs, &stats, helpers.1);
    let ended = tokio::select! {
        () = crate::server::shutdown_signal() => None,
        Some(ended) = running.join_next() => Some(ended),
    };
    println!("stopping: the instances let their clients finish their transactions ...");
    let _ = stop.send(true);
    while running.join_next().await.is_some() {}
    drop(helpers);
    match ended {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e.into()),
        Some(Err(e)) => Err(e.into()),
    }
}

/// Starts HAProxy (waiting until it listens) and, when installed, Prometheus (its port, if
/// started).
async fn start_helpers(
    listen: &str,
    stats: &str,
    instances: &[Instance],
    dir: &Path,
) -> Result<(Vec<Helper>, Option<u16>), Box<dyn std::error::Error>> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(listen, stats, instances))?;
    let args = ["-f".to_string(), cfg.display().to_string(), "-db".into()];
    let mut haproxy = Helper::spawn("haproxy", HAPROXY, &args, dir)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Its statistics port, bound with the clients' one (a connection to that would reach an
    // instance and log a login that failed).
    while tokio::net::TcpStream::connect(stats).await.is_err() {
        if let Some(log) = haproxy.exited() {
            return Err(format!("HAProxy exited ({}):\n{log}", cfg.display()).into());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("HAProxy does not listen on {stats}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut helpers = vec![haproxy];
    if !Path::new(PROMETHEUS).exists() {
        return Ok((helpers, None));
    }
    let port = testkit::free_port();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, prometheus_config(instances))?;
    let args = [
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    match Helper::spawn("prometheus", PROMETHEUS, &args, dir) {
        Ok(p) => helpers.push(p),
        Err(e) => {
            eprintln!("Prometheus did not start: {e}");
            return Ok((helpers, None));
        }
    }
    Ok((helpers, Some(port)))
}

/// One instance (its config read from `path`, which `RELOAD` reads again) until `stop` turns
/// true; after a console `SHUTDOWN` (it drained and stopped) it is started again on the same
/// ports: a rolling restart to watch in HAProxy.
async fn instance(
    name: &'static str,
    config: Config,
    path: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let mut config = config;
    loop {
        let listen = config.proxy.listen.clone();
        let listener = crate::server::bind(&listen, false)
            .await
            .map_err(|e| format!("instance {name}: cannot listen on {listen}: {e}"))?;
        let mut until = stop.clone();
        let state = ProxyState::new(config.clone());
        state.controls.set_source(path.clone());
        crate::server::run(listener, state, async move {
            let _ = until.wait_for(|s| *s).await;
        })
        .await;
        if *stop.borrow() {
            return Ok(());
        }
        println!("instance {name} drained and stopped (console SHUTDOWN); starting it again");
        match Config::load(&path) {
            Ok(c) => config = c,
            Err(e) => eprintln!("instance {name}: {e}; it starts with the config it had"),
        }
        // Its metrics listener closes as its task ends: bind only once it is free.
        let metrics = config.proxy.metrics_listen.clone();
        poll(Duration::from_secs(5), || async {
            TcpListener::bind(metrics.as_str()).await.is_ok()
        })
        .await;
    }
}

/// Whether `/readyz` on `addr` answers 200.
async fn ready(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), get).await,
        Ok(Some(true))
    )
}

/// Polls `f` every 50 ms until it holds, for at most `timeout`.
async fn poll<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !f().await {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn print_lb(
    opts: &DemoOptions,
    servers: &Servers,
    instances: &[Instance],
    configs: &[PathBuf],
    stats: &str,
    prometheus: Option<u16>,
) {
    let url = format!("postgres://app:app@{}/app", opts.listen);
    println!(
        "\nHAProxy is listening on {listen} (TCP) in front of two Shardgate instances; \
         shard s0 = primary {p0} + replica {rep}, shard s1 = primary {p1}.\n\n  \
         psql \"{url}\"   # through HAProxy",
        listen = opts.listen,
        p0 = servers.s0,
        rep = servers.replica,
        p1 = servers.s1,
    );
    for (i, cfg) in instances.iter().zip(configs) {
        println!(
            "  instance {n}: clients 127.0.0.1:{p}, console psql \"postgres://admin:admin@127.0.0.1:{p}/shardgate\" -c 'SHOW POOLS', \
             dashboard http://127.0.0.1:{m}/ (/metrics, /readyz), config {c}",
            n = i.name,
            p = i.port,
            m = i.metrics,
            c = cfg.display(),
        );
    }
    println!("  HAProxy statistics: http://{stats}/");
    match prometheus {
        Some(port) => println!(
            "  Prometheus: http://127.0.0.1:{port}/ (scrapes both instances every 2 s; \
             try rate(shardgate_queries_total[1m]))"
        ),
        None => println!("  Prometheus: not started ({PROMETHEUS} is not installed)"),
    }
    let a = &instances[0];
    println!(
        "\n{try_it}\nA rolling restart under load:\n  \
         PGPASSWORD=app pgbench -S -C -c 4 -j 2 -T 30 \"{url}\" &\n  \
         psql \"postgres://admin:admin@127.0.0.1:{p}/shardgate\" -c SHUTDOWN   \
         # {n} drains (/readyz 503: HAProxy sends new clients to the other), stops, and starts again\n\n\
         Ctrl-C stops the instances, HAProxy, Prometheus and Postgres and removes the directories.",
        try_it = try_commands(&opts.listen, &configs[0]),
        p = a.port,
        n = a.name,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_config_is_valid_and_sharded() {
        let text = super::demo_config(
            "127.0.0.1:6432",
            "127.0.0.1:1",
            "127.0.0.1:2",
            "127.0.0.1:3",
        );
        let c = crate::config::Config::parse(&text, "demo").unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.databases[0].shards.len(), 2);
        assert!(crate::shard::route::ShardMap::new(&c.databases[0]).is_some());
    }

    #[test]
    fn lb_configs_name_both_instances() {
        let servers = super::Servers {
            s0: "127.0.0.1:1".into(),
            replica: "127.0.0.1:2".into(),
            s1: "127.0.0.1:3".into(),
        };
        let instances =
            [("a", 7001, 9001), ("b", 7002, 9002)].map(|(name, port, metrics)| super::Instance {
                name,
                port,
                metrics,
            });
        let c = crate::config::Config::parse(&super::instance_config(&instances[1], &servers), "b")
            .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.proxy.listen, "127.0.0.1:7002");
        assert_eq!(c.proxy.metrics_listen, "127.0.0.1:9002");
        let h = super::haproxy_config("127.0.0.1:6432", "127.0.0.1:8404", &instances);
        assert!(h.contains("bind 127.0.0.1:6432\n"), "{h}");
        assert!(h.contains("option httpchk GET /readyz\n"), "{h}");
        assert!(
            h.contains("server b 127.0.0.1:7002 check port 9002 "),
            "{h}"
        );
        let p = super::prometheus_config(&instances);
        assert!(
            p.contains("targets: ['127.0.0.1:9001', '127.0.0.1:9002']"),
            "{p}"
        );
    }
}
