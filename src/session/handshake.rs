//! Connection start: refuse TLS/GSS (for now), serve CancelRequest, read the StartupMessage,
//! authenticate the client (SCRAM-SHA-256, md5 or trust) and greet it like a Postgres server.

use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::auth::{md5_verify, ScramServer, ScramVerifier, SCRAM_MECHANISM};
use crate::backend::ServerConn;
use crate::config::{AuthMethod, PoolMode};
use crate::pool::{ServerParams, ServerPool, ShardPools, StartupParams};
use crate::protocol::{
    self, decode_password, split_frame, split_startup, sqlstate, PasswordKind, PasswordMessage,
    PgError, StartupPacket, TxStatus,
};
use crate::state::{Cancel, ProxyState};

use super::client_state::{apply_sql, read_back_sql, ClientState};

/// Distinct startup-settings sets whose ParameterStatus values a pool remembers.
const STARTUP_PARAMS_CACHE: usize = 256;

/// A logged-in client.
#[derive(Debug)]
pub struct Login {
    /// The database's shards and their pools for this user.
    pub shards: Arc<Vec<ShardPools>>,
    /// Pool mode in force.
    pub pool_mode: PoolMode,
    /// Proxy-issued BackendKeyData pid.
    pub cancel_pid: i32,
    /// Where CancelRequests for this client go, and the signal each one raises.
    pub cancel: Arc<Cancel>,
    /// The settings of the startup packet (its parameters and `options`, lowercase names).
    pub startup: Arc<BTreeMap<String, String>>,
    /// Reads may go to replicas: transaction or statement mode, `routing.read_write_split`
    /// on, and some shard has more than one server.
    pub split: bool,
    /// The shard map when the database has several shards (transaction and statement modes).
    pub shard_map: Option<Arc<crate::shard::route::ShardMap>>,
    /// The database's counters for `SHOW STATS`.
    pub stats: Arc<crate::admin::stats::DbStats>,
}

impl Login {
    /// User name (one shared copy, see [`ProxyState::name`], kept with the cancel state).
    pub fn user(&self) -> &str {
        &self.cancel.user
    }

    /// Logical database (one shared copy).
    pub fn database(&self) -> &str {
        &self.cancel.database
    }
}

/// Who logged in: a client of a database, or of the admin console.
#[derive(Debug)]
pub(super) enum Arrival {
    Client(Login),
    Console(super::console::ConsoleLogin),
}

/// The first meaningful packet.
pub(super) enum First {
    Startup(BTreeMap<String, String>),
    Cancel { pid: i32, secret: Vec<u8> },
}

fn protocol_violation(msg: impl Into<String>) -> PgError {
    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, msg)
}

async fn fill(rd: &mut OwnedReadHalf, inbuf: &mut BytesMut) -> Result<(), PgError> {
    match rd.read_buf(inbuf).await {
        Ok(0) | Err(_) => Err(protocol_violation("connection closed during startup")),
        Ok(_) => Ok(()),
    }
}

/// Reads packets until a StartupMessage or CancelRequest, answering SSL/GSS requests with 'N'.
pub(super) async fn read_until_startup(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
) -> Result<First, PgError> {
    loop {
        let packet = split_startup(inbuf)
            .map_err(|e| protocol_violation(format!("invalid startup packet: {e}")))?;
        match packet {
            None => fill(rd, inbuf).await?,
            Some(StartupPacket::Ssl | StartupPacket::GssEnc) => {
                wr.write_all(b"N")
                    .await
                    .map_err(|_| protocol_violation("connection closed during startup"))?;
            }
            Some(StartupPacket::Cancel { pid, secret }) => {
                return Ok(First::Cancel { pid, secret })
            }
            Some(StartupPacket::Startup { params, .. }) => return Ok(First::Startup(params)),
            Some(StartupPacket::Unsupported(code)) => {
                return Err(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        code >> 16,
                        code & 0xffff
                    ),
                ))
            }
        }
    }
}

async fn read_password(
    rd: &mut OwnedReadHalf,
    inbuf: &mut BytesMut,
    kind: PasswordKind,
) -> Result<PasswordMessage, PgError> {
    loop {
        let frame = split_frame(inbuf, protocol::MAX_STARTUP_LEN)
            .map_err(|e| protocol_violation(format!("invalid authentication message: {e}")))?;
        match frame {
            None => fill(rd, inbuf).await?,
            Some(f) if f.tag == b'p' => {
                return decode_password(&f.bytes, kind)
                    .ok_or_else(|| protocol_violation("malformed authentication message"))
            }
            Some(f) => {
                return Err(protocol_violation(format!(
                    "expected a password message, got message type '{}'",
                    f.tag as char
                )))
            }
        }
    }
}

pub(super) async fn send(wr: &mut OwnedWriteHalf, buf: &BytesMut) -> Result<(), PgError> {
    wr.write_all(buf)
        .await
        .map_err(|_| protocol_violation("connection closed during authentication"))
}

/// Authenticates `name`. Unknown users go through the same exchange (with a dummy verifier) and
/// get the same error as a wrong password, so user names cannot be probed.
pub(super) async fn authenticate(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    state: &ProxyState,
    name: &str,
) -> Result<(), PgError> {
    let user = state.users.get(name);
    let failed = || {
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{name}\""),
        )
    };
    let method = user.map_or(AuthMethod::ScramSha256, |u| u.config.auth_method);
    let mut out = BytesMut::new();
    match method {
        AuthMethod::Trust => user.map(|_| ()).ok_or_else(failed),
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            protocol::auth_md5(&mut out, salt);
            send(wr, &out).await?;
            let PasswordMessage::Password(resp) =
                read_password(rd, inbuf, PasswordKind::Password).await?
            else {
                return Err(failed());
            };
            match user {
                Some(u) if md5_verify(&u.secret, name, salt, resp.as_bytes()) => Ok(()),
                _ => Err(failed()),
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = user.and_then(|u| u.scram.clone());
            scram_exchange(rd, wr, inbuf, name, verifier).await
        }
    }
}

/// Authenticates `name` by SCRAM-SHA-256 against `verifier`; with none (an unknown user) the
/// exchange runs with a dummy verifier and fails like a wrong password.
pub(super) async fn scram_exchange(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    name: &str,
    verifier: Option<ScramVerifier>,
) -> Result<(), PgError> {
    let failed = || {
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{name}\""),
        )
    };
    let known = verifier.is_some();
    let mut scram = ScramServer::new(verifier.unwrap_or_else(|| ScramVerifier::dummy(name)));
    let mut out = BytesMut::new();
    protocol::auth_sasl(&mut out, &[SCRAM_MECHANISM]);
    send(wr, &out).await?;
    let PasswordMessage::SaslInitial(mechanism, data) =
        read_password(rd, inbuf, PasswordKind::SaslInitial).await?
    else {
        return Err(failed());
    };
    if mechanism != SCRAM_MECHANISM {
        return Err(protocol_violation(format!(
            "SASL mechanism \"{mechanism}\" is not supported; use {SCRAM_MECHANISM}"
        )));
    }
    let first = scram
        .handle_client_first(&data)
        .map_err(|e| protocol_violation(format!("malformed SCRAM message: {e}")))?;
    out.clear();
    protocol::auth_sasl_continue(&mut out, first);
    send(wr, &out).await?;
    let PasswordMessage::Sasl(data) = read_password(rd, inbuf, PasswordKind::Sasl).await? else {
        return Err(failed());
    };
    let last = scram.handle_client_final(&data).map_err(|_| failed())?;
    if !known {
        return Err(failed());
    }
    out.clear();
    protocol::auth_sasl_final(&mut out, last);
    send(wr, &out).await
}

/// Forwards a CancelRequest to the server connections the client's query runs on, if any.
async fn serve_cancel(state: &ProxyState, pid: i32, secret: &[u8]) {
    let Some(cancel) = state.cancels.find(pid, secret) else {
        tracing::debug!("cancel request with an unknown key ignored");
        return;
    };
    cancel.signal.raise();
    let targets = cancel
        .slot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    cancel_all(&targets).await;
}

/// Sends a CancelRequest to every one of `targets` at once (every shard of a fan-out).
pub(crate) async fn cancel_all(targets: &[crate::state::CancelTarget]) {
    let sent = targets.iter().map(|t| async move {
        if let Err(e) = ServerConn::cancel(&t.addr, t.pid, &t.secret).await {
            tracing::warn!(server = %t.addr, error = %e, "forwarding cancel request failed");
        }
    });
    futures_util::future::join_all(sent).await;
}

/// The server's values of its reported parameters once the client's startup settings
/// (`client_encoding`, `DateStyle`, `options=-c ...`, ...) are applied: what a direct connection
/// would report. Learned on a pooled connection of `pool` (which keeps the settings, recorded as
/// its `settings`) and remembered per distinct set. A setting the server rejects fails the login
/// with the server's error, as it would on a direct connection.
async fn startup_params(
    pool: &ServerPool,
    startup: &Arc<BTreeMap<String, String>>,
    base: &ServerParams,
) -> Result<Arc<StartupParams>, PgError> {
    if let Some(p) = lock(&pool.startup_params).get(&**startup) {
        return Ok(p.clone());
    }
    let cannot = |e: &dyn std::fmt::Display| {
        PgError::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("could not connect to the server: {e}"),
        )
    };
    let mut conn = pool.get().await.map_err(|e| cannot(&e))?;
    let mut notices = Vec::new();
    if let Some(sql) = apply_sql(startup, &conn.settings) {
        let mut q = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(&sql, &mut q);
        let (frames, status) = match conn.exchange(&q).await {
            Ok(r) => r,
            Err(e) => {
                conn.broken = true;
                return Err(cannot(&e));
            }
        };
        if let Some(f) = frames.iter().find(|f| f.tag == b'E') {
            // Nothing of the failed query stays applied, but the connection is not reused.
            conn.broken = true;
            let (code, message) = protocol::error_fields(f.body());
            return Err(PgError::fatal(setting_sqlstate(&code), message));
        }
        if status != crate::protocol::TxStatus::Idle {
            conn.broken = true;
            return Err(cannot(&"settings left a transaction open"));
        }
        // What the server said about the settings (an identifier truncated, ...), as it
        // would during a direct login.
        notices = frames
            .iter()
            .filter(|f| f.tag == b'N')
            .map(|f| f.bytes.clone())
            .collect();
    }
    conn.settings = startup.clone();
    let names: Vec<&String> = base.iter().map(|(k, _)| k).collect();
    let values = match conn.query_row(&read_back_sql(&names)).await {
        Ok(v) if v.len() == names.len() => v,
        r => {
            conn.broken = true;
            let e = r
                .err()
                .map_or_else(|| "short row".to_string(), |e| e.to_string());
            return Err(cannot(&e));
        }
    };
    drop(conn);
    let mut reported: Vec<(String, String)> = base
        .iter()
        .zip(values)
        .map(|((k, _), v)| (k.clone(), v))
        .collect();
    if let Some(a) = startup.get("application_name") {
        if !reported.iter().any(|(k, _)| k == "application_name") {
            reported.push(("application_name".into(), a.clone()));
        }
    }
    let learned = Arc::new(StartupParams {
        reported,
        notices,
        settings: startup.clone(),
    });
    let mut cache = lock(&pool.startup_params);
    if cache.len() >= STARTUP_PARAMS_CACHE {
        cache.clear();
    }
    cache.insert(BTreeMap::clone(startup), learned.clone());
    Ok(learned)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The SQLSTATE to report for a startup setting the server refused.
fn setting_sqlstate(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        sqlstate::INVALID_PARAMETER_VALUE,     // invalid_parameter_value
        sqlstate::UNDEFINED_OBJECT, // undefined_object (unrecognized configuration parameter)
        sqlstate::CANT_CHANGE_RUNTIME_PARAM, // cant_change_runtime_param
        sqlstate::INSUFFICIENT_PRIVILEGE, // insufficient_privilege
        sqlstate::INVALID_TEXT_REPRESENTATION, // invalid_text_representation
        sqlstate::FEATURE_NOT_SUPPORTED, // feature_not_supported
        sqlstate::INVALID_CATALOG,  // invalid_catalog_name
        sqlstate::INVALID_SCHEMA_NAME, // invalid_schema_name
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == code)
        .unwrap_or(sqlstate::INVALID_PARAMETER_VALUE)
}

/// Runs the whole handshake. `Ok(None)` means the connection was a CancelRequest and is done.
pub(super) async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    state: &ProxyState,
) -> Result<Option<Arrival>, PgError> {
    let timeout = Duration::from_millis(state.config.proxy.client_login_timeout_ms);
    match tokio::time::timeout(timeout, handshake_inner(rd, wr, inbuf, state)).await {
        Ok(r) => r,
        Err(_) => Err(protocol_violation("timed out waiting for login")),
    }
}

/// The reported parameters of the first server of `shard` that answers (its primary first; a
/// replica's are the same), and that server's pool.
async fn first_server_params<'s>(
    shard: &'s ShardPools,
    database: &str,
) -> Result<(ServerParams, &'s ServerPool), PgError> {
    let mut last = String::from("no server");
    for pool in shard.primary().into_iter().chain(shard.servers.iter()) {
        match pool.server_params().await {
            Ok(p) => return Ok((p, pool)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(PgError::fatal(
        sqlstate::CANNOT_CONNECT,
        format!("could not connect to the server of database \"{database}\": {last}"),
    ))
}

/// The configured database a client logs in to, unless the console's `DISABLE` closed it.
fn open_database<'a>(
    state: &'a ProxyState,
    database: &str,
) -> Result<&'a crate::config::DatabaseConfig, PgError> {
    let db = (state.config.databases.iter())
        .find(|d| d.name == database)
        .ok_or_else(|| {
            PgError::fatal(
                sqlstate::INVALID_CATALOG,
                format!("database \"{database}\" does not exist"),
            )
        })?;
    if state.controls.disabled(database) {
        return Err(PgError::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("database \"{database}\" does not allow connections"),
        )
        .with_hint("an operator ran DISABLE on the admin console; retry after ENABLE"));
    }
    Ok(db)
}

async fn handshake_inner(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    state: &ProxyState,
) -> Result<Option<Arrival>, PgError> {
    let params = match read_until_startup(rd, wr, inbuf).await? {
        First::Cancel { pid, secret } => {
            serve_cancel(state, pid, &secret).await;
            return Ok(None);
        }
        First::Startup(p) => p,
    };
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| {
            PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| user.clone());
    if super::console::is_console(state, &database) {
        let login = super::console::log_in(rd, wr, inbuf, state, &user).await?;
        return Ok(Some(Arrival::Console(login)));
    }
    authenticate(rd, wr, inbuf, state, &user).await?;
    let db = open_database(state, &database)?;
    let pool_mode = state.config.pool_mode_for(db);
    let shards = state
        .registry
        .get(&user, &database)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            PgError::fatal(
                sqlstate::INVALID_CATALOG,
                format!("database \"{database}\" has no servers"),
            )
        })?;
    let (server_params, params_pool) = first_server_params(&shards[0], &database).await?;
    let startup = ClientState::from_startup(&params).startup;
    let learned = match startup.is_empty() {
        false => startup_params(params_pool, &startup, &server_params).await?,
        true => Arc::new(StartupParams {
            reported: server_params.to_vec(),
            notices: Vec::new(),
            settings: startup.clone(),
        }),
    };
    let startup = learned.settings.clone();
    let split = pool_mode != PoolMode::Session
        && state.config.routing.read_write_split
        && shards.iter().any(|s| s.has_replicas());
    let key = state.cancels.register(
        state.name(&user),
        state.name(&database),
        rd.peer_addr().ok(),
    );
    let (cancel_pid, secret) = (key.pid, key.secret);
    let mut out = BytesMut::with_capacity(512);
    protocol::auth_ok(&mut out);
    // The client sees the server's values of its reported parameters with the client's own
    // startup settings applied (the proxy applies those on every server connection it uses).
    for n in &learned.notices {
        out.extend_from_slice(n);
    }
    for (k, v) in &learned.reported {
        protocol::parameter_status(&mut out, k, v);
    }
    protocol::backend_key_data(&mut out, cancel_pid, secret);
    protocol::ready_for_query(&mut out, TxStatus::Idle);
    if let Err(e) = send(wr, &out).await {
        state.cancels.unregister(cancel_pid);
        return Err(e);
    }
    let shard_map = state
        .shard_maps
        .get(&database)
        .filter(|_| pool_mode != PoolMode::Session)
        .cloned();
    Ok(Some(Arrival::Client(Login {
        shards,
        pool_mode,
        cancel_pid,
        cancel: key.cancel,
        startup,
        split,
        shard_map,
        stats: state.db_stats(&database),
    })))
}
