//! A session on the admin console (see [`crate::admin`]): who may log in, and the simple
//! query protocol loop that answers its commands. `proxy.admin_user` logs in with
//! `proxy.admin_password` (SCRAM) and may run every command; a user of `proxy.stats_users`
//! logs in with its own password and may run SHOW only; anyone else is refused (28000).

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::handshake::{authenticate, scram_exchange};
use crate::admin::{self, Command, Show};
use crate::protocol::{self, query_text, split_frame, sqlstate, PgError, TxStatus};
use crate::state::ProxyState;

mod act;

/// Largest console message accepted.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Whether `database` is the admin console (a configured database of that name wins).
pub(super) fn is_console(state: &ProxyState, database: &str) -> bool {
    admin::CONSOLE_DATABASES.contains(&database)
        && !state.config.databases.iter().any(|d| d.name == database)
}

/// A client logged in to the console.
#[derive(Debug)]
pub struct ConsoleLogin {
    pub user: String,
    /// The admin user: every command; else (a stats user) SHOW only.
    pub may_act: bool,
}

/// Authenticates `name` for the console.
pub(super) async fn log_in(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    inbuf: &mut BytesMut,
    state: &ProxyState,
    name: &str,
) -> Result<ConsoleLogin, PgError> {
    let proxy = &state.config.proxy;
    if name == proxy.admin_user {
        if state.admin_scram.is_none() {
            tracing::info!(
                user = name,
                "admin console login refused: proxy.admin_password is not set"
            );
        }
        scram_exchange(rd, wr, inbuf, name, state.admin_scram.clone()).await?;
        return Ok(ConsoleLogin {
            user: name.to_string(),
            may_act: true,
        });
    }
    authenticate(rd, wr, inbuf, state, name).await?;
    if proxy.stats_users.iter().any(|u| u == name) {
        return Ok(ConsoleLogin {
            user: name.to_string(),
            may_act: false,
        });
    }
    Err(PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        format!("user \"{name}\" may not use the admin console"),
    )
    .with_hint("log in as proxy.admin_user, or list the user in proxy.stats_users"))
}

/// Runs a console session until the client leaves (or the proxy shuts down).
pub(super) async fn run(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut inbuf: BytesMut,
    state: &ProxyState,
    login: ConsoleLogin,
) {
    tracing::info!(user = %login.user, "admin console login");
    let _counted = Counted::new(&state.consoles);
    let mut out = BytesMut::new();
    greet(&mut out);
    loop {
        let mut close = false;
        loop {
            match split_frame(&mut inbuf, MAX_MESSAGE) {
                Ok(Some(f)) if f.tag == b'Q' => {
                    answer(state, &login, query_text(f.body()), &mut out).await;
                    protocol::ready_for_query(&mut out, TxStatus::Idle);
                }
                Ok(Some(f)) if f.tag == b'X' => return,
                Ok(Some(_)) => {
                    fatal(
                        &mut out,
                        "the admin console takes simple Query messages only",
                    );
                    close = true;
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    fatal(&mut out, &e.to_string());
                    close = true;
                    break;
                }
            }
        }
        if wr.write_all(&out).await.is_err() || close {
            return;
        }
        out.clear();
        let shutdown = state.shutdown.notified();
        tokio::pin!(shutdown);
        shutdown.as_mut().enable();
        if state.shutdown.rung() {
            let e = PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "the proxy is shutting down");
            e.encode(&mut out);
            let _ = wr.write_all(&out).await;
            return;
        }
        tokio::select! {
            r = rd.read_buf(&mut inbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
            }
            () = &mut shutdown => {}
        }
    }
}

/// What a console login gets before its first command.
fn greet(out: &mut BytesMut) {
    protocol::auth_ok(out);
    let version = format!("15.0 (Shardgate {})", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        protocol::parameter_status(out, k, v);
    }
    // The console runs nothing a cancel could stop: this key matches no client.
    protocol::backend_key_data(out, 0, rand::random());
    protocol::ready_for_query(out, TxStatus::Idle);
}

fn fatal(out: &mut BytesMut, why: &str) {
    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, why.to_string()).encode(out);
}

/// Answers console query `sql` (without its ReadyForQuery); the first error ends it.
async fn answer(state: &ProxyState, login: &ConsoleLogin, sql: &str, out: &mut BytesMut) {
    for command in admin::parse(sql) {
        let error = match command {
            Command::Empty => {
                out.put_u8(b'I');
                out.put_i32(4);
                continue;
            }
            Command::Show(Show::Help) => {
                for line in admin::help_lines() {
                    notice(out, line);
                }
                protocol::command_complete(out, "SHOW");
                continue;
            }
            Command::Show(show) => {
                admin::show::table(state, show).encode(out);
                continue;
            }
            Command::NotYet(name) => PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("SHOW {name} is not available in this version of Shardgate"),
            )
            .with_hint("SHOW HELP lists what the console answers"),
            Command::Act(name, _) if !login.may_act => PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("{name} is reserved for the admin user; stats users may run SHOW only"),
            ),
            Command::Act(name, arg) => match act::act(state, name, arg.as_deref()).await {
                Ok(tag) => {
                    protocol::command_complete(out, tag);
                    continue;
                }
                Err(e) => e,
            },
            Command::Unknown(text) => {
                PgError::error(sqlstate::SYNTAX_ERROR, format!("invalid command '{text}'"))
                    .with_hint(format!("valid commands: {}", admin::valid_commands()))
            }
        };
        error.encode(out);
        return;
    }
}

/// A NOTICE with `message`.
fn notice(out: &mut BytesMut, message: String) {
    let start = out.len();
    PgError {
        severity: "NOTICE",
        code: sqlstate::SUCCESSFUL_COMPLETION,
        message,
        hint: None,
    }
    .encode(out);
    out[start] = b'N';
}

/// One more in a count while it lives.
struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Counted<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
