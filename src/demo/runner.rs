//! Running the server-side tools as the right OS user and turning their
//! failures into errors that show the command line and its output.
//!
//! PostgreSQL refuses to run as root. So when we are root, every server-side
//! command (initdb, pg_ctl, pg_basebackup) goes through `runuser -u postgres`
//! and the files those commands must write are handed to `postgres` first.
//! As a normal user everything runs directly as that user.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{ClusterError, Result};

/// Which OS user server processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// We are not root: run the tools directly.
    CurrentUser,
    /// We are root: run the tools as `postgres` via `runuser`.
    Postgres {
        /// uid of `postgres`.
        uid: u32,
        /// Primary gid of `postgres`.
        gid: u32,
    },
}

impl RunAs {
    /// Picks the mode for this process.
    pub(crate) fn detect() -> Result<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let name = c"postgres";
        // SAFETY: getpwnam reads a static buffer; we copy the two ids out
        // before anything else can call it again on this thread.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(ClusterError::NoPostgresUser);
        }
        // SAFETY: pw is non-null and points to a valid passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(RunAs::Postgres { uid, gid })
    }

    /// A command for a server-side tool, wrapped in `runuser` when needed.
    pub(crate) fn server_command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser => Command::new(program),
            RunAs::Postgres { .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
        };
        scrub_env(&mut cmd);
        cmd
    }

    /// Makes `path` owned by the server user, so tools running as that user
    /// can write into it. A no-op when not root.
    pub(crate) fn give(&self, path: &Path) -> Result<()> {
        if let RunAs::Postgres { uid, gid } = *self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io("chown to postgres", path, e))?;
        }
        Ok(())
    }

    /// Checks that the server user can reach `dir`: every ancestor must be
    /// searchable by others, as `postgres` owns none of them.
    pub(crate) fn check_reachable(&self, dir: &Path) -> Result<()> {
        if *self == RunAs::CurrentUser {
            return Ok(());
        }
        for ancestor in dir.ancestors() {
            let meta = std::fs::metadata(ancestor)
                .map_err(|e| ClusterError::io("inspect", ancestor, e))?;
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(ClusterError::NotTraversable {
                    dir: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// A command for a client tool (psql), which runs as whoever we are.
pub(crate) fn client_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    scrub_env(&mut cmd);
    cmd
}

/// Removes `PG*` variables (PGHOST, PGOPTIONS, PGDATA, …) from the caller's
/// environment so they cannot redirect or alter our commands, and fixes the
/// message language so errors are predictable.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
}

/// Runs `cmd` to completion and returns its stdout, or an error holding the
/// command line and what it printed.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    let out = cmd.output().map_err(|source| ClusterError::Spawn {
        command: command.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let output = if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        stderr
    };
    Err(ClusterError::CommandFailed {
        command,
        status: out.status,
        output,
    })
}

/// `prog arg arg` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let parts = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    parts
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resolves a path for comparison with what the kernel reports.
pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
