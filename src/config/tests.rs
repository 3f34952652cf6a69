use super::*;

const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "secret"

[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:5432"
"#;

#[test]
fn minimal_config_is_valid_with_defaults() {
    let c = Config::parse(MINIMAL, "t").unwrap();
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.users[0].server_password(), Some("secret"));
    assert_eq!(c.databases[0].server_database(), "app");
}

#[test]
fn problems_name_their_key_paths() {
    let text = r#"
[proxy]
listen = "nonsense"
[pool]
size = 0
[[users]]
name = "a"
password = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
[[databases]]
name = "d"
[[databases.shards]]
name = "s0"
primary = "localhost"
"#;
    let c = Config::parse(text, "t").unwrap();
    let paths: Vec<String> = c.validate().into_iter().map(|p| p.path).collect();
    assert!(paths.contains(&"proxy.listen".to_string()), "{paths:?}");
    assert!(paths.contains(&"pool.size".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"users[0].server_password".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"databases[0].shards[0].primary".to_string()),
        "{paths:?}"
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = Config::parse("[pool]\nsizee = 3\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sizee"), "{err}");
}

#[test]
fn every_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

#[test]
fn debug_output_never_shows_passwords() {
    let mut c = Config::parse(MINIMAL, "t").unwrap();
    c.users[0].server_password = Some("other-secret".into());
    c.proxy.admin_password = Redacted("admin-secret".into());
    let text = format!("{c:?}");
    assert!(!text.contains("secret"), "{text}");
}
