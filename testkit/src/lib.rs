//! Throw-away local PostgreSQL clusters for Shardgate's tests and `shardgate demo`: the
//! only process control (and the only `unsafe`) of the workspace, kept out of the proxy.
//!
//! A [`PgCluster`] owns a temporary directory holding a data directory, a
//! private unix-socket directory and the server log. The server listens on
//! `127.0.0.1:<port>` (password authentication, see
//! [`ClusterOptions::hba_method`]) and on its own unix socket (trust), which
//! this module uses for administration ([`PgCluster::psql`]).
//!
//! PostgreSQL refuses to run as root. When the effective uid is 0 every server
//! program (`initdb`, `pg_ctl`, `pg_basebackup`, ...) is run as the `postgres`
//! OS user through `runuser -u postgres --`, and the temporary directory is
//! handed over to that user. `psql` itself runs as the current user.
//!
//! Everything here is blocking (`std::process`); it is meant for start-up code.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long to wait for a freshly started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound for `initdb` and `pg_basebackup` (slow CI machines).
const SLOW_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound for one `psql` invocation.
const PSQL_TIMEOUT: Duration = Duration::from_secs(600);
/// `pg_ctl -t` value (seconds) for start and stop.
const PG_CTL_WAIT_SECS: u64 = 120;
/// How many times a start is retried on a fresh port when the automatically
/// chosen port turned out to be taken.
const PORT_RETRIES: usize = 5;
/// OS user that runs the server when we are root.
const PG_OS_USER: &str = "postgres";
/// Database superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

mod options;
mod run_as;
mod util;

pub use options::{ClusterError, ClusterOptions, PasswordMethod};
use run_as::RunAs;
use util::*;
pub use util::{free_port, pg_bindir};

/// A running (or stopped) throw-away PostgreSQL cluster. Dropping it stops the
/// server and deletes all its files.
pub struct PgCluster {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// Port was chosen automatically, so a start may retry on another one.
    auto_port: bool,
    superuser_password: String,
    running: bool,
    run_as: RunAs,
    /// Kept alive for the lifetime of the cluster; removes everything on drop.
    base: TempDir,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("data_dir", &self.data_dir)
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .field("running", &self.running)
            .field("base", &self.base.path())
            .finish_non_exhaustive()
    }
}

impl PgCluster {
    /// Creates a new cluster with `initdb` in a fresh temporary directory,
    /// configures it for fast throw-away use (fsync off, replication enabled,
    /// `max_connections = 300`, listening on 127.0.0.1 only), starts it, waits
    /// until it accepts connections and sets the `postgres` password.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let mut c = PgCluster::prepare(&opts, String::new())?;

        let mut initdb = c.run_as_pg_cmd("initdb");
        initdb
            .arg("-D")
            .arg(&c.data_dir)
            .arg("-U")
            .arg(SUPERUSER)
            .arg("--auth-local=trust")
            .arg(format!("--auth-host={}", opts.hba_method))
            .arg("-E")
            .arg("UTF8")
            .arg("--locale=C")
            .arg("--no-sync");
        run(&mut initdb, None, SLOW_COMMAND_TIMEOUT)?;

        c.write_conf(&opts, true)?;
        c.write_hba(&opts.hba_method)?;
        c.start_server()?;

        if !opts.superuser_password.is_empty() {
            c.psql(
                "postgres",
                &format!(
                    "ALTER ROLE {} PASSWORD {}",
                    quote_ident(SUPERUSER),
                    quote_literal(&opts.superuser_password)
                ),
            )?;
        }
        c.superuser_password = opts.superuser_password;
        Ok(c)
    }

    /// Creates a streaming hot standby of this cluster with
    /// `pg_basebackup -R -X stream`, gives it its own port and socket
    /// directory, starts it and waits until it accepts connections and
    /// `pg_is_in_recovery()` is true. `opts.superuser_password` is ignored
    /// (roles come from the primary); `opts.hba_method` and
    /// `opts.extra_conf` apply to the replica.
    pub fn start_replica(&self, opts: ClusterOptions) -> Result<PgCluster, ClusterError> {
        let mut c = PgCluster::prepare(&opts, self.superuser_password.clone())?;

        let mut bb = c.run_as_pg_cmd("pg_basebackup");
        bb.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(SUPERUSER)
            .arg("-D")
            .arg(&c.data_dir)
            .arg("-R")
            .arg("-X")
            .arg("stream")
            .arg("-c")
            .arg("fast")
            .arg("--no-sync")
            .arg("-w")
            .env("PGCONNECT_TIMEOUT", "30");
        if !self.superuser_password.is_empty() {
            bb.env("PGPASSWORD", &self.superuser_password);
        }
        run(&mut bb, None, SLOW_COMMAND_TIMEOUT)?;

        c.write_conf(&opts, false)?;
        c.write_hba(&opts.hba_method)?;
        c.start_server()?;

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match c.psql("postgres", "select pg_is_in_recovery()") {
                Ok(out) if out == "t" => break,
                Ok(out) => {
                    return Err(c.start_error(format!(
                        "replica is not in recovery (pg_is_in_recovery() = {out:?})"
                    )))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(c.start_error(format!("replica never became queryable: {e}")))
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
        Ok(c)
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP address of the server, `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `sql` (one or more `;`-separated statements, each in its own
    /// implicit transaction) in database `db` as the `postgres` superuser over
    /// the unix socket with `psql -X -q -A -t -v ON_ERROR_STOP=1`, and returns
    /// the trimmed standard output (unaligned, tuples only, `|` between
    /// columns). Fails on the first SQL error; the error carries psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_with_timeout(db, sql, PSQL_TIMEOUT)
    }

    /// Creates a `LOGIN` role (not a superuser) whose password is stored
    /// according to `method` (`SET password_encryption` in the same session).
    /// `name` is quoted as an identifier, so it is case-sensitive.
    pub fn create_role(
        &self,
        name: &str,
        password: &str,
        method: PasswordMethod,
    ) -> Result<(), ClusterError> {
        let sql = format!(
            "SET password_encryption = '{}';\nCREATE ROLE {} LOGIN PASSWORD {};\n",
            method.guc_value(),
            quote_ident(name),
            quote_literal(password)
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// Creates database `name` owned by `owner` and makes `owner` also own its
    /// `public` schema (so it can create objects there on PostgreSQL 15+).
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(owner)
            ),
        )?;
        self.psql(
            name,
            &format!("ALTER SCHEMA public OWNER TO {}", quote_ident(owner)),
        )?;
        Ok(())
    }

    /// Stops the server with `pg_ctl stop -m fast -w`. Idempotent; errors are
    /// ignored (a server that is already gone counts as stopped).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server abruptly with `pg_ctl stop -m immediate` (as if it had
    /// crashed; the next start would run crash recovery). Idempotent.
    pub fn kill(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Promotes a hot standby to primary with `pg_ctl promote -w` (waits until it accepts
    /// writes).
    pub fn promote(&self) -> Result<(), ClusterError> {
        let mut cmd = self.run_as_pg_cmd("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_WAIT_SECS.to_string());
        run(&mut cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 60)).map(drop)
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the PostgreSQL programs used for this cluster.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// A [`Command`] for `bindir/program`, run as the `postgres` OS user via
    /// `runuser -u postgres --` when we are root and directly otherwise. `PG*`
    /// environment variables are removed and the working directory is the
    /// cluster's temporary directory; add arguments and environment as needed.
    pub fn run_as_pg_cmd(&self, program: &str) -> Command {
        let mut cmd = self.run_as.command(&self.bindir.join(program));
        cmd.current_dir(self.base.path());
        cmd
    }

    // ---- internals ----

    /// Creates the temporary directory layout and the (not yet initialised)
    /// cluster value. Dropping it before the server runs only removes files.
    fn prepare(
        opts: &ClusterOptions,
        superuser_password: String,
    ) -> Result<PgCluster, ClusterError> {
        let bindir = pg_bindir()?;
        let run_as = RunAs::detect()?;
        let base = tempfile::Builder::new()
            .prefix("shardgate-pg-")
            .tempdir_in(temp_parent())
            .map_err(|e| io_err("creating temporary directory", e))?;
        set_mode(base.path(), 0o755)?;
        run_as.give(base.path())?;

        let socket_dir = base.path().join("sock");
        fs::create_dir(&socket_dir)
            .map_err(|e| io_err(format!("creating {}", socket_dir.display()), e))?;
        set_mode(&socket_dir, 0o755)?;
        run_as.give(&socket_dir)?;

        // The server (running as postgres) appends to the log; create it now
        // so that it is readable even if the server never starts.
        let log_file = base.path().join("postgres.log");
        File::create(&log_file)
            .map_err(|e| io_err(format!("creating {}", log_file.display()), e))?;
        set_mode(&log_file, 0o644)?;
        run_as.give(&log_file)?;

        Ok(PgCluster {
            data_dir: base.path().join("data"),
            socket_dir,
            log_file,
            bindir,
            port: opts.port.unwrap_or_else(free_port),
            auto_port: opts.port.is_none(),
            superuser_password,
            running: false,
            run_as,
            base,
        })
    }

    /// Appends our settings to `postgresql.conf` (later lines win, so this
    /// also overrides what a base backup copied from the primary).
    fn write_conf(&self, opts: &ClusterOptions, primary: bool) -> Result<(), ClusterError> {
        let mut conf = String::from("\n# ---- added by testkit ----\n");
        if primary {
            for line in [
                "listen_addresses = '127.0.0.1'",
                "max_connections = 300",
                "fsync = off",
                "synchronous_commit = off",
                "full_page_writes = off",
                "wal_level = replica",
                "max_wal_senders = 10",
                "hot_standby = on",
                "shared_buffers = 64MB",
            ] {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        conf.push_str(&format!("port = {}\n", self.port));
        conf.push_str(&format!(
            "unix_socket_directories = {}\n",
            quote_literal(&self.socket_dir.to_string_lossy())
        ));
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        self.append_conf(&conf)
    }

    fn append_conf(&self, text: &str) -> Result<(), ClusterError> {
        let path = self.data_dir.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| io_err(format!("writing {}", path.display()), e))
    }

    /// Replaces `pg_hba.conf` (truncating keeps the file's owner).
    fn write_hba(&self, method: &str) -> Result<(), ClusterError> {
        let path = self.data_dir.join("pg_hba.conf");
        let text = format!(
            "# written by testkit\n\
             local all         all                 trust\n\
             local replication all                 trust\n\
             host  all         all  127.0.0.1/32   {method}\n\
             host  replication all  127.0.0.1/32   {method}\n"
        );
        fs::write(&path, text).map_err(|e| io_err(format!("writing {}", path.display()), e))
    }

    /// `pg_ctl start -w`, then polls `select 1` over the unix socket. Retries
    /// on another port if an automatically chosen one is taken.
    fn start_server(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_start = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.run_as_pg_cmd("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-w")
                .arg("-t")
                .arg(PG_CTL_WAIT_SECS.to_string());
            // pg_ctl's own -t bounds this; the extra margin covers runuser.
            let result = run(&mut cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 60));
            match result {
                Ok(_) => {
                    self.running = true;
                    break;
                }
                Err(e) => {
                    // pg_ctl may time out while the postmaster lives on.
                    self.running = true;
                    self.pg_ctl_stop("immediate");
                    let new_log = read_from(&self.log_file, log_start);
                    let port_taken = new_log.contains("could not bind")
                        || new_log.contains("Address already in use")
                        || new_log.contains("could not create any TCP/IP sockets");
                    if port_taken && self.auto_port && attempt <= PORT_RETRIES {
                        self.port = free_port();
                        self.append_conf(&format!("port = {}\n", self.port))?;
                        continue;
                    }
                    return Err(self.start_error(e.to_string()));
                }
            }
        }
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.psql_with_timeout("postgres", "select 1", Duration::from_secs(30)) {
                Ok(out) if out == "1" => return Ok(()),
                Ok(out) => {
                    return Err(self.start_error(format!("unexpected `select 1` output {out:?}")))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.start_error(format!(
                        "not ready after {} s: {e}",
                        READY_TIMEOUT.as_secs()
                    )))
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn psql_with_timeout(
        &self,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.bindir.join("psql"));
        scrub_pg_env(&mut cmd);
        cmd.arg("-X")
            .arg("-q")
            .arg("-A")
            .arg("-t")
            .arg("-v")
            .arg("ON_ERROR_STOP=1")
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(SUPERUSER)
            .arg("-d")
            .arg(db)
            .arg("-f")
            .arg("-")
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.base.path());
        let out = run(&mut cmd, Some(sql), timeout)?;
        Ok(out.trim().to_string())
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let mut cmd = self.run_as_pg_cmd("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-m")
            .arg(mode)
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_WAIT_SECS.to_string());
        let ok = run(&mut cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 60)).is_ok();
        if !ok && mode != "immediate" {
            tracing::warn!(data_dir = %self.data_dir.display(), "pg_ctl stop -m {mode} failed; trying immediate");
            let mut cmd = self.run_as_pg_cmd("pg_ctl");
            cmd.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-m")
                .arg("immediate")
                .arg("-w");
            let _ = run(&mut cmd, None, Duration::from_secs(PG_CTL_WAIT_SECS + 60));
        }
        self.running = false;
    }

    fn start_error(&self, reason: String) -> ClusterError {
        ClusterError::Start {
            data_dir: self.data_dir.clone(),
            reason,
            log_file: self.log_file.clone(),
            log_tail: log_tail(&self.log_file, 40),
        }
    }
}

impl Drop for PgCluster {
    /// Stops the server (fast, falling back to immediate); the temporary
    /// directory is then removed.
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
