//! Authentication: SCRAM-SHA-256 and md5 on both sides of the proxy, trust, wrong passwords,
//! unknown users and databases; towards servers: no cleartext password unless allowed, and a
//! SCRAM exchange the server does not finish is refused (a fake server that speaks only the
//! startup and authentication messages plays the dishonest server).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{config_text, direct_superuser, split_config, sqlstate, wait_until, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

// ---------------------------------------------------------------------------------------------
// towards servers

/// How the fake server authenticates its clients.
#[derive(Clone, Copy, Debug)]
enum FakeAuth {
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// SCRAM-SHA-256 up to SASLContinue, then AuthenticationOk without SASLFinal.
    ScramWithoutFinal,
}

/// A server that speaks only startup and authentication: it logs what each connection did
/// (`password:<cleartext>`, `ok-sent`, `after-ok:<tag>`, `closed`) and never runs a query.
async fn fake_server(auth: FakeAuth) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log2.clone();
            tokio::spawn(async move {
                let r = fake_session(s, auth, &log).await;
                log.lock().unwrap().push(format!("closed ({r:?})"));
            });
        }
    });
    (addr, log)
}

fn auth_msg(code: i32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&(8 + data.len() as i32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(data);
    m
}

async fn read_msg(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut hdr = [0u8; 5];
    s.read_exact(&mut hdr).await?;
    let len = i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]).max(4) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok((hdr[0], body))
}

async fn fake_session(
    mut s: TcpStream,
    auth: FakeAuth,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // startup (after an SSLRequest, answered 'N')
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; (i32::from_be_bytes(len).max(4) - 4) as usize];
        s.read_exact(&mut body).await?;
        if body.starts_with(&80877103i32.to_be_bytes()) {
            s.write_all(b"N").await?;
            continue;
        }
        break;
    }
    match auth {
        FakeAuth::Cleartext => {
            s.write_all(&auth_msg(3, b"")).await?;
            let (tag, body) = read_msg(&mut s).await?;
            let pw = body.split(|&b| b == 0).next().unwrap_or_default();
            log.lock().unwrap().push(format!(
                "password:{}",
                if tag == b'p' {
                    String::from_utf8_lossy(pw).into_owned()
                } else {
                    "?".into()
                }
            ));
        }
        FakeAuth::ScramWithoutFinal => {
            s.write_all(&auth_msg(10, b"SCRAM-SHA-256\0\0")).await?;
            let (_, body) = read_msg(&mut s).await?;
            // mechanism NUL, length, client-first-message "n,,n=,r=<nonce>"
            let first = &body[body.iter().position(|&b| b == 0).unwrap_or(0) + 5..];
            let first = String::from_utf8_lossy(first).into_owned();
            let nonce = first.rsplit("r=").next().unwrap_or_default().to_string();
            let server_first = format!("r={nonce}fake,s=c2FsdHNhbHRzYWx0,i=4096");
            s.write_all(&auth_msg(11, server_first.as_bytes())).await?;
            let _client_final = read_msg(&mut s).await?;
        }
    }
    // AuthenticationOk, BackendKeyData, ReadyForQuery: a server that claims success
    let mut ok = auth_msg(0, b"");
    ok.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02Z\0\0\0\x05I");
    s.write_all(&ok).await?;
    log.lock().unwrap().push("ok-sent".into());
    let (tag, _) = read_msg(&mut s).await?;
    log.lock()
        .unwrap()
        .push(format!("after-ok:{}", tag as char));
    Ok(())
}

fn fake_config(addr: &str, pool: &str) -> String {
    split_config(
        &format!("primary = \"{addr}\""),
        "",
        &format!("connect_timeout_ms = 1000\ncheckout_timeout_ms = 1500\n{pool}"),
    )
}

/// Logs in through the proxy and runs a query; the error text if either fails.
async fn try_query(proxy: &Proxy) -> Result<(), String> {
    let text = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string())
    };
    let c = proxy.connect("app", "app", "app").await.map_err(text)?;
    c.simple_query("select 1").await.map_err(text)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cleartext_password_to_a_server_unless_allowed() {
    let (addr, log) = fake_server(FakeAuth::Cleartext).await;
    let proxy = Proxy::start(&fake_config(&addr, ""));
    // (the client sees a checkout timeout: the pool reports no connect error yet)
    try_query(&proxy)
        .await
        .expect_err("the fake server runs no query");
    // the pool's connection and the health checker's both hung up without a password
    let closed = wait_until(Duration::from_secs(10), || async {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("closed"))
            .count()
            >= 1
    })
    .await;
    assert!(closed, "{:?}", log.lock().unwrap());
    let entries = log.lock().unwrap().clone();
    assert!(
        !entries.iter().any(|l| l.starts_with("password:")),
        "a password was sent in cleartext: {entries:?}"
    );
    proxy.stop();

    // allowed: the server gets it
    let (addr, log) = fake_server(FakeAuth::Cleartext).await;
    let proxy = Proxy::start(&fake_config(
        &addr,
        "allow_cleartext_server_password = true",
    ));
    let _ = try_query(&proxy).await;
    let got = wait_until(Duration::from_secs(10), || async {
        log.lock().unwrap().iter().any(|l| l == "password:app")
    })
    .await;
    assert!(got, "{:?}", log.lock().unwrap());
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_the_scram_final_message_is_refused() {
    let (addr, log) = fake_server(FakeAuth::ScramWithoutFinal).await;
    let proxy = Proxy::start(&fake_config(&addr, ""));
    try_query(&proxy).await.expect_err("the server is refused");
    // every connection that got the AuthenticationOk has ended
    let refused = wait_until(Duration::from_secs(10), || async {
        let l = log.lock().unwrap();
        let oks = l.iter().filter(|l| *l == "ok-sent").count();
        oks >= 1 && l.iter().filter(|l| l.starts_with("closed")).count() >= oks
    })
    .await;
    assert!(refused, "{:?}", log.lock().unwrap());
    let entries = log.lock().unwrap().clone();
    assert!(
        !entries.iter().any(|l| l.starts_with("after-ok:")),
        "the proxy used a server that never proved it knows the password: {entries:?}"
    );
    proxy.stop();
}
