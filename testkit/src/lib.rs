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

/// Errors from starting, driving or querying a throw-away cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The PostgreSQL server binaries could not be located.
    #[error("PostgreSQL binaries not found: {0}")]
    BinariesNotFound(String),
    /// The environment cannot run PostgreSQL (e.g. root without `runuser` or
    /// without a `postgres` OS user).
    #[error("cannot run PostgreSQL here: {0}")]
    Environment(String),
    /// A file-system or process-spawning operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("command `{command}` failed ({status})\nstderr: {stderr}\nstdout: {stdout}")]
    Command {
        /// The command line (program and arguments, no environment).
        command: String,
        /// Exit status description.
        status: String,
        /// Captured standard output.
        stdout: String,
        /// Captured standard error.
        stderr: String,
    },
    /// An external command did not finish in time and was killed.
    #[error("command `{command}` timed out after {secs} s")]
    Timeout {
        /// The command line (program and arguments, no environment).
        command: String,
        /// The timeout that elapsed.
        secs: u64,
    },
    /// The server did not start or did not become ready.
    #[error(
        "server in {data_dir} failed to start: {reason}\n--- tail of {log_file} ---\n{log_tail}"
    )]
    Start {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// What went wrong (often a nested command error).
        reason: String,
        /// The server log file.
        log_file: PathBuf,
        /// The last lines of the server log.
        log_tail: String,
    },
}

/// How [`PgCluster::create_role`] stores a role's password, which decides
/// which authentication exchanges the server can use for that role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordMethod {
    /// `password_encryption = 'scram-sha-256'`.
    Scram,
    /// `password_encryption = 'md5'`.
    Md5,
}

impl PasswordMethod {
    fn guc_value(self) -> &'static str {
        match self {
            PasswordMethod::Scram => "scram-sha-256",
            PasswordMethod::Md5 => "md5",
        }
    }
}

/// Settings for [`PgCluster::start`] and [`PgCluster::start_replica`].
#[derive(Clone)]
pub struct ClusterOptions {
    /// TCP port; `None` picks one with [`free_port`] (and retries with another
    /// port if the server cannot bind it).
    pub port: Option<u16>,
    /// Password set for the `postgres` superuser (primary only; a replica
    /// inherits the primary's roles and this field is ignored there). Empty
    /// means no password is set, so TCP logins as `postgres` fail unless
    /// `hba_method` is `trust`.
    pub superuser_password: String,
    /// Lines appended verbatim to `postgresql.conf` after the defaults
    /// (later lines win).
    pub extra_conf: Vec<String>,
    /// Authentication method of the `host` lines in `pg_hba.conf`
    /// (`scram-sha-256`, `md5`, `password`, `trust`, ...).
    pub hba_method: String,
}

impl Default for ClusterOptions {
    /// Automatic port, superuser password `postgres`, no extra configuration,
    /// `scram-sha-256` for TCP connections.
    fn default() -> Self {
        ClusterOptions {
            port: None,
            superuser_password: "postgres".to_string(),
            extra_conf: Vec::new(),
            hba_method: "scram-sha-256".to_string(),
        }
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("port", &self.port)
            .field("superuser_password", &"<redacted>")
            .field("extra_conf", &self.extra_conf)
            .field("hba_method", &self.hba_method)
            .finish()
    }
}

/// How server programs are launched: directly, or as the `postgres` OS user.
#[derive(Debug, Clone)]
enum RunAs {
    /// Not root: run programs directly.
    Direct,
    /// Root: run programs through `runuser -u postgres --` and give files to
    /// that user.
    Runuser {
        runuser: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    fn detect() -> Result<RunAs, ClusterError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Ok(RunAs::Direct);
        }
        let runuser = [
            "/usr/sbin/runuser",
            "/sbin/runuser",
            "/usr/bin/runuser",
            "/bin/runuser",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_in_path("runuser"))
        .ok_or_else(|| {
            ClusterError::Environment(
                "running as root but `runuser` (util-linux) was not found; PostgreSQL \
                     refuses to run as root"
                    .to_string(),
            )
        })?;
        let (uid, gid) = lookup_user(PG_OS_USER)?;
        Ok(RunAs::Runuser { runuser, uid, gid })
    }

    /// Builds a command for `program`, run as the postgres OS user if needed.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::Direct => Command::new(program),
            RunAs::Runuser { runuser, .. } => {
                let mut c = Command::new(runuser);
                c.arg("-u").arg(PG_OS_USER).arg("--").arg(program);
                c
            }
        };
        scrub_pg_env(&mut cmd);
        cmd
    }

    /// Gives `path` to the postgres OS user (no-op when not root).
    fn give(&self, path: &Path) -> Result<(), ClusterError> {
        if let RunAs::Runuser { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| io_err(format!("chown {} to {PG_OS_USER}", path.display()), e))?;
        }
        Ok(())
    }
}

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

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns a TCP port on 127.0.0.1 that is currently free. Candidates come
/// from 20000..32000 (below the Linux ephemeral range), starting at an offset
/// derived from the process id and advanced by a process-wide counter, so that
/// parallel tests and parallel test binaries rarely pick the same port; each
/// candidate is verified by binding it. Falls back to an OS-assigned port.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = (std::process::id() % 1_200) * 10;
    for _ in 0..SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start.wrapping_add(n)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind any port on 127.0.0.1")
}

/// Locates the PostgreSQL server binaries: `pg_config --bindir` if that
/// directory contains `initdb` and `pg_ctl`, else the newest
/// `/usr/lib/postgresql/*/bin` that does.
pub fn pg_bindir() -> Result<PathBuf, ClusterError> {
    let usable = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    let mut tried = Vec::new();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if usable(&dir) {
                return Ok(dir);
            }
            tried.push(dir.display().to_string());
        }
    } else {
        tried.push("pg_config (not found)".to_string());
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.into_iter().rev().find(|(_, d)| usable(d)) {
        return Ok(dir);
    }
    tried.push("/usr/lib/postgresql/*/bin".to_string());
    Err(ClusterError::BinariesNotFound(format!(
        "no directory with initdb and pg_ctl; tried {}",
        tried.join(", ")
    )))
}

// ---- helpers ----

fn io_err(context: impl Into<String>, source: std::io::Error) -> ClusterError {
    ClusterError::Io {
        context: context.into(),
        source,
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(format!("chmod {mode:o} {}", path.display()), e))
}

/// Parent for the temporary directories. Unix socket paths are limited to
/// about 107 bytes, so a long `$TMPDIR` is replaced by `/tmp`.
fn temp_parent() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 40 {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

/// Removes `PG*` variables so the caller's environment cannot redirect or
/// alter our connections (PGHOST, PGOPTIONS, PGDATA, ...).
fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn lookup_user(name: &str) -> Result<(u32, u32), ClusterError> {
    let cname = CString::new(name).expect("user name has no NUL");
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is a plain C struct; all-zero is a valid (empty) value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the use of
    // the string fields (we only read the numeric ids).
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(ClusterError::Environment(format!(
            "running as root but there is no `{name}` OS user to run PostgreSQL as"
        )));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// SQL identifier quoting: `"` doubled, wrapped in `"`.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL string literal quoting (standard_conforming_strings): `'` doubled.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn read_back(mut f: File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` to completion with stdin from `input` (or /dev/null) and
/// stdout/stderr captured in anonymous temp files (never pipes: a daemon
/// started by the command, like the postmaster, must not keep us waiting).
/// Kills the command after `timeout`. Returns stdout on success.
fn run(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<String, ClusterError> {
    let desc = describe(cmd);
    let tmp = |what: &str| {
        tempfile::tempfile().map_err(|e| io_err(format!("creating {what} file for `{desc}`"), e))
    };
    let stdin = match input {
        Some(text) => {
            let mut f = tmp("stdin")?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.seek(SeekFrom::Start(0)).map(drop))
                .map_err(|e| io_err(format!("writing stdin file for `{desc}`"), e))?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    let out = tmp("stdout")?;
    let err = tmp("stderr")?;
    let clone = |f: &File| {
        f.try_clone()
            .map_err(|e| io_err(format!("cloning output file for `{desc}`"), e))
    };
    cmd.stdin(stdin)
        .stdout(Stdio::from(clone(&out)?))
        .stderr(Stdio::from(clone(&err)?));
    let mut child = cmd
        .spawn()
        .map_err(|e| io_err(format!("spawning `{desc}`"), e))?;
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::Timeout {
                    command: desc,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(io_err(format!("waiting for `{desc}`"), e)),
        }
    };
    // Release the Command's copies of the capture files.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let stdout = read_back(out);
    let stderr = read_back(err);
    if status.success() {
        Ok(stdout)
    } else {
        Err(ClusterError::Command {
            command: desc,
            status: status_text(status),
            stdout: stdout.trim().to_string(),
            stderr: stderr.trim().to_string(),
        })
    }
}

/// The log written since byte `offset`.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(offset));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of a log file (empty if unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let text = read_from(path, len.saturating_sub(16 * 1024));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
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
        TcpListener::bind(("127.0.0.1", a)).unwrap();
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
}
