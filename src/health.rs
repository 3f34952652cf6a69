//! Server health: what the background checker last saw of each server (reachable, primary or
//! replica, WAL positions, replication lag) and bans.
//!
//! One [`ServerHealth`] exists per server address and is shared by every pool of that server.
//! One checker task per shard polls all of the shard's servers every
//! `routing.healthcheck_interval_ms` with tokio-postgres: `pg_is_in_recovery()`, the primary's
//! WAL insert position and each replica's replay and receive positions. A replica's lag is
//! zero when it has replayed everything the primary had written at this check; otherwise it
//! is the time since the check whose primary position it has replayed (so it is measured in
//! check intervals, and an idle primary never makes a replica look behind).
//!
//! Everything here is lock-free atomics read on the hot path (choosing a server for a read
//! costs a few relaxed loads per replica).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{Config, DatabaseConfig, Role, ShardConfig};

/// The process clock's start: its instant and the wall clock then (ms since the epoch).
fn start() -> &'static (Instant, u64) {
    static START: OnceLock<(Instant, u64)> = OnceLock::new();
    START.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), wall)
    })
}

/// Milliseconds since the first call (a process-wide monotonic clock for atomics).
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] of instant `t` (no clock read: for an instant the caller has already).
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(start().0).as_millis() as u64 + 1
}

/// A [`now_ms`] value as wall-clock milliseconds since the epoch (for display).
pub fn wall_ms(ms: u64) -> u64 {
    start().1 + ms.saturating_sub(1)
}

const UNKNOWN: u8 = 0;
const PRIMARY: u8 = 1;
const REPLICA: u8 = 2;

/// What is known about one server.
#[derive(Debug)]
pub struct ServerHealth {
    /// `host:port`.
    pub addr: String,
    /// Role from the config.
    pub declared: Role,
    /// Role seen by the last successful check (UNKNOWN, PRIMARY, REPLICA).
    observed: AtomicU8,
    /// The last check (or connect) succeeded; true until a check says otherwise.
    reachable: AtomicBool,
    /// `now_ms()` until which the server gets no reads; 0 = not banned. A failure's ban is
    /// lifted by the next check that reaches the server.
    banned_until: AtomicU64,
    /// Banned from the admin console (`BAN`) until `UNBAN`: no reads, whatever the checks say.
    admin_banned: AtomicBool,
    /// The last check found it too far behind (logged once per episode).
    lagging: AtomicBool,
    /// Primary: `pg_current_wal_lsn()`; replica: `pg_last_wal_replay_lsn()`, at the last check.
    lsn: AtomicU64,
    /// Replication lag at the last check (replicas).
    lag_ms: AtomicU64,
    /// Bytes of WAL not yet replayed at the last check (replicas).
    lag_bytes: AtomicU64,
    /// Completed checks (successful or not).
    checks: AtomicU64,
}

impl ServerHealth {
    /// A server not checked yet: assumed reachable, role as declared.
    pub fn new(addr: &str, declared: Role) -> ServerHealth {
        ServerHealth {
            addr: addr.to_string(),
            declared,
            observed: AtomicU8::new(UNKNOWN),
            reachable: AtomicBool::new(true),
            banned_until: AtomicU64::new(0),
            admin_banned: AtomicBool::new(false),
            lagging: AtomicBool::new(false),
            lsn: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }

    /// Whether writes may go here: a declared primary always (its failures are reported to the
    /// client), an `auto` server when the last check found it reachable and not in recovery.
    pub fn is_primary(&self) -> bool {
        match self.declared {
            Role::Primary => true,
            Role::Replica => false,
            Role::Auto => {
                self.observed.load(Ordering::Relaxed) == PRIMARY
                    && self.reachable.load(Ordering::Relaxed)
            }
        }
    }

    /// Whether this is a replica (declared, or an `auto` server seen in recovery).
    pub fn is_replica(&self) -> bool {
        match self.declared {
            Role::Primary => false,
            Role::Replica => true,
            Role::Auto => self.observed.load(Ordering::Relaxed) == REPLICA,
        }
    }

    /// `primary`, `replica` or `unknown` (for display).
    pub fn role_name(&self) -> &'static str {
        if self.is_primary() {
            "primary"
        } else if self.is_replica() {
            "replica"
        } else {
            "unknown"
        }
    }

    /// Whether reads that need WAL position `min_lsn` (0: none) may go here now: reachable,
    /// not banned, and (a replica) within `max_lag_ms` at the last check (a lag not measured
    /// yet is no reason to avoid it).
    pub fn can_read(&self, now: u64, max_lag_ms: u64, min_lsn: u64) -> bool {
        self.reachable.load(Ordering::Relaxed)
            && self.banned_until.load(Ordering::Relaxed) <= now
            && !self.admin_banned.load(Ordering::Relaxed)
            && (!self.is_replica() || self.lag_ms.load(Ordering::Relaxed) <= max_lag_ms)
            && (min_lsn == 0 || self.lsn.load(Ordering::Relaxed) >= min_lsn)
    }

    /// Keeps the server out of the read rotation for `ban_ms`.
    pub fn ban(&self, ban_ms: u64, reason: &str) {
        let until = now_ms() + ban_ms;
        let before = self.banned_until.swap(until, Ordering::Relaxed);
        if before <= now_ms() {
            tracing::warn!(server = %self.addr, ban_ms, reason, "server banned");
        }
    }

    /// `now_ms()` until which the server gets no reads (0: never banned; `u64::MAX`: banned
    /// from the console until `UNBAN`).
    pub fn banned_until_ms(&self) -> u64 {
        if self.admin_banned.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        self.banned_until.load(Ordering::Relaxed)
    }

    /// Whether the server is banned right now.
    pub fn banned(&self) -> bool {
        self.admin_banned.load(Ordering::Relaxed)
            || self.banned_until.load(Ordering::Relaxed) > now_ms()
    }

    /// The console's `BAN` (true) and `UNBAN` (false): `UNBAN` also lifts a failure's ban.
    pub fn set_admin_ban(&self, banned: bool) {
        self.admin_banned.store(banned, Ordering::Relaxed);
        if !banned {
            self.banned_until.store(0, Ordering::Relaxed);
        }
        tracing::warn!(server = %self.addr, banned, "server ban set from the admin console");
    }

    /// A connect to the server failed: it is unreachable until a check succeeds.
    pub fn mark_down(&self) {
        self.reachable.store(false, Ordering::Relaxed);
    }

    /// Last known WAL position (see the field docs).
    pub fn lsn(&self) -> u64 {
        self.lsn.load(Ordering::Relaxed)
    }

    /// Replication lag at the last check.
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }

    /// Unreplayed WAL bytes at the last check.
    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    /// Whether the last check reached the server.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Number of checks completed.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

/// Parses a `pg_lsn` text (`16/B374D848`) into a 64-bit position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// One check's findings.
#[derive(Debug, Clone, Copy)]
struct Observation {
    in_recovery: bool,
    /// Primary: current WAL position; replica: replay position.
    lsn: u64,
    /// Replica: receive position (0 if unknown).
    received: u64,
}

/// The primary's position is its flushed one: what a replica can have. (The insert position
/// of an idle primary right after a segment switch points past the new segment's page header,
/// which no replica ever replays: a replica compared with it looked behind for ever.)
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
      ELSE pg_current_wal_flush_lsn() END)::text, \
     COALESCE(pg_last_wal_receive_lsn()::text, '')";

/// A checker's connection to one server.
struct Probe {
    health: Arc<ServerHealth>,
    config: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
    allow_cleartext: bool,
}

impl Probe {
    async fn check(&mut self, timeout: Duration) -> Option<Observation> {
        let fut = async {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                let (client, conn) = crate::backend::pg_connect(&self.config, self.allow_cleartext)
                    .await
                    .ok()?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.client = Some(client);
            }
            let client = self.client.as_ref()?;
            let row = client.query_one(CHECK_SQL, &[]).await.ok()?;
            let in_recovery: bool = row.try_get(0).ok()?;
            let lsn: Option<String> = row.try_get(1).ok()?;
            let received: String = row.try_get(2).ok()?;
            Some(Observation {
                in_recovery,
                lsn: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
                received: parse_lsn(&received).unwrap_or(0),
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Some(o)) => Some(o),
            _ => {
                self.client = None;
                None
            }
        }
    }
}

/// Credentials and database the checker uses for a shard: the first user with a plaintext
/// server password (or none: trust).
fn probe_config(config: &Config, db: &DatabaseConfig, addr: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
    c.host(host.trim_start_matches('[').trim_end_matches(']'));
    c.port(port.parse().unwrap_or(5432));
    c.dbname(db.server_database());
    c.application_name("shardgate health check");
    c.connect_timeout(Duration::from_millis(config.pool.connect_timeout_ms));
    let user = config
        .users
        .iter()
        .find(|u| u.server_password().is_some())
        .or(config.users.first());
    if let Some(u) = user {
        c.user(u.server_user());
        if let Some(p) = u.server_password() {
            c.password(p);
        }
    }
    c
}

/// Starts the checker of one shard; it runs until the runtime stops. The first round starts
/// at once, so `auto` servers get a role within one connect.
pub fn spawn_checker(
    config: &Config,
    db: &DatabaseConfig,
    shard: &ShardConfig,
    servers: Vec<Arc<ServerHealth>>,
    alive: std::sync::Weak<()>,
) {
    let interval = Duration::from_millis(config.routing.healthcheck_interval_ms);
    let timeout = Duration::from_millis(config.pool.connect_timeout_ms) + interval;
    let max_lag = config.routing.max_replica_lag_ms;
    let ban_ms = config.routing.ban_time_ms;
    let shard_name = shard.name.clone();
    let mut probes: Vec<Probe> = servers
        .into_iter()
        .map(|h| Probe {
            config: probe_config(config, db, &h.addr),
            health: h,
            client: None,
            allow_cleartext: config.pool.allow_cleartext_server_password,
        })
        .collect();
    let mut lags = vec![Lag::default(); probes.len()];
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if alive.strong_count() == 0 {
                // Its registry was replaced by a reload and is gone.
                return;
            }
            let results =
                futures_util::future::join_all(probes.iter_mut().map(|p| p.check(timeout))).await;
            let primary_lsn = results
                .iter()
                .flatten()
                .filter(|o| !o.in_recovery)
                .map(|o| o.lsn)
                .max()
                .unwrap_or(0);
            let now = now_ms();
            for ((probe, obs), lag) in probes.iter().zip(results).zip(lags.iter_mut()) {
                let lag_ms = match obs {
                    Some(o) if o.in_recovery => lag.update(now, o.lsn, primary_lsn.max(o.received)),
                    _ => 0,
                };
                record(
                    &probe.health,
                    obs,
                    primary_lsn,
                    lag_ms,
                    max_lag,
                    ban_ms,
                    &shard_name,
                );
            }
        }
    });
}

/// Lag bookkeeping of one replica: past primary positions with the time they were seen.
#[derive(Debug, Clone, Default)]
struct Lag {
    /// (now_ms, primary position) of recent checks, oldest first.
    heads: std::collections::VecDeque<(u64, u64)>,
}

impl Lag {
    /// Records a check (replay position `replayed`, primary position `head`) and returns the
    /// lag: 0 if caught up, else the time since the oldest remembered check whose primary
    /// position the replica has not replayed yet.
    fn update(&mut self, now: u64, replayed: u64, head: u64) -> u64 {
        if replayed >= head {
            self.heads.clear();
            return 0;
        }
        // Drop positions the replica has replayed; the first one left is what it lacks.
        while self.heads.front().is_some_and(|&(_, h)| replayed >= h) {
            self.heads.pop_front();
        }
        if self.heads.back().is_none_or(|&(_, h)| h < head) {
            self.heads.push_back((now, head));
        }
        if self.heads.len() > 10_000 {
            self.heads.pop_back();
        }
        self.heads
            .front()
            .map_or(0, |&(t, _)| now.saturating_sub(t))
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    h: &ServerHealth,
    obs: Option<Observation>,
    primary_lsn: u64,
    lag_ms: u64,
    max_lag: u64,
    ban_ms: u64,
    shard: &str,
) {
    h.checks.fetch_add(1, Ordering::Relaxed);
    let Some(o) = obs else {
        if h.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(server = %h.addr, shard, "health check failed");
        }
        if !h.is_primary() {
            h.ban(ban_ms, "health check failed");
        }
        return;
    };
    if !h.reachable.swap(true, Ordering::Relaxed) {
        tracing::info!(server = %h.addr, shard, "server reachable again");
    }
    // A failure's ban ends with a check that reaches the server.
    if h.banned_until.swap(0, Ordering::Relaxed) > now_ms() {
        tracing::info!(server = %h.addr, shard, "server answers again; ban lifted");
    }
    let role = if o.in_recovery { REPLICA } else { PRIMARY };
    let before = h.observed.swap(role, Ordering::Relaxed);
    if before != role && before != UNKNOWN {
        tracing::warn!(server = %h.addr, shard, in_recovery = o.in_recovery, "server changed role");
    }
    if h.declared == Role::Primary && o.in_recovery {
        tracing::error!(server = %h.addr, shard, "server declared primary is in recovery");
    }
    h.lsn.store(o.lsn, Ordering::Relaxed);
    if o.in_recovery {
        let head = primary_lsn.max(o.received);
        let lag_bytes = head.saturating_sub(o.lsn);
        h.lag_ms.store(lag_ms, Ordering::Relaxed);
        h.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        // No ban: reads skip it while it is behind (`can_read`) and return as soon as a
        // check finds it within the bound again.
        let lagging = lag_ms > max_lag;
        if h.lagging.swap(lagging, Ordering::Relaxed) != lagging {
            if lagging {
                tracing::warn!(server = %h.addr, shard, lag_ms, max_lag, "replica too far behind; reads go elsewhere");
            } else {
                tracing::info!(server = %h.addr, shard, lag_ms, "replica caught up; reads return");
            }
        }
    } else {
        h.lag_ms.store(0, Ordering::Relaxed);
        h.lag_bytes.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(lsn: u64, received: u64) -> Option<Observation> {
        Some(Observation {
            in_recovery: true,
            lsn,
            received,
        })
    }

    #[test]
    fn parses_lsn() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/xyz"), None);
    }

    #[test]
    fn lag_counts_time_since_the_replica_last_caught_up() {
        let mut lag = Lag::default();
        assert_eq!(lag.update(1_000, 100, 100), 0, "caught up");
        // Replay stops at 100 while the primary moves on.
        assert_eq!(lag.update(1_100, 100, 200), 0);
        assert_eq!(lag.update(1_200, 100, 300), 100);
        assert_eq!(lag.update(1_900, 100, 300), 800);
        // A replica that keeps up to within one check under constant writes has a small lag.
        let mut steady = Lag::default();
        for i in 0..100u64 {
            let lag = steady.update(i * 100, i * 10, i * 10 + 10);
            assert!(lag <= 100, "check {i}: {lag}");
        }
        // Resuming: once it passes the positions, the lag shrinks to zero.
        assert_eq!(lag.update(2_000, 300, 300), 0);
    }

    #[test]
    fn a_lagging_replica_gets_reads_again_as_soon_as_it_catches_up() {
        let h = ServerHealth::new("127.0.0.1:1", Role::Replica);
        assert!(h.can_read(now_ms(), 1_000, 0), "a lag not measured yet");
        record(&h, replica(100, 200), 300, 5_000, 1_000, 60_000, "s0");
        assert_eq!(h.lag_ms(), 5_000);
        assert_eq!(h.lag_bytes(), 200);
        assert!(!h.can_read(now_ms(), 1_000, 0));
        assert!(!h.banned(), "lag is no ban of a fixed time");
        record(&h, replica(300, 300), 300, 0, 1_000, 60_000, "s0");
        assert!(h.can_read(now_ms(), 1_000, 0));
    }

    #[test]
    fn a_failed_replica_returns_with_the_first_check_that_reaches_it() {
        let h = ServerHealth::new("127.0.0.1:1", Role::Replica);
        record(&h, None, 0, 0, 1_000, 60_000, "s0");
        assert!(h.banned() && !h.can_read(now_ms(), 1_000, 0));
        record(&h, replica(300, 300), 300, 0, 1_000, 60_000, "s0");
        assert!(!h.banned() && h.can_read(now_ms(), 1_000, 0));
        // A ban from the console stays until UNBAN, whatever the checks say.
        h.set_admin_ban(true);
        record(&h, replica(300, 300), 300, 0, 1_000, 60_000, "s0");
        assert!(h.banned() && !h.can_read(now_ms(), 1_000, 0));
        assert_eq!(h.banned_until_ms(), u64::MAX);
        h.set_admin_ban(false);
        assert!(h.can_read(now_ms(), 1_000, 0));
    }

    #[test]
    fn auto_role_follows_recovery_state() {
        let h = ServerHealth::new("127.0.0.1:1", Role::Auto);
        assert!(!h.is_primary(), "unknown until checked");
        let primary = Some(Observation {
            in_recovery: false,
            lsn: 10,
            received: 0,
        });
        record(&h, primary, 10, 0, 1_000, 1_000, "s0");
        assert!(h.is_primary());
        h.mark_down();
        assert!(!h.is_primary(), "an unreachable server takes no writes");
        record(&h, None, 0, 0, 1_000, 1_000, "s0");
        assert!(!h.is_primary());
        record(&h, primary, 10, 0, 1_000, 1_000, "s0");
        assert!(h.is_primary());
    }

    #[test]
    fn read_your_writes_needs_replayed_lsn() {
        let h = ServerHealth::new("127.0.0.1:1", Role::Replica);
        record(&h, replica(500, 500), 500, 0, 1_000, 1_000, "s0");
        assert!(h.can_read(now_ms(), 1_000, 500));
        assert!(!h.can_read(now_ms(), 1_000, 501));
    }
}
