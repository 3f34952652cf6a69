//! A reload that changes the shard map's weights while clients run transactions: nobody is
//! dropped, and rows written after it, by new and by connected clients, land on the shard the
//! new ring names (what `shardgate shard locate` says for the new config).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::{Proxy, ShardSet};
use shardgate::config::Config;

fn owner(config: &str, key: i64) -> String {
    let c = Config::parse(config, "t").unwrap();
    let loc = shardgate::shard::tools::locate(&c, None, "kv", &key.to_string()).unwrap();
    loc.shard_names()[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_weights_route_new_writes_of_connected_clients() {
    let set = ShardSet::start(2, 0, &[("kv", "id", "bigint")]);
    for i in 0..2 {
        set.direct(i)
            .await
            .batch_execute("CREATE TABLE kv (id bigint primary key, v text)")
            .await
            .unwrap();
    }
    let admin = "admin_password = \"admin\"";
    let before = set.config("127.0.0.1:0", admin, "");
    let after = before.replacen("name = \"s1\"\n", "name = \"s1\"\nweight = 6\n", 1);
    assert_ne!(before, after);
    // A key the reload moves from s0 to s1.
    let key = (1..10_000i64)
        .find(|k| owner(&before, *k) == "s0" && owner(&after, *k) == "s1")
        .expect("a key that moves");
    println!("key {key} moves from s0 to s1");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.toml");
    std::fs::write(&path, &before).unwrap();
    let proxy = Arc::new(Proxy::start(&before));
    proxy.state.controls.set_source(path.clone());
    let connected = proxy.app("app").await;
    connected
        .execute(
            "INSERT INTO kv (id, v) VALUES ($1, 'before')",
            &[&(key + 1_000_000)],
        )
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for c in 0..10i64 {
        let (proxy, stop_rx) = (proxy.clone(), stop_rx.clone());
        clients.push(tokio::spawn(async move {
            let client = proxy.app("app").await;
            let mut n = 0i64;
            while !*stop_rx.borrow() {
                let id = 2_000_000 + c * 100_000 + n;
                client
                    .execute("INSERT INTO kv (id, v) VALUES ($1, 'load')", &[&id])
                    .await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<i64, tokio_postgres::Error>(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, &after).unwrap();
    let console = proxy.connect("admin", "admin", "shardgate").await.unwrap();
    console.simple_query("RELOAD").await.expect("RELOAD");

    connected
        .execute("INSERT INTO kv (id, v) VALUES ($1, 'after')", &[&key])
        .await
        .unwrap();
    let fresh = proxy.app("app").await;
    fresh
        .execute(
            "INSERT INTO kv (id, v) VALUES ($1, 'fresh')",
            &[&(key + 5_000_000)],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    let mut written = 0;
    for c in clients {
        written += c.await.unwrap().expect("a client failed during the reload");
    }
    assert!(written > 0);

    let on = |i: usize, id: i64| {
        let set = &set;
        async move {
            let c = set.direct(i).await;
            let n: i64 = c
                .query_one("SELECT count(*) FROM kv WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    assert_eq!(
        on(1, key).await,
        1,
        "the connected client's write follows the new map"
    );
    assert_eq!(on(0, key).await, 0);
    let fresh_owner = owner(&after, key + 5_000_000);
    let i = if fresh_owner == "s0" { 0 } else { 1 };
    assert_eq!(on(i, key + 5_000_000).await, 1, "a new client's write");
    // No row of the load is lost.
    let mut total = 0i64;
    for i in 0..2 {
        let c = set.direct(i).await;
        total += c
            .query_one("SELECT count(*) FROM kv WHERE v = 'load'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    assert_eq!(total, written);
}
