//! What the console's acting commands change and the sessions look at: paused and disabled
//! databases (`PAUSE`, `RESUME`, `DISABLE`, `ENABLE`, `KILL`), killed clients (`KILL`,
//! `KILL_CLIENT`) and a requested shutdown (`SHUTDOWN`). The session's hot path reads one
//! relaxed atomic per new transaction ([`Controls::paused`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::protocol::{sqlstate, PgError};

/// One database's switches (or every database's, for the commands given no name).
#[derive(Debug, Default)]
struct Switches {
    paused: AtomicBool,
    disabled: AtomicBool,
}

/// The console's switches and the bells that tell sessions about them.
#[derive(Debug, Default)]
pub struct Controls {
    all: Switches,
    databases: HashMap<String, Switches>,
    /// Databases (or all) paused now: the hot path's one load.
    pauses: AtomicUsize,
    /// Rung by `RESUME`: clients held by a pause look again.
    resumed: tokio::sync::Notify,
    /// Rung by `SHUTDOWN`: the accept loop stops as on SIGTERM.
    pub stop: crate::state::ShutdownBell,
    /// The config file `RELOAD` and SIGHUP read again (none: the config came as text).
    source: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// Where `RELOAD` asks the accept loop for a reload (set by the running accept loop).
    reloads: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<ReloadRequest>>>,
    /// The generation of the state in force ([`crate::state::ProxyState::generation`]).
    generation: std::sync::atomic::AtomicU64,
    /// The state in force, for sessions that move to it (the accept loop holds it).
    current: std::sync::Mutex<std::sync::Weak<crate::state::ProxyState>>,
}

/// A `RELOAD` waiting for the accept loop's answer: what changed, or why nothing did.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

impl Controls {
    /// Switches for each configured database.
    pub fn new<'a>(databases: impl Iterator<Item = &'a str>) -> Controls {
        Controls {
            databases: databases
                .map(|d| (d.to_string(), Switches::default()))
                .collect(),
            ..Controls::default()
        }
    }

    fn switches(&self, database: Option<&str>) -> Result<&Switches, PgError> {
        match database {
            None => Ok(&self.all),
            Some(d) => self.databases.get(d).ok_or_else(|| {
                PgError::error(
                    sqlstate::UNDEFINED_DATABASE,
                    format!("no such database: {d}"),
                )
            }),
        }
    }

    /// Whether new transactions on `database` must wait (one relaxed load when nothing is
    /// paused).
    pub fn paused(&self, database: &str) -> bool {
        if self.pauses.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.all.paused.load(Ordering::SeqCst)
            || self
                .databases
                .get(database)
                .is_some_and(|s| s.paused.load(Ordering::SeqCst))
    }

    /// Pauses `database` (`None`: all); false if it was paused already.
    pub fn pause(&self, database: Option<&str>) -> Result<bool, PgError> {
        let s = self.switches(database)?;
        let first = !s.paused.swap(true, Ordering::SeqCst);
        if first {
            self.pauses.fetch_add(1, Ordering::SeqCst);
        }
        Ok(first)
    }

    /// Resumes `database` (`None`: all, and every database paused by name); false if it was
    /// not paused.
    pub fn resume(&self, database: Option<&str>) -> Result<bool, PgError> {
        let mut any = false;
        let mut off = |s: &Switches| {
            if s.paused.swap(false, Ordering::SeqCst) {
                self.pauses.fetch_sub(1, Ordering::SeqCst);
                any = true;
            }
        };
        match database {
            Some(_) => off(self.switches(database)?),
            None => {
                off(&self.all);
                self.databases.values().for_each(off);
            }
        }
        self.resumed.notify_waiters();
        Ok(any)
    }

    /// Waits while `database` is paused, at most `timeout_ms` (0: no bound); then 57P03.
    pub async fn wait_resumed(&self, database: &str, timeout_ms: u64) -> Result<(), PgError> {
        let start = tokio::time::Instant::now();
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.paused(database) {
                return Ok(());
            }
            let left = match timeout_ms {
                0 => Duration::MAX,
                ms => Duration::from_millis(ms).saturating_sub(start.elapsed()),
            };
            if left.is_zero() || tokio::time::timeout(left, resumed).await.is_err() {
                return Err(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("database \"{database}\" is paused"),
                )
                .with_hint("an operator ran PAUSE on the admin console; retry after RESUME"));
            }
        }
    }

    /// `DISABLE` (true) or `ENABLE` (false) new logins to `database` (`None`: all).
    pub fn set_disabled(&self, database: Option<&str>, disabled: bool) -> Result<(), PgError> {
        self.switches(database)?
            .disabled
            .store(disabled, Ordering::SeqCst);
        Ok(())
    }

    /// Whether logins to `database` are refused (`DISABLE`).
    pub fn disabled(&self, database: &str) -> bool {
        self.all.disabled.load(Ordering::Relaxed)
            || self
                .databases
                .get(database)
                .is_some_and(|s| s.disabled.load(Ordering::Relaxed))
    }

    /// The config file that reloads read.
    pub fn set_source(&self, path: std::path::PathBuf) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// See [`Controls::set_source`].
    pub fn source(&self) -> Option<std::path::PathBuf> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes `state` the one in force: sessions of older ones move to it at their next
    /// transaction boundary.
    pub fn publish(&self, state: &std::sync::Arc<crate::state::ProxyState>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::downgrade(state);
        self.generation.store(state.generation, Ordering::SeqCst);
    }

    /// The generation in force (one relaxed load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The state in force, while the proxy runs.
    pub fn current(&self) -> Option<std::sync::Arc<crate::state::ProxyState>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
    }

    /// Called by the accept loop: `RELOAD` requests arrive on `tx`.
    pub fn serve_reloads(&self, tx: tokio::sync::mpsc::Sender<ReloadRequest>) {
        *self.reloads.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Asks the accept loop to reload the config file: what changed, or why nothing did.
    pub async fn reload(&self) -> Result<String, PgError> {
        let tx = self
            .reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = match tx {
            Some(tx) => tx.send(reply).await.is_ok(),
            None => false,
        };
        let answer = match sent {
            true => answer.await.ok(),
            false => None,
        };
        match answer {
            Some(Ok(done)) => Ok(done),
            Some(Err(why)) => Err(PgError::error(sqlstate::CONFIG_FILE_ERROR, why)
                .with_hint("the configuration in force is unchanged")),
            None => Err(PgError::error(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the proxy is not serving reloads",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paused_database_holds_its_clients_until_resume() {
        let c = std::sync::Arc::new(Controls::new(["app", "other"].into_iter()));
        assert!(!c.paused("app"));
        assert!(c.pause(Some("app")).unwrap());
        assert!(!c.pause(Some("app")).unwrap(), "paused already");
        assert!(c.paused("app") && !c.paused("other"));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_resumed("app", 0).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(c.resume(None).unwrap());
        waiter.await.unwrap().unwrap();
        assert!(!c.paused("app"));
        assert_eq!(c.pauses.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_pause_wait_is_bounded() {
        let c = Controls::new(["app"].into_iter());
        c.pause(None).unwrap();
        assert!(c.paused("app") && c.paused("unknown"));
        let e = c.wait_resumed("app", 20).await.unwrap_err();
        assert_eq!(e.code, sqlstate::CANNOT_CONNECT_NOW);
        assert!(c.pause(Some("nope")).is_err());
        c.set_disabled(Some("app"), true).unwrap();
        assert!(c.disabled("app"));
        assert!(
            c.paused("other") && !c.disabled("other"),
            "PAUSE of all, DISABLE of one"
        );
    }
}
