//! The console's acting commands, with PgBouncer's semantics where PgBouncer has the command:
//! `PAUSE [db]` (waits for the transactions in flight, then holds new ones), `RESUME [db]`,
//! `DISABLE db` / `ENABLE db` (new logins), `KILL [db]` (drops its clients and holds new
//! transactions as a pause), `KILL_CLIENT ptr`, `RECONNECT [db]`, `BAN server` / `UNBAN server`
//! and `SHUTDOWN`. Each answers with its command tag, or the error that says why not.

use std::time::Duration;

use crate::protocol::{sqlstate, PgError};
use crate::state::{Cancel, ProxyState};

/// How often a `PAUSE` looks whether the transactions in flight have finished.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// Runs acting command `name` with argument `arg`; `Ok`: its command tag.
pub(super) async fn act(
    state: &ProxyState,
    name: &'static str,
    arg: Option<&str>,
) -> Result<&'static str, PgError> {
    let controls = &state.controls;
    match name {
        "PAUSE" => {
            controls.pause(arg)?;
            drained(state, arg).await?;
        }
        "RESUME" => {
            if !controls.resume(arg)? {
                return Err(PgError::error(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "nothing is paused",
                ));
            }
        }
        "DISABLE" | "ENABLE" => controls.set_disabled(arg, name == "DISABLE")?,
        "KILL" => {
            controls.pause(arg)?;
            for (_, c) in state.cancels.clients() {
                if arg.is_none_or(|d| *c.database == *d) {
                    kill(state, &c);
                }
            }
        }
        "KILL_CLIENT" => {
            let ptr = arg.ok_or_else(|| needs("KILL_CLIENT", "a client's ptr"))?;
            let pid = parse_ptr(ptr).ok_or_else(|| no_such("client", ptr))?;
            let (_, c) = (state.cancels.clients().into_iter())
                .find(|(p, _)| *p == pid)
                .ok_or_else(|| no_such("client", ptr))?;
            kill(state, &c);
        }
        "RECONNECT" => state.registry.pools_of(arg).for_each(|p| p.reconnect()),
        "BAN" | "UNBAN" => {
            let addr = arg.ok_or_else(|| needs(name, "a server's host:port"))?;
            let health = state
                .registry
                .health(addr)
                .ok_or_else(|| no_such("server", addr))?;
            health.set_admin_ban(name == "BAN");
        }
        "SHUTDOWN" => controls.stop.ring(),
        "RELOAD" => {
            let done = controls.reload().await?;
            tracing::info!(%done, "admin console command RELOAD");
            return Ok(name);
        }
        _ => {
            return Err(PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("{name} is not supported yet"),
            )
            .with_hint(
                "a changed configuration needs a restart (rolling: start the new instance on \
                 the same port, then SHUTDOWN the old one)",
            ))
        }
    }
    tracing::info!(command = name, arg, "admin console command");
    Ok(name)
}

/// Waits until no server connection of `database` (`None`: any) is in use, at most
/// `proxy.pause_timeout_ms`.
async fn drained(state: &ProxyState, database: Option<&str>) -> Result<(), PgError> {
    let timeout = state.config.proxy.pause_timeout_ms;
    let start = tokio::time::Instant::now();
    loop {
        let busy: usize = state.registry.pools_of(database).map(|p| p.in_use()).sum();
        if busy == 0 {
            return Ok(());
        }
        if timeout > 0 && start.elapsed() >= Duration::from_millis(timeout) {
            return Err(PgError::error(
                sqlstate::OBJECT_IN_USE,
                format!(
                    "PAUSE timed out: {busy} server connection(s) still in use after \
                     proxy.pause_timeout_ms; new transactions stay held"
                ),
            )
            .with_hint("RESUME lets them run; KILL drops the clients that hold them"));
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}

/// Ends client `c` at once: its session sees the flag at its next turn (a hibernating one is
/// woken), and its running statements are cancelled so that the turn comes.
fn kill(state: &ProxyState, c: &Cancel) {
    c.killed.store(true, std::sync::atomic::Ordering::SeqCst);
    c.signal.raise();
    let running = c.slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !running.is_empty() {
        tokio::spawn(async move { crate::session::cancel_all(&running).await });
    }
    state.shutdown.nudge();
}

/// A `ptr` of `SHOW CLIENTS` (`0x1f`), or the pid in decimal.
fn parse_ptr(s: &str) -> Option<i32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => i32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn needs(command: &str, what: &str) -> PgError {
    PgError::error(
        sqlstate::SYNTAX_ERROR,
        format!("{command} needs {what} as its argument"),
    )
}

fn no_such(what: &str, name: &str) -> PgError {
    PgError::error(
        sqlstate::UNDEFINED_OBJECT,
        format!("no such {what}: {name}"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_pointers_are_read_as_show_clients_prints_them() {
        assert_eq!(super::parse_ptr("0x1f"), Some(31));
        assert_eq!(super::parse_ptr("31"), Some(31));
        assert_eq!(super::parse_ptr("0xzz"), None);
        assert_eq!(super::parse_ptr("-"), None);
    }
}
