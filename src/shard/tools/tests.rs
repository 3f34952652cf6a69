use super::*;

const USERS: &str = "[[users]]\nname = \"app\"\npassword = \"app\"\n";

/// A valid config: database `app` with the given shard names (weight 1), `orders` sharded by
/// `customer_id` (bigint), `sessions` by `token` (uuid), `countries` replicated.
fn config(shards: &[&str]) -> Config {
    let mut text =
        format!("{USERS}[[databases]]\nname = \"app\"\nreplicated_tables = [\"countries\"]\n");
    for (i, name) in shards.iter().enumerate() {
        text.push_str(&format!(
            "[[databases.shards]]\nname = \"{name}\"\nprimary = \"127.0.0.1:{}\"\n",
            5432 + i
        ));
    }
    text.push_str(
        "[[databases.sharded_tables]]\ntable = \"orders\"\ncolumn = \"customer_id\"\ntype = \"bigint\"\n\
         [[databases.sharded_tables]]\ntable = \"sessions\"\ncolumn = \"token\"\ntype = \"uuid\"\n",
    );
    let config = Config::parse(&text, "test").unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    config
}

#[test]
fn locate_a_sharded_key() {
    let c = config(&["s0", "s1", "s2"]);
    let ring = Ring::new(&c.databases[0]);
    for key in [1i64, 42, -7, 1_000_000] {
        let loc = locate(&c, Some("app"), "orders", &key.to_string()).unwrap();
        let expected = ring.shard_name_for(&key.to_be_bytes());
        assert_eq!(loc.shard_names(), [expected]);
        let index = loc.shards[0].index;
        assert_eq!(
            loc.shards[0].servers,
            c.databases[0].shards[index.index()].all_servers()
        );
    }
    let loc = locate(&c, None, "orders", "+42").unwrap();
    let text = loc.to_string();
    assert!(
        text.contains("table     orders (sharded by customer_id bigint)"),
        "{text}"
    );
    assert!(text.contains("key       42\n"), "{text}");
    assert!(
        text.contains("bytes     000000000000002a (ring position 0x"),
        "{text}"
    );
    assert!(
        text.contains(&format!("shard     {}\n", loc.shards[0].name)),
        "{text}"
    );
    assert!(text.contains("  server  127.0.0.1:543"), "{text}");
    assert!(text.contains("(primary)"), "{text}");
}

#[test]
fn locate_folds_table_names_like_postgres() {
    let c = config(&["s0", "s1"]);
    let plain = locate(&c, None, "orders", "42").unwrap();
    for spelled in ["ORDERS", "Orders", "public.orders"] {
        assert_eq!(locate(&c, None, spelled, "42").unwrap(), plain, "{spelled}");
    }
}

#[test]
fn locate_a_uuid_key_in_any_spelling() {
    let c = config(&["s0", "s1", "s2"]);
    let a = locate(&c, None, "sessions", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let b = locate(&c, None, "sessions", "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}").unwrap();
    assert_eq!(a, b);
}

#[test]
fn locate_refuses_a_key_that_does_not_parse() {
    let c = config(&["s0", "s1"]);
    let err = locate(&c, None, "orders", "abc").unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid input syntax for type bigint: \"abc\" (shard key orders.customer_id)"
    );
    let err = locate(&c, None, "sessions", "42").unwrap_err().to_string();
    assert!(
        err.starts_with("invalid input syntax for type uuid"),
        "{err}"
    );
}

#[test]
fn locate_unlisted_and_replicated_tables() {
    let c = config(&["s0", "s1", "s2"]);
    let loc = locate(&c, None, "audit_log", "anything").unwrap();
    assert_eq!(loc.placement, Placement::Unsharded);
    assert_eq!(loc.shard_names(), ["s0"]);
    assert!(loc
        .to_string()
        .contains("not sharded: it lives on the first shard"));
    let loc = locate(&c, None, "Countries", "x").unwrap();
    assert_eq!(loc.placement, Placement::Replicated);
    assert_eq!(loc.table, "countries");
    assert_eq!(loc.shard_names(), ["s0", "s1", "s2"]);
}

#[test]
fn locate_names_a_missing_database() {
    let c = config(&["s0"]);
    let err = locate(&c, Some("nope"), "orders", "1")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "database `nope` is not in config (it has: app)");
}

#[test]
fn plan_adding_a_shard_moves_a_quarter_to_it() {
    let (old, new) = (
        config(&["s0", "s1", "s2"]),
        config(&["s0", "s1", "s2", "s3"]),
    );
    let plan = plan(&old, &new, None).unwrap();
    assert!((0.18..0.32).contains(&plan.moved), "{plan}");
    assert!(plan.moves.iter().all(|m| m.to == "s3"), "{plan}");
    assert_eq!(plan.moves.len(), 3);
    let sum = |shares: &[Share]| shares.iter().map(|s| s.share).sum::<f64>();
    assert!((sum(&plan.before) - 1.0).abs() < 1e-9);
    assert!((sum(&plan.after) - 1.0).abs() < 1e-9);
    let moves: f64 = plan.moves.iter().map(|m| m.share).sum();
    assert!((moves - plan.moved).abs() < 1e-12);
    assert!((plan.after[3].share - plan.moved).abs() < 1e-12);

    // The exact shares agree with what the rings do to actual keys.
    let (a, b) = (Ring::new(&old.databases[0]), Ring::new(&new.databases[0]));
    let n = 200_000;
    let moved = (0..n)
        .filter(|k: &i64| {
            let key = (k * 104_729).to_be_bytes();
            a.shard_for(&key) != b.shard_for(&key)
        })
        .count();
    let sampled = moved as f64 / n as f64;
    assert!(
        (sampled - plan.moved).abs() < 0.01,
        "sampled {sampled}, plan {}",
        plan.moved
    );

    let text = plan.to_string();
    assert!(text.starts_with("database app: keyspace moved "), "{text}");
    assert!(text.contains("from  to  share of keyspace"), "{text}");
    assert!(text.contains("  s3     -       25.21%"), "{text}");
    assert!(text.contains("- new shards: s3"), "{text}");
    assert!(
        text.contains("- replicated tables (countries) need a full copy on s3"),
        "{text}"
    );
    assert!(text.contains("- unsharded tables stay on s0"), "{text}");
}

#[test]
fn plan_of_the_same_map_moves_nothing_even_if_reordered() {
    let old = config(&["s0", "s1", "s2"]);
    let same = plan(&old, &old, Some("app")).unwrap();
    assert_eq!(same.moved, 0.0);
    assert!(same.moves.is_empty());
    assert!(same.to_string().contains("no key changes shard"));
    let reordered = plan(&old, &config(&["s2", "s0", "s1"]), None).unwrap();
    assert_eq!(reordered.moved, 0.0);
    assert!(
        reordered.notes.contains(
            &"unsharded tables move from s0 to s2: the first shard listed holds them".into()
        ),
        "{reordered}"
    );
}

#[test]
fn plan_removing_or_renaming_a_shard_moves_exactly_its_keys() {
    let old = config(&["s0", "s1", "s2"]);
    let removed = plan(&old, &config(&["s0", "s1"]), None).unwrap();
    assert!(
        (removed.moved - removed.before[2].share).abs() < 1e-12,
        "{removed}"
    );
    assert!(removed.moves.iter().all(|m| m.from == "s2"));
    assert!(removed.to_string().contains("- removed shards: s2"));

    // Renaming is removing plus adding: s2's keys spread over s0, s1 and s9, and s9 takes its
    // share from s0 and s1 too.
    let renamed = plan(&old, &config(&["s0", "s1", "s9"]), None).unwrap();
    assert!(renamed.moves.iter().any(|m| m.from == "s2" && m.to == "s9"));
    assert!(renamed.moves.iter().any(|m| m.from == "s0" && m.to == "s9"));
    assert!(
        renamed.moves.iter().all(|m| m.from == "s2" || m.to == "s9"),
        "{renamed}"
    );
    assert!(renamed.moved > renamed.before[2].share);
}

#[test]
fn plan_notes_changed_shard_keys_and_servers() {
    let old = config(&["s0", "s1"]);
    let mut new = old.clone();
    new.databases[0].sharded_tables[0].key_type = KeyType::Text;
    new.databases[0].sharded_tables.remove(1);
    new.databases[0].shards[1].primary = "10.0.0.9:5432".into();
    let text = plan(&old, &new, None).unwrap().to_string();
    assert!(
        text.contains(
            "table orders: shard key changes from (customer_id bigint) to (customer_id text)"
        ),
        "{text}"
    );
    assert!(
        text.contains("table sessions is no longer sharded: all its rows go to s0"),
        "{text}"
    );
    assert!(
        text.contains(
            "shard s1 keeps its keys but moves to other servers (127.0.0.1:5433 -> 10.0.0.9:5432)"
        ),
        "{text}"
    );
    let back = plan(&new, &old, None).unwrap().to_string();
    assert!(
        back.contains("table sessions becomes sharded by (token uuid)"),
        "{back}"
    );
}

#[test]
fn plan_names_a_database_missing_from_either_side() {
    let old = config(&["s0"]);
    let mut new = old.clone();
    new.databases[0].name = "other".into();
    let err = plan(&old, &new, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "database `app` is not in the new config (it has: other)"
    );
    let err = plan(&old, &new, Some("other")).unwrap_err().to_string();
    assert_eq!(
        err,
        "database `other` is not in the old config (it has: app)"
    );
}

#[test]
fn plan_with_no_usable_shards_is_an_error_not_a_panic() {
    let old = config(&["s0"]);
    let mut new = old.clone();
    new.databases[0].shards[0].weight = 0;
    assert!(matches!(
        plan(&old, &new, None),
        Err(ToolError::NoShards(_))
    ));
    new.databases[0].shards.clear();
    assert!(matches!(
        plan(&old, &new, None),
        Err(ToolError::NoShards(_))
    ));
    let mut empty = old.clone();
    empty.databases.clear();
    assert!(matches!(
        locate(&empty, None, "t", "1"),
        Err(ToolError::NoDatabases)
    ));
}
