//! Running the server programs as the `postgres` OS user when the tests run as root.

use super::*;

/// How server programs are launched: directly, or as the `postgres` OS user.
#[derive(Debug, Clone)]
pub(crate) enum RunAs {
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
    pub(crate) fn detect() -> Result<RunAs, ClusterError> {
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
    pub(crate) fn command(&self, program: &Path) -> Command {
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
    pub(crate) fn give(&self, path: &Path) -> Result<(), ClusterError> {
        if let RunAs::Runuser { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| io_err(format!("chown {} to {PG_OS_USER}", path.display()), e))?;
        }
        Ok(())
    }
}
