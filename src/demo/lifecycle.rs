//! Making sure no server outlives the process that started it.
//!
//! Three layers, because each one misses a case the next covers:
//! - `LocalCluster`'s `Drop` tears its cluster down;
//! - a cluster kept in a `static` (the test harness's shared one) is never
//!   dropped, so every cluster directory is also registered with a
//!   `libc::atexit` handler that tears down whatever is left at exit —
//!   including when tests fail, since the test runner still calls `exit`;
//! - a process killed outright runs neither, so cluster directories carry
//!   their creator's pid, and the next cluster started on the machine stops
//!   the servers of directories whose creator is gone and removes them.
//!
//! Tearing down means an immediate shutdown — SIGQUIT to the postmaster, the
//! signal `pg_ctl stop -m immediate` sends — then SIGKILL if it lingers. It is
//! done in-process (no `pg_ctl`, no `runuser`) so it also works at exit.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::error::{ClusterError, Result};
use super::poll::poll_until;
use super::runner::{RunAs, canonical};

/// Cluster directories are named `<PREFIX><creator pid>-<n>`.
const PREFIX: &str = "pgsidecar-cluster-";

/// How long an immediately-shut-down postmaster gets before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// Cluster directories of this process not yet torn down.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Creates a fresh cluster directory under `base`, reachable by the server
/// user, and registers it for teardown at exit. Sweeps stale ones first.
pub(crate) fn create_root(base: &Path, run_as: RunAs) -> Result<PathBuf> {
    let base = canonical(base);
    run_as.check_reachable(&base)?;
    sweep_stale(&base);
    let pid = std::process::id();
    for n in 0.. {
        let root = base.join(format!("{PREFIX}{pid}-{n}"));
        match fs::create_dir(&root) {
            Ok(()) => {
                fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                    .map_err(|e| ClusterError::io("chmod", &root, e))?;
                register(root.clone());
                run_as.give(&root)?;
                return Ok(root);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClusterError::io("create directory", &root, e)),
        }
    }
    unreachable!("the loop returns or errors")
}

/// Stops every server under `root`, removes it and forgets it.
pub(crate) fn destroy(root: &Path) {
    teardown(root);
    lock_live().retain(|r| r != root);
}

fn register(root: PathBuf) {
    lock_live().push(root);
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no arguments.
        unsafe { libc::atexit(teardown_all_at_exit) };
    });
}

fn lock_live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    crate::sync::lock(&LIVE)
}

extern "C" fn teardown_all_at_exit() {
    // A panic must not unwind into libc.
    let _ = std::panic::catch_unwind(|| {
        let roots = std::mem::take(&mut *lock_live());
        for root in roots {
            teardown(&root);
        }
    });
}

/// Stops the servers under `root` and removes it; best effort.
fn teardown(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            stop_postmaster(&entry.path(), QUIT_GRACE);
        }
    }
    let _ = fs::remove_dir_all(root);
}

/// Removes cluster directories under `base` whose creating process is gone,
/// stopping servers they left behind. Only directories we own (or any, as
/// root) are touched.
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next()?.parse::<i32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| euid == 0 || m.uid() == euid);
        if ours && pid != std::process::id() as i32 && !process_exists(pid) {
            teardown(&entry.path());
        }
    }
}

/// The postmaster pid recorded in `data_dir`, if that process still runs
/// there (checked via its working directory, so a reused pid or a zombie is
/// not mistaken for the server).
pub(crate) fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == canonical(data_dir)).then_some(pid)
}

/// Immediate shutdown of the server in `data_dir`, if one runs; waits for
/// it to exit and escalates to SIGKILL after `grace`.
pub(crate) fn stop_postmaster(data_dir: &Path, grace: Duration) {
    let Some(pid) = running_postmaster(data_dir) else {
        return;
    };
    // SAFETY: sending a signal to a pid we just verified.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let gone = || Ok(running_postmaster(data_dir).is_none().then_some(()));
    if poll_until(String::new, grace, gone).is_err() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = poll_until(String::new, grace, gone);
    }
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
