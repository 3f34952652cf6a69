//! Read-your-writes on a sharded database with replicas: a client's reads see its own schema
//! changes and writes made on several shards at once (whose WAL positions the proxy does not
//! read), while its shard's replica has not replayed them; a client that wrote nothing reads
//! from that replica. (Before, a fan-out read after `CREATE TABLE` through the proxy failed
//! with 42P01 on a lagging replica, and positions of one shard were compared with another's.)

use integration_tests::{sqlstate, Proxy, ShardSet};
use testkit::ClusterOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_writes_on_several_shards_see_them_while_the_replica_lags() {
    let set = ShardSet::start(2, 0, &[("kv", "id", "bigint")]);
    let replica = set.clusters[0]
        .start_replica(ClusterOptions {
            hba_method: "md5".into(),
            ..ClusterOptions::default()
        })
        .expect("replica of shard 0");
    let config = set.config("127.0.0.1:0", "", "").replacen(
        &format!("primary = \"{}\"\n", set.clusters[0].addr()),
        &format!(
            "primary = \"{}\"\nreplicas = [\"{}\"]\n",
            set.clusters[0].addr(),
            replica.addr()
        ),
        1,
    );
    let proxy = Proxy::start(&config);
    let reader = proxy.app("app").await;
    let port: i32 = reader
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        port,
        replica.port() as i32,
        "reads of shard 0 use its replica"
    );
    replica.psql("app", "SELECT pg_wal_replay_pause()").unwrap();

    let writer = proxy.app("app").await;
    // DDL and a multi-row INSERT go to every shard; the replica has replayed neither.
    writer
        .batch_execute("CREATE TABLE kv (id bigint primary key, v text)")
        .await
        .unwrap();
    writer
        .batch_execute("INSERT INTO kv (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
        .await
        .unwrap();
    let n: i64 = writer
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .expect("the writer's read sees its table and rows")
        .get(0);
    assert_eq!(n, 4);
    // A client that wrote nothing still reads from the lagging replica (so the replica was
    // the one the writer would have read from).
    let e = reader
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "{e}");
    replica
        .psql("app", "SELECT pg_wal_replay_resume()")
        .unwrap();
}
