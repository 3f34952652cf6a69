//! `shardgate demo`: a throw-away local topology — two shards, the first a primary with a
//! streaming replica (pg_basebackup), the second a primary — made with the installed Postgres
//! binaries, a config written for it, and the proxy in front with read/write splitting and
//! sharding, until Ctrl-C.
use std::path::PathBuf;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::ProxyState;
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Proxy listen address.
    pub listen: String,
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
    let text = demo_config(&opts.listen, &s0.addr(), &replica.addr(), &s1.addr());
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
        "\nShardgate is listening on {listen}: shard s0 = primary {p0} + replica {rep}, \
         shard s1 = primary {p1}.\nconfig: {cfg}\n\n\
         Try:\n  psql \"{url}\" -c 'create table orders (id serial, customer_id bigint, total numeric)'   # every shard\n  \
         psql \"{url}\" -c 'insert into orders (customer_id, total) values (1, 10), (2, 20), (3, 30), (4, 40)'   # split by key\n  \
         psql \"{url}\" -c 'select inet_server_port(), * from orders where customer_id = 3'   # one shard (s0 reads: the replica)\n  \
         psql \"{url}\" -c 'select count(*), sum(total), avg(total) from orders'   # every shard, merged\n  \
         shardgate shard locate --config {cfg} --table orders 3\n  \
         PGPASSWORD=app pgbench -i -s 2 \"{url}\"\n  \
         PGPASSWORD=app pgbench -S -c 16 -j 2 -T 10 -M extended \"{url}\"\n  \
         PGPASSWORD=app pgbench -c 4 -j 2 -T 10 \"{url}\"   # TPC-B across shards, two-phase commit\n\n\
         Ctrl-C stops the proxy and Postgres and removes the data directories.",
        listen = opts.listen,
        p0 = s0.addr(),
        rep = replica.addr(),
        p1 = s1.addr(),
        cfg = path.display(),
    );
    crate::server::run(listener, state, crate::server::shutdown_signal()).await;
    tokio::task::spawn_blocking(move || {
        drop(replica);
        drop(s0);
        drop(s1);
    })
    .await?;
    drop(dir);
    println!("demo stopped and cleaned up");
    Ok(())
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
}
