//! ParameterStatus through the proxy carries the server's values, as a direct connection would:
//! at login with the client's startup settings applied (`client_encoding`, `options=-c ...`),
//! and afterwards when the client changes or resets a setting. Drivers read dates, time zones
//! and text by these values.

use std::time::Duration;

use integration_tests::raw::{error_code, read_until};
use integration_tests::{config_text, Proxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        for s in [k, v] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend(body);
    m
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    msg(b'Q', &b)
}

/// The ParameterStatus (name, value) pairs among `msgs`, in order.
fn statuses(msgs: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, body)| {
            let mut parts = body.split(|&b| b == 0);
            let k = String::from_utf8_lossy(parts.next()?).into_owned();
            let v = String::from_utf8_lossy(parts.next()?).into_owned();
            Some((k, v))
        })
        .collect()
}

/// The last value reported for `name` among `msgs`.
fn last_status(msgs: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    statuses(msgs)
        .into_iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Text values of the first DataRow among `msgs`.
fn first_row(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            at += 4;
            let v = String::from_utf8_lossy(&body[at..at + len]).into_owned();
            at += len;
            v
        })
        .collect()
}

/// Logs in as `trusty` to `app` with extra startup parameters; everything up to
/// ReadyForQuery or ErrorResponse.
async fn login(port: u16, extra: &[(&str, &str)]) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    login_to(port, "app", extra).await
}

async fn login_to(port: u16, db: &str, extra: &[(&str, &str)]) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut params = vec![("user", "trusty"), ("database", db)];
    params.extend_from_slice(extra);
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup(&params)).await.unwrap();
    let msgs = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, b"ZE"))
        .await
        .expect("login answered within 10 s");
    (s, msgs)
}

async fn logged_in(port: u16, extra: &[(&str, &str)]) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    let (s, msgs) = login(port, extra).await;
    assert_eq!(
        msgs.last().map(|m| m.0),
        Some(b'Z'),
        "login failed: {msgs:?}"
    );
    (s, msgs)
}

async fn run(s: &mut TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&query(sql)).await.unwrap();
    let msgs = tokio::time::timeout(Duration::from_secs(10), read_until(s, b"Z"))
        .await
        .expect("ReadyForQuery within 10 s");
    assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "closed: {msgs:?}");
    assert!(error_code(&msgs).is_none(), "{sql}: {msgs:?}");
    msgs
}

const OPTIONS: &str = "-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reports_the_servers_values_of_startup_settings() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let settings = [("client_encoding", "utf8"), ("options", OPTIONS)];
    // twice: the second login uses what the first one learned
    for round in 0..2 {
        let (mut s, msgs) = logged_in(proxy.port, &settings).await;
        let reported = statuses(&msgs);
        let value = |name: &str| {
            let v: Vec<&String> = reported
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(
                v.len(),
                1,
                "round {round}: one {name} at login: {reported:?}"
            );
            v[0].clone()
        };
        assert_eq!(value("client_encoding"), "UTF8", "round {round}");
        assert_eq!(value("DateStyle"), "SQL, DMY", "round {round}");
        assert_eq!(value("TimeZone"), "Asia/Tokyo", "round {round}");
        assert_eq!(value("server_encoding"), "UTF8", "round {round}");
        // and the server really works with them
        let row = first_row(
            &run(
                &mut s,
                "select '2024-03-05'::date::text, current_setting('TimeZone'), \
                 current_setting('client_encoding')",
            )
            .await,
        );
        assert_eq!(row, ["05/03/2024", "Asia/Tokyo", "UTF8"], "round {round}");
    }

    // Another set of settings is learned on its own; what it does not set keeps the server's
    // default.
    let (_s, plain) = logged_in(proxy.port, &[]).await;
    let default_tz = last_status(&plain, "TimeZone").expect("TimeZone at login");
    assert_ne!(default_tz, "Asia/Tokyo");
    let (_s, german) = logged_in(proxy.port, &[("options", "-c datestyle=german")]).await;
    assert_eq!(
        last_status(&german, "DateStyle").as_deref(),
        Some("German, DMY")
    );
    assert_eq!(
        last_status(&german, "TimeZone").as_deref(),
        Some(default_tz.as_str())
    );

    // tokio-postgres reads the same values as on a direct connection with the same options.
    let direct = {
        let cfg = integration_tests::cluster().addr();
        let (host, port) = cfg.rsplit_once(':').unwrap();
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port.parse().unwrap())
            .user("app")
            .password("app")
            .dbname("app")
            .options(OPTIONS);
        c
    };
    let mut via: tokio_postgres::Config = proxy.conn_str("app", "app", "app").parse().unwrap();
    via.options(OPTIONS);
    let (_dc, dconn) = direct.connect(NoTls).await.unwrap();
    let (_pc, pconn) = via.connect(NoTls).await.unwrap();
    for name in ["client_encoding", "DateStyle", "TimeZone", "IntervalStyle"] {
        assert_eq!(
            pconn.parameter(name),
            dconn.parameter(name),
            "{name} through the proxy and direct"
        );
    }
    assert_eq!(pconn.parameter("DateStyle"), Some("SQL, DMY"));
    assert_eq!(pconn.parameter("TimeZone"), Some("Asia/Tokyo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_after_set_and_reset_carries_the_servers_values() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    let (mut s, _) = logged_in(proxy.port, &[("options", OPTIONS)]).await;
    // a bystander keeps the pool moving, so the client changes server connections
    let bystander = proxy.connect("trusty", "", "app").await.unwrap();

    let msgs = run(&mut s, "SET DateStyle = 'german'").await;
    assert_eq!(
        last_status(&msgs, "DateStyle").as_deref(),
        Some("German, DMY"),
        "{msgs:?}"
    );
    let msgs = run(&mut s, "SET IntervalStyle = 'SQL_STANDARD'").await;
    assert_eq!(
        last_status(&msgs, "IntervalStyle").as_deref(),
        Some("sql_standard"),
        "the server's spelling, not the client's: {msgs:?}"
    );
    bystander.batch_execute("begin; select 1").await.unwrap();
    let row = first_row(&run(&mut s, "select current_setting('DateStyle')").await);
    assert_eq!(row, ["German, DMY"]);
    bystander.batch_execute("commit").await.unwrap();

    // RESET goes back to the startup value; what the client was last told must match what
    // the server now uses.
    // (the proxy restores it after the server's own RESET, so the last word may come just
    // after the RESET's ReadyForQuery)
    let mut msgs = run(&mut s, "RESET DateStyle").await;
    let next = run(&mut s, "select current_setting('DateStyle')").await;
    let shown = first_row(&next);
    msgs.extend(next);
    assert_eq!(shown, ["SQL, DMY"], "RESET restores the startup value");
    assert_eq!(
        last_status(&msgs, "DateStyle").as_deref(),
        Some("SQL, DMY"),
        "ParameterStatus after RESET: {msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_setting_the_server_rejects_fails_the_login() {
    let proxy = Proxy::start(&config_text("", "size = 1"));
    let (_s, msgs) = login(proxy.port, &[("options", "-c DateStyle=nonsense")]).await;
    assert_eq!(
        error_code(&msgs).as_deref(),
        Some("22023"),
        "as Postgres: invalid value for parameter: {msgs:?}"
    );
    let (_s, msgs) = login(proxy.port, &[("options", "-c no_such_setting=1")]).await;
    assert_eq!(error_code(&msgs).as_deref(), Some("42704"), "{msgs:?}");
    // the pool (one connection) is fine afterwards
    let (mut s, _) = logged_in(proxy.port, &[("options", OPTIONS)]).await;
    let row = first_row(&run(&mut s, "select current_setting('TimeZone')").await);
    assert_eq!(row, ["Asia/Tokyo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_clients_setting_does_not_shape_the_next_clients_startup_value() {
    // one server connection: B gets the connection A changed
    let proxy = Proxy::start(&config_text("", "size = 1"));
    let (mut a, _) = logged_in(proxy.port, &[]).await;
    run(&mut a, "SET DateStyle = 'German'").await;
    // As on a direct login, `DateStyle=ISO` means "ISO, MDY" (the server's default order),
    // not the order A left on the connection.
    let (mut b, msgs) = logged_in(proxy.port, &[("options", "-c DateStyle=ISO")]).await;
    assert_eq!(
        last_status(&msgs, "DateStyle").as_deref(),
        Some("ISO, MDY"),
        "{msgs:?}"
    );
    let row = first_row(&run(&mut b, "select current_setting('DateStyle')").await);
    assert_eq!(row, ["ISO, MDY"]);
    let row = first_row(&run(&mut a, "select current_setting('DateStyle')").await);
    assert_eq!(row, ["German, DMY"], "A keeps its own setting");
    let row = first_row(&run(&mut b, "select current_setting('DateStyle')").await);
    assert_eq!(row, ["ISO, MDY"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_mode_reports_and_applies_the_startup_settings() {
    let proxy = Proxy::start(&config_text("", "size = 2"));
    for db in ["app", "app_session", "app_statement"] {
        let (mut s, msgs) = login_to(
            proxy.port,
            db,
            &[("client_encoding", "utf8"), ("options", OPTIONS)],
        )
        .await;
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{db}: {msgs:?}");
        assert_eq!(
            last_status(&msgs, "client_encoding").as_deref(),
            Some("UTF8"),
            "{db}"
        );
        assert_eq!(
            last_status(&msgs, "DateStyle").as_deref(),
            Some("SQL, DMY"),
            "{db}"
        );
        assert_eq!(
            last_status(&msgs, "TimeZone").as_deref(),
            Some("Asia/Tokyo"),
            "{db}"
        );
        let row = first_row(
            &run(
                &mut s,
                "select current_setting('DateStyle'), current_setting('TimeZone')",
            )
            .await,
        );
        assert_eq!(row, ["SQL, DMY", "Asia/Tokyo"], "{db}");
    }
}
