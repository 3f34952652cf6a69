//! DBA tools against real shards: `shard verify` finds rows on the wrong shard; after adding a
//! third shard, `shard plan` predicts the share that moves and `shard rebalance` moves exactly
//! the rows whose owner changed, keeping every row (count and content) and leaving verify
//! clean.

use integration_tests::Proxy;
use shardgate::config::Config;
use shardgate::shard::{maintenance, tools};
use testkit::{ClusterOptions, PasswordMethod, PgCluster};

fn shard_cluster() -> PgCluster {
    let c = PgCluster::start(ClusterOptions {
        hba_method: "md5".into(),
        extra_conf: vec!["max_prepared_transactions = 20".into()],
        ..ClusterOptions::default()
    })
    .expect("start shard");
    c.create_role("app", "app", PasswordMethod::Scram).unwrap();
    c.create_database("app", "app").unwrap();
    c
}

fn config(clusters: &[&PgCluster]) -> String {
    let mut text = String::from(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n\
         [[databases]]\nname = \"app\"\n",
    );
    for (i, c) in clusters.iter().enumerate() {
        text.push_str(&format!(
            "[[databases.shards]]\nname = \"s{i}\"\nprimary = \"{}\"\n",
            c.addr()
        ));
    }
    text.push_str(
        "[[databases.sharded_tables]]\ntable = \"items\"\ncolumn = \"id\"\ntype = \"bigint\"\n",
    );
    text
}

fn rows(c: &PgCluster) -> i64 {
    c.psql("app", "SELECT count(*) FROM items")
        .unwrap()
        .parse()
        .unwrap()
}

fn checksum(clusters: &[&PgCluster]) -> i64 {
    clusters
        .iter()
        .map(|c| {
            c.psql(
                "app",
                "SELECT coalesce(sum(id * 7 + length(v)), 0) FROM items",
            )
            .unwrap()
            .parse::<i64>()
            .unwrap()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_plan_and_rebalance_after_adding_a_shard() {
    let (a, b, c) = (shard_cluster(), shard_cluster(), shard_cluster());
    let two = config(&[&a, &b]);
    let three = config(&[&a, &b, &c]);
    let old = Config::parse(&two, "two").unwrap();
    let new = Config::parse(&three, "three").unwrap();
    {
        let proxy = Proxy::start(&two);
        let client = proxy.app("app").await;
        client
            .simple_query("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
            .await
            .unwrap();
        let values: Vec<String> = (1..=3000).map(|i| format!("({i}, 'item-{i}')")).collect();
        for chunk in values.chunks(500) {
            client
                .simple_query(&format!(
                    "INSERT INTO items (id, v) VALUES {}",
                    chunk.join(",")
                ))
                .await
                .unwrap();
        }
    }
    c.psql(
        "app",
        "CREATE TABLE items (id bigint PRIMARY KEY, v text); ALTER TABLE items OWNER TO app",
    )
    .unwrap();
    let before = checksum(&[&a, &b, &c]);
    assert_eq!(rows(&a) + rows(&b), 3000);

    let v = maintenance::verify(&old, None).await.unwrap();
    assert_eq!(v.misplaced(), 0, "{v}");
    // Under the three-shard map about a third of the rows are misplaced.
    let v3 = maintenance::verify(&new, None).await.unwrap();
    let plan = tools::plan(&old, &new, None).unwrap();
    let text = plan.to_string();
    assert!(text.contains("s2"), "{text}");
    let misplaced = v3.misplaced() as f64 / 3000.0;
    assert!((0.2..0.45).contains(&misplaced), "{misplaced} {v3}");

    let report = maintenance::rebalance(&old, &new, None, 250).await.unwrap();
    let moved: u64 = report.moved.values().sum();
    assert_eq!(moved, v3.misplaced(), "{report}");
    assert!(report.moved.keys().all(|(_, _, to)| to == "s2"), "{report}");
    assert_eq!(
        rows(&a) + rows(&b) + rows(&c),
        3000,
        "no row lost or duplicated"
    );
    assert_eq!(checksum(&[&a, &b, &c]), before, "row contents unchanged");
    let after = maintenance::verify(&new, None).await.unwrap();
    assert_eq!(after.misplaced(), 0, "{after}");

    // A row put on the wrong shard by hand is found.
    let wrong = (1..10_000i64)
        .find(|k| {
            let m = shardgate::shard::route::ShardMap::new(&new.databases[0]).unwrap();
            m.shard_of_text(shardgate::config::KeyType::Bigint, k.to_string().as_bytes())
                .unwrap()
                != shardgate::shard::ShardId::new(0)
                && *k > 3000
        })
        .unwrap();
    a.psql(
        "app",
        &format!("INSERT INTO items VALUES ({wrong}, 'stray')"),
    )
    .unwrap();
    let v = maintenance::verify(&new, None).await.unwrap();
    assert_eq!(v.misplaced(), 1, "{v}");
}
