//! `shardgate demo`: a throw-away local topology (a Postgres primary and a streaming replica
//! made with the installed binaries and pg_basebackup), a config written for it, and the proxy
//! in front with read/write splitting, until Ctrl-C.

use std::path::PathBuf;
use tokio::net::TcpListener;

use crate::cluster::{ClusterOptions, PasswordMethod, PgCluster};
use crate::config::Config;
use crate::state::ProxyState;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Proxy listen address.
    pub listen: String,
}

/// The config text the demo writes for a primary on `pg_addr` and a replica on `replica_addr`.
pub fn demo_config(listen: &str, pg_addr: &str, replica_addr: &str) -> String {
    format!(
        r#"# Written by `shardgate demo`: a Postgres primary and a streaming replica behind the proxy.
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

[[databases.shards]]
name = "s0"
primary = "{pg_addr}"
replicas = ["{replica_addr}"]
"#
    )
}

/// Runs the demo until Ctrl-C / SIGTERM; everything it created is removed on exit.
pub async fn run(opts: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    println!("starting a local PostgreSQL primary (initdb) and a replica (pg_basebackup) ...");
    type Pair = (PgCluster, PgCluster);
    let (cluster, replica) =
        tokio::task::spawn_blocking(|| -> Result<Pair, crate::cluster::ClusterError> {
            let c = PgCluster::start(ClusterOptions::default())?;
            c.create_role("app", "app", PasswordMethod::Scram)?;
            c.create_database("app", "app")?;
            let r = c.start_replica(ClusterOptions::default())?;
            Ok((c, r))
        })
        .await??;
    let text = demo_config(&opts.listen, &cluster.addr(), &replica.addr());
    let dir = tempfile::Builder::new()
        .prefix("shardgate-demo-")
        .tempdir()?;
    let path: PathBuf = dir.path().join("shardgate.toml");
    std::fs::write(&path, &text)?;
    let config = Config::load(&path)?;
    let listener = TcpListener::bind(&config.proxy.listen).await?;
    let state = ProxyState::new(config);
    let url = format!("postgres://app:app@{}/app", opts.listen);
    println!(
        "\nShardgate is listening on {listen} (Postgres primary on {pg}, replica on {rep}).\n\
         config: {cfg}\n\n\
         Try:\n  psql \"{url}\" -c 'select inet_server_port(), pg_is_in_recovery()'   # the replica\n  \
         psql \"{url}\" -c 'create table t (id int); insert into t values (1) returning inet_server_port()'   # the primary\n  \
         psql \"{url}\" -c '/* shardgate: primary */ select inet_server_port()'\n  \
         PGPASSWORD=app pgbench -i -s 2 \"{url}\"\n  \
         PGPASSWORD=app pgbench -S -c 16 -j 2 -T 10 -M extended \"{url}\"\n\n\
         Ctrl-C stops the proxy and Postgres and removes the data directory.",
        listen = opts.listen,
        pg = cluster.addr(),
        rep = replica.addr(),
        cfg = path.display(),
    );
    crate::server::run(listener, state, crate::server::shutdown_signal()).await;
    tokio::task::spawn_blocking(move || {
        drop(replica);
        drop(cluster);
    })
    .await?;
    drop(dir);
    println!("demo stopped and cleaned up");
    Ok(())
}
