//! Authentication: SCRAM-SHA-256 and md5 on both sides of the proxy, trust, wrong passwords,
//! unknown users and databases.

use integration_tests::{config_text, direct_superuser, sqlstate, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_md5_on_both_sides() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    // Postgres stores app's password as SCRAM and app_md5's as md5 (hba md5): so towards the
    // server the proxy must answer a SCRAM exchange for app and an md5 challenge for app_md5.
    let direct = direct_superuser().await;
    let kinds: Vec<(String, String)> = direct
        .query(
            "select rolname::text, left(rolpassword, 3) from pg_authid where rolname in ('app', 'app_md5') order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("app".into(), "SCR".into()),
            ("app_md5".into(), "md5".into())
        ]
    );
    // Client side: app logs in with SCRAM (the default), app_md5 with md5.
    for (user, pw) in [("app", "app"), ("app_md5", "app_md5")] {
        assert_eq!(whoami(&proxy, user, pw).await, user);
    }
    // a user configured with a SCRAM verifier instead of a plaintext password
    assert_eq!(whoami(&proxy, "verifier", "app").await, "app");
    let e = proxy.connect("verifier", "wrong", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    // trust: no password asked; logs into Postgres as app
    assert_eq!(whoami(&proxy, "trusty", "").await, "app");
}

/// Logs in through the proxy and returns the Postgres role the session runs as.
async fn whoami(proxy: &Proxy, user: &str, password: &str) -> String {
    let c = proxy.connect(user, password, "app").await.unwrap();
    c.query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_unknown_database() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let message = |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().to_string();

    let e = proxy.connect("app", "wrong", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    assert_eq!(
        message(&e),
        "password authentication failed for user \"app\""
    );

    let e = proxy.connect("app_md5", "wrong", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));

    let e = proxy.connect("nobody", "app", "app").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    assert_eq!(
        message(&e),
        "password authentication failed for user \"nobody\"",
        "unknown users get the same error as a wrong password"
    );

    let e = proxy.connect("app", "app", "nodb").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
    assert_eq!(message(&e), "database \"nodb\" does not exist");

    // the proxy still serves valid logins afterwards
    let c = proxy.app("app").await;
    c.simple_query("select 1").await.unwrap();
}
