//! Tests of the cluster helper against the installed Postgres.

use super::*;

/// Runs `sql` in `appdb` over TCP with password authentication.
fn tcp_query(c: &PgCluster, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = c
        .run_as_pg_cmd("psql")
        .args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1", "-p"])
        .arg(c.port().to_string())
        .args(["-U", user, "-d", "appdb", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn quoting() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    // A port is free when free_port checks it; any socket on the machine may take it before
    // the bind below (this failed once in CI): of three fresh ports, one binds.
    let bound = (0..3).any(|_| TcpListener::bind(("127.0.0.1", free_port())).is_ok());
    assert!(bound, "no port free_port returned could be bound");
}

#[test]
fn cluster_roles_databases_and_replica() {
    let mut primary = PgCluster::start(ClusterOptions::default()).expect("start primary");
    assert_eq!(primary.addr(), format!("127.0.0.1:{}", primary.port()));
    assert!(primary.data_dir().join("PG_VERSION").is_file());
    assert!(primary.bindir().join("postgres").is_file());
    assert_eq!(primary.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(
        primary.psql("postgres", "show max_connections").unwrap(),
        "300"
    );

    primary
        .create_role("md5_user", "pw'md5", PasswordMethod::Md5)
        .unwrap();
    primary
        .create_role("scram_user", "pw-scram", PasswordMethod::Scram)
        .unwrap();
    let hashes = primary
        .psql(
            "postgres",
            "select rolname || ':' || case when rolpassword like 'md5%' then 'md5' \
             when rolpassword like 'SCRAM-SHA-256$%' then 'scram' else 'other' end \
             || ':' || rolsuper from pg_authid \
             where rolname in ('md5_user', 'scram_user') order by rolname",
        )
        .unwrap();
    assert_eq!(hashes, "md5_user:md5:false\nscram_user:scram:false");

    primary.create_database("appdb", "scram_user").unwrap();
    let owners = primary
        .psql(
            "appdb",
            "select pg_get_userbyid(d.datdba) || '|' || pg_get_userbyid(n.nspowner) \
             from pg_database d, pg_namespace n \
             where d.datname = current_database() and n.nspname = 'public'",
        )
        .unwrap();
    assert_eq!(owners, "scram_user|scram_user");
    primary
        .psql("appdb", "create table t(id int primary key); alter table t owner to scram_user; insert into t values (1), (2)")
        .unwrap();

    // Errors carry psql's stderr.
    let err = primary
        .psql("postgres", "select * from no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // TCP logins with a password work (scram hba, scram-stored password),
    // using psql through run_as_pg_cmd. An md5-stored password cannot do
    // SCRAM, so md5_user is refused by the scram hba line.
    assert_eq!(
        tcp_query(&primary, "scram_user", "pw-scram", "select count(*) from t").unwrap(),
        "2"
    );
    assert!(tcp_query(&primary, "md5_user", "pw'md5", "select 1").is_err());

    // The replica uses md5 hba lines: both kinds of stored password work.
    let replica_opts = ClusterOptions {
        hba_method: "md5".to_string(),
        ..ClusterOptions::default()
    };
    let mut replica = primary.start_replica(replica_opts).expect("start replica");
    let conninfo = fs::read_to_string(replica.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(
        conninfo.contains("primary_conninfo") && conninfo.contains("password="),
        "{conninfo}"
    );
    assert!(replica.data_dir().join("standby.signal").is_file());
    assert_eq!(
        tcp_query(&replica, "md5_user", "pw'md5", "select current_user").unwrap(),
        "md5_user"
    );
    assert_eq!(
        tcp_query(&replica, "scram_user", "pw-scram", "select 1").unwrap(),
        "1"
    );
    assert!(tcp_query(&replica, "scram_user", "wrong", "select 1").is_err());
    assert_ne!(replica.port(), primary.port());
    assert_eq!(
        replica
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );
    assert_eq!(
        primary
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    // The base backup carried the data; writes are refused.
    assert_eq!(
        replica.psql("appdb", "select count(*) from t").unwrap(),
        "2"
    );
    assert!(replica.psql("appdb", "insert into t values (3)").is_err());

    // Streaming works: a new row shows up on the replica (poll, don't sleep).
    primary.psql("appdb", "insert into t values (3)").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if replica.psql("appdb", "select count(*) from t").unwrap() == "3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "row never replicated\n{}",
            log_tail(&replica.log_file, 40)
        );
        std::thread::sleep(POLL_INTERVAL);
    }

    replica.kill();
    replica.kill();
    assert!(replica.psql("postgres", "select 1").is_err());
    primary.stop();
    primary.stop();
    assert!(primary.psql("postgres", "select 1").is_err());
    assert!(!primary.data_dir().join("postmaster.pid").exists());
}
