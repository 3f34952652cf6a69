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

#[test]
fn no_debug_output_prints_a_password() {
    let text = r#"
[proxy]
admin_password = "adm1n-s3cret"
[pool]
allow_cleartext_server_password = true
settings_read_back = "always"
[[users]]
name = "app"
password = "us3r-s3cret"
server_password = "s3rver-s3cret"
[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:5432"
"#;
    let c = Config::parse(text, "t").unwrap();
    assert!(c.pool.allow_cleartext_server_password);
    assert_eq!(c.pool.settings_read_back, SettingsReadBack::Always);
    let secrets = ["adm1n-s3cret", "us3r-s3cret", "s3rver-s3cret"];
    let state_user = crate::auth::Secret::parse("app", &c.users[0].password);
    let params = crate::backend::ConnectParams {
        addr: "127.0.0.1:5432".into(),
        user: "app".into(),
        password: c.users[0].server_password().map(str::to_string),
        database: "app".into(),
        connect_timeout: std::time::Duration::from_secs(1),
        prepared_capacity: 1,
        allow_cleartext: false,
    };
    let messages = [
        crate::protocol::PasswordMessage::Password("us3r-s3cret".into()),
        crate::protocol::PasswordMessage::SaslInitial(
            "SCRAM-SHA-256".into(),
            b"us3r-s3cret".to_vec(),
        ),
        crate::protocol::PasswordMessage::Sasl(b"us3r-s3cret".to_vec()),
    ];
    let shown = [
        format!("{c:?}"),
        format!("{c:#?}"),
        format!("{:?}", c.users),
        format!("{state_user:?}"),
        format!("{:?}", state_user.scram_verifier()),
        format!("{params:?}"),
        format!("{messages:?}"),
    ];
    for s in &shown {
        for secret in secrets {
            assert!(!s.contains(secret), "{secret} shown in {s}");
        }
    }
    assert!(shown[5].contains("<redacted>"), "{}", shown[5]);
    // defaults: no cleartext, auto read-back
    let d = Config::parse(MINIMAL, "t").unwrap();
    assert!(!d.pool.allow_cleartext_server_password);
    assert_eq!(d.pool.settings_read_back, SettingsReadBack::Auto);
}
