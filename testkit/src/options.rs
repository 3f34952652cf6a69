//! Cluster options and the errors of the cluster helper.

use super::*;

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
    pub(crate) fn guc_value(self) -> &'static str {
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
