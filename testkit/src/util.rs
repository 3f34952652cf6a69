//! Process, file and quoting helpers of the cluster helper.

use super::*;

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

pub(crate) fn io_err(context: impl Into<String>, source: std::io::Error) -> ClusterError {
    ClusterError::Io {
        context: context.into(),
        source,
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(format!("chmod {mode:o} {}", path.display()), e))
}

/// Parent for the temporary directories. Unix socket paths are limited to
/// about 107 bytes, so a long `$TMPDIR` is replaced by `/tmp`.
pub(crate) fn temp_parent() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 40 {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

/// Removes `PG*` variables so the caller's environment cannot redirect or
/// alter our connections (PGHOST, PGOPTIONS, PGDATA, ...).
pub(crate) fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), ClusterError> {
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
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL string literal quoting (standard_conforming_strings): `'` doubled.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

pub(crate) fn read_back(mut f: File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs `cmd` to completion with stdin from `input` (or /dev/null) and
/// stdout/stderr captured in anonymous temp files (never pipes: a daemon
/// started by the command, like the postmaster, must not keep us waiting).
/// Kills the command after `timeout`. Returns stdout on success.
pub(crate) fn run(
    cmd: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<String, ClusterError> {
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
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(offset));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines of a log file (empty if unreadable).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let text = read_from(path, len.saturating_sub(16 * 1024));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
